"""The local metric frame and shortest paths around no-fly zones."""

from __future__ import annotations

import itertools
import json
import math
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyproj import Geod
from shapely.geometry import LineString, Point, Polygon

from companion.routing.airspace import AirspaceError, UnreachableError
from companion.routing.frame import LocalFrame
from companion.routing.geojson import parse_airspace
from companion.routing.paths import EPS_M, AirspaceRouter

HOME = (52.0, 4.0)
FRAME = LocalFrame(*HOME)
GEOD = Geod(ellps="WGS84")


def lonlat_ring(xy: list[tuple[float, float]]) -> list[list[float]]:
    ring = [*xy, xy[0]]
    return [list(reversed(FRAME.to_latlon(x, y))) for x, y in ring]


def square(cx: float, cy: float, half: float) -> list[tuple[float, float]]:
    return [
        (cx - half, cy - half),
        (cx + half, cy - half),
        (cx + half, cy + half),
        (cx - half, cy + half),
    ]


def airspace_of(zones: list[list[tuple[float, float]]], area_half: float = 3000.0, **zone_props):
    features = [
        {
            "type": "Feature",
            "properties": {"role": "operating-area"},
            "geometry": {"type": "Polygon", "coordinates": [lonlat_ring(square(0, 0, area_half))]},
        }
    ]
    for i, zone in enumerate(zones):
        features.append(
            {
                "type": "Feature",
                "id": f"z{i}",
                "properties": {"role": "no-fly", **zone_props},
                "geometry": {"type": "Polygon", "coordinates": [lonlat_ring(zone)]},
            }
        )
    return parse_airspace(json.dumps({"type": "FeatureCollection", "features": features}))


def at(x: float, y: float) -> tuple[float, float]:
    return FRAME.to_latlon(x, y)


@pytest.mark.parametrize("radius_m, bound", [(10_000, 1e-6), (50_000, 3e-5)])
def test_frame_distances_match_geodesics(radius_m: float, bound: float) -> None:
    """The frame's planar distance against the WGS-84 geodesic, for point pairs anywhere
    within `radius_m` of the centre: the relative error stays under `bound`."""
    rng = random.Random(7)
    worst = 0.0
    for _ in range(2000):
        pts = []
        for _ in range(2):
            r, a = radius_m * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
            pts.append((r * math.cos(a), r * math.sin(a)))
        (x1, y1), (x2, y2) = pts
        planar = math.dist(pts[0], pts[1])
        if planar < 100:
            continue
        (la1, lo1), (la2, lo2) = FRAME.to_latlon(x1, y1), FRAME.to_latlon(x2, y2)
        geodesic = GEOD.inv(lo1, la1, lo2, la2)[2]
        worst = max(worst, abs(planar - geodesic) / geodesic)
        # Round trip back to the frame is exact to well under a millimetre.
        assert math.dist(FRAME.to_xy(la1, lo1), (x1, y1)) < 1e-6
    assert worst < bound
    # Distances from the centre are exact (azimuthal equidistant).
    lat, lon = FRAME.to_latlon(3000.0, 4000.0)
    assert GEOD.inv(HOME[1], HOME[0], lon, lat)[2] == pytest.approx(5000.0, abs=1e-6)


def test_straight_line_when_clear() -> None:
    router = AirspaceRouter(airspace_of([square(0, 1500, 100)]), HOME)
    route = router.shortest_path(at(-1000, -500), at(1200, 300))
    assert len(route.waypoints) == 2
    assert route.length_m == pytest.approx(math.dist((-1000, -500), (1200, 300)), abs=1e-6)
    (la1, lo1), (la2, lo2) = route.waypoints
    assert GEOD.inv(lo1, la1, lo2, la2)[2] == pytest.approx(route.length_m, rel=1e-5)


