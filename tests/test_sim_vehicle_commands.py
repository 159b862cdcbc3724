"""Commands, guided targets and status bits of the built-in vehicle, each as ArduCopter SITL
answered them (ArduPilot master, October 2025, SkyCourier's parameter files unless said; the
SITL side is tests/test_sitl_behaviour.py). Durations are simulated seconds."""

from __future__ import annotations

import math
import time

import pytest

from sim.vehicle import DEFAULT_HOME, SHIPPED_PARAM_FILES, VehicleServer
from sim.vehicle.controllers import Takeoff
from sim.vehicle.copter import Copter
from sim.vehicle.params import ParamTable
from sim.vehicle.server import PHYSICS_HZ
from sim.vehicle.telemetry import sys_status
from tests.test_sim_vehicle import (
    GUIDED,
    LOITER,
    REL_INT,
    RTL,
    C,
    Gcs,
    offset,
    serve,
)

ACCEPTED, DENIED, FAILED, UNSUPPORTED = (
    C.MAV_RESULT_ACCEPTED,
    C.MAV_RESULT_DENIED,
    C.MAV_RESULT_FAILED,
    C.MAV_RESULT_UNSUPPORTED,
)
GEOFENCE = C.MAV_SYS_STATUS_GEOFENCE
TARGET = "POSITION_TARGET_GLOBAL_INT"
HOME_AMSL = DEFAULT_HOME[2]


def reposition(gcs: Gcs, lat: int, lon: int, z: float, *, frame: int = REL_INT,
               flags: int = 0) -> int:  # fmt: skip
    """MAV_CMD_DO_REPOSITION as COMMAND_INT; the ACK's result."""
    return gcs.command_int(C.MAV_CMD_DO_REPOSITION, frame, [-1, flags, 0, 0], lat, lon, z)


def fly_to_10m(gcs: Gcs) -> None:
    gcs.arm_guided_when_ready()
    gcs.takeoff(10.0)


def settle(gcs: Gcs, seconds: float) -> None:
    """Let `seconds` of simulated time pass while pumping."""
    until = gcs.sim_time + seconds
    gcs.wait(lambda: gcs.sim_time >= until, f"{seconds} s")


def top_speed(gcs: Gcs, seconds: float) -> float:
    """The highest ground speed seen over the next `seconds`."""
    top = [0.0]
    until = gcs.sim_time + seconds

    def track() -> None:
        top[0] = max(top[0], gcs.last["VFR_HUD"].groundspeed)

    gcs.wait(lambda: gcs.sim_time >= until, f"{seconds} s", each=track)
    return top[0]


def fence_bits(message: object) -> tuple[bool, bool, bool]:
    """(present, enabled, healthy) of SYS_STATUS's geofence bit."""
    return (
        bool(message.onboard_control_sensors_present & GEOFENCE),
        bool(message.onboard_control_sensors_enabled & GEOFENCE),
        bool(message.onboard_control_sensors_health & GEOFENCE),
    )


def test_a_retransmitted_command_runs_again() -> None:
    # GCS_MAVLINK::handle_command_long never reads `confirmation`: on SITL DO_SEND_BANNER
    # sent again with confirmation 1 printed the banner a second time
    server, gcs = serve(20.0)
    try:
        assert gcs.command(C.MAV_CMD_DO_SEND_BANNER) == ACCEPTED
        assert gcs.command(C.MAV_CMD_DO_SEND_BANNER, confirmation=1) == ACCEPTED
        gcs.wait(lambda: sum(t == "Frame: QUAD/PLUS" for _, _, t in gcs.texts) == 2, "2 banners")
    finally:
        gcs.close()
        server.stop()


