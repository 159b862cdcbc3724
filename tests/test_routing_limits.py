"""The autopilot's own limits built from an airspace: the fence covers every zone and stays
inside the operating area on the integers the flight controller stores, fits its storage
(simplified outward/inward and said so, or refused naming the zone), and carries the return
point, rally points and fence parameters."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import Point, Polygon

from companion.routing.airspace import PROFILES
from companion.routing.frame import LocalFrame
from companion.routing.geojson import airspace_from_geojson
from companion.routing.limits import LimitsError, build_limits
from firmware_bridge.fence import FENCE_STORAGE_BYTES, fence_problems, storage_bytes

HOME = (52.0, 4.0)
FRAME = LocalFrame(*HOME)
EASA = PROFILES["easa-open"]


def lonlat(x: float, y: float) -> list[float]:
    lat, lon = FRAME.to_latlon(x, y)
    return [lon, lat]


def ring(points: list[tuple[float, float]]) -> list[list[float]]:
    return [lonlat(x, y) for x, y in [*points, points[0]]]


def rect(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def circle(cx: float, cy: float, r: float, n: int) -> list[tuple[float, float]]:
    return [
        (cx + r * math.cos(2 * math.pi * k / n), cy + r * math.sin(2 * math.pi * k / n))
        for k in range(n)
    ]


def feature(role: str, points: list[tuple[float, float]], **props: object) -> dict:
    return {
        "type": "Feature",
        "properties": {"role": role, **props},
        "geometry": {"type": "Polygon", "coordinates": [ring(points)]},
    }


def airspace(*zones: dict, area: list[tuple[float, float]] | None = None, **area_props: object):
    area_feature = feature("operating-area", area or rect(-2000, -2000, 2000, 2000), **area_props)
    return airspace_from_geojson({"type": "FeatureCollection", "features": [area_feature, *zones]})


def stored(polygon) -> Polygon:
    return Polygon([FRAME.to_xy(lat / 1e7, lon / 1e7) for lat, lon in polygon.vertices])


def zone_xy(points: list[tuple[float, float]]) -> Polygon:
    return FRAME.project(Polygon([(p[0], p[1]) for p in ring(points)]))


def test_small_airspace_is_fenced_exactly_with_return_point_rally_and_params() -> None:
    stadium = rect(400, -100, 600, 100)
    limits = build_limits(
        airspace(feature("no-fly", stadium, name="stadium")),
        HOME,
        EASA,
        cruise_alt_m=30,
        rally_points=[FRAME.to_latlon(-500, 0)],
    )
    area, zone = limits.fence.polygons
    assert area.inclusion and not zone.inclusion
    assert len(area.vertices) == 4 and len(zone.vertices) == 4
    assert stored(zone).covers(zone_xy(stadium))
    assert zone_xy(rect(-2000, -2000, 2000, 2000)).covers(stored(area))
    assert limits.fence.return_point == (520000000, 40000000)
    assert [(p.position, p.alt_m) for p in limits.rally] == [
        ((520000000, 40000000), 30),
        (limits.rally[1].position, 30),
    ]
    assert limits.params == {
        "FENCE_ENABLE": 1.0,
        "FENCE_TYPE": 5.0,
        "FENCE_ALT_MAX": 120.0,
        "FENCE_ACTION": 1.0,
    }
    assert limits.notes == ()
    assert fence_problems(limits.fence) == []


def test_ceiling_is_the_lower_of_profile_and_area() -> None:
    limits = build_limits(airspace(ceiling_m=80), HOME, PROFILES["faa-part107"], cruise_alt_m=30)
    assert limits.params["FENCE_ALT_MAX"] == 80.0
    faa = build_limits(airspace(), HOME, PROFILES["faa-part107"], cruise_alt_m=30)
    assert faa.params["FENCE_ALT_MAX"] == pytest.approx(121.92)
    with pytest.raises(LimitsError, match="cruise altitude 90 m is not between 0 and the ceiling"):
        build_limits(airspace(ceiling_m=80), HOME, EASA, cruise_alt_m=90)


def test_many_vertex_zones_are_grown_outward_and_the_area_shrunk_inward_to_fit() -> None:
    zones = [
        feature("no-fly", circle(cx, cy, 120, 60), name=f"z{k}")
        for k, (cx, cy) in enumerate([(600, 0), (-600, 0), (0, 600), (0, -600)])
    ]
    area = circle(0, 0, 1800, 120)
    limits = build_limits(airspace(*zones, area=area), HOME, EASA, cruise_alt_m=30)
    assert fence_problems(limits.fence) == []
    assert storage_bytes(limits.fence) <= FENCE_STORAGE_BYTES
    inclusion, *exclusions = limits.fence.polygons
    assert zone_xy(area).covers(stored(inclusion))
    for polygon, (cx, cy) in zip(
        exclusions, [(600, 0), (-600, 0), (0, 600), (0, -600)], strict=True
    ):
        assert stored(polygon).covers(zone_xy(circle(cx, cy, 120, 60)))
        # Outward, not wildly: within 40 m of the zone everywhere.
        assert stored(polygon).hausdorff_distance(zone_xy(circle(cx, cy, 120, 60))) < 40
    assert len(limits.notes) == 5
    assert any("'z0'" in n and "grown outward" in n for n in limits.notes)
    assert any("operating area" in n and "shrunk inward" in n for n in limits.notes)


def test_too_many_zones_are_refused_naming_them() -> None:
    zones = [
        feature("no-fly", rect(x, 0, x + 20, 20), name=f"z{k}")
        for k, x in enumerate(range(-1900, 1900, 60))
    ]
    with pytest.raises(LimitsError, match=r"the fence needs .* even simplified.*'z0'"):
        build_limits(airspace(*zones), HOME, EASA, cruise_alt_m=30)


def test_zones_above_cruise_are_not_fenced_and_said_so() -> None:
    high = feature("no-fly", rect(400, -100, 600, 100), name="hospital", floor_m=60)
    limits = build_limits(airspace(high), HOME, EASA, cruise_alt_m=30)
    assert len(limits.fence.polygons) == 1
    assert "'hospital'" in limits.notes[0] and "floor of 60 m" in limits.notes[0]
    fenced = build_limits(airspace(high), HOME, EASA, cruise_alt_m=70)
    assert len(fenced.fence.polygons) == 2


def test_area_holes_become_exclusions() -> None:
    doc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {"role": "operating-area"},
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [
                        ring(rect(-2000, -2000, 2000, 2000)),
                        ring(rect(300, 300, 500, 500)),
                    ],
                },
            }
        ],
    }
    limits = build_limits(airspace_from_geojson(doc), HOME, EASA, cruise_alt_m=30)
    hole = limits.fence.polygons[1]
    assert not hole.inclusion and stored(hole).covers(zone_xy(rect(300, 300, 500, 500)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"rally_points": [FRAME.to_latlon(500, 0)]},
            "rally point 0 .* inside the fence polygon of no-fly zone .stadium.",
        ),
        (
            {"rally_points": [FRAME.to_latlon(2500, 0)]},
            "rally point 0 .* outside the fenced operating area",
        ),
        ({"rally_points": [(math.nan, 4.0)]}, "rally point 0: latitude nan"),
        ({"rally_alt_m": 200}, "rally altitude 200 m"),
    ],
)
def test_rally_points_that_would_breach_are_refused(kwargs: dict, message: str) -> None:
    space = airspace(feature("no-fly", rect(400, -100, 600, 100), name="stadium"))
    with pytest.raises(LimitsError, match=message):
        build_limits(space, HOME, EASA, cruise_alt_m=30, **kwargs)


def test_depot_inside_a_zone_is_refused() -> None:
    space = airspace(feature("no-fly", rect(-50, -50, 50, 50), name="yard"))
    with pytest.raises(
        LimitsError, match=r"depot .* inside the fence polygon of no-fly zone .yard."
    ):
        build_limits(space, HOME, EASA, cruise_alt_m=30)


def test_home_is_inside_what_the_fence_allows() -> None:
    limits = build_limits(airspace(), HOME, EASA, cruise_alt_m=30)
    assert stored(limits.fence.polygons[0]).contains(Point(0, 0))


STAR = st.tuples(
    st.floats(-1200, 1200),
    st.floats(-1200, 1200),
    st.lists(st.floats(20, 150), min_size=3, max_size=90),
)


@settings(max_examples=25, deadline=None)
@given(st.lists(STAR, min_size=1, max_size=6))
def test_any_zones_are_covered_and_fit_or_are_refused(stars: list) -> None:
    """Star-shaped zones of up to 90 vertices anywhere in the area: either the fence fits
    the flight controller with every fenced zone covered and the area not grown, or it is
    refused with a LimitsError naming what does not fit or where the depot is."""
    shapes = []
    for cx, cy, radii in stars:
        n = len(radii)
        shapes.append(
            [
                (cx + r * math.cos(2 * math.pi * k / n), cy + r * math.sin(2 * math.pi * k / n))
                for k, r in enumerate(radii)
            ]
        )
    zones = [feature("no-fly", points, name=f"z{k}") for k, points in enumerate(shapes)]
    try:
        limits = build_limits(airspace(*zones), HOME, EASA, cruise_alt_m=30)
    except LimitsError as exc:
        assert "depot" in str(exc) or "even simplified" in str(exc), exc
        return
    assert fence_problems(limits.fence) == []
    inclusion, *exclusions = limits.fence.polygons
    assert zone_xy(rect(-2000, -2000, 2000, 2000)).covers(stored(inclusion))
    for polygon, points in zip(exclusions, shapes, strict=True):
        assert stored(polygon).covers(zone_xy(points))


def test_simplification_never_swallows_the_depot_or_a_rally_point() -> None:
    """A 90-vertex zone 20 m from the depot, among others that force simplification: the
    coarse candidates that would take the depot in are passed over."""
    near = circle(0, 140, 120, 90)  # its edge 20 m north of the depot
    others = [circle(cx, cy, 100, 80) for cx, cy in [(900, 0), (-900, 0), (0, -900), (0, 900)]]
    rally = FRAME.to_latlon(0, 300)  # beyond the near zone
    zones = [feature("no-fly", p, name=f"z{k}") for k, p in enumerate([near, *others])]
    limits = build_limits(airspace(*zones), HOME, EASA, cruise_alt_m=30, rally_points=[rally])
    near_fence = stored(limits.fence.polygons[1])
    assert near_fence.covers(zone_xy(near))
    assert not near_fence.intersects(Point(0, 0))
    assert not any(
        stored(p).intersects(Point(*FRAME.to_xy(*rally))) for p in limits.fence.polygons[1:]
    )
    assert any("'z0'" in n for n in limits.notes)
