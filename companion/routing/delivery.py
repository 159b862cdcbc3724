"""Multi-drop deliveries: orders, airspace and battery in, missions for the mission core out.

`plan_deliveries` joins the routing parts: the router's shortest paths around the zones
(distance matrix, then each flown arc's corners as waypoints), the energy model (an energy
matrix in mAh that bounds every arc whatever the drone still carries) and the planner
(payload capacity, the battery's budget above its reserve, time windows, several drones and
sorties). Each sortie becomes a `MissionPlan` (take-off, transit legs through the path's
corners, each drop with its hand-over steps, a transit home around the zones, RTL, land),
priced leg by leg with `legs_from_mission`, and the whole plan is then proven by
`check_delivery_plan` from its final waypoints before it is returned.

Why the energy matrix bounds the flight: the charge of arc i->j is priced at the heaviest
load the drone can have aboard on it (the capacity leaving the depot, the capacity less
drop i's parcel after drop i, nothing flying home), with the worst wind direction, and the
drop's descent, hand-over and climb at the heaviest load too; power only grows with mass,
so a sortie within the matrix's budget is within the battery's. Take-off, RTL's climb and
loiter and the landing are fixed per sortie and come off the budget first.

Refusals come before take-off, as `DeliveryRefused` naming every drop and its reason: a
parcel over the airframe's payload, a cruise altitude above the profile's or the operating
area's ceiling or above the floor of a zone over the drop, a drop inside a zone or walled
off, a round trip beyond the battery, and drops the planner cannot fit.

Time windows are seconds from departure (the take-off command). The planner is given each
arc's flying time as the energy model times it (cruise speed with the autopilot's ramps at
every waypoint), so it minimises flight time and its arrivals are the mission's; where it
arrives before a window opens, the drop leg holds over the drop at cruise altitude until
then (`DropLeg.not_before_s`), and the wait is priced as a hover. The planner also leaves
the depot as late as the windows allow (a wait on the ground costs nothing): a sortie's
`start_s` is when it must take off, since its mission counts the waits from its own
take-off command. The checker recomputes each arrival from the priced legs, the waits
included, against both ends of the window.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import shapely
from shapely.geometry import LineString, Point, Polygon
from shapely.geometry.base import BaseGeometry

from companion.config import FlightConfig
from companion.geo import distance_m as geo_distance_m
from companion.mission.plan import (
    DEFAULT_HANDOVER,
    DropLeg,
    EnergyBudget,
    LandLeg,
    MissionPlan,
    ReturnLeg,
    TakeoffLeg,
    TransitLeg,
    Waypoint,
    limits_from_config,
    speeds_from_config,
)
from companion.routing.airspace import (
    Airspace,
    AirspaceError,
    AltitudeLeg,
    RegulatoryProfile,
    UnreachableError,
    altitude_violations,
    regulatory_profile,
)
from companion.routing.energy import (
    CALM,
    Airframe,
    Battery,
    EnergyInputError,
    EnergyModel,
    FlightProfile,
    PlanEnergy,
    Wind,
    climb,
    descent,
    hover,
    land,
    legs_from_mission,
    return_home,
    takeoff,
    transit,
)
from companion.routing.frame import LocalFrame
from companion.routing.limits import LimitsError, build_limits, stored_xy
from companion.routing.orders import Order
from companion.routing.paths import DEFAULT_MARGIN_M, AirspaceRouter
from companion.routing.planner import PlanError, RoutingProblem, plan_routes
from firmware_bridge.fence import FENCE_MAX_ITEMS, AutopilotLimits

#: Metres of slack in the checker's clearance tests: the waypoints go through lat/lon and
#: back, and the router keeps `margin - 0.01 m` (paths.EPS_M).
CLEARANCE_TOLERANCE_M = 0.05
#: Battery swap and reload between two sorties of one drone (the planner's turnaround adds
#: the landing and the next take-off to it).
DEFAULT_SWAP_S = 120.0
#: How far every flown line keeps from the uploaded fence (its exclusion polygons and the
#: inclusion polygon's edge), which is simplified to fit the flight controller and may reach
#: closer to a leg than the zone itself: FENCE_MARGIN (5 m in delivery-copter.parm) plus as
#: much again for position error and overshoot, the OA_MARGIN_MAX the autopilot's own return
#: keeps its detour points out. Closer, the fence cuts the leg.
FENCE_CLEARANCE_M = 10.0


class DeliveryRefused(AirspaceError):
    """The delivery cannot be flown; `reasons` lists each problem, naming its drop."""

    def __init__(self, reasons: Sequence[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = tuple(reasons)


@dataclass(frozen=True)
class DeliverySortie:
    """One flight: its drone, its orders in drop order, the mission the core flies, the
    arcs' paths as (lat, lon) points (depot, corners, drop, ... home), the distance by those
    paths, its priced legs, and its planned start (seconds from the first departure)."""

    drone: str
    orders: tuple[Order, ...]
    mission: MissionPlan
    paths: tuple[tuple[tuple[float, float], ...], ...]
    distance_m: float
    energy: PlanEnergy
    start_s: float

    @property
    def parcels_kg(self) -> dict[str, float]:
        return {o.order_id: o.mass_kg for o in self.orders}


@dataclass(frozen=True)
class DeliveryPlan:
    """Every sortie, and what they were planned against (for the checker and the report)."""

    depot: tuple[float, float]
    sorties: tuple[DeliverySortie, ...]
    model: EnergyModel
    profile: RegulatoryProfile
    margin_m: float
    handover_extra_s: float = 0.0
    distance_m: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "distance_m", sum(s.distance_m for s in self.sorties))

    def report(self) -> dict[str, object]:
        """JSON-ready summary: per sortie the drop order, distance, time, charge and margin."""
        battery = self.model.battery
        return {
            "depot": list(self.depot),
            "airframe": self.model.frame.name,
            "profile": self.profile.name,
            "ceiling_m": self.profile.ceiling_m,
            "safety_margin_m": self.margin_m,
            "capacity_mah": battery.capacity_mah,
            "reserve_mah": round(battery.reserve_mah, 1),
            "distance_m": round(self.distance_m, 1),
            "charge_mah": round(sum(s.energy.charge_mah for s in self.sorties), 1),
            "sorties": [
                {
                    "mission_id": s.mission.mission_id,
                    "drone": s.drone,
                    "start_s": round(s.start_s, 1),
                    "drops": [o.order_id for o in s.orders],
                    "load_kg": round(sum(o.mass_kg for o in s.orders), 3),
                    "distance_m": round(s.distance_m, 1),
                    "time_s": round(s.energy.time_s, 1),
                    "energy_wh": round(s.energy.energy_wh, 2),
                    "charge_mah": round(s.energy.charge_mah, 1),
                    "margin_mah": round(s.energy.margin_mah, 1),
                    "remaining_pct": round(100.0 * s.energy.remaining_fraction, 1),
                    "waypoints": [[round(a, 7), round(b, 7)] for a, b in _sortie_points(s)],
                }
                for s in self.sorties
            ],
        }


def flight_profile(flight: FlightConfig) -> FlightProfile:
    """How the energy model sees the `[flight]` speeds."""
    return FlightProfile(
        cruise_mps=flight.cruise_speed_mps,
        climb_mps=flight.climb_rate_mps,
        descent_mps=flight.descent_rate_mps,
        land_mps=flight.land_speed_mps,
        land_slow_alt_m=flight.land_speed_high_alt_m,
    )


def plan_deliveries(
    airspace: Airspace,
    orders: Sequence[Order],
    depot: tuple[float, float],
    airframe: Airframe,
    battery: Battery | None = None,
    profile: RegulatoryProfile | str = "easa-open",
    *,
    flight: FlightConfig | None = None,
    wind: Wind = CALM,
    margin_m: float = DEFAULT_MARGIN_M,
    drones: int = 1,
    swap_s: float = DEFAULT_SWAP_S,
    handover_extra_s: float = 0.0,
    mission_prefix: str = "sortie",
    time_limit_s: float | None = None,
    solution_limit: int | None = None,
    fence_items: int = FENCE_MAX_ITEMS,
) -> DeliveryPlan:
    """Plan every order into sorties from `depot` (lat, lon) and prove the result.

    Orders naming a `drone` are planned on that drone alone; the others on a fleet of
    `drones` drones ("drone 1", ...). Every sortie carries the autopilot's limits for the
    airspace (`build_limits`, a fence of at most `fence_items` items: the flight controller's
    storage) and its energy price, which its preflight uploads and checks before arming.
    Raises `DeliveryRefused` naming each drop that cannot be served and why; a plan that
    `check_delivery_plan` faults is refused too (never returned), a fence that would cut a
    leg included."""
    if isinstance(profile, str):
        profile = regulatory_profile(profile)
    flight = flight or FlightConfig()
    model = EnergyModel(airframe, flight_profile(flight), wind)
    if battery is not None:
        model = model.with_battery(battery)
    if not orders:
        raise DeliveryRefused(["no orders to deliver"])
    ids = [o.order_id for o in orders]
    if len(set(ids)) != len(ids):
        raise DeliveryRefused([f"order ids repeat: {sorted({i for i in ids if ids.count(i) > 1})}"])
    if drones < 1:
        raise DeliveryRefused([f"a fleet needs at least one drone, got {drones}"])
    cruise = flight.cruise_alt_m
    _refuse(_precheck(airspace, orders, depot, airframe, profile, cruise))
    router = AirspaceRouter(airspace, depot, margin_m=margin_m, cruise_alt_m=cruise)
    names = [f"drop {o.order_id!r}" for o in orders]
    reasons = []
    for o, name in zip(orders, names, strict=True):
        try:
            router.locate(o.lat, o.lon, name)
        except UnreachableError as err:
            reasons.append(str(err))
    try:
        router.locate(*depot, "the depot")
    except UnreachableError as err:
        reasons.insert(0, str(err))
    _refuse(reasons)

    groups: dict[str | None, list[int]] = {}
    for i, o in enumerate(orders):
        groups.setdefault(o.drone, []).append(i)
    sorties: list[DeliverySortie] = []
    for drone, members in sorted(groups.items(), key=lambda kv: (kv[0] is not None, kv[0] or "")):
        group = [orders[i] for i in members]
        try:
            planned = _plan_group(
                router,
                group,
                depot,
                model,
                flight,
                drone,
                drones,
                swap_s,
                handover_extra_s,
                time_limit_s,
                solution_limit,
            )
        except EnergyInputError as err:
            raise DeliveryRefused([str(err)]) from None
        sorties.extend(planned)
    try:
        limits = build_limits(airspace, depot, profile, cruise_alt_m=cruise, max_items=fence_items)
    except LimitsError as err:
        raise DeliveryRefused([f"the autopilot's limits cannot be built: {err}"]) from None
    battery_model = model.battery
    numbered = tuple(
        replace(
            s,
            mission=replace(
                s.mission,
                mission_id=f"{mission_prefix}-{k}",
                autopilot_limits=limits,
                energy=EnergyBudget(
                    charge_mah=s.energy.charge_mah,
                    reserve_mah=battery_model.reserve_mah,
                    capacity_mah=battery_model.capacity_mah,
                ),
            ),
        )
        for k, s in enumerate(sorties, 1)
    )
    plan = DeliveryPlan(depot, numbered, model, profile, margin_m, handover_extra_s)
    faults = check_delivery_plan(plan, airspace, orders=orders)
    if faults:
        raise DeliveryRefused(["the plan failed its feasibility check", *faults])
    return plan


def _refuse(reasons: Sequence[str]) -> None:
    if reasons:
        raise DeliveryRefused(reasons)


def _precheck(
    airspace: Airspace,
    orders: Sequence[Order],
    depot: tuple[float, float],
    airframe: Airframe,
    profile: RegulatoryProfile,
    cruise: float,
) -> list[str]:
    """Refusals that need no route: payload and ceilings, each naming its drop."""
    reasons = []
    frame = LocalFrame(*depot)
    for o in orders:
        name = f"drop {o.order_id!r}"
        if o.mass_kg > airframe.max_payload_kg:
            reasons.append(
                f"{name}: parcel {o.mass_kg:g} kg is over airframe {airframe.name}'s "
                f"{airframe.max_payload_kg:g} kg payload capacity"
            )
        if cruise > profile.ceiling_m:
            reasons.append(
                f"{name}: cruise altitude {cruise:g} m is above the {profile.name} ceiling of "
                f"{profile.ceiling_m:g} m ({profile.rule})"
            )
        if airspace.area.ceiling_m is not None and cruise > airspace.area.ceiling_m:
            reasons.append(
                f"{name}: cruise altitude {cruise:g} m is above the operating area's ceiling "
                f"of {airspace.area.ceiling_m:g} m"
            )
        here = frame.project(Point(o.lon, o.lat))
        for zone in airspace.zones:
            if 0 < zone.floor_m <= cruise and frame.project(zone.footprint).covers(here):
                reasons.append(
                    f"{name}: cruise altitude {cruise:g} m is above the {zone.floor_m:g} m "
                    f"floor of {zone.label} over the drop: the ceiling there is "
                    f"{zone.floor_m:g} m"
                )
    return reasons


def _plan_group(
    router: AirspaceRouter,
    group: Sequence[Order],
    depot: tuple[float, float],
    model: EnergyModel,
    flight: FlightConfig,
    drone: str | None,
    fleet: int,
    swap_s: float,
    handover_extra_s: float,
    time_limit_s: float | None,
    solution_limit: int | None,
) -> list[DeliverySortie]:
    """Plan one drone's orders (or the fleet's unassigned ones) into sorties."""
    names = [f"drop {o.order_id!r}" for o in group]
    points = [depot, *((o.lat, o.lon) for o in group)]
    try:
        dist = router.distance_matrix(points, ["the depot", *names])
    except UnreachableError as err:
        raise DeliveryRefused([str(err)]) from None
    n = len(group)
    paths = _arc_paths(router, points, dist)
    frame = model.frame
    cruise, hand = flight.cruise_alt_m, flight.handover_alt_m
    total = sum(o.mass_kg for o in group)
    full = min(frame.max_payload_kg, total)
    fixed = (
        model.leg(takeoff(cruise, full)).charge_mah
        + model.leg(return_home(0.0, 0.0)).charge_mah
        + model.leg(land(cruise, 0.0)).charge_mah
    )
    budget = model.battery.budget_mah - fixed
    hold = flight.release_hold_s + handover_extra_s
    service_mah, service_s = [], []
    for o in group:
        after = max(0.0, full - o.mass_kg)
        legs = [descent(cruise - hand, full), hover(hold, after), climb(cruise - hand, after)]
        priced = [model.leg(leg) for leg in legs]
        service_mah.append(sum(p.charge_mah for p in priced))
        service_s.append(sum(p.time_s for p in priced))
    per_metre: dict[float, float] = {}

    def arc_mah(a: int, b: int) -> float:
        load = 0.0 if b == 0 else full if a == 0 else max(0.0, full - group[a - 1].mass_kg)
        return sum(_transit_mah(model, d, load, per_metre) for d in _geo_lengths(paths[a, b]))

    energy = [[0.0] * (n + 1) for _ in range(n + 1)]
    # The planner times legs as distance over cruise speed: give it each arc's flying time
    # (with the autopilot's ramps at every waypoint) in metres at cruise speed, so that its
    # arrival times are the mission's and its windows hold.
    timed = [[0.0] * (n + 1) for _ in range(n + 1)]
    for a, b in itertools.permutations(range(n + 1), 2):
        energy[a][b] = arc_mah(a, b) + (service_mah[b - 1] if b else 0.0)
        seconds = sum(_transit_s(model, d) for d in _geo_lengths(paths[a, b]))
        timed[a][b] = seconds * flight.cruise_speed_mps
    reasons = []
    if budget <= 0:
        reasons.append(
            f"take-off, return and landing alone need {fixed:.0f} mAh, more than the "
            f"{model.battery.budget_mah:.0f} mAh above the battery's reserve"
        )
    for j in range(1, n + 1):
        trip = energy[0][j] + energy[j][0] + fixed
        if trip > model.battery.budget_mah:
            reasons.append(
                f"{names[j - 1]}: beyond the battery's range: the round trip alone "
                f"({dist[0][j] + dist[j][0]:.0f} m) needs {trip:.0f} mAh, the battery has "
                f"{model.battery.budget_mah:.0f} mAh above its "
                f"{model.battery.reserve_fraction:.0%} reserve"
            )
    take_s = model.leg(takeoff(cruise, full)).time_s
    land_s = model.leg(land(cruise, 0.0)).time_s + model.leg(return_home(0.0)).time_s
    windows: list[tuple[float, float] | None] = []
    for o, name in zip(group, names, strict=True):
        if o.window is None:
            windows.append(None)
        elif o.window[1] < take_s:
            reasons.append(
                f"{name}: its window closes at {o.window[1]:g} s, before the take-off "
                f"({take_s:.0f} s) is done"
            )
            windows.append(None)
        else:
            windows.append((max(0.0, o.window[0] - take_s), o.window[1] - take_s))
    _refuse(reasons)
    problem = RoutingProblem(
        distance_m=timed,
        demand_kg=[o.mass_kg for o in group],
        capacity_kg=frame.max_payload_kg,
        energy=energy,
        energy_budget=budget,
        windows_s=windows if any(w is not None for w in windows) else None,
        service_s=service_s,
        speed_mps=flight.cruise_speed_mps,
        turnaround_s=land_s + swap_s + take_s,
        drones=1 if drone is not None else fleet,
        names=names,
    )
    try:
        solved = plan_routes(problem, time_limit_s=time_limit_s, solution_limit=solution_limit)
    except PlanError as err:
        raise DeliveryRefused([str(err)]) from None
    out = []
    for s in solved.sorties:
        chain = (0, *s.drops, 0)
        arcs = tuple(paths[a, b] for a, b in itertools.pairwise(chain))
        chosen = tuple(group[d - 1] for d in s.drops)
        mission = _mission("sortie", chosen, arcs, flight, s.start_s)
        parcels = {o.order_id: o.mass_kg for o in chosen}
        priced = model.plan(
            legs_from_mission(mission, depot, parcels, handover_extra_s=handover_extra_s)
        )
        out.append(
            DeliverySortie(
                drone=drone if drone is not None else f"drone {s.drone + 1}",
                orders=chosen,
                mission=mission,
                paths=arcs,
                distance_m=float(sum(dist[a][b] for a, b in itertools.pairwise(chain))),
                energy=priced,
                start_s=s.start_s,
            )
        )
    return out


def _arc_paths(
    router: AirspaceRouter, points: Sequence[tuple[float, float]], dist: object
) -> dict[tuple[int, int], tuple[tuple[float, float], ...]]:
    """Each arc's path as (lat, lon) points, ends exactly the given points: a straight line
    where the matrix says the direct segment is shortest, else the router's corners."""
    xy = [router.frame.to_xy(*p) for p in points]
    out: dict[tuple[int, int], tuple[tuple[float, float], ...]] = {}
    for a, b in itertools.combinations(range(len(points)), 2):
        straight = math.dist(xy[a], xy[b])
        if dist[a][b] <= straight + 1e-6:  # type: ignore[index]
            path = (points[a], points[b])
        else:
            route = router.shortest_path(points[a], points[b])
            path = (points[a], *route.waypoints[1:-1], points[b])
        out[a, b] = path
        out[b, a] = path[::-1]
    return out


