"""The routing core (`firmware_bridge.router`) from bytes: frames built and signed with pymavlink
and known keys go in, and what reaches the flight controller or a ground endpoint is checked
byte for byte, with the flight controller's acceptance judged by the built-in vehicle's
ArduPilot-like signature check. Time is passed in, so the rate limits are counted exactly.
Hypothesis feeds malformed and mutated input: nothing raises, nothing unsigned passes."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.dialect import MAVLinkMessage, mavlink
from firmware_bridge.router import (
    COMMAND,
    LINK_ID_BASE,
    MAX_DATAGRAM,
    READ_ONLY,
    EndpointPolicy,
    Filter,
    Router,
    RouterError,
    TokenBucket,
    check_message_names,
    command_refusal,
    sign_frame,
)
from firmware_bridge.signing import (
    SIGNED,
    TICKS_PER_S,
    Signature,
    check_signature,
    signature_of,
    signature_valid,
)
from sim.vehicle.signing import Signing

C = mavlink
DRONE = bytes(range(1, 33))
GCS_KEY = bytes(range(40, 72))
OTHER = bytes(range(101, 133))
T0 = 100_000 * TICKS_PER_S  # a signing timestamp (about a day after 2015-01-01)


def encoder(
    secret: bytes | None,
    timestamp: int = T0,
    *,
    system: int = 255,
    component: int = 190,
    link_id: int = 0,
) -> mavlink.MAVLink:
    """A pymavlink encoder for a ground station (system 255), signing with `secret`."""
    mav = mavlink.MAVLink(None, srcSystem=system, srcComponent=component)
    if secret is not None:
        mav.signing.secret_key = secret
        mav.signing.sign_outgoing = True
        mav.signing.link_id = link_id
        mav.signing.timestamp = timestamp
    return mav


def pack(msg: MAVLinkMessage, mav: mavlink.MAVLink) -> bytes:
    data = bytes(msg.pack(mav))
    mav.seq = (mav.seq + 1) % 256
    return data


def decode(data: bytes) -> list[MAVLinkMessage]:
    parser = mavlink.MAVLink(None)
    parser.robust_parsing = True
    return [m for m in parser.parse_buffer(data) or [] if m.get_type() != "BAD_DATA"]


def param_set(name: str = "RTL_ALT_FINAL", value: float = 7.0) -> MAVLinkMessage:
    return C.MAVLink_param_set_message(1, 1, name.encode(), value, C.MAV_PARAM_TYPE_REAL32)


def heartbeat() -> MAVLinkMessage:
    return C.MAVLink_heartbeat_message(C.MAV_TYPE_GCS, C.MAV_AUTOPILOT_INVALID, 0, 0, 0, 3)


def position() -> MAVLinkMessage:
    return C.MAVLink_global_position_int_message(1000, -353632610, 1491652300, 584000, 0, 0, 0,
                                                 0, 0)  # fmt: skip


def fc_message(msg: MAVLinkMessage, secret: bytes | None = DRONE, timestamp: int = T0) -> Any:
    """`msg` as the link hands it over: decoded from the autopilot's (signed) frame."""
    (decoded,) = decode(pack(msg, encoder(secret, timestamp, system=1, component=1)))
    return decoded


def signature(frame: bytes) -> Signature:
    (msg,) = decode(frame)
    sig = signature_of(msg)
    assert sig is not None
    return sig


def stamp(frame: bytes) -> int:
    return signature(frame).timestamp


def router(*policies: EndpointPolicy, fc_secret: bytes | None = DRONE, start: int = T0) -> Router:
    return Router(policies, fc_secret=fc_secret, start_timestamp=start, vehicle_systems={1})


def command(name: str = "ops", **kw: object) -> EndpointPolicy:
    return EndpointPolicy(name, COMMAND, GCS_KEY, **kw)  # type: ignore[arg-type]


def autopilot_accepts(frame: bytes) -> bool:
    """Whether ArduPilot holding the drone's key would take `frame` (the built-in vehicle's
    reading of GCS_Signing.cpp and mavlink_signature_check)."""
    vehicle = Signing()
    vehicle.link_opened(0)
    assert vehicle.setup(C.MAVLink_setup_signing_message(1, 1, list(DRONE), T0), False) is None
    (msg,) = decode(frame)
    return vehicle.accept(msg, 0)


