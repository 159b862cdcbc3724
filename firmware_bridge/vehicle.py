"""The vehicle API the companion uses: one object over one link, in ArduCopter's terms.

Like MAVSDK's plugins, each capability here builds a command or a protocol transaction and
hands it to the link's one runner, where acknowledgements, retries and timeouts live; this
module only maps outcomes onto the caller's terms (a refused arm becomes `ArmingRefused`
with the autopilot's own pre-arm text). Every command is gated on a fresh heartbeat, and
every wait is bounded.

MAVLink 2 signing: `Vehicle.connect(endpoint, signing_secret=secret)` (or
`vehicle.setup_signing(secret)` on an open link) gives the autopilot the 32-byte secret with
SETUP_SIGNING while it is disarmed, signs everything the companion sends, and from then on
accepts from the autopilot only messages signed with that key; ArduPilot then drops unsigned
commands on its telemetry links. On the drone the secret is the key store's:
`Vehicle.connect(..., signing_secret=KeyStore(path).mavlink_signing_secret())`. See
`firmware_bridge.signing` for what ArduPilot does and what it still lets through.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence

from firmware_bridge.command_protocol import CommandAck, CommandInt, CommandLong
from firmware_bridge.dialect import mavlink
from firmware_bridge.endpoint import Endpoint
from firmware_bridge.errors import (
    ArmingRefused,
    BridgeError,
    CommandError,
    FenceError,
    FenceMismatch,
    MissionError,
    ParamError,
    ProtocolTimeout,
    SigningError,
)
from firmware_bridge.fence import (
    FenceCircle,
    FenceDefinition,
    FencePolygon,
    LatLonE7,
    RallyPoint,
    fence_differences,
    fence_problems,
    rally_differences,
    rally_problems,
)
from firmware_bridge.link import MavLink
from firmware_bridge.mission_protocol import (
    MissionClear,
    MissionDownload,
    MissionItem,
    MissionSetCurrent,
    MissionUpload,
)
from firmware_bridge.modes import mode_number
from firmware_bridge.param_protocol import ParamRead, ParamReadAll, ParamSet
from firmware_bridge.signing import (
    DEFAULT_LINK_ID,
    SigningResume,
    SigningSetup,
    check_secret,
    signing_timestamp,
)
from firmware_bridge.state import VehicleState
from firmware_bridge.state_tracker import StateTracker

log = logging.getLogger(__name__)

#: Telemetry the companion asks for (message id -> Hz, in the autopilot's time).
DEFAULT_STREAMS: dict[int, float] = {
    mavlink.MAVLINK_MSG_ID_GLOBAL_POSITION_INT: 10.0,
    mavlink.MAVLINK_MSG_ID_GPS_RAW_INT: 2.0,
    mavlink.MAVLINK_MSG_ID_SYS_STATUS: 2.0,
    mavlink.MAVLINK_MSG_ID_BATTERY_STATUS: 1.0,
    mavlink.MAVLINK_MSG_ID_EKF_STATUS_REPORT: 1.0,
    mavlink.MAVLINK_MSG_ID_EXTENDED_SYS_STATE: 2.0,
    mavlink.MAVLINK_MSG_ID_MISSION_CURRENT: 1.0,
    mavlink.MAVLINK_MSG_ID_HOME_POSITION: 0.5,
    mavlink.MAVLINK_MSG_ID_SYSTEM_TIME: 1.0,
}

#: A bound on one command's whole exchange, far past its own retries and IN_PROGRESS waits,
#: so that nothing can hang a caller even if a transaction misbehaves.
_COMMAND_BACKSTOP_S = 120.0
_ARM_FORCE_MAGIC = 21196  # ArduPilot: param2 of ARM_DISARM that skips the pre-arm checks


class Vehicle:
    """An ArduCopter reached over one `MavLink`."""

    def __init__(
        self,
        link: MavLink,
        *,
        command_timeout_s: float = 1.5,
        command_retries: int = 3,
        publish: Callable[[object], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.link = link
        self.command_timeout_s = command_timeout_s
        self.command_retries = command_retries
        self.tracker = StateTracker(link.target_system, link.target_component, publish, clock)
        self._remove_tracker = link.add_listener(self.tracker)

    @classmethod
    def connect(
        cls,
        endpoint: str | Endpoint,
        *,
        publish: Callable[[object], None] | None = None,
        target_system: int = 1,
        target_component: int = 1,
        own_system: int = 1,
        own_component: int = mavlink.MAV_COMP_ID_ONBOARD_COMPUTER,
        connect_timeout_s: float = 10.0,
        heartbeat_timeout_s: float = 3.0,
        heartbeat_interval_s: float = 1.0,
        command_timeout_s: float = 1.5,
        command_retries: int = 3,
        streams: dict[int, float] | None = None,
        clock: Callable[[], float] = time.monotonic,
        signing_secret: bytes | None = None,
        signing_link_id: int = DEFAULT_LINK_ID,
    ) -> Vehicle:
        """Open the link, wait for the autopilot, set up signing if `signing_secret` is given
        (see `setup_signing`; the link is closed again if that fails), and ask for the
        telemetry streams.

        `clock` is the companion's idea of the autopilot's pace: the monotonic clock on a
        drone; a simulator's clock under simulation, so that command timeouts and retries
        last as long in the autopilot's time at any speed-up."""
        if signing_secret is not None:
            check_secret(signing_secret)
        link = MavLink(
            endpoint,
            target_system=target_system,
            target_component=target_component,
            own_system=own_system,
            own_component=own_component,
            connect_timeout_s=connect_timeout_s,
            heartbeat_timeout_s=heartbeat_timeout_s,
            heartbeat_interval_s=heartbeat_interval_s,
            publish=publish,
            clock=clock,
        )
        vehicle = cls(
            link,
            command_timeout_s=command_timeout_s,
            command_retries=command_retries,
            publish=publish,
            clock=clock,
        )
        link.open()
        if signing_secret is not None:
            try:
                vehicle.setup_signing(signing_secret, link_id=signing_link_id)
            except BridgeError:
                vehicle.close()
                raise
        vehicle.request_streams(DEFAULT_STREAMS if streams is None else streams)
        return vehicle

    def close(self) -> None:
        """Close the link."""
        self._remove_tracker()
        self.link.close()

    def __enter__(self) -> Vehicle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state -----------------------------------------------------------------------------

    @property
    def state(self) -> VehicleState:
        """The latest state snapshot."""
        return self.tracker.state

    def wait_until(
        self, predicate: Callable[[VehicleState], bool], timeout: float, what: str
    ) -> VehicleState:
        """Wait until the state satisfies `predicate`; ProtocolTimeout names `what` otherwise."""
        state = self.tracker.wait_for(predicate, timeout)
        if state is None:
            raise ProtocolTimeout(f"timed out after {timeout:g} s waiting for {what}")
        return state

    def wait_armable(self, timeout: float) -> VehicleState:
        """Wait for what arming in GUIDED needs: a 3-D fix, a home, and an EKF that has an
        absolute horizontal position (SITL takes ~40 s of its own time to get there)."""
        needed = mavlink.EKF_POS_HORIZ_ABS | mavlink.EKF_PRED_POS_HORIZ_ABS
        return self.wait_until(
            lambda s: (
                s.gps.fix_type >= 3
                and s.home is not None
                and s.position is not None
                and s.ekf_flags & needed == needed
            ),
            timeout,
            "a 3-D fix, a home position and an EKF position estimate",
        )

    # -- signing ---------------------------------------------------------------------------

    def setup_signing(self, secret: bytes, *, link_id: int = DEFAULT_LINK_ID) -> None:
        """Turn MAVLink 2 signing on between the companion and the autopilot.

        Refused (SigningError) while the vehicle is armed, as ArduPilot refuses it
        (GCS_Signing.cpp handle_setup_signing). Sends SETUP_SIGNING with `secret` and an
        initial timestamp (the later of this machine's clock and the autopilot's GPS time,
        in 10 µs units since 2015-01-01) to the autopilot, signs everything the link sends
        from then on as link `link_id`, and waits until the autopilot sends a message signed
        with the key; only then does the link drop every message that is not correctly
        signed. If the autopilot does not start signing (it refused, or it already holds
        another key, so it drops the request like any frame not signed with that key), the
        link goes back to unsigned and SigningError says so. ArduPilot keeps the key in its
        storage across reboots, so this is also what a restarted companion calls.

        Armed, ArduPilot ignores SETUP_SIGNING (GCS_Signing.cpp handle_setup_signing) but
        still holds the key it was given: a companion restarted in the air resumes signing
        with it (`SigningResume`: nothing is sent to set it, the autopilot's signed messages
        confirm it), and SigningError says so when the autopilot holds no key or another."""
        secret = check_secret(secret)
        if self.link.signing != "off":
            raise SigningError(f"signing is already {self.link.signing} on {self.link.endpoint}")
        self.link.require_up()
        state = self.wait_until(
            lambda s: s.heartbeats > 0, self.link.heartbeat_timeout_s, "the autopilot's heartbeat"
        )
        initial = self.link.start_signing(
            secret, link_id=link_id, timestamp=signing_timestamp(self._latest_utc())
        )
        setup = (SigningResume if state.armed else SigningSetup)(
            secret,
            initial,
            **self._ids(),
            timeout=self.command_timeout_s,
            retries=self.command_retries,
        )
        try:
            self.link.run(setup, timeout=_COMMAND_BACKSTOP_S)
        except ProtocolTimeout as exc:
            self.link.stop_signing()
            raise SigningError(
                f"the autopilot sent nothing signed with the new key ({exc}); it ignored "
                "SETUP_SIGNING: it may hold another key already, and then takes only "
                "messages signed with that one (or anything on its USB port)"
            ) from exc
        except BridgeError:
            self.link.stop_signing()
            raise
        self.link.enforce_signing()
        log.info("MAVLink signing %s autopilot %d/%d as link %d",
                 "resumed with the key held by armed" if state.armed else "set up with",
                 self.link.target_system, self.link.target_component, link_id)  # fmt: skip

    def _latest_utc(self) -> float:
        """The later of this machine's UTC and the autopilot's (SYSTEM_TIME from its GPS,
        carried forward on the link's clock): a companion without a real-time clock may
        boot with a stale one."""
        now = time.time()
        state = self.state
        if state.utc_time_s is None or state.utc_received_at is None:
            return now
        return max(now, state.utc_time_s + (self.tracker.clock() - state.utc_received_at))

    # -- commands --------------------------------------------------------------------------

    def command_long(
        self, command: int, *params: float, timeout: float | None = None
    ) -> CommandAck:
        """Send COMMAND_LONG and return its ACCEPTED ack; CommandError on any other result."""
        self.link.require_up()
        tx = CommandLong(
            command,
            list(params),
            self.link.target_system,
            self.link.target_component,
            own_system=self.link.own_system,
            own_component=self.link.own_component,
            timeout=timeout or self.command_timeout_s,
            retries=self.command_retries,
        )
        return self.link.run(tx, timeout=_COMMAND_BACKSTOP_S)

    def command_int(
        self,
        command: int,
        frame: int,
        params: Sequence[float],
        x: int = 0,
        y: int = 0,
        z: float = 0.0,
    ) -> CommandAck:
        """Send COMMAND_INT (positions as degE7) and return its ACCEPTED ack."""
        self.link.require_up()
        tx = CommandInt(
            command,
            frame,
            list(params),
            x,
            y,
            z,
            self.link.target_system,
            self.link.target_component,
            own_system=self.link.own_system,
            own_component=self.link.own_component,
            timeout=self.command_timeout_s,
            retries=self.command_retries,
        )
        return self.link.run(tx, timeout=_COMMAND_BACKSTOP_S)

    def request_streams(self, streams: dict[int, float]) -> None:
        """Ask for each message at its rate (MAV_CMD_SET_MESSAGE_INTERVAL); log refusals."""
        for msg_id, hz in streams.items():
            try:
                self.set_message_interval(msg_id, hz)
            except (CommandError, ProtocolTimeout) as exc:
                log.warning("stream %s at %g Hz not set: %s", msg_id, hz, exc)

    def set_message_interval(self, msg_id: int, hz: float) -> None:
        """Set one message's rate; 0 Hz stops it."""
        interval_us = -1 if hz <= 0 else int(1e6 / hz)
        self.command_long(mavlink.MAV_CMD_SET_MESSAGE_INTERVAL, msg_id, interval_us)

    def set_mode(self, name: str, timeout: float = 5.0) -> None:
        """Switch flight mode and wait until the heartbeat shows it."""
        number = mode_number(name)
        self.command_long(
            mavlink.MAV_CMD_DO_SET_MODE, mavlink.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED, number
        )
        self.wait_until(lambda s: s.mode == name.upper(), timeout, f"mode {name.upper()}")

    def arm(self, *, force: bool = False, timeout: float = 5.0) -> None:
        """Arm; ArmingRefused carries the autopilot's pre-arm failure texts."""
        started = time.time()
        try:
            self.command_long(
                mavlink.MAV_CMD_COMPONENT_ARM_DISARM, 1, _ARM_FORCE_MAGIC if force else 0
            )
        except CommandError as exc:
            raise ArmingRefused(self.arming_texts(started) or [str(exc)]) from exc
        self.wait_until(lambda s: s.armed, timeout, "the vehicle to report armed")

    def arming_texts(self, since: float) -> list[str]:
        """The pre-arm texts the autopilot sent with a refusal since wall time `since` (they
        may trail the ACK by a little: waits up to half a second for them)."""
        deadline = time.time() + 0.5
        while True:
            texts = [
                t.text
                for t in self.tracker.recent_texts(since)
                if t.text.startswith(("PreArm", "Arm"))
                or t.severity <= mavlink.MAV_SEVERITY_CRITICAL
            ]
            if texts or time.time() >= deadline:
                return texts
            time.sleep(0.05)

    def disarm(self, *, force: bool = False, timeout: float = 5.0) -> None:
        """Disarm (refused in flight unless forced) and wait until the heartbeat shows it."""
        self.command_long(mavlink.MAV_CMD_COMPONENT_ARM_DISARM, 0, _ARM_FORCE_MAGIC if force else 0)
        self.wait_until(lambda s: not s.armed, timeout, "the vehicle to report disarmed")

    def takeoff(self, alt_m: float) -> None:
        """GUIDED takeoff to `alt_m` above home; returns once accepted, not once reached."""
        self.command_long(mavlink.MAV_CMD_NAV_TAKEOFF, 0, 0, 0, 0, 0, 0, alt_m)

    def goto(self, lat: float, lon: float, alt_rel_m: float) -> None:
        """Fly to a point in GUIDED, altitude above home: MAV_CMD_DO_REPOSITION as COMMAND_INT,
        which ArduCopter acknowledges (DENIED outside GUIDED, FAILED for a destination it
        refuses, e.g. outside the fence), so a lost or refused target is an error here, not a
        hover. The yaw is left to the autopilot (NaN) and the mode is never changed by it."""
        self.command_int(
            mavlink.MAV_CMD_DO_REPOSITION,
            mavlink.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT,
            (-1.0, 0.0, 0.0, math.nan),
            round(lat * 1e7),
            round(lon * 1e7),
            alt_rel_m,
        )

    def set_speed(self, mps: float, speed_type: int = mavlink.SPEED_TYPE_GROUNDSPEED) -> None:
        """Change a speed of GUIDED/AUTO flight (MAV_CMD_DO_CHANGE_SPEED): ground speed by
        default, or SPEED_TYPE_CLIMB_SPEED / SPEED_TYPE_DESCENT_SPEED."""
        self.command_long(mavlink.MAV_CMD_DO_CHANGE_SPEED, speed_type, mps, -1)

    def land(self) -> None:
        """Land where the vehicle is."""
        self.set_mode("LAND")

    def rtl(self) -> None:
        """Return to launch and land there."""
        self.set_mode("RTL")

    def loiter(self) -> None:
        """Hold position (LOITER)."""
        self.set_mode("LOITER")

    def brake(self) -> None:
        """Stop as fast as the vehicle can (BRAKE)."""
        self.set_mode("BRAKE")

    def start_mission(self) -> None:
        """Fly the stored mission (MAV_CMD_MISSION_START switches to AUTO from GUIDED)."""
        self.command_long(mavlink.MAV_CMD_MISSION_START, 0, 0)

    # -- missions, fences, rally points ----------------------------------------------------

    def upload_mission(
        self, items: Sequence[MissionItem], mission_type: int = mavlink.MAV_MISSION_TYPE_MISSION
    ) -> None:
        """Upload items (for MISSION, item 0 is home on ArduPilot)."""
        self.link.require_up()
        self.link.run(MissionUpload(list(items), mission_type, **self._ids()), timeout=120.0)

    def download_mission(
        self, mission_type: int = mavlink.MAV_MISSION_TYPE_MISSION
    ) -> list[MissionItem]:
        """Read back the stored items."""
        self.link.require_up()
        return self.link.run(MissionDownload(mission_type, **self._ids()), timeout=120.0)

    def clear_mission(self, mission_type: int = mavlink.MAV_MISSION_TYPE_MISSION) -> None:
        """Delete the stored items of one type."""
        self.link.require_up()
        self.link.run(MissionClear(mission_type, **self._ids()), timeout=30.0)

    def set_current_mission_item(self, seq: int) -> None:
        """Make `seq` the item AUTO flies next."""
        self.link.require_up()
        self.link.run(MissionSetCurrent(seq, **self._ids()), timeout=30.0)

    def upload_fence(
        self,
        polygons: Sequence[FencePolygon] = (),
        circles: Sequence[FenceCircle] = (),
        return_point: LatLonE7 | None = None,
    ) -> FenceDefinition:
        """Replace the autopilot's geofence and read it back; returns what is stored.

        Checked first against what ArduPilot refuses (`fence.fence_problems`); then uploaded
        as MAV_MISSION_TYPE_FENCE, downloaded and compared item by item, exactly on the
        integer coordinates (`fence.fence_differences`). FenceError on a definition that
        cannot be stored or an upload the autopilot refuses (with its STATUSTEXT, e.g.
        "Fence exceeds storage size"), FenceMismatch when the read-back differs,
        ProtocolTimeout when it stops answering. ArduPilot takes a fence while armed too and
        enforces it at once. Uploading nothing clears the fence."""
        definition = FenceDefinition(tuple(polygons), tuple(circles), return_point)
        problems = fence_problems(definition)
        if problems:
            raise FenceError("fence refused before upload", problems)
        items = definition.items()
        self._upload_checked(items, mavlink.MAV_MISSION_TYPE_FENCE, "fence")
        read = self.download_mission(mavlink.MAV_MISSION_TYPE_FENCE)
        differences = fence_differences(items, read)
        if differences:
            raise FenceMismatch("fence read back differs from the upload", differences)
        return definition

    def download_fence(self) -> FenceDefinition:
        """The autopilot's stored geofence; FenceError if its items do not form one."""
        items = self.download_mission(mavlink.MAV_MISSION_TYPE_FENCE)
        try:
            return FenceDefinition.from_items(items)
        except ValueError as exc:
            raise FenceError("fence read from the autopilot is malformed", [str(exc)]) from exc

    def upload_rally(self, points: Sequence[RallyPoint]) -> None:
        """Replace the autopilot's rally points and read them back (see `upload_fence`;
        `fence.rally_problems` and `fence.rally_differences`)."""
        problems = rally_problems(points)
        if problems:
            raise FenceError("rally points refused before upload", problems)
        items = [point.item(seq) for seq, point in enumerate(points)]
        self._upload_checked(items, mavlink.MAV_MISSION_TYPE_RALLY, "rally points")
        differences = rally_differences(
            items, self.download_mission(mavlink.MAV_MISSION_TYPE_RALLY)
        )
        if differences:
            raise FenceMismatch("rally points read back differ from the upload", differences)

    def download_rally(self) -> list[RallyPoint]:
        """The autopilot's stored rally points."""
        items = self.download_mission(mavlink.MAV_MISSION_TYPE_RALLY)
        return [RallyPoint((i.x, i.y), int(i.z), i.frame) for i in items]

    def _upload_checked(self, items: list[MissionItem], mission_type: int, what: str) -> None:
        """Upload; a refusal becomes FenceError with the autopilot's STATUSTEXT beside it."""
        started = time.time()
        try:
            self.upload_mission(items, mission_type)
        except MissionError as exc:
            texts = [t.text for t in self.tracker.recent_texts(started)]
            detail = f"{exc.result}" + (f" (autopilot said: {'; '.join(texts)})" if texts else "")
            raise FenceError(f"{what} upload refused by the autopilot", [detail]) from exc

    # -- parameters ------------------------------------------------------------------------

    def get_param(self, name: str) -> float:
        """One parameter's value."""
        self.link.require_up()
        value, _ptype = self.link.run(ParamRead(name, **self._ids()), timeout=30.0)
        return value

    def get_all_params(self) -> dict[str, float]:
        """Every parameter, by name."""
        self.link.require_up()
        table = self.link.run(ParamReadAll(**self._ids()), timeout=300.0)
        return {name: value for name, (value, _ptype) in table.items()}

    def set_param(self, name: str, value: float, param_type: int | None = None) -> float:
        """Set a parameter and return the value the autopilot echoed (verified equal)."""
        self.link.require_up()
        result = self.link.run(ParamSet(name, value, param_type, **self._ids()), timeout=30.0)
        if result is None:
            raise ParamError(f"{name}: no value echoed")
        return result[0] if isinstance(result, tuple) else result

    def _ids(self) -> dict[str, int]:
        return {
            "target_system": self.link.target_system,
            "target_component": self.link.target_component,
            "own_system": self.link.own_system,
            "own_component": self.link.own_component,
        }