def test_reposition_answers_as_ardupilot() -> None:
    server, gcs = serve(20.0)
    try:
        gcs.wait(lambda: "HOME_POSITION" in gcs.last, "home")
        near = offset(50, 0)
        assert gcs.command(C.MAV_CMD_SET_MESSAGE_INTERVAL, 87, 100_000) == ACCEPTED
        assert reposition(gcs, *near, 10) == DENIED  # STABILIZE, no CHANGE_MODE flag
        assert gcs.command(C.MAV_CMD_DO_SET_MODE, 1, GUIDED) == ACCEPTED
        # sea level (absolute altitude 0) is not sanitized: accepted, on the ground nothing moves
        assert reposition(gcs, *near, 0, frame=C.MAV_FRAME_GLOBAL_INT) == ACCEPTED
        assert reposition(gcs, *near, 10) == ACCEPTED  # disarmed: stored, reported
        gcs.wait(lambda: TARGET in gcs.last, "the target on the ground")
        assert (gcs.last[TARGET].lat_int, gcs.last[TARGET].lon_int) == near
        assert server.state.landed and server.state.north_m == 0.0
        fly_to_10m(gcs)
        outside = offset(900, 0)  # FENCE_RADIUS 800
        assert reposition(gcs, 0, 0, 10) == DENIED  # Location::sanitize: lat = lon = 0
        assert reposition(gcs, *near, 0) == DENIED  # sanitize: relative altitude 0
        assert reposition(gcs, *near, math.nan) == DENIED
        assert reposition(gcs, 910_000_000, near[1], 10) == DENIED  # latitude 91°
        assert reposition(gcs, *near, 10, frame=C.MAV_FRAME_LOCAL_NED) == DENIED
        assert gcs.text_seen("Unknown mavlink coordinate frame 1")
        assert reposition(gcs, *outside, 10) == FAILED  # ModeGuided::set_destination
        assert reposition(gcs, *near, 130) == FAILED  # above FENCE_ALT_MAX 120
        by_long = (C.MAV_CMD_DO_REPOSITION, -1, 0, 0, 0, near[0] * 1e-7, near[1] * 1e-7, 10)
        assert gcs.command(*by_long) == UNSUPPORTED  # COMMAND_LONG has no frame
        assert gcs.command(C.MAV_CMD_DO_SET_MODE, 1, LOITER) == ACCEPTED
        assert reposition(gcs, *near, 10) == DENIED
        assert reposition(gcs, *outside, 10, flags=1) == FAILED  # before any mode change
        assert server.state.mode == "LOITER"
        assert reposition(gcs, *near, 10, flags=1) == ACCEPTED  # CHANGE_MODE: to GUIDED
        gcs.wait(lambda: gcs.mode() == GUIDED, "GUIDED")
        gcs.wait(lambda: gcs.distance_to(*near) < 1.0, "the reposition point")
    finally:
        gcs.close()
        server.stop()


def test_change_speed_answers_and_holds_as_ardupilot() -> None:
    server, gcs = serve(20.0)
    try:
        speed = C.MAV_CMD_DO_CHANGE_SPEED
        assert gcs.command(speed, 1, 5) == FAILED  # STABILIZE has no set_speed_xy_cms
        assert gcs.command(speed, 1, 0) == DENIED  # not a positive speed
        assert gcs.command(speed, C.SPEED_TYPE_ENUM_END, 5) == DENIED
        assert gcs.command(speed, 7, 5) == FAILED  # no such speed type
        assert gcs.command(C.MAV_CMD_DO_SET_MODE, 1, GUIDED) == ACCEPTED
        assert [gcs.command(speed, kind, 5) for kind in range(4)] == [ACCEPTED] * 4
        assert gcs.command(speed, 5, 5) == FAILED and gcs.command(speed, -1, 5) == FAILED
        fly_to_10m(gcs)
        # given before the first goto, it is dropped when position control starts: SITL flew
        # that goto at 10.1 m/s (WPNAV_SPEED)
        assert gcs.command(speed, 1, 4) == ACCEPTED
        gcs.goto(*offset(150, 0), 10)
        assert top_speed(gcs, 12.0) > 9.5
        # given during a goto it holds, for the next goto too (SITL: 2.94 and 3.05 m/s)
        assert gcs.command(speed, 1, 3) == ACCEPTED
        settle(gcs, 6.0)
        assert gcs.last["VFR_HUD"].groundspeed == pytest.approx(3.0, abs=0.1)
        gcs.goto(*offset(150, 60), 10)
        assert top_speed(gcs, 10.0) < 3.1
        assert gcs.command(C.MAV_CMD_DO_SET_MODE, 1, LOITER) == ACCEPTED
        assert gcs.command(speed, 1, 5) == FAILED
        assert gcs.command(C.MAV_CMD_NAV_RETURN_TO_LAUNCH) == ACCEPTED
        assert [gcs.command(speed, kind, 5) for kind in range(4)] == [ACCEPTED] * 4
    finally:
        gcs.close()
        server.stop()


