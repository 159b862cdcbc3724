"""ArduPilot's Dijkstra path planner around the fence (AC_Avoidance/AP_OADijkstra.cpp), as
pure geometry: fence shapes in, the shortest path between two points out.

How ArduPilot builds it, and so how it is built here:
- Path nodes are the fence's vertices moved by the margin (OA_MARGIN_MAX): each polygon
  vertex along the bisector of its two edges, to whichever side lies outside an exclusion
  polygon (inside an inclusion polygon). A vertex whose moved point makes an angle under 90°
  with its first edge (a reflex corner) gives no node. Each exclusion circle gives the six
  corners of a hexagon drawn around the circle grown by the margin. Inclusion circles give
  no nodes.
- Two points see each other when the segment between them meets no fence: it crosses no edge
  of an inclusion or exclusion polygon as stored (not grown by the margin), comes no nearer
  than the radius to an exclusion circle's centre, and has both ends inside every inclusion
  circle. So the margin only places the nodes; a straight leg that misses the fence itself
  is flown straight, however close it passes.
- Dijkstra over the visibility graph of the nodes plus the start and the destination gives
  the path. Where none exists ("could not find path"), or the nodes cannot be built
  ("overlapping polygon points", "overlapping polygon lines", "too many fence points"),
  `PlannerError` carries ArduPilot's message for it.

Positions are (north, east) metres from home, as the vehicle flies (ArduPilot: NE cm from the
EKF origin). Nothing here knows about time, modes or MAVLink; `avoidance` runs it.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

from .geo import point_in_polygon

Point = tuple[float, float]
Circle = tuple[float, float, float]  # north, east, radius (m)

#: OA_DIJKSTRA_POLYGON_SHORTPATH_NOTSET_IDX: node indices are uint8, 255 is "none".
MAX_POINTS = 255
#: Corners of the hexagon around an exclusion circle, degrees from north
#: (create_exclusion_circle_with_margin's unit_offsets).
_HEXAGON_DEG = (30, 90, 150, 210, 270, 330)

NO_PATH = "could not find path"
OVERLAPPING_POINTS = "overlapping polygon points"
OVERLAPPING_LINES = "overlapping polygon lines"
TOO_MANY_POINTS = "too many fence points"


class PlannerError(Exception):
    """The planner cannot give a path; the message is ArduPilot's ("Dijkstra: <message>")."""


@dataclass(frozen=True)
class FenceShapes:
    """The uploaded fence in the local frame (polygons unclosed, as ArduPilot stores them)."""

    inclusion_polygons: tuple[tuple[Point, ...], ...] = ()
    exclusion_polygons: tuple[tuple[Point, ...], ...] = ()
    inclusion_circles: tuple[Circle, ...] = ()
    exclusion_circles: tuple[Circle, ...] = ()

    @property
    def has_avoidable_shapes(self) -> bool:
        """AP_OADijkstra::some_fences_enabled's count test: an inclusion or exclusion polygon
        or an exclusion circle (an inclusion circle alone is not enough)."""
        return bool(self.inclusion_polygons or self.exclusion_polygons or self.exclusion_circles)


def _cross(a: Point, b: Point) -> float:
    return a[0] * b[1] - a[1] * b[0]


def segments_intersect(p1: Point, p2: Point, q1: Point, q2: Point) -> bool:
    """Vector2f::segment_intersection: touching counts, parallel or collinear never does."""
    r = (p2[0] - p1[0], p2[1] - p1[1])
    s = (q2[0] - q1[0], q2[1] - q1[1])
    denom = _cross(r, s)
    if denom == 0.0:
        return False
    qp = (q1[0] - p1[0], q1[1] - p1[1])
    t = _cross(qp, s) / denom
    u = _cross(qp, r) / denom
    return 0.0 <= t <= 1.0 and 0.0 <= u <= 1.0


def _polygon_intersects(polygon: Sequence[Point], a: Point, b: Point) -> bool:
    """Polygon_intersects: the segment crosses or touches an edge of the polygon."""
    lo_n, hi_n = min(a[0], b[0]), max(a[0], b[0])
    lo_e, hi_e = min(a[1], b[1]), max(a[1], b[1])
    count = len(polygon)
    for i in range(count):
        v1, v2 = polygon[i], polygon[(i + 1) % count]
        # the same bounding-box shortcuts as ArduPilot (they never change the answer)
        if (v1[0] > hi_n and v2[0] > hi_n) or (v1[0] < lo_n and v2[0] < lo_n):
            continue
        if (v1[1] > hi_e and v2[1] > hi_e) or (v1[1] < lo_e and v2[1] < lo_e):
            continue
        if segments_intersect(v1, v2, a, b):
            return True
    return False


def _distance_to_segment(p: Point, a: Point, b: Point) -> float:
    """Vector2f::closest_distance_between_line_and_point."""
    ab = (b[0] - a[0], b[1] - a[1])
    length_sq = ab[0] ** 2 + ab[1] ** 2
    if length_sq == 0.0:
        return math.dist(p, a)
    t = ((p[0] - a[0]) * ab[0] + (p[1] - a[1]) * ab[1]) / length_sq
    t = max(0.0, min(1.0, t))
    return math.dist(p, (a[0] + ab[0] * t, a[1] + ab[1] * t))


def _unit(v: Point) -> Point:
    length = math.hypot(*v)
    return (v[0] / length, v[1] / length)


