"""Releasing and grabbing the parcel: the gripper, a servo fallback, payload-place items.

MAVLink's GRIPPER_ACTIONS says 0 = release, 1 = grab; older ArduPilot wiki pages say the
opposite. ArduCopter SITL with a configured gripper releases on param2 = 0 (servo to
GRIP_RELEASE, "Gripper load releasing") and grabs on 1, as MAVLink says, so that is what we
send. With GRIP_ENABLE = 0 the autopilot answers FAILED; a gripper enabled without a reboot
answers ACCEPTED and does nothing, which no command can detect, hence `GripperSetup` checks
the parameters before flight.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from firmware_bridge.dialect import mavlink
from firmware_bridge.errors import CommandError
from firmware_bridge.mission_protocol import MissionItem
from firmware_bridge.vehicle import Vehicle

log = logging.getLogger(__name__)

GRIPPER_RELEASE = 0  # MAVLink GRIPPER_ACTION_RELEASE
GRIPPER_GRAB = 1  # MAVLink GRIPPER_ACTION_GRAB
SERVO_FUNCTION_GRIPPER = 28  # SERVOn_FUNCTION value for the gripper output


@dataclass(frozen=True)
class ServoFallback:
    """A plain servo to drive when the autopilot has no gripper configured."""

    channel: int = 8
    release_pwm: int = 1100
    grab_pwm: int = 1900


class Gripper:
    """The parcel gripper on the flight controller."""

    def __init__(
        self, vehicle: Vehicle, instance: int = 1, fallback: ServoFallback | None = None
    ) -> None:
        self.vehicle = vehicle
        self.instance = instance
        self.fallback = fallback

    def release(self) -> None:
        """Let go of the parcel."""
        self._act(GRIPPER_RELEASE)

    def grab(self) -> None:
        """Close on a parcel."""
        self._act(GRIPPER_GRAB)

    def _act(self, action: int) -> None:
        try:
            self.vehicle.command_long(mavlink.MAV_CMD_DO_GRIPPER, self.instance, action)
        except CommandError as exc:
            if self.fallback is None or exc.result not in (
                "MAV_RESULT_FAILED",
                "MAV_RESULT_UNSUPPORTED",
            ):
                raise
            pwm = self.fallback.release_pwm if action == GRIPPER_RELEASE else self.fallback.grab_pwm
            log.warning(
                "gripper refused (%s); driving servo %d to %d",
                exc.result,
                self.fallback.channel,
                pwm,
            )
            self.vehicle.command_long(mavlink.MAV_CMD_DO_SET_SERVO, self.fallback.channel, pwm)

    def check_setup(self) -> list[str]:
        """Problems with the autopilot's gripper parameters (empty when it is usable)."""
        problems = []
        if self.vehicle.get_param("GRIP_ENABLE") != 1:
            problems.append("GRIP_ENABLE is not 1: MAV_CMD_DO_GRIPPER will fail")
        elif self.vehicle.get_param("GRIP_TYPE") == 0:
            problems.append("GRIP_TYPE is 0 (none): set 1 (servo) or 2 (EPM) and reboot")
        return problems


def payload_place_item(
    seq: int, lat: float, lon: float, max_descent_m: float, alt_rel_m: float
) -> MissionItem:
    """A MAV_CMD_NAV_PAYLOAD_PLACE mission item: fly there, descend until the load touches down
    (at most `max_descent_m`), release, climb back."""
    return MissionItem(
        seq=seq,
        frame=mavlink.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT,
        command=mavlink.MAV_CMD_NAV_PAYLOAD_PLACE,
        current=0,
        autocontinue=1,
        param1=max_descent_m,
        param2=0.0,
        param3=0.0,
        param4=0.0,
        x=round(lat * 1e7),
        y=round(lon * 1e7),
        z=alt_rel_m,
        mission_type=mavlink.MAV_MISSION_TYPE_MISSION,
    )
