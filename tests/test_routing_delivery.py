"""Multi-drop deliveries: orders GeoJSON, plan_deliveries and its independent checker."""

from __future__ import annotations

import dataclasses
import json
import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shapely.geometry import Point, Polygon

from companion.config import FlightConfig
from companion.mission.plan import (
    DropLeg,
    HandoverStep,
    LandLeg,
    ReturnLeg,
    TakeoffLeg,
    TransitLeg,
    Waypoint,
)
from companion.routing.airspace import AirspaceError
from companion.routing.delivery import (
    DeliveryRefused,
    check_delivery_plan,
    plan_deliveries,
)
from companion.routing.energy import QUAD_4S_5000, SITL_COPTER, Battery
from companion.routing.frame import LocalFrame
from companion.routing.orders import Order, OrderError, parse_orders

HOME = (52.0, 4.0)
FRAME = LocalFrame(*HOME)


def lonlat(x: float, y: float) -> list[float]:
    lat, lon = FRAME.to_latlon(x, y)
    return [lon, lat]


def ring(xy: list[tuple[float, float]]) -> list[list[float]]:
    return [lonlat(*p) for p in [*xy, xy[0]]]


def square(cx: float, cy: float, half: float) -> list[tuple[float, float]]:
    return [
        (cx - half, cy - half),
        (cx + half, cy - half),
        (cx + half, cy + half),
        (cx - half, cy + half),
    ]


def area(half: float = 2000.0, **props: object) -> dict:
    return {
        "type": "Feature",
        "properties": {"role": "operating-area", **props},
        "geometry": {"type": "Polygon", "coordinates": [ring(square(0, 0, half))]},
    }


def zone(name: str, xy: list[tuple[float, float]], **props: object) -> dict:
    return {
        "type": "Feature",
        "id": name,
        "properties": {"role": "no-fly", **props},
        "geometry": {"type": "Polygon", "coordinates": [ring(xy)]},
    }


def order(oid: str, x: float, y: float, mass: float = 0.3, **props: object) -> dict:
    return {
        "type": "Feature",
        "properties": {"order_id": oid, "mass_kg": mass, **props},
        "geometry": {"type": "Point", "coordinates": lonlat(x, y)},
    }


DEPOT = {
    "type": "Feature",
    "properties": {"depot": True},
    "geometry": {"type": "Point", "coordinates": lonlat(0, 0)},
}


def doc(*features: dict) -> str:
    return json.dumps({"type": "FeatureCollection", "features": list(features)})


def plan_of(*features: dict, frame=QUAD_4S_5000, **kw):
    of = parse_orders(doc(area(), DEPOT, *features))
    # A solution limit keeps big instances reproducible; the time limit ends small ones,
    # where guided local search finds few distinct solutions.
    kw.setdefault("solution_limit", 100)
    kw.setdefault("time_limit_s", 0.5)
    return of, plan_deliveries(of.airspace, of.orders, of.depot, frame, **kw)


# ---- the orders file --------------------------------------------------------------------------


def test_orders_file_holds_airspace_orders_and_depot() -> None:
    of = parse_orders(
        doc(
            area(),
            zone("park", square(500, 0, 100)),
            order("a", 1000, 0, 0.5, window=[0, 600], drone="d1"),
            order(7, -300, 200),
            DEPOT,
        )
    )
    assert [z.fid for z in of.airspace.zones] == ["park"]
    assert of.depot == pytest.approx(HOME)
    a, b = of.orders
    assert (a.order_id, a.mass_kg, a.window, a.drone) == ("a", 0.5, (0.0, 600.0), "d1")
    assert (b.order_id, b.window, b.drone) == ("7", None, None)
    assert (a.lat, a.lon) == pytest.approx(FRAME.to_latlon(1000, 0))


@pytest.mark.parametrize(
    "feature, fragment",
    [
        (order("a", 0, 10, mass=-1), "mass_kg must be above 0"),
        (order("a", 0, 10, mass=True), "mass_kg must be a number"),
        (order("a", 0, 10, window=[50, 10]), "window [50, 10]"),
        (order("a", 0, 10, window=[1]), "window must be [start, end]"),
        (order("a", 0, 10, drone=""), "drone must be a name"),
        (order("a", 0, 10, colour="red"), "unknown properties 'colour'"),
        ({**order("a", 0, 10), "geometry": {"type": "LineString", "coordinates": []}}, "Point"),
        (
            {**order("a", 0, 10), "geometry": {"type": "Point", "coordinates": [10**400, 2]}},
            "finite",
        ),
        ({**order("a", 0, 10), "properties": {"mass_kg": 1}}, "order_id must be"),
        ({**DEPOT, "properties": {"depot": "yes"}}, "depot: true"),
    ],
)
def test_bad_orders_are_refused_naming_the_feature(feature: dict, fragment: str) -> None:
    with pytest.raises(OrderError) as err:
        parse_orders(doc(area(), feature), origin="jobs.geojson")
    assert "jobs.geojson: feature 1" in str(err.value)
    assert fragment in str(err.value)


