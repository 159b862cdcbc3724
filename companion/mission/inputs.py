"""What the mission core is told: the events its runner feeds it.

Each is a small frozen dataclass. The core never reads a clock, a socket or a thread: time is
the autopilot's own (`StateUpdate.state.boot_time_s`), and everything else that happens
(a command's answer, a camera verdict, an operator's request, the companion's view of the
link) arrives as one of these.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from firmware_bridge.state import VehicleState


@dataclass(frozen=True)
class StateUpdate:
    """A new snapshot of the vehicle; its `boot_time_s` is the core's clock."""

    state: VehicleState


@dataclass(frozen=True)
class LinkStatus:
    """The companion's view of the autopilot link, sent on a steady tick: whether the
    heartbeat is fresh, and how long it has been silent, timed by the link's clock (the
    autopilot's pace: a dead link stops the autopilot's own clock, so this is the one input
    that tells the core time is passing without it)."""

    up: bool
    silent_s: float


@dataclass(frozen=True)
class CommandResult:
    """How a command the core asked for ended: `accepted`, or `result` says why not (a
    MAV_RESULT name, "timeout", "link down"); `texts` are the autopilot's own explanations
    that came with a refusal (pre-arm failures)."""

    token: int
    accepted: bool
    result: str = "MAV_RESULT_ACCEPTED"
    detail: str = ""
    texts: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParamsRead:
    """The autopilot's parameters, read for the preflight; `error` when they could not be."""

    token: int
    values: tuple[tuple[str, float], ...] = ()
    error: str = ""


@dataclass(frozen=True)
class AutopilotText:
    """A STATUSTEXT from the autopilot (failsafe and fence messages explain mode changes)."""

    severity: int
    text: str
    boot_time_s: float | None = None


@dataclass(frozen=True)
class ConeVerdict:
    """What the descent-cone camera saw in one frame: `reason` to hold (something below the
    drone) or None (clear), for the frame taken at `frame_time_s` on the autopilot's clock.
    The core judges it by that time: a verdict older than the plan's camera age is no
    verdict at all."""

    frame_time_s: float
    reason: str | None


class OperatorAction(str, Enum):
    """What an operator may ask of a mission in flight."""

    ABORT = "abort"  # give up and return home (RTL)
    LAND = "land"  # give up and land where the drone is
    HOLD = "hold"  # stop where the drone is and wait
    RESUME = "resume"  # go on after a hold


@dataclass(frozen=True)
class OperatorCommand:
    """An operator's request, already authenticated by whatever carried it (`source`)."""

    action: OperatorAction
    source: str = "operator"


@dataclass(frozen=True)
class JournalFailed:
    """The journal could not record a transition: the mission must not go on unrecorded."""

    error: str


Input = (
    StateUpdate
    | LinkStatus
    | CommandResult
    | ParamsRead
    | AutopilotText
    | ConeVerdict
    | OperatorCommand
    | JournalFailed
)
