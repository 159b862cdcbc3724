"""Putting the autopilot's own limits on the flight controller before arming.

The fence, rally points and fence parameters built by `companion.routing.limits` are what
keeps the drone in its airspace if the companion dies, so a flight starts only when the flight
controller holds exactly them: the fence and rally points are uploaded and read back item by
item (`Vehicle.upload_fence` / `upload_rally` compare on the stored integers), every fence
parameter is set and then read again on its own (the PARAM_SET echo alone could be a value
still on its way). Anything that differs, is refused or does not answer refuses the flight,
with every reason named; nothing is retried silently or counted as "ok".
"""

from __future__ import annotations

import struct

from firmware_bridge.errors import BridgeError, FenceError
from firmware_bridge.fence import AutopilotLimits
from firmware_bridge.vehicle import Vehicle


class LimitsRefused(Exception):
    """The flight controller does not hold the limits; `reasons` names each difference."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__("autopilot limits not in place: " + "; ".join(reasons))


def float32(value: float) -> float:
    """`value` as ArduPilot stores a parameter (float32)."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def upload_limits(vehicle: Vehicle, limits: AutopilotLimits) -> None:
    """Upload and verify fence, rally points and fence parameters; `LimitsRefused` naming
    every part that is not in place. Call before arming (ArduPilot takes a fence while armed
    too, but a flight must never start without it)."""
    reasons: list[str] = []
    fence = limits.fence
    try:
        vehicle.upload_fence(fence.polygons, fence.circles, fence.return_point)
    except FenceError as exc:
        reasons.append(f"fence: {exc}")
    except BridgeError as exc:
        reasons.append(f"fence: upload failed: {exc}")
    try:
        vehicle.upload_rally(limits.rally)
    except FenceError as exc:
        reasons.append(f"rally points: {exc}")
    except BridgeError as exc:
        reasons.append(f"rally points: upload failed: {exc}")
    for name, value in limits.params.items():
        try:
            vehicle.set_param(name, value)
            read = vehicle.get_param(name)
        except BridgeError as exc:
            reasons.append(f"{name}: not set to {value:g}: {exc}")
            continue
        if float32(read) != float32(value):
            reasons.append(f"{name}: set to {value:g}, autopilot holds {read:g}")
    if reasons:
        raise LimitsRefused(reasons)
