"""Shared benchmark plumbing: interleaved repetitions, medians, and the results file format
of DESIGN.md (ratios are baseline cost over our cost: above 1 means we are faster)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def interleaved(
    runs: dict[str, Callable[[], None]], repetitions: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Time each callable `repetitions` times, alternating between them so that machine noise
    falls on all of them alike; returns seconds per run by name."""
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repetitions):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def median_ms(samples: list[float]) -> float:
    """Median of samples in seconds, as milliseconds."""
    return statistics.median(samples) * 1000.0


def environment() -> dict:
    """Where the benchmark ran."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def write_results(
    name: str, ratios: dict[str, float], figures: dict, baselines: dict[str, str]
) -> Path:
    """Write bench/results/NAME.json and print the comparison."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {
        "benchmark": name,
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "figures": figures,
        "baselines": baselines,
        "environment": environment(),
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
    for key, value in ratios.items():
        print(f"{name}: {key} = {value:.2f}  ({baselines[key]})")
    for key, value in figures.items():
        print(f"{name}: {key} = {value}")
    print(f"written {path}")
    return path
