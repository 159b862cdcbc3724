"""What the mission core asks for: the actions its runner carries out, in order.

Transitions are journaled, then published, before any command that follows them in the same
list is sent: the journal always knows what the drone was told to do. Every command carries a
`token`; its answer comes back as a `CommandResult` with the same token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from companion.mission.events import Phase
from firmware_bridge.fence import AutopilotLimits


@dataclass(frozen=True)
class Transition:
    """A transition to journal and publish: a phase entered, a hold, a release, an abort."""

    phase: Phase
    event: str
    detail: dict[str, Any] = field(default_factory=dict)
    boot_time_s: float | None = None


@dataclass(frozen=True)
class Finish:
    """The mission is over: journal its `outcome` ("delivered" or why it was aborted)."""

    outcome: str


class SpeedType(IntEnum):
    """MAV_CMD_DO_CHANGE_SPEED param1 (MAVLink SPEED_TYPE)."""

    GROUND = 1
    CLIMB = 2
    DESCENT = 3


@dataclass(frozen=True)
class SetMode:
    """Switch the autopilot's flight mode (an ArduCopter mode name)."""

    token: int
    mode: str


@dataclass(frozen=True)
class Arm:
    """Arm the motors."""

    token: int


@dataclass(frozen=True)
class Disarm:
    """Disarm the motors (on the ground)."""

    token: int


@dataclass(frozen=True)
class Takeoff:
    """GUIDED take-off to `alt_m` above home."""

    token: int
    alt_m: float


@dataclass(frozen=True)
class Reposition:
    """Fly to a point in GUIDED (MAV_CMD_DO_REPOSITION, acknowledged by the autopilot)."""

    token: int
    lat: float
    lon: float
    alt_m: float


@dataclass(frozen=True)
class ChangeSpeed:
    """Set one of the autopilot's speeds for GUIDED flight (MAV_CMD_DO_CHANGE_SPEED)."""

    token: int
    speed_type: SpeedType
    mps: float


@dataclass(frozen=True)
class ReleaseParcel:
    """Open the gripper: the parcel leaves the drone."""

    token: int


@dataclass(frozen=True)
class ReadParams:
    """Read the autopilot's parameters (for the preflight); answered by `ParamsRead`."""

    token: int


@dataclass(frozen=True)
class UploadLimits:
    """Put the plan's fence, rally points and fence parameters on the flight controller and
    read them back; answered by `LimitsUploaded`."""

    token: int
    limits: AutopilotLimits


@dataclass(frozen=True)
class CheckSystems:
    """Report the companion's own systems (GPS receiver, uplink, wind); answered by
    `SystemsChecked`."""

    token: int


Command = (
    SetMode
    | Arm
    | Disarm
    | Takeoff
    | Reposition
    | ChangeSpeed
    | ReleaseParcel
    | ReadParams
    | UploadLimits
    | CheckSystems
)
Action = Transition | Finish | Command
