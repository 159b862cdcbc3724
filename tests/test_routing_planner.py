"""The multi-drop planner: optimal where an exhaustive search can tell, within 1 % on
berlin52, every constrained plan proven feasible by the independent checker, and refusals
that name the drop and the reason."""

from __future__ import annotations

import itertools
import json
import math
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from companion.cli import main
from companion.routing.baseline import nearest_neighbour, nearest_neighbour_two_opt, two_opt
from companion.routing.planner import (
    Plan,
    PlanError,
    RoutingProblem,
    Sortie,
    check_plan,
    plan_routes,
    solve_tsp,
)
from companion.routing.tsplib import euc_2d_matrix, read_tsplib, tour_length

BERLIN52 = Path(__file__).resolve().parents[2] / "shared" / "reference" / "tsplib" / "berlin52.tsp"
BERLIN52_OPTIMUM = 7542


def points(n: int, seed: int, size: float = 4000.0) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    return [(rng.uniform(0, size), rng.uniform(0, size)) for _ in range(n)]


def euclid(coords: list[tuple[float, float]]) -> list[list[float]]:
    return [[math.hypot(ax - bx, ay - by) for bx, by in coords] for ax, ay in coords]


def brute_force_tsp(matrix: list[list[float]]) -> float:
    """The optimum by trying every order of nodes 1..n (node 0 first), vectorised."""
    m = np.asarray(matrix, dtype=float)
    perms = np.array(list(itertools.permutations(range(1, len(matrix)))), dtype=np.int64)
    lengths = m[0, perms[:, 0]] + m[perms[:, -1], 0]
    lengths += m[perms[:, :-1], perms[:, 1:]].sum(axis=1)
    return float(lengths.min())


@pytest.mark.parametrize(("drops", "seed"), [(4, 1), (6, 2), (7, 3), (8, 4), (9, 5), (9, 6)])
def test_optimal_where_brute_force_can_tell(drops: int, seed: int) -> None:
    matrix = euc_2d_matrix(points(drops + 1, seed))
    tour = solve_tsp(matrix, time_limit_s=0.3)
    assert sorted(tour.order) == list(range(drops + 1))
    assert tour.order[0] == 0
    assert tour.length == tour_length(matrix, tour.order)
    assert tour.length == brute_force_tsp(matrix)


def test_optimal_on_real_valued_distances() -> None:
    matrix = euclid(points(9, 11))
    tour = solve_tsp(matrix, time_limit_s=0.3)
    # The model rounds to millimetres: the optimum of the real distances within that.
    assert tour.length == pytest.approx(brute_force_tsp(matrix), abs=9 * 0.001)
    assert tour.length == pytest.approx(tour_length(matrix, tour.order))


#: A search bounded by solutions, not seconds, so the result does not depend on the machine
#: (the default time limit found eil51 at 1.4 % above the optimum on a loaded machine);
#: 3,000 solutions take about 8 s here. The time limit only guards a hang.
SEARCH = {"solution_limit": 3000, "time_limit_s": 120.0}


def test_berlin52_within_one_percent_of_the_optimum() -> None:
    if not BERLIN52.exists():
        pytest.skip(f"{BERLIN52} absent (the shared reference data is not checked out)")
    matrix = read_tsplib(BERLIN52).distance_matrix()
    tour = solve_tsp(matrix, **SEARCH)
    assert sorted(tour.order) == list(range(52))
    assert tour.length == tour_length(matrix, tour.order)
    assert BERLIN52_OPTIMUM <= tour.length <= BERLIN52_OPTIMUM * 1.01


@pytest.mark.parametrize("name", ["eil51"])
def test_other_euc_2d_instances_within_one_percent_of_the_optimum(name: str) -> None:
    """A TSPLIB instance with a published optimum from a registry package
    (bench/tsplib_sources.py; st70 and kroA100 are in the benchmark, at the default time
    limit)."""
    from bench.tsplib_sources import SourceError, fetch_instances

    try:
        path, optimum = fetch_instances()[name]
    except SourceError as err:
        pytest.skip(f"{err} (needs the package index to fetch the TSPLIB files)")
    matrix = read_tsplib(path).distance_matrix()
    tour = solve_tsp(matrix, **SEARCH)
    assert sorted(tour.order) == list(range(len(matrix)))
    assert optimum <= tour.length <= optimum * 1.01


