"""The bridge against a real MAVLink autopilot over TCP: the built-in vehicle always, and
ArduCopter SITL too when SKYCOURIER_SITL names a binary (marker `sitl`)."""

from __future__ import annotations

import time

import pytest

from companion.geo import distance_m, offset
from firmware_bridge.dialect import mavlink
from firmware_bridge.errors import (
    ArmingRefused,
    CommandError,
    LinkError,
    MissionError,
    ParamError,
)
from firmware_bridge.mission_protocol import MissionItem
from firmware_bridge.payload import Gripper, ServoFallback, payload_place_item
from firmware_bridge.state import LinkState, VehicleState
from firmware_bridge.vehicle import Vehicle
from sim.vehicle import DEFAULT_HOME, VehicleServer
from tests.conftest import HEARTBEAT_S, Autopilot
from tests.flight_helpers import arm_guided

MISSION = mavlink.MAV_MISSION_TYPE_MISSION
FENCE = mavlink.MAV_MISSION_TYPE_FENCE
RALLY = mavlink.MAV_MISSION_TYPE_RALLY
REL = mavlink.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT


def _item(
    seq: int,
    command: int,
    lat: float,
    lon: float,
    alt: float,
    mission_type: int,
    param1: float = 0.0,
    frame: int = REL,
) -> MissionItem:
    return MissionItem(
        seq=seq, frame=frame, command=command, current=0, autocontinue=1,
        param1=param1, param2=0.0, param3=0.0, param4=0.0,
        x=round(lat * 1e7), y=round(lon * 1e7), z=alt, mission_type=mission_type,
    )  # fmt: skip


# ArduPilot stores the frame, not its _INT spelling, and sends the plain one back (as QGC
# expects): MAV_FRAME_GLOBAL_INT -> GLOBAL, GLOBAL_RELATIVE_ALT_INT -> GLOBAL_RELATIVE_ALT, ...
_PLAIN_FRAME = {
    mavlink.MAV_FRAME_GLOBAL_INT: mavlink.MAV_FRAME_GLOBAL,
    mavlink.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT: mavlink.MAV_FRAME_GLOBAL_RELATIVE_ALT,
    mavlink.MAV_FRAME_GLOBAL_TERRAIN_ALT_INT: mavlink.MAV_FRAME_GLOBAL_TERRAIN_ALT,
}


