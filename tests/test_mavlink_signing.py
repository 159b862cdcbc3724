"""MAVLink 2 signing between the companion and the autopilot.

The signature checks of both sides on crafted frames (the bridge's `check_signature` and the
built-in vehicle's ArduPilot-like `Signing`), with hypothesis mutating signed frames; the
bridge's link dropping what is not signed by the autopilot, on an in-memory autopilot that
injects forgeries into the stream; the built-in vehicle over real TCP, where a second
connection (a plain pymavlink client: unsigned, wrongly keyed, or replaying) commands nothing
once the companion has set up signing; and ArduCopter SITL refusing an unsigned command
(marked `sitl`).

The built-in vehicle drops a rejected frame silently, as ArduPilot does, and counts it by
reason: the tests wait for that count before they look for an ACK that must not come, so
no outcome depends on how long a test waits.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.security.keys import KeyStore
from firmware_bridge.dialect import MAVLinkMessage, mavlink, mavutil
from firmware_bridge.endpoint import Endpoint
from firmware_bridge.errors import SigningError
from firmware_bridge.link import MavLink
from firmware_bridge.signing import (
    ACCEPTED_UNSIGNED,
    BAD_SIGNATURE,
    MAX_STREAMS,
    NEW_STREAM_WINDOW,
    OLD_TIMESTAMP,
    REPLAY,
    SIGNED,
    TOO_MANY_STREAMS,
    UNSIGNED,
    SigningSetup,
    check_secret,
    check_signature,
    signature_valid,
    signing_timestamp,
)
from firmware_bridge.vehicle import Vehicle
from sim.sitl import SitlProcess
from sim.vehicle import DEFAULT_HOME, VehicleServer
from sim.vehicle.signing import ARMED_REFUSAL, LOAD_AHEAD, Signing
from tests.conftest import HEARTBEAT_S, SITL_SKIP, sitl_binary

C = mavlink
SECRET = bytes(range(1, 33))
OTHER_SECRET = bytes(range(101, 133))
T0 = signing_timestamp(time.time())
GUIDED, LOITER, STABILIZE = 4, 5, 0
FORCE_ARM = 21196


# ---- frames ---------------------------------------------------------------------------------
def encoder(
    secret: bytes | None,
    timestamp: int = T0,
    *,
    link_id: int = 0,
    system: int = 1,
    component: int = 1,
) -> mavlink.MAVLink:
    """A pymavlink encoder that signs with `secret` (None: unsigned)."""
    mav = mavlink.MAVLink(None, srcSystem=system, srcComponent=component)
    if secret is not None:
        mav.signing.secret_key = secret
        mav.signing.sign_outgoing = True
        mav.signing.link_id = link_id
        mav.signing.timestamp = timestamp
    return mav


def heartbeat(mode: int = GUIDED, armed: bool = False) -> MAVLinkMessage:
    base = C.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED | (C.MAV_MODE_FLAG_SAFETY_ARMED if armed else 0)
    return C.MAVLink_heartbeat_message(C.MAV_TYPE_QUADROTOR, C.MAV_AUTOPILOT_ARDUPILOTMEGA,
                                       base, mode, C.MAV_STATE_STANDBY, 3)  # fmt: skip


def frame(msg: MAVLinkMessage, mav: mavlink.MAVLink) -> bytes:
    data = bytes(msg.pack(mav))
    mav.seq = (mav.seq + 1) % 256
    return data


def decode(data: bytes) -> list[MAVLinkMessage]:
    parser = mavlink.MAVLink(None)
    parser.robust_parsing = True
    try:
        return [m for m in parser.parse_buffer(data) or [] if m.get_type() != "BAD_DATA"]
    except Exception:  # what pymavlink raises on some corrupt frames even when robust
        return []


def receiver(secret: bytes = SECRET, timestamp: int = T0) -> mavlink.MAVLinkSigning:
    """The bridge's receive-side signing state for `secret`."""
    signing = mavlink.MAVLinkSigning()
    signing.secret_key = secret
    signing.timestamp = timestamp
    return signing


