"""Geofence: which enabled fences a position breaches (AC_Fence and AC_PolyFence_loader).

FENCE_TYPE bits: 1 max altitude (FENCE_ALT_MAX above home), 2 circle (FENCE_RADIUS around
home), 4 polygon, meaning every uploaded FENCE item: inclusion polygons and circles must
contain the vehicle, exclusion polygons and circles must not. Nothing is enforced unless
FENCE_ENABLE is 1. The minimum-altitude fence (bit 8) is not modelled: ArduPilot only
auto-enables it after takeoff, which delivery setups do not use.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .dialect import mavlink
from .geo import point_in_polygon
from .mission_store import Item
from .oa_dijkstra import FenceShapes

ALT_MAX = 1
CIRCLE = 2
POLYGON = 4
ALT_MIN = 8  # configurable and reported as present, never enforced here (see above)
NAMES = ((ALT_MAX, "Max Alt"), (CIRCLE, "Circle"), (POLYGON, "Polygon"))


def describe(fences: int) -> str:
    """ "Polygon fence", "Max Alt and Circle fences": ArduPilot's AC_Fence::get_fence_names."""
    names = [name for bit, name in NAMES if fences & bit]
    if not names:
        return ""
    text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return text + (" fences" if len(names) > 1 else " fence")


class Fence:
    """The uploaded fence geometry in the local north/east frame, and breach tests."""

    def __init__(self, to_ne: Callable[[int, int], tuple[float, float]]) -> None:
        self._to_ne = to_ne
        self._inclusion_polygons: list[list[tuple[float, float]]] = []
        self._exclusion_polygons: list[list[tuple[float, float]]] = []
        self._inclusion_circles: list[tuple[float, float, float]] = []
        self._exclusion_circles: list[tuple[float, float, float]] = []

    def load(self, items: list[Item]) -> None:
        """Take the stored FENCE list (already validated by the mission store)."""
        self._inclusion_polygons, self._exclusion_polygons = [], []
        self._inclusion_circles, self._exclusion_circles = [], []
        i = 0
        while i < len(items):
            item = items[i]
            point = self._to_ne(item.x, item.y)
            if item.command in (
                mavlink.MAV_CMD_NAV_FENCE_POLYGON_VERTEX_INCLUSION,
                mavlink.MAV_CMD_NAV_FENCE_POLYGON_VERTEX_EXCLUSION,
            ):
                count = int(item.param1)
                polygon = [self._to_ne(v.x, v.y) for v in items[i : i + count]]
                if item.command == mavlink.MAV_CMD_NAV_FENCE_POLYGON_VERTEX_INCLUSION:
                    self._inclusion_polygons.append(polygon)
                else:
                    self._exclusion_polygons.append(polygon)
                i += count
                continue
            if item.command == mavlink.MAV_CMD_NAV_FENCE_CIRCLE_INCLUSION:
                self._inclusion_circles.append((point[0], point[1], item.param1))
            elif item.command == mavlink.MAV_CMD_NAV_FENCE_CIRCLE_EXCLUSION:
                self._exclusion_circles.append((point[0], point[1], item.param1))
            i += 1

    def has_polygon_items(self) -> bool:
        """True when any inclusion/exclusion polygon or circle is stored."""
        return bool(
            self._inclusion_polygons
            or self._exclusion_polygons
            or self._inclusion_circles
            or self._exclusion_circles
        )

    def shapes(self) -> FenceShapes:
        """The stored shapes, for the path planner."""
        return FenceShapes(
            tuple(tuple(p) for p in self._inclusion_polygons),
            tuple(tuple(p) for p in self._exclusion_polygons),
            tuple(self._inclusion_circles),
            tuple(self._exclusion_circles),
        )

    def breaches(
        self, enabled: int, north: float, east: float, alt: float, alt_max: float, radius: float
    ) -> int:
        """Bitmask of the `enabled` fences that the position breaches."""
        breached = 0
        if enabled & ALT_MAX and alt > alt_max:
            breached |= ALT_MAX
        if enabled & CIRCLE and math.hypot(north, east) > radius:
            breached |= CIRCLE
        if enabled & POLYGON and self._outside_polygons(north, east):
            breached |= POLYGON
        return breached

    def _outside_polygons(self, north: float, east: float) -> bool:
        point = (north, east)
        if any(not point_in_polygon(point, p) for p in self._inclusion_polygons):
            return True
        if any(point_in_polygon(point, p) for p in self._exclusion_polygons):
            return True
        for n, e, r in self._inclusion_circles:
            if math.hypot(north - n, east - e) > r:
                return True
        return any(math.hypot(north - n, east - e) < r for n, e, r in self._exclusion_circles)
