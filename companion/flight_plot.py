"""``flight.png``: the ground track and the altitude profile of one flight, phases coloured.

Drawn with matplotlib's object API on an Agg canvas, never pyplot: no display is needed (the
companion is headless), no global figure state is touched, and it is safe off the main thread.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from companion.geo import local_en_m
from companion.report import PhaseSpan, TrackPoint

_OUTSIDE = "(no phase)"
_OUTSIDE_COLOUR = "0.6"


def _phase_of(phases: Sequence[PhaseSpan], starts: list[float], t: float) -> str:
    i = bisect.bisect_right(starts, t) - 1
    if i < 0:
        return _OUTSIDE
    end = phases[i].end_s
    return phases[i].name if end is None or t <= end else _OUTSIDE


def _runs(track: Sequence[TrackPoint], phases: Sequence[PhaseSpan]) -> list[tuple[str, list[int]]]:
    """Consecutive sample indices grouped by phase; each run shares its first sample with the
    previous run's last, so the drawn line has no gaps."""
    starts = [s.start_s if s.start_s is not None else float("-inf") for s in phases]
    runs: list[tuple[str, list[int]]] = []
    for i, point in enumerate(track):
        name = _phase_of(phases, starts, point.boot_time_s)
        if runs and runs[-1][0] == name:
            runs[-1][1].append(i)
        else:
            runs.append((name, [i - 1, i] if i else [i]))
    return runs


def _colours(phases: Sequence[PhaseSpan]) -> dict[str, Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10"].colors
    names = list(dict.fromkeys(s.name for s in phases))
    colours: dict[str, Any] = {n: palette[i % len(palette)] for i, n in enumerate(names)}
    colours[_OUTSIDE] = _OUTSIDE_COLOUR
    return colours


def _ground_track(
    ax: Axes,
    report: Mapping[str, Any],
    east: list[float],
    north: list[float],
    runs: list[tuple[str, list[int]]],
    colours: dict[str, Any],
) -> None:
    labelled: set[str] = set()
    for name, idx in runs:
        ax.plot(
            [east[i] for i in idx],
            [north[i] for i in idx],
            color=colours[name],
            linewidth=2,
            label=None if name in labelled else name,
        )
        labelled.add(name)
    home, drop = report["home"], report["drop"]
    drop_e, drop_n = local_en_m(home["lat"], home["lon"], drop["lat"], drop["lon"])
    ax.plot([0], [0], marker="^", markersize=11, color="black", linestyle="none", label="home")
    ax.plot(
        [drop_e],
        [drop_n],
        marker="X",
        markersize=11,
        color="crimson",
        linestyle="none",
        label="drop",
    )
    ax.set_xlabel("east of home (m)")
    ax.set_ylabel("north of home (m)")
    ax.set_title("ground track")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="best")


def _altitude(
    ax: Axes,
    track: Sequence[TrackPoint],
    phases: Sequence[PhaseSpan],
    runs: list[tuple[str, list[int]]],
    colours: dict[str, Any],
    t0: float,
    since: str,
) -> None:
    times = [p.boot_time_s - t0 for p in track]
    for name, idx in runs:
        ax.plot([times[i] for i in idx], [track[i].alt_rel_m for i in idx], color=colours[name])
    last = times[-1] if times else 0.0
    for span in phases:
        if span.start_s is None:
            continue
        start = span.start_s - t0
        end = (span.end_s - t0) if span.end_s is not None else last
        ax.axvspan(start, end, color=colours[span.name], alpha=0.12, linewidth=0)
        ax.axvline(start, color="0.5", linewidth=0.6, linestyle="--")
        ax.text(
            (start + end) / 2,
            1.01,
            span.name,
            rotation=60,
            fontsize="x-small",
            ha="left",
            va="bottom",
            transform=ax.get_xaxis_transform(),
        )
    ax.set_xlabel(f"vehicle time since {since} (s)")
    ax.set_ylabel("altitude above home (m)")
    ax.grid(True, alpha=0.3)
    battery = [i for i, p in enumerate(track) if p.battery_pct is not None]
    if battery:
        twin = ax.twinx()
        twin.plot(
            [times[i] for i in battery],
            [track[i].battery_pct for i in battery],
            color="0.25",
            linestyle=":",
        )
        twin.set_ylabel("battery (%, dotted)")
        twin.set_ylim(0, 105)


def plot_flight(
    path: Path,
    report: Mapping[str, Any],
    track: Sequence[TrackPoint],
    phases: Sequence[PhaseSpan],
) -> None:
    """Render the two-panel flight figure to `path` (PNG)."""
    fig = Figure(figsize=(13, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_map, ax_alt = fig.subplots(1, 2, width_ratios=[1, 1.3])
    home = report["home"]
    east, north = [], []
    for p in track:
        e, n = local_en_m(home["lat"], home["lon"], p.lat, p.lon)
        east.append(e)
        north.append(n)
    runs, colours = _runs(track, phases), _colours(phases)
    takeoff = report.get("flight_start_s")
    t0 = takeoff if takeoff is not None else (track[0].boot_time_s if track else 0.0)
    _ground_track(ax_map, report, east, north, runs, colours)
    since = "takeoff" if takeoff is not None else "first sample"
    _altitude(ax_alt, track, phases, runs, colours, t0, since)
    if not track:
        ax_map.text(0.5, 0.5, "no position samples", ha="center", transform=ax_map.transAxes)

    def num(key: str, unit: str) -> str:
        value = report.get(key)
        return "n/a" if value is None else f"{value:.0f} {unit}"

    fig.suptitle(
        f"{report['mission_id']}: {report['outcome']} — flew {num('distance_m', 'm')} in "
        f"{num('duration_s', 's')} (ideal {num('ideal_duration_s', 's')}), "
        f"max {num('max_alt_m', 'm')}, battery used {num('battery_used_pct', '%')}"
    )
    fig.savefig(path, dpi=110)