# ---- read-only ------------------------------------------------------------------------------
def test_read_only_gets_the_autopilot_as_received_and_sends_nothing_back() -> None:
    core = router(EndpointPolicy("qgc"))
    msg = fc_message(position())
    assert core.from_fc(msg, 0.0) == [(0, bytes(msg.get_msgbuf()))]
    for frame in (pack(heartbeat(), encoder(None)), pack(param_set(), encoder(GCS_KEY))):
        inbound = core.from_endpoint(0, frame)
        assert inbound.to_fc == [] and inbound.sender_valid
    assert core.dropped()["qgc"]["in"] == {"read-only": 2}


# ---- command --------------------------------------------------------------------------------
def test_a_signed_command_is_re_signed_with_the_drones_key_ids_and_payload_kept() -> None:
    core = router(EndpointPolicy("qgc"), command())
    sent = pack(param_set(value=12.5), encoder(GCS_KEY, T0 + 5))
    inbound = core.from_endpoint(1, sent)
    (frame,) = inbound.to_fc
    assert inbound.sender_valid
    (out,) = decode(frame)
    assert (out.get_srcSystem(), out.get_srcComponent(), out.get_seq()) == (255, 190, 0)
    assert out.get_type() == "PARAM_SET" and out.param_value == 12.5
    assert frame[:-13] == sent[:-13]  # header, payload and checksum untouched
    assert signature_valid(DRONE, out) and not signature_valid(GCS_KEY, out)
    assert signature(frame).link_id == LINK_ID_BASE + 1
    assert autopilot_accepts(frame)
    assert core.dropped()["ops"]["in"] == {}


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: pack(param_set(), encoder(None)), "unsigned"),
        (lambda: pack(param_set(), encoder(OTHER, T0 + 5)), "bad-signature"),
        (lambda: pack(param_set(), encoder(DRONE, T0 + 5)), "bad-signature"),
        (lambda: pack(param_set(), encoder(GCS_KEY, T0 - 61 * TICKS_PER_S)), "old-timestamp"),
        (
            lambda: pack(C.MAVLink_radio_status_message(1, 1, 1, 1, 1, 1, 1), encoder(None)),
            "unsigned-radio",
        ),
        (
            lambda: pack(C.MAVLink_setup_signing_message(1, 1, list(OTHER), T0), encoder(GCS_KEY)),
            "setup-signing",
        ),
        (lambda: pack(param_set(), encoder(GCS_KEY, system=1, component=191)), "spoofed-source"),
    ],
)
def test_what_a_command_endpoint_must_not_pass(make: Any, reason: str) -> None:
    core = router(command())
    assert core.from_endpoint(0, make()).to_fc == []
    assert core.dropped()["ops"]["in"] == {reason: 1}


def test_a_replayed_frame_is_dropped_and_the_stream_must_move_forward() -> None:
    core = router(command())
    mav = encoder(GCS_KEY, T0 + 100)
    first = pack(param_set(), mav)
    assert len(core.from_endpoint(0, first).to_fc) == 1
    assert core.from_endpoint(0, first).to_fc == []  # the same frame again
    older = pack(param_set(), encoder(GCS_KEY, T0 + 50))  # same stream, earlier timestamp
    assert core.from_endpoint(0, older).to_fc == []
    assert len(core.from_endpoint(0, pack(param_set(), mav)).to_fc) == 1
    other_component = pack(param_set(), encoder(GCS_KEY, T0 + 50, component=191))
    assert len(core.from_endpoint(0, other_component).to_fc) == 1  # a stream of its own
    assert core.dropped()["ops"]["in"] == {"replay": 2}


def test_in_filters_hold_after_the_signature() -> None:
    core = router(command(in_filter=Filter(deny=frozenset({"HEARTBEAT"}))))
    mav = encoder(GCS_KEY, T0 + 1)
    beat = core.from_endpoint(0, pack(heartbeat(), mav))
    assert beat.to_fc == [] and beat.sender_valid  # signed: the sender is known
    assert len(core.from_endpoint(0, pack(param_set(), mav)).to_fc) == 1
    allow = router(command(in_filter=Filter(allow=frozenset({"PARAM_REQUEST_READ"}))))
    assert allow.from_endpoint(0, pack(param_set(), encoder(GCS_KEY, T0 + 1))).to_fc == []
    assert core.dropped()["ops"]["in"] == allow.dropped()["ops"]["in"] == {"filtered": 1}


