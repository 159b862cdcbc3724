"""The flight report: what a delivery actually flew, against what it ideally would take.

`FlightRecorder` listens on the bus (or is fed directly): `VehicleState` samples become the
ground track and altitude profile, `MissionEvent` transitions become phase intervals. All
times are the autopilot's boot clock (`VehicleState.boot_time_s`), because under simulation it
runs faster than the wall clock and the flight must be timed as the vehicle lived it.

`build_report` turns a recording into the dict written as ``report.json``; `write_report`
writes it and ``flight.png`` (see `companion.flight_plot`).

What ``duration_s`` counts: from the start of the first *flying* phase (`FLYING_PHASES`:
takeoff, which begins with the arm-to-climb spool-up) to the end of the last flying or abort
phase (landing ends at disarm). Waiting for the vehicle to become armable and arming itself
are excluded: they depend on GPS and EKF start-up, not on how the delivery was flown. This is
the "takeoff to disarm" time that ArduCopter SITL's reference is measured with.

``ideal_duration_s`` is the time the delivery would take flown exactly at the configured rates,
with instant acceleration (see `ideal_phase_durations`); ``duration_ratio`` (actual over ideal)
shows the cost of acceleration, braking, RTL's loiter and the like.

``ground`` is there only when a ground service watched the flight (`skycourier sim
--ground`): its dispatch page, the order's tracking page and the ground database.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from companion.bus import Bus
from companion.config import Config, FlightConfig
from companion.geo import bearing_deg, distance_m
from companion.mission.events import FLYING_PHASES, MissionEvent, Phase
from companion.mission.journal import FINISHED_EVENT
from firmware_bridge.state import VehicleState

#: Phases that count towards `duration_s` once the vehicle has flown (abort ends in RTL/LAND).
TIMED_PHASES = (*(p.value for p in FLYING_PHASES), Phase.ABORT.value)


@dataclass(frozen=True)
class TrackPoint:
    """One position sample: vehicle boot time, WGS-84 position, height above home, battery."""

    boot_time_s: float
    lat: float
    lon: float
    alt_rel_m: float
    battery_pct: int | None


@dataclass(frozen=True)
class PhaseSpan:
    """One phase: vehicle boot-clock start and end (None while open or before telemetry)."""

    name: str
    start_s: float | None
    end_s: float | None
    start_wall: float
    end_wall: float | None

    @property
    def duration_s(self) -> float | None:
        """Vehicle seconds spent in the phase, once closed."""
        if self.start_s is None or self.end_s is None:
            return None
        return self.end_s - self.start_s


class FlightRecorder:
    """Collects the track and the phase intervals of one flight; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._track: list[TrackPoint] = []
        self._phases: list[PhaseSpan] = []
        self._home: tuple[float, float] | None = None

    def attach(self, bus: Bus) -> Callable[[], None]:
        """Record `VehicleState` and `MissionEvent` messages from `bus`; returns detach."""
        stops = [bus.subscribe(VehicleState, self.sample)]
        stops.append(bus.subscribe(MissionEvent, self.on_event))

        def detach() -> None:
            for stop in stops:
                stop()

        return detach

    @property
    def track(self) -> list[TrackPoint]:
        """The samples so far, in vehicle-time order."""
        with self._lock:
            return list(self._track)

    @property
    def phases(self) -> list[PhaseSpan]:
        """The phases so far, in order; the last may still be open."""
        with self._lock:
            return list(self._phases)

    @property
    def home(self) -> tuple[float, float] | None:
        """Home (lat, lon): the autopilot's HOME_POSITION, else the first sample."""
        with self._lock:
            if self._home is not None:
                return self._home
            return (self._track[0].lat, self._track[0].lon) if self._track else None

    def sample(self, state: VehicleState) -> None:
        """Add a state to the track; states without a position or vehicle time are skipped,
        as are repeats (the bridge republishes the same position on each HEARTBEAT)."""
        pos = state.position
        if state.home is not None:
            with self._lock:
                self._home = (state.home.lat, state.home.lon)
        if pos is None or state.boot_time_s is None:
            return
        point = TrackPoint(
            state.boot_time_s, pos.lat, pos.lon, pos.alt_rel_m, state.battery.remaining_pct
        )
        with self._lock:
            if self._track and point.boot_time_s <= self._track[-1].boot_time_s:
                return
            self._track.append(point)

    def phase_started(
        self, name: str, boot_time_s: float | None, wall_time: float | None = None
    ) -> None:
        """Close the open phase (if any) and open `name` at this vehicle time.

        With no vehicle time yet (telemetry not started), the latest sample's time is used.
        """
        wall = time.time() if wall_time is None else wall_time
        with self._lock:
            at = self._vehicle_time(boot_time_s)
            self._close(at, wall)
            self._phases.append(PhaseSpan(name, at, None, wall, None))

    def finish(self, boot_time_s: float | None, wall_time: float | None = None) -> None:
        """Close the open phase: the flight is over."""
        wall = time.time() if wall_time is None else wall_time
        with self._lock:
            self._close(self._vehicle_time(boot_time_s), wall)

    def on_event(self, event: MissionEvent) -> None:
        """Map the delivery's transitions onto phases: each "enter" opens its phase, "abort"
        opens the abort phase, and DONE, the abort's "landed" or the mission's "finished"
        closes the flight."""
        at, wall = event.boot_time_s, event.wall_time or None
        ends = event.phase is Phase.DONE or event.event == FINISHED_EVENT
        if ends or (event.phase is Phase.ABORT and event.event == "landed"):
            self.finish(at, wall)
        elif event.event in ("enter", "abort"):
            self.phase_started(event.phase.value, at, wall)

    def _vehicle_time(self, boot_time_s: float | None) -> float | None:
        if boot_time_s is not None:
            return boot_time_s
        return self._track[-1].boot_time_s if self._track else None

    def _close(self, at: float | None, wall: float) -> None:
        if self._phases and self._phases[-1].end_wall is None:
            last = self._phases[-1]
            self._phases[-1] = PhaseSpan(last.name, last.start_s, at, last.start_wall, wall)


