"""The autopilot's own limits for an airspace: the geofence, rally points and fence
parameters that hold the drone inside the operating area, out of the no-fly zones and under
the legal ceiling even when the companion is dead.

Why the geometry is changed at all: ArduPilot stores a fence in 560 bytes / 70 items on
SITL and on boards with 16 or 32 KiB of storage (`firmware_bridge.fence`), while an
operator's zones may have hundreds of vertices. Whatever is simplified is only ever made
safer: an exclusion polygon always covers its zone (grown outward), the inclusion polygon
always lies inside the operating area (shrunk inward). Each candidate is checked after
rounding to the 1e-7 degree integers that are uploaded, in the same local metric frame the
planner uses, so the check is on what the flight controller will store. Every simplification
is reported in `AutopilotLimits.notes`; a fence that cannot be made to fit is refused with a
`LimitsError` naming the zone or the area.

What ArduPilot's polygons cannot express, and what is done instead:
- a polygon fence has no altitude band: a zone whose floor is above the cruise altitude is
  one the planner lets legs pass under, so it is not fenced (a note says so; the legs' own
  ceiling check holds it);
- several inclusion polygons mean "inside all of them" to ArduPilot, so the operating area
  must be one polygon (the airspace parser already refuses a MultiPolygon), and each hole in
  it becomes an exclusion polygon.

The fence parameters: FENCE_TYPE is maximum altitude + polygon (5), without the circle
around home, because the inclusion polygon is the operating area and a circle would be a
second boundary, drawn without the airspace, that could cut legs the planner drew inside it.
FENCE_ALT_MAX is the lower of the regulatory profile's ceiling and the area's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import shapely
from shapely.geometry import MultiPolygon, Point, Polygon
from shapely.geometry.base import BaseGeometry

from companion.routing.airspace import Airspace, RegulatoryProfile
from companion.routing.frame import LocalFrame
from firmware_bridge.fence import (
    FENCE_MAX_ITEMS,
    FENCE_STORAGE_BYTES,
    RALLY_MAX_POINTS,
    AutopilotLimits,
    FenceDefinition,
    FencePolygon,
    RallyPoint,
    fence_problems,
    rally_problems,
    to_e7,
)

#: AC_Fence FENCE_TYPE bits.
FENCE_TYPE_ALT_MAX = 1
FENCE_TYPE_POLYGON = 4
#: FENCE_ACTION 1: RTL (or land when RTL is impossible).
FENCE_ACTION_RTL = 1

#: Simplification tolerances tried in turn, metres.
_TOLERANCES_M = (0.05, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


class LimitsError(ValueError):
    """The autopilot's limits cannot be built; the message names the zone, the area or the
    point and the reason."""


@dataclass
class _Shape:
    """One fence polygon being fitted: its label, the area it must cover (exclusion) or stay
    inside (inclusion), and its candidates from most to fewest vertices."""

    label: str
    inclusion: bool
    candidates: list[tuple[float, FencePolygon]]  # (tolerance m, polygon)
    chosen: int = 0

    @property
    def polygon(self) -> FencePolygon:
        return self.candidates[self.chosen][1]

    @property
    def tolerance(self) -> float:
        return self.candidates[self.chosen][0]


def build_limits(
    airspace: Airspace,
    home: tuple[float, float],
    profile: RegulatoryProfile,
    *,
    cruise_alt_m: float,
    rally_points: Sequence[tuple[float, float]] = (),
    rally_alt_m: float | None = None,
    max_items: int = FENCE_MAX_ITEMS,
    storage_bytes: int = FENCE_STORAGE_BYTES,
) -> AutopilotLimits:
    """The fence, rally points and fence parameters for flying `airspace` from `home`
    (lat, lon degrees, the depot: fence return point and first rally point).

    `cruise_alt_m` decides which zones are obstacles (see module doc); `rally_points` are
    further safe points (lat, lon) the drone may return to, at `rally_alt_m` above home
    (whole metres; default the cruise altitude). Raises `LimitsError` when the depot or a
    rally point is outside the fenced area or inside a fenced zone, when a ceiling is below
    the cruise altitude, or when the fence cannot fit the flight controller's storage."""
    lat0, lon0 = home
    frame = LocalFrame(lat0, lon0)
    ceiling = profile.ceiling_m
    if airspace.area.ceiling_m is not None:
        ceiling = min(ceiling, airspace.area.ceiling_m)
    if not (isinstance(cruise_alt_m, (int, float)) and math.isfinite(cruise_alt_m)):
        raise LimitsError(f"cruise altitude {cruise_alt_m!r} m is not a number")
    if not 0 < cruise_alt_m <= ceiling:
        raise LimitsError(
            f"cruise altitude {cruise_alt_m:g} m is not between 0 and the ceiling of "
            f"{ceiling:g} m ({profile.name}, operating area)"
        )
    alt = cruise_alt_m if rally_alt_m is None else rally_alt_m
    if not (isinstance(alt, (int, float)) and math.isfinite(alt)) or not 0 < alt <= ceiling:
        raise LimitsError(f"rally altitude {alt!r} m is not between 0 and {ceiling:g} m")
    labelled: list[tuple[str, RallyPoint, Point]] = []
    for label, (lat, lon) in [("depot", home)] + [
        (f"rally point {k}", p) for k, p in enumerate(rally_points)
    ]:
        try:
            point = RallyPoint.from_degrees(lat, lon, math.floor(alt))
        except (TypeError, ValueError) as exc:
            raise LimitsError(f"{label}: {exc}") from None
        xy = Point(frame.to_xy(point.position[0] / 1e7, point.position[1] / 1e7))
        labelled.append((label, point, xy))
    clear = [xy for _, _, xy in labelled]
    notes: list[str] = []
    area_xy = frame.project(airspace.area.footprint)
    if not isinstance(area_xy, Polygon):
        raise LimitsError("operating area: must be one polygon (ArduPilot intersects inclusions)")
    shapes = [_inclusion_shape(area_xy, frame, clear)]
    for k, hole in enumerate(area_xy.interiors):
        shapes.append(_exclusion_shape(f"operating area hole {k}", Polygon(hole), frame, clear))
    fenced = airspace.zones_reached_at(cruise_alt_m)
    for zone in airspace.zones:
        if zone not in fenced:
            notes.append(
                f"{zone.label} is not fenced: its floor of {zone.floor_m:g} m is above the "
                f"cruise altitude of {cruise_alt_m:g} m and a polygon fence has no floor"
            )
            continue
        parts = _polygons(frame.project(zone.footprint))
        for k, part in enumerate(parts):
            label = zone.label if len(parts) == 1 else f"{zone.label} part {k}"
            shapes.append(_exclusion_shape(label, Polygon(part.exterior), frame, clear))
    return_point = to_e7(lat0, lon0)
    _fit(shapes, max_items - 1, storage_bytes - 9)  # the return point: 1 item, 9 bytes
    for shape in shapes:
        if shape.tolerance > 0:
            how = "shrunk inward" if shape.inclusion else "grown outward"
            notes.append(
                f"{shape.label}: {len(shape.polygon.vertices)} vertices in the fence, "
                f"{how} by at most {shape.tolerance:g} m to fit the flight controller's "
                f"{max_items} items / {storage_bytes} bytes"
            )
    fence = FenceDefinition(tuple(s.polygon for s in shapes), (), return_point)
    problems = fence_problems(fence, max_items=max_items, storage=storage_bytes)
    if problems:
        raise LimitsError("fence: " + "; ".join(problems))
    for label, point, xy in labelled:
        problem = _breach(xy, shapes, frame)
        if problem:
            lat, lon = point.position[0] / 1e7, point.position[1] / 1e7
            raise LimitsError(
                f"{label} ({lat:.7f}, {lon:.7f}) is {problem}: a return there would breach "
                "the fence"
            )
    rally = [point for _, point, _ in labelled]
    problems = rally_problems(rally, max_points=RALLY_MAX_POINTS)
    if problems:
        raise LimitsError("rally points: " + "; ".join(problems))
    params = {
        "FENCE_ENABLE": 1.0,
        "FENCE_TYPE": float(FENCE_TYPE_ALT_MAX | FENCE_TYPE_POLYGON),
        "FENCE_ALT_MAX": float(ceiling),
        "FENCE_ACTION": float(FENCE_ACTION_RTL),
    }
    return AutopilotLimits(fence, tuple(rally), params, tuple(notes))


