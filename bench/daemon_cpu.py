"""Daemon CPU and memory: `skycourier run` through a HIL delivery, vision off and on, against
the sum of its parts run alone.

The daemon. The HIL rig (`sim.harness.hil.HilRig`: built-in vehicle in real time, NEO-6M
and A7670 emulators on ptys, mosquitto, and for vision on the MJPEG camera feed) runs the
daemon as its own process; one signed order is delivered as in `tests/test_hil.py` (order
over MQTT, PIN by SMS at the drop). The daemon's process is sampled from the moment its
`order-accepted` reaches the ground until `order-done` does: CPU share is the growth of
utime + stime in /proc/PID/stat (every thread of the process) over the wall seconds between
the first and the last sample; resident memory is VmRSS from /proc/PID/status every
`SAMPLE_PERIOD_S` (median and peak of the samples) and VmHWM (the peak over the process's
life, start-up included) at the last sample. After the flight the daemon's own status
(control socket) must show every part running, unrestarted, and the order delivered, or
the run fails: a part that quietly stopped would make the daemon look cheap.

The baseline, "the sum of its parts run alone": each part the daemon runs, started alone in
its own process (`bench/_daemon_part.py`) with the function the daemon calls and the
configuration the rig wrote, against the same emulated hardware (a second rig with the
camera and no daemon): the autopilot link, the GPS driver, the telemetry uplink, vision.
Each is sampled the same way for `--part-s` seconds once it does its job and `SETTLE_S` more
have passed (the daemon too was warm when its order came). Shares are rates, so a part's
run can be shorter than the flight. Parts alone miss what only the whole daemon does: the
mission, order intake and the supervisor's ticks, telemetry samples (the uplink alone has
no vehicle state to sample, so it sends its idle status traffic: the messages it sent are
counted beside the daemon's), and the obstacle feed (vision alone has no vehicle). Vision
off is compared with the sum of the three others, vision on with all four.

Memory: each part alone pays its own interpreter and imports, so the sum of their RSS
counts the Python runtime once per part. The bare interpreter, the interpreter with the
configuration loaded (what every part pays first) and with everything `skycourier run`
imports are measured too, and `rss_parts_less_extra_runtimes_mb_*` takes the configuration
runtime off the sum for every part but one.

Ratios follow DESIGN.md: the parts' sum over the daemon, so above 1 means the daemon costs
less than its parts alone. The machine's 1-minute load average at start and end is recorded:
other work on a shared machine slows everything, the daemon's flight is in real time.

    python bench/daemon_cpu.py [--quick] [--part-s SECONDS]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import write_results

PIN = "4711"
ORDER_ID = "bench-cpu"
#: How often the process is sampled (seconds).
SAMPLE_PERIOD_S = 0.5
#: Seconds a part runs before its samples start, and each part's sampled run.
SETTLE_S = 3.0
PART_S = 30.0
QUICK_PART_S = 10.0
#: The memory reference points (nothing runs in them) are sampled this long.
REFERENCE_S = 2.0
PARTS = ("autopilot", "gps", "telemetry", "vision")
REFERENCES = ("interpreter", "config", "daemon-imports")
PART_SCRIPT = Path(__file__).resolve().with_name("_daemon_part.py")
#: Bounds on what the bench waits for: generous, since a loaded machine slows everything but
#: the vehicle's flight, which keeps real time.
READY_S = 180.0
ANSWER_S = 120.0
FLIGHT_S = 600.0
CHILD_ANSWER_S = 120.0
#: Environment variables of a service manager that must not reach a part (as `hil_daemon`).
_SERVICE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class BenchError(RuntimeError):
    """A run could not be measured as it should (a part or the daemon failed); says why."""


# -- sampling /proc ------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One reading of a process: when (monotonic s), CPU used so far (s), VmRSS, VmHWM (kB)."""

    t: float
    cpu_s: float
    rss_kb: int
    hwm_kb: int