def ideal_phase_durations(flight: FlightConfig, drop_distance_m: float) -> dict[str, float]:
    """Seconds each phase takes when flown exactly at the configured rates (no acceleration).

    - takeoff: climb to cruise altitude at the climb rate: ``cruise_alt / climb_rate``;
    - cruise and return: the horizontal distance at cruise speed: ``distance / cruise_speed``;
    - descend: ``(cruise_alt - handover_alt) / descent_rate``;
    - release: the release hold;
    - climb: back to cruise altitude, ``(cruise_alt - handover_alt) / climb_rate``;
    - land: as ArduCopter lands, the descent rate down to ``land_speed_high_alt_m``, then the
      land speed for the rest: ``max(0, cruise - high) / descent_rate + min(cruise, high) /
      land_speed``.
    """
    cruise, handover = flight.cruise_alt_m, flight.handover_alt_m
    high = flight.land_speed_high_alt_m
    leg = drop_distance_m / flight.cruise_speed_mps
    return {
        Phase.TAKEOFF.value: cruise / flight.climb_rate_mps,
        Phase.CRUISE.value: leg,
        Phase.DESCEND.value: (cruise - handover) / flight.descent_rate_mps,
        Phase.RELEASE.value: flight.release_hold_s,
        Phase.CLIMB.value: (cruise - handover) / flight.climb_rate_mps,
        Phase.RETURN.value: leg,
        Phase.LAND.value: (
            max(0.0, cruise - high) / flight.descent_rate_mps
            + min(cruise, high) / flight.land_speed_mps
        ),
    }


def ideal_duration_s(flight: FlightConfig, drop_distance_m: float) -> float:
    """The ideal takeoff-to-disarm time of a delivery to a drop `drop_distance_m` from home:
    the sum of `ideal_phase_durations`."""
    return sum(ideal_phase_durations(flight, drop_distance_m).values())


def _flight_spans(phases: Sequence[PhaseSpan]) -> list[PhaseSpan]:
    """The phases `duration_s` counts: timed phases from the first flying one on (none if the
    vehicle never flew)."""
    flying = {p.value for p in FLYING_PHASES}
    first = next((i for i, p in enumerate(phases) if p.name in flying), len(phases))
    return [s for s in phases[first:] if s.name in TIMED_PHASES and s.start_s is not None]


def track_length_m(track: Sequence[TrackPoint]) -> float:
    """Ground distance along the track: the sum of great-circle steps between samples."""
    return sum(distance_m(a.lat, a.lon, b.lat, b.lon) for a, b in itertools.pairwise(track))