def _polygons(geometry: BaseGeometry) -> list[Polygon]:
    if isinstance(geometry, Polygon):
        return [geometry]
    if isinstance(geometry, MultiPolygon):
        return list(geometry.geoms)
    raise LimitsError(f"unexpected zone geometry {geometry.geom_type}")


def stored_xy(polygon: FencePolygon, frame: LocalFrame) -> Polygon:
    """The polygon as the flight controller stores it (its integers), in metres."""
    return Polygon([frame.to_xy(lat / 1e7, lon / 1e7) for lat, lon in polygon.vertices])


def _to_fence(ring_xy: Polygon, frame: LocalFrame, inclusion: bool) -> FencePolygon | None:
    """The polygon's exterior as fence vertices (not closed, no repeated points), or None
    when rounding made it degenerate."""
    coords = list(shapely.set_precision(ring_xy, 1e-3).exterior.coords)[:-1]
    vertices: list[tuple[int, int]] = []
    for x, y in coords:
        vertex = to_e7(*frame.to_latlon(x, y))
        if not vertices or vertices[-1] != vertex:
            vertices.append(vertex)
    while len(vertices) > 1 and vertices[0] == vertices[-1]:
        vertices.pop()
    polygon = FencePolygon(tuple(vertices), inclusion)
    if fence_problems(FenceDefinition((polygon,))):
        return None
    return polygon


