"""Flight steps shared by the tests that fly the built-in vehicle or SITL."""

from __future__ import annotations

import time

from firmware_bridge.errors import ArmingRefused
from firmware_bridge.vehicle import Vehicle


def arm_guided(vehicle: Vehicle, timeout: float = 120.0) -> None:
    """GUIDED and armed, retrying while the autopilot still says it is not ready."""
    vehicle.wait_armable(timeout)
    vehicle.set_mode("GUIDED")
    deadline = time.monotonic() + timeout
    while True:
        try:
            vehicle.arm()
            return
        except ArmingRefused:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)
