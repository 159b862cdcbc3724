"""Flying around the fence: when the planner is asked, and how its answer is flown
(AC_Avoidance/AP_OAPathPlanner.cpp, AC_WPNav/AC_WPNav_OA.cpp).

`PathPlanner` is the vehicle's one AP_OAPathPlanner. OA_TYPE is read at boot: ArduPilot
creates the planner it names then, so a type set later only takes effect after a reboot, and
until then arming is refused ("Dijkstra OA requires reboot"). The built-in vehicle has no
MAV_CMD_PREFLIGHT_REBOOT_SHUTDOWN, so here that means a new vehicle. Setting OA_TYPE 0 turns
avoidance off at once, as in ArduPilot. BendyRuler (OA_TYPE 1, and the BendyRuler half of 3)
steers around proximity-sensor and ADS-B obstacles, which this vehicle has none of, so it never
changes a path here; OA_TYPE 2 and 3 run Dijkstra (`oa_dijkstra`) around the fence, when the
polygon fence is enabled and holds a polygon or an exclusion circle. The margin is
OA_MARGIN_MAX as it is when the planner first meets a newly loaded fence.

`AvoidingLeg` is AC_WPNav_OA for one leg flown with the waypoint navigator: AUTO's waypoint,
loiter, land and payload-place legs, RTL's return, and GUIDED position targets when
GUID_OPTIONS bit 6 (WPNavUsedForPosControl) says GUIDED uses the waypoint navigator; by
default (GUID_OPTIONS 0) ArduCopter flies GUIDED targets with the position controller alone,
straight, planner or not (checked on SITL: a goto beyond a zone breaches it). The planner
answers once a second (OA_UPDATE_MS): the destination itself (no avoidance needed), the next
point of its path (the vehicle flies there and stops, OA_OPTIONS' default having no fast
waypoints; the path moves on once the vehicle is within 2 m of the point or past it), or an
error, on which the vehicle brakes to its stopping point and holds there, the error repeated
as a STATUSTEXT every 5 s ("Dijkstra: could not find path": for instance from inside an
exclusion polygon, where every way out crosses its edge).

Simplified: ArduPilot's background thread takes up to a second for its first answer on a new
destination, the vehicle braking meanwhile (OA_PROCESSING); here the answer is there at once.
The altitude of an intermediate point is the leg's (ArduPilot interpolates it between the
leg's start and its destination).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from .dialect import mavlink
from .fence import POLYGON
from .oa_dijkstra import DijkstraPlanner, PlannerError, Point

if TYPE_CHECKING:
    from .copter import Copter

OA_UPDATE_S = 1.0  # AP_OAPathPlanner OA_UPDATE_MS
ERROR_REPORT_S = 5.0  # OA_DIJKSTRA_ERROR_REPORTING_INTERVAL_MS
NEAR_OA_WP_M = 2.0  # AP_OADijkstra::update: "near_oa_wp"
BENDYRULER, DIJKSTRA, DIJKSTRA_BENDYRULER = 1, 2, 3
#: GUID_OPTIONS bit 6: GUIDED flies position targets with the waypoint navigator.
GUIDED_USES_WPNAV = 1 << 6
#: What each OA_TYPE needs created at boot, and ArduPilot's pre-arm text when it was not.
_NEEDS = {
    BENDYRULER: ({BENDYRULER}, "BendyRuler OA requires reboot"),
    DIJKSTRA: ({DIJKSTRA}, "Dijkstra OA requires reboot"),
    DIJKSTRA_BENDYRULER: ({DIJKSTRA, BENDYRULER}, "OA requires reboot"),
}


class OaState(Enum):
    """AP_OAPathPlanner::OA_RetState."""

    NOT_REQUIRED = 0
    ERROR = 1
    SUCCESS = 2


@dataclass(frozen=True)
class Answer:
    """One planner answer: the state, the point to fly to on SUCCESS (None: the
    destination), and whether the way from the destination on to the next one is clear (else
    the vehicle stops there)."""

    state: OaState
    point: Point | None = None
    next_clear: bool = False


def _created_at_boot(oa_type: int) -> frozenset[int]:
    """AP_OAPathPlanner::init: which planners exist for the OA_TYPE at boot."""
    return frozenset(_NEEDS.get(oa_type, (set(), ""))[0])


class PathPlanner:
    """The vehicle's path planner: its boot-time type, the Dijkstra graph for the loaded
    fence, and the path to the current destination (shared by every leg, as ArduPilot's
    planner is)."""

    def __init__(self, oa_type_at_boot: int) -> None:
        self._created = _created_at_boot(oa_type_at_boot)
        self._planner: DijkstraPlanner | PlannerError | None = None
        self._destination: Point | None = None
        self._next_destination: Point | None = None
        self._path: list[Point] = []
        self._index = 0
        self._next_clear = False
        self._last_error: str | None = None
        self._last_error_time = -math.inf

    def prearm_failure(self, oa_type: int) -> str | None:
        """AP_OAPathPlanner::pre_arm_check for the current OA_TYPE."""
        needs, text = _NEEDS.get(oa_type, (set(), ""))
        return text if not needs <= self._created else None

    def fence_changed(self) -> None:
        """A new fence was stored: the graph and any path are rebuilt on the next answer."""
        self._planner = None
        self._destination = None

    def answer(
        self, c: Copter, current: Point, destination: Point, next_destination: Point | None
    ) -> Answer:
        """What AP_OAPathPlanner's thread answers for this request (its mission_avoidance)."""
        oa_type = int(c.params["OA_TYPE"])
        if oa_type not in _NEEDS or not self._created:
            return Answer(OaState.NOT_REQUIRED, next_clear=True)
        if not _NEEDS[oa_type][0] <= self._created:
            return Answer(OaState.ERROR)  # the thread skips a planner it lacks: requests time out
        if oa_type == BENDYRULER:
            return Answer(OaState.NOT_REQUIRED, next_clear=True)  # no obstacles to steer around
        return self._dijkstra(c, current, destination, next_destination)

    def _dijkstra(
        self, c: Copter, current: Point, destination: Point, next_destination: Point | None
    ) -> Answer:
        """AP_OADijkstra::update."""
        shapes = c.fence.shapes()
        if not shapes.has_avoidable_shapes or not c.fence_enabled_types() & POLYGON:
            return Answer(OaState.NOT_REQUIRED, next_clear=True)
        if _same_latlon(c, current, destination):
            return Answer(OaState.NOT_REQUIRED)
        if self._planner is None:
            try:
                self._planner = DijkstraPlanner(shapes, c.params["OA_MARGIN_MAX"])
            except PlannerError as exc:
                self._planner = exc  # kept until the fence changes, as ArduPilot does
        if isinstance(self._planner, PlannerError):
            return self._error(c, str(self._planner))
        planner = self._planner
        if destination != self._destination or next_destination != self._next_destination:
            self._destination, self._next_destination = destination, next_destination
            try:
                self._path = planner.shortest_path(current, destination)
            except PlannerError as exc:
                self._destination = None  # try again on the next answer
                return self._error(c, str(exc))
            self._index = 1
            self._next_clear = next_destination is not None and not planner.intersects_fence(
                destination, next_destination
            )
        if self._index >= len(self._path) - 1:
            return Answer(OaState.NOT_REQUIRED, next_clear=self._next_clear)
        point = self._path[self._index]
        origin = self._path[self._index - 1]
        if math.dist(current, point) <= NEAR_OA_WP_M or _past(current, origin, point):
            self._index += 1
        return Answer(OaState.SUCCESS, point, self._next_clear)

    def _error(self, c: Copter, message: str) -> Answer:
        """report_error: a new error at once, the same one again every ERROR_REPORT_S."""
        if message != self._last_error or c.time - self._last_error_time > ERROR_REPORT_S:
            c.out.text(mavlink.MAV_SEVERITY_CRITICAL, f"Dijkstra: {message}")
            self._last_error, self._last_error_time = message, c.time
        return Answer(OaState.ERROR)