def cpu_ticks(stat: str) -> int:
    """utime + stime (clock ticks, every thread of the process) from /proc/PID/stat text.
    The command name (field 2) is in parentheses and may hold spaces and parentheses itself,
    so fields are counted from the last ')'."""
    head, sep, tail = stat.rpartition(")")
    fields = tail.split()
    if not sep or not head or len(fields) < 13:
        raise BenchError(f"/proc/PID/stat: not a stat line: {stat[:80]!r}")
    # Field 3 (state) is fields[0]; utime and stime are fields 14 and 15 (proc(5)).
    try:
        return int(fields[11]) + int(fields[12])
    except ValueError:
        raise BenchError(f"/proc/PID/stat: utime/stime not numbers: {stat[:80]!r}") from None


def status_kb(status: str, key: str) -> int:
    """The kB figure of `key` (VmRSS, VmHWM) in /proc/PID/status text; BenchError if absent
    (a process that has exited, or a kernel that does not say)."""
    for line in status.splitlines():
        name, sep, value = line.partition(":")
        if sep and name == key:
            parts = value.split()
            if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
                return int(parts[0])
            raise BenchError(f"/proc/PID/status: {key} is not a kB figure: {value.strip()!r}")
    raise BenchError(f"/proc/PID/status: no {key} line")


