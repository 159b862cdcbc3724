"""Prometheus metrics of the running daemon, for fleets (`[metrics] port`).

A custom collector reads the daemon's status snapshot (`companion.status.DaemonStatus`) at
each scrape, so the metrics are exactly what `skycourier status` shows, counted once, and a
part that is not running yields no sample rather than a stale or zero one (absent never
reads as "ok"). Served by prometheus-client's own HTTP server on `[metrics] address`
(loopback by default: exposing it on the LTE interface is the operator's decision).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

PREFIX = "skycourier"


class StatusCollector(Collector):
    """Metrics from `snapshot()` (the `DaemonStatus.snapshot` dictionary)."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]], drone_id: str) -> None:
        self._snapshot = snapshot
        self._drone = drone_id

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        status = self._snapshot()
        drone = self._drone
        out: list[GaugeMetricFamily | CounterMetricFamily] = []

        def add(name: str, doc: str, value: object, counter: bool = False) -> None:
            if not isinstance(value, (int, float)):
                return  # absent: no sample, never a made-up zero
            family = (CounterMetricFamily if counter else GaugeMetricFamily)(
                f"{PREFIX}_{name}", doc, labels=["drone"]
            )
            family.add_metric([drone], float(value))
            out.append(family)

        vehicle = status.get("vehicle") or {}
        link = status.get("link") or {}
        add("autopilot_link_up", "1 while the autopilot's heartbeat is fresh",
            int(bool(link.get("up"))))  # fmt: skip
        add("armed", "1 while the vehicle is armed", int(bool(vehicle.get("armed"))))
        add("battery_percent", "Battery remaining as the autopilot reports it",
            vehicle.get("battery_pct"))  # fmt: skip
        add("autopilot_gps_fix_type", "GPS_RAW_INT fix type of the autopilot",
            vehicle.get("gps_fix"))  # fmt: skip
        add("autopilot_gps_satellites", "Satellites the autopilot's GPS uses",
            vehicle.get("satellites"))  # fmt: skip
        add("altitude_relative_m", "Altitude above home", vehicle.get("alt_rel_m"))
        orders = GaugeMetricFamily(
            f"{PREFIX}_orders", "Orders in the queue by state", labels=["drone", "state"]
        )
        for state, count in sorted((status.get("orders") or {}).items()):
            orders.add_metric([drone, state], float(count))
        out.append(orders)
        mission = status.get("mission")
        if mission:
            phase = GaugeMetricFamily(
                f"{PREFIX}_mission_phase", "1 for the mission's current phase",
                labels=["drone", "mission", "phase"],
            )  # fmt: skip
            phase.add_metric([drone, str(mission["id"]), str(mission["phase"])], 1.0)
            out.append(phase)
        gps = status.get("companion_gps")
        if gps:
            add("companion_gps_fix_3d", "1 while the companion's fix is 3-D",
                int(bool(gps.get("fix_3d"))))  # fmt: skip
            add("companion_gps_fix_age_seconds", "Age of the companion's last fix",
                gps.get("age_s"))  # fmt: skip
            add("companion_gps_satellites", "Satellites the companion's fix uses",
                gps.get("satellites"))  # fmt: skip
        uplink = status.get("uplink")
        if uplink:
            add("telemetry_queued", "Telemetry records queued", uplink.get("queued"), True)
            add("telemetry_published", "Telemetry records the broker acknowledged",
                uplink.get("published"), True)  # fmt: skip
            add("telemetry_retried", "Publish attempts that failed and were retried",
                uplink.get("retried"), True)  # fmt: skip
            add("telemetry_set_aside", "Records set aside as unsendable",
                uplink.get("set_aside"), True)  # fmt: skip
            add("telemetry_pending", "Records waiting for the broker", uplink.get("pending"))
            modem = uplink.get("modem") or {}
            add("modem_recoveries", "Modem recovery ladder steps", modem.get("recoveries"), True)
        yield from out


class MetricsServer:
    """A running metrics server: its `port` (the one bound, for port 0), and `stop()`."""

    def __init__(self, server: Any, thread: Any) -> None:
        self._server = server
        self._thread = thread
        self.port: int = server.server_port

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)


def serve_metrics(
    snapshot: Callable[[], dict[str, Any]], drone_id: str, address: str, port: int
) -> MetricsServer:
    """Serve the metrics over HTTP on `address`:`port` (0: any free port)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(snapshot, drone_id))
    server, thread = start_http_server(port, addr=address, registry=registry)
    log.info("metrics on http://%s:%d/metrics", address, server.server_port)
    return MetricsServer(server, thread)