def test_solution_limit_makes_the_plan_reproducible() -> None:
    matrix = euclid(points(30, 7))
    first = solve_tsp(matrix, solution_limit=200)
    again = solve_tsp(matrix, solution_limit=200)
    assert first == again


def constrained(drops: int, seed: int, **overrides: object) -> RoutingProblem:
    """Parcels of 0.3-2 kg, 2.5 kg a sortie, energy 0.01 Wh a metre, 60 Wh usable."""
    coords = [(2000.0, 2000.0), *points(drops, seed)]
    distance = euclid(coords)
    rng = random.Random(seed)
    fields: dict = {
        "distance_m": distance,
        "demand_kg": [round(rng.uniform(0.3, 2.0), 2) for _ in range(drops)],
        "capacity_kg": 2.5,
        "energy": [[0.01 * d for d in row] for row in distance],
        "energy_budget": 60.0,
        "turnaround_s": 300.0,
    }
    fields.update(overrides)
    return RoutingProblem(**fields)


def test_multi_sortie_plan_respects_every_limit() -> None:
    problem = constrained(20, 3, drones=2)
    plan = plan_routes(problem, time_limit_s=2.0)
    assert check_plan(problem, plan) == []
    assert sorted(plan.order) == list(range(1, 21))
    assert len(plan.sorties) >= math.ceil(sum(problem.demand_kg) / 2.5)
    for sortie in plan.sorties:
        assert sortie.load_kg <= 2.5
        assert sortie.energy is not None and sortie.energy <= 60.0
    # The limits bind: one sortie could not carry it all.
    assert sum(problem.demand_kg) > 2.5
    # Without the capacity, the energy budget alone still splits the drops into sorties.
    loose = replace(problem, capacity_kg=None)
    loose_plan = plan_routes(loose, time_limit_s=1.0)
    assert check_plan(loose, loose_plan) == []
    assert len(loose_plan.sorties) > 1


def test_distance_budget_and_sortie_limit() -> None:
    problem = constrained(12, 8, energy=None, energy_budget=None, max_sortie_m=9000.0)
    plan = plan_routes(problem, time_limit_s=1.0)
    assert check_plan(problem, plan) == []
    assert all(s.distance_m <= 9000.0 for s in plan.sorties)


def optimal_split_cost(problem: RoutingProblem) -> float:
    """The optimum of a capacitated instance by brute force: every order of the drops, each
    cut into sorties optimally (a shortest path over the order's prefixes)."""
    d, n = problem.distance_m, problem.drops
    best = math.inf
    for order in itertools.permutations(range(1, n + 1)):
        cost = [0.0] + [math.inf] * n
        for start in range(n):
            load, inner = 0.0, 0.0
            for end in range(start, n):
                load += problem.demand(order[end])
                if load > problem.capacity_kg:
                    break
                if end > start:
                    inner += d[order[end - 1]][order[end]]
                trip = d[0][order[start]] + inner + d[order[end]][0]
                cost[end + 1] = min(cost[end + 1], cost[start] + trip)
        best = min(best, cost[n])
    return best


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_capacitated_optimum_by_brute_force(seed: int) -> None:
    coords = [(2000.0, 2000.0), *points(6, seed)]
    rng = random.Random(seed)
    problem = RoutingProblem(
        distance_m=euc_2d_matrix(coords),
        demand_kg=[rng.choice([0.5, 1.0, 1.5]) for _ in range(6)],
        capacity_kg=2.0,
    )
    plan = plan_routes(problem, time_limit_s=0.5)
    assert check_plan(problem, plan) == []
    assert plan.distance_m == optimal_split_cost(problem)


