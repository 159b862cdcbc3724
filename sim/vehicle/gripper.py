"""Servo gripper on SERVO8 holding the 1 kg parcel (AP_Gripper_Servo plus SITL's gripper).

ArduPilot moves the servo at once and reports the new state after the servo's actuation time
(0.5 s): "Gripper load releasing" then "Gripper load released" (grab likewise). MAVLink's
GRIPPER_ACTIONS is what the autopilot does: param2 0 releases (GRIP_RELEASE, 1100 us), 1 grabs
(GRIP_GRAB, 1900 us). The parcel falls when the servo opens, whatever moved it (DO_GRIPPER or
DO_SET_SERVO 8), and, like SITL's simulated gripper, is only picked up again by closing it on
the ground. It starts held, servo closed.
"""

from __future__ import annotations

from enum import Enum

from .dialect import mavlink
from .outbox import Outbox

ACTUATION_S = 0.5  # AP_Gripper_Servo SERVO_ACTUATION_TIME
CHANNEL = 8
FUNCTION_GRIPPER = 28


class GripperState(Enum):
    """AP_Gripper's states."""

    GRABBED = "grabbed"
    GRABBING = "grabbing"
    RELEASED = "released"
    RELEASING = "releasing"


class Gripper:
    """Servo position, gripper state and whether the parcel is on board."""

    def __init__(self, grab_pwm: int) -> None:
        self.state = GripperState.GRABBED
        self.pwm = grab_pwm
        self.load_held = True
        self._moved_at = -ACTUATION_S

    @property
    def is_open(self) -> bool:
        """The servo is nearer its release than its grab position."""
        return self.pwm < 1500

    def release(self, now: float, release_pwm: int, out: Outbox) -> None:
        """AP_Gripper_Servo::release."""
        if self.state is GripperState.RELEASING:
            return
        if self.state is GripperState.RELEASED:
            out.text(mavlink.MAV_SEVERITY_INFO, "Gripper load released")
            return
        self.state = GripperState.RELEASING
        self.set_pwm(release_pwm, now, on_ground=False)
        out.text(mavlink.MAV_SEVERITY_INFO, "Gripper load releasing")

    def grab(self, now: float, grab_pwm: int, on_ground: bool, out: Outbox) -> None:
        """AP_Gripper_Servo::grab."""
        if self.state is GripperState.GRABBING:
            return
        if self.state is GripperState.GRABBED:
            out.text(mavlink.MAV_SEVERITY_INFO, "Gripper load grabbed")
            return
        self.state = GripperState.GRABBING
        self.set_pwm(grab_pwm, now, on_ground)
        out.text(mavlink.MAV_SEVERITY_INFO, "Gripper load grabbing")

    def set_pwm(self, pwm: int, now: float, on_ground: bool) -> None:
        """Move the servo (also what DO_SET_SERVO on channel 8 does)."""
        self.pwm = pwm
        self._moved_at = now
        if self.is_open:
            self.load_held = False
        elif on_ground:
            self.load_held = True

    def update(self, now: float, grab_pwm: int, release_pwm: int, out: Outbox) -> None:
        """Report the move complete once the servo has had time to get there."""
        if now - self._moved_at < ACTUATION_S:
            return
        if self.state is GripperState.GRABBING and self.pwm == grab_pwm:
            self.state = GripperState.GRABBED
            out.text(mavlink.MAV_SEVERITY_INFO, "Gripper load grabbed")
        elif self.state is GripperState.RELEASING and self.pwm == release_pwm:
            self.state = GripperState.RELEASED
            out.text(mavlink.MAV_SEVERITY_INFO, "Gripper load released")