def _wrap_pi(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


def _margin_points(polygon: Sequence[Point], margin: float, inclusion: bool) -> list[Point]:
    """create_inclusion_polygon_with_margin / create_exclusion_polygon_with_margin."""
    points: list[Point] = []
    count = len(polygon)
    for j, vertex in enumerate(polygon):
        before = polygon[j - 1]
        after = polygon[(j + 1) % count]
        to_before = (before[0] - vertex[0], before[1] - vertex[1])
        to_after = (after[0] - vertex[0], after[1] - vertex[1])
        if to_before == (0.0, 0.0) or to_after == (0.0, 0.0) or to_before == to_after:
            raise PlannerError(OVERLAPPING_POINTS)
        unit_before, unit_after = _unit(to_before), _unit(to_after)
        bisector = (unit_before[0] + unit_after[0], unit_before[1] + unit_after[1])
        if bisector == (0.0, 0.0):
            # A vertex on a straight edge: ArduPilot normalises a zero vector to a NaN point,
            # which Polygon_outside calls outside. An inclusion polygon fails on it; for an
            # exclusion polygon it becomes a node no distance can reach, i.e. none.
            if inclusion:
                raise PlannerError(OVERLAPPING_LINES)
            continue
        step = _unit(bisector)
        step = (step[0] * margin, step[1] * margin)
        for _ in range(2):
            moved = (vertex[0] + step[0], vertex[1] + step[1])
            if point_in_polygon(moved, list(polygon)) == inclusion:
                break
            step = (-step[0], -step[1])
        else:
            raise PlannerError(OVERLAPPING_LINES)
        angle = math.atan2(step[1], step[0]) - math.atan2(unit_before[1], unit_before[0])
        if abs(_wrap_pi(angle)) < math.pi / 2:
            continue  # "don't add points in corners"
        points.append(moved)
    return points


def _circle_points(circle: Circle, margin: float) -> list[Point]:
    """create_exclusion_circle_with_margin: a hexagon whose sides clear the grown circle."""
    north, east, radius = circle
    scale = (radius + margin) / math.cos(math.radians(180.0 / len(_HEXAGON_DEG)))
    return [
        (north + math.cos(math.radians(a)) * scale, east + math.sin(math.radians(a)) * scale)
        for a in _HEXAGON_DEG
    ]


class DijkstraPlanner:
    """The nodes and visibility graph for one fence and margin (rebuilt when either changes,
    as ArduPilot rebuilds them when the fence is reloaded)."""

    def __init__(self, fence: FenceShapes, margin_m: float) -> None:
        margin = max(margin_m, 0.0)
        self.fence = fence
        points: list[Point] = []
        for polygon in fence.inclusion_polygons:
            points += _margin_points(polygon, margin, inclusion=True)
        for polygon in fence.exclusion_polygons:
            points += _margin_points(polygon, margin, inclusion=False)
        for circle in fence.exclusion_circles:
            points += _circle_points(circle, margin)
        if len(points) >= MAX_POINTS:
            raise PlannerError(TOO_MANY_POINTS)
        self.points: tuple[Point, ...] = tuple(points)
        self._edges: list[list[tuple[int, float]]] = [[] for _ in points]
        for i, a in enumerate(points):
            for j in range(i + 1, len(points)):
                b = points[j]
                if not self.intersects_fence(a, b):
                    length = math.dist(a, b)
                    self._edges[i].append((j, length))
                    self._edges[j].append((i, length))

    def intersects_fence(self, a: Point, b: Point) -> bool:
        """AP_OADijkstra::intersects_fence: the segment from `a` to `b` meets the fence."""
        fence = self.fence
        for polygon in fence.inclusion_polygons + fence.exclusion_polygons:
            if _polygon_intersects(polygon, a, b):
                return True
        for north, east, radius in fence.inclusion_circles:
            if math.dist(a, (north, east)) > radius or math.dist(b, (north, east)) > radius:
                return True
        return any(
            _distance_to_segment((north, east), a, b) <= radius
            for north, east, radius in fence.exclusion_circles
        )

    def shortest_path(self, start: Point, destination: Point) -> list[Point]:
        """calc_shortest_path: the points from `start` to `destination`, both included (just
        the two when the straight segment is clear). PlannerError(NO_PATH) when there is
        none."""
        count = len(self.points)
        source, target = count, count + 1
        visible_from_target = {
            i for i, p in enumerate(self.points) if not self.intersects_fence(destination, p)
        }
        dist = [math.inf] * (count + 2)
        previous: list[int | None] = [None] * (count + 2)
        dist[source] = 0.0
        queue: list[tuple[float, int]] = [(0.0, source)]
        done: set[int] = set()
        while queue:
            d, node = heapq.heappop(queue)
            if node in done:
                continue
            done.add(node)
            if node == target:
                break
            if node == source:
                neighbours = [
                    (i, math.dist(start, p))
                    for i, p in enumerate(self.points)
                    if not self.intersects_fence(start, p)
                ]
                if not self.intersects_fence(start, destination):
                    neighbours.append((target, math.dist(start, destination)))
            else:
                neighbours = list(self._edges[node])
                if node in visible_from_target:
                    neighbours.append((target, math.dist(self.points[node], destination)))
            for other, length in neighbours:
                if d + length < dist[other]:
                    dist[other] = d + length
                    previous[other] = node
                    heapq.heappush(queue, (dist[other], other))
        if previous[target] is None:
            raise PlannerError(NO_PATH)
        path: list[Point] = [destination]
        node = previous[target]
        while node is not None and node != source:
            path.append(self.points[node])
            node = previous[node]
        path.append(start)
        return path[::-1]