def test_repeated_order_ids_and_two_depots_are_refused() -> None:
    with pytest.raises(OrderError, match="order_id 'a' repeats feature 1"):
        parse_orders(doc(area(), order("a", 0, 10), order("a", 0, 20)))
    with pytest.raises(OrderError, match="more than one depot"):
        parse_orders(doc(area(), DEPOT, DEPOT))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    props=st.dictionaries(
        st.sampled_from(["order_id", "mass_kg", "window", "drone", "depot", "x"]), json_values
    ),
    coords=json_values,
)
def test_hostile_points_raise_only_a_named_error(props: dict, coords: object) -> None:
    feature = {
        "type": "Feature",
        "properties": props,
        "geometry": {"type": "Point", "coordinates": coords},
    }
    try:
        of = parse_orders(
            json.dumps({"type": "FeatureCollection", "features": [area(), feature]}, allow_nan=True)
        )
    except AirspaceError as err:
        assert "feature 1" in str(err) or "not JSON" in str(err)
    else:
        for o in of.orders:
            assert math.isfinite(o.mass_kg) and o.mass_kg > 0 and o.order_id


# ---- planning and checking --------------------------------------------------------------------


def random_instance(seed: int, drops: int = 50) -> list[dict]:
    rng = random.Random(seed)
    shapes: list[Polygon] = []
    features = []
    for i in range(8):
        cx, cy = rng.uniform(-1500, 1500), rng.uniform(-1500, 1500)
        k = rng.randint(3, 7)
        angles = sorted(rng.uniform(0, 2 * math.pi) for _ in range(k))
        poly = [
            (cx + rng.uniform(80, 250) * math.cos(a), cy + rng.uniform(80, 250) * math.sin(a))
            for a in angles
        ]
        shape = Polygon(poly)
        if not shape.is_valid or shape.area < 100 or shape.distance(Point(0, 0)) < 100:
            continue
        shapes.append(shape)
        features.append(zone(f"z{i}", poly))
    placed = 0
    while placed < drops:
        x, y = rng.uniform(-1850, 1850), rng.uniform(-1850, 1850)
        if any(s.buffer(45, join_style="mitre").covers(Point(x, y)) for s in shapes):
            continue
        features.append(order(f"o{placed}", x, y, round(rng.uniform(0.1, 0.6), 2)))
        placed += 1
    return features


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_fifty_drop_plans_pass_the_checker(seed: int) -> None:
    features = random_instance(seed)
    of, plan = plan_of(*features, solution_limit=50, time_limit_s=5.0)
    assert check_delivery_plan(plan, of.airspace, orders=of.orders) == []
    flown = sorted(o.order_id for s in plan.sorties for o in s.orders)
    assert flown == sorted(o.order_id for o in of.orders)
    budget = QUAD_4S_5000.battery.budget_mah
    for s in plan.sorties:
        legs = s.mission.legs
        assert isinstance(legs[0], TakeoffLeg) and isinstance(legs[-1], LandLeg)
        assert isinstance(legs[-2], ReturnLeg) and isinstance(legs[-3], TransitLeg)
        assert [d.drop_id for d in s.mission.drops()] == [o.order_id for o in s.orders]
        assert all(HandoverStep.RELEASE in d.steps for d in s.mission.drops())
        assert sum(o.mass_kg for o in s.orders) <= QUAD_4S_5000.max_payload_kg
        assert s.energy.can_fly and 0 < s.energy.charge_mah <= budget
    # The zones made detours: some transit bends around a corner.
    assert any(
        len(leg.waypoints) > 1
        for s in plan.sorties
        for leg in s.mission.legs
        if isinstance(leg, TransitLeg)
    )