def vehicle_signing(secret: bytes = SECRET, timestamp: int = T0) -> Signing:
    """The built-in vehicle's signing with `secret` stored, on link 0."""
    signing = Signing()
    signing.link_opened(0)
    setup = C.MAVLink_setup_signing_message(1, 1, list(secret), timestamp)
    assert signing.setup(setup, armed=False) is None
    return signing


def one(data: bytes) -> MAVLinkMessage:
    (msg,) = decode(data)
    return msg


# ---- the checks on crafted frames -----------------------------------------------------------
def test_timestamps_count_10_us_since_2015() -> None:
    assert signing_timestamp(1_420_070_400) == 0
    assert signing_timestamp(1_420_070_401.5) == 150_000
    assert signing_timestamp(0.0) == 0  # a clock before 2015 (a Pi without RTC) is not negative


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        (b"short", "32 bytes, got 5"),
        (bytes(33), "32 bytes, got 33"),
        (bytes(32), "all zero"),
        ("0" * 32, "must be bytes, got str"),
    ],
)
def test_a_bad_secret_is_refused_naming_why(secret: object, reason: str) -> None:
    with pytest.raises(SigningError, match=reason):
        check_secret(secret)


def test_the_bridge_admits_only_signed_new_frames() -> None:
    signing = receiver()
    ap = encoder(SECRET, T0 + LOAD_AHEAD)
    first = frame(heartbeat(), ap)
    assert check_signature(signing, one(first)) == SIGNED
    assert signing.timestamp == T0 + LOAD_AHEAD + 1  # raised past the autopilot's
    assert check_signature(signing, one(frame(heartbeat(), ap))) == SIGNED
    assert check_signature(signing, one(first)) == REPLAY
    assert check_signature(signing, one(frame(heartbeat(), encoder(None)))) == UNSIGNED
    wrong = encoder(OTHER_SECRET, T0 + 10 * LOAD_AHEAD)
    assert check_signature(signing, one(frame(heartbeat(), wrong))) == BAD_SIGNATURE
    # a telemetry radio's reports pass unsigned, as ArduPilot lets them
    radio = C.MAVLink_radio_status_message(200, 190, 90, 20, 10, 0, 0)
    assert check_signature(signing, one(frame(radio, encoder(None)))) == ACCEPTED_UNSIGNED
    # a MAVLink 1 frame cannot be signed
    v1 = bytes(heartbeat().pack(encoder(None), force_mavlink1=True))
    assert check_signature(signing, one(v1)) == UNSIGNED


def test_a_forged_frame_changes_no_state() -> None:
    """pymavlink's own check records a stream's timestamp before it compares the tag, so a
    forged frame from the autopilot's ids with a far-future timestamp would make every real
    frame after it a replay; the tag is checked first here, as in ArduPilot."""
    signing = receiver()
    forged = frame(heartbeat(armed=True), encoder(OTHER_SECRET, T0 + 10**9))
    assert check_signature(signing, one(forged)) == BAD_SIGNATURE
    assert signing.stream_timestamps == {} and signing.timestamp == T0
    assert check_signature(signing, one(frame(heartbeat(), encoder(SECRET, T0 + 5)))) == SIGNED


def test_moving_the_timestamp_breaks_the_signature() -> None:
    data = bytearray(frame(heartbeat(), encoder(SECRET, T0)))
    data[-12] ^= 0x01  # the timestamp's low byte: not covered by the CRC, only by the tag
    assert check_signature(receiver(), one(bytes(data))) == BAD_SIGNATURE
    assert not vehicle_signing().accept(one(bytes(data)), 0)


