"""Live progress of a delivery for the terminal: phase, distance to go, altitude, battery.

On a terminal it is a rich progress bar redrawn a few times a second; elsewhere (CI logs,
pipes) it prints one line per phase change so that logs stay readable.
"""

from __future__ import annotations

import sys
import threading

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from companion.geo import distance_m
from companion.mission.events import FLYING_PHASES, MissionEvent, Phase
from firmware_bridge.state import VehicleState

_ORDER = [Phase.PREFLIGHT, Phase.ARM, *FLYING_PHASES]


class DeliveryProgress:
    """Shows a delivery's progress from the bus's VehicleState and MissionEvent messages."""

    def __init__(
        self, drop: tuple[float, float], home: tuple[float, float], enabled: bool = True
    ) -> None:
        self.drop = drop
        self.home = home
        self.enabled = enabled
        self.live = enabled and sys.stdout.isatty()
        self.phase = Phase.PREFLIGHT
        self._lock = threading.Lock()
        self._console = Console()
        self._progress = Progress(
            TextColumn("[bold]{task.fields[phase]:<9}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=self._console,
            disable=not self.live,
        )
        self._task = self._progress.add_task("delivery", total=len(_ORDER), phase="", detail="")

    def __enter__(self) -> DeliveryProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def on_event(self, event: MissionEvent) -> None:
        """Bus callback for mission events."""
        if not self.enabled:
            return
        if event.event == "enter":
            with self._lock:
                self.phase = event.phase
            if self.live:
                done = _ORDER.index(event.phase) if event.phase in _ORDER else len(_ORDER)
                self._progress.update(self._task, completed=done, phase=event.phase.value)
            else:
                print(f"[{event.boot_time_s or 0:7.1f} s] {event.phase.value}", flush=True)
        elif event.event in ("abort", "refused", "released", "hold", "resume") and not self.live:
            detail = ", ".join(f"{k}={v}" for k, v in event.detail.items())
            print(f"[{event.boot_time_s or 0:7.1f} s] {event.event}: {detail}", flush=True)

    def on_state(self, state: VehicleState) -> None:
        """Bus callback for vehicle state: refreshes the bar."""
        if not self.live or state.position is None:
            return
        pos = state.position
        with self._lock:
            phase = self.phase
        outbound = _ORDER.index(phase) < _ORDER.index(Phase.RETURN) if phase in _ORDER else False
        target = self.drop if outbound else self.home
        to_go = distance_m(pos.lat, pos.lon, *target)
        battery = state.battery.remaining_pct
        detail = (
            f"to go {to_go:6.0f} m  alt {pos.alt_rel_m:5.1f} m  "
            f"battery {'?' if battery is None else battery}%"
        )
        done = _ORDER.index(phase) if phase in _ORDER else len(_ORDER)
        self._progress.update(self._task, completed=done, phase=phase.value, detail=detail)