def test_detour_waypoints_are_the_shortest_paths_corners() -> None:
    wall = zone("wall", [(400, -300), (600, -300), (600, 300), (400, 300)])
    of, plan = plan_of(wall, order("behind", 1000, 0))
    (sortie,) = plan.sorties
    out = sortie.mission.legs[1]
    # Around two corners of the wall grown by the 20 m margin, then to the drop.
    assert isinstance(out, TransitLeg) and len(out.waypoints) == 3
    corners = [FRAME.to_xy(wp.lat, wp.lon) for wp in out.waypoints[:2]]
    side = math.copysign(320, corners[0][1])
    assert corners == [pytest.approx((380, side), abs=0.1), pytest.approx((620, side), abs=0.1)]
    one_way = 2 * math.hypot(380, 320) + 240
    assert sortie.distance_m == pytest.approx(2 * one_way, rel=1e-4)
    assert check_delivery_plan(plan, of.airspace, orders=of.orders) == []


def test_checker_finds_a_leg_through_a_zone() -> None:
    wall = zone("wall", [(400, -300), (600, -300), (600, 300), (400, 300)])
    of, plan = plan_of(wall, order("behind", 1000, 0))
    (sortie,) = plan.sorties
    lat, lon = FRAME.to_latlon(1000, 0)
    straight = TransitLeg((Waypoint(lat, lon, 30.0),), to="drop behind")
    legs = (sortie.mission.legs[0], straight, *sortie.mission.legs[2:])
    bad = dataclasses.replace(sortie, mission=dataclasses.replace(sortie.mission, legs=legs))
    faults = check_delivery_plan(dataclasses.replace(plan, sorties=(bad,)), of.airspace)
    assert any("no-fly zone 'wall'" in f and "inside the 20 m margin" in f for f in faults)


def test_each_sortie_carries_the_autopilots_limits_and_its_energy_price() -> None:
    wall = zone("wall", [(400, -300), (600, -300), (600, 300), (400, 300)])
    _, plan = plan_of(wall, order("behind", 1000, 0), order("near", -300, 200))
    for sortie in plan.sorties:
        limits = sortie.mission.autopilot_limits
        assert limits is not None
        assert [p.inclusion for p in limits.fence.polygons] == [True, False]
        assert limits.params["FENCE_TYPE"] == 5
        energy = sortie.mission.energy
        assert energy is not None
        assert energy.charge_mah == pytest.approx(sortie.energy.charge_mah)
        assert energy.capacity_mah == plan.model.battery.capacity_mah
        assert energy.reserve_mah == pytest.approx(0.2 * energy.capacity_mah)


def test_a_fence_simplified_into_a_leg_is_refused_naming_the_drop() -> None:
    """A round 64-vertex zone that must shrink to a few fence vertices to fit a small
    flight controller's storage: the grown polygon reaches the leg that skirts the zone."""
    pond = [
        (500 + 200 * math.cos(2 * math.pi * k / 64), 200 * math.sin(2 * math.pi * k / 64))
        for k in range(64)
    ]
    of, plan = plan_of(zone("pond", pond), order("behind", 1000, 0))  # 70 items: it fits
    assert check_delivery_plan(plan, of.airspace, orders=of.orders) == []
    with pytest.raises(DeliveryRefused) as refused:
        plan_of(zone("pond", pond), order("behind", 1000, 0), fence_items=12)
    cuts = [r for r in refused.value.reasons if "(to drop behind)" in r]
    assert cuts and all("the autopilot's fence polygon 2 (exclusion)" in r for r in cuts)
    assert any("cuts it" in r for r in cuts)


def test_checker_finds_a_sortie_beyond_the_battery_and_a_missing_order() -> None:
    of, plan = plan_of(order("a", 1500, 1500), order("b", -1500, 1500))
    small = plan.model.with_battery(Battery(capacity_mah=1500.0, nominal_voltage_v=14.8))
    faults = check_delivery_plan(plan, of.airspace, orders=of.orders, model=small)
    assert any("above its 20% reserve" in f for f in faults)
    extra = Order("c", *FRAME.to_latlon(10, 10), 0.2)
    faults = check_delivery_plan(plan, of.airspace, orders=[*of.orders, extra])
    assert faults == ["orders never dropped: 'c'"]


def test_checker_finds_a_ceiling_breach() -> None:
    of, plan = plan_of(order("a", 500, 0))
    faults = check_delivery_plan(
        plan, of.airspace, profile=dataclasses.replace(plan.profile, ceiling_m=20.0)
    )
    assert any("above the easa-open ceiling of 20 m" in f for f in faults)


def test_energy_report_matches_the_energy_model() -> None:
    _, plan = plan_of(order("a", 400, 0, 1.0), frame=SITL_COPTER)
    (s,) = plan.sorties
    report = plan.report()
    assert report["sorties"][0]["charge_mah"] == pytest.approx(s.energy.charge_mah, abs=0.1)
    assert report["sorties"][0]["drops"] == ["a"]
    # One 1 kg parcel, 800 m out and back: between the bare SITL flight (1629 mAh for
    # 1000 m) and far below the whole pack.
    assert 800 < s.energy.charge_mah < 2500