def _geo_lengths(path: Sequence[tuple[float, float]]) -> list[float]:
    return [geo_distance_m(*p, *q) for p, q in itertools.pairwise(path)]


def _transit_mah(
    model: EnergyModel, metres: float, load: float, cache: dict[float, float]
) -> float:
    """The charge of one straight transit, as `legs_from_mission` will price it (any track:
    the worst wind direction); the power depends on the load only, so it is computed once per
    load and the time from the profile's ramps."""
    if load not in cache:
        probe = model.leg(transit(1000.0, load))
        cache[load] = probe.charge_mah / probe.time_s
    return cache[load] * _transit_s(model, metres)


def _transit_s(model: EnergyModel, metres: float) -> float:
    """Seconds of one straight transit from hover to hover, as the energy model times it:
    cruise speed with WPNAV_ACCEL ramps at both ends."""
    p = model.profile
    if metres <= 0:
        return 0.0
    if metres >= p.cruise_mps**2 / p.accel_xy_mps2:
        return metres / p.cruise_mps + p.cruise_mps / p.accel_xy_mps2
    return 2.0 * math.sqrt(metres / p.accel_xy_mps2)


def _mission(
    mission_id: str,
    orders: Sequence[Order],
    arcs: Sequence[Sequence[tuple[float, float]]],
    flight: FlightConfig,
    start_s: float = 0.0,
) -> MissionPlan:
    """A sortie as the mission core's legs: each arc a transit through its corners, each
    drop with the default hand-over (held over the drop until its window opens, counted
    from this sortie's take-off at `start_s` of the job), the last arc a transit home, then
    RTL and land."""
    alt = flight.cruise_alt_m
    legs: list = [TakeoffLeg(alt)]
    for o, arc in zip(orders, arcs, strict=False):
        wps = tuple(Waypoint(lat, lon, alt) for lat, lon in arc[1:])
        legs.append(TransitLeg(wps, to=f"drop {o.order_id}"))
        opens = None if o.window is None else o.window[0] - start_s
        wait = opens if opens is not None and opens > 0 else None
        drop = (o.order_id, o.lat, o.lon, flight.handover_alt_m, alt, DEFAULT_HANDOVER)
        legs.append(DropLeg(*drop, not_before_s=wait))
    legs.append(TransitLeg(tuple(Waypoint(lat, lon, alt) for lat, lon in arcs[-1][1:]), to="home"))
    legs.extend([ReturnLeg(), LandLeg()])
    return MissionPlan(
        mission_id=mission_id,
        legs=tuple(legs),
        speeds=speeds_from_config(flight),
        limits=limits_from_config(flight),
    )