def test_a_new_stream_must_be_recent_and_streams_are_bounded() -> None:
    signing = receiver(timestamp=T0 + NEW_STREAM_WINDOW + 1)
    assert check_signature(signing, one(frame(heartbeat(), encoder(SECRET, T0)))) == OLD_TIMESTAMP
    signing = receiver()
    for link_id in range(MAX_STREAMS):
        mav = encoder(SECRET, T0 + 1, link_id=link_id)
        assert check_signature(signing, one(frame(heartbeat(), mav))) == SIGNED
    extra = encoder(SECRET, T0 + 1, link_id=MAX_STREAMS)
    assert check_signature(signing, one(frame(heartbeat(), extra))) == TOO_MANY_STREAMS


def test_the_vehicle_checks_like_arducopter() -> None:
    signing = vehicle_signing()
    state = signing.outgoing(0)
    assert state is not None and state.timestamp == T0 + LOAD_AHEAD  # load_signing_key
    companion = encoder(SECRET, T0 + LOAD_AHEAD, component=191)
    first = frame(heartbeat(), companion)
    assert signing.accept(one(first), 0)
    assert not signing.accept(one(first), 0)
    assert not signing.accept(one(frame(heartbeat(), encoder(None))), 0)
    assert not signing.accept(one(frame(heartbeat(), encoder(OTHER_SECRET))), 0)
    # a new stream may be a minute behind the link's clock, not more
    assert signing.accept(one(frame(heartbeat(), encoder(SECRET, T0, system=245))), 0)
    assert not signing.accept(one(frame(heartbeat(), encoder(SECRET, T0 - 1, system=246))), 0)
    radio = C.MAVLink_radio_status_message(200, 190, 90, 20, 10, 0, 0)
    assert signing.accept(one(frame(radio, encoder(None))), 0)
    assert signing.rejected == {"replay": 1, "unsigned": 1, "bad-signature": 1, "old-timestamp": 1}


def test_the_vehicle_takes_a_key_only_while_disarmed_and_zero_turns_it_off() -> None:
    signing = Signing()
    signing.link_opened(3)
    setup = C.MAVLink_setup_signing_message(1, 1, list(SECRET), T0)
    assert signing.setup(setup, armed=True) == ARMED_REFUSAL
    assert signing.key is None and signing.outgoing(3) is None
    assert signing.setup(setup, armed=False) is None
    state = signing.outgoing(3)
    assert state is not None and state.link_id == 3
    # GPS time raises every link's timestamp and is saved with the key
    signing.update_timestamp((1_420_070_400 + 10**9) * 1_000_000)
    assert state.timestamp == 10**9 * 100_000 == signing.key.timestamp
    off = C.MAVLink_setup_signing_message(1, 1, [0] * 32, 0)
    assert signing.setup(off, armed=False) is None
    assert signing.outgoing(3) is None
    assert signing.accept(one(frame(heartbeat(), encoder(None))), 3)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_no_mutation_of_a_signed_frame_passes(data: st.DataObject) -> None:
    original = frame(heartbeat(), encoder(SECRET, T0 + LOAD_AHEAD + 1, component=191))
    mutated = bytearray(original)
    flips = data.draw(
        st.lists(
            st.tuples(st.integers(0, len(original) - 1), st.integers(1, 255)),
            min_size=1,
            max_size=4,
        )
    )
    for index, xor in flips:
        mutated[index] ^= xor
    if bytes(mutated) == original:
        return
    for msg in decode(bytes(mutated)):
        assert check_signature(receiver(), msg) not in (SIGNED, ACCEPTED_UNSIGNED)
        assert not vehicle_signing().accept(msg, 0)


