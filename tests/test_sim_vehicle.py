"""The built-in vehicle (sim.vehicle) against raw pymavlink, as a companion would talk to it.

Durations below are *simulated* seconds read from the vehicle's time_boot_ms, compared with
ArduCopter SITL's measured behaviour (shared/reference/ardupilot-sitl.md); wall-clock time
only bounds how long a test may wait.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from firmware_bridge.dialect import MAVLinkMessage, mavlink, mavutil
from sim.vehicle import DEFAULT_HOME, VehicleServer
from sim.vehicle.controllers import PositionTarget, Takeoff
from sim.vehicle.copter import Copter
from sim.vehicle.fence import Fence
from sim.vehicle.geo import ne_offset, offset_latlon
from sim.vehicle.kinematics import MotionLimits, PointMass
from sim.vehicle.mission_store import Item, convert
from sim.vehicle.params import INT8, INT32, REAL32, ParamTable, coerce

C = mavlink
GUIDED, AUTO, LOITER, RTL, LAND, STABILIZE, BRAKE = 4, 3, 5, 6, 9, 0, 17
POS_ONLY = 0b110111111000  # SET_POSITION_TARGET type_mask: position used
VEL_ONLY = 0b110111000111  # velocity used
REL_INT = C.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT
HOME_E7 = (round(DEFAULT_HOME[0] * 1e7), round(DEFAULT_HOME[1] * 1e7))

# ArduCopter SITL, default delivery (simulated seconds): ardupilot-sitl.md
SITL_PHASES = {
    "takeoff": 17.4,
    "cruise": 53.9,
    "descend": 17.5,
    "climb": 12.3,
    "rtl_return": 64.7,
    "land": 36.8,
}
SITL_TOTAL = 205.4
# ArduCopter's defaults plus the gripper, as SITL flew the reference delivery
STOCK_WITH_GRIPPER = {"GRIP_ENABLE": 1, "GRIP_TYPE": 1, "SERVO8_FUNCTION": 28}
SITL_MAH_WITH_LOAD = 1840.0
FS_GCS_TIMEOUT_S = 5.0  # FS_GCS_TIMEOUT default

_INBOX_TYPES = frozenset(
    {
        "COMMAND_ACK", "STATUSTEXT", "MISSION_REQUEST_INT", "MISSION_ACK", "MISSION_COUNT",
        "MISSION_ITEM_INT", "MISSION_ITEM_REACHED", "PARAM_VALUE",
    }
)  # fmt: skip


class Gcs:
    """A raw pymavlink client in the companion's place (sysid 1, compid 191)."""

    def __init__(self, port: int) -> None:
        self.conn = mavutil.mavlink_connection(
            f"tcp:127.0.0.1:{port}", source_system=1, source_component=191
        )
        self.last: dict[str, MAVLinkMessage] = {}
        self.inbox: list[MAVLinkMessage] = []
        self.texts: list[tuple[float, int, str]] = []
        self.heartbeats = True
        self.received = 0
        self._beat_at = 0.0

    def close(self) -> None:
        self.conn.close()

    # ---- traffic ----------------------------------------------------------------------
    def pump(self, timeout: float = 0.02) -> None:
        """Send our heartbeat when due, then take in everything that has arrived."""
        now = time.monotonic()
        if self.heartbeats and now - self._beat_at > 0.02:
            self._beat_at = now
            self.conn.mav.heartbeat_send(
                C.MAV_TYPE_ONBOARD_CONTROLLER, C.MAV_AUTOPILOT_INVALID, 0, 0, 0
            )
        msg = self.conn.recv_match(blocking=True, timeout=timeout)
        while msg is not None:
            self._take(msg)
            msg = self.conn.recv_match(blocking=False)

    def _take(self, msg: MAVLinkMessage) -> None:
        kind = msg.get_type()
        self.received += 1
        self.last[kind] = msg
        if kind == "STATUSTEXT":
            self.texts.append((self.sim_time, msg.severity, msg.text))
        if kind in _INBOX_TYPES:
            self.inbox.append(msg)

    @property
    def sim_time(self) -> float:
        """Latest simulated time seen (GLOBAL_POSITION_INT.time_boot_ms)."""
        pos = self.last.get("GLOBAL_POSITION_INT")
        return pos.time_boot_ms / 1000.0 if pos is not None else 0.0

    def wait(
        self,
        pred: Callable[[], bool],
        what: str,
        timeout: float = 30.0,
        each: Callable[[], None] | None = None,
    ) -> float:
        """Pump until `pred()` holds; returns the simulated time it was seen at."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump()
            if each is not None:
                each()
            if "GLOBAL_POSITION_INT" in self.last and pred():
                return self.sim_time
        raise AssertionError(f"timed out waiting for {what}")

    def expect(self, kind: str | tuple[str, ...], timeout: float = 5.0) -> MAVLinkMessage:
        """The next message of `kind` from the inbox (waiting for it if need be)."""
        kinds = (kind,) if isinstance(kind, str) else kind
        deadline = time.monotonic() + timeout
        while True:
            for i, msg in enumerate(self.inbox):
                if msg.get_type() in kinds:
                    return self.inbox.pop(i)
            if time.monotonic() > deadline:
                raise AssertionError(f"no {kinds} within {timeout} s")
            self.pump()

    def drain(self) -> None:
        """Forget what is in the inbox."""
        self.pump(0.0)
        self.inbox.clear()

    def command(self, command: int, *params: float, confirmation: int = 0) -> int:
        """COMMAND_LONG; returns the COMMAND_ACK result."""
        p = [*params, *[0.0] * (7 - len(params))]
        self.inbox = [m for m in self.inbox if m.get_type() != "COMMAND_ACK"]
        self.conn.mav.command_long_send(1, 1, command, confirmation, *p)
        while True:
            ack = self.expect("COMMAND_ACK")
            if ack.command == command:
                assert (ack.target_system, ack.target_component) == (1, 191)
                return ack.result

    def command_int(
        self, command: int, frame: int, params: list[float], x: int, y: int, z: float
    ) -> int:
        """COMMAND_INT; returns the COMMAND_ACK result."""
        self.conn.mav.command_int_send(1, 1, frame, command, 0, 0, *params, x, y, z)
        while True:
            ack = self.expect("COMMAND_ACK")
            if ack.command == command:
                return ack.result

    def text_seen(self, fragment: str) -> bool:
        """A STATUSTEXT containing `fragment` has arrived."""
        return any(fragment in text for _, _, text in self.texts)

    # ---- flight helpers ---------------------------------------------------------------
    @property
    def alt(self) -> float:
        return self.last["GLOBAL_POSITION_INT"].relative_alt / 1000.0

    def distance_to(self, lat: int, lon: int) -> float:
        pos = self.last["GLOBAL_POSITION_INT"]
        return math.hypot(*ne_offset(lat, lon, pos.lat, pos.lon))

    def mode(self) -> int:
        return self.last["HEARTBEAT"].custom_mode

    def armed(self) -> bool:
        return bool(self.last["HEARTBEAT"].base_mode & C.MAV_MODE_FLAG_SAFETY_ARMED)

    def goto(self, lat: int, lon: int, alt: float) -> None:
        self.conn.mav.set_position_target_global_int_send(
            0, 1, 1, REL_INT, POS_ONLY, lat, lon, alt, 0, 0, 0, 0, 0, 0, 0, 0
        )

    def velocity(self, vn: float, ve: float, vd: float) -> None:
        self.conn.mav.set_position_target_global_int_send(
            0, 1, 1, REL_INT, VEL_ONLY, 0, 0, 0, vn, ve, vd, 0, 0, 0, 0, 0
        )

    def arm_guided_when_ready(self) -> float:
        """GUIDED, wait for a position estimate, arm; returns the simulated arm time."""
        assert self.command(C.MAV_CMD_DO_SET_MODE, 1, GUIDED) == C.MAV_RESULT_ACCEPTED
        self.wait(
            lambda: (
                bool(self.last["EKF_STATUS_REPORT"].flags & C.EKF_POS_HORIZ_ABS)
                if "EKF_STATUS_REPORT" in self.last
                else False
            ),
            "a position estimate",
        )
        assert self.command(C.MAV_CMD_COMPONENT_ARM_DISARM, 1) == C.MAV_RESULT_ACCEPTED
        return self.sim_time

    def takeoff(self, alt: float) -> float:
        assert self.command(C.MAV_CMD_NAV_TAKEOFF, 0, 0, 0, 0, 0, 0, alt) == C.MAV_RESULT_ACCEPTED
        return self.wait(lambda: self.alt >= alt - 0.5, f"{alt} m")

    def set_param(self, name: str, value: float) -> MAVLinkMessage:
        self.conn.mav.param_set_send(1, 1, name.encode(), value, 0)
        while True:
            reply = self.expect("PARAM_VALUE")
            if reply.param_id == name:
                return reply

    # ---- mission protocol ------------------------------------------------------------------
    def upload(self, items: list[MAVLinkMessage], mission_type: int) -> int:
        """Run an upload, answering each MISSION_REQUEST_INT; returns the MISSION_ACK type."""
        self.drain()
        self.conn.mav.mission_count_send(1, 1, len(items), mission_type)
        while True:
            msg = self.expect(("MISSION_REQUEST_INT", "MISSION_ACK"))
            if msg.get_type() == "MISSION_ACK":
                assert msg.mission_type == mission_type
                return msg.type
            assert msg.mission_type == mission_type
            self.conn.mav.send(items[msg.seq])

    def download(self, mission_type: int) -> list[MAVLinkMessage]:
        self.drain()
        self.conn.mav.mission_request_list_send(1, 1, mission_type)
        count = self.expect("MISSION_COUNT").count
        items = []
        for seq in range(count):
            self.conn.mav.mission_request_int_send(1, 1, seq, mission_type)
            item = self.expect("MISSION_ITEM_INT")
            assert item.seq == seq and item.mission_type == mission_type
            items.append(item)
        self.conn.mav.mission_ack_send(1, 1, C.MAV_MISSION_ACCEPTED, mission_type)
        return items


def item(seq: int, command: int, lat: int = 0, lon: int = 0, alt: float = 0.0, *,
         frame: int = REL_INT, mission_type: int = C.MAV_MISSION_TYPE_MISSION,
         p1: float = 0.0, p2: float = 0.0) -> MAVLinkMessage:  # fmt: skip
    """A MISSION_ITEM_INT addressed to the vehicle."""
    return C.MAVLink_mission_item_int_message(
        1, 1, seq, frame, command, 0, 1, p1, p2, 0, 0, lat, lon, alt, mission_type
    )


def offset(north: float, east: float) -> tuple[int, int]:
    """1e-7 degree position north/east metres from home."""
    return offset_latlon(HOME_E7[0], HOME_E7[1], north, east)


def serve(
    speedup: float,
    params: dict[str, float] | None = None,
    ready_delay_s: float | None = None,
    param_files: list[Path] | None = None,
) -> tuple[VehicleServer, Gcs]:
    """A started vehicle on a free port (SkyCourier's parameter files unless `param_files`
    says otherwise) and a client connected to it."""
    server = VehicleServer(
        DEFAULT_HOME,
        speedup=speedup,
        port=0,
        params=params,
        ready_delay_s=ready_delay_s,
        param_files=param_files,
    )
    server.start()
    return server, Gcs(server.port)


@pytest.fixture
def flight() -> Iterator[tuple[VehicleServer, Gcs]]:
    """A started vehicle (speed-up 20) and a client; both closed afterwards."""
    server, gcs = serve(20.0)
    yield server, gcs
    gcs.close()
    server.stop()


# ---- pure parts --------------------------------------------------------------------------
def test_position_shaping_accelerates_and_brakes_like_sitl() -> None:
    body = PointMass()
    body.alt = 30.0
    lim = MotionLimits(speed_xy=10.0, speed_up=2.5, speed_down=1.5, accel_xy=2.5, accel_z=1.0)
    reached: dict[float, float] = {}
    t, top, at_2m = 0.0, 0.0, None
    while at_2m is None:
        body.command_position_xy(500.0, 0.0, lim, 0.02)
        body.command_altitude(30.0, lim, 0.02)
        body.integrate(0.02)
        t += 0.02
        top = max(top, body.ground_speed)
        for mark in (1.0, 5.0, 9.5):
            if body.ground_speed >= mark:
                reached.setdefault(mark, t)
        if 500.0 - body.north < 2.0:
            at_2m = body.ground_speed
    # SITL: 1 m/s at 0.8 s, 5 m/s at 2.35 s, 9.5 m/s at 5.15 s, still ~3 m/s at 2 m
    assert reached[1.0] == pytest.approx(0.8, abs=0.2)
    assert reached[5.0] == pytest.approx(2.35, abs=0.3)
    assert reached[9.5] == pytest.approx(5.15, abs=0.6)
    assert top == pytest.approx(10.0, abs=0.2)  # SITL tops out at 10.16
    assert 2.0 <= at_2m <= 4.0
    assert t == pytest.approx(SITL_PHASES["cruise"], rel=0.03)


def test_parameters_are_stored_as_ardupilot_casts_them() -> None:
    assert coerce(2500.4, INT32) == 2500.0
    assert coerce(2499.995, INT32) == 2500.0  # the +0.01 nudge before truncation
    assert coerce(-1.3, INT8) == -1.0
    assert coerce(300, INT8) == 127.0
    assert coerce(0.1, REAL32) == pytest.approx(0.1) and coerce(0.1, REAL32) != 0.1


def test_fence_geometry() -> None:
    fence = Fence(lambda lat, lon: ne_offset(HOME_E7[0], HOME_E7[1], lat, lon))
    square = [offset(n, e) for n, e in ((-50, -50), (-50, 50), (50, 50), (50, -50))]
    inclusion = C.MAV_CMD_NAV_FENCE_POLYGON_VERTEX_INCLUSION
    items = [
        Item(i, 0, inclusion, 4, 0, 0, 0, lat, lon, 0.0, 0) for i, (lat, lon) in enumerate(square)
    ]
    nfz = offset(20, 0)
    items.append(Item(4, 0, C.MAV_CMD_NAV_FENCE_CIRCLE_EXCLUSION, 5, 0, 0, 0, *nfz, 0.0, 0))
    fence.load(items)
    assert fence.breaches(7, 0, 0, 10, 100, 300) == 0
    assert fence.breaches(7, 60, 0, 10, 100, 300) == 4  # outside the square
    assert fence.breaches(7, 21, 1, 10, 100, 300) == 4  # inside the no-fly circle
    assert fence.breaches(7, 0, 0, 120, 100, 300) == 1  # above FENCE_ALT_MAX
    assert fence.breaches(2, 0, 301, 10, 100, 300) == 2  # outside FENCE_RADIUS


def test_items_are_stored_the_way_ardupilot_reads_them_back() -> None:
    wp = Item(1, REL_INT, C.MAV_CMD_NAV_WAYPOINT, 2, 0, 0, 0, *HOME_E7, 20.0)
    result, stored = convert(wp, C.MAV_MISSION_TYPE_MISSION)
    assert result == C.MAV_MISSION_ACCEPTED and stored is not None
    assert stored.frame == C.MAV_FRAME_GLOBAL_RELATIVE_ALT
    grip = Item(2, C.MAV_FRAME_MISSION, C.MAV_CMD_DO_GRIPPER, 1, 0, 0, 0, 5, 6, 7.0)
    _, stored = convert(grip, C.MAV_MISSION_TYPE_MISSION)
    assert stored is not None and (stored.frame, stored.x, stored.y, stored.z) == (0, 0, 0, 0.0)
    bad_lat = Item(1, REL_INT, C.MAV_CMD_NAV_WAYPOINT, 0, 0, 0, 0, 950_000_000, 0, 20.0)
    assert convert(bad_lat, C.MAV_MISSION_TYPE_MISSION)[0] == C.MAV_MISSION_INVALID_PARAM5_X
    local = Item(1, C.MAV_FRAME_LOCAL_NED, C.MAV_CMD_NAV_WAYPOINT, 0, 0, 0, 0, 0, 0, 20.0)
    assert convert(local, C.MAV_MISSION_TYPE_MISSION)[0] == C.MAV_MISSION_UNSUPPORTED_FRAME


def test_wind_limits_upwind_speed_and_costs_current() -> None:
    def cruise_upwind(wind_mps: float) -> tuple[float, float]:
        params = ParamTable({"SIM_WIND_SPD": wind_mps, "SIM_WIND_DIR": 0.0})  # from the north
        copter = Copter(DEFAULT_HOME, params, ready_delay_s=0.0)
        assert copter.set_mode(GUIDED) and copter.arm(force=False)
        copter.controller = Takeoff(copter, 20.0)
        while copter.body.alt < 19.5:
            copter.step(0.02)
        copter.controller = PositionTarget(3000.0, 0.0, 20.0)
        for _ in range(1500):
            copter.step(0.02)
        return copter.body.ground_speed, copter.battery.current_a

    calm_speed, calm_current = cruise_upwind(0.0)
    windy_speed, windy_current = cruise_upwind(15.0)
    assert calm_speed == pytest.approx(10.0, abs=0.05)
    assert 7.0 < windy_speed < 9.5  # the lean angle (ANGLE_MAX) runs out against 15 m/s
    assert windy_current > calm_current * 1.2


# ---- over TCP ---------------------------------------------------------------------------
def test_simulated_time_starts_at_the_first_connection() -> None:
    server = VehicleServer(DEFAULT_HOME, speedup=20.0, port=0).start()
    try:
        time.sleep(0.2)
        assert server.sim_time == 0.0
        gcs = Gcs(server.port)
        gcs.wait(lambda: gcs.sim_time > 1.0, "time to run")
        hb = gcs.last["HEARTBEAT"]
        assert (hb.type, hb.autopilot) == (C.MAV_TYPE_QUADROTOR, C.MAV_AUTOPILOT_ARDUPILOTMEGA)
        assert hb.get_srcSystem() == 1 and hb.get_srcComponent() == 1
        assert hb.custom_mode == STABILIZE and hb.system_status == C.MAV_STATE_STANDBY
        gcs.close()
    finally:
        server.stop()


def test_default_delivery_flies_like_sitl() -> None:
    # SITL's reference delivery was measured with ArduCopter's default parameters and the
    # gripper set up, not SkyCourier's set (whose RTL_ALT 30 m changes the return)
    server, gcs = serve(25.0, params=STOCK_WITH_GRIPPER, param_files=[])
    try:
        # landed state and arming at 20 Hz, so that phase ends are seen promptly
        for msg_id in (C.MAVLINK_MSG_ID_EXTENDED_SYS_STATE, C.MAVLINK_MSG_ID_HEARTBEAT):
            result = gcs.command(C.MAV_CMD_SET_MESSAGE_INTERVAL, msg_id, 50_000)
            assert result == C.MAV_RESULT_ACCEPTED
        gcs.arm_guided_when_ready()
        start = gcs.sim_time
        t_takeoff = gcs.takeoff(30.0)
        lat, lon = offset(500 * math.cos(math.radians(45)), 500 * math.sin(math.radians(45)))
        gcs.goto(lat, lon, 30.0)
        t_cruise = gcs.wait(lambda: gcs.distance_to(lat, lon) < 2.0, "the drop point", 60)
        gcs.goto(lat, lon, 5.0)
        t_descend = gcs.wait(lambda: gcs.alt <= 5.5, "5 m")
        assert (
            gcs.command(C.MAV_CMD_DO_GRIPPER, 1, C.GRIPPER_ACTION_RELEASE) == C.MAV_RESULT_ACCEPTED
        )
        t_hold = gcs.wait(lambda: gcs.sim_time >= t_descend + 3.0, "3 s hold")
        gcs.goto(lat, lon, 30.0)
        t_climb = gcs.wait(lambda: gcs.alt >= 29.5, "30 m again")
        assert gcs.command(C.MAV_CMD_NAV_RETURN_TO_LAUNCH) == C.MAV_RESULT_ACCEPTED
        t_return = gcs.wait(
            lambda: gcs.last["EXTENDED_SYS_STATE"].landed_state == C.MAV_LANDED_STATE_LANDING,
            "RTL's landing stage",
            60,
        )
        t_land = gcs.wait(lambda: not gcs.armed(), "disarm", 60)
        phases = {
            "takeoff": t_takeoff - start,
            "cruise": t_cruise - t_takeoff,
            "descend": t_descend - t_cruise,
            "climb": t_climb - t_hold,
            "rtl_return": t_return - t_climb,
            "land": t_land - t_return,
        }
        for name, sitl in SITL_PHASES.items():
            assert phases[name] == pytest.approx(sitl, rel=0.15), (name, phases)
        assert t_land - start == pytest.approx(SITL_TOTAL, rel=0.10)
        state = server.state
        assert state.mode == "RTL" and not state.armed and state.landed
        assert math.hypot(state.north_m, state.east_m) < 1.0
        assert not state.load_held
        assert state.battery_used_mah == pytest.approx(SITL_MAH_WITH_LOAD, rel=0.15)
        assert gcs.text_seen("Gripper load released")
        assert gcs.text_seen("Disarming motors")
    finally:
        gcs.close()
        server.stop()


def test_arming_is_refused_until_ready_with_ardupilots_reasons() -> None:
    # stock parameters: SkyCourier's fence would also refuse STABILIZE without a position
    # (test_sim_vehicle_tables checks that refusal)
    server, gcs = serve(50.0, ready_delay_s=100.0, param_files=[])
    try:
        assert gcs.command(C.MAV_CMD_DO_SET_MODE, 1, GUIDED) == C.MAV_RESULT_ACCEPTED
        assert gcs.command(C.MAV_CMD_COMPONENT_ARM_DISARM, 1) == C.MAV_RESULT_FAILED
        assert (C.MAV_SEVERITY_CRITICAL, "Arm: AHRS: waiting for home") in [
            (sev, text) for _, sev, text in gcs.texts
        ]
        gcs.wait(lambda: "HOME_POSITION" in gcs.last, "home", 10)
        assert gcs.command(C.MAV_CMD_COMPONENT_ARM_DISARM, 1) == C.MAV_RESULT_FAILED
        assert gcs.text_seen("Arm: Need Position Estimate")
        # forcing skips the checks but not the mandatory GPS check of a GPS mode
        assert gcs.command(C.MAV_CMD_COMPONENT_ARM_DISARM, 1, 21196) == C.MAV_RESULT_FAILED
        assert not (
            gcs.last["SYS_STATUS"].onboard_control_sensors_health & C.MAV_SYS_STATUS_PREARM_CHECK
        )
        # STABILIZE does not need a position; left on the ground it disarms after DISARM_DELAY
        assert gcs.command(C.MAV_CMD_DO_SET_MODE, 1, STABILIZE) == C.MAV_RESULT_ACCEPTED
        assert gcs.command(C.MAV_CMD_COMPONENT_ARM_DISARM, 1) == C.MAV_RESULT_ACCEPTED
        armed_at = gcs.wait(gcs.armed, "armed")
        disarmed_at = gcs.wait(lambda: not gcs.armed(), "auto-disarm")
        assert disarmed_at - armed_at == pytest.approx(10.0, abs=1.5)
        assert gcs.text_seen("Disarming motors")
        gcs.arm_guided_when_ready()
        assert gcs.sim_time >= 100.0
        gcs.wait(lambda: gcs.armed(), "armed heartbeat")
    finally:
        gcs.close()
        server.stop()


def test_gripper_follows_grip_enable_and_gripper_actions(flight: tuple[VehicleServer, Gcs]) -> None:
    server, gcs = flight
    gcs.wait(lambda: "SERVO_OUTPUT_RAW" in gcs.last, "servo outputs")
    assert gcs.last["SERVO_OUTPUT_RAW"].servo8_raw == 1900
    assert server.state.load_held
    assert gcs.set_param("GRIP_ENABLE", 0).param_value == 0
    assert gcs.command(C.MAV_CMD_DO_GRIPPER, 1, C.GRIPPER_ACTION_RELEASE) == C.MAV_RESULT_FAILED
    assert server.state.load_held
    assert gcs.set_param("GRIP_ENABLE", 1).param_value == 1
    assert gcs.command(C.MAV_CMD_DO_GRIPPER, 1, C.GRIPPER_ACTION_RELEASE) == C.MAV_RESULT_ACCEPTED
    gcs.wait(lambda: gcs.text_seen("Gripper load released"), "released")
    assert gcs.text_seen("Gripper load releasing")
    gcs.wait(lambda: gcs.last["SERVO_OUTPUT_RAW"].servo8_raw == 1100, "servo 8 at 1100")
    assert server.state.gripper_released and not server.state.load_held
    assert gcs.command(C.MAV_CMD_DO_GRIPPER, 1, C.GRIPPER_ACTION_GRAB) == C.MAV_RESULT_ACCEPTED
    gcs.wait(lambda: gcs.last["SERVO_OUTPUT_RAW"].servo8_raw == 1900, "servo 8 at 1900")
    assert server.state.load_held  # closed on the ground: the parcel is picked up again
    assert gcs.command(C.MAV_CMD_DO_SET_SERVO, 8, 1100) == C.MAV_RESULT_ACCEPTED
    gcs.wait(lambda: gcs.last["SERVO_OUTPUT_RAW"].servo8_raw == 1100, "DO_SET_SERVO 8")
    assert not server.state.load_held
    assert gcs.command(C.MAV_CMD_DO_SET_SERVO, 1, 1500) == C.MAV_RESULT_FAILED  # a motor


def test_mission_fence_and_rally_transfers(flight: tuple[VehicleServer, Gcs]) -> None:
    _, gcs = flight
    gcs.wait(lambda: "HOME_POSITION" in gcs.last, "home")
    mission = [item(0, C.MAV_CMD_NAV_WAYPOINT, *HOME_E7, 0, frame=C.MAV_FRAME_GLOBAL)]
    for seq in range(1, 100):
        lat, lon = offset(10.0 * seq, 5.0 * (seq % 7))
        mission.append(item(seq, C.MAV_CMD_NAV_WAYPOINT, lat, lon, 20.0 + seq % 5, p1=seq % 3))
    assert gcs.upload(mission, C.MAV_MISSION_TYPE_MISSION) == C.MAV_MISSION_ACCEPTED
    assert gcs.text_seen("Flight plan received")
    back = gcs.download(C.MAV_MISSION_TYPE_MISSION)
    assert len(back) == 100
    home = back[0]
    assert (home.x, home.y, home.frame) == (*HOME_E7, C.MAV_FRAME_GLOBAL)
    assert home.z == pytest.approx(DEFAULT_HOME[2])
    for sent, got in zip(mission[1:], back[1:], strict=True):
        assert (got.command, got.x, got.y, got.param1) == (
            sent.command,
            sent.x,
            sent.y,
            sent.param1,
        )
        assert got.z == pytest.approx(sent.z)
        assert got.frame == C.MAV_FRAME_GLOBAL_RELATIVE_ALT  # ArduPilot stores *_INT frames plain

    gcs.conn.mav.mission_set_current_send(1, 1, 5)
    gcs.wait(lambda: gcs.last["MISSION_CURRENT"].seq == 5, "MISSION_CURRENT 5")

    # out-of-order item: INVALID_SEQUENCE, and the upload goes on
    gcs.drain()
    gcs.conn.mav.mission_count_send(1, 1, 2, C.MAV_MISSION_TYPE_MISSION)
    assert gcs.expect("MISSION_REQUEST_INT").seq == 0
    gcs.conn.mav.send(mission[1])
    assert gcs.expect("MISSION_ACK").type == C.MAV_MISSION_INVALID_SEQUENCE
    gcs.conn.mav.send(mission[0])
    assert gcs.expect("MISSION_REQUEST_INT").seq == 1
    gcs.conn.mav.send(mission[1])
    assert gcs.expect("MISSION_ACK").type == C.MAV_MISSION_ACCEPTED

    unknown = [mission[0], item(1, 31000, *HOME_E7, 10)]
    assert gcs.upload(unknown, C.MAV_MISSION_TYPE_MISSION) == C.MAV_MISSION_UNSUPPORTED
    gcs.conn.mav.mission_request_int_send(1, 1, 7, C.MAV_MISSION_TYPE_MISSION)
    assert gcs.expect("MISSION_ACK").type == C.MAV_MISSION_INVALID_SEQUENCE

    fence_type = C.MAV_MISSION_TYPE_FENCE
    square = [offset(n, e) for n, e in ((-80, -80), (-80, 80), (80, 80), (80, -80))]
    vertex = C.MAV_CMD_NAV_FENCE_POLYGON_VERTEX_INCLUSION
    fence = [
        item(i, vertex, lat, lon, frame=0, mission_type=fence_type, p1=4)
        for i, (lat, lon) in enumerate(square)
    ]
    assert gcs.upload(fence, fence_type) == C.MAV_MISSION_ACCEPTED
    got = gcs.download(fence_type)
    assert [(f.command, f.x, f.y, f.param1) for f in got] == [(vertex, *sq, 4) for sq in square]
    bad_polygon = [
        item(i, vertex, *square[i], frame=0, mission_type=fence_type, p1=2) for i in range(2)
    ]
    assert gcs.upload(bad_polygon, fence_type) == C.MAV_MISSION_ERROR
    waypoint_as_fence = [item(0, C.MAV_CMD_NAV_WAYPOINT, *HOME_E7, 10, mission_type=fence_type)]
    assert gcs.upload(waypoint_as_fence, fence_type) == C.MAV_MISSION_UNSUPPORTED

    rally_type = C.MAV_MISSION_TYPE_RALLY
    rally = [item(0, C.MAV_CMD_NAV_RALLY_POINT, *offset(100, 0), 15, mission_type=rally_type)]
    assert gcs.upload(rally, rally_type) == C.MAV_MISSION_ACCEPTED
    (point,) = gcs.download(rally_type)
    assert (point.x, point.y, point.z, point.frame) == (
        *offset(100, 0),
        15,
        C.MAV_FRAME_GLOBAL_RELATIVE_ALT,
    )

    for mission_type in (C.MAV_MISSION_TYPE_MISSION, fence_type, rally_type):
        gcs.drain()
        gcs.conn.mav.mission_clear_all_send(1, 1, mission_type)
        assert gcs.expect("MISSION_ACK").type == C.MAV_MISSION_ACCEPTED
    assert len(gcs.download(C.MAV_MISSION_TYPE_MISSION)) == 1  # home only
    assert gcs.download(fence_type) == [] and gcs.download(rally_type) == []


def test_parameter_protocol(flight: tuple[VehicleServer, Gcs]) -> None:
    _, gcs = flight
    gcs.drain()
    gcs.conn.mav.param_request_read_send(1, 1, b"RTL_LOIT_TIME", -1)
    reply = gcs.expect("PARAM_VALUE")
    assert (reply.param_id, reply.param_value, reply.param_type) == ("RTL_LOIT_TIME", 5000, INT32)
    assert reply.param_index == 65535
    echo = gcs.set_param("RTL_ALT", 2500.4)
    assert (echo.param_value, echo.param_type) == (2500, INT32)
    assert gcs.set_param("WPNAV_SPEED", 750).param_value == pytest.approx(750)
    gcs.conn.mav.param_request_read_send(1, 1, b"NO_SUCH_PARAM", -1)
    gcs.conn.mav.param_request_list_send(1, 1)
    first = gcs.expect("PARAM_VALUE")
    values = {first.param_index: first}
    while len(values) < first.param_count:
        value = gcs.expect("PARAM_VALUE")
        values[value.param_index] = value
    names = {v.param_id for v in values.values()}
    assert "NO_SUCH_PARAM" not in names
    assert {"WPNAV_SPEED", "FS_GCS_ENABLE", "GRIP_ENABLE", "SYSID_THISMAV"} <= names
    assert sorted(values) == list(range(first.param_count))


def test_command_results_are_ardupilots(flight: tuple[VehicleServer, Gcs]) -> None:
    _, gcs = flight
    takeoff = C.MAV_CMD_NAV_TAKEOFF
    assert gcs.command(takeoff, 0, 0, 0, 0, 0, 0, 10) == C.MAV_RESULT_FAILED  # disarmed
    assert gcs.command(C.MAV_CMD_USER_1) == C.MAV_RESULT_UNSUPPORTED
    assert gcs.command(C.MAV_CMD_DO_REPOSITION, -1, 1, 0, 0, 1, 1, 10) == C.MAV_RESULT_UNSUPPORTED
    assert gcs.command(C.MAV_CMD_SET_MESSAGE_INTERVAL, 33, 100000, 1) == C.MAV_RESULT_DENIED
    assert gcs.command(C.MAV_CMD_DO_CHANGE_SPEED, 1, 0) == C.MAV_RESULT_DENIED
    assert gcs.command(C.MAV_CMD_DO_SET_MODE, 1, 99) == C.MAV_RESULT_FAILED
    gcs.arm_guided_when_ready()
    assert gcs.command(takeoff, 0, 0, 0, 0, 0, 0, 10) == C.MAV_RESULT_ACCEPTED
    # ArduPilot runs a retransmission (confirmation 1) again; still spooling up on the ground,
    # the vehicle accepts the takeoff again, as SITL does
    assert gcs.command(takeoff, 0, 0, 0, 0, 0, 0, 10, confirmation=1) == C.MAV_RESULT_ACCEPTED
    gcs.wait(lambda: gcs.alt >= 9.5, "10 m")
    assert gcs.command(takeoff, 0, 0, 0, 0, 0, 0, 20) == C.MAV_RESULT_FAILED  # already flying
    assert gcs.command(C.MAV_CMD_COMPONENT_ARM_DISARM, 0) == C.MAV_RESULT_FAILED  # in flight
    lat, lon = offset(60, 0)
    result = gcs.command_int(C.MAV_CMD_DO_REPOSITION, REL_INT, [-1, 0, 0, 0], lat, lon, 10)
    assert result == C.MAV_RESULT_ACCEPTED
    # a speed change holds once GUIDED flies to a position (SubMode::Pos); see
    # test_sim_vehicle_commands for one given before the goto
    assert gcs.command(C.MAV_CMD_DO_CHANGE_SPEED, 1, 5) == C.MAV_RESULT_ACCEPTED
    top = [0.0]

    def track_speed() -> None:
        top[0] = max(top[0], gcs.last["VFR_HUD"].groundspeed)

    gcs.wait(lambda: gcs.distance_to(lat, lon) < 1.0, "the reposition point", each=track_speed)
    assert 4.0 < top[0] < 5.2  # DO_CHANGE_SPEED 5 m/s held
    assert gcs.command(C.MAV_CMD_NAV_LAND) == C.MAV_RESULT_ACCEPTED
    gcs.wait(
        lambda: gcs.last["EXTENDED_SYS_STATE"].landed_state == C.MAV_LANDED_STATE_LANDING, "landing"
    )
    gcs.wait(lambda: not gcs.armed(), "disarm after landing", 30)


def test_fence_breach_triggers_rtl() -> None:
    # Without the path planner: with OA_TYPE 2 the RTL from outside the inclusion polygon
    # finds no way back in and holds (tests/test_sim_vehicle_oa.py, as on SITL)
    server, gcs = serve(20.0, params={"OA_TYPE": 0})
    try:
        fence_type = C.MAV_MISSION_TYPE_FENCE
        square = [offset(n, e) for n, e in ((-80, -80), (-80, 80), (80, 80), (80, -80))]
        vertex = C.MAV_CMD_NAV_FENCE_POLYGON_VERTEX_INCLUSION
        fence = [
            item(i, vertex, *sq, frame=0, mission_type=fence_type, p1=4)
            for i, sq in enumerate(square)
        ]
        assert gcs.upload(fence, fence_type) == C.MAV_MISSION_ACCEPTED
        gcs.set_param("FENCE_TYPE", 4)
        gcs.set_param("FENCE_ENABLE", 1)
        gcs.arm_guided_when_ready()
        gcs.takeoff(10.0)
        # GUIDED refuses a destination outside the fence (AC_Fence::check_destination_within_fence)
        gcs.goto(*offset(150, 0), 10.0)
        settle = gcs.sim_time + 5.0
        gcs.wait(lambda: gcs.sim_time > settle, "5 s")
        assert math.hypot(server.state.north_m, server.state.east_m) < 2.0
        # fly north by velocity until the polygon is crossed
        t_breach = gcs.wait(
            lambda: gcs.mode() == RTL, "RTL on the breach", each=lambda: gcs.velocity(6, 0, 0)
        )
        assert gcs.text_seen("Polygon fence breached")
        assert server.state.north_m > 75.0
        # RTL shows at once (ArduCopter sends a heartbeat on every mode change); FENCE_STATUS
        # streams at 1 Hz: first the breach, then the way back inside.
        gcs.wait(lambda: gcs.last["FENCE_STATUS"].breach_count == 1, "the breach reported")
        status = gcs.wait(lambda: gcs.last["FENCE_STATUS"].breach_status == 0, "back inside")
        assert status > t_breach
        assert gcs.last["FENCE_STATUS"].breach_count == 1
        assert gcs.text_seen("Fence breach cleared")
    finally:
        gcs.close()
        server.stop()


def test_gcs_loss_triggers_rtl_when_fs_gcs_enabled() -> None:
    # The client plays a ground station whose system id the autopilot is told to watch, and
    # the companion watchdog is off so that the GCS failsafe alone acts.
    server, gcs = serve(10.0, params={"FS_GCS_ENABLE": 1, "SYSID_MYGCS": 1, "SCW_ENABLE": 0})
    try:
        gcs.arm_guided_when_ready()
        gcs.takeoff(10.0)
        lat, lon = offset(40, 0)
        gcs.goto(lat, lon, 10.0)
        gcs.wait(lambda: gcs.distance_to(lat, lon) < 2.0, "40 m north")
        assert server.state.mode == "GUIDED"
        server.set_link_blocked(True)
        lost_at = server.sim_time
        deadline = time.monotonic() + 10.0
        while server.state.mode != "RTL" and time.monotonic() < deadline:
            gcs.pump()
        state = server.state
        assert state.mode == "RTL" and state.gcs_failsafe
        assert FS_GCS_TIMEOUT_S - 0.5 <= state.time_s - lost_at <= FS_GCS_TIMEOUT_S + 1.5
        before = gcs.received
        gcs.pump(0.2)
        assert gcs.received == before  # nothing gets through a cut link
        server.set_link_blocked(False)
        gcs.wait(lambda: gcs.text_seen("GCS Failsafe Cleared"), "failsafe cleared")
        assert gcs.mode() == RTL  # the failsafe's mode stays
        assert not server.state.gcs_failsafe
    finally:
        gcs.close()
        server.stop()


def test_battery_failsafe_low_rtl_then_critical_land() -> None:
    params = {
        "BATT_LOW_MAH": 3150,  # low after 150 mAh used
        "BATT_CRT_MAH": 2950,  # critical after 350 mAh
        "BATT_FS_LOW_ACT": 2,  # RTL
        "BATT_FS_CRT_ACT": 1,  # LAND
    }
    server, gcs = serve(20.0, params=params)
    try:
        gcs.arm_guided_when_ready()
        gcs.takeoff(20.0)
        gcs.goto(*offset(300, 0), 20.0)
        gcs.wait(lambda: gcs.mode() == RTL, "low battery RTL", 60)
        assert gcs.text_seen("Battery 1 is low") and gcs.text_seen("Battery Failsafe")
        assert gcs.last["HEARTBEAT"].system_status == C.MAV_STATE_CRITICAL
        gcs.wait(lambda: gcs.mode() == LAND, "critical battery LAND", 60)
        assert gcs.text_seen("Battery 1 is critical")
        gcs.wait(
            lambda: gcs.last["BATTERY_STATUS"].charge_state == C.MAV_BATTERY_CHARGE_STATE_CRITICAL,
            "BATTERY_STATUS critical",
        )
        gcs.wait(lambda: not gcs.armed(), "landed and disarmed", 60)
        assert gcs.last["SYS_STATUS"].battery_remaining == server.state.battery_pct
        assert gcs.command(C.MAV_CMD_COMPONENT_ARM_DISARM, 1) == C.MAV_RESULT_FAILED
        assert gcs.text_seen("Arm: Battery 1 low capacity failsafe")
    finally:
        gcs.close()
        server.stop()


def test_auto_mission_runs_like_ap_mission() -> None:
    server, gcs = serve(30.0)
    try:
        drop = offset(100, 0)
        mission = [
            item(0, C.MAV_CMD_NAV_WAYPOINT, *HOME_E7, 0, frame=C.MAV_FRAME_GLOBAL),
            item(1, C.MAV_CMD_NAV_TAKEOFF, 0, 0, 15),
            item(2, C.MAV_CMD_NAV_WAYPOINT, *drop, 15),
            item(3, C.MAV_CMD_NAV_LOITER_TIME, *drop, 15, p1=2),
            item(4, C.MAV_CMD_DO_GRIPPER, p1=1, p2=C.GRIPPER_ACTION_RELEASE),
            item(5, C.MAV_CMD_NAV_RETURN_TO_LAUNCH),
        ]
        assert gcs.upload(mission, C.MAV_MISSION_TYPE_MISSION) == C.MAV_MISSION_ACCEPTED
        gcs.arm_guided_when_ready()
        assert gcs.command(C.MAV_CMD_MISSION_START, 1, 0) == C.MAV_RESULT_DENIED
        assert gcs.command(C.MAV_CMD_MISSION_START) == C.MAV_RESULT_ACCEPTED
        gcs.wait(lambda: gcs.mode() == AUTO, "AUTO")
        reached: list[int] = []
        events: list[str] = []

        def collect() -> None:
            for msg in list(gcs.inbox):
                if msg.get_type() == "MISSION_ITEM_REACHED":
                    reached.append(msg.seq)
                    events.append(f"reached {msg.seq}")
                    gcs.inbox.remove(msg)
            if gcs.text_seen("Gripper load releasing") and "release" not in events:
                events.append("release")

        gcs.wait(lambda: not gcs.armed(), "the mission to end disarmed", 60, each=collect)
        collect()
        assert reached == [1, 2, 3, 5]
        # the DO command after LOITER_TIME runs once LOITER_TIME is done (AP_Mission)
        assert events.index("release") == events.index("reached 3") + 1
        assert gcs.text_seen("Mission: 1 Takeoff") and gcs.text_seen("Mission: 4 Gripper")
        state = server.state
        assert not state.load_held and math.hypot(state.north_m, state.east_m) < 1.0
        assert gcs.last["MISSION_CURRENT"].mission_state == C.MISSION_STATE_COMPLETE
    finally:
        gcs.close()
        server.stop()


def test_payload_place_lowers_the_parcel_and_climbs_back() -> None:
    server, gcs = serve(40.0)
    try:
        drop = offset(30, 0)
        mission = [
            item(0, C.MAV_CMD_NAV_WAYPOINT, *HOME_E7, 0, frame=C.MAV_FRAME_GLOBAL),
            item(1, C.MAV_CMD_NAV_TAKEOFF, 0, 0, 10),
            item(2, C.MAV_CMD_NAV_PAYLOAD_PLACE, *drop, 10),
            item(3, C.MAV_CMD_NAV_RETURN_TO_LAUNCH),
        ]
        assert gcs.upload(mission, C.MAV_MISSION_TYPE_MISSION) == C.MAV_MISSION_ACCEPTED
        gcs.arm_guided_when_ready()
        assert gcs.command(C.MAV_CMD_MISSION_START) == C.MAV_RESULT_ACCEPTED
        lowest = [100.0]

        def track() -> None:
            if gcs.mode() == AUTO and gcs.distance_to(*drop) < 1.0:
                lowest[0] = min(lowest[0], gcs.alt)

        gcs.wait(lambda: gcs.text_seen("Gripper load released"), "the release", 30, each=track)
        assert gcs.text_seen("PayloadPlace: Releasing the gripper")
        assert not server.state.load_held and server.state.armed
        gcs.wait(lambda: not gcs.armed(), "the return home", 60, each=track)
        assert 0.1 < lowest[0] < 0.5  # the parcel (0.3 m below) touched down, the drone did not
        assert math.hypot(server.state.north_m, server.state.east_m) < 1.0
    finally:
        gcs.close()
        server.stop()


def test_brake_stops_short_and_loiter_holds(flight: tuple[VehicleServer, Gcs]) -> None:
    server, gcs = flight
    gcs.arm_guided_when_ready()
    gcs.takeoff(10.0)
    gcs.goto(*offset(300, 0), 10.0)
    gcs.wait(lambda: gcs.last["VFR_HUD"].groundspeed > 9.5, "cruise speed")
    gcs.conn.mav.set_mode_send(1, C.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED, BRAKE)
    braked_at = server.state.north_m
    gcs.wait(lambda: gcs.mode() == BRAKE and gcs.last["VFR_HUD"].groundspeed < 0.05, "a stop")
    # BRAKE decelerates at up to 7.5 m/s²: far shorter than the ~40 m of a GUIDED stop
    assert server.state.north_m - braked_at < 20.0
    assert gcs.command(C.MAV_CMD_DO_SET_MODE, 1, LOITER) == C.MAV_RESULT_ACCEPTED
    held = server.state
    later = gcs.sim_time + 5.0
    gcs.wait(lambda: gcs.sim_time > later, "5 s of loiter")
    now = server.state
    assert math.hypot(now.north_m - held.north_m, now.east_m - held.east_m) < 0.5
    assert now.alt_rel_m == pytest.approx(10.0, abs=0.3)


def test_cli_parses_home_wind_and_params() -> None:
    from sim.vehicle.__main__ import build_parser

    args = build_parser().parse_args(
        ["--port", "0", "--home", "1,2,3", "--wind", "5,270", "--param", "rtl_alt=2000"]
    )
    assert args.home == (1.0, 2.0, 3.0) and args.wind == (5.0, 270.0)
    assert args.param == [("RTL_ALT", 2000.0)]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--home", "1,2"])


def test_companion_watchdog_returns_home_when_the_companion_falls_silent() -> None:
    server, gcs = serve(10.0, params={"SCW_TIMEOUT": 5.0})
    try:
        gcs.arm_guided_when_ready()
        gcs.takeoff(10.0)
        assert server.state.mode == "GUIDED"
        server.set_link_blocked(True)
        lost_at = server.sim_time
        deadline = time.monotonic() + 10.0
        while server.state.mode != "RTL" and time.monotonic() < deadline:
            time.sleep(0.02)
        state = server.state
        assert state.mode == "RTL"
        assert 4.5 <= state.time_s - lost_at <= 6.5  # SCW_TIMEOUT 5 s
        server.set_link_blocked(False)  # the watchdog's own text was lost with the link
        gcs.wait(lambda: gcs.text_seen("SCW: companion heartbeat back"), "heartbeat back")
        gcs.wait(lambda: gcs.mode() == RTL, "RTL in the heartbeat")
    finally:
        gcs.close()
        server.stop()