def _same_items(a: list[MissionItem], b: list[MissionItem]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert (x.seq, x.command, x.x, x.y) == (y.seq, y.command, y.x, y.y)
        assert _PLAIN_FRAME.get(x.frame, x.frame) == _PLAIN_FRAME.get(y.frame, y.frame)
        assert x.z == pytest.approx(y.z, abs=0.01)
        assert x.param1 == pytest.approx(y.param1, abs=1e-3)


def test_arm_takeoff_goto_land(vehicle: Vehicle) -> None:
    arm_guided(vehicle)
    vehicle.takeoff(10.0)
    vehicle.wait_until(lambda s: s.position is not None and s.position.alt_rel_m >= 9.5, 60, "10 m")
    home = vehicle.state.home
    assert home is not None
    lat, lon = offset(home.lat, home.lon, 60.0, 0.0)
    vehicle.goto(lat, lon, 10.0)
    vehicle.wait_until(
        lambda s: (
            s.position is not None and distance_m(s.position.lat, s.position.lon, lat, lon) < 2.0
        ),
        60,
        "the goto point",
    )
    vehicle.land()
    state = vehicle.wait_until(lambda s: not s.armed, 90, "disarm after landing")
    assert state.position is not None and state.position.alt_rel_m < 1.0


def test_mission_round_trip_of_100_items(vehicle: Vehicle) -> None:
    vehicle.wait_until(lambda s: s.home is not None, 120, "home")
    lat0, lon0, _ = DEFAULT_HOME
    items = [
        _item(
            0,
            mavlink.MAV_CMD_NAV_WAYPOINT,
            lat0,
            lon0,
            0.0,
            MISSION,
            frame=mavlink.MAV_FRAME_GLOBAL,
        )
    ]
    for seq in range(1, 100):
        lat, lon = offset(lat0, lon0, 20.0 + seq, seq * 3.6)
        items.append(_item(seq, mavlink.MAV_CMD_NAV_WAYPOINT, lat, lon, 20.0 + seq % 7, MISSION))
    vehicle.upload_mission(items)
    back = vehicle.download_mission()
    # Item 0 is home on ArduPilot: the autopilot may rewrite it with its own home.
    _same_items(items[1:], back[1:])
    vehicle.set_current_mission_item(5)
    vehicle.clear_mission()
    assert len(vehicle.download_mission()) <= 1


def test_fence_and_rally_upload_download_clear(vehicle: Vehicle) -> None:
    lat0, lon0, _ = DEFAULT_HOME
    corners = [offset(lat0, lon0, 300.0, b) for b in (45, 135, 225, 315)]
    fence = [
        _item(
            i,
            mavlink.MAV_CMD_NAV_FENCE_POLYGON_VERTEX_INCLUSION,
            lat,
            lon,
            0.0,
            FENCE,
            param1=4,
            frame=mavlink.MAV_FRAME_GLOBAL,
        )
        for i, (lat, lon) in enumerate(corners)
    ]
    nfz = offset(lat0, lon0, 150.0, 90)
    fence.append(
        _item(
            4,
            mavlink.MAV_CMD_NAV_FENCE_CIRCLE_EXCLUSION,
            *nfz,
            0.0,
            FENCE,
            param1=30.0,
            frame=mavlink.MAV_FRAME_GLOBAL,
        )
    )
    vehicle.upload_mission(fence, FENCE)
    _same_items(fence, vehicle.download_mission(FENCE))
    rally = [
        _item(i, mavlink.MAV_CMD_NAV_RALLY_POINT, *offset(lat0, lon0, 100.0, 120 * i), 15.0, RALLY)
        for i in range(3)
    ]
    vehicle.upload_mission(rally, RALLY)
    _same_items(rally, vehicle.download_mission(RALLY))
    vehicle.clear_mission(FENCE)
    vehicle.clear_mission(RALLY)
    assert vehicle.download_mission(FENCE) == []
    assert vehicle.download_mission(RALLY) == []


def test_rejected_mission_surfaces_the_result_by_name(vehicle: Vehicle) -> None:
    lat0, lon0, _ = DEFAULT_HOME
    bad = [_item(0, mavlink.MAV_CMD_NAV_WAYPOINT, lat0, lon0, 10.0, FENCE)]
    with pytest.raises(MissionError) as caught:
        vehicle.upload_mission(bad, FENCE)
    assert caught.value.result.startswith("MAV_MISSION_")
    assert caught.value.result != "MAV_MISSION_ACCEPTED"
    assert caught.value.result in str(caught.value)


def test_parameters_set_and_get(vehicle: Vehicle) -> None:
    assert vehicle.set_param("WPNAV_SPEED", 750.0) == pytest.approx(750.0)
    assert vehicle.get_param("WPNAV_SPEED") == pytest.approx(750.0)
    assert vehicle.set_param("RTL_ALT", 2500) == 2500
    assert vehicle.get_param("RTL_ALT") == 2500
    with pytest.raises(ParamError, match="NO_SUCH_PARAM"):
        vehicle.get_param("NO_SUCH_PARAM")


def test_gripper_release_and_grab(vehicle: Vehicle, autopilot: Autopilot) -> None:
    gripper = Gripper(vehicle)
    assert gripper.check_setup() == []
    gripper.release()
    if autopilot.server is not None:
        assert autopilot.server.state.gripper_released
    gripper.grab()
    if autopilot.server is not None:
        assert not autopilot.server.state.gripper_released


def test_arm_refused_with_the_autopilots_reason(builtin_autopilot: Autopilot) -> None:
    server = VehicleServer(DEFAULT_HOME, speedup=1.0, port=0, ready_delay_s=600.0)
    server.start()
    try:
        with Vehicle.connect(f"tcp:127.0.0.1:{server.port}", heartbeat_interval_s=HEARTBEAT_S) as v:
            v.set_mode("GUIDED")
            with pytest.raises(ArmingRefused) as caught:
                v.arm()
    finally:
        server.stop()
    assert caught.value.reasons
    # ArduPilot prefixes pre-arm failures "PreArm:" and arming-time failures "Arm:".
    assert any(r.startswith(("PreArm:", "Arm:")) for r in caught.value.reasons)


def test_link_loss_triggers_the_companion_watchdog(builtin_autopilot: Autopilot) -> None:
    server = builtin_autopilot.server
    assert server is not None
    events: list[LinkState] = []
    v = Vehicle.connect(
        builtin_autopilot.connection,
        publish=lambda m: events.append(m) if isinstance(m, LinkState) else None,
        heartbeat_timeout_s=1.0,
        heartbeat_interval_s=HEARTBEAT_S,
    )
    try:
        arm_guided(v)
        v.takeoff(10.0)
        v.wait_until(lambda s: s.position is not None and s.position.alt_rel_m > 9, 60, "10 m")
        server.set_link_blocked(True)
        deadline = time.monotonic() + 10
        while (v.link.up or server.state.mode == "GUIDED") and time.monotonic() < deadline:
            time.sleep(0.05)
        # The autopilot went home on its own, and the bridge noticed and said so.
        assert server.state.mode == "RTL"
        assert [e.up for e in events][-1] is False
        with pytest.raises(LinkError, match="not answering"):
            v.set_mode("GUIDED")  # commands are gated on a fresh heartbeat
        server.set_link_blocked(False)
        assert v.link.wait_up(10)
        v.wait_until(lambda s: s.mode == "RTL", 10, "RTL seen once the link is back")
    finally:
        v.close()


def test_unreachable_endpoint_fails_fast_and_clearly() -> None:
    started = time.monotonic()
    with pytest.raises(LinkError, match=r"tcp:127\.0\.0\.1:9"):
        Vehicle.connect("tcp:127.0.0.1:9", connect_timeout_s=2.0)
    assert time.monotonic() - started < 5.0


def test_silent_endpoint_times_out_with_a_clear_message() -> None:
    with pytest.raises(LinkError, match=r"no heartbeat .* within 1 s"):
        Vehicle.connect("udp:127.0.0.1:14999", connect_timeout_s=1.0)


def test_speed_change_reposition_brake_and_loiter(vehicle: Vehicle) -> None:
    arm_guided(vehicle)
    vehicle.takeoff(10.0)
    vehicle.wait_until(lambda s: s.position is not None and s.position.alt_rel_m >= 9.5, 60, "10 m")
    home = vehicle.state.home
    assert home is not None
    lat, lon = offset(home.lat, home.lon, 150.0, 90.0)
    vehicle.goto(lat, lon, 10.0)
    # After the target: ArduCopter resets GUIDED's speeds when it starts flying to a position.
    vehicle.set_speed(4.0)
    steady = vehicle.wait_until(
        lambda s: s.position is not None and distance_m(home.lat, home.lon, *_latlon(s)) > 60.0,
        60,
        "the vehicle 60 m out",
    )
    assert 3.5 <= (steady.ground_speed_mps or 0.0) <= 4.5, steady.ground_speed_mps
    vehicle.brake()
    vehicle.wait_until(lambda s: (s.ground_speed_mps or 9.0) < 0.3, 30, "a stop")
    vehicle.loiter()
    vehicle.set_mode("GUIDED")
    # COMMAND_INT: MAV_CMD_DO_REPOSITION to a point 30 m north, at ground speed -1 (default).
    target = offset(home.lat, home.lon, 30.0, 0.0)
    vehicle.command_int(
        mavlink.MAV_CMD_DO_REPOSITION, REL, [-1, 0, 0, 0],
        round(target[0] * 1e7), round(target[1] * 1e7), 10.0,
    )  # fmt: skip
    vehicle.wait_until(
        lambda s: (
            s.position is not None and distance_m(s.position.lat, s.position.lon, *target) < 2.0
        ),
        60,
        "the reposition target",
    )
    vehicle.land()
    vehicle.wait_until(lambda s: not s.armed, 90, "disarm after landing")


def test_reading_every_parameter(vehicle: Vehicle) -> None:
    table = vehicle.get_all_params()
    assert len(table) > 50
    assert table["WPNAV_SPEED"] == vehicle.get_param("WPNAV_SPEED")


def test_gripper_falls_back_to_the_servo(builtin_autopilot: Autopilot) -> None:
    server = builtin_autopilot.server
    assert server is not None
    with Vehicle.connect(builtin_autopilot.connection, heartbeat_interval_s=HEARTBEAT_S) as v:
        v.set_param("GRIP_ENABLE", 0)
        with pytest.raises(CommandError, match="MAV_RESULT_FAILED"):
            Gripper(v).release()
        assert Gripper(v).check_setup() == ["GRIP_ENABLE is not 1: MAV_CMD_DO_GRIPPER will fail"]
        Gripper(v, fallback=ServoFallback(channel=8)).release()
        assert server.state.gripper_released


def test_payload_place_mission_in_auto(builtin_autopilot: Autopilot) -> None:
    server = builtin_autopilot.server
    assert server is not None
    lat0, lon0, _ = DEFAULT_HOME
    drop = offset(lat0, lon0, 40.0, 0.0)
    items = [
        _item(0, mavlink.MAV_CMD_NAV_WAYPOINT, lat0, lon0, 0.0, MISSION,
              frame=mavlink.MAV_FRAME_GLOBAL),
        _item(1, mavlink.MAV_CMD_NAV_TAKEOFF, 0.0, 0.0, 15.0, MISSION),
        payload_place_item(2, *drop, max_descent_m=20.0, alt_rel_m=15.0),
        _item(3, mavlink.MAV_CMD_NAV_RETURN_TO_LAUNCH, 0.0, 0.0, 0.0, MISSION),
    ]  # fmt: skip
    with Vehicle.connect(builtin_autopilot.connection, heartbeat_interval_s=HEARTBEAT_S) as v:
        v.upload_mission(items)
        arm_guided(v)
        v.start_mission()
        v.wait_until(lambda s: s.mode == "AUTO", 10, "AUTO")
        v.wait_until(lambda s: not s.armed, 180, "the mission to end with a landing")
    assert server.state.gripper_released


def _latlon(state: VehicleState) -> tuple[float, float]:
    assert state.position is not None
    return state.position.lat, state.position.lon