def test_the_set_up_ends_on_a_signed_answer_or_the_autopilots_refusal() -> None:
    setup = SigningSetup(SECRET, T0, 1, 1, timeout=1.0, retries=1)
    (request,) = setup.start(0.0)
    assert request.get_type() == "SETUP_SIGNING" and request.initial_timestamp == T0
    assert setup.receive(one(frame(heartbeat(), encoder(None))), 0.1) == []
    assert setup.receive(one(frame(heartbeat(), encoder(OTHER_SECRET))), 0.2) == []
    assert not setup.finished
    assert [m.get_type() for m in setup.tick(1.0)] == ["SETUP_SIGNING"]  # re-sent on silence
    setup.receive(one(frame(heartbeat(), encoder(SECRET, T0 + LOAD_AHEAD))), 1.1)
    assert setup.finished and setup.result() is None

    refused = SigningSetup(SECRET, T0, 1, 1)
    refused.start(0.0)
    text = C.MAVLink_statustext_message(C.MAV_SEVERITY_WARNING, ARMED_REFUSAL.encode(), 0, 0)
    refused.receive(one(frame(text, encoder(None))), 0.1)
    with pytest.raises(SigningError, match="refused SETUP_SIGNING: ERROR: Won't setup signing"):
        refused.result()


# ---- the bridge's link on an in-memory autopilot --------------------------------------------
class SigningAutopilot:
    """A transport whose far end is an autopilot that takes SETUP_SIGNING (signing what it
    sends from then on, like ArduPilot) and lets the test inject any bytes into the stream
    towards the companion, as a device on a shared bus could."""

    def __init__(self) -> None:
        self.mav = mavlink.MAVLink(None, srcSystem=1, srcComponent=1)
        self._parser = mavlink.MAVLink(None)
        self._inbox: queue.Queue[bytes] = queue.Queue()
        self.received: list[MAVLinkMessage] = []

    def send(self, msg: MAVLinkMessage) -> bytes:
        data = frame(msg, self.mav)
        self._inbox.put(data)
        return data

    def inject(self, data: bytes) -> None:
        self._inbox.put(data)

    def read(self, timeout: float) -> bytes:
        try:
            return self._inbox.get(timeout=timeout)
        except queue.Empty:
            return frame(heartbeat(), self.mav)

    def write(self, data: bytes) -> None:
        for msg in self._parser.parse_buffer(data) or []:
            self.received.append(msg)
            if msg.get_type() == "SETUP_SIGNING":
                signing = self.mav.signing
                signing.secret_key = bytes(msg.secret_key)
                signing.timestamp = msg.initial_timestamp + LOAD_AHEAD
                signing.sign_outgoing = True

    def close(self) -> None:
        pass


def test_the_link_drops_what_the_autopilot_did_not_sign() -> None:
    autopilot = SigningAutopilot()
    link = MavLink(
        Endpoint("tcp", "fake", 1),
        connect_timeout_s=2.0,
        heartbeat_interval_s=60.0,
        opener=lambda _endpoint, _timeout: autopilot,
    )
    vehicle = Vehicle(link)
    link.open()
    try:
        vehicle.setup_signing(SECRET)
        assert link.signing == "on"
        (setup,) = [m for m in autopilot.received if m.get_type() == "SETUP_SIGNING"]
        assert bytes(setup.secret_key) == SECRET
        assert abs(setup.initial_timestamp - signing_timestamp(time.time())) < 10 * 100_000
        seen: list[MAVLinkMessage] = []
        link.add_listener(lambda m: seen.append(m) if m.get_type() == "STATUSTEXT" else None)
        real = autopilot.send(C.MAVLink_statustext_message(6, b"real 1", 0, 0))
        autopilot.inject(frame(C.MAVLink_statustext_message(6, b"unsigned", 0, 0), encoder(None)))
        autopilot.inject(frame(heartbeat(LOITER, armed=True), encoder(None)))
        forged = encoder(OTHER_SECRET, T0 + 10**9)
        autopilot.inject(frame(heartbeat(LOITER, armed=True), forged))
        autopilot.inject(real)  # a recording of a genuine frame, played back
        autopilot.send(C.MAVLink_statustext_message(6, b"real 2", 0, 0))
        deadline = time.monotonic() + 5.0
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [m.text for m in seen] == ["real 1", "real 2"]
        assert link.stats.signature_rejects == {"unsigned": 2, "bad-signature": 1, "replay": 1}
        assert not vehicle.state.armed and vehicle.state.mode != "LOITER"
        # everything the companion sends after SETUP_SIGNING is signed with the key
        link.send(C.MAVLink_heartbeat_message(C.MAV_TYPE_ONBOARD_CONTROLLER, 8, 0, 0, 4, 3))
        after = autopilot.received[autopilot.received.index(setup) + 1 :]
        assert after and all(signature_valid(SECRET, m) for m in after)
    finally:
        vehicle.close()