def test_time_windows_and_turnaround_between_sorties() -> None:
    # Four drops on a line east of the depot, 1 km apart, one parcel a sortie.
    coords = [(0.0, 0.0), (1000.0, 0.0), (2000.0, 0.0), (3000.0, 0.0), (4000.0, 0.0)]
    problem = RoutingProblem(
        distance_m=euclid(coords),
        demand_kg=[1.0] * 4,
        capacity_kg=1.0,
        windows_s=[(2000.0, 2400.0), None, (0.0, 500.0), None],
        service_s=30.0,
        speed_mps=10.0,
        turnaround_s=120.0,
    )
    plan = plan_routes(problem, time_limit_s=1.0)
    assert check_plan(problem, plan) == []
    arrival = {s.drops[0]: s.arrivals_s[0] for s in plan.sorties}
    assert arrival[3] <= 500.0
    assert 0 <= arrival[1] <= 2400.0
    starts = [s.start_s for s in plan.sorties]
    ends = [s.end_s for s in plan.sorties]
    assert all(b >= a + 120.0 - 1e-6 for a, b in zip(ends, starts[1:], strict=False))


def test_windows_that_need_a_second_drone() -> None:
    coords = [(0.0, 0.0), (3000.0, 0.0), (-3000.0, 0.0)]
    problem = RoutingProblem(
        distance_m=euclid(coords),
        windows_s=[(0.0, 320.0), (0.0, 320.0)],
        speed_mps=10.0,
        drones=2,
    )
    plan = plan_routes(problem, time_limit_s=0.5)
    assert check_plan(problem, plan) == []
    assert {s.drone for s in plan.sorties} == {0, 1}
    with pytest.raises(PlanError, match=r"drop \d left over with 1 drone"):
        plan_routes(replace(problem, drones=1, max_sorties=2), time_limit_s=0.5)


def test_an_arc_without_a_path_is_never_flown() -> None:
    coords = [(0.0, 0.0), (1000.0, 0.0), (1000.0, 10.0), (0.0, 1000.0)]
    distance = euclid(coords)
    distance[1][2] = distance[2][1] = math.inf  # a zone between drops 1 and 2
    problem = RoutingProblem(distance_m=distance)
    plan = plan_routes(problem, time_limit_s=0.3)
    assert check_plan(problem, plan) == []
    path = (0, *plan.order, 0)
    assert all(math.isfinite(distance[a][b]) for a, b in itertools.pairwise(path))


def test_refusals_name_the_drop_and_the_reason() -> None:
    problem = constrained(5, 4, names=["A", "B", "C", "D", "E"])
    distance = [row[:] for row in problem.distance_m]
    distance[0][2] = math.inf
    demand = list(problem.demand_kg)
    demand[2] = 3.0
    energy = [row[:] for row in problem.energy]
    energy[0][4] = energy[4][0] = 35.0
    bad = replace(
        problem,
        distance_m=distance,
        demand_kg=demand,
        energy=energy,
        windows_s=[None, None, None, None, (0.0, 1.0)],
        speed_mps=10.0,
    )
    with pytest.raises(PlanError) as caught:
        plan_routes(bad, time_limit_s=0.2)
    message = str(caught.value)
    assert "B: no path from the depot" in message
    assert "C: parcel 3.0 kg over the capacity 2.5 kg" in message
    assert "D: round trip needs 70.00 of energy, over the budget 60.00" in message
    assert "E: earliest arrival" in message and "after its window closes at 1 s" in message
    assert "A:" not in message
    far = replace(problem, energy=None, energy_budget=None, max_sortie_m=100.0)
    with pytest.raises(PlanError, match=r"A: round trip .* over the sortie limit 100 m"):
        plan_routes(far, time_limit_s=0.2)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"distance_m": [[0.0, float("nan")], [1.0, 0.0]]}, r"distance_m\[0\]\[1\]"),
        ({"distance_m": [[0.0, -1.0], [1.0, 0.0]]}, r"distance_m\[0\]\[1\]"),
        ({"distance_m": [[0.0, 1.0], [1.0]]}, r"distance_m\[1\]: 1 columns"),
        ({"demand_kg": [1.0, 2.0]}, "demand_kg: 2 values, expected 1"),
        ({"capacity_kg": 0}, "capacity_kg"),
        ({"energy": [[0, 1], [1, 0]]}, "give both or neither"),
        ({"energy": [[0, math.inf], [1, 0]], "energy_budget": 5.0}, r"energy\[0\]\[1\]"),
        ({"windows_s": [(5.0, 1.0)]}, r"windows_s\[0\]"),
        ({"speed_mps": 0.0}, "speed_mps"),
        ({"drones": 0}, "drones"),
        ({"names": ["a", "b"]}, "names: 2 names for 1 drops"),
    ],
)
def test_malformed_problems_name_the_field(change: dict, field: str) -> None:
    fields = {"distance_m": [[0.0, 1.0], [1.0, 0.0]], **change}
    with pytest.raises(PlanError, match=field):
        RoutingProblem(**fields)


