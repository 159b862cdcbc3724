"""Multi-drop planning with OR-Tools: the order of drops for one drone, and sorties for one or
several drones under a payload capacity, an energy (or distance) budget per sortie and
optional time windows, each sortie leaving from and returning to the depot (battery swap,
reload).

Distances are an input: a matrix in metres whose row/column 0 is the depot and 1..n the
drops, as the airspace module's shortest paths around the zones give it (`math.inf` where no
path exists). Energy is an input too: a matrix of the energy of each leg (any unit, Wh by
convention) that the caller's energy model computes for the heaviest load the leg can carry,
so that the budget holds whatever the drone still carries.

The solver is OR-Tools' routing library: a first solution by cheapest arc, improved by guided
local search until a time limit (or, for a run that is reproducible on any machine, a
solution limit). The model is integer; every quantity is rounded so that a limit the solver
respects holds in the real numbers too (leg costs up, capacities down), and `check_plan`
recomputes everything from the raw inputs to prove it, independently of the solver.

Each OR-Tools vehicle is one sortie; drone d flies sorties d*S .. d*S+S-1 in turn, S being
`max_sorties`. With time windows, a drone's next sortie starts no earlier than the end of
its previous one plus `turnaround_s`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

#: Largest problem accepted (depot + drops): the matrix is built in full.
MAX_NODES = 2000
#: Integer resolution of the solver's model for non-integral matrices (1 mm), of times (1 ms)
#: and of payloads (1 g).
DISTANCE_SCALE = 1000
TIME_SCALE = 1000
MASS_SCALE = 1000
#: Resolution of the energy model: the budget maps onto this many units.
ENERGY_UNITS = 10**9
#: Relative tolerance of `check_plan`'s comparisons with reported figures.
CHECK_TOLERANCE = 1e-6


class PlanError(ValueError):
    """A problem that cannot be planned; the message names the field or the drops and why."""


@dataclass(frozen=True)
class RoutingProblem:
    """What the planner plans. Index 0 of every matrix is the depot; index i (1..n) is drop i,
    whose per-drop values are at position i-1 of `demand_kg`, `windows_s`, `service_s` and
    `names`."""

    distance_m: Sequence[Sequence[float]]
    demand_kg: Sequence[float] = ()
    capacity_kg: float | None = None
    energy: Sequence[Sequence[float]] | None = None
    energy_budget: float | None = None
    max_sortie_m: float | None = None
    windows_s: Sequence[tuple[float, float] | None] | None = None
    service_s: float | Sequence[float] = 0.0
    speed_mps: float = 10.0
    turnaround_s: float = 0.0
    drones: int = 1
    max_sorties: int | None = None
    names: Sequence[str] | None = None

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def drops(self) -> int:
        return len(self.distance_m) - 1

    def name(self, index: int) -> str:
        """How messages call drop `index` (1..n)."""
        return self.names[index - 1] if self.names else f"drop {index}"

    def demand(self, index: int) -> float:
        return self.demand_kg[index - 1] if self.demand_kg else 0.0

    def service(self, index: int) -> float:
        if isinstance(self.service_s, (int, float)):
            return float(self.service_s)
        return float(self.service_s[index - 1])

    def window(self, index: int) -> tuple[float, float] | None:
        return self.windows_s[index - 1] if self.windows_s else None


@dataclass(frozen=True)
class Sortie:
    """One flight from the depot through `drops` (matrix indices, in order) and back."""

    drone: int
    drops: tuple[int, ...]
    distance_m: float
    load_kg: float
    energy: float | None
    start_s: float
    arrivals_s: tuple[float, ...]
    end_s: float


@dataclass(frozen=True)
class Plan:
    """Sorties by drone, then in flying order."""

    sorties: tuple[Sortie, ...]
    distance_m: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "distance_m", sum(s.distance_m for s in self.sorties))

    @property
    def order(self) -> tuple[int, ...]:
        """Every drop in the order flown (drone by drone)."""
        return tuple(d for s in self.sorties for d in s.drops)


@dataclass(frozen=True)
class Tour:
    """A closed tour from node 0: `order` starts with 0; `length` includes the way back."""

    order: tuple[int, ...]
    length: float


def default_time_limit(drops: int) -> float:
    """Seconds of guided local search: enough for about 1 % on 50-100 drops on a slow core
    (see bench/routing.py), and a floor for the small ones."""
    return min(8.0, 1.0 + 0.05 * drops)


def solve_tsp(
    matrix: Sequence[Sequence[float]],
    *,
    time_limit_s: float | None = None,
    solution_limit: int | None = None,
) -> Tour:
    """The shortest closed tour through every node of `matrix` from node 0 (one drone, one
    sortie, no limits): the same solver as `plan_routes`."""
    plan = plan_routes(
        RoutingProblem(distance_m=matrix),
        time_limit_s=time_limit_s,
        solution_limit=solution_limit,
    )
    order = plan.order
    return Tour(order=(0, *order), length=plan.distance_m)


def plan_routes(
    problem: RoutingProblem,
    *,
    time_limit_s: float | None = None,
    solution_limit: int | None = None,
) -> Plan:
    """Plan every drop of `problem` into sorties, minimising the total distance flown.

    Raises PlanError naming each drop that no sortie can serve (beyond the capacity, the
    energy or distance budget, its time window, or without a path), and the drops left over
    when all of them cannot be fitted into the sorties allowed. `solution_limit` stops the
    search after that many solutions, which makes the result the same on every machine;
    `time_limit_s` defaults to `default_time_limit`.
    """
    n = problem.drops
    if n == 0:
        return Plan(())
    _refuse_lone_drops(problem)
    if time_limit_s is None:
        time_limit_s = 3600.0 if solution_limit else default_time_limit(n)
    if time_limit_s <= 0:
        raise PlanError(f"time_limit_s must be positive, got {time_limit_s}")
    sorties = problem.max_sorties or _estimate_sorties(problem)
    while True:
        plan, unserved = _solve(problem, sorties, time_limit_s, solution_limit)
        if not unserved:
            return plan
        if problem.max_sorties is not None or sorties * problem.drones >= n:
            raise PlanError(
                "no plan serves every drop within the limits: "
                + ", ".join(problem.name(i) for i in unserved)
                + f" left over with {problem.drones} drone(s) x {sorties} sortie(s)"
            )
        sorties = min(n, sorties * 2)


def check_plan(problem: RoutingProblem, plan: Plan) -> list[str]:
    """Every way `plan` breaks `problem`, recomputed from the raw inputs (not the solver's
    integer model): each drop served exactly once, every leg with a path, each sortie within
    the capacity, the energy budget and the distance limit, each drop reached within its
    window, a drone's sorties one after the other with the turnaround between, and the plan's
    reported figures equal to the recomputed ones. An empty list means feasible."""
    violations: list[str] = []
    n = problem.drops
    served: dict[int, int] = {}
    last_end: dict[int, float] = {}
    per_drone: dict[int, int] = {}
    for number, sortie in enumerate(plan.sorties, 1):
        label = f"sortie {number} (drone {sortie.drone})"
        if not 0 <= sortie.drone < problem.drones:
            violations.append(f"{label}: no such drone (fleet of {problem.drones})")
        per_drone[sortie.drone] = per_drone.get(sortie.drone, 0) + 1
        bad = [d for d in sortie.drops if not 1 <= d <= n]
        if bad:
            violations.append(f"{label}: no such drop index {bad}")
            continue
        if not sortie.drops:
            violations.append(f"{label}: serves no drop")
        for d in sortie.drops:
            served[d] = served.get(d, 0) + 1
        path = (0, *sortie.drops, 0)
        distance = 0.0
        energy = 0.0
        time_s = sortie.start_s
        arrivals = []
        for a, b in itertools.pairwise(path):
            leg = problem.distance_m[a][b]
            if not math.isfinite(leg):
                violations.append(
                    f"{label}: no path from {_place(problem, a)} to {_place(problem, b)}"
                )
                leg = math.inf
            distance += leg
            if problem.energy is not None:
                energy += problem.energy[a][b]
            time_s += leg / problem.speed_mps
            if b != 0:
                arrivals.append(time_s)
                window = problem.window(b)
                if window is not None:
                    if time_s > window[1] + _tol(window[1]):
                        violations.append(
                            f"{label}: {problem.name(b)} reached at {time_s:.1f} s, after its "
                            f"window closes at {window[1]:.1f} s"
                        )
                    time_s = max(time_s, window[0])
                time_s += problem.service(b)
        load = sum(problem.demand(d) for d in sortie.drops)
        if problem.capacity_kg is not None and load > problem.capacity_kg + _tol(load):
            violations.append(
                f"{label}: load {load:.3f} kg over the capacity {problem.capacity_kg} kg"
            )
        if problem.max_sortie_m is not None and distance > problem.max_sortie_m + _tol(distance):
            violations.append(
                f"{label}: {distance:.1f} m over the sortie limit {problem.max_sortie_m} m"
            )
        if problem.energy_budget is not None and energy > problem.energy_budget + _tol(energy):
            violations.append(
                f"{label}: energy {energy:.3f} over the budget {problem.energy_budget}"
            )
        reported = {
            "distance_m": (sortie.distance_m, distance),
            "load_kg": (sortie.load_kg, load),
            "end_s": (sortie.end_s, time_s),
        }
        if problem.energy is not None:
            reported["energy"] = (sortie.energy, energy)
        for key, (said, real) in reported.items():
            if said is None or not math.isclose(said, real, rel_tol=CHECK_TOLERANCE, abs_tol=1e-6):
                violations.append(f"{label}: reports {key} {said}, recomputed {real}")
        same = len(arrivals) == len(sortie.arrivals_s) and all(
            math.isclose(a, b, rel_tol=CHECK_TOLERANCE, abs_tol=1e-6)
            for a, b in zip(arrivals, sortie.arrivals_s, strict=False)
        )
        if not same:
            violations.append(f"{label}: reported arrival times differ from the recomputed ones")
        previous = last_end.get(sortie.drone)
        if previous is not None and sortie.start_s < previous + problem.turnaround_s - 1e-6:
            violations.append(
                f"{label}: starts at {sortie.start_s:.1f} s, before the drone's previous sortie "
                f"ended ({previous:.1f} s) plus the turnaround ({problem.turnaround_s} s)"
            )
        last_end[sortie.drone] = time_s
    if problem.max_sorties is not None:
        for drone, count in sorted(per_drone.items()):
            if count > problem.max_sorties:
                violations.append(
                    f"drone {drone}: {count} sorties, over the limit of {problem.max_sorties}"
                )
    for d in range(1, n + 1):
        if served.get(d, 0) == 0:
            violations.append(f"{problem.name(d)}: not served")
        elif served[d] > 1:
            violations.append(f"{problem.name(d)}: served {served[d]} times")
    total = sum(s.distance_m for s in plan.sorties)
    if not math.isclose(plan.distance_m, total, rel_tol=CHECK_TOLERANCE, abs_tol=1e-6):
        violations.append(f"plan reports {plan.distance_m} m, its sorties add up to {total} m")
    return violations


def _place(problem: RoutingProblem, index: int) -> str:
    return "the depot" if index == 0 else problem.name(index)


def _tol(value: float) -> float:
    return CHECK_TOLERANCE * max(1.0, abs(value))


def _validate(problem: RoutingProblem) -> None:
    """Refuse a malformed problem with the field and the reason."""
    matrix = problem.distance_m
    size = len(matrix)
    if not 1 <= size <= MAX_NODES:
        raise PlanError(f"distance_m: {size} rows, expected 1..{MAX_NODES} (depot + drops)")
    _check_matrix("distance_m", matrix, size, allow_inf=True)
    n = size - 1
    if problem.demand_kg:
        _check_values("demand_kg", problem.demand_kg, n)
    if problem.capacity_kg is not None:
        _check_positive("capacity_kg", problem.capacity_kg)
    if (problem.energy is None) != (problem.energy_budget is None):
        raise PlanError("energy and energy_budget: give both or neither")
    if problem.energy is not None:
        _check_matrix("energy", problem.energy, size, allow_inf=False)
        _check_positive("energy_budget", problem.energy_budget)
    if problem.max_sortie_m is not None:
        _check_positive("max_sortie_m", problem.max_sortie_m)
    if problem.windows_s is not None:
        if len(problem.windows_s) != n:
            raise PlanError(f"windows_s: {len(problem.windows_s)} entries for {n} drops")
        for i, window in enumerate(problem.windows_s, 1):
            if window is None:
                continue
            if (
                len(window) != 2
                or not all(_finite(v) for v in window)
                or not 0 <= window[0] <= window[1]
            ):
                raise PlanError(
                    f"windows_s[{i - 1}]: {window!r} is not (start, end), 0 <= start <= end"
                )
    if isinstance(problem.service_s, (int, float)):
        _check_values("service_s", [problem.service_s], 1)
    else:
        _check_values("service_s", problem.service_s, n)
    _check_positive("speed_mps", problem.speed_mps)
    _check_values("turnaround_s", [problem.turnaround_s], 1)
    if not isinstance(problem.drones, int) or problem.drones < 1:
        raise PlanError(f"drones: {problem.drones!r} is not a positive whole number")
    if problem.max_sorties is not None and (
        not isinstance(problem.max_sorties, int) or problem.max_sorties < 1
    ):
        raise PlanError(f"max_sorties: {problem.max_sorties!r} is not a positive whole number")
    if problem.names is not None and len(problem.names) != n:
        raise PlanError(f"names: {len(problem.names)} names for {n} drops")


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_matrix(name: str, matrix: Sequence[Sequence[float]], size: int, allow_inf: bool) -> None:
    if len(matrix) != size:
        raise PlanError(f"{name}: {len(matrix)} rows, expected {size}")
    for i, row in enumerate(matrix):
        if len(row) != size:
            raise PlanError(f"{name}[{i}]: {len(row)} columns, expected {size}")
        for j, value in enumerate(row):
            ok = _finite(value) or (allow_inf and value == math.inf)
            if not ok or value < 0:
                what = "a non-negative number or inf" if allow_inf else "a non-negative number"
                raise PlanError(f"{name}[{i}][{j}]: {value!r} is not {what}")


def _check_values(name: str, values: Sequence[float], count: int) -> None:
    if len(values) != count:
        raise PlanError(f"{name}: {len(values)} values, expected {count}")
    for i, value in enumerate(values):
        if not _finite(value) or value < 0:
            raise PlanError(f"{name}[{i}]: {value!r} is not a non-negative number")


def _check_positive(name: str, value: object) -> None:
    if not _finite(value) or value <= 0:
        raise PlanError(f"{name}: {value!r} is not a positive number")


def _refuse_lone_drops(problem: RoutingProblem) -> None:
    """Drops that no sortie can serve even on its own, each with its reason."""
    reasons = []
    d = problem.distance_m
    for i in range(1, problem.drops + 1):
        name = problem.name(i)
        if not math.isfinite(d[0][i]):
            reasons.append(f"{name}: no path from the depot")
            continue
        if not math.isfinite(d[i][0]):
            reasons.append(f"{name}: no path back to the depot")
            continue
        if problem.capacity_kg is not None and problem.demand(i) > problem.capacity_kg:
            reasons.append(
                f"{name}: parcel {problem.demand(i)} kg over the capacity {problem.capacity_kg} kg"
            )
        round_trip = d[0][i] + d[i][0]
        if problem.max_sortie_m is not None and round_trip > problem.max_sortie_m:
            reasons.append(
                f"{name}: round trip {round_trip:.0f} m over the sortie limit "
                f"{problem.max_sortie_m:.0f} m"
            )
        if problem.energy is not None and problem.energy_budget is not None:
            energy = problem.energy[0][i] + problem.energy[i][0]
            if energy > problem.energy_budget:
                reasons.append(
                    f"{name}: round trip needs {energy:.2f} of energy, over the budget "
                    f"{problem.energy_budget:.2f}"
                )
        window = problem.window(i)
        if window is not None and d[0][i] / problem.speed_mps > window[1]:
            reasons.append(
                f"{name}: earliest arrival {d[0][i] / problem.speed_mps:.0f} s is after its "
                f"window closes at {window[1]:.0f} s"
            )
    if reasons:
        raise PlanError("; ".join(reasons))


def _estimate_sorties(problem: RoutingProblem) -> int:
    """Sorties per drone to offer the solver when the caller set no limit: one without
    capacity or budget, else twice a lower bound (plan_routes doubles it if drops are left
    over)."""
    n = problem.drops
    if problem.capacity_kg is None and problem.energy is None and problem.max_sortie_m is None:
        return 1
    bound = 1.0
    if problem.capacity_kg is not None:
        bound = max(bound, sum(problem.demand(i) for i in range(1, n + 1)) / problem.capacity_kg)
    if problem.energy is not None and problem.energy_budget is not None:
        cheapest_in = sum(
            min(problem.energy[j][i] for j in range(n + 1) if j != i) for i in range(1, n + 1)
        )
        bound = max(bound, cheapest_in / problem.energy_budget)
    return max(1, min(n, math.ceil((2 * bound + 1) / problem.drones)))


def _integer_matrix(matrix: Sequence[Sequence[float]], scale: float, up: bool) -> list[list[int]]:
    """`matrix` times `scale` as integers (rounded up when `up`, else to nearest); entries
    without a path become 0 (their arcs are removed from the model)."""
    rounding = math.ceil if up else round
    return [[int(rounding(v * scale)) if math.isfinite(v) else 0 for v in row] for row in matrix]


def _solve(
    problem: RoutingProblem, sorties: int, time_limit_s: float, solution_limit: int | None
) -> tuple[Plan, list[int]]:
    from ortools.constraint_solver import pywrapcp, routing_enums_pb2

    n = problem.drops
    vehicles = problem.drones * sorties
    manager = pywrapcp.RoutingIndexManager(n + 1, vehicles, 0)
    routing = pywrapcp.RoutingModel(manager)
    distance = problem.distance_m
    integral = all(float(v).is_integer() for row in distance for v in row if math.isfinite(v))
    scale = 1 if integral else DISTANCE_SCALE
    cost = _integer_matrix(distance, scale, up=False)
    routing.SetArcCostEvaluatorOfAllVehicles(routing.RegisterTransitMatrix(cost))
    for i in range(1, n + 1):
        for j in range(1, n + 1):
            if i != j and not math.isfinite(distance[i][j]):
                routing.NextVar(manager.NodeToIndex(i)).RemoveValue(manager.NodeToIndex(j))
    penalty = 1 + 2 * (n + 1) * max(max(row) for row in cost)
    for i in range(1, n + 1):
        routing.AddDisjunction([manager.NodeToIndex(i)], penalty)

    if problem.capacity_kg is not None:
        demands = [0] + [math.ceil(problem.demand(i) * MASS_SCALE) for i in range(1, n + 1)]
        load = routing.RegisterUnaryTransitVector(demands)
        routing.AddDimension(load, 0, math.floor(problem.capacity_kg * MASS_SCALE), True, "load")
    if problem.max_sortie_m is not None:
        legs = routing.RegisterTransitMatrix(_integer_matrix(distance, scale, up=True))
        routing.AddDimension(legs, 0, math.floor(problem.max_sortie_m * scale), True, "distance")
    if problem.energy is not None and problem.energy_budget is not None:
        energy_scale = ENERGY_UNITS / problem.energy_budget
        energy = routing.RegisterTransitMatrix(
            _integer_matrix(problem.energy, energy_scale, up=True)
        )
        routing.AddDimension(energy, 0, ENERGY_UNITS, True, "energy")
    if problem.windows_s is not None:
        _add_time(problem, routing, manager, sorties)

    params = pywrapcp.DefaultRoutingSearchParameters()
    params.first_solution_strategy = routing_enums_pb2.FirstSolutionStrategy.PATH_CHEAPEST_ARC
    params.local_search_metaheuristic = (
        routing_enums_pb2.LocalSearchMetaheuristic.GUIDED_LOCAL_SEARCH
    )
    params.time_limit.FromMilliseconds(max(1, int(time_limit_s * 1000)))
    if solution_limit is not None:
        params.solution_limit = solution_limit
    solution = routing.SolveWithParameters(params)
    if solution is None:
        raise PlanError(f"the solver found no plan within {time_limit_s:.1f} s")

    time_dimension = routing.GetDimensionOrDie("time") if problem.windows_s is not None else None
    routes: list[tuple[int, list[int], float | None]] = []
    for v in range(vehicles):
        index = routing.Start(v)
        drops = []
        index = solution.Value(routing.NextVar(index))
        while not routing.IsEnd(index):
            drops.append(manager.IndexToNode(index))
            index = solution.Value(routing.NextVar(index))
        if drops:
            start = None
            if time_dimension is not None:
                start = solution.Min(time_dimension.CumulVar(routing.Start(v))) / TIME_SCALE
            routes.append((v // sorties, drops, start))
    served = {d for _, drops, _ in routes for d in drops}
    unserved = [i for i in range(1, n + 1) if i not in served]
    return _plan_from_routes(problem, routes), unserved


def _add_time(problem: RoutingProblem, routing, manager, sorties: int) -> None:
    """A time dimension (ms): legs at cruise speed plus the service at the drop left; each
    drop's window; a drone's sorties chained with the turnaround between."""
    n = problem.drops
    d = problem.distance_m
    times = [
        [
            math.ceil(
                (d[i][j] / problem.speed_mps + (problem.service(i) if i else 0.0)) * TIME_SCALE
            )
            if math.isfinite(d[i][j])
            else 0
            for j in range(n + 1)
        ]
        for i in range(n + 1)
    ]
    ends = [w[1] for w in (problem.windows_s or ()) if w is not None]
    horizon = math.ceil(
        (max(ends, default=0.0) + sum(max(row) for row in times) / TIME_SCALE) * TIME_SCALE
        + problem.turnaround_s * TIME_SCALE * problem.drones * sorties
    )
    transit = routing.RegisterTransitMatrix(times)
    routing.AddDimension(transit, horizon, horizon, False, "time")
    time = routing.GetDimensionOrDie("time")
    for i in range(1, n + 1):
        window = problem.window(i)
        if window is not None:
            time.CumulVar(manager.NodeToIndex(i)).SetRange(
                math.ceil(window[0] * TIME_SCALE), math.floor(window[1] * TIME_SCALE)
            )
    solver = routing.solver()
    turnaround = math.ceil(problem.turnaround_s * TIME_SCALE)
    for drone in range(problem.drones):
        for k in range(sorties - 1):
            v = drone * sorties + k
            solver.Add(
                time.CumulVar(routing.Start(v + 1)) >= time.CumulVar(routing.End(v)) + turnaround
            )
    for v in range(problem.drones * sorties):
        routing.AddVariableMaximizedByFinalizer(time.CumulVar(routing.Start(v)))
        routing.AddVariableMinimizedByFinalizer(time.CumulVar(routing.End(v)))


def _plan_from_routes(
    problem: RoutingProblem, routes: list[tuple[int, list[int], float | None]]
) -> Plan:
    """Sorties with their figures computed from the raw inputs; without time windows each
    drone's sorties start one after another (end plus turnaround) from time 0."""
    sorties = []
    drone_free: dict[int, float] = {}
    for drone, drops, start in routes:
        if start is None:
            start = drone_free.get(drone, 0.0)
        path = (0, *drops, 0)
        distance = 0.0
        energy = 0.0 if problem.energy is not None else None
        time_s = start
        arrivals = []
        for a, b in itertools.pairwise(path):
            distance += problem.distance_m[a][b]
            if energy is not None and problem.energy is not None:
                energy += problem.energy[a][b]
            time_s += problem.distance_m[a][b] / problem.speed_mps
            if b != 0:
                arrivals.append(time_s)
                window = problem.window(b)
                if window is not None:
                    time_s = max(time_s, window[0])
                time_s += problem.service(b)
        sorties.append(
            Sortie(
                drone=drone,
                drops=tuple(drops),
                distance_m=distance,
                load_kg=sum(problem.demand(i) for i in drops),
                energy=energy,
                start_s=start,
                arrivals_s=tuple(arrivals),
                end_s=time_s,
            )
        )
        drone_free[drone] = time_s + problem.turnaround_s
    return Plan(tuple(sorted(sorties, key=lambda s: (s.drone, s.start_s))))
