"""What a delivery publishes on the bus: its phases and how it ended."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Phase(str, Enum):
    """The phases of one delivery, in flying order."""

    PREFLIGHT = "preflight"
    ARM = "arm"
    TAKEOFF = "takeoff"
    CRUISE = "cruise"
    DESCEND = "descend"
    RELEASE = "release"
    CLIMB = "climb"
    RETURN = "return"
    LAND = "land"
    DONE = "done"
    ABORT = "abort"


#: Phases from takeoff to disarm: the flying time that is compared with ArduCopter SITL.
FLYING_PHASES = (
    Phase.TAKEOFF,
    Phase.CRUISE,
    Phase.DESCEND,
    Phase.RELEASE,
    Phase.CLIMB,
    Phase.RETURN,
    Phase.LAND,
)


#: The event names a mission ends with: entering DONE (the parcel was delivered) or ABORT
#: (``detail`` has the ``reason`` and the ``action`` taken).
DELIVERED = (Phase.DONE, "enter")
ABORTED = (Phase.ABORT, "abort")


@dataclass(frozen=True)
class MissionEvent:
    """A transition of a delivery: a phase entered, or the mission ended (done/abort)."""

    mission_id: str
    phase: Phase
    event: str
    detail: dict = field(default_factory=dict)
    boot_time_s: float | None = None
    wall_time: float = 0.0

    @property
    def ending(self) -> str | None:
        """How the mission ends, on the one event that decides it: "delivered" or "aborted";
        None for every other event (the SMS fallback keys on this)."""
        if (self.phase, self.event) == DELIVERED:
            return "delivered"
        if (self.phase, self.event) == ABORTED:
            return "aborted"
        return None