def test_detour_around_a_square_zone_has_the_analytic_length() -> None:
    """A 200 m square zone centred between the two points; with the 20 m margin the path
    runs along a 240 m square: two diagonals to its near corners plus one side."""
    router = AirspaceRouter(airspace_of([square(500, 0, 100)]), HOME, margin_m=20.0)
    route = router.shortest_path(at(0, 0), at(1000, 0), ("depot", "drop 1"))
    expected = 2 * math.hypot(380, 120) + 240
    assert route.length_m == pytest.approx(expected, abs=1e-6)
    assert len(route.xy) == 4
    zone = Polygon(square(500, 0, 100))
    assert LineString(route.xy).distance(zone) == pytest.approx(20.0, abs=1e-6)
    # A larger margin: same construction on a 300 m square.
    wide = AirspaceRouter(airspace_of([square(500, 0, 100)]), HOME, margin_m=50.0)
    assert wide.shortest_path(at(0, 0), at(1000, 0)).length_m == pytest.approx(
        2 * math.hypot(350, 150) + 300, abs=1e-6
    )


def test_points_that_cannot_be_flown_to_are_named() -> None:
    router = AirspaceRouter(airspace_of([square(500, 0, 100)]), HOME)
    cases = {
        (500, 0): "inside no-fly zone 'z0' (feature 1)",
        (
            610,
            0,
        ): "within the 20 m safety margin (mitred at corners) of no-fly zone 'z0' (feature 1)",
        (3500, 0): "outside the operating area",
        (2990, 0): "within 20 m of the operating area's edge",
    }
    for (x, y), reason in cases.items():
        with pytest.raises(UnreachableError) as err:
            router.shortest_path(at(0, 0), at(x, y), ("depot", "drop 7"))
        assert err.value.label == "drop 7"
        assert str(err.value).startswith("drop 7: (")
        assert reason in str(err.value)
        with pytest.raises(UnreachableError, match=r"^drop 7: .*" + reason.split(" (")[0]):
            router.distance_matrix([at(0, 0), at(x, y)], ["depot", "drop 7"])


def test_unreachable_drop_enclosed_by_zones_is_refused() -> None:
    """Four zones wall off a courtyard; a drop inside it is refused, the others are not."""
    walls = [
        [(-200, 200), (200, 200), (200, 260), (-200, 260)],
        [(-200, -260), (200, -260), (200, -200), (-200, -200)],
        [(-260, -260), (-200, -260), (-200, 260), (-260, 260)],
        [(200, -260), (260, -260), (260, 260), (200, 260)],
    ]
    router = AirspaceRouter(airspace_of(walls), HOME)
    with pytest.raises(UnreachableError, match=r"^drop 2: no path from depot: walled off"):
        router.shortest_path(at(-1000, 0), at(0, 0), ("depot", "drop 2"))
    with pytest.raises(UnreachableError, match=r"^drop 2: no path from depot"):
        router.distance_matrix([at(-1000, 0), at(1000, 0), at(0, 0)], ["depot", "drop 1", "drop 2"])
    assert router.shortest_path(at(-1000, 0), at(1000, 0)).length_m > 2000


def test_zones_above_cruise_are_flown_under() -> None:
    airspace = airspace_of([square(500, 0, 100)], floor_m=60)
    under = AirspaceRouter(airspace, HOME, cruise_alt_m=40.0)
    assert under.shortest_path(at(0, 0), at(1000, 0)).length_m == pytest.approx(1000, abs=1e-6)
    into = AirspaceRouter(airspace, HOME, cruise_alt_m=60.0)
    assert into.shortest_path(at(0, 0), at(1000, 0)).length_m > 1030


def test_concave_operating_area_is_followed() -> None:
    """An L-shaped area: the path bends at the inner corner, 20 m inside it."""
    ell = [(0, 0), (2000, 0), (2000, 1000), (1000, 1000), (1000, 2000), (0, 2000)]
    features = [
        {
            "type": "Feature",
            "properties": {"role": "operating-area"},
            "geometry": {"type": "Polygon", "coordinates": [lonlat_ring(ell)]},
        }
    ]
    airspace = parse_airspace(json.dumps({"type": "FeatureCollection", "features": features}))
    router = AirspaceRouter(airspace, HOME)
    route = router.shortest_path(at(1800, 500), at(500, 1800))
    corner = (980, 980)
    assert route.length_m == pytest.approx(
        math.dist((1800, 500), corner) + math.dist(corner, (500, 1800)), abs=1e-6
    )