def _sortie_points(sortie: DeliverySortie) -> list[tuple[float, float]]:
    """Every point the sortie flies through, from the depot back to it."""
    pts = [sortie.paths[0][0]]
    for arc in sortie.paths:
        pts.extend(arc[1:])
    return pts


def check_delivery_plan(
    plan: DeliveryPlan,
    airspace: Airspace,
    *,
    orders: Sequence[Order] | None = None,
    model: EnergyModel | None = None,
    profile: RegulatoryProfile | None = None,
    margin_m: float | None = None,
) -> list[str]:
    """Every way `plan` breaks the airspace, the battery or the ceilings, recomputed from
    each mission's own legs (not the planner's matrices): every straight line flown (depot,
    transit waypoints, drops, home) keeps `margin_m` from each zone it could meet at its
    altitude and from the operating area's edge and stays inside it; the charge
    `legs_from_mission` prices leaves the reserve; every altitude is within the profile's,
    the area's and the zones' ceilings; parcels within the payload; every order dropped
    once, at its point, before its window closes; and when the mission carries the
    autopilot's limits, every line keeps `FENCE_CLEARANCE_M` from the fence as the flight
    controller stores it. Empty means feasible."""
    model = model or plan.model
    profile = profile or plan.profile
    margin = plan.margin_m if margin_m is None else margin_m
    frame = LocalFrame(*plan.depot)
    area = frame.project(airspace.area.footprint)
    inner = area.buffer(-(margin - CLEARANCE_TOLERANCE_M))
    zones = [(z, frame.project(z.footprint)) for z in airspace.zones]
    for _, geom in zones:
        shapely.prepare(geom)
    out: list[str] = []
    dropped: dict[str, int] = {}
    by_id = {o.order_id: o for o in orders} if orders is not None else None
    last_end: dict[str, float] = {}
    for sortie in plan.sorties:
        mission = sortie.mission
        tag = f"{mission.mission_id} ({sortie.drone})"
        flown = _flown(mission, plan.depot)
        alt_legs = []
        fence = _fence_xy(mission.autopilot_limits, frame)
        for k, ((p, alt_p, _), (q, alt_q, towards)) in enumerate(itertools.pairwise(flown)):
            seg_xy = [frame.to_xy(*p), frame.to_xy(*q)]
            geom = LineString(seg_xy) if seg_xy[0] != seg_xy[1] else Point(seg_xy[0])
            alt = max(alt_p, alt_q)
            label = f"{tag} line {k + 1} (to {towards})"
            out.extend(_fence_cuts(label, p, q, geom, fence))
            alt_legs.append(AltitudeLeg(label, (p, q), alt))
            for zone, zgeom in zones:
                if zone.floor_m > alt:
                    continue
                gap = zgeom.distance(geom)
                if gap < margin - CLEARANCE_TOLERANCE_M:
                    out.append(
                        f"{label} from {_fmt(p)} to {_fmt(q)} comes {gap:.1f} m from "
                        f"{zone.label}, inside the {margin:g} m margin"
                    )
            if not inner.covers(geom):
                out.append(
                    f"{label} from {_fmt(p)} to {_fmt(q)} leaves the operating area or its "
                    f"{margin:g} m margin"
                )
        out.extend(altitude_violations(alt_legs, profile, airspace, frame))
        ceiling = min(
            profile.ceiling_m,
            airspace.area.ceiling_m if airspace.area.ceiling_m is not None else math.inf,
        )
        if mission.highest_m() > ceiling:
            out.append(
                f"{tag}: flies at {mission.highest_m():g} m, above the {ceiling:g} m ceiling"
            )
        parcels = {d.drop_id: 0.0 for d in mission.drops()}
        for d in mission.drops():
            dropped[d.drop_id] = dropped.get(d.drop_id, 0) + 1
            order = by_id.get(d.drop_id) if by_id is not None else None
            if by_id is not None and order is None:
                out.append(f"{tag}: drop {d.drop_id!r} is no order")
                continue
            if order is None:
                order = next(o for o in sortie.orders if o.order_id == d.drop_id)
            parcels[d.drop_id] = order.mass_kg
            if geo_distance_m(d.lat, d.lon, order.lat, order.lon) > 0.01:
                out.append(f"{tag}: drop {d.drop_id!r} is not at its order's point")
        load = sum(parcels.values())
        if load > model.frame.max_payload_kg + 1e-9:
            out.append(
                f"{tag}: carries {load:g} kg, over airframe {model.frame.name}'s "
                f"{model.frame.max_payload_kg:g} kg"
            )
            continue
        legs = legs_from_mission(
            mission, plan.depot, parcels, handover_extra_s=plan.handover_extra_s
        )
        priced = model.plan(legs)
        if not priced.can_fly:
            out.append(f"{tag}: {priced.reason}")
        if by_id is not None:
            clock = sortie.start_s
            for leg_legs, leg_price in zip(legs, priced.legs, strict=False):
                if leg_legs.label.startswith("descent at drop "):
                    oid = leg_legs.label.removeprefix("descent at drop ")
                    window = by_id[oid].window if oid in by_id else None
                    if window is not None and clock > window[1] + 1e-3:
                        out.append(
                            f"{tag}: drop {oid!r} reached at {clock:.0f} s, after its window "
                            f"closes at {window[1]:g} s"
                        )
                    elif window is not None and clock < window[0] - 1e-3:
                        out.append(
                            f"{tag}: drop {oid!r} descends at {clock:.0f} s, before its "
                            f"window opens at {window[0]:g} s"
                        )
                clock += leg_price.time_s
        previous = last_end.get(sortie.drone)
        if previous is not None and sortie.start_s < previous:
            out.append(
                f"{tag}: takes off at {sortie.start_s:.0f} s, before the drone's previous "
                f"sortie has landed ({previous:.0f} s)"
            )
        last_end[sortie.drone] = sortie.start_s + priced.time_s
    for oid, count in dropped.items():
        if count > 1:
            out.append(f"drop {oid!r}: dropped {count} times")
    if by_id is not None:
        missing = [oid for oid in by_id if oid not in dropped]
        if missing:
            out.append(f"orders never dropped: {', '.join(map(repr, missing))}")
    return out


