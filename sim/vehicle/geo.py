"""Flat-earth geometry the way ArduPilot does it (AP_Math/location.cpp).

The vehicle flies in a local north/east frame around its EKF origin (home); positions on the
wire are 1e-7 degree integers. ArduPilot converts with LOCATION_SCALING_FACTOR and a cosine
longitude scale rather than great circles, so using the same rule keeps our distances within
millimetres of the autopilot's own over delivery ranges.
"""

from __future__ import annotations

import math

# metres per 1e-7 degree of latitude (AP_Math: LOCATION_SCALING_FACTOR)
SCALE_M_PER_E7 = 0.011131884502145034


def longitude_scale(lat_e7: int) -> float:
    """cos(latitude), floored like ArduPilot's Location::longitude_scale."""
    return max(math.cos(math.radians(lat_e7 * 1e-7)), 0.01)


def ne_offset(
    origin_lat_e7: int, origin_lon_e7: int, lat_e7: int, lon_e7: int
) -> tuple[float, float]:
    """Metres north and east of the origin."""
    north = (lat_e7 - origin_lat_e7) * SCALE_M_PER_E7
    east = (
        (lon_e7 - origin_lon_e7) * SCALE_M_PER_E7 * longitude_scale((lat_e7 + origin_lat_e7) // 2)
    )
    return north, east


def offset_latlon(
    origin_lat_e7: int, origin_lon_e7: int, north: float, east: float
) -> tuple[int, int]:
    """The 1e-7 degree position `north`/`east` metres from the origin."""
    lat = origin_lat_e7 + north / SCALE_M_PER_E7
    mid = (int(lat) + origin_lat_e7) // 2
    lon = origin_lon_e7 + east / (SCALE_M_PER_E7 * longitude_scale(mid))
    return round(lat), round(lon)


def point_in_polygon(point: tuple[float, float], polygon: list[tuple[float, float]]) -> bool:
    """Even-odd rule, as AP_Math's Polygon_outside (inverted)."""
    x, y = point
    inside = False
    j = len(polygon) - 1
    for i, (xi, yi) in enumerate(polygon):
        xj, yj = polygon[j]
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            inside = not inside
        j = i
    return inside