def test_checker_catches_every_kind_of_violation() -> None:
    problem = constrained(8, 5, windows_s=[None] * 7 + [(0.0, 100.0)])
    plan = plan_routes(replace(problem, windows_s=None), time_limit_s=0.5)
    assert check_plan(replace(problem, windows_s=None), plan) == []
    first, *rest = plan.sorties

    def sortie(drops: tuple[int, ...], drone: int = 0, start: float = 0.0) -> Sortie:
        return replace(first, drops=drops, drone=drone, start_s=start)

    everything = tuple(range(1, 9))
    overloaded = Plan((sortie(everything),))
    violations = "\n".join(check_plan(problem, overloaded))
    assert "over the capacity" in violations
    assert "energy" in violations and "over the budget" in violations
    assert "drop 8 reached at" in violations
    assert "reports distance_m" in violations

    missing = Plan((first,))
    assert any("not served" in v for v in check_plan(problem, missing))
    twice = Plan((first, first, *rest))
    assert any("served 2 times" in v for v in check_plan(problem, twice))
    ghost = Plan((replace(first, drone=5), *rest))
    assert any("no such drone" in v for v in check_plan(problem, ghost))
    assert len(plan.sorties) >= 2
    crowded = Plan((plan.sorties[0], replace(plan.sorties[1], start_s=0.0)))
    assert any("before the drone's previous sortie" in v for v in check_plan(problem, crowded))


def test_checker_refuses_a_leg_without_a_path() -> None:
    coords = [(0.0, 0.0), (1000.0, 0.0), (0.0, 1000.0)]
    distance = euclid(coords)
    problem = RoutingProblem(distance_m=distance)
    plan = plan_routes(problem, time_limit_s=0.2)
    distance[plan.order[0]][plan.order[1]] = math.inf
    blocked = replace(problem, distance_m=distance)
    assert any("no path from" in v for v in check_plan(blocked, plan))


def test_baseline_is_a_two_optimal_tour() -> None:
    matrix = euclid(points(40, 9))
    start = nearest_neighbour(matrix)
    tour = nearest_neighbour_two_opt(matrix)
    assert sorted(tour.order) == list(range(40)) and tour.order[0] == 0
    assert tour.length <= tour_length(matrix, start)
    assert two_opt(matrix, tour.order) == list(tour.order)
    assert tour.length == pytest.approx(tour_length(matrix, tour.order))


def test_cli_plan_tsplib_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    coords = points(8, 31, size=1000.0)
    body = "".join(f"{i} {x:.1f} {y:.1f}\n" for i, (x, y) in enumerate(coords, 1))
    path = tmp_path / "eight.tsp"
    path.write_text(
        f"NAME: eight\nTYPE: TSP\nDIMENSION: 8\nEDGE_WEIGHT_TYPE: EUC_2D\n"
        f"NODE_COORD_SECTION\n{body}EOF\n"
    )
    assert main(["plan", "--tsplib", str(path), "--json", "--time-limit", "0.3"]) == 0
    out = json.loads(capsys.readouterr().out)
    matrix = read_tsplib(path).distance_matrix()
    assert sorted(out["order"]) == list(range(1, 9))
    assert out["length"] == tour_length(matrix, [i - 1 for i in out["order"]])
    assert out["length"] == brute_force_tsp(matrix)


def test_cli_plan_refuses_a_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.tsp"
    path.write_text("TYPE: TSP\nEDGE_WEIGHT_TYPE: GEO\n")
    assert main(["plan", "--tsplib", str(path), "--json"]) == 2
    assert "bad.tsp:2: EDGE_WEIGHT_TYPE 'GEO' not supported" in capsys.readouterr().err