def _flown(
    mission: MissionPlan, home: tuple[float, float]
) -> list[tuple[tuple[float, float], float, str]]:
    """The points the mission flies through with their altitudes and what the line to them
    leads to, from home back to home (RTL flies straight home from wherever the last leg
    ended)."""
    pts: list[tuple[tuple[float, float], float, str]] = [(home, 0.0, "home")]
    for leg in mission.legs:
        if isinstance(leg, TakeoffLeg):
            pts.append((home, leg.alt_m, "take-off"))
        elif isinstance(leg, TransitLeg):
            pts.extend(((wp.lat, wp.lon), wp.alt_m, leg.to) for wp in leg.waypoints)
        elif isinstance(leg, DropLeg):
            pts.append(((leg.lat, leg.lon), leg.cruise_alt_m, f"drop {leg.drop_id}"))
        elif isinstance(leg, ReturnLeg):
            pts.append((home, pts[-1][1], "home"))
    return pts


_FenceXY = list[tuple[str, Polygon, bool]]


def _fence_xy(limits: AutopilotLimits | None, frame: LocalFrame) -> _FenceXY:
    """The fence's polygons as the flight controller stores them, in metres, each with a
    name for messages and whether it is the inclusion polygon."""
    if limits is None:
        return []
    out: _FenceXY = []
    for n, polygon in enumerate(limits.fence.polygons, 1):
        kind = "inclusion" if polygon.inclusion else "exclusion"
        xy = stored_xy(polygon, frame)
        shapely.prepare(xy)
        out.append((f"fence polygon {n} ({kind})", xy, polygon.inclusion))
    return out


def _fence_cuts(
    label: str,
    p: tuple[float, float],
    q: tuple[float, float],
    geom: BaseGeometry,
    fence: _FenceXY,
) -> list[str]:
    """How the line `geom` comes closer than `FENCE_CLEARANCE_M` to the stored fence."""
    out = []
    for name, polygon, inclusion in fence:
        if inclusion:
            inside = polygon.buffer(-(FENCE_CLEARANCE_M - CLEARANCE_TOLERANCE_M))
            if not inside.covers(geom):
                out.append(
                    f"{label} from {_fmt(p)} to {_fmt(q)}: the autopilot's {name} cuts it, or "
                    f"comes within {FENCE_CLEARANCE_M:g} m"
                )
            continue
        gap = polygon.distance(geom)
        if gap < FENCE_CLEARANCE_M - CLEARANCE_TOLERANCE_M:
            out.append(
                f"{label} from {_fmt(p)} to {_fmt(q)}: the autopilot's {name} "
                + ("cuts it" if gap == 0 else f"comes {gap:.1f} m from it")
                + f", inside the {FENCE_CLEARANCE_M:g} m the fence needs"
            )
    return out


def _fmt(p: tuple[float, float]) -> str:
    return f"({p[0]:.6f}, {p[1]:.6f})"