# ---- the built-in vehicle over TCP ----------------------------------------------------------
@pytest.fixture
def server() -> Iterator[VehicleServer]:
    srv = VehicleServer(DEFAULT_HOME, speedup=20.0, port=0)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def connect(
    server: VehicleServer,
    secret: bytes | None,
    command_timeout_s: float = 1.5,
    command_retries: int = 3,
) -> Vehicle:
    return Vehicle.connect(
        f"tcp:127.0.0.1:{server.port}",
        connect_timeout_s=10.0,
        heartbeat_interval_s=HEARTBEAT_S,
        signing_secret=secret,
        command_timeout_s=command_timeout_s,
        command_retries=command_retries,
    )


def _anything(_mav: mavlink.MAVLink, _msg_id: int) -> bool:
    return True


class Bystander:
    """Another device on the vehicle's links: a plain pymavlink client (system 245)."""

    def __init__(self, port: int, secret: bytes | None = None, link_id: int = 7) -> None:
        self.conn = mavutil.mavlink_connection(
            f"tcp:127.0.0.1:{port}", source_system=245, source_component=190
        )
        if secret is not None:
            # it signs what it sends, and reads everything (the callback is asked about any
            # frame that fails pymavlink's check: a wrong key must not blind it)
            self.conn.setup_signing(
                secret, sign_outgoing=True, link_id=link_id, allow_unsigned_callback=_anything
            )
        self.first = self.conn.wait_heartbeat(timeout=10)
        assert self.first is not None

    def command(self, command: int, *params: float) -> bytes:
        """Send a COMMAND_LONG; returns its bytes as they went out."""
        p = [*params, *[0.0] * (7 - len(params))]
        msg = self.conn.mav.command_long_encode(1, 1, command, 0, *p)
        self.conn.mav.send(msg)
        return bytes(msg.get_msgbuf())

    def replay(self, data: bytes) -> None:
        self.conn.write(data)

    def acks(self) -> list[MAVLinkMessage]:
        """The COMMAND_ACKs received so far."""
        found = []
        while (msg := self.conn.recv_match(blocking=False)) is not None:
            if msg.get_type() == "COMMAND_ACK":
                found.append(msg)
        return found

    def ack(self, command: int, timeout: float = 10.0) -> MAVLinkMessage | None:
        """The next COMMAND_ACK for `command` within `timeout` seconds, or None."""
        return self.conn.recv_match(
            type="COMMAND_ACK", condition=f"COMMAND_ACK.command=={command}", blocking=True,
            timeout=timeout,
        )  # fmt: skip

    def close(self) -> None:
        self.conn.close()


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def rejected(server: VehicleServer, reason: str) -> int:
    return server.signing_rejected.get(reason, 0)