def test_position_target_global_int_reports_the_guided_target() -> None:
    server, gcs = serve(20.0)
    try:
        gcs.pump()
        assert TARGET not in gcs.last  # not streamed unless asked for
        assert gcs.command(C.MAV_CMD_SET_MESSAGE_INTERVAL, 87, 100_000) == ACCEPTED
        gcs.arm_guided_when_ready()
        assert gcs.command(C.MAV_CMD_NAV_TAKEOFF, 0, 0, 0, 0, 0, 0, 10) == ACCEPTED
        gcs.wait(lambda: gcs.alt >= 9.5, "10 m")
        settle(gcs, 1.0)
        assert TARGET not in gcs.last  # no waypoint during a GUIDED takeoff
        goal = offset(60, 0)
        gcs.goto(*goal, 10)
        gcs.wait(lambda: TARGET in gcs.last, "the target")
        target = gcs.last[TARGET]
        assert (target.coordinate_frame, target.type_mask) == (C.MAV_FRAME_GLOBAL, 0xFDF8)
        assert (target.lat_int, target.lon_int) == goal
        assert target.alt == pytest.approx(HOME_AMSL + 10.0, abs=0.01)
        assert (target.vx, target.vy, target.vz, target.yaw) == (0, 0, 0, 0)
        gcs.wait(lambda: gcs.distance_to(*goal) < 1.0, "the goal")
        assert gcs.command(C.MAV_CMD_DO_SET_MODE, 1, LOITER) == ACCEPTED
        settle(gcs, 0.2)
        del gcs.last[TARGET]
        settle(gcs, 1.0)
        assert TARGET not in gcs.last  # LOITER has no waypoint
        assert gcs.command(C.MAV_CMD_NAV_RETURN_TO_LAUNCH) == ACCEPTED
        gcs.wait(lambda: TARGET in gcs.last, "RTL's target")
        # RTL_ALT 30 m (60 m out, RTL_CONE_SLOPE does not lower it)
        assert gcs.last[TARGET].alt == pytest.approx(HOME_AMSL + 30.0, abs=0.01)
    finally:
        gcs.close()
        server.stop()


def test_sys_status_geofence_bits_as_ardupilot_sets_them() -> None:
    # SITL with SkyCourier's parameters: present, enabled and healthy on the ground and in
    # flight inside the fence; with stock ones (FENCE_ENABLE 0): present and healthy
    stock = Copter(DEFAULT_HOME, ParamTable(), ready_delay_s=1.0)
    assert fence_bits(sys_status(stock)) == (True, False, True)
    copter = Copter(DEFAULT_HOME, ParamTable(files=SHIPPED_PARAM_FILES), ready_delay_s=1.0)
    assert fence_bits(sys_status(copter)) == (True, True, True)
    while not copter.position_ok:
        copter.step(0.02)
    assert copter.set_mode(GUIDED) and copter.arm(force=False)
    copter.controller = Takeoff(copter, 10.0)
    while copter.body.alt < 9.5:
        copter.step(0.02)
    assert fence_bits(sys_status(copter)) == (True, True, True)
    # SITL: FENCE_ALT_MAX 5 at 10 m -> breached (health clear), RTL; cleared below it
    copter.params.set("FENCE_ALT_MAX", 5.0)
    for _ in range(10):
        copter.step(0.02)
    assert fence_bits(sys_status(copter)) == (True, True, False)
    assert copter.mode == RTL
    # no fence configured at all: still healthy (MAVProxy would say "fence breach" otherwise)
    copter.params.set("FENCE_TYPE", 0)
    assert fence_bits(sys_status(copter)) == (False, False, True)


@pytest.mark.parametrize("speedup", [1.0, 10.0])
def test_system_time_is_utc_from_the_first_connection(speedup: float) -> None:
    # UTC at boot is taken when simulated time starts (the first client), not when the
    # server was made: bounded by the wall clock just before connecting and at the first
    # SYSTEM_TIME, whatever the machine's speed; from there UTC runs with simulated time
    server = VehicleServer(DEFAULT_HOME, speedup=speedup, port=0).start()
    try:
        time.sleep(1.0)  # the vehicle waits for its first client, as SITL does
        before = time.time()
        gcs = Gcs(server.port)
        try:
            gcs.wait(lambda: "SYSTEM_TIME" in gcs.last, "SYSTEM_TIME", 10)
            seen_at = time.time()
            system_time = gcs.last["SYSTEM_TIME"]
            assert before <= server.utc_at_boot <= seen_at
            boot = system_time.time_boot_ms / 1000.0
            utc = system_time.time_unix_usec / 1e6
            assert utc == pytest.approx(server.utc_at_boot + boot, abs=0.002)
            if speedup == 1.0:  # real UTC, not a second behind (a step runs 20 ms ahead)
                assert before <= utc <= seen_at + 1.0 / PHYSICS_HZ
        finally:
            gcs.close()
    finally:
        server.stop()
