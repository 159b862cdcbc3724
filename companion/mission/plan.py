"""What a mission flies: a plan of legs, and the limits it is flown within.

A plan is data, built before the flight and journaled with the mission, in the spirit of
ArduPilot's AP_Mission: a list of legs (take-off, transit through waypoints, a drop with its
hand-over steps, return, land) that the mission core turns into the commands it starts and
verifies one after another. Several drops (route planning) are several transit and drop legs;
a recipient check is more hand-over steps of a drop; neither needs a new core.

Altitudes are metres above home, speeds metres per second, times seconds of the autopilot's
clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from companion.config import FlightConfig, PreflightConfig
from companion.geo import distance_m
from firmware_bridge.fence import AutopilotLimits


@dataclass(frozen=True)
class Waypoint:
    """A point to fly to: WGS-84 degrees and metres above home."""

    lat: float
    lon: float
    alt_m: float


@dataclass(frozen=True)
class TakeoffLeg:
    """Climb from the ground to `alt_m` over home (GUIDED take-off)."""

    alt_m: float


@dataclass(frozen=True)
class TransitLeg:
    """Fly through `waypoints` in order, at the plan's cruise speed; `to` names the place
    the last one reaches (for messages: "the drop point")."""

    waypoints: tuple[Waypoint, ...]
    to: str = "the drop point"


class HandoverStep(str, Enum):
    """The steps of a hand-over at the drop, between the descent and the climb.

    CLEAR_CONE: hold until the descent cone is seen clear (a fresh camera frame, nobody below);
    VERIFY_RECIPIENT: hover until the recipient is cleared (a verified, live face match or a
    valid fallback PIN for this drop, given during this step), or fly the parcel home;
    RELEASE: open the gripper (the only step that may; after VERIFY_RECIPIENT only with its
    clearance); DWELL: hover the plan's release hold.
    """

    CLEAR_CONE = "clear-cone"
    VERIFY_RECIPIENT = "verify-recipient"
    RELEASE = "release"
    DWELL = "dwell"


#: The hand-over of a plain delivery: release once the cone is clear, then hover a moment.
DEFAULT_HANDOVER = (HandoverStep.CLEAR_CONE, HandoverStep.RELEASE, HandoverStep.DWELL)
#: The hand-over of an order that names its recipient: the cone, then the recipient check
#: right before the release.
RECIPIENT_HANDOVER = (
    HandoverStep.CLEAR_CONE,
    HandoverStep.VERIFY_RECIPIENT,
    HandoverStep.RELEASE,
    HandoverStep.DWELL,
)


@dataclass(frozen=True)
class DropLeg:
    """Descend over the drop point to `handover_alt_m`, run the hand-over `steps`, climb back
    to `cruise_alt_m`. `drop_id` names the parcel (an order id with several drops).
    `not_before_s`: hover over the drop at cruise altitude until that many seconds after the
    take-off command before descending (the order's window opens then)."""

    drop_id: str
    lat: float
    lon: float
    handover_alt_m: float
    cruise_alt_m: float
    steps: tuple[HandoverStep, ...] = DEFAULT_HANDOVER
    not_before_s: float | None = None

    def __post_init__(self) -> None:
        wait = self.not_before_s
        if wait is not None and not (math.isfinite(wait) and wait >= 0):
            raise ValueError(f"drop {self.drop_id}: not_before_s {wait!r} is not a time")
        # Steps read back from JSON are plain strings: make them steps (or refuse them).
        object.__setattr__(self, "steps", tuple(HandoverStep(step) for step in self.steps))
        if self.steps.count(HandoverStep.RELEASE) != 1:
            raise ValueError(f"drop {self.drop_id}: a hand-over releases exactly once")
        checks = self.steps.count(HandoverStep.VERIFY_RECIPIENT)
        release = self.steps.index(HandoverStep.RELEASE)
        before = self.steps[release - 1] if release > 0 else None
        if checks > 1 or (checks and before is not HandoverStep.VERIFY_RECIPIENT):
            # Nothing may come between a clearance and the release it allows.
            raise ValueError(
                f"drop {self.drop_id}: a recipient check comes once, right before the release"
            )

    @property
    def requires_recipient(self) -> bool:
        """Whether the parcel may only be released to a verified recipient."""
        return HandoverStep.VERIFY_RECIPIENT in self.steps


@dataclass(frozen=True)
class ReturnLeg:
    """Return to launch (the autopilot's RTL) until it starts its final descent over home."""


@dataclass(frozen=True)
class LandLeg:
    """The landing that ends a return: until the autopilot disarms."""


Leg = TakeoffLeg | TransitLeg | DropLeg | ReturnLeg | LandLeg


@dataclass(frozen=True)
class Speeds:
    """Speeds the mission sets on the autopilot (MAV_CMD_DO_CHANGE_SPEED) for its legs, and
    the final landing speed it expects the autopilot to land at (LAND_SPEED: a parameter of
    the autopilot's own landing, which no command sets; the preflight compares them)."""

    cruise_mps: float = 10.0
    climb_mps: float = 2.5
    descent_mps: float = 1.5
    land_mps: float = 0.5


@dataclass(frozen=True)
class Limits:
    """When a leg counts as done, and when the mission gives up on it."""

    #: A waypoint is reached within this horizontal distance.
    arrival_radius_m: float = 2.0
    #: An altitude is reached within this margin (SITL's reference: 29.5 m for 30 m).
    alt_tolerance_m: float = 0.5
    #: Hover this long after the release before climbing.
    release_hold_s: float = 3.0
    #: Do not start below this battery; return home when it falls below; land below half.
    min_battery_pct: float = 25.0
    #: Give up when the vehicle is not ready to arm, or still refuses to, after this long.
    preflight_timeout_s: float = 120.0
    #: Give up on any one leg after this long.
    phase_timeout_s: float = 600.0
    #: The autopilot's heartbeat may be missing this long (companion seconds) before the
    #: mission leaves the flight to the autopilot's own failsafes.
    link_loss_grace_s: float = 5.0
    #: Longest total hold for something in the descent cone, over a drop's descent and
    #: hand-over, before the parcel is flown home.
    max_hold_s: float = 120.0
    #: A leg with no progress towards its target for this long is aborted; after half of it
    #: the target is sent once more (a lost or overwritten setpoint).
    no_progress_s: float = 4.0
    #: A camera verdict older than this (autopilot seconds) is stale: no descent, no release.
    camera_max_age_s: float = 1.0
    #: Wait this long between arming attempts the autopilot refused for a passing reason.
    arm_retry_s: float = 2.0
    #: The legal altitude ceiling above home; the autopilot's altitude fence must hold it.
    altitude_ceiling_m: float = 120.0
    #: Hover this long (autopilot seconds) for the recipient to be cleared before the parcel
    #: is flown home.
    recipient_timeout_s: float = 60.0
    #: A face verdict older than this (autopilot seconds, from when it was decided) is stale:
    #: it never clears a release.
    recipient_max_age_s: float = 2.0


@dataclass(frozen=True)
class EnergyBudget:
    """What the planner priced the flight at (`companion.routing.energy`): the charge it
    draws and the reserve that must be left, on a battery of `capacity_mah`. The preflight
    refuses a battery that holds less than charge + reserve, or a flight controller whose
    BATT_CAPACITY is smaller than the battery the plan was priced for."""

    charge_mah: float
    reserve_mah: float
    capacity_mah: float

    def __post_init__(self) -> None:
        for name in ("charge_mah", "reserve_mah", "capacity_mah"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"energy budget: {name} {value!r} is not a charge")


@dataclass(frozen=True)
class PreflightChecks:
    """What the preflight demands beyond the autopilot's parameters and battery: GPS quality
    (the autopilot's receiver always, the companion's own when `companion_gps`), the uplink
    when `uplink`, a wind report at or below `max_wind_mps` when that is set, and each
    drop's signed order when `signed_orders`. A demanded
    input that is missing or stale refuses the flight."""

    companion_gps: bool = False
    uplink: bool = False
    max_wind_mps: float | None = None
    min_satellites: int = 6
    max_hdop: float = 2.0
    #: A companion fix older than this (seconds) does not count.
    max_fix_age_s: float = 2.0
    #: Every drop is a signed order, reported valid now (`GroundStatus.orders`): set by
    #: whoever built the plan from signed orders, so that an order that expired, or was
    #: never verified, keeps the drone on the ground.
    signed_orders: bool = False

    @property
    def needs_ground_status(self) -> bool:
        """Whether the companion's own systems must be reported (`CheckSystems`)."""
        return (
            self.companion_gps or self.uplink or self.max_wind_mps is not None or self.signed_orders
        )


@dataclass(frozen=True)
class MissionPlan:
    """One mission: its legs in flying order, the speeds to set, the limits to keep, and
    whether a descent-cone camera watches the hand-over (then a missing or stale frame
    holds the descent; without one the plan says so and nothing is watched), and what the
    preflight must see in place before arming (the autopilot's limits, the energy, the
    companion's systems)."""

    mission_id: str
    legs: tuple[Leg, ...]
    speeds: Speeds = field(default_factory=Speeds)
    limits: Limits = field(default_factory=Limits)
    camera_required: bool = False
    #: The airspace's fence, rally points and fence parameters, uploaded and read back in the
    #: preflight before arming (None: the autopilot's fence circle and ceiling only).
    autopilot_limits: AutopilotLimits | None = None
    #: The planner's price for the flight, checked against the battery before arming.
    energy: EnergyBudget | None = None
    checks: PreflightChecks = field(default_factory=PreflightChecks)

    def __post_init__(self) -> None:
        if not self.mission_id:
            raise ValueError("a mission needs an id")
        if not self.legs or not isinstance(self.legs[0], TakeoffLeg):
            raise ValueError(f"mission {self.mission_id}: the first leg must be a take-off")
        ids = [drop.drop_id for drop in self.drops()]
        if len(ids) != len(set(ids)):
            # A recipient's verdict or PIN names its drop: two drops of one name would share it.
            raise ValueError(f"mission {self.mission_id}: drop ids must differ, got {ids}")
        for leg in self.legs:
            for alt in _altitudes(leg):
                if not 0 < alt <= self.limits.altitude_ceiling_m:
                    raise ValueError(
                        f"mission {self.mission_id}: altitude {alt:g} m is outside 0.."
                        f"{self.limits.altitude_ceiling_m:g} m (the legal ceiling)"
                    )

    def drops(self) -> list[DropLeg]:
        """The drop legs, in flying order."""
        return [leg for leg in self.legs if isinstance(leg, DropLeg)]

    def drop(self, drop_id: str) -> DropLeg | None:
        """The drop leg named `drop_id`, or None."""
        return next((d for d in self.drops() if d.drop_id == drop_id), None)

    def points(self) -> Iterator[tuple[float, float, float]]:
        """Every (lat, lon, alt_m) the plan flies to, for limit checks against home."""
        for leg in self.legs:
            if isinstance(leg, TransitLeg):
                for wp in leg.waypoints:
                    yield wp.lat, wp.lon, wp.alt_m
            elif isinstance(leg, DropLeg):
                yield leg.lat, leg.lon, leg.cruise_alt_m
                yield leg.lat, leg.lon, leg.handover_alt_m

    def farthest_from(self, lat: float, lon: float) -> float:
        """The largest horizontal distance of any point of the plan from (lat, lon)."""
        return max((distance_m(lat, lon, p[0], p[1]) for p in self.points()), default=0.0)

    def highest_m(self) -> float:
        """The highest altitude the plan flies at."""
        alts = [alt for leg in self.legs for alt in _altitudes(leg)]
        return max(alts, default=0.0)

    def as_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data (what the journal keeps for a resume)."""
        data = asdict(self)
        data["legs"] = [{"leg": type(leg).__name__, **asdict(leg)} for leg in self.legs]
        return data


def _altitudes(leg: Leg) -> list[float]:
    if isinstance(leg, TakeoffLeg):
        return [leg.alt_m]
    if isinstance(leg, TransitLeg):
        return [wp.alt_m for wp in leg.waypoints]
    if isinstance(leg, DropLeg):
        return [leg.handover_alt_m, leg.cruise_alt_m]
    return []


def limits_from_config(flight: FlightConfig) -> Limits:
    """The mission limits `[flight]` configures."""
    return Limits(
        arrival_radius_m=flight.arrival_radius_m,
        release_hold_s=flight.release_hold_s,
        min_battery_pct=flight.min_battery_pct,
        preflight_timeout_s=flight.preflight_timeout_s,
        phase_timeout_s=flight.phase_timeout_s,
        link_loss_grace_s=flight.link_loss_grace_s,
        max_hold_s=flight.max_hold_s,
        no_progress_s=flight.no_progress_s,
        camera_max_age_s=flight.camera_max_age_s,
        altitude_ceiling_m=flight.altitude_ceiling_m,
        recipient_timeout_s=flight.recipient_timeout_s,
    )


def checks_from_config(preflight: PreflightConfig) -> PreflightChecks:
    """The readiness checks `[preflight]` configures."""
    return PreflightChecks(
        companion_gps=preflight.companion_gps,
        uplink=preflight.uplink,
        max_wind_mps=preflight.max_wind_mps,
        min_satellites=preflight.min_satellites,
        max_hdop=preflight.max_hdop,
        max_fix_age_s=preflight.max_fix_age_s,
    )


def speeds_from_config(flight: FlightConfig) -> Speeds:
    """The speeds `[flight]` configures."""
    return Speeds(
        cruise_mps=flight.cruise_speed_mps,
        climb_mps=flight.climb_rate_mps,
        descent_mps=flight.descent_rate_mps,
        land_mps=flight.land_speed_mps,
    )


def delivery_plan(
    mission_id: str,
    drop: tuple[float, float],
    flight: FlightConfig,
    *,
    camera_required: bool = False,
    recipient_check: bool = False,
) -> MissionPlan:
    """One parcel to one drop point: take off, fly there, hand over, fly home, land. With
    `recipient_check` (an order that names its recipient) the parcel is released only after
    the recipient has been cleared (`HandoverStep.VERIFY_RECIPIENT`)."""
    lat, lon = drop
    if not (math.isfinite(lat) and math.isfinite(lon)):
        raise ValueError(f"mission {mission_id}: drop ({lat}, {lon}) is not a position")
    return MissionPlan(
        mission_id=mission_id,
        legs=(
            TakeoffLeg(flight.cruise_alt_m),
            TransitLeg((Waypoint(lat, lon, flight.cruise_alt_m),)),
            DropLeg(
                mission_id,
                lat,
                lon,
                flight.handover_alt_m,
                flight.cruise_alt_m,
                RECIPIENT_HANDOVER if recipient_check else DEFAULT_HANDOVER,
            ),
            ReturnLeg(),
            LandLeg(),
        ),
        speeds=speeds_from_config(flight),
        limits=limits_from_config(flight),
        camera_required=camera_required,
    )
