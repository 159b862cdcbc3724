"""The daemon: a mission left unfinished by a crash is closed safely, never forgotten."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from companion.config import load_config
from companion.daemon import recover_unfinished, run_daemon
from companion.mission.journal import Journal
from firmware_bridge.vehicle import Vehicle
from sim.gps.neo6m import Neo6m
from sim.gps.pty_runner import Neo6mPty
from sim.vehicle import DEFAULT_HOME, VehicleServer
from tests.conftest import HEARTBEAT_S
from tests.flight_helpers import arm_guided


def test_unfinished_mission_in_flight_is_brought_home(tmp_path: Path) -> None:
    with (
        VehicleServer(DEFAULT_HOME, speedup=20.0, port=0) as server,
        Journal(tmp_path / "j.db") as journal,
    ):
        journal.start_mission("m-1", {"drop": [0, 0]})
        journal.record("m-1", "cruise", "enter", {}, 80.0)
        with Vehicle.connect(f"tcp:127.0.0.1:{server.port}", heartbeat_interval_s=HEARTBEAT_S) as v:
            arm_guided(v)
            v.takeoff(10.0)
            v.wait_until(lambda s: s.position is not None and s.position.alt_rel_m > 5, 60, "5 m")
            closed = recover_unfinished(journal, v)
            assert server.state.mode == "RTL"
        assert closed == [("m-1", "companion restarted mid-flight: returning home")]
        assert journal.unfinished() == []
        assert journal.outcome("m-1") == closed[0][1]


def test_unfinished_mission_on_the_ground_is_closed(tmp_path: Path) -> None:
    with (
        VehicleServer(DEFAULT_HOME, speedup=20.0, port=0) as server,
        Journal(tmp_path / "j.db") as journal,
    ):
        journal.start_mission("m-2", {})
        with Vehicle.connect(f"tcp:127.0.0.1:{server.port}", heartbeat_interval_s=HEARTBEAT_S) as v:
            v.wait_until(lambda s: s.boot_time_s is not None, 10, "telemetry")
            assert recover_unfinished(journal, v) == [
                ("m-2", "interrupted on the ground by a companion restart")
            ]
        assert not server.state.armed


def test_daemon_connects_supervises_and_stops(tmp_path: Path) -> None:
    with VehicleServer(DEFAULT_HOME, speedup=5.0, port=0) as server:
        config = load_config(None).updated(
            "test",
            vehicle={"connection": f"tcp:127.0.0.1:{server.port}"},
            journal={"path": str(tmp_path / "journal.db")},
        )
        stop = threading.Event()
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(run_daemon(config, stop)))
        thread.start()
        stop.set()
        thread.join(30)
        assert result == [0]


def test_daemon_reports_an_unreachable_autopilot(tmp_path: Path) -> None:
    config = load_config(None).updated(
        "test",
        vehicle={"connection": "tcp:127.0.0.1:9", "connect_timeout_s": 1.0},
        journal={"path": str(tmp_path / "journal.db")},
    )
    assert run_daemon(config, threading.Event()) == 1


def test_daemon_starts_and_configures_the_companion_gps(tmp_path: Path) -> None:
    receiver = Neo6m()
    lat, lon, alt = DEFAULT_HOME
    with (
        VehicleServer(DEFAULT_HOME, speedup=1.0, port=0) as server,
        Neo6mPty(receiver, lambda _t: (lat, lon, alt, 0.0, 0.0)) as gps,
    ):
        config = load_config(None).updated(
            "test",
            vehicle={"connection": f"tcp:127.0.0.1:{server.port}"},
            journal={"path": str(tmp_path / "journal.db")},
            gps={"port": gps.path},
        )
        stop = threading.Event()
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(run_daemon(config, stop)))
        thread.start()
        deadline = time.monotonic() + 20
        while (receiver.baud, receiver.meas_rate_ms) != (
            115200,
            200,
        ) and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        thread.join(30)
    assert result == [0]
    assert (receiver.baud, receiver.meas_rate_ms) == (115200, 200)
