"""What the running daemon reports about itself: `skycourier status` (over the control
socket) and the Prometheus metrics read the same snapshot, taken when asked from the live
parts, so the two never disagree and a part that is not running shows as absent (None)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from companion.bus import Bus
from companion.intake.queue import OrderQueue
from companion.mission.events import MissionEvent
from companion.readiness import GroundWatch
from companion.supervisor import Health
from companion.telemetry.uplink import TelemetryUplink
from firmware_bridge.vehicle import Vehicle


class DaemonStatus:
    """What `skycourier status` shows: the autopilot link, the vehicle, the mission's latest
    event, the order queue, each subsystem's health, the companion's GPS, the uplink, and the
    ground stations the autopilot's stream is routed to (`companion.gcs`; None when none)."""

    def __init__(
        self,
        bus: Bus,
        vehicle: Vehicle,
        *,
        queue: OrderQueue | None,
        uplink: Callable[[], TelemetryUplink | None],
        health: Callable[[], list[Health]],
        gcs: Callable[[], dict[str, dict[str, Any]]] | None = None,
    ) -> None:
        self._bus = bus
        self._vehicle = vehicle
        self._queue = queue
        self._uplink = uplink
        self._health = health
        self._gcs = gcs
        self._gps = GroundWatch(bus, time.monotonic)

    def snapshot(self) -> dict[str, Any]:
        state = self._vehicle.state
        pos = state.position
        event = self._bus.latest(MissionEvent)
        gps = self._gps.status().gps
        out: dict[str, Any] = {
            "link": {"up": self._vehicle.link.up},
            "vehicle": {
                "mode": state.mode,
                "armed": state.armed,
                "lat": None if pos is None else round(pos.lat, 7),
                "lon": None if pos is None else round(pos.lon, 7),
                "alt_rel_m": None if pos is None else round(pos.alt_rel_m, 1),
                "battery_pct": state.battery.remaining_pct,
                "gps_fix": state.gps.fix_type,
                "satellites": state.gps.satellites,
            },
            "mission": None
            if event is None
            else {"id": event.mission_id, "phase": event.phase.value, "event": event.event},
            "orders": None if self._queue is None else self._queue.counts(),
            "subsystems": {
                h.name: {"state": h.state, "detail": h.detail, "restarts": h.restarts}
                for h in self._health()
            },
            "companion_gps": None if gps is None else dataclasses.asdict(gps),
            "uplink": None if (uplink := self._uplink()) is None else uplink.summary(),
            "gcs": None if self._gcs is None else self._gcs(),
        }
        return out