def test_re_signed_timestamps_rise_and_follow_the_autopilots_clock() -> None:
    core = router(command(), start=T0)
    mav = encoder(GCS_KEY, T0 + 1)
    stamps = [stamp(core.from_endpoint(0, pack(param_set(), mav)).to_fc[0]) for _ in range(3)]
    assert stamps == sorted(set(stamps)) and stamps[0] > T0
    ahead = T0 + 3600 * TICKS_PER_S  # the autopilot's GPS time, an hour on
    core.from_fc(fc_message(heartbeat(), timestamp=ahead), 0.0)
    (frame,) = core.from_endpoint(0, pack(param_set(), mav)).to_fc
    assert stamp(frame) > ahead
    forged = fc_message(heartbeat(), secret=OTHER, timestamp=ahead * 2)
    core.from_fc(forged, 0.0)  # not signed with the drone's key: it moves nothing
    (frame,) = core.from_endpoint(0, pack(param_set(), mav)).to_fc
    assert stamp(frame) < ahead * 2


def test_an_autopilot_clock_running_ahead_does_not_shut_a_ground_station_out() -> None:
    core = router(command(), start=T0)
    core.from_fc(fc_message(heartbeat(), timestamp=T0 + 3600 * TICKS_PER_S), 0.0)
    half_a_minute_behind = pack(param_set(), encoder(GCS_KEY, T0 - 30 * TICKS_PER_S))
    assert len(core.from_endpoint(0, half_a_minute_behind).to_fc) == 1


def test_a_command_endpoint_gets_the_stream_signed_with_its_own_key() -> None:
    core = router(command())
    msg = fc_message(position())
    ((index, frame),) = core.from_fc(msg, 0.0)
    (out,) = decode(frame)
    assert index == 0 and frame[:-13] == bytes(msg.get_msgbuf())[:-13]
    assert signature_valid(GCS_KEY, out) and not signature_valid(DRONE, out)
    ground = mavlink.MAVLinkSigning()  # what the ground station checks it with
    ground.secret_key = GCS_KEY
    ground.timestamp = T0
    assert check_signature(ground, out) == SIGNED


def test_an_unsigned_frame_is_signed_with_a_new_checksum_and_mavlink1_cannot_be() -> None:
    unsigned = pack(position(), encoder(None, system=1, component=1))
    signed = sign_frame(unsigned, GCS_KEY, 3, T0)
    assert signed is not None
    strict = mavlink.MAVLink(None)  # pymavlink's own check of the checksum and the signature
    strict.signing.secret_key = GCS_KEY
    strict.signing.timestamp = T0
    (out,) = strict.parse_buffer(signed)
    assert out.get_type() == "GLOBAL_POSITION_INT" and out.lat == -353632610
    mav1 = mavlink.MAVLink(None, srcSystem=1, srcComponent=1)
    assert sign_frame(bytes(heartbeat().pack(mav1, force_mavlink1=True)), GCS_KEY, 3, T0) is None
    assert sign_frame(b"\xfd\x00", GCS_KEY, 3, T0) is None


# ---- out: filters and the rate limit ---------------------------------------------------------
def test_out_filters() -> None:
    core = router(
        EndpointPolicy("a", out_filter=Filter(deny=frozenset({"GLOBAL_POSITION_INT"}))),
        EndpointPolicy("b", out_filter=Filter(allow=frozenset({"GLOBAL_POSITION_INT"}))),
    )
    assert [i for i, _ in core.from_fc(fc_message(position()), 0.0)] == [1]
    assert [i for i, _ in core.from_fc(fc_message(heartbeat()), 0.0)] == [0]
    assert core.dropped() == {"a": {"out": {"filtered": 1}, "in": {}},
                              "b": {"out": {"filtered": 1}, "in": {}}}  # fmt: skip


def test_the_rate_limit_in_simulated_time_heartbeats_aside() -> None:
    core = router(EndpointPolicy("lte", rate_hz=10.0))
    pos, beat = fc_message(position()), fc_message(heartbeat())
    passed = beats = 0
    for tick in range(1000):  # 10 s of a 100 Hz position stream, a heartbeat each second
        now = tick / 100
        passed += len(core.from_fc(pos, now))
        if tick % 100 == 0:
            beats += len(core.from_fc(beat, now))
    # One second's worth at the start, then 10 a second for the 9.99 s that follow.
    assert 10 + 99 <= passed <= 10 + 100
    assert beats == 10
    assert core.dropped()["lte"]["out"] == {"rate-limited": 1000 - passed}


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(2.0, 3.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5) and not bucket.take(0.5)  # one token in half a second
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # burst cap
    assert not bucket.take(99.0)  # time going back adds nothing