def test_margin_must_be_positive() -> None:
    with pytest.raises(AirspaceError, match="safety margin"):
        AirspaceRouter(airspace_of([]), HOME, margin_m=0.0)


def random_zones(rng: random.Random, count: int) -> list[list[tuple[float, float]]]:
    """Random convex and non-convex polygons (stars) across the area."""
    zones = []
    for _ in range(count):
        cx, cy = rng.uniform(-2200, 2200), rng.uniform(-2200, 2200)
        k = rng.randint(3, 9)
        angles = sorted(rng.uniform(0, 2 * math.pi) for _ in range(k))
        radii = [rng.uniform(60, 350) for _ in range(k)]
        poly = [
            (cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii, strict=True)
        ]
        if Polygon(poly).is_valid and Polygon(poly).area > 100:
            zones.append(poly)
    return zones


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1))
def test_paths_never_enter_a_zone(seed: int) -> None:
    """Random zones and end points: every path found keeps the margin from every zone and
    from the area's edge, is no shorter than the straight line, agrees with the distance
    matrix, and a refused end point really is blocked."""
    rng = random.Random(seed)
    zones = random_zones(rng, rng.randint(1, 10))
    router = AirspaceRouter(airspace_of(zones), HOME, margin_m=20.0)
    shapes = [Polygon(z) for z in zones]
    inner = Polygon(square(0, 0, 3000)).buffer(-(20.0 - EPS_M), join_style="mitre")
    points, labels = [], []
    for k in range(6):
        xy = (rng.uniform(-3000, 3000), rng.uniform(-3000, 3000))
        try:
            router.locate(*at(*xy), f"p{k}")
        except UnreachableError:
            grown = [s.buffer(20.0 - EPS_M, join_style="mitre", mitre_limit=2.0) for s in shapes]
            blocked = not inner.contains(Point(xy)) or any(g.contains(Point(xy)) for g in grown)
            assert blocked
            continue
        points.append(at(*xy))
        labels.append(f"p{k}")
    routes = {}
    for i, j in itertools.combinations(range(len(points)), 2):
        try:
            route = router.shortest_path(points[i], points[j], (labels[i], labels[j]))
        except UnreachableError:
            routes[i, j] = math.inf
            continue
        routes[i, j] = route.length_m
        line = LineString(route.xy)
        assert inner.covers(line)
        for shape in shapes:
            assert line.distance(shape) >= 20.0 - EPS_M - 1e-6
        straight = math.dist(FRAME.to_xy(*points[i]), FRAME.to_xy(*points[j]))
        assert route.length_m >= straight - 1e-6
    if points and all(math.isfinite(routes[0, j]) for j in range(1, len(points))):
        matrix = router.distance_matrix(points, labels)
        for (i, j), length in routes.items():
            assert matrix[i, j] == pytest.approx(length, rel=1e-9, abs=1e-6)
            assert matrix[j, i] == matrix[i, j]  # exactly symmetric


def test_distance_matrix_of_101_points_matches_single_paths() -> None:
    rng = random.Random(12)
    zones = random_zones(rng, 10)
    router = AirspaceRouter(airspace_of(zones), HOME)
    points: list[tuple[float, float]] = []
    while len(points) < 101:
        p = at(rng.uniform(-2900, 2900), rng.uniform(-2900, 2900))
        try:
            router.locate(*p, "p")
        except UnreachableError:
            continue
        points.append(p)
    matrix = router.distance_matrix(points)
    assert matrix.shape == (101, 101)
    assert np.array_equal(matrix, matrix.T)
    assert np.all(np.diag(matrix) == 0)
    for i, j in [(0, 1), (0, 50), (17, 99), (42, 43), (100, 3)]:
        if math.isfinite(matrix[i, j]):
            assert matrix[i, j] == pytest.approx(
                router.shortest_path(points[i], points[j]).length_m
            )
    finite = matrix[np.isfinite(matrix)]
    assert finite.size > 101 * 100 * 0.9
    # Triangle inequality through every third point (shortest paths compose).
    m = np.where(np.isfinite(matrix), matrix, 1e12)
    assert np.all(m[:, None, :] <= m[:, :, None] + m[None, :, :] + 1e-6)
