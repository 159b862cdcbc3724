"""Multi-drop planning: the OR-Tools planner (guided local search, default time limit) against
nearest neighbour + 2-opt, on the same distance matrices, in the same run.

Instances: for 10, 25, 50 and 100 drops, drops drawn at random in a 6 km square operating
area around the depot with three no-fly zones, distances the airspace module's shortest paths
around the zones (`companion.routing.paths.AirspaceRouter`, 20 m margin); the time to build
that matrix is reported apart from the planning time. Where the optimum is known the gap is
reported: TSPLIB berlin52 (7542; read from ../shared, skipped when absent), eil51 (426),
st70 (675) and kroA100 (21282) from a registry package (`bench/tsplib_sources.py`), and
random 9-drop instances solved by exhaustive search.

The planner's time is its time limit by design (guided local search runs until told to
stop), so a time ratio would only restate that limit: the baseline takes milliseconds and is
worse. The ratios are therefore tour quality, the baseline's length over ours (above 1: ours
is shorter); both planning times are in `figures`, with the gaps to the optimum.

    python bench/routing.py [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from shapely.geometry import Point, Polygon, box

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import interleaved, median_ms, write_results
from bench.tsplib_sources import SourceError, fetch_instances
from companion.routing.airspace import Airspace, OperatingArea, Zone
from companion.routing.baseline import nearest_neighbour_two_opt
from companion.routing.frame import LocalFrame
from companion.routing.paths import AirspaceRouter
from companion.routing.planner import default_time_limit, solve_tsp
from companion.routing.tsplib import euc_2d_matrix, read_tsplib

HOME = (-35.363261, 149.165230)
HALF_M = 3000.0
MARGIN_M = 20.0
ZONES_XY = (box(-1500, -400, -700, 1800), box(400, -2200, 1200, -300), box(800, 600, 2300, 1300))
BERLIN52 = Path(__file__).resolve().parents[2] / "shared" / "reference" / "tsplib" / "berlin52.tsp"
BERLIN52_OPTIMUM = 7542
SIZES = (10, 25, 50, 100)


def zoned_instance(drops: int, seed: int) -> tuple[np.ndarray, float]:
    """A depot at HOME and `drops` random drops outside the zones (and their margin); the
    shortest-path matrix around the zones and the seconds it took to build."""
    frame = LocalFrame(*HOME)

    def lonlat(poly: Polygon) -> Polygon:
        return Polygon([frame.to_latlon(x, y)[::-1] for x, y in poly.exterior.coords])

    area = OperatingArea(0, "area", lonlat(box(-HALF_M, -HALF_M, HALF_M, HALF_M)))
    zones = tuple(Zone(i + 1, f"zone{i + 1}", lonlat(z)) for i, z in enumerate(ZONES_XY))
    rng = random.Random(seed)
    points = [HOME]
    keep_out = [z.buffer(MARGIN_M * 3) for z in ZONES_XY]
    while len(points) < drops + 1:
        x, y = (rng.uniform(-HALF_M + 100, HALF_M - 100) for _ in range(2))
        if not any(z.contains(Point(x, y)) for z in keep_out):
            points.append(frame.to_latlon(x, y))
    start = time.perf_counter()
    router = AirspaceRouter(Airspace(area, zones), HOME, margin_m=MARGIN_M)
    matrix = router.distance_matrix(points)
    return matrix, time.perf_counter() - start


def brute_force(matrix: list[list[int]]) -> int:
    m = np.asarray(matrix)
    perms = np.array(list(itertools.permutations(range(1, len(matrix)))), dtype=np.int64)
    lengths = m[0, perms[:, 0]] + m[perms[:, -1], 0] + m[perms[:, :-1], perms[:, 1:]].sum(axis=1)
    return int(lengths.min())


def compare(matrix: list[list[float]], repetitions: int) -> dict:
    """Both solvers on `matrix`, interleaved; medians of time and length."""
    lengths: dict[str, list[float]] = {"ours": [], "baseline": []}
    times = interleaved(
        {
            "ours": lambda: lengths["ours"].append(solve_tsp(matrix).length),
            "baseline": lambda: lengths["baseline"].append(
                nearest_neighbour_two_opt(matrix).length
            ),
        },
        repetitions,
        warmup=0,
    )
    return {
        "ours_ms": median_ms(times["ours"]),
        "baseline_ms": median_ms(times["baseline"]),
        "ours_length": statistics.median(lengths["ours"]),
        "baseline_length": statistics.median(lengths["baseline"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repetition")
    args = parser.parse_args()
    repetitions = 1 if args.quick else 3
    solve_tsp([[0, 1], [1, 0]], time_limit_s=0.01)  # load OR-Tools outside the timings
    ratios: dict[str, float] = {}
    figures: dict = {"repetitions": repetitions, "zones": len(ZONES_XY), "margin_m": MARGIN_M}
    baselines: dict[str, str] = {}
    for drops in SIZES:
        matrix, matrix_s = zoned_instance(drops, seed=drops)
        rows = matrix.tolist()
        result = compare(rows, repetitions)
        key = f"vs_nn_2opt_{drops}_drops"
        ratios[key] = result["baseline_length"] / result["ours_length"]
        baselines[key] = (
            f"tour length of nearest neighbour + 2-opt (pure Python) over ours, same "
            f"{drops}-drop zoned matrix; ours OR-Tools GLS with its default "
            f"{default_time_limit(drops):g} s limit"
        )
        figures[f"ours_s_{drops}_drops"] = round(result["ours_ms"] / 1000, 3)
        figures[f"baseline_ms_{drops}_drops"] = round(result["baseline_ms"], 2)
        figures[f"matrix_s_{drops}_drops"] = round(matrix_s, 3)
        figures[f"ours_m_{drops}_drops"] = round(result["ours_length"], 1)
        figures[f"baseline_m_{drops}_drops"] = round(result["baseline_length"], 1)
        figures[f"length_vs_baseline_{drops}_drops"] = round(
            result["ours_length"] / result["baseline_length"], 4
        )
    known: dict[str, tuple[Path, int]] = {}
    if BERLIN52.exists():
        known["berlin52"] = (BERLIN52, BERLIN52_OPTIMUM)
    else:
        figures["berlin52"] = f"skipped: {BERLIN52} absent"
    try:
        known.update(fetch_instances())
    except SourceError as err:
        figures["eil51_st70_kroA100"] = f"skipped: {err}"
    for name, (path, optimum) in known.items():
        result = compare(read_tsplib(path).distance_matrix(), repetitions)
        ratios[f"vs_nn_2opt_{name}"] = result["baseline_length"] / result["ours_length"]
        baselines[f"vs_nn_2opt_{name}"] = (
            f"tour length of nearest neighbour + 2-opt over ours on TSPLIB {name}"
        )
        figures[f"{name}_optimum"] = optimum
        figures[f"{name}_ours_length"] = result["ours_length"]
        figures[f"{name}_baseline_length"] = result["baseline_length"]
        figures[f"{name}_ours_gap_pct"] = round(100 * (result["ours_length"] / optimum - 1), 3)
        figures[f"{name}_baseline_gap_pct"] = round(
            100 * (result["baseline_length"] / optimum - 1), 3
        )
        figures[f"{name}_ours_s"] = round(result["ours_ms"] / 1000, 3)
    ours_gaps, baseline_gaps = [], []
    for seed in range(3):
        rng = random.Random(100 + seed)
        coords = [(rng.uniform(0, 5000), rng.uniform(0, 5000)) for _ in range(10)]
        matrix = euc_2d_matrix(coords)
        optimum = brute_force(matrix)
        ours_gaps.append(100 * (solve_tsp(matrix, time_limit_s=0.5).length / optimum - 1))
        baseline_gaps.append(100 * (nearest_neighbour_two_opt(matrix).length / optimum - 1))
    figures["brute_force_9_drops_ours_gap_pct"] = [round(g, 3) for g in ours_gaps]
    figures["brute_force_9_drops_baseline_gap_pct"] = [round(g, 3) for g in baseline_gaps]
    figures["load_average_1min"] = round(_load(), 2)
    write_results("routing", ratios, figures, baselines)


def _load() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return math.nan


if __name__ == "__main__":
    main()
