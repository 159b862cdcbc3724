"""Mission upload/download/clear/set-current cores against scripted and random vehicles."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mavtools import (
    AUTOPILOT,
    OWN,
    Driver,
    addressed,
    ap,
    decode_stream,
    drive,
    messages,
    over_the_wire,
    raw_frames,
    scripts,
    types,
)

from firmware_bridge.dialect import mavlink
from firmware_bridge.errors import MissionError, ProtocolTimeout
from firmware_bridge.mission_protocol import (
    MissionClear,
    MissionDownload,
    MissionItem,
    MissionSetCurrent,
    MissionUpload,
    result_name,
)

MISSION = mavlink.MAV_MISSION_TYPE_MISSION
FENCE = mavlink.MAV_MISSION_TYPE_FENCE
RALLY = mavlink.MAV_MISSION_TYPE_RALLY
ACCEPTED = mavlink.MAV_MISSION_ACCEPTED


def plan(n: int, mission_type: int = MISSION) -> list[MissionItem]:
    """`n` waypoints 10 m apart going north, at altitudes that need float32 rounding."""
    return [
        MissionItem.waypoint(
            47.397742 + i * 1e-4, 8.545594, 30.1 + i, seq=i, mission_type=mission_type
        )
        for i in range(n)
    ]


def request(seq: int, mission_type: int = MISSION, **fields: int) -> object:
    return ap("MISSION_REQUEST_INT", seq=seq, mission_type=mission_type, **fields)


def mission_ack(result: int = ACCEPTED, mission_type: int = MISSION, **fields: int) -> object:
    return ap("MISSION_ACK", type=result, mission_type=mission_type, **fields)


def vehicle_item(item: MissionItem) -> object:
    """`item` as the vehicle sends it in a download."""
    return over_the_wire(item.to_msg(*OWN), AUTOPILOT)


# --- MissionItem ---------------------------------------------------------------------


def test_item_round_trips_through_mission_item_int() -> None:
    item = MissionItem.waypoint(47.3977421, -122.0, 30.1, seq=7, hold_s=2.5)
    msg = over_the_wire(item.to_msg(1, 1), OWN)
    assert msg.get_type() == "MISSION_ITEM_INT"
    assert (msg.x, msg.y) == (473977421, -1220000000)
    assert msg.frame == mavlink.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT
    assert (msg.command, msg.param1, msg.autocontinue) == (mavlink.MAV_CMD_NAV_WAYPOINT, 2.5, 1)
    assert MissionItem.from_msg(msg) == item
    assert item.z == pytest.approx(30.1) and item.z != 30.1  # stored as the wire's float32


@pytest.mark.parametrize(
    ("field", "value"), [("seq", -1), ("seq", 65536), ("x", 2**31), ("frame", 256), ("x", 1.5)]
)
def test_item_rejects_values_the_wire_cannot_carry(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        MissionItem(
            **{**MissionItem.waypoint(0, 0, 0).__dict__, field: value}  # type: ignore[arg-type]
        )


def test_item_rejects_floats_beyond_float32() -> None:
    with pytest.raises(ValueError, match="z=1e\\+39"):
        MissionItem.waypoint(0, 0, 1e39)


# --- upload --------------------------------------------------------------------------


def test_upload_of_100_items() -> None:
    items = plan(100)
    core = MissionUpload(items, MISSION, 1, 1)
    sent = drive(core, [request(i) for i in range(100)] + [mission_ack()])
    assert types(sent) == ["MISSION_COUNT"] + ["MISSION_ITEM_INT"] * 100
    count = sent[0]
    assert (count.count, count.mission_type, count.target_system, count.target_component) == (
        100,
        MISSION,
        1,
        1,
    )
    assert [MissionItem.from_msg(m) for m in sent[1:]] == items
    assert all((m.get_srcSystem(), m.get_srcComponent()) == OWN for m in sent)
    assert core.result() is None


def test_upload_numbers_items_by_position_and_keeps_item_0() -> None:
    home = MissionItem.waypoint(1.0, 2.0, 0.0, seq=5, frame=mavlink.MAV_FRAME_GLOBAL_INT)
    later = MissionItem.waypoint(1.5, 2.5, 20.0, seq=9, mission_type=FENCE)
    core = MissionUpload([home, later], MISSION, 1, 1)
    sent = drive(core, [request(0), request(1), mission_ack()])
    sent_items = [MissionItem.from_msg(m) for m in sent[1:]]
    assert [(i.seq, i.mission_type) for i in sent_items] == [(0, MISSION), (1, MISSION)]
    assert (sent_items[0].frame, sent_items[0].x, sent_items[0].z) == (
        mavlink.MAV_FRAME_GLOBAL_INT,
        10000000,
        0.0,
    )
    assert core.result() is None


@pytest.mark.parametrize("mission_type", [FENCE, RALLY])
def test_fence_and_rally_upload(mission_type: int) -> None:
    items = plan(3, mission_type)
    core = MissionUpload(items, mission_type, 1, 1)
    sent = drive(
        core, [request(i, mission_type) for i in range(3)] + [mission_ack(ACCEPTED, mission_type)]
    )
    assert [m.mission_type for m in sent] == [mission_type] * 4
    assert core.result() is None


def test_legacy_mission_request_is_answered_with_mission_item_int() -> None:
    core = MissionUpload(plan(2), MISSION, 1, 1)
    legacy = [ap("MISSION_REQUEST", seq=i, mission_type=MISSION) for i in range(2)]
    sent = drive(core, [*legacy, mission_ack()])
    assert types(sent) == ["MISSION_COUNT", "MISSION_ITEM_INT", "MISSION_ITEM_INT"]
    assert core.result() is None


def test_count_is_resent_until_the_first_request() -> None:
    core = MissionUpload(plan(1), MISSION, 1, 1, item_timeout=1.5)
    sent = drive(core, [1.5, 1.5, request(0), mission_ack()])
    assert types(sent) == ["MISSION_COUNT"] * 3 + ["MISSION_ITEM_INT"]
    assert core.result() is None


def test_dropped_request_makes_the_last_item_go_again() -> None:
    core = MissionUpload(plan(2), MISSION, 1, 1, item_timeout=1.5)
    sent = drive(core, [request(0), 1.5, request(1), mission_ack()])
    assert [m.seq for m in sent[1:]] == [0, 0, 1]
    assert core.result() is None


@pytest.mark.parametrize(
    ("script", "waiting_for"),
    [
        ([], "no MISSION_REQUEST for item 0 after MISSION_COUNT"),
        ([request(0)], "no MISSION_REQUEST after item 0"),
        ([request(0), request(1)], "no MISSION_ACK after the last item"),
    ],
)
def test_upload_gives_up_after_retries(script: list, waiting_for: str) -> None:
    core = MissionUpload(plan(2), MISSION, 1, 1, item_timeout=1.5, retries=5)
    driver = Driver(core)
    driver.start()
    driver.play([*script, 8.9])
    assert not core.finished
    assert len(driver.sent) == len(script) + 1 + 5  # each retry re-sent the last message
    driver.wait(0.1)
    with pytest.raises(ProtocolTimeout, match=waiting_for):
        core.result()


def test_duplicate_requests_are_answered_again() -> None:
    core = MissionUpload(plan(3), MISSION, 1, 1)
    sent = drive(core, [request(0), request(0), request(1), request(1), request(2), mission_ack()])
    assert [m.seq for m in sent[1:]] == [0, 0, 1, 1, 2]
    assert core.result() is None


def test_out_of_order_requests_get_the_item_asked_for() -> None:
    core = MissionUpload(plan(4), MISSION, 1, 1)
    sent = drive(core, [request(0), request(2), request(1), request(3), request(2), mission_ack()])
    assert [m.seq for m in sent[1:]] == [0, 2, 1, 3, 2]
    assert core.result() is None


def test_re_requests_alone_cannot_keep_an_upload_alive() -> None:
    core = MissionUpload(plan(2), MISSION, 1, 1, item_timeout=1.5, retries=5)
    drive(core, [request(0), *[0.5, request(0)] * 40])
    with pytest.raises(ProtocolTimeout, match="after item 0"):
        core.result()


def test_requests_beyond_the_count_are_ignored() -> None:
    core = MissionUpload(plan(2), MISSION, 1, 1)
    sent = drive(core, [request(2), request(70)])
    assert types(sent) == ["MISSION_COUNT"]
    assert not core.finished


ERRORS = [r for r in range(1, 16) if r != mavlink.MAV_MISSION_INVALID_SEQUENCE]


@pytest.mark.parametrize("result", ERRORS, ids=[result_name(r) for r in ERRORS])
def test_upload_nack_surfaces_the_result_by_name(result: int) -> None:
    core = MissionUpload(plan(3), MISSION, 1, 1)
    drive(core, [request(0), mission_ack(result)])
    with pytest.raises(MissionError) as raised:
        core.result()
    assert raised.value.operation == "upload"
    assert raised.value.result == result_name(result)
    assert result_name(result) in str(raised.value)


def test_no_space_answer_to_count() -> None:
    core = MissionUpload(plan(3), MISSION, 1, 1)
    drive(core, [mission_ack(mavlink.MAV_MISSION_NO_SPACE)])
    with pytest.raises(MissionError, match="MAV_MISSION_NO_SPACE"):
        core.result()


def test_invalid_sequence_followed_by_a_request_is_recoverable() -> None:
    # ArduPilot NACKs a duplicate item it already has, then asks for the next one.
    core = MissionUpload(plan(2), MISSION, 1, 1)
    nack = mission_ack(mavlink.MAV_MISSION_INVALID_SEQUENCE)
    drive(core, [request(0), request(0), nack, request(1), mission_ack()])
    assert core.result() is None


def test_invalid_sequence_with_nothing_after_it_surfaces_by_name() -> None:
    core = MissionUpload(plan(2), MISSION, 1, 1, item_timeout=1.5)
    sent = drive(core, [request(0), mission_ack(mavlink.MAV_MISSION_INVALID_SEQUENCE), 1.5])
    assert types(sent) == ["MISSION_COUNT", "MISSION_ITEM_INT"]
    with pytest.raises(MissionError, match="MAV_MISSION_INVALID_SEQUENCE"):
        core.result()


def test_messages_for_another_mission_type_or_peer_are_ignored() -> None:
    core = MissionUpload(plan(1, FENCE), FENCE, 1, 1)
    ignored = [
        request(0, MISSION),
        request(0, RALLY),
        mission_ack(mavlink.MAV_MISSION_NO_SPACE, MISSION),
        request(0, FENCE, target_system=2),
        request(0, FENCE, target_component=190),
        ap("MISSION_REQUEST_INT", seq=0, mission_type=FENCE, src=(2, 1)),
    ]
    sent = drive(core, ignored)
    assert types(sent) == ["MISSION_COUNT"]
    assert not core.finished


def test_accepted_before_the_last_item_is_not_success() -> None:
    core = MissionUpload(plan(3), MISSION, 1, 1)
    drive(core, [mission_ack(), request(0), mission_ack()])
    assert not core.finished


def test_accepted_before_every_item_was_requested_is_not_success() -> None:
    core = MissionUpload(plan(3), MISSION, 1, 1)
    drive(core, [request(2), mission_ack()])
    assert not core.finished


def test_nacks_and_re_requests_alone_cannot_keep_an_upload_alive() -> None:
    core = MissionUpload(plan(2), MISSION, 1, 1, item_timeout=1.5, retries=5)
    nack = mission_ack(mavlink.MAV_MISSION_INVALID_SEQUENCE)
    drive(core, [request(0), *[0.5, request(0), nack] * 40])
    # The first NACK (t=0.5) gave the vehicle until t=2.0 to ask for item 1; it never did.
    with pytest.raises(MissionError, match="MAV_MISSION_INVALID_SEQUENCE"):
        core.result()


def test_empty_upload() -> None:
    core = MissionUpload([], MISSION, 1, 1)
    sent = drive(core, [mission_ack()])
    assert sent[0].count == 0
    assert core.result() is None


def test_unknown_mission_type_is_refused() -> None:
    with pytest.raises(ValueError, match="mission_type"):
        MissionUpload([], mavlink.MAV_MISSION_TYPE_ALL, 1, 1)


# --- download ------------------------------------------------------------------------


def test_download_returns_what_was_uploaded() -> None:
    items = plan(100)
    upload = MissionUpload(items, MISSION, 1, 1)
    uploaded = drive(upload, [request(i) for i in range(100)] + [mission_ack()])[1:]
    # The vehicle keeps what it received and sends it back on request.
    stored = [MissionItem.from_msg(m) for m in uploaded]
    download = MissionDownload(MISSION, 1, 1)
    sent = drive(
        download,
        [ap("MISSION_COUNT", count=100, mission_type=MISSION)]
        + [vehicle_item(item) for item in stored],
    )
    assert types(sent) == ["MISSION_REQUEST_LIST"] + ["MISSION_REQUEST_INT"] * 100 + ["MISSION_ACK"]
    assert [m.seq for m in sent[1:-1]] == list(range(100))
    assert (sent[-1].type, sent[-1].mission_type) == (ACCEPTED, MISSION)
    assert download.result() == items


@pytest.mark.parametrize("mission_type", [FENCE, RALLY])
def test_download_of_fence_and_rally(mission_type: int) -> None:
    items = plan(2, mission_type)
    core = MissionDownload(mission_type, 1, 1)
    other = plan(1, MISSION)[0]
    sent = drive(
        core,
        [
            ap("MISSION_COUNT", count=5, mission_type=MISSION),
            ap("MISSION_COUNT", count=2, mission_type=mission_type),
            vehicle_item(other),
            *[vehicle_item(i) for i in items],
        ],
    )
    assert all(m.mission_type == mission_type for m in sent)
    assert core.result() == items


def test_download_retransmits_requests_on_timeout() -> None:
    items = plan(2)
    core = MissionDownload(MISSION, 1, 1, item_timeout=1.5)
    count = ap("MISSION_COUNT", count=2, mission_type=MISSION)
    sent = drive(core, [1.5, count, 1.5, vehicle_item(items[0]), vehicle_item(items[1])])
    assert types(sent) == ["MISSION_REQUEST_LIST"] * 2 + ["MISSION_REQUEST_INT"] * 3 + [
        "MISSION_ACK"
    ]
    assert [m.seq for m in sent[2:5]] == [0, 0, 1]
    assert core.result() == items


def test_download_drops_out_of_sequence_items() -> None:
    items = plan(3)
    core = MissionDownload(MISSION, 1, 1)
    sent = drive(
        core,
        [
            ap("MISSION_COUNT", count=3, mission_type=MISSION),
            vehicle_item(items[0]),
            vehicle_item(items[2]),  # ahead: re-request item 1
            vehicle_item(items[0]),  # a late copy: dropped
            vehicle_item(items[1]),
            vehicle_item(items[2]),
        ],
    )
    assert [m.seq for m in sent if m.get_type() == "MISSION_REQUEST_INT"] == [0, 1, 1, 2]
    assert core.result() == items


def test_empty_download_is_acknowledged() -> None:
    core = MissionDownload(RALLY, 1, 1)
    sent = drive(core, [ap("MISSION_COUNT", count=0, mission_type=RALLY)])
    assert types(sent) == ["MISSION_REQUEST_LIST", "MISSION_ACK"]
    assert core.result() == []


def test_download_nack_surfaces_the_result_by_name() -> None:
    core = MissionDownload(MISSION, 1, 1)
    drive(core, [mission_ack(mavlink.MAV_MISSION_DENIED)])
    with pytest.raises(MissionError, match="download failed: MAV_MISSION_DENIED"):
        core.result()


def test_download_gives_up() -> None:
    core = MissionDownload(MISSION, 1, 1, item_timeout=1.0, retries=2)
    sent = drive(core, [ap("MISSION_COUNT", count=4, mission_type=MISSION), 3.0])
    assert [m.seq for m in sent[1:]] == [0, 0, 0]
    with pytest.raises(ProtocolTimeout, match="no MISSION_ITEM_INT 0 of 4"):
        core.result()


# --- clear and set-current -----------------------------------------------------------


def test_clear() -> None:
    core = MissionClear(FENCE, 1, 1)
    sent = drive(core, [mission_ack(ACCEPTED, MISSION), 1.5, mission_ack(ACCEPTED, FENCE)])
    assert types(sent) == ["MISSION_CLEAR_ALL"] * 2
    assert sent[0].mission_type == FENCE
    assert core.result() is None


def test_clear_refused() -> None:
    core = MissionClear(MISSION, 1, 1)
    drive(core, [mission_ack(mavlink.MAV_MISSION_ERROR)])
    with pytest.raises(MissionError, match="clear failed: MAV_MISSION_ERROR"):
        core.result()


def test_clear_times_out() -> None:
    core = MissionClear(MISSION, 1, 1, timeout=1.5, retries=5)
    sent = drive(core, [9.0])
    assert len(sent) == 6
    with pytest.raises(ProtocolTimeout, match="MAV_MISSION_TYPE_MISSION clear"):
        core.result()


def test_set_current_waits_for_mission_current_with_the_seq() -> None:
    core = MissionSetCurrent(4, 1, 1, timeout=1.5)
    sent = drive(
        core,
        [
            ap("MISSION_CURRENT", seq=2),
            ap("MISSION_CURRENT", seq=4, src=(2, 1)),
            1.5,
            ap("MISSION_CURRENT", seq=4),
        ],
    )
    assert types(sent) == ["MISSION_SET_CURRENT"] * 2
    assert (sent[0].seq, sent[0].target_system, sent[0].target_component) == (4, 1, 1)
    assert core.result() is None


def test_set_current_times_out() -> None:
    core = MissionSetCurrent(4, 1, 1, timeout=1.0, retries=1)
    drive(core, [2.0])
    with pytest.raises(ProtocolTimeout, match="set current mission item 4"):
        core.result()


# --- property tests ------------------------------------------------------------------

MISSION_TYPES = st.one_of(st.sampled_from([MISSION, FENCE, RALLY, 255]), st.integers(0, 255))
SEQS = st.integers(0, 4)
ACK_TYPES = st.one_of(
    st.just(ACCEPTED), st.just(mavlink.MAV_MISSION_INVALID_SEQUENCE), st.integers(0, 16)
)
NOISE = [
    messages("MISSION_REQUEST_INT", seq=SEQS, mission_type=MISSION_TYPES),
    messages("MISSION_ACK", type=ACK_TYPES, mission_type=MISSION_TYPES),
    messages("MISSION_COUNT", count=SEQS, mission_type=MISSION_TYPES),
    messages("MISSION_ITEM_INT", seq=SEQS, mission_type=MISSION_TYPES),
    messages("MISSION_CURRENT", seq=SEQS),
    messages("HEARTBEAT"),
]


def random_vehicle(mission_type: int) -> st.SearchStrategy[list]:
    """Scripts of well-addressed messages about `mission_type`, in any order, and noise."""
    same = st.just(mission_type)
    # Bursts of a well-behaved vehicle, so that some exchanges get all the way through.
    uploading = SEQS.map(
        lambda n: (
            [request(i, mission_type) for i in range(n)] + [mission_ack(ACCEPTED, mission_type)]
        )
    )
    offering = SEQS.map(
        lambda n: (
            [ap("MISSION_COUNT", count=n, mission_type=mission_type)]
            + [vehicle_item(item) for item in plan(n, mission_type)]
        )
    )
    return scripts(
        uploading,
        offering,
        addressed("MISSION_REQUEST_INT", seq=SEQS, mission_type=same),
        addressed("MISSION_REQUEST", seq=SEQS, mission_type=same),
        addressed("MISSION_ACK", type=ACK_TYPES, mission_type=same),
        addressed("MISSION_COUNT", count=SEQS, mission_type=same),
        addressed("MISSION_ITEM_INT", seq=SEQS, mission_type=same),
        addressed("MISSION_CURRENT", seq=SEQS),
        *NOISE,
    )


MISSION_NAMES = [
    "MISSION_REQUEST_INT",
    "MISSION_REQUEST",
    "MISSION_ACK",
    "MISSION_COUNT",
    "MISSION_ITEM_INT",
    "MISSION_CURRENT",
    "HEARTBEAT",
]


def _for_us(msg: object, kind: str, mission_type: int | None = None) -> bool:
    return (
        msg.get_type() == kind
        and (msg.get_srcSystem(), msg.get_srcComponent()) == AUTOPILOT
        and getattr(msg, "target_system", 0) in (0, OWN[0])
        and getattr(msg, "target_component", 0) in (0, OWN[1])
        and (mission_type is None or msg.mission_type == mission_type)
    )


def _run(core: object, script: list, max_ticks: int) -> Driver:
    driver = Driver(core)
    driver.start()
    driver.play(script)
    driver.run_out(max_ticks)
    return driver


def _nack_names(driver: Driver, mission_type: int) -> set[str]:
    return {
        result_name(m.type)
        for m in driver.received
        if _for_us(m, "MISSION_ACK", mission_type) and m.type != ACCEPTED
    }


def _ended_by_accepted_ack(driver: Driver, mission_type: int) -> bool:
    last = driver.received[-1]
    return _for_us(last, "MISSION_ACK", mission_type) and last.type == ACCEPTED


def _check_upload(core: MissionUpload, driver: Driver) -> None:
    for msg in driver.sent:
        if msg.get_type() == "MISSION_ITEM_INT":
            assert MissionItem.from_msg(msg) == core.items[msg.seq]
    try:
        core.result()
    except MissionError as exc:
        assert exc.result in _nack_names(driver, core.mission_type)
    except ProtocolTimeout:
        pass
    else:
        assert _ended_by_accepted_ack(driver, core.mission_type), "success, but not by ACK"
        sent_seqs = {m.seq for m in driver.sent if m.get_type() == "MISSION_ITEM_INT"}
        assert sent_seqs == set(range(len(core.items))), "success before every item was sent"


def _check_download(core: MissionDownload, driver: Driver) -> None:
    try:
        items = core.result()
    except MissionError as exc:
        assert exc.result in _nack_names(driver, core.mission_type)
    except ProtocolTimeout:
        pass
    else:
        mission_type = core.mission_type
        counts = [m.count for m in driver.received if _for_us(m, "MISSION_COUNT", mission_type)]
        assert counts and counts[0] == len(items)
        offered = [
            MissionItem.from_msg(m)
            for m in driver.received
            if _for_us(m, "MISSION_ITEM_INT", mission_type)
        ]
        for seq, item in enumerate(items):
            assert item.seq == seq and item.mission_type == mission_type
            assert any(_same(item, o) for o in offered)
        last = driver.sent[-1]
        assert (last.get_type(), last.type, last.mission_type) == (
            "MISSION_ACK",
            ACCEPTED,
            mission_type,
        )


def _same(a: MissionItem, b: MissionItem) -> bool:
    """Equality that counts NaN as equal to NaN (random vehicles send NaN params)."""
    return all(
        x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y))
        for x, y in zip(a.__dict__.values(), b.__dict__.values(), strict=True)
    )


def _check_clear(core: MissionClear, driver: Driver) -> None:
    try:
        core.result()
    except MissionError as exc:
        assert exc.result in _nack_names(driver, core.mission_type)
    except ProtocolTimeout:
        pass
    else:
        assert _ended_by_accepted_ack(driver, core.mission_type), "success, but not by ACK"


def _check_set_current(core: MissionSetCurrent, driver: Driver) -> None:
    try:
        core.result()
    except ProtocolTimeout:
        pass
    else:
        last = driver.received[-1]
        assert _for_us(last, "MISSION_CURRENT") and last.seq == core.seq


TYPES = st.sampled_from([MISSION, FENCE, RALLY])


@settings(max_examples=200, deadline=None)
@given(st.data(), TYPES, st.integers(0, 3))
def test_upload_against_a_random_vehicle(data: st.DataObject, mission_type: int, n: int) -> None:
    core = MissionUpload(plan(n, mission_type), mission_type, 1, 1, retries=3)
    script = data.draw(random_vehicle(mission_type))
    _check_upload(core, _run(core, script, max_ticks=3 + 1))


@settings(max_examples=200, deadline=None)
@given(st.data(), TYPES)
def test_download_against_a_random_vehicle(data: st.DataObject, mission_type: int) -> None:
    core = MissionDownload(mission_type, 1, 1, retries=3)
    script = data.draw(random_vehicle(mission_type))
    _check_download(core, _run(core, script, max_ticks=3 + 1))


@settings(max_examples=100, deadline=None)
@given(st.data(), TYPES)
def test_clear_against_a_random_vehicle(data: st.DataObject, mission_type: int) -> None:
    core = MissionClear(mission_type, 1, 1, retries=2)
    script = data.draw(random_vehicle(mission_type))
    _check_clear(core, _run(core, script, max_ticks=2 + 1))


@settings(max_examples=100, deadline=None)
@given(random_vehicle(MISSION), SEQS)
def test_set_current_against_a_random_vehicle(script: list, seq: int) -> None:
    core = MissionSetCurrent(seq, 1, 1, retries=2)
    _check_set_current(core, _run(core, script, max_ticks=2 + 1))


@settings(max_examples=200, deadline=None)
@given(raw_frames(MISSION_NAMES))
def test_whatever_decodes_from_raw_bytes_never_crashes_the_cores(data: bytes) -> None:
    decoded = decode_stream(data)
    cores_and_checks = [
        (MissionUpload(plan(2), MISSION, 1, 1, retries=1), _check_upload),
        (MissionDownload(MISSION, 1, 1, retries=1), _check_download),
        (MissionClear(MISSION, 1, 1, retries=1), _check_clear),
        (MissionSetCurrent(1, 1, 1, retries=1), _check_set_current),
    ]
    for core, check in cores_and_checks:
        check(core, _run(core, decoded, max_ticks=3))