# ---- malformed input ------------------------------------------------------------------------
def test_malformed_datagrams_are_counted_by_reason() -> None:
    core = router(command())
    good = pack(param_set(), encoder(GCS_KEY, T0 + 1))
    bad_crc = bytearray(good)
    bad_crc[12] ^= 0xFF  # a payload byte
    unknown = bytearray(pack(heartbeat(), encoder(None)))
    unknown[7:10] = (40000).to_bytes(3, "little")
    for data in (b"hello ground", good[:20], bytes(bad_crc), bytes(unknown),
                 good * (MAX_DATAGRAM // len(good) + 1)):  # fmt: skip
        inbound = core.from_endpoint(0, data)
        assert inbound.to_fc == [] and not inbound.sender_valid
    assert core.dropped()["ops"]["in"] == {"garbage": 1, "truncated": 1, "bad-crc": 1,
                                           "unknown-message": 1, "oversize": 1}  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3 * MAX_DATAGRAM))
def test_any_bytes_never_raise_and_never_reach_the_autopilot(data: bytes) -> None:
    core = router(EndpointPolicy("ro"), command("cmd"), command("tcp", framing="stream"))
    for index in range(3):
        assert core.from_endpoint(index, data).to_fc == []


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_change_to_a_signed_frame_keeps_it_away_from_the_autopilot(data: st.DataObject) -> None:
    frame = bytearray(pack(param_set(value=3.0), encoder(GCS_KEY, T0 + 9)))
    position_ = data.draw(st.integers(0, len(frame) - 1))
    frame[position_] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(1, len(frame)))
    core = router(command())
    assert core.from_endpoint(0, bytes(frame[:cut])).to_fc == []


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 200), min_size=1, max_size=20))
def test_a_stream_passes_the_same_frames_however_it_is_cut(cuts: list[int]) -> None:
    mav = encoder(GCS_KEY, T0 + 1)
    frames = [pack(param_set(value=float(i)), mav) for i in range(5)]
    stream = b"".join(frames)
    core = router(command(framing="stream"))
    passed: list[bytes] = []
    start = 0
    for size in [*cuts, len(stream)]:
        passed += core.from_endpoint(0, stream[start : start + size]).to_fc
        start += size
    assert [decode(f)[0].param_value for f in passed] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert core.dropped()["ops"]["in"] == {}


def test_a_new_connection_forgets_the_half_frame_of_the_last() -> None:
    core = router(command(framing="stream"))
    frame = pack(param_set(), encoder(GCS_KEY, T0 + 1))
    assert core.from_endpoint(0, frame[:15]).to_fc == []
    core.restart_stream(0)
    assert len(core.from_endpoint(0, frame).to_fc) == 1


# ---- policies that cannot run ---------------------------------------------------------------
def test_policies_that_make_no_sense_are_refused_naming_the_endpoint() -> None:
    with pytest.raises(RouterError, match="ops: a command endpoint needs its own secret"):
        EndpointPolicy("ops", COMMAND)
    with pytest.raises(RouterError, match="qgc: a read-only endpoint takes no secret"):
        EndpointPolicy("qgc", READ_ONLY, GCS_KEY)
    with pytest.raises(RouterError, match="ops: signing secret must be 32 bytes"):
        EndpointPolicy("ops", COMMAND, b"short")
    with pytest.raises(RouterError, match="rate_hz must be above 0"):
        EndpointPolicy("qgc", rate_hz=0.0)
    with pytest.raises(RouterError, match="'HEARTBAET' \\(did you mean 'HEARTBEAT'\\?\\)"):
        EndpointPolicy("qgc", out_filter=Filter(deny=frozenset({"HEARTBAET"})))
    with pytest.raises(RouterError, match="names must differ"):
        router(EndpointPolicy("qgc"), EndpointPolicy("qgc"))
    assert check_message_names(["HEARTBEAT", "PARAM_SET"]) == {"HEARTBEAT", "PARAM_SET"}


def test_command_endpoints_need_a_signed_link_and_a_key_of_their_own() -> None:
    with pytest.raises(RouterError, match="runs it unsigned"):
        router(command(), fc_secret=None)
    assert router(EndpointPolicy("qgc"), fc_secret=None).from_fc(fc_message(heartbeat()), 0)
    same = EndpointPolicy("ops", COMMAND, DRONE)
    assert "the drone's own MAVLink secret" in (command_refusal(same, DRONE) or "")
    assert command_refusal(command(), DRONE) is None


def test_sign_frame_matches_the_mavlink_signature_definition() -> None:
    unsigned = pack(heartbeat(), encoder(None))
    signed = sign_frame(unsigned, GCS_KEY, 7, 1234)
    assert signed is not None
    body = signed[:-6]
    assert body[-7] == 7 and int.from_bytes(body[-6:], "little") == 1234
    assert signed[-6:] == hashlib.sha256(GCS_KEY + body).digest()[:6]
