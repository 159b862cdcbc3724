"""A local metric frame for airspace geometry: an azimuthal equidistant projection (pyproj)
centred on the home/depot point.

Why this projection: distances and bearings from the centre are exact on the WGS-84
ellipsoid, and a delivery area is a few kilometres around its depot, so straight lines and
lengths in the frame are what shapely needs. Between two arbitrary points the frame's
planar distance differs from the geodesic by a scale error that grows with the square of
the distance from the centre: at most 4e-7 (0.4 mm per km) between points within 10 km of
home and 1e-5 within 50 km (measured against `pyproj.Geod` geodesics; the bounds are
asserted in tests/test_routing_paths.py). Straight
segments in the frame are flown as straight lines between their end waypoints; within the
operating radius the two differ by less than GPS noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import shapely
from pyproj import CRS, Transformer
from shapely.geometry.base import BaseGeometry


class LocalFrame:
    """Forward (lat/lon degrees to x east, y north metres) and inverse transforms around
    one centre point."""

    def __init__(self, lat: float, lon: float) -> None:
        if not (math.isfinite(lat) and math.isfinite(lon)) or abs(lat) > 90 or abs(lon) > 180:
            raise ValueError(f"frame centre must be a valid lat/lon, got ({lat}, {lon})")
        self.lat0 = float(lat)
        self.lon0 = float(lon)
        crs = CRS.from_proj4(
            f"+proj=aeqd +lat_0={self.lat0!r} +lon_0={self.lon0!r} +datum=WGS84 +units=m"
        )
        self._fwd = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
        self._inv = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)

    def to_xy(self, lat: float, lon: float) -> tuple[float, float]:
        x, y = self._fwd.transform(lon, lat)
        return float(x), float(y)

    def to_latlon(self, x: float, y: float) -> tuple[float, float]:
        lon, lat = self._inv.transform(x, y)
        return float(lat), float(lon)

    def many_to_xy(self, lonlat: np.ndarray) -> np.ndarray:
        """(N, 2) lon/lat degrees (GeoJSON order) to (N, 2) x/y metres."""
        x, y = self._fwd.transform(lonlat[:, 0], lonlat[:, 1])
        return np.column_stack([x, y])

    def many_to_latlon(self, xy: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
        arr = np.asarray(xy, dtype=float).reshape(-1, 2)
        lon, lat = self._inv.transform(arr[:, 0], arr[:, 1])
        return [
            (float(a), float(o))
            for a, o in zip(np.atleast_1d(lat), np.atleast_1d(lon), strict=True)
        ]

    def project(self, geometry_lonlat: BaseGeometry) -> BaseGeometry:
        """A shapely geometry in lon/lat degrees, in this frame's metres."""
        return shapely.transform(geometry_lonlat, self.many_to_xy)