def _same_latlon(c: Copter, a: Point, b: Point) -> bool:
    """Location::same_latlon_as, on the 1e-7 degree integers."""
    return c.latlon_of(*a) == c.latlon_of(*b)


def _past(current: Point, origin: Point, point: Point) -> bool:
    """Location::past_interval_finish_line: beyond the line through `point` square to the
    way from `origin`."""
    leg = (point[0] - origin[0], point[1] - origin[1])
    length_sq = leg[0] ** 2 + leg[1] ** 2
    if length_sq == 0.0:
        return True
    along = (current[0] - origin[0]) * leg[0] + (current[1] - origin[1]) * leg[1]
    return along / length_sq >= 1.0


class AvoidingLeg:
    """One waypoint-navigator leg to `destination` (north, east) with the planner consulted:
    `point(c)` is where to fly now, `active` whether that is not simply the destination."""

    def __init__(self, destination: Point, next_destination: Point | None = None) -> None:
        self.destination = destination
        self.next_destination = next_destination
        self.state = OaState.NOT_REQUIRED
        self._point = destination
        self._next_clear = True
        self._next_answer = -math.inf

    @property
    def active(self) -> bool:
        """Flying to a planner point or holding on an error (AC_WPNav_OA's _oa_state)."""
        return self.state != OaState.NOT_REQUIRED

    @property
    def current(self) -> Point:
        """The point flown to since the last answer."""
        return self._point

    @property
    def next_clear(self) -> bool:
        """The vehicle may carry its speed through the destination to the next one."""
        return self._next_clear and not self.active

    def point(self, c: Copter) -> Point:
        """The horizontal target for this control step (AC_WPNav_OA::update_wpnav)."""
        if c.time >= self._next_answer:
            self._next_answer = c.time + OA_UPDATE_S
            current = (c.body.north, c.body.east)
            answer = c.path_planner.answer(c, current, self.destination, self.next_destination)
            if answer.state != OaState.ERROR:
                self._point = answer.point or self.destination
            elif self.state != OaState.ERROR:
                north, east, _ = c.body.stopping_point(c.limits())
                self._point = (north, east)
            self.state = answer.state
            self._next_clear = answer.next_clear
        return self._point
