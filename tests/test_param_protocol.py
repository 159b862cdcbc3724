"""Parameter encoding and the read/read-all/set cores against scripted and random autopilots."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mavtools import (
    AUTOPILOT,
    Driver,
    addressed,
    ap,
    decode_stream,
    drive,
    messages,
    raw_frames,
    scripts,
    types,
)

from firmware_bridge.dialect import mavlink
from firmware_bridge.errors import ParamError, ProtocolTimeout
from firmware_bridge.param_protocol import (
    ParamRead,
    ParamReadAll,
    ParamSet,
    decode_param,
    encode_param,
)

INT8 = mavlink.MAV_PARAM_TYPE_INT8
INT16 = mavlink.MAV_PARAM_TYPE_INT16
INT32 = mavlink.MAV_PARAM_TYPE_INT32
UINT8 = mavlink.MAV_PARAM_TYPE_UINT8
REAL32 = mavlink.MAV_PARAM_TYPE_REAL32
NO_INDEX = 65535  # param_index -1, as ArduPilot sends it with a changed value


def value(
    name: str, v: float, param_type: int = REAL32, index: int = NO_INDEX, count: int = 900
) -> object:
    """PARAM_VALUE as ArduPilot sends it."""
    return ap(
        "PARAM_VALUE",
        param_id=name,
        param_value=v,
        param_type=param_type,
        param_index=index,
        param_count=count,
    )


# --- encoding ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("v", "param_type"),
    [
        (0, INT8),
        (127, INT8),
        (-128, INT8),
        (255, UINT8),
        (-32768, INT16),
        (3300, INT32),
        (-(2**31), INT32),
        (2**24, INT32),
        (-(2**24), INT32),
    ],
)
def test_integers_travel_as_their_value_converted_to_float(v: int, param_type: int) -> None:
    encoded = encode_param(v, param_type)
    assert encoded == float(v)
    decoded = decode_param(encoded, param_type)
    assert decoded == v and isinstance(decoded, int)


def test_integer_encoding_is_a_cast_not_a_byte_copy() -> None:
    # Byte-wise encoding would carry INT32 1 as the float whose bits are 0x00000001.
    bytewise = struct.unpack("<f", struct.pack("<i", 1))[0]
    assert encode_param(1, INT32) == 1.0 != bytewise
    assert decode_param(1.0, INT32) == 1


def test_through_the_wire_an_int_param_arrives_exactly() -> None:
    msg = value("BATT_CAPACITY", encode_param(3300, INT32), INT32)
    assert decode_param(msg.param_value, msg.param_type) == 3300


@pytest.mark.parametrize(
    ("v", "param_type", "problem"),
    [
        (2.5, INT8, "not an integer"),
        (128, INT8, "not an integer in -128..127"),
        (-1, UINT8, "0..255"),
        (2**24 + 1, INT32, "cannot be carried exactly"),
        (math.nan, REAL32, "not a finite number"),
        (math.inf, INT32, "not a finite number"),
        (1e39, REAL32, "outside the float32 range"),
        (1, 0, "unknown parameter type 0"),
    ],
)
def test_values_that_cannot_be_carried_are_refused(v: float, param_type: int, problem: str) -> None:
    with pytest.raises(ParamError, match=problem):
        encode_param(v, param_type)


def test_floats_are_rounded_to_float32() -> None:
    assert encode_param(0.1, REAL32) == struct.unpack("<f", struct.pack("<f", 0.1))[0]
    assert decode_param(0.5, REAL32) == 0.5


@pytest.mark.parametrize(("v", "param_type"), [(math.nan, INT32), (1.0, 42)])
def test_undecodable_values_are_refused(v: float, param_type: int) -> None:
    with pytest.raises(ParamError):
        decode_param(v, param_type)


@given(st.integers(-(2**24), 2**24), st.sampled_from([INT32, mavlink.MAV_PARAM_TYPE_INT64]))
def test_every_integer_within_float32_precision_round_trips(v: int, param_type: int) -> None:
    assert decode_param(encode_param(v, param_type), param_type) == v


# --- read one ------------------------------------------------------------------------


def test_read() -> None:
    core = ParamRead("BATT_CAPACITY", 1, 1)
    sent = drive(core, [value("BATT_MONITOR", 4, INT8), value("BATT_CAPACITY", 3300.0, INT32)])
    assert types(sent) == ["PARAM_REQUEST_READ"]
    request = sent[0]
    assert (request.param_id, request.param_index) == ("BATT_CAPACITY", -1)
    assert (request.target_system, request.target_component) == AUTOPILOT
    assert core.result() == (3300, INT32)
    assert isinstance(core.result()[0], int)


def test_read_a_sixteen_character_name() -> None:
    name = "SIM_GRPS_RELEASE"  # exactly 16: no terminating null on the wire
    assert len(name) == 16
    core = ParamRead(name, 1, 1)
    sent = drive(core, [value(name, 0.5)])
    assert sent[0].param_id == name
    assert core.result() == (0.5, REAL32)


def test_read_retries_then_reports_the_parameter_missing() -> None:
    core = ParamRead("NO_SUCH_PARAM", 1, 1, timeout=1.0, retries=3)
    sent = drive(core, [4.0])
    assert types(sent) == ["PARAM_REQUEST_READ"] * 4
    with pytest.raises(ParamError, match="no parameter NO_SUCH_PARAM"):
        core.result()


def test_read_ignores_other_sources() -> None:
    core = ParamRead("BATT_CAPACITY", 1, 1)
    drive(
        core,
        [
            ap("PARAM_VALUE", param_id="BATT_CAPACITY", param_value=1.0, param_type=4, src=(2, 1)),
            ap("PARAM_VALUE", param_id="BATT_CAPACITY", param_value=1.0, param_type=4, src=(1, 2)),
        ],
    )
    assert not core.finished


@pytest.mark.parametrize("name", ["", "SEVENTEEN_CHARS_X", "BÄTT"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ParamError, match="parameter name"):
        ParamRead(name, 1, 1)


# --- set -----------------------------------------------------------------------------


def test_set_verified_by_the_echo() -> None:
    core = ParamSet("BATT_CAPACITY", 5000, INT32, 1, 1)
    sent = drive(core, [value("BATT_CAPACITY", 5000.0, INT32)])
    assert types(sent) == ["PARAM_SET"]
    msg = sent[0]
    assert (msg.param_id, msg.param_value, msg.param_type) == ("BATT_CAPACITY", 5000.0, INT32)
    assert core.result() == (5000, INT32)


def test_set_float_tolerates_float32_rounding() -> None:
    core = ParamSet("WPNAV_SPEED", 1000.1, None, 1, 1)
    held = encode_param(1000.1, REAL32)
    assert held != 1000.1
    sent = drive(core, [value("WPNAV_SPEED", held)])
    assert (sent[0].param_value, sent[0].param_type) == (held, REAL32)
    assert core.result() == (held, REAL32)


def test_set_that_did_not_stick_names_both_values() -> None:
    core = ParamSet("GRIP_ENABLE", 2, INT8, 1, 1, timeout=1.0)
    sent = drive(core, [value("GRIP_ENABLE", 1.0, INT8), 1.0])
    assert types(sent) == ["PARAM_SET"]
    with pytest.raises(ParamError, match="GRIP_ENABLE: set to 2, autopilot kept 1"):
        core.result()


def test_a_stale_value_followed_by_the_echo_is_success() -> None:
    core = ParamSet("GRIP_ENABLE", 1, INT8, 1, 1)
    drive(core, [value("GRIP_ENABLE", 0.0, INT8, index=300), value("GRIP_ENABLE", 1.0, INT8)])
    assert core.result() == (1, INT8)


def test_set_retries_then_times_out() -> None:
    core = ParamSet("NO_SUCH_PARAM", 1.0, REAL32, 1, 1, timeout=1.0, retries=2)
    sent = drive(core, [1.0, value("OTHER", 1.0), 2.0])
    assert types(sent) == ["PARAM_SET"] * 3
    with pytest.raises(ProtocolTimeout, match="set NO_SUCH_PARAM"):
        core.result()


def test_set_refuses_a_value_its_type_cannot_hold() -> None:
    with pytest.raises(ParamError, match=r"GRIP_ENABLE: 1\.5 is not an integer"):
        ParamSet("GRIP_ENABLE", 1.5, INT8, 1, 1)


# --- read all ------------------------------------------------------------------------


def listing(names: list[str], indices: list[int]) -> list:
    return [value(names[i], float(i), INT16, index=i, count=len(names)) for i in indices]


NAMES = [f"P{i:02d}" for i in range(30)]


def test_read_all_in_one_stream() -> None:
    core = ParamReadAll(1, 1)
    sent = drive(core, listing(NAMES, list(reversed(range(30)))))
    assert types(sent) == ["PARAM_REQUEST_LIST"]
    assert (sent[0].target_system, sent[0].target_component) == AUTOPILOT
    result = core.result()
    assert list(result) == NAMES  # in index order, whatever the arrival order
    assert result["P07"] == (7, INT16)


def test_read_all_re_requests_missing_indices_after_a_quiet_period() -> None:
    core = ParamReadAll(1, 1, quiet_period=1.0, batch=10)
    missing = [3, 4, 17]
    driver = Driver(core)
    driver.start()
    driver.play(listing(NAMES, [i for i in range(30) if i not in missing]))
    assert driver.wait(0.9) == []
    requests = driver.wait(0.1)
    assert types(requests) == ["PARAM_REQUEST_READ"] * 3
    assert [(m.param_index, m.param_id) for m in requests] == [(3, ""), (4, ""), (17, "")]
    driver.play(listing(NAMES, [4, 17]))
    again = driver.wait(1.0)
    assert [m.param_index for m in again] == [3]
    driver.play(listing(NAMES, [3]))
    assert list(core.result()) == NAMES


def test_read_all_requests_at_most_a_batch_at_a_time() -> None:
    core = ParamReadAll(1, 1, quiet_period=1.0, batch=10)
    sent = drive(core, [*listing(NAMES, [0]), 1.0])
    assert [m.param_index for m in sent[1:]] == list(range(1, 11))


def test_read_all_gives_up_naming_what_is_missing() -> None:
    core = ParamReadAll(1, 1, quiet_period=1.0, retries=2)
    drive(core, [*listing(NAMES, [i for i in range(30) if i != 12]), 3.0])
    with pytest.raises(ProtocolTimeout, match=r"1 of 30 parameters missing \(indices 12\)"):
        core.result()


def test_read_all_resends_the_list_request_when_nothing_comes() -> None:
    core = ParamReadAll(1, 1, quiet_period=1.0, retries=2)
    sent = drive(core, [3.0])
    assert types(sent) == ["PARAM_REQUEST_LIST"] * 3
    with pytest.raises(ProtocolTimeout, match="no PARAM_VALUE"):
        core.result()


def test_read_all_keeps_a_value_changed_during_the_download() -> None:
    core = ParamReadAll(1, 1)
    names = NAMES[:3]
    drive(core, [*listing(names, [0, 1]), value("P00", 42.0, INT16), *listing(names, [2])])
    assert core.result()["P00"] == (42, INT16)


def test_read_all_refuses_a_name_listed_at_two_indices() -> None:
    # Found by fuzzing: keyed by name, the result had fewer parameters than param_count.
    core = ParamReadAll(1, 1)
    names = ["P00", "P01", "P00"]
    drive(core, listing(names, [0, 1, 2]))
    with pytest.raises(ParamError, match="P00 listed at indices 0 and 2"):
        core.result()


# --- property tests ------------------------------------------------------------------

PARAM_NAMES = st.sampled_from(["P00", "P01", "P02", "BATT_CAPACITY"])
PARAM_TYPES = st.one_of(st.sampled_from([INT8, INT16, INT32, REAL32]), st.integers(0, 255))
INDICES = st.one_of(st.integers(0, 3), st.just(NO_INDEX), st.integers(0, 65535))
VALUES = st.one_of(st.sampled_from([0.0, 1.0, 3300.0]), st.floats(width=32))
RANDOM_AUTOPILOT = scripts(
    # A well-behaved burst (all of a three-parameter list), so that some exchanges complete.
    st.permutations(range(3)).map(lambda order: listing(NAMES[:3], order)),
    addressed(
        "PARAM_VALUE",
        param_id=PARAM_NAMES.map(str.encode),
        param_value=VALUES,
        param_type=PARAM_TYPES,
        param_index=INDICES,
        param_count=st.one_of(st.just(3), st.integers(0, 65535)),
    ),
    messages("PARAM_VALUE"),
    messages("HEARTBEAT"),
    messages("PARAM_SET"),
)


def _run(core: object, script: list, max_ticks: int) -> Driver:
    driver = Driver(core)
    driver.start()
    driver.play(script)
    driver.run_out(max_ticks)
    return driver


def _answers(driver: Driver, name: str) -> list:
    return [
        m
        for m in driver.received
        if m.get_type() == "PARAM_VALUE"
        and (m.get_srcSystem(), m.get_srcComponent()) == AUTOPILOT
        and m.param_id == name
    ]


def _check_read(core: ParamRead, driver: Driver) -> None:
    try:
        got = core.result()
    except ParamError:
        pass
    else:
        last = driver.received[-1]
        assert last in _answers(driver, core.name), "success without that PARAM_VALUE"
        assert got == (decode_param(last.param_value, last.param_type), last.param_type)


def _check_set(core: ParamSet, driver: Driver) -> None:
    try:
        got = core.result()
    except (ParamError, ProtocolTimeout):
        pass
    else:
        last = driver.received[-1]
        assert last in _answers(driver, core.name), "success without the echo"
        # The core's own tolerance: an echo within 1e-9 of zero is zero (a float32 autopilot
        # may send back FLT_MIN or a denormal for a 0 it stored).
        want = encode_param(core.value, core.param_type)
        assert math.isclose(got[0], want, rel_tol=1e-6, abs_tol=1e-9)


def _check_read_all(core: ParamReadAll, driver: Driver) -> None:
    try:
        got = core.result()
    except (ParamError, ProtocolTimeout):
        pass
    else:
        listed = [
            m
            for m in driver.received
            if m.get_type() == "PARAM_VALUE"
            and (m.get_srcSystem(), m.get_srcComponent()) == AUTOPILOT
        ]
        count = next(m.param_count for m in listed if m.param_index < m.param_count)
        indices = {m.param_index for m in listed if m.param_index < count}
        assert indices == set(range(count)), "success without every index"
        assert set(got) <= {m.param_id for m in listed}
        assert len(got) == count, "success with fewer parameters than the autopilot has"


@settings(max_examples=200, deadline=None)
@given(RANDOM_AUTOPILOT, PARAM_NAMES)
def test_read_against_a_random_autopilot(script: list, name: str) -> None:
    core = ParamRead(name, 1, 1, retries=2)
    _check_read(core, _run(core, script, max_ticks=3))


@settings(max_examples=200, deadline=None)
@given(RANDOM_AUTOPILOT, PARAM_NAMES, st.sampled_from([0, 1, 3300]), st.sampled_from([None, INT32]))
def test_set_against_a_random_autopilot(
    script: list, name: str, v: int, param_type: int | None
) -> None:
    core = ParamSet(name, v, param_type, 1, 1, retries=2)
    _check_set(core, _run(core, script, max_ticks=3))


@settings(max_examples=200, deadline=None)
@given(RANDOM_AUTOPILOT)
def test_read_all_against_a_random_autopilot(script: list) -> None:
    core = ParamReadAll(1, 1, retries=2)
    _check_read_all(core, _run(core, script, max_ticks=3))


@settings(max_examples=200, deadline=None)
@given(raw_frames(["PARAM_VALUE", "PARAM_SET", "HEARTBEAT"]))
def test_whatever_decodes_from_raw_bytes_never_crashes_the_cores(data: bytes) -> None:
    decoded = decode_stream(data)
    for core, check in [
        (ParamRead("P00", 1, 1, retries=1), _check_read),
        (ParamSet("P00", 1, None, 1, 1, retries=1), _check_set),
        (ParamReadAll(1, 1, retries=1), _check_read_all),
    ]:
        check(core, _run(core, decoded, max_ticks=3))