def test_only_the_signed_companion_commands_the_vehicle(server: VehicleServer) -> None:
    companion = connect(server, SECRET)
    bystander = Bystander(server.port)
    try:
        assert server.signing_enabled and companion.link.signing == "on"
        assert bystander.first.get_msgbuf()[2] & 1  # the vehicle signs what it sends
        companion.wait_armable(20.0)
        companion.set_mode("GUIDED")
        # unsigned: a mode change and a forced arm, both of which would be obeyed if taken
        before = rejected(server, "unsigned")
        bystander.command(C.MAV_CMD_DO_SET_MODE, C.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED, LOITER)
        bystander.command(C.MAV_CMD_COMPONENT_ARM_DISARM, 1, FORCE_ARM)
        wait_for(lambda: rejected(server, "unsigned") >= before + 2, "the vehicle to drop both")
        companion.set_mode("GUIDED")  # a signed round trip after them: they were handled
        assert bystander.acks() == []
        assert server.state.mode == "GUIDED" and not server.state.armed
        # the same commands signed by the companion are obeyed
        companion.arm()
        assert server.state.armed
        companion.disarm()
        assert companion.link.stats.signature_rejects == {}
    finally:
        bystander.close()
        companion.close()


def test_a_wrong_key_and_a_replay_command_nothing(server: VehicleServer) -> None:
    companion = connect(server, SECRET)
    wrong = Bystander(server.port, OTHER_SECRET)
    keyed = Bystander(server.port, SECRET)
    try:
        companion.set_mode("GUIDED")
        wrong.command(C.MAV_CMD_DO_SET_MODE, C.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED, STABILIZE)
        wait_for(lambda: rejected(server, "bad-signature") >= 1, "the wrongly keyed command")
        # ArduPilot trusts the key, not the link: a holder of the key commands from anywhere,
        # once per frame
        sent = keyed.command(C.MAV_CMD_DO_SET_MODE, C.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED, LOITER)
        ack = keyed.ack(C.MAV_CMD_DO_SET_MODE)
        assert ack is not None and ack.result == C.MAV_RESULT_ACCEPTED
        wait_for(lambda: server.state.mode == "LOITER", "LOITER")
        companion.set_mode("GUIDED")
        wrong.replay(sent)
        wait_for(lambda: rejected(server, "replay") >= 1, "the replayed command")
        companion.set_mode("GUIDED")
        assert wrong.acks() == [] and keyed.acks() == []
        assert server.state.mode == "GUIDED"
    finally:
        wrong.close()
        keyed.close()
        companion.close()


def test_signing_is_not_set_up_while_armed(server: VehicleServer) -> None:
    companion = connect(server, None)
    bystander = Bystander(server.port)
    try:
        companion.wait_armable(20.0)
        companion.set_mode("GUIDED")
        companion.arm()
        with pytest.raises(SigningError, match="only set up while the vehicle is disarmed"):
            companion.setup_signing(SECRET)
        assert companion.link.signing == "off"
        # nor does the vehicle take SETUP_SIGNING from anyone while armed: it says why
        bystander.conn.mav.setup_signing_send(1, 1, list(SECRET), T0)
        text = bystander.conn.recv_match(
            type="STATUSTEXT", condition=f'STATUSTEXT.text=="{ARMED_REFUSAL}"', blocking=True,
            timeout=10,
        )  # fmt: skip
        assert text is not None and not server.signing_enabled
        companion.disarm()
    finally:
        bystander.close()
        companion.close()


def test_a_vehicle_holding_another_key_leaves_the_link_unsigned(server: VehicleServer) -> None:
    first = connect(server, OTHER_SECRET)
    first.close()
    with pytest.raises(SigningError, match="may hold another key"):
        connect(server, SECRET, command_timeout_s=0.3, command_retries=1)
    link = MavLink(f"tcp:127.0.0.1:{server.port}", heartbeat_interval_s=HEARTBEAT_S)
    vehicle = Vehicle(link, command_timeout_s=0.3, command_retries=1)
    link.open()
    try:
        with pytest.raises(SigningError):
            vehicle.setup_signing(SECRET)
        assert link.signing == "off" and not link._mav.signing.sign_outgoing
    finally:
        vehicle.close()


