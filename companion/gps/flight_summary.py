"""What the companion's own receiver did during one flight, for the flight report.

It listens on the bus like any other subscriber: fixes (how many, how many valid, how far
each valid one lay from the autopilot's position at the time), the driver's statuses and
the integrity alarms. `as_dict` adds what the driver itself knows: the receiver that
answered the UBX handshake, the port and rate it was set up on, where that configuration was
saved, and the decoder's error counters.
"""

from __future__ import annotations

import statistics
import threading
from typing import Any

from companion.bus import Bus
from companion.geo import distance_m
from companion.gps.driver import GpsDriver, GpsStatus
from companion.gps.fix import GpsFix
from companion.gps.integrity import IntegrityAlarm
from firmware_bridge.state import VehicleState

_COUNTERS = ("sentences", "ubx_frames", "checksum", "truncated", "overlong", "garbage")


class GpsFlightSummary:
    """Collects the companion GPS's flight; `attach(bus)` first, `as_dict(driver)` after."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.fixes = 0
        self.valid_fixes = 0
        self.divergence_m: list[float] = []
        self.statuses: list[str] = []
        self.alarms: list[IntegrityAlarm] = []
        self._autopilot: tuple[float, float] | None = None

    def attach(self, bus: Bus) -> None:
        bus.subscribe(GpsFix, self._on_fix)
        bus.subscribe(VehicleState, self._on_state)
        bus.subscribe(GpsStatus, self._on_status)
        bus.subscribe(IntegrityAlarm, self._on_alarm)

    def _on_state(self, state: VehicleState) -> None:
        if state.position is not None and state.gps.fix_type >= 3:
            with self._lock:
                self._autopilot = (state.position.lat, state.position.lon)

    def _on_fix(self, fix: GpsFix) -> None:
        with self._lock:
            self.fixes += 1
            if not fix.valid or fix.lat is None or fix.lon is None:
                return
            self.valid_fixes += 1
            if self._autopilot is not None:
                self.divergence_m.append(distance_m(*self._autopilot, fix.lat, fix.lon))

    def _on_status(self, status: GpsStatus) -> None:
        with self._lock:
            self.statuses.append(f"{status.state}: {status.detail}")

    def _on_alarm(self, alarm: IntegrityAlarm) -> None:
        with self._lock:
            self.alarms.append(alarm)

    def as_dict(self, driver: GpsDriver) -> dict[str, Any]:
        """The report section: JSON-ready."""
        with self._lock:
            divergence = sorted(self.divergence_m)
            result = driver.config_result
            stats = driver.stats.as_dict()
            return {
                "port": driver.port,
                "receiver": None
                if result is None
                else {
                    "hw_version": result.version.hw_version,
                    "sw_version": result.version.sw_version,
                    "generation": result.version.generation,
                    "port": result.port,
                    "baud": result.baud,
                    "applied": list(result.applied),
                    "saved_to": list(result.saved_to),
                },
                "fixes": self.fixes,
                "valid_fixes": self.valid_fixes,
                "divergence_from_autopilot_m": {
                    "median": round(statistics.median(divergence), 2) if divergence else None,
                    "max": round(divergence[-1], 2) if divergence else None,
                },
                "integrity_alarms": [
                    {"kind": a.kind, "detail": a.detail, "at": round(a.at, 2)} for a in self.alarms
                ],
                "statuses": list(self.statuses),
                "decoder": {name: stats[name] for name in _COUNTERS},
            }
