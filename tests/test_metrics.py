"""Prometheus metrics of the daemon: what the status snapshot says, scraped over real HTTP,
in Prometheus' text format; absent parts give no sample, never a zero."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from companion.metrics import serve_metrics

SNAPSHOT = {
    "link": {"up": True},
    "vehicle": {"mode": "GUIDED", "armed": True, "battery_pct": 87, "gps_fix": 3,
                "satellites": 11, "alt_rel_m": 29.5, "lat": -35.36, "lon": 149.16},
    "mission": {"id": "o-1", "phase": "cruise", "event": "enter"},
    "orders": {"queued": 2, "flying": 1, "done": 5},
    "companion_gps": {"fix_3d": True, "satellites": 9, "hdop": 0.9, "age_s": 0.3,
                      "status": "ok"},
    "uplink": {"queued": 120, "published": 118, "retried": 3, "set_aside": 0, "pending": 2,
               "modem": {"recoveries": 1}},
}  # fmt: skip


def _scrape(snapshot: dict) -> dict[tuple[str, tuple], float]:
    server = serve_metrics(lambda: snapshot, "sky-1", "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read()
    finally:
        server.stop()
    samples = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_the_snapshot_is_served_as_prometheus_metrics() -> None:
    m = _scrape(SNAPSHOT)
    drone = (("drone", "sky-1"),)
    assert m[("skycourier_autopilot_link_up", drone)] == 1
    assert m[("skycourier_battery_percent", drone)] == 87
    assert m[("skycourier_orders", (("drone", "sky-1"), ("state", "queued")))] == 2
    assert m[("skycourier_orders", (("drone", "sky-1"), ("state", "done")))] == 5
    phase = (("drone", "sky-1"), ("mission", "o-1"), ("phase", "cruise"))
    assert m[("skycourier_mission_phase", phase)] == 1
    assert m[("skycourier_telemetry_published_total", drone)] == 118
    assert m[("skycourier_modem_recoveries_total", drone)] == 1
    assert m[("skycourier_companion_gps_fix_age_seconds", drone)] == 0.3


def test_absent_parts_give_no_samples() -> None:
    m = _scrape({"link": {"up": False}, "vehicle": {"battery_pct": None}, "orders": {},
                 "mission": None, "companion_gps": None, "uplink": None})  # fmt: skip
    names = {name for name, _ in m}
    assert ("skycourier_autopilot_link_up", (("drone", "sky-1"),)) in m
    assert m[("skycourier_autopilot_link_up", (("drone", "sky-1"),))] == 0
    assert not names & {
        "skycourier_battery_percent",
        "skycourier_mission_phase",
        "skycourier_companion_gps_fix_3d",
        "skycourier_telemetry_published_total",
    }
