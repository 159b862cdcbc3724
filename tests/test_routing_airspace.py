"""Airspace GeoJSON parsing (hostile input) and the regulatory ceiling check."""

from __future__ import annotations

import contextlib
import copy
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion.routing import geojson
from companion.routing.airspace import (
    PROFILES,
    AirspaceError,
    AltitudeLeg,
    CeilingError,
    altitude_violations,
    check_altitudes,
    regulatory_profile,
)
from companion.routing.frame import LocalFrame
from companion.routing.geojson import load_airspace, parse_airspace

HOME = (52.0, 4.0)
FRAME = LocalFrame(*HOME)


def ring(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    """A closed rectangle ring in GeoJSON [lon, lat] from local-frame metres."""
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
    return [list(reversed(FRAME.to_latlon(x, y))) for x, y in corners]


def feature(role: str | None, coords: object, gtype: str = "Polygon", **props: object) -> dict:
    if role is not None:
        props["role"] = role
    return {
        "type": "Feature",
        "properties": props,
        "geometry": {"type": gtype, "coordinates": coords},
    }


def collection(*features: dict) -> dict:
    return {"type": "FeatureCollection", "features": list(features)}


AREA = feature("operating-area", [ring(-3000, -3000, 3000, 3000)])


def valid_doc() -> dict:
    return collection(
        AREA,
        {**feature("no-fly", [ring(400, -100, 600, 100)], floor_m=0), "id": "stadium"},
        feature(
            "no-fly",
            [[ring(-900, -900, -700, -700)], [ring(-500, 500, -300, 700)]],
            "MultiPolygon",
            name="school",
            floor_m=60,
            ceiling_m=200,
        ),
        feature(None, list(reversed(FRAME.to_latlon(100, 100))), "Point", parcel="p1"),
    )


def test_valid_file_parses_zones_area_and_others() -> None:
    airspace = parse_airspace(json.dumps(valid_doc()))
    assert airspace.area.index == 0
    assert [(z.index, z.fid, z.floor_m, z.ceiling_m) for z in airspace.zones] == [
        (1, "stadium", 0.0, None),
        (2, "school", 60.0, 200.0),
    ]
    assert airspace.zones[1].footprint.geom_type == "MultiPolygon"
    assert [i for i, _ in airspace.others] == [3]
    assert [z.index for z in airspace.zones_reached_at(50.0)] == [1]
    area_m2 = FRAME.project(airspace.area.footprint).area
    assert area_m2 == pytest.approx(36e6, rel=1e-6)


def _open_ring() -> dict:
    r = [*ring(0, 0, 100, 100)[:-1], ring(0, 0, 100, 100)[1]]
    return collection(AREA, feature("no-fly", [r]))


def _bowtie() -> dict:
    r = ring(0, 0, 100, 100)
    r[1], r[2] = r[2], r[1]
    return collection(AREA, {**feature("no-fly", [r]), "id": "bow"})


def _with_position(value: object) -> dict:
    r = ring(0, 0, 100, 100)
    r[2] = value
    return collection(AREA, feature("no-fly", [r]))


CASES = {
    "truncated": ('{"type": "FeatureCollection", "features": [', "not JSON"),
    "nan": ('{"type": "FeatureCollection", "features": [NaN]}', "NaN is not a JSON number"),
    "bad utf8": (b'{"type": "\xff\xfe\xff"}', "not JSON"),
    "deep": ("[" * 100_000 + "]" * 100_000, "not JSON"),
    "not a collection": (json.dumps({"type": "Feature"}), "FeatureCollection"),
    "features not list": (json.dumps({"type": "FeatureCollection", "features": {}}), "list"),
    "feature not object": (json.dumps(collection(AREA, 7)), "feature 1: not a GeoJSON Feature"),
    "open ring": (json.dumps(_open_ring()), "feature 1 ring 0: ring is not closed"),
    "self-intersecting": (json.dumps(_bowtie()), "feature 1 ('bow'): invalid polygon: Self"),
    "nan coordinate": (
        json.dumps(_with_position([4.0, math.nan])).replace("NaN", "1e999"),
        "finite",
    ),
    "string coordinate": (json.dumps(_with_position(["4", 52])), "coordinates must be numbers"),
    "bool coordinate": (json.dumps(_with_position([True, 52])), "coordinates must be numbers"),
    "huge integer": (json.dumps(_with_position([10**400, 52])), "finite"),
    "latitude range": (json.dumps(_with_position([4.0, 91.0])), "outside lon -180..180"),
    "longitude range": (json.dumps(_with_position([181.0, 52.0])), "outside lon -180..180"),
    "short position": (json.dumps(_with_position([4.0])), "position 2: a position must be"),
    "too few positions": (
        json.dumps(collection(AREA, feature("no-fly", [ring(0, 0, 1, 1)[:3]]))),
        "at least 4 positions",
    ),
    "too many vertices": (
        json.dumps(
            collection(
                AREA,
                feature("no-fly", [[[4.0, 52.0]] * (geojson.MAX_RING_VERTICES + 1)], name="spiky"),
            )
        ),
        "feature 1 ('spiky') ring 0: 10001 positions, more than the 10000 allowed",
    ),
    "no area": (json.dumps(collection(feature("no-fly", [ring(0, 0, 9, 9)]))), "found: none"),
    "two areas": (json.dumps(collection(AREA, AREA)), "found: 0, 1"),
    "unknown role": (
        json.dumps(collection(AREA, feature("danger", [ring(0, 0, 9, 9)]))),
        "feature 1: 'role' must be one of",
    ),
    "polygon without role": (
        json.dumps(collection(AREA, feature(None, [ring(0, 0, 9, 9)]))),
        "feature 1: 'role' must be one of",
    ),
    "zone as point": (
        json.dumps(collection(AREA, feature("no-fly", [4.0, 52.0], "Point"))),
        "needs a Polygon or MultiPolygon",
    ),
    "ceiling under floor": (
        json.dumps(
            collection(AREA, feature("no-fly", [ring(0, 0, 9, 9)], floor_m=50, ceiling_m=40))
        ),
        "ceiling_m (40) must be above floor_m (50)",
    ),
    "string floor": (
        json.dumps(collection(AREA, feature("no-fly", [ring(0, 0, 9, 9)], floor_m="0"))),
        "floor_m must be numbers",
    ),
    "unknown property": (
        json.dumps(collection(AREA, feature("no-fly", [ring(0, 0, 9, 9)], floor_ft=10))),
        "unknown properties 'floor_ft'",
    ),
    "area multipolygon": (
        json.dumps(collection(feature("operating-area", [[ring(0, 0, 9, 9)]], "MultiPolygon"))),
        "single Polygon",
    ),
    "no area size": (
        json.dumps(collection(AREA, feature("no-fly", [ring(0, 0, 0, 0)]))),
        "feature 1",
    ),
    "overlapping multipolygon": (
        json.dumps(
            collection(
                AREA, feature("no-fly", [[ring(0, 0, 9, 9)], [ring(5, 5, 20, 20)]], "MultiPolygon")
            )
        ),
        "feature 1: invalid geometry",
    ),
    "bad id": (
        json.dumps(collection(AREA, {**feature("no-fly", [ring(0, 0, 9, 9)]), "id": [1]})),
        "feature 1: 'id'/'name' must be",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input_is_refused_naming_the_problem(name: str) -> None:
    text, expected = CASES[name]
    with pytest.raises(AirspaceError) as err:
        parse_airspace(text, origin="zones.geojson")
    assert str(err.value).startswith("zones.geojson: ")
    assert expected in str(err.value)


def test_huge_input_refused_unparsed(tmp_path) -> None:
    with pytest.raises(AirspaceError, match="more than the 8388608 allowed"):
        parse_airspace(" " * (geojson.MAX_BYTES + 1))
    big = tmp_path / "big.geojson"
    with big.open("wb") as f:
        f.truncate(geojson.MAX_BYTES + 1)  # sparse: refused from its size, never read
    with pytest.raises(AirspaceError, match=r"big.geojson: 8388609 bytes"):
        load_airspace(big)
    with pytest.raises(AirspaceError, match="cannot read"):
        load_airspace(tmp_path / "missing.geojson")
    good = tmp_path / "zones.geojson"
    good.write_text(json.dumps(valid_doc()))
    assert len(load_airspace(good).zones) == 2


JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.sampled_from(["Feature", "FeatureCollection", "Polygon", "MultiPolygon", "no-fly"]),
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(
            st.sampled_from(
                ["type", "features", "geometry", "coordinates", "properties", "role", "id", "x"]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSONISH)
def test_arbitrary_json_raises_only_airspace_error(doc: object) -> None:
    with contextlib.suppress(AirspaceError):
        geojson.airspace_from_geojson(doc)
    with contextlib.suppress(AirspaceError):
        parse_airspace(json.dumps(doc))


def _mutations(draw: st.DrawFn) -> object:
    """A valid document with one value somewhere inside replaced by arbitrary JSON."""
    doc = copy.deepcopy(valid_doc())
    node: object = doc
    path: list[object] = []
    while True:
        children = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        if not children or draw(st.integers(0, 4)) == 0:
            break
        key, child = children[draw(st.integers(0, len(children) - 1))]
        if not isinstance(child, (dict, list)):
            path.append(key)
            break
        path.append(key)
        node = child
    if not path:
        return draw(JSONISH)
    target: object = doc
    for key in path[:-1]:
        target = target[key]  # type: ignore[index]
    target[path[-1]] = draw(JSONISH)  # type: ignore[index]
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.composite(_mutations)())
def test_mutated_valid_file_raises_only_airspace_error(doc: object) -> None:
    with contextlib.suppress(AirspaceError):
        parse_airspace(json.dumps(doc))


@given(st.binary(max_size=200))
@settings(max_examples=200, deadline=None)
def test_arbitrary_bytes_raise_only_airspace_error(data: bytes) -> None:
    with pytest.raises(AirspaceError):
        parse_airspace(data)


def test_profiles_carry_the_legal_ceilings() -> None:
    assert PROFILES["faa-part107"].ceiling_m == pytest.approx(121.92)
    assert PROFILES["easa-open"].ceiling_m == 120.0
    assert PROFILES["dgca"].ceiling_m == pytest.approx(121.92)
    with pytest.raises(AirspaceError, match=r"unknown regulatory profile 'faa'.*dgca"):
        regulatory_profile("faa")


def _leg(label: str, alt: float, *xy: tuple[float, float]) -> AltitudeLeg:
    return AltitudeLeg(label, tuple(FRAME.to_latlon(x, y) for x, y in xy), alt)


def test_ceiling_check_refuses_legs_above_profile_and_zone_limits() -> None:
    airspace = parse_airspace(json.dumps(valid_doc()))
    easa, faa = regulatory_profile("easa-open"), regulatory_profile("faa-part107")
    ok = [_leg("depot -> drop 1", 100, (0, 0), (0, 2000))]
    check_altitudes(ok, easa, airspace, FRAME)
    high = [_leg("depot -> drop 1", 121, (0, 0), (0, 2000))]
    with pytest.raises(CeilingError) as err:
        check_altitudes(high, easa, airspace, FRAME)
    assert "leg 'depot -> drop 1' at 121 m is above the easa-open ceiling of 120 m" in str(
        err.value
    )
    check_altitudes(high, faa, airspace, FRAME)  # 121 m < 400 ft
    assert altitude_violations([_leg("x", 122, (0, 0))], faa, airspace, FRAME)
    # Under the school's zone (closed from 60 m): 50 m passes, 70 m is refused.
    under = _leg("drop 2 -> drop 3", 50, (-1000, -800), (-600, -800))
    check_altitudes([under], easa, airspace, FRAME)
    over = _leg("drop 2 -> drop 3", 70, (-1000, -800), (-600, -800))
    (message,) = altitude_violations([over], easa, airspace, FRAME)
    assert "leg 'drop 2 -> drop 3' at 70 m enters no-fly zone 'school' (feature 2)" in message
    assert "below 60 m" in message
    # Any height through the stadium zone (from the ground) is refused.
    through = _leg("drop 4 -> depot", 30, (300, 0), (700, 0))
    assert (
        "no-fly zone 'stadium' (feature 1)"
        in altitude_violations([through], easa, airspace, FRAME)[0]
    )
    assert (
        "not a height"
        in altitude_violations([_leg("y", math.nan, (0, 0))], easa, airspace, FRAME)[0]
    )


def test_operating_area_ceiling_is_checked() -> None:
    doc = valid_doc()
    doc["features"][0] = feature("operating-area", [ring(-3000, -3000, 3000, 3000)], ceiling_m=60)
    airspace = parse_airspace(json.dumps(doc))
    (message,) = altitude_violations(
        [_leg("depot -> drop 1", 80, (0, 0), (0, 900))],
        regulatory_profile("dgca"),
        airspace,
        FRAME,
    )
    assert "above the operating area's ceiling of 60 m" in message
