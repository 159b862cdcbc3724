"""`bench/daemon_cpu.py`'s own parts: reading /proc, summing up, the checks that make a run
fail rather than look cheap, and the part runner's line protocol (no timings asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.daemon_cpu import (
    BenchError,
    Sample,
    Usage,
    check_parts_ran,
    cpu_ticks,
    part_sum,
    read_sample,
    run_part,
    status_kb,
    summarise,
)

# proc(5): pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
# cmajflt utime stime cutime cstime ...
STAT = "4242 (py (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 {u} {s} 7 8 20 0 5 0"


def test_cpu_ticks_adds_utime_and_stime_even_when_the_name_holds_parentheses() -> None:
    assert cpu_ticks(STAT.format(u=123, s=45)) == 168


@pytest.mark.parametrize("text", ["", "4242 (py) S 1 2", STAT.format(u="x", s=1)])
def test_cpu_ticks_refuses_what_is_not_a_stat_line(text: str) -> None:
    with pytest.raises(BenchError, match="/proc/PID/stat"):
        cpu_ticks(text)


def test_status_kb_reads_the_named_figure_and_refuses_a_missing_or_odd_one() -> None:
    status = "Name:\tpython\nVmHWM:\t  20480 kB\nVmRSS:\t  10240 kB\n"
    assert status_kb(status, "VmRSS") == 10240
    assert status_kb(status, "VmHWM") == 20480
    with pytest.raises(BenchError, match="no VmSwap line"):
        status_kb(status, "VmSwap")
    with pytest.raises(BenchError, match="not a kB figure"):
        status_kb("VmRSS:\t10 MB\n", "VmRSS")


def test_summarise_is_the_cpu_growth_over_the_span_and_the_memory_of_the_samples() -> None:
    samples = [
        Sample(10.0, 5.0, 1000, 1500),
        Sample(11.0, 5.2, 3000, 3000),
        Sample(14.0, 6.0, 2000, 3000),
    ]
    usage = summarise(samples)
    assert usage == Usage(
        wall_s=4.0, cpu_s=1.0, rss_median_kb=2000, rss_peak_kb=3000, hwm_kb=3000, samples=3
    )
    assert usage.cpu_share == 0.25
    assert usage.figures()["cpu_pct"] == 25.0


def test_summarise_needs_a_span() -> None:
    with pytest.raises(BenchError, match="at least two"):
        summarise([Sample(1.0, 0.0, 1, 1)])
    with pytest.raises(BenchError, match="no time"):
        summarise([Sample(1.0, 0.0, 1, 1), Sample(1.0, 0.0, 1, 1)])


def test_part_sum_adds_the_named_parts_only() -> None:
    a = Usage(wall_s=2.0, cpu_s=1.0, rss_median_kb=100, rss_peak_kb=110, hwm_kb=120, samples=5)
    b = Usage(wall_s=4.0, cpu_s=1.0, rss_median_kb=50, rss_peak_kb=60, hwm_kb=70, samples=9)
    total = part_sum({"a": a, "b": b, "c": a}, ("a", "b"))
    assert total == {"cpu_share": 0.75, "rss_median_kb": 150, "rss_peak_kb": 170, "hwm_kb": 190}


def test_read_sample_reads_a_live_process_and_refuses_a_gone_one() -> None:
    sample = read_sample(os.getpid())
    assert sample.rss_kb > 0 and sample.hwm_kb >= sample.rss_kb and sample.cpu_s > 0
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with pytest.raises(BenchError, match=f"process {child.pid} exited"):
        read_sample(child.pid)


def _status(**parts: tuple[str, int]) -> dict:
    return {
        "subsystems": {
            name: {"state": state, "detail": "", "restarts": restarts}
            for name, (state, restarts) in parts.items()
        }
    }


def test_a_part_not_running_restarted_or_missing_fails_the_flight() -> None:
    ok = _status(gps=("running", 0), telemetry=("running", 1), vision=("running", 0))
    check_parts_ran(ok, ok, vision=True)
    no_vision = _status(gps=("running", 0), telemetry=("running", 1), vision=("off", 0))
    check_parts_ran(no_vision, no_vision, vision=False)
    with pytest.raises(BenchError, match="vision was not running"):
        check_parts_ran(ok, no_vision, vision=True)
    restarted = _status(gps=("running", 1), telemetry=("running", 1), vision=("running", 0))
    with pytest.raises(BenchError, match="gps was restarted"):
        check_parts_ran(ok, restarted, vision=True)
    with pytest.raises(BenchError, match="no subsystem 'telemetry'"):
        check_parts_ran(ok, _status(gps=("running", 0)), vision=False)


def test_a_part_runs_in_its_own_process_and_is_measured(tmp_path: Path) -> None:
    run = run_part("interpreter", tmp_path / "skycourier.toml", 1.0, 0.0)
    assert run.usage.samples >= 2 and run.usage.rss_median_kb > 0
    assert run.stats_before == run.stats_after == {}


def test_a_part_that_cannot_start_fails_the_run_saying_why(tmp_path: Path) -> None:
    missing = tmp_path / "skycourier.toml"
    with pytest.raises(BenchError, match="part gps: expected 'ready'") as caught:
        run_part("gps", missing, 1.0, 0.0)
    assert str(missing) in str(caught.value)  # the part's own reason, from its log