def _candidates(
    target: Polygon, frame: LocalFrame, inclusion: bool, clear: Sequence[Point]
) -> list[tuple[float, FencePolygon]]:
    """Fence polygons for `target`, from most to fewest vertices, each one checked on its
    stored integers: inside the target (inclusion) or covering it (exclusion), and not
    simplified so far that the depot or a rally point (`clear`) falls out of the allowed
    area (a point the zone itself holds is left for the caller to refuse)."""
    out: list[tuple[float, FencePolygon]] = []

    def accept(tolerance: float, shape: BaseGeometry) -> None:
        if not isinstance(shape, Polygon) or shape.is_empty:
            return
        polygon = _to_fence(Polygon(shape.exterior), frame, inclusion)
        if polygon is None:
            return
        stored = stored_xy(polygon, frame)
        if not stored.is_valid:
            return
        if inclusion:
            safe = target.covers(stored) and all(
                stored.contains(p) for p in clear if target.contains(p)
            )
        else:
            safe = stored.covers(target) and not any(
                stored.intersects(p) and not target.intersects(p) for p in clear
            )
        if safe and (not out or len(polygon.vertices) < len(out[-1][1].vertices)):
            out.append((tolerance, polygon))

    accept(0.0, target)
    # Rounding to 1e-7 degrees moves a vertex by up to 6 mm: 2 cm outward (inward) absorbs it
    # without changing the shape.
    accept(0.0, target.buffer(-0.02 if inclusion else 0.02, join_style="mitre"))
    for tolerance in _TOLERANCES_M:
        if inclusion:
            # Shrink by the tolerance, then simplify within it: stays inside the target.
            shrunk = target.buffer(-2 * tolerance, join_style="mitre")
            accept(tolerance, _largest(shrunk).simplify(tolerance, preserve_topology=True))
        else:
            grown = target.buffer(2 * tolerance, join_style="mitre", mitre_limit=2.0)
            accept(tolerance, _largest(grown).simplify(tolerance, preserve_topology=True))
    if not inclusion:
        hull = target.convex_hull
        accept(_reach(hull, target), hull.buffer(0.05, join_style="mitre"))
        box = shapely.oriented_envelope(target).buffer(0.05, join_style="mitre")
        accept(_reach(box, target), box)
    return out


def _reach(outer: BaseGeometry, target: Polygon) -> float:
    """How far `outer` reaches beyond `target`, metres (Hausdorff distance)."""
    return round(outer.hausdorff_distance(target), 2)


def _largest(geometry: BaseGeometry) -> BaseGeometry:
    if isinstance(geometry, MultiPolygon):
        return max(geometry.geoms, key=lambda g: g.area)
    return geometry


def _inclusion_shape(area_xy: Polygon, frame: LocalFrame, clear: Sequence[Point]) -> _Shape:
    candidates = _candidates(Polygon(area_xy.exterior), frame, True, clear)
    if not candidates:
        raise LimitsError("operating area: no fence polygon fits inside it")
    return _Shape("operating area", True, candidates)


def _exclusion_shape(
    label: str, target: Polygon, frame: LocalFrame, clear: Sequence[Point]
) -> _Shape:
    candidates = _candidates(target, frame, False, clear)
    if not candidates:
        raise LimitsError(
            f"{label}: no fence polygon covers it and leaves the depot and rally points out"
        )
    return _Shape(label, False, candidates)


def _fit(shapes: list[_Shape], items: int, storage: int) -> None:
    """Simplify the polygon with the most vertices, one step at a time, until the fence
    fits; LimitsError naming the shapes when all are as simple as they can be."""

    def used() -> tuple[int, int]:
        n = sum(len(s.polygon.vertices) for s in shapes)
        return n, 4 + sum(2 + 8 * len(s.polygon.vertices) for s in shapes)

    while True:
        n, size = used()
        if n <= items and size <= storage:
            return
        steppable = [s for s in shapes if s.chosen + 1 < len(s.candidates)]
        if not steppable:
            zones = ", ".join(f"{s.label} ({len(s.polygon.vertices)})" for s in shapes)
            raise LimitsError(
                f"the fence needs {n} vertices and {size + 9} bytes even simplified; the "
                f"flight controller stores {items + 1} items / {storage + 9} bytes: merge or "
                f"remove zones (vertices each: {zones})"
            )
        max(steppable, key=lambda s: len(s.polygon.vertices)).chosen += 1


def _breach(xy: Point, shapes: list[_Shape], frame: LocalFrame) -> str:
    """Why the stored fence would not let the drone be at `xy` (metres); empty when it may."""
    if not stored_xy(shapes[0].polygon, frame).contains(xy):
        return "outside the fenced operating area"
    for shape in shapes[1:]:
        if stored_xy(shape.polygon, frame).intersects(xy):
            grown = f", grown by up to {shape.tolerance:g} m" if shape.tolerance else ""
            return f"inside the fence polygon of {shape.label}{grown}"
    return ""
