"""The built-in vehicle's emulation of ArduPilot's Dijkstra path planner (OA_TYPE 2): the
planner's geometry on its own, then the vehicle stepped directly (no link, as fast as the CPU
allows) flying RTL, AUTO and GUIDED legs around an exclusion polygon, refusing to arm after
OA_TYPE changed without a reboot, and holding with ArduPilot's error text when no path
exists. The geometry is checked against shapely, which the planner does not use."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import LineString, Point, Polygon

from sim.vehicle import DEFAULT_HOME, SHIPPED_PARAM_FILES
from sim.vehicle.copter import Copter
from sim.vehicle.dialect import mavlink
from sim.vehicle.geo import offset_latlon
from sim.vehicle.modes import Mode
from sim.vehicle.oa_dijkstra import (
    NO_PATH,
    OVERLAPPING_POINTS,
    TOO_MANY_POINTS,
    DijkstraPlanner,
    FenceShapes,
    PlannerError,
)
from sim.vehicle.params import ParamTable

C = mavlink
NE = tuple[float, float]
#: An 80 m square no-fly zone centred 150 m north of home (the SITL experiment's).
ZONE: tuple[NE, ...] = ((110.0, -40.0), (110.0, 40.0), (190.0, 40.0), (190.0, -40.0))
ZONE_XY = Polygon(ZONE)


def rounded(points: Iterable[NE]) -> list[NE]:
    return sorted((round(n, 6), round(e, 6)) for n, e in points)


# ---- the planner alone ----------------------------------------------------------------------
def test_nodes_are_the_corners_moved_out_along_their_bisectors() -> None:
    planner = DijkstraPlanner(FenceShapes(exclusion_polygons=(ZONE,)), 10.0)
    d = 10.0 / math.sqrt(2)
    assert rounded(planner.points) == rounded(
        [(110 - d, -40 - d), (110 - d, 40 + d), (190 + d, 40 + d), (190 + d, -40 - d)]
    )
    path = planner.shortest_path((300.0, 0.0), (0.0, 0.0))
    assert path[0] == (300.0, 0.0) and path[-1] == (0.0, 0.0)
    assert [p[1] for p in path[1:-1]] in ([-40 - d] * 2, [40 + d] * 2)  # one side, two corners
    assert planner.shortest_path((300.0, 100.0), (0.0, 100.0)) == [(300.0, 100.0), (0.0, 100.0)]


def test_a_convex_inclusion_polygon_gives_no_nodes_and_a_reflex_corner_one() -> None:
    square = ((-500.0, -500.0), (-500.0, 500.0), (500.0, 500.0), (500.0, -500.0))
    assert DijkstraPlanner(FenceShapes(inclusion_polygons=(square,)), 10.0).points == ()
    # an L-shaped operating area: only its inner (reflex) corner at (0, 0) makes a node
    ell = ((-500.0, -500.0), (-500.0, 0.0), (0.0, 0.0), (0.0, 500.0), (500.0, 500.0))
    ell += ((500.0, -500.0),)
    planner = DijkstraPlanner(FenceShapes(inclusion_polygons=(ell,)), 10.0)
    d = 10.0 / math.sqrt(2)
    assert rounded(planner.points) == rounded([(d, -d)])
    path = planner.shortest_path((-200.0, -300.0), (200.0, 300.0))
    assert rounded(path[1:2]) == rounded([(d, -d)])  # around the corner, not out of the area


def test_an_exclusion_circle_becomes_a_hexagon_clear_of_the_margin() -> None:
    planner = DijkstraPlanner(FenceShapes(exclusion_circles=((0.0, 300.0, 25.0),)), 10.0)
    assert len(planner.points) == 6
    for a, b in zip(planner.points, planner.points[1:] + planner.points[:1], strict=True):
        assert LineString([a, b]).distance(Point(0.0, 300.0)) == pytest.approx(35.0)
    path = planner.shortest_path((0.0, 200.0), (0.0, 400.0))
    assert len(path) == 3 and Point(0.0, 300.0).distance(LineString(path)) > 25.0


def test_what_the_planner_cannot_do_it_says_in_ardupilots_words() -> None:
    planner = DijkstraPlanner(FenceShapes(exclusion_polygons=(ZONE,)), 10.0)
    with pytest.raises(PlannerError, match=NO_PATH):
        planner.shortest_path((150.0, 0.0), (0.0, 0.0))  # inside the zone: every way out crosses
    repeated = (ZONE[0], ZONE[0], *ZONE[1:])
    with pytest.raises(PlannerError, match=OVERLAPPING_POINTS):
        DijkstraPlanner(FenceShapes(exclusion_polygons=(repeated,)), 10.0)
    circles = tuple((0.0, 100.0 * k, 5.0) for k in range(43))  # 43 * 6 = 258 nodes >= 255
    with pytest.raises(PlannerError, match=TOO_MANY_POINTS):
        DijkstraPlanner(FenceShapes(exclusion_circles=circles), 5.0)


BOXES = st.lists(
    st.tuples(st.floats(-300, 300), st.floats(-300, 300), st.floats(5, 80), st.floats(5, 80)).map(
        lambda b: (
            (b[0], b[1]),
            (b[0], b[1] + b[3]),
            (b[0] + b[2], b[1] + b[3]),
            (b[0] + b[2], b[1]),
        )
    ),
    min_size=1,
    max_size=5,
)
POINTS = st.tuples(st.floats(-400, 400), st.floats(-400, 400))


@settings(max_examples=150, deadline=None)
@given(BOXES, POINTS, POINTS, st.floats(0.1, 30))  # OA_MARGIN_MAX: 0.1 to 100
def test_every_path_found_keeps_out_of_every_zone(
    boxes: list[tuple[NE, ...]], start: NE, goal: NE, margin: float
) -> None:
    zones = [Polygon(b) for b in boxes]
    if any(z.intersects(Point(p)) for z in zones for p in (start, goal)):
        return  # from or to inside a zone: no path (tested above)
    planner = DijkstraPlanner(FenceShapes(exclusion_polygons=tuple(boxes)), margin)
    try:
        path = planner.shortest_path(start, goal)
    except PlannerError:
        return
    assert path[0] == start and path[-1] == goal
    for a, b in itertools.pairwise(path):
        leg = LineString([a, b])
        assert not any(leg.intersects(z) for z in zones), (a, b)
    straight = LineString([start, goal])
    # A straight line clear of every zone is flown as it is; one that only grazes a corner
    # or an edge (within float rounding, as hypothesis finds) may be routed around instead.
    if all(straight.distance(z) > 1e-6 for z in zones):
        assert path == [start, goal]


# ---- the vehicle, stepped directly ------------------------------------------------------------
class Flight:
    """A Copter with SkyCourier's parameters (plus `params`), commanded through its own
    message handling, stepped 20 ms at a time; `track` holds every position flown."""

    def __init__(self, **params: float) -> None:
        self.c = Copter(DEFAULT_HOME, ParamTable(params, SHIPPED_PARAM_FILES), ready_delay_s=0.0)
        self.c.client_connected(0)
        self.mav = C.MAVLink(None, srcSystem=1, srcComponent=191)
        self.track: list[tuple[float, float, float]] = []
        self.targets: set[NE] = set()  # the waypoints the mode reported (Mode::get_wp)
        self.texts: list[str] = []

    def send(self, msg: C.MAVLink_message) -> list[C.MAVLink_message]:
        """Hand `msg` to the vehicle as if it came over the link; what it answered."""
        decoded = self.mav.decode(bytearray(msg.pack(self.mav)))
        self.c.handle(decoded, 0)
        return self.drain()

    def drain(self) -> list[C.MAVLink_message]:
        out = [m for m, _ in self.c.out.drain()]
        self.texts += [m.text for m in out if m.get_type() == "STATUSTEXT"]
        return out

    def command(self, command: int, *params: float) -> int:
        p = [*params, 0, 0, 0, 0, 0, 0, 0][:7]
        msg = C.MAVLink_command_long_message(1, 1, command, 0, *p)
        return next(m.result for m in self.send(msg) if m.get_type() == "COMMAND_ACK")

    def goto(self, north: float, east: float, alt: float) -> int:
        lat, lon = offset_latlon(self.c.origin[0], self.c.origin[1], north, east)
        msg = C.MAVLink_command_int_message(
            1, 1, C.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT, C.MAV_CMD_DO_REPOSITION, 0, 0,
            -1, 0, 0, 0, lat, lon, alt,
        )  # fmt: skip
        return next(m.result for m in self.send(msg) if m.get_type() == "COMMAND_ACK")

    def upload(self, mission_type: int, items: list[tuple[int, float, NE, float]]) -> None:
        """Upload (command, param1, (north, east), alt) items through the mission protocol."""
        count = C.MAVLink_mission_count_message(1, 1, len(items), mission_type)
        assert not [m for m in self.send(count) if m.get_type() == "MISSION_ACK"]
        answers: list[C.MAVLink_message] = []
        for seq, (command, param1, (north, east), alt) in enumerate(items):
            lat, lon = offset_latlon(self.c.origin[0], self.c.origin[1], north, east)
            item = C.MAVLink_mission_item_int_message(
                1, 1, seq, C.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT, command, 0, 1, param1, 0, 0, 0,
                lat, lon, alt, mission_type,
            )  # fmt: skip
            answers = self.send(item)
        acks = [m for m in answers if m.get_type() == "MISSION_ACK"]
        assert [a.type for a in acks] == [C.MAV_MISSION_ACCEPTED], self.texts

    def fence(self, *polygons: tuple[NE, ...], inclusion: bool = False) -> None:
        vertex = (
            C.MAV_CMD_NAV_FENCE_POLYGON_VERTEX_INCLUSION
            if inclusion
            else C.MAV_CMD_NAV_FENCE_POLYGON_VERTEX_EXCLUSION
        )
        self.upload(
            C.MAV_MISSION_TYPE_FENCE,
            [(vertex, len(p), v, 0.0) for p in polygons for v in p],
        )

    def run(self, until: Callable[[Copter], bool], limit_s: float) -> None:
        end = self.c.time + limit_s
        while not until(self.c):
            self.c.step(0.02)
            body = self.c.body
            self.track.append((body.north, body.east, body.ground_speed))
            target = self.c.controller.target()
            if target is not None:
                self.targets.add((round(target[0], 1), round(target[1], 1)))
            self.drain()
            assert self.c.time < end, f"not done in {limit_s} s: {self.texts[-5:]}"

    def take_off(self, alt: float = 30.0) -> None:
        assert self.c.set_mode(Mode.GUIDED) and self.c.arm(force=False), self.texts
        assert self.command(C.MAV_CMD_NAV_TAKEOFF, 0, 0, 0, 0, 0, 0, alt) == 0
        self.run(lambda c: c.body.alt > alt - 0.1, 60)

    def fly_to(self, north: float, east: float, alt: float = 30.0) -> None:
        assert self.goto(north, east, alt) == C.MAV_RESULT_ACCEPTED
        self.run(lambda c: math.hypot(c.body.north - north, c.body.east - east) < 1.0, 120)

    def inside(self, zone: Polygon = ZONE_XY) -> int:
        return sum(zone.contains(Point(n, e)) for n, e, _ in self.track)

    def clearance(self, zone: Polygon = ZONE_XY) -> float:
        return min(zone.exterior.distance(Point(n, e)) for n, e, _ in self.track)


def _out_beside_the_zone(flight: Flight) -> None:
    """Take off and fly to 300 m north by a way that keeps 60 m east of the zone."""
    flight.take_off()
    flight.fly_to(0.0, 100.0)
    flight.fly_to(300.0, 100.0)
    flight.fly_to(300.0, 0.0)
    assert flight.inside() == 0
    flight.track.clear()


def test_rtl_flies_home_around_the_zone_stopping_at_each_corner() -> None:
    flight = Flight(OA_TYPE=2)
    flight.fence(ZONE)
    _out_beside_the_zone(flight)
    assert flight.c.set_mode(Mode.RTL)
    flight.run(lambda c: not c.armed, 400)
    assert flight.inside() == 0
    d = 10.0 / math.sqrt(2)
    west = {(round(190 + d, 1), round(-40 - d, 1)), (round(110 - d, 1), round(-40 - d, 1))}
    east = {(n, -e) for n, e in west}
    corners = west if west <= flight.targets else east
    assert corners <= flight.targets  # RTL reports the planner's point as its waypoint
    # it comes to rest at each corner (OA_OPTIONS 1: no fast waypoints)
    for corner in corners:
        near = [s for n, e, s in flight.track if math.dist((n, e), corner) < 2.0]
        assert near and min(near) < 0.5, corner
    assert flight.clearance() == pytest.approx(d, abs=0.5)
    assert math.hypot(flight.c.body.north, flight.c.body.east) < 1.0 and flight.c.landed


def test_with_oa_type_0_the_same_return_crosses_the_zone() -> None:
    flight = Flight(OA_TYPE=0, FENCE_ACTION=0)  # the fence on, its breach only reported
    flight.fence(ZONE)
    _out_beside_the_zone(flight)
    assert flight.c.set_mode(Mode.RTL)
    flight.run(lambda c: not c.armed, 400)
    assert flight.inside() > 100  # straight through, 80 m at 10 m/s


def test_auto_waypoints_are_routed_and_stop_where_the_next_leg_meets_the_fence() -> None:
    flight = Flight(OA_TYPE=2)
    flight.fence(ZONE)
    wp, takeoff = C.MAV_CMD_NAV_WAYPOINT, C.MAV_CMD_NAV_TAKEOFF
    flight.upload(
        C.MAV_MISSION_TYPE_MISSION,
        [
            (wp, 0, (0.0, 0.0), 0.0),  # home
            (takeoff, 0, (0.0, 0.0), 30.0),
            (wp, 0, (300.0, 0.0), 30.0),  # beyond the zone: routed around it
            (wp, 0, (300.0, 100.0), 30.0),  # pass-through, next leg clear
            (wp, 0, (0.0, 0.0), 30.0),  # straight back would cut a corner: routed
        ],
    )
    assert flight.c.set_mode(Mode.GUIDED) and flight.c.arm(force=False)
    assert flight.c.set_mode(Mode.AUTO)
    assert flight.command(C.MAV_CMD_MISSION_START) == C.MAV_RESULT_ACCEPTED
    flight.run(lambda c: c.mission_complete, 300)
    assert flight.inside() == 0
    assert flight.clearance() > 5.0

    def slowest_near(point: NE) -> float:
        return min(s for n, e, s in flight.track if math.dist((n, e), point) < 2.0)

    assert slowest_near((300.0, 0.0)) > 3.0  # passed at speed: the way on is clear
    assert slowest_near((300.0, 100.0)) < 0.5  # stopped: the way on cuts the zone's corner


def test_guided_goes_around_only_with_the_waypoint_navigator() -> None:
    routed = Flight(OA_TYPE=2, GUID_OPTIONS=64)
    routed.fence(ZONE)
    routed.take_off()
    routed.fly_to(300.0, 0.0)
    assert routed.inside() == 0 and routed.c.fence_breach_count == 0
    assert routed.c.mode == Mode.GUIDED
    # GUID_OPTIONS 0 (ArduCopter's default, and SITL's): the position controller flies
    # straight, breaches, and the breach's RTL finds no way out of the zone
    straight = Flight(OA_TYPE=2)
    straight.fence(ZONE)
    straight.take_off()
    assert straight.goto(300.0, 0.0, 30.0) == C.MAV_RESULT_ACCEPTED
    straight.run(lambda c: "Dijkstra: could not find path" in straight.texts, 60)
    assert straight.c.mode == Mode.RTL and "Polygon fence breached" in straight.texts
    straight.texts.clear()
    start = straight.c.time
    straight.run(lambda c: c.time - start > 10.0, 30)  # braking to its stopping point
    held = (straight.c.body.north, straight.c.body.east)
    straight.run(lambda c: c.time - start > 21.0, 30)
    assert straight.texts.count("Dijkstra: could not find path") == 4  # every 5 s
    assert ZONE_XY.contains(Point(*held))
    assert math.dist(held, (straight.c.body.north, straight.c.body.east)) < 0.1  # holding
    assert straight.c.mode == Mode.RTL and straight.c.armed


def test_outside_the_operating_area_the_breach_return_finds_no_way_back() -> None:
    # as on SITL: every way from outside the inclusion polygon crosses its edge
    flight = Flight(OA_TYPE=2)
    flight.take_off(20.0)
    flight.fly_to(150.0, 0.0, 20.0)
    area = ((-80.0, -80.0), (-80.0, 80.0), (80.0, 80.0), (80.0, -80.0))
    flight.fence(area, inclusion=True)
    flight.run(lambda c: "Dijkstra: could not find path" in flight.texts, 30)
    assert flight.c.mode == Mode.RTL and "Polygon fence breached" in flight.texts
    start = flight.c.time
    flight.run(lambda c: c.time - start > 10.0, 30)
    held = (flight.c.body.north, flight.c.body.east)
    flight.run(lambda c: c.time - start > 20.0, 30)
    assert math.dist(held, (flight.c.body.north, flight.c.body.east)) < 0.1
    assert math.dist(held, (150.0, 0.0)) < 5.0 and flight.c.armed  # where it was


def test_oa_type_takes_effect_at_boot_and_off_at_once() -> None:
    booted_off = Flight(OA_TYPE=0)
    booted_off.c.params.set("OA_TYPE", 2)
    assert not booted_off.c.arm(force=False)
    booted_off.drain()
    assert "Arm: Dijkstra OA requires reboot" in booted_off.texts
    booted_off.c.params.set("ARMING_CHECK", 0)  # an unchecked arm flies without the planner
    assert booted_off.c.arm(force=False)
    booted_on = Flight(OA_TYPE=2)
    assert booted_on.c.arm(force=False)
    assert booted_on.command(C.MAV_CMD_COMPONENT_ARM_DISARM, 0) == C.MAV_RESULT_ACCEPTED
    booted_on.c.params.set("OA_TYPE", 1)
    assert not booted_on.c.arm(force=False)
    booted_on.drain()
    assert "Arm: BendyRuler OA requires reboot" in booted_on.texts
    # OA_TYPE 0 switches the planner off without a reboot
    flight = Flight(OA_TYPE=2, FENCE_ACTION=0)
    flight.fence(ZONE)
    _out_beside_the_zone(flight)
    flight.c.params.set("OA_TYPE", 0)
    assert flight.c.set_mode(Mode.RTL)
    flight.run(lambda c: not c.armed, 400)
    assert flight.inside() > 100