_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def read_sample(pid: int, clock: Callable[[], float] = time.monotonic) -> Sample:
    """Read process `pid` now; BenchError if it is gone."""
    proc = Path("/proc") / str(pid)
    try:
        t = clock()
        stat = (proc / "stat").read_text()
        status = (proc / "status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        raise BenchError(f"process {pid} exited while it was measured") from None
    return Sample(
        t, cpu_ticks(stat) / _TICKS_PER_S, status_kb(status, "VmRSS"), status_kb(status, "VmHWM")
    )


@dataclass(frozen=True)
class Usage:
    """What a process used over a measured span."""

    wall_s: float
    cpu_s: float
    rss_median_kb: float
    rss_peak_kb: int
    hwm_kb: int
    samples: int

    @property
    def cpu_share(self) -> float:
        """CPU seconds per wall second (1.0: one core busy all along)."""
        return self.cpu_s / self.wall_s

    def figures(self) -> dict[str, float | int]:
        return {
            "cpu_pct": round(100 * self.cpu_share, 2),
            "rss_median_mb": round(self.rss_median_kb / 1024, 1),
            "rss_peak_mb": round(self.rss_peak_kb / 1024, 1),
            "hwm_mb": round(self.hwm_kb / 1024, 1),
            "wall_s": round(self.wall_s, 1),
            "samples": self.samples,
        }


def summarise(samples: list[Sample]) -> Usage:
    """The usage between the first and the last of `samples` (at least two, in time order)."""
    if len(samples) < 2:
        raise BenchError(f"{len(samples)} sample(s): at least two are needed for a rate")
    first, last = samples[0], samples[-1]
    wall = last.t - first.t
    if wall <= 0:
        raise BenchError("the samples span no time")
    return Usage(
        wall_s=wall,
        cpu_s=last.cpu_s - first.cpu_s,
        rss_median_kb=statistics.median(s.rss_kb for s in samples),
        rss_peak_kb=max(s.rss_kb for s in samples),
        hwm_kb=last.hwm_kb,
        samples=len(samples),
    )


class Sampler:
    """Samples process `pid` every `period_s` on a thread, from `start()` to `stop()`."""

    def __init__(self, pid: int, period_s: float = SAMPLE_PERIOD_S) -> None:
        self.pid = pid
        self.period_s = period_s
        self._samples: list[Sample] = []
        self._error: BenchError | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def start(self) -> Sampler:
        self._samples.append(read_sample(self.pid))
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self._samples.append(read_sample(self.pid))
            except BenchError as exc:
                self._error = exc
                return

    def halt(self) -> None:
        """Stop sampling (safe twice); `stop` then sums up."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def stop(self) -> Usage:
        """Take the last sample and sum up; BenchError if the process went away meanwhile."""
        self.halt()
        if self._error is not None:
            raise self._error
        self._samples.append(read_sample(self.pid))
        return summarise(self._samples)


def measure_for(pid: int, seconds: float) -> Usage:
    sampler = Sampler(pid).start()
    time.sleep(seconds)
    return sampler.stop()


# -- the daemon through a delivery ---------------------------------------------------------


@dataclass(frozen=True)
class Flight:
    usage: Usage
    uplink_messages: int


def fly(work: Path, *, camera: bool) -> Flight:
    """One HIL delivery by the daemon (vision on with `camera`), its process measured from
    order-accepted to order-done."""
    from companion.intake.control import daemon_status
    from sim.harness.hil import HilRig, follow_order

    with HilRig(work, camera=camera) as rig:
        rig.wait_ready(READY_S)
        pid, ground, config = rig.daemon.pid, rig.ground, rig.config
        assert pid is not None and ground is not None and config is not None
        socket = config.intake.socket_path
        mark = rig.submit_order(rig.order(ORDER_ID, pin=PIN))
        rig.wait_event("order-accepted", ORDER_ID, ANSWER_S, since=mark)
        sampler = Sampler(pid).start()
        before = daemon_status(socket)
        try:
            done = follow_order(
                ground,
                ORDER_ID,
                since=mark,
                timeout_s=FLIGHT_S,
                answer_recipient=lambda: rig.send_sms(f"pin {PIN}"),
                check=rig.daemon_problem,
            )
        finally:
            sampler.halt()  # a failed flight's own error, not the sampler's, is the news
        usage = sampler.stop()
        after = daemon_status(socket)
        if done.kind != "order-done" or done.detail.get("outcome") != "delivered":
            raise BenchError(f"the order was not delivered: {done.kind} {done.detail}")
        check_parts_ran(before, after, vision=camera)
        code = rig.stop_daemon()
        if code != 0:
            raise BenchError(f"the daemon exited with status {code}:\n{rig.daemon.tail()}")
    return Flight(usage, _uplink_messages(after) - _uplink_messages(before))


def check_parts_ran(before: Mapping[str, Any], after: Mapping[str, Any], *, vision: bool) -> None:
    """BenchError unless every part the run needs was running at both status readings and
    was not restarted in between (the daemon's `skycourier status` snapshots)."""
    needed = ["gps", "telemetry"] + (["vision"] if vision else [])
    for name in needed:
        states = []
        for snapshot in (before, after):
            part = snapshot.get("subsystems", {}).get(name)
            if not isinstance(part, dict):
                raise BenchError(f"the daemon's status has no subsystem {name!r}: {snapshot}")
            states.append(part)
        if any(s.get("state") != "running" for s in states):
            raise BenchError(f"daemon part {name} was not running throughout: {states}")
        if states[0].get("restarts") != states[1].get("restarts"):
            raise BenchError(f"daemon part {name} was restarted during the flight: {states}")


def _uplink_messages(snapshot: Mapping[str, Any]) -> int:
    uplink = snapshot.get("uplink")
    if not isinstance(uplink, dict) or not isinstance(uplink.get("messages"), int):
        raise BenchError(f"the daemon's status has no uplink message count: {snapshot}")
    return uplink["messages"]


# -- each part alone -----------------------------------------------------------------------


@dataclass(frozen=True)
class PartRun:
    usage: Usage
    stats_before: dict[str, Any]
    stats_after: dict[str, Any]


class PartProcess:
    """`bench/_daemon_part.py PART` in its own process, its log in `log_path`."""

    def __init__(self, part: str, config_path: Path, log_path: Path) -> None:
        self.part = part
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if k not in _SERVICE_ENV}
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(PART_SCRIPT), part, "--config", str(config_path)],
                cwd=config_path.parent,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, name=f"bench-{part}", daemon=True).start()

    def _read(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        for line in stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def expect(self, prefix: str, timeout_s: float = CHILD_ANSWER_S) -> str:
        """The next line of the part's output, which must start with `prefix`."""
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            line = None
            what = f"nothing within {timeout_s:g} s"
        else:
            what = "its output ended" if line is None else f"it said {line!r}"
        if line is None or not line.startswith(prefix):
            raise BenchError(
                f"part {self.part}: expected {prefix!r}, but {what}; its log "
                f"({self.log_path}) ends:\n{self.log_tail()}"
            )
        return line

    def stats(self) -> dict[str, Any]:
        self._send("stats\n")
        return json.loads(self.expect("stats ").removeprefix("stats "))

    def _send(self, text: str) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            stdin.write(text)
            stdin.flush()
        except BrokenPipeError:
            tail = self.log_tail()
            raise BenchError(f"part {self.part} is gone; its log ends:\n{tail}") from None

    def close(self, timeout_s: float = 30.0) -> int:
        """End its stdin (it stops the part and exits); killed if still there after
        `timeout_s`. Its exit status."""
        with contextlib.suppress(BrokenPipeError):
            _close(self.proc.stdin)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            raise BenchError(f"part {self.part} did not stop within {timeout_s:g} s") from None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(log unreadable: {exc})"
        return "\n".join(text.splitlines()[-lines:])


def _close(stream: IO[str] | None) -> None:
    if stream is not None:
        stream.close()


def run_part(part: str, config_path: Path, seconds: float, settle_s: float) -> PartRun:
    """`part` alone: started, settled, sampled for `seconds`, stopped."""
    child = PartProcess(part, config_path, config_path.parent / f"part-{part}.log")
    try:
        child.expect("ready", READY_S)
        time.sleep(settle_s)
        before = child.stats()
        usage = measure_for(child.proc.pid, seconds)
        after = child.stats()
        code = child.close()
        if code != 0:
            raise BenchError(f"part {part} exited with status {code}:\n{child.log_tail()}")
    finally:
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait()
    return PartRun(usage, before, after)


def alone(work: Path, part_s: float) -> dict[str, PartRun]:
    """The memory references and each part alone on a rig with the camera and no daemon."""
    from sim.harness.hil import HilRig

    runs: dict[str, PartRun] = {}
    with HilRig(work, camera=True, start_daemon=False) as rig:
        for name in REFERENCES:
            runs[name] = run_part(name, rig.config_path, REFERENCE_S, 0.0)
        for name in PARTS:
            runs[name] = run_part(name, rig.config_path, part_s, SETTLE_S)
    return runs


# -- putting it together -------------------------------------------------------------------


def part_sum(parts: Mapping[str, Usage], names: tuple[str, ...]) -> dict[str, float]:
    """CPU share and memory of `names` added up."""
    chosen = [parts[n] for n in names]
    return {
        "cpu_share": sum(u.cpu_share for u in chosen),
        "rss_median_kb": sum(u.rss_median_kb for u in chosen),
        "rss_peak_kb": float(sum(u.rss_peak_kb for u in chosen)),
        "hwm_kb": float(sum(u.hwm_kb for u in chosen)),
    }


def table(rows: list[tuple[str, float, float, float, float]]) -> str:
    """Rows (name, CPU %, RSS median MB, RSS peak MB, VmHWM MB) as a text table."""
    out = [f"{'':36} {'CPU %':>7} {'RSS med':>8} {'RSS peak':>8} {'VmHWM':>8}"]
    for name, cpu, med, peak, hwm in rows:
        out.append(f"{name:36} {cpu:7.1f} {med:8.1f} {peak:8.1f} {hwm:8.1f}")
    return "\n".join(out)


def load_average() -> float | None:
    """The 1-minute load average, or None where /proc/loadavg cannot be read."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _mb(kb: float) -> float:
    return kb / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"parts {QUICK_PART_S:g} s each")
    parser.add_argument("--part-s", type=float, help=f"each part's run (default {PART_S:g} s)")
    parser.add_argument("--keep", type=Path, help="keep the rigs' folders (logs) here")
    args = parser.parse_args()
    part_s = args.part_s or (QUICK_PART_S if args.quick else PART_S)
    if part_s < 2 * SAMPLE_PERIOD_S:
        parser.error(f"--part-s must be at least {2 * SAMPLE_PERIOD_S:g} s")
    from companion.config import Config
    from companion.vision.detector import model_path

    vision = Config().vision
    model = model_path(vision.variant, vision.models_dir)
    if not model.exists():
        sys.exit(
            f"daemon_cpu: {model} is missing: vision needs it; run "
            f"`skycourier models build --variant {vision.variant}`"
        )
    load_start = load_average()
    started = time.monotonic()
    work = args.keep or Path(tempfile.mkdtemp(prefix="dcpu-"))
    try:
        off = fly(work / "off", camera=False)
        on = fly(work / "on", camera=True)
        runs = alone(work / "alone", part_s)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    report(off, on, runs, part_s, load_start, time.monotonic() - started)


def report(
    off: Flight,
    on: Flight,
    runs: Mapping[str, PartRun],
    part_s: float,
    load_start: float | None,
    total_s: float,
) -> None:
    """Print the table and write bench/results/daemon_cpu.json."""
    usage = {name: run.usage for name, run in runs.items()}
    without_vision = tuple(p for p in PARTS if p != "vision")
    sums = {"vision_off": part_sum(usage, without_vision), "vision_on": part_sum(usage, PARTS)}
    flights = {"vision_off": off, "vision_on": on}
    config_rss = usage["config"].rss_median_kb
    rows: list[tuple[str, float, float, float, float]] = []
    ratios: dict[str, float] = {}
    baselines: dict[str, str] = {}
    figures: dict[str, Any] = {}
    for key, flight in flights.items():
        u, s = flight.usage, sums[key]
        names = PARTS if key == "vision_on" else without_vision
        rows.append(
            (f"daemon, {key.replace('_', ' ')}", 100 * u.cpu_share, _mb(u.rss_median_kb),
             _mb(u.rss_peak_kb), _mb(u.hwm_kb))
        )  # fmt: skip
        rows.append(
            (f"  sum of {len(names)} parts alone", 100 * s["cpu_share"], _mb(s["rss_median_kb"]),
             _mb(s["rss_peak_kb"]), _mb(s["hwm_kb"]))
        )  # fmt: skip
        ratios[f"cpu_{key}_vs_parts"] = s["cpu_share"] / u.cpu_share
        ratios[f"rss_{key}_vs_parts"] = s["rss_median_kb"] / u.rss_median_kb
        parts = " + ".join(names)
        baselines[f"cpu_{key}_vs_parts"] = (
            f"CPU share of {parts}, each alone in its own process, summed, over the daemon's "
            f"through a HIL delivery with vision {key.removeprefix('vision_')}"
        )
        baselines[f"rss_{key}_vs_parts"] = (
            f"median VmRSS of {parts} alone, summed (each pays its own interpreter), over the "
            "daemon's"
        )
        for metric, value in u.figures().items():
            figures[f"daemon_{key}_{metric}"] = value
        figures[f"daemon_{key}_uplink_messages"] = flight.uplink_messages
        figures[f"parts_{key}_cpu_pct"] = round(100 * s["cpu_share"], 2)
        figures[f"parts_{key}_rss_median_mb"] = round(_mb(s["rss_median_kb"]), 1)
        figures[f"rss_parts_less_extra_runtimes_mb_{key}"] = round(
            _mb(s["rss_median_kb"] - (len(names) - 1) * config_rss), 1
        )
    for name in PARTS:
        u = usage[name]
        rows.append((f"  {name} alone", 100 * u.cpu_share, _mb(u.rss_median_kb),
                     _mb(u.rss_peak_kb), _mb(u.hwm_kb)))  # fmt: skip
        for metric, value in u.figures().items():
            figures[f"part_{name}_{metric}"] = value
    for name in REFERENCES:
        u = usage[name]
        rows.append((f"  ({name}: nothing running)", 100 * u.cpu_share, _mb(u.rss_median_kb),
                     _mb(u.rss_peak_kb), _mb(u.hwm_kb)))  # fmt: skip
        figures[f"{name.replace('-', '_')}_rss_mb"] = round(_mb(u.rss_median_kb), 1)
    telemetry, vision = runs["telemetry"], runs["vision"]
    figures["part_telemetry_uplink_messages"] = (
        telemetry.stats_after["messages"] - telemetry.stats_before["messages"]
    )
    figures["part_vision_frames_per_s"] = round(
        (vision.stats_after["frames"] - vision.stats_before["frames"]) / vision.usage.wall_s, 2
    )
    figures.update(
        {
            "part_s": part_s,
            "settle_s": SETTLE_S,
            "sample_period_s": SAMPLE_PERIOD_S,
            "bench_s": round(total_s, 1),
            "load_average_1min_start": load_start,
            "load_average_1min_end": load_average(),
        }
    )
    print(table(rows))
    print(
        "RSS in MB. Each part alone pays its own interpreter: the sums count the Python "
        f"runtime once per part (configuration loaded: {_mb(config_rss):.1f} MB each)."
    )
    write_results("daemon_cpu", ratios, figures, baselines)


if __name__ == "__main__":
    main()