def test_capacity_splits_into_sorties_and_windows_order_the_drops() -> None:
    _, plan = plan_of(order("a", 800, 0, 0.6), order("b", -800, 0, 0.6), order("c", 0, 800, 0.3))
    assert len(plan.sorties) == 2
    _, plan = plan_of(
        order("far", 1500, 0, 0.2),
        order("near", 300, 0, 0.2, window=[0, 90]),
    )
    assert plan.sorties[0].orders[0].order_id == "near"


def test_a_drop_reached_before_its_window_opens_waits_over_it() -> None:
    """A first drop whose window closes early pins the take-off near 0; the second is
    reached before its window opens, so the sortie hovers over it until then."""
    of, plan = plan_of(
        order("first", 200, 0, 0.3, window=[0, 60]),
        order("late", 400, 0, 0.3, window=[200, 400]),
    )
    (sortie,) = plan.sorties
    first, drop = sortie.mission.drops()
    assert first.not_before_s is None and drop.drop_id == "late"
    assert drop.not_before_s == pytest.approx(200 - sortie.start_s)
    labels = [leg.label for leg in sortie.energy.legs]
    wait = sortie.energy.legs[labels.index("waiting for drop late's window")]
    descent = labels.index("descent at drop late")
    reached = sum(leg.time_s for leg in sortie.energy.legs[:descent])
    assert reached == pytest.approx(200.0 - sortie.start_s) and wait.time_s > 30
    assert wait.charge_mah > 0
    assert check_delivery_plan(plan, of.airspace, orders=of.orders) == []
    # The same sortie without the wait would drop before anyone is there: the checker says so.
    early = dataclasses.replace(drop, not_before_s=None)
    legs = tuple(early if leg is drop else leg for leg in sortie.mission.legs)
    bad = dataclasses.replace(sortie, mission=dataclasses.replace(sortie.mission, legs=legs))
    faults = check_delivery_plan(dataclasses.replace(plan, sorties=(bad,)), of.airspace,
                                 orders=of.orders)  # fmt: skip
    assert any("drop 'late' descends at" in f and "before its window opens at 200" in f
               for f in faults)  # fmt: skip


def test_orders_for_a_named_drone_fly_on_it() -> None:
    _, plan = plan_of(order("a", 800, 0, drone="north"), order("b", -800, 0))
    drones = {o.order_id: s.drone for s in plan.sorties for o in s.orders}
    assert drones == {"a": "north", "b": "drone 1"}
    _, plan = plan_of(*(order(f"o{i}", 300 * i - 1500, 900) for i in range(10)), drones=2)
    assert {s.drone for s in plan.sorties} <= {"drone 1", "drone 2"}


# ---- refusals before take-off -----------------------------------------------------------------


def refused(*features: dict, **kw) -> str:
    with pytest.raises(DeliveryRefused) as err:
        plan_of(*features, **kw)
    return str(err.value)


def test_drop_inside_a_zone_is_refused() -> None:
    msg = refused(zone("school", square(800, 0, 100)), order("ok", -500, 0), order("x", 800, 0))
    assert "drop 'x'" in msg and "inside no-fly zone 'school'" in msg and "'ok'" not in msg


def test_drop_walled_off_by_zones_is_refused() -> None:
    ring_zone = zone("ring", [(900, -300), (1500, -300), (1500, 300), (900, 300)])
    ring_zone["geometry"]["coordinates"].append(ring(square(1200, 0, 200)))
    msg = refused(ring_zone, order("moat", 1200, 0))
    assert "drop 'moat'" in msg and "walled off" in msg


def test_drop_beyond_the_battery_is_refused() -> None:
    small = Battery(capacity_mah=1200.0, nominal_voltage_v=14.8, usable_fraction=0.9)
    msg = refused(order("near", 100, 0), order("far", 1900, 1900), battery=small)
    assert "drop 'far': beyond the battery's range" in msg and "20% reserve" in msg
    assert "'near'" not in msg


def test_cruise_above_the_profile_ceiling_is_refused() -> None:
    msg = refused(order("a", 500, 0), flight=FlightConfig(altitude_ceiling_m=200, cruise_alt_m=150))
    assert "drop 'a': cruise altitude 150 m is above the easa-open ceiling of 120 m" in msg
    msg = refused(
        order("a", 500, 0),
        profile="faa-part107",
        flight=FlightConfig(altitude_ceiling_m=200, cruise_alt_m=130),
    )
    assert "faa-part107 ceiling of 121.92 m" in msg