def _r(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def build_report(
    recorder: FlightRecorder,
    *,
    config: Config,
    mission_id: str,
    outcome: str,
    drop: Sequence[float],
    home: Sequence[float] | None = None,
    wall_duration_s: float | None = None,
    autopilot: str | None = None,
    ground: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report of a recorded flight, as JSON-ready data.

    `drop` and `home` are (lat, lon[, alt]); `home` defaults to the recorder's (the
    autopilot's home position). `wall_duration_s` is the caller's whole run (start-up
    included); ``flight_wall_duration_s`` is the wall time of the timed phases alone. Phases
    still open are reported as ending at the last sample. Track figures (distance, altitude,
    battery) cover the flight window when the vehicle flew, the whole recording otherwise.
    `ground` (the links of a ground service that watched the flight) becomes the report's
    ``ground`` section; without it the report has none.
    """
    flight = config.flight
    track, phases = recorder.track, recorder.phases
    home = home or recorder.home
    if home is None:
        raise ValueError("no home position: the recorder has no samples and none was given")
    last_time = track[-1].boot_time_s if track else None
    spans = _flight_spans(phases)
    start = spans[0].start_s if spans else None
    ends = [s.end_s if s.end_s is not None else last_time for s in spans]
    end = max((e for e in ends if e is not None), default=start)
    duration = None if start is None or end is None else end - start
    flown = track
    if start is not None and end is not None:
        flown = [p for p in track if start <= p.boot_time_s <= end] or track
    drop_distance = distance_m(home[0], home[1], drop[0], drop[1])
    ideal_phases = ideal_phase_durations(flight, drop_distance)
    ideal = sum(ideal_phases.values())
    end_wall = spans[-1].end_wall if spans else None
    batteries = [p.battery_pct for p in flown if p.battery_pct is not None]

    def phase_entry(span: PhaseSpan) -> dict[str, Any]:
        stop = span.end_s if span.end_s is not None else last_time
        length = None if span.start_s is None or stop is None else stop - span.start_s
        entry = {
            "name": span.name,
            "start_s": _r(span.start_s, 3),
            "end_s": _r(stop, 3),
            "duration_s": _r(length, 3),
        }
        if span.name in ideal_phases:
            entry["ideal_s"] = round(ideal_phases[span.name], 3)
        return entry

    report: dict[str, Any] = {
        "mission_id": mission_id,
        "autopilot": autopilot,
        "outcome": outcome,
        "delivered": outcome == "delivered",
        "home": {"lat": round(home[0], 7), "lon": round(home[1], 7)},
        "drop": {
            "lat": round(drop[0], 7),
            "lon": round(drop[1], 7),
            "distance_m": round(drop_distance, 2),
            "bearing_deg": round(bearing_deg(home[0], home[1], drop[0], drop[1]), 2),
        },
        "phases": [phase_entry(s) for s in phases],
        "timed_phases": list(TIMED_PHASES),
        "distance_m": round(track_length_m(flown), 2),
        "flight_start_s": _r(start, 3),
        "flight_end_s": _r(end, 3),
        "duration_s": _r(duration, 3),
        "ideal_duration_s": round(ideal, 3),
        "ideal_phases_s": {k: round(v, 3) for k, v in ideal_phases.items()},
        "duration_ratio": _r(None if duration is None else duration / ideal, 4),
        "wall_duration_s": _r(wall_duration_s, 3),
        "flight_wall_duration_s": _r(
            None if end_wall is None else end_wall - spans[0].start_wall, 3
        ),
        "max_alt_m": _r(max((p.alt_rel_m for p in flown), default=None), 2),
        "battery_start_pct": batteries[0] if batteries else None,
        "battery_end_pct": batteries[-1] if batteries else None,
        "battery_used_pct": batteries[0] - batteries[-1] if batteries else None,
        "samples": len(track),
    }
    if ground is not None:
        report["ground"] = dict(ground)
    return report


def write_report(
    out_dir: Path | str, report: dict[str, Any], recorder: FlightRecorder
) -> tuple[Path, Path]:
    """Write ``report.json`` and ``flight.png`` into `out_dir` (created); returns both paths.

    The JSON is written to a temporary file and renamed, so a reader never sees half of it.
    """
    from companion.flight_plot import plot_flight  # matplotlib only when a report is written

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / "report.json", out / "flight.png"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, json_path)
    plot_flight(png_path, report, recorder.track, recorder.phases)
    return json_path, png_path
