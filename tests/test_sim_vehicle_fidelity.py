"""The built-in vehicle flown by the bridge (firmware_bridge.vehicle.Vehicle) against ArduCopter
SITL's measured figures (shared/reference/ardupilot-sitl.md, "Behaviour the bridge and the
built-in vehicle must match"), each within 10 %, timed on the vehicle's own clock (the
time_boot_ms the bridge reads), so the outcome does not depend on how fast the machine is.

Rechecked on SITL (master, October 2025, speed-up 5) while writing these: takeoff to 9.5 m in
9.45-9.5 s, 100 m goto in 13.85 s, LAND from 10 m to disarm in 22.6 s."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from companion.geo import distance_m, offset
from firmware_bridge.dialect import mavlink
from firmware_bridge.state import VehicleState
from firmware_bridge.vehicle import Vehicle
from sim.vehicle import DEFAULT_HOME, VehicleServer
from tests.conftest import HEARTBEAT_S
from tests.flight_helpers import arm_guided

TAKEOFF_TO_9_5_M_S = (8.5, 9.0)  # SITL: from the takeoff command
GOTO_100_M_S = 14.2  # to within 2 m, at 10 m
LAND_FROM_10_M_S = 23.0  # LAND to disarm
TOLERANCE = 0.10


@pytest.fixture
def vehicle() -> Iterator[Vehicle]:
    """The bridge on the built-in vehicle (SkyCourier's parameters), with position and
    heartbeat at 20 Hz so that phase ends are seen within 0.05 s."""
    with VehicleServer(DEFAULT_HOME, speedup=10.0, port=0) as server:
        v = Vehicle.connect(f"tcp:127.0.0.1:{server.port}", heartbeat_interval_s=HEARTBEAT_S)
        try:
            v.set_message_interval(mavlink.MAVLINK_MSG_ID_GLOBAL_POSITION_INT, 20)
            v.set_message_interval(mavlink.MAVLINK_MSG_ID_HEARTBEAT, 20)
            yield v
        finally:
            v.close()


def clock(v: Vehicle) -> float:
    """The vehicle's time now (time_boot_ms of the latest message)."""
    boot = v.state.boot_time_s
    assert boot is not None
    return boot


def reached(state: VehicleState, start: float) -> float:
    """Vehicle seconds from `start` to `state`."""
    return (state.boot_time_s or 0.0) - start


def test_takeoff_goto_and_land_take_as_long_as_on_sitl(vehicle: Vehicle) -> None:
    arm_guided(vehicle)
    vehicle.takeoff(10.0)
    start = clock(vehicle)
    up = vehicle.wait_until(
        lambda s: s.position is not None and s.position.alt_rel_m >= 9.5, 60, "9.5 m"
    )
    low, high = TAKEOFF_TO_9_5_M_S
    assert low * (1 - TOLERANCE) <= reached(up, start) <= high * (1 + TOLERANCE)

    hover = vehicle.wait_until(lambda s: reached(s, start) > 12.0, 30, "a settled hover")
    assert hover.position is not None
    lat, lon = offset(hover.position.lat, hover.position.lon, 100.0, 0.0)
    vehicle.goto(lat, lon, 10.0)
    start = clock(vehicle)
    there = vehicle.wait_until(
        lambda s: (
            s.position is not None and distance_m(s.position.lat, s.position.lon, lat, lon) < 2.0
        ),
        60,
        "within 2 m of the goto point",
    )
    assert reached(there, start) == pytest.approx(GOTO_100_M_S, rel=TOLERANCE)

    start = clock(vehicle)
    vehicle.wait_until(lambda s: reached(s, start) > 5.0, 30, "5 s over the point")
    vehicle.land()
    start = clock(vehicle)
    down = vehicle.wait_until(lambda s: not s.armed, 90, "disarm after landing")
    assert reached(down, start) == pytest.approx(LAND_FROM_10_M_S, rel=TOLERANCE)