def test_the_drones_key_store_secret_is_what_connect_takes(
    server: VehicleServer, tmp_path: Path
) -> None:
    store = KeyStore(tmp_path / "keys")
    store.init_drone("drone-7")
    companion = connect(server, store.mavlink_signing_secret())
    try:
        assert companion.link.signing == "on" and server.signing_enabled
        companion.set_mode("GUIDED")
    finally:
        companion.close()


def test_a_restarted_companion_goes_on_with_the_same_key(server: VehicleServer) -> None:
    """Nothing is persisted: the restarted companion's clock is behind the timestamps its
    first run took from the vehicle, and it catches up from the vehicle's signed frames."""
    first = connect(server, SECRET)
    first.set_mode("GUIDED")
    used = first.link._mav.signing.timestamp
    first.close()
    again = connect(server, SECRET)
    try:
        assert signing_timestamp(time.time()) < used  # its own clock alone would replay
        again.set_mode("LOITER")
        again.set_mode("GUIDED")
        assert again.link._mav.signing.timestamp > used
    finally:
        again.close()


# ---- ArduCopter SITL --------------------------------------------------------------------------
SITL_INSTANCE = 6  # TCP 5820 (SERIAL0), 5822 (SERIAL1), 5823 (SERIAL2)


@pytest.mark.sitl
def test_sitl_refuses_an_unsigned_command_once_the_companion_signs(tmp_path: Path) -> None:
    """ArduCopter SITL, fresh (no key in its storage). SITL waits for a client on SERIAL0
    before it boots, and SERIAL0 is channel 0, which ArduPilot never checks; so a ground
    station sits there, the companion connects on SERIAL2 as on the drone (TELEM2), and the
    unsigned sender on SERIAL1."""
    binary = sitl_binary()
    if binary is None:
        pytest.skip(SITL_SKIP)
    sitl = SitlProcess(binary, speedup=1.0, instance=SITL_INSTANCE, workdir=tmp_path / "sitl")
    sitl.start()
    try:
        usb = Bystander(sitl.port)
        companion = Vehicle.connect(
            f"tcp:127.0.0.1:{sitl.port + 3}",
            connect_timeout_s=30.0,
            heartbeat_interval_s=HEARTBEAT_S,
            signing_secret=SECRET,
        )
        stranger = Bystander(sitl.port + 2)
        try:
            assert companion.link.signing == "on"
            assert stranger.first.get_msgbuf()[2] & 1  # SITL now signs on SERIAL1 too
            # SITL's boot ends in its initial mode: change modes only after it
            companion.wait_until(
                lambda s: s.system_status == C.MAV_STATE_STANDBY, 30.0, "SITL to finish booting"
            )
            companion.set_mode("GUIDED")
            stranger.command(C.MAV_CMD_DO_SET_MODE, C.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED, STABILIZE)
            stranger.command(C.MAV_CMD_COMPONENT_ARM_DISARM, 1, FORCE_ARM)
            # SITL drops a frame without a word, so there is no count to wait for: a signed
            # round trip sent after them comes back first, and then no ACK follows for them.
            companion.set_mode("GUIDED")
            assert stranger.ack(C.MAV_CMD_DO_SET_MODE, timeout=2.0) is None
            assert stranger.acks() == []
            assert companion.state.mode == "GUIDED" and not companion.state.armed
            # SERIAL0 is ArduPilot's exception: the same unsigned mode change is obeyed there
            usb.command(C.MAV_CMD_DO_SET_MODE, C.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED, STABILIZE)
            ack = usb.ack(C.MAV_CMD_DO_SET_MODE)
            assert ack is not None and ack.result == C.MAV_RESULT_ACCEPTED
            companion.wait_until(lambda s: s.mode == "STABILIZE", 10.0, "STABILIZE from SERIAL0")
            companion.set_mode("GUIDED")  # and the companion's signed commands still work
            assert companion.link.stats.signature_rejects == {}
        finally:
            stranger.close()
            companion.close()
            usb.close()
    finally:
        sitl.stop()
