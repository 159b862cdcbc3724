"""Shortest paths around no-fly zones: a visibility graph in the local metric frame.

Why this method: in the plane the shortest path between two points among polygonal
obstacles bends only at obstacle corners, so a graph over those corners (plus the two end
points), with an edge wherever the straight segment stays in free space, holds it exactly,
and Dijkstra finds it (Lozano-Pérez & Wesley 1979).

Free space is the operating area shrunk by the safety margin minus every reachable zone
grown by it. Zones are grown with mitred joins (bevelled past twice the margin), so the grown
polygon's edges are exactly `margin_m` from the zone and its corners at least that far
(up to twice as far at sharp corners), outside the unbuffered zone; segments are tested
against free space computed with a margin `EPS_M` smaller, so a path touching a grown corner
is allowed and every path keeps at least `margin_m - EPS_M` from every zone and from the
area's edge. End points must lie in that same free space, so a drop within the mitred margin
of a zone corner is refused. Only corners where free space is reflex (convex zone corners,
concave area corners) become graph nodes.

The graph is built once per airspace; `distance_matrix` reuses it for many points by adding
all-pairs corner distances (Floyd-Warshall over the corner graph) to each point's visible
corners, so a 101-point matrix costs one visibility test per point pair and per point and
corner, vectorised in shapely.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import Point, Polygon
from shapely.geometry.polygon import orient

from companion.routing.airspace import Airspace, AirspaceError, UnreachableError
from companion.routing.frame import LocalFrame

DEFAULT_MARGIN_M = 20.0
EPS_M = 0.01
MAX_AREA_RADIUS_M = 50_000.0
_BUFFER = {"join_style": "mitre", "mitre_limit": 2.0}


@dataclass(frozen=True)
class Route:
    """A shortest path: waypoints from start to goal as (lat, lon) degrees, the same in the
    local frame (x east, y north metres), and its length in metres."""

    waypoints: tuple[tuple[float, float], ...]
    xy: tuple[tuple[float, float], ...]
    length_m: float


class AirspaceRouter:
    """Shortest paths and distance matrices among the zones of one airspace.

    `home` is the frame's centre (the depot); `cruise_alt_m`, when given, leaves out zones
    whose floor is above it (flown under); `margin_m` is the horizontal safety margin kept
    from every zone and from the operating area's edge.
    """

    def __init__(
        self,
        airspace: Airspace,
        home: tuple[float, float],
        *,
        margin_m: float = DEFAULT_MARGIN_M,
        cruise_alt_m: float | None = None,
    ) -> None:
        if not (math.isfinite(margin_m) and margin_m > EPS_M):
            raise AirspaceError(f"safety margin must be above {EPS_M} m, got {margin_m!r}")
        self.airspace = airspace
        self.margin_m = margin_m
        self.frame = LocalFrame(*home)
        self.area = self.frame.project(airspace.area.footprint)
        far = shapely.get_coordinates(self.area)
        radius = float(np.max(np.hypot(far[:, 0], far[:, 1])))
        if radius > MAX_AREA_RADIUS_M:
            raise AirspaceError(
                f"operating area (feature {airspace.area.index}) reaches {radius / 1000:.1f} km "
                f"from home, beyond the {MAX_AREA_RADIUS_M / 1000:g} km the local frame serves"
            )
        self.zones = [
            (z, self.frame.project(z.footprint)) for z in airspace.zones_reached_at(cruise_alt_m)
        ]
        grown = shapely.union_all([g.buffer(margin_m, **_BUFFER) for _, g in self.zones])
        shrunk = self.area.buffer(-margin_m, **_BUFFER)
        self.free = self.area.buffer(-(margin_m - EPS_M), **_BUFFER).difference(
            shapely.union_all([g.buffer(margin_m - EPS_M, **_BUFFER) for _, g in self.zones])
        )
        shapely.prepare(self.free)
        corners = _reflex_corners(grown, convex=True) + _reflex_corners(shrunk, convex=False)
        pts = np.asarray(corners, dtype=float).reshape(-1, 2)
        if len(pts):
            pts = pts[shapely.covers(self.free, shapely.points(pts))]
        self.nodes = pts
        n = len(pts)
        weights = np.full((n, n), np.inf)
        np.fill_diagonal(weights, 0.0)
        if n > 1:
            i, j = np.triu_indices(n, k=1)
            ok = self._visible(pts[i], pts[j])
            d = np.hypot(*(pts[i[ok]] - pts[j[ok]]).T)
            weights[i[ok], j[ok]] = d
            weights[j[ok], i[ok]] = d
        self.weights = weights
        self._all_pairs: np.ndarray | None = None

    def _visible(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Whether each segment a[k]-b[k] lies in free space."""
        if len(a) == 0:
            return np.zeros(0, dtype=bool)
        lines = shapely.linestrings(np.stack([a, b], axis=1))
        return np.asarray(shapely.covers(self.free, lines), dtype=bool)

    def locate(self, lat: float, lon: float, label: str) -> tuple[float, float]:
        """The point in the frame, or `UnreachableError` saying why it cannot be flown to."""
        if not (math.isfinite(lat) and math.isfinite(lon)) or abs(lat) > 90 or abs(lon) > 180:
            raise UnreachableError(label, f"({lat}, {lon}) is not a valid lat/lon")
        x, y = self.frame.to_xy(lat, lon)
        p = Point(x, y)
        if self.free.covers(p):
            return x, y
        at = f"({lat:.6f}, {lon:.6f})"
        for zone, geom in self.zones:
            if geom.covers(p):
                raise UnreachableError(label, f"{at} is inside {zone.label}")
        if not self.area.covers(p):
            raise UnreachableError(label, f"{at} is outside the operating area")
        for zone, geom in self.zones:
            if geom.buffer(self.margin_m - EPS_M, **_BUFFER).covers(p):
                raise UnreachableError(
                    label,
                    f"{at} is within the {self.margin_m:g} m safety margin (mitred at corners) "
                    f"of {zone.label}",
                )
        raise UnreachableError(
            label, f"{at} is within {self.margin_m:g} m of the operating area's edge"
        )

    def shortest_path(
        self,
        start: tuple[float, float],
        goal: tuple[float, float],
        labels: tuple[str, str] = ("start", "goal"),
    ) -> Route:
        """The shortest path from `start` to `goal` (lat, lon) around the zones (Dijkstra)."""
        s = np.array(self.locate(*start, labels[0]))
        g = np.array(self.locate(*goal, labels[1]))
        n = len(self.nodes)
        if self._visible(s[None], g[None])[0]:
            return self._route([s, g])
        vis_s = self._visibility_row(s)
        vis_g = self._visibility_row(g)
        # Nodes 0..n-1 are corners, n is the start, n+1 the goal.
        dist = np.full(n + 2, np.inf)
        prev = np.full(n + 2, -1)
        dist[n] = 0.0
        heap = [(0.0, n)]
        done = np.zeros(n + 2, dtype=bool)
        while heap:
            d, u = heapq.heappop(heap)
            if done[u]:
                continue
            done[u] = True
            if u == n + 1:
                break
            if u == n:
                out = vis_s
            else:
                out = self.weights[u]
                if math.isfinite(vis_g[u]) and d + vis_g[u] < dist[n + 1]:
                    dist[n + 1] = d + vis_g[u]
                    prev[n + 1] = u
                    heapq.heappush(heap, (dist[n + 1], n + 1))
            for v in np.flatnonzero(np.isfinite(out)):
                nd = d + out[v]
                if nd < dist[v]:
                    dist[v] = nd
                    prev[v] = u
                    heapq.heappush(heap, (nd, int(v)))
        if not math.isfinite(dist[n + 1]):
            raise UnreachableError(
                labels[1], f"no path from {labels[0]}: walled off by no-fly zones"
            )
        chain = []
        u = n + 1
        while u != -1:
            chain.append(g if u == n + 1 else s if u == n else self.nodes[u])
            u = int(prev[u])
        return self._route(chain[::-1])

    def _visibility_row(self, p: np.ndarray) -> np.ndarray:
        """Distance from p to each corner it sees, inf where hidden."""
        n = len(self.nodes)
        row = np.full(n, np.inf)
        if n:
            ok = self._visible(np.repeat(p[None], n, axis=0), self.nodes)
            row[ok] = np.hypot(*(self.nodes[ok] - p).T)
        return row

    def _route(self, chain: Sequence[np.ndarray]) -> Route:
        xy = tuple((float(x), float(y)) for x, y in chain)
        length = float(sum(math.dist(a, b) for a, b in itertools.pairwise(xy)))
        return Route(tuple(self.frame.many_to_latlon(xy)), xy, length)

    def _corner_distances(self) -> np.ndarray:
        """All-pairs shortest distances between corners (Floyd-Warshall), computed once."""
        if self._all_pairs is None:
            d = self.weights.copy()
            for k in range(len(d)):
                np.minimum(d, d[:, k : k + 1] + d[k : k + 1, :], out=d)
            self._all_pairs = d
        return self._all_pairs

    def distance_matrix(
        self, points: Sequence[tuple[float, float]], labels: Sequence[str] | None = None
    ) -> np.ndarray:
        """Shortest-path lengths (metres) between every pair of (lat, lon) points, e.g.
        the depot then the drops. A point that cannot be reached from the first one raises
        `UnreachableError` naming it."""
        names = list(labels) if labels is not None else [f"point {i}" for i in range(len(points))]
        if len(names) != len(points):
            raise AirspaceError(f"{len(points)} points but {len(names)} labels")
        xy = np.array(
            [self.locate(lat, lon, nm) for (lat, lon), nm in zip(points, names, strict=True)]
        )
        m, n = len(xy), len(self.nodes)
        out = np.zeros((m, m))
        if m == 0:
            return out
        i, j = np.triu_indices(m, k=1)
        direct = np.full((m, m), np.inf)
        ok = self._visible(xy[i], xy[j])
        d = np.hypot(*(xy[i[ok]] - xy[j[ok]]).T)
        direct[i[ok], j[ok]] = d
        direct[j[ok], i[ok]] = d
        np.fill_diagonal(direct, 0.0)
        out = direct
        if n:
            vis = np.full((m, n), np.inf)
            pi, ci = np.repeat(np.arange(m), n), np.tile(np.arange(n), m)
            ok = self._visible(xy[pi], self.nodes[ci])
            vis[pi[ok], ci[ok]] = np.hypot(*(xy[pi[ok]] - self.nodes[ci[ok]]).T)
            # reach[p, v]: shortest from point p to corner v through the corner graph.
            # One row at a time: memory stays one corner-by-corner matrix.
            corner = self._corner_distances()
            reach = np.array([np.min(row[:, None] + corner, axis=0) for row in vis])
            via = np.min(reach[:, None, :] + vis[None, :, :], axis=2)
            out = np.minimum(direct, via)
            out = np.minimum(out, out.T)  # exactly symmetric, whatever the summation order
        for k in range(1, m):
            if not math.isfinite(out[0, k]):
                raise UnreachableError(
                    names[k], f"no path from {names[0]}: walled off by no-fly zones"
                )
        return out


def _reflex_corners(geom: object, *, convex: bool) -> list[tuple[float, float]]:
    """Corners of a polygonal geometry where the polygon turns convex (`convex=True`: the
    corners a path bends around outside it) or concave (inside it)."""
    polys = [g for g in getattr(geom, "geoms", [geom]) if isinstance(g, Polygon) and not g.is_empty]
    out: list[tuple[float, float]] = []
    for poly in polys:
        poly = orient(poly, sign=1.0)  # interior on the left of every ring
        for ring in (poly.exterior, *poly.interiors):
            c = np.asarray(ring.coords)[:-1]
            if len(c) < 3:
                continue
            before, after = c - np.roll(c, 1, axis=0), np.roll(c, -1, axis=0) - c
            cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
            keep = cross > 1e-9 if convex else cross < -1e-9
            out.extend(map(tuple, c[keep]))
    return out