def test_cruise_above_a_zone_floor_over_the_drop_is_refused() -> None:
    msg = refused(zone("tma", square(800, 0, 300), floor_m=20), order("a", 800, 0))
    assert "drop 'a': cruise altitude 30 m is above the 20 m floor of no-fly zone 'tma'" in msg


def test_zone_floor_above_cruise_is_flown_under() -> None:
    of, plan = plan_of(zone("high", square(800, 0, 300), floor_m=60), order("a", 800, 0))
    assert check_delivery_plan(plan, of.airspace, orders=of.orders) == []


def test_parcel_over_capacity_is_refused() -> None:
    msg = refused(order("light", 200, 0, 0.5), order("heavy", 300, 0, 1.5))
    assert "drop 'heavy': parcel 1.5 kg is over airframe quad-4s-5000's 1 kg" in msg
    assert "'light'" not in msg


def test_window_closing_before_take_off_is_refused() -> None:
    msg = refused(order("a", 500, 0, window=[0, 5]))
    assert "drop 'a': its window closes at 5 s, before the take-off" in msg


def test_drop_in_the_area_margin_is_refused() -> None:
    msg = refused(order("edge", 1995, 0))
    assert "drop 'edge'" in msg and "operating area" in msg


def test_drop_points_and_ids_are_checked_once_more() -> None:
    of, plan = plan_of(order("a", 500, 0))
    (s,) = plan.sorties
    drop = s.mission.drops()[0]
    moved = DropLeg(
        drop.drop_id, drop.lat + 0.001, drop.lon, drop.handover_alt_m, drop.cruise_alt_m
    )
    legs = tuple(moved if leg is drop else leg for leg in s.mission.legs)
    bad = dataclasses.replace(s, mission=dataclasses.replace(s.mission, legs=legs))
    faults = check_delivery_plan(
        dataclasses.replace(plan, sorties=(bad,)), of.airspace, orders=of.orders
    )
    assert "sortie-1 (drone 1): drop 'a' is not at its order's point" in faults


# ---- skycourier plan ORDERS.geojson -----------------------------------------------------------


def test_cli_plans_an_orders_file_prints_json_and_draws_the_map(tmp_path, capsys) -> None:
    from companion.cli import main

    job = tmp_path / "orders.geojson"
    wall = zone("wall", [(400, -300), (600, -300), (600, 300), (400, 300)])
    job.write_text(doc(area(), DEPOT, wall, order("a", 1000, 0, 0.5), order("b", -600, 400, 0.4)))
    png = tmp_path / "map.png"
    argv = ["plan", str(job), "--json", "--png", str(png), "--airframe", "quad-4s-5000"]
    assert main([*argv, "--profile", "faa-part107", "--time-limit", "0.5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["airframe"] == "quad-4s-5000" and report["profile"] == "faa-part107"
    assert sorted(d for s in report["sorties"] for d in s["drops"]) == ["a", "b"]
    for s in report["sorties"]:
        assert (
            s["charge_mah"] > 0 and s["margin_mah"] > 0 and s["waypoints"][0] == s["waypoints"][-1]
        )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert main(["plan", str(job), "--airframe", "quad-4s-5000", "--time-limit", "0.5"]) == 0
    text = capsys.readouterr().out
    assert (
        "2 drops in" in text
        and "mAh above the reserve" in text
        and "easa-open ceiling 120 m" in text
    )


def test_cli_refusals_name_the_drop(tmp_path, capsys) -> None:
    from companion.cli import main

    job = tmp_path / "orders.geojson"
    job.write_text(doc(area(), DEPOT, zone("school", square(800, 0, 100)), order("x", 800, 0)))
    assert main(["plan", str(job)]) == 2
    err = capsys.readouterr().err
    assert "refused before take-off" in err and "drop 'x'" in err and "school" in err
    # The SITL airframe's 3300 mAh pack does not reach 1.2 km out and back with a parcel.
    job.write_text(doc(area(), DEPOT, order("far", 1200, 0, 0.5)))
    assert main(["plan", str(job), "--airframe", "sitl-copter"]) == 2
    assert "drop 'far': beyond the battery's range" in capsys.readouterr().err
    job.write_text(doc(area(), order("x", 800, 0)))
    assert main(["plan", str(job)]) == 2
    assert "no depot" in capsys.readouterr().err
    job.write_text("{not json")
    assert main(["plan", str(job)]) == 2
    assert "not JSON" in capsys.readouterr().err
    assert main(["plan", str(tmp_path / "missing.geojson")]) == 2
    assert "cannot read" in capsys.readouterr().err
