"""The daemon: a mission left unfinished by a crash is closed safely, never forgotten."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from companion import daemon
from companion.config import Config, load_config
from companion.daemon import recover_unfinished, run_daemon
from companion.intake.control import ControlError, daemon_status
from companion.mission.events import Phase
from companion.mission.journal import Journal, JournalError
from companion.telemetry.store import StoreError
from companion.telemetry.uplink import TelemetryUplink
from firmware_bridge.dialect import mavlink
from firmware_bridge.errors import LinkError
from firmware_bridge.vehicle import Vehicle
from sim.gps.neo6m import Neo6m
from sim.gps.pty_runner import Neo6mPty
from sim.vehicle import DEFAULT_HOME, VehicleServer
from tests.conftest import HEARTBEAT_S
from tests.flight_helpers import arm_guided
from tests.waiting import wait_until


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
            published: list[object] = []
            closed = recover_unfinished(journal, v, publish=published.append)
            assert server.state.mode == "RTL"
        assert closed == [("m-1", "companion restarted mid-flight: returning home")]
        # The dispatcher hears what the journal holds: the abort in the air, then the end.
        assert [(e.mission_id, e.phase, e.event, e.detail) for e in published] == [
            ("m-1", Phase.ABORT, "abort", {"reason": closed[0][1], "action": "RTL"}),
            ("m-1", Phase.ABORT, "finished", {"outcome": closed[0][1]}),
        ]
        assert journal.unfinished() == []
        assert journal.outcome("m-1") == closed[0][1]


def test_unfinished_mission_in_flight_is_landed_where_it_is_when_so_configured(
    tmp_path: Path,
) -> None:
    with (
        VehicleServer(DEFAULT_HOME, speedup=20.0, port=0) as server,
        Journal(tmp_path / "j.db") as journal,
    ):
        journal.start_mission("m-3", {"drop": [0, 0]})
        with Vehicle.connect(f"tcp:127.0.0.1:{server.port}", heartbeat_interval_s=HEARTBEAT_S) as v:
            arm_guided(v)
            v.takeoff(10.0)
            v.wait_until(lambda s: s.position is not None and s.position.alt_rel_m > 5, 60, "5 m")
            closed = recover_unfinished(journal, v, in_air="land")
            assert server.state.mode == "LAND"
        assert closed == [("m-3", "companion restarted mid-flight: landing where it is")]
        [abort] = [e for e in journal.events("m-3") if e.event == "abort"]
        assert abort.detail["action"] == "LAND"


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


def test_daemon_connects_supervises_and_stops(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "companion.daemon")
    with VehicleServer(DEFAULT_HOME, speedup=5.0, port=0) as server:
        config = load_config(None).updated(
            "test",
            vehicle={"connection": f"tcp:127.0.0.1:{server.port}"},
            journal={"path": str(tmp_path / "journal.db")},
            intake={
                "queue_path": str(tmp_path / "orders.db"),
                "socket_path": str(tmp_path / "c.sock"),
            },
        )
        stop = threading.Event()
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(run_daemon(config, stop)))
        thread.start()
        stop.set()
        thread.join(30)
        assert result == [0]
    # The defaults have no modem port: the operator would hear nothing, and is told so.
    (warning,) = [r.getMessage() for r in caplog.records if "telemetry off" in r.getMessage()]
    assert "no telemetry, events or SMS will reach the operator" in warning
    assert "set [modem] port" in warning and '[telemetry] transport = "ip"' in warning


class Started:
    """Spies on what `run_daemon` starts (the real things, recorded as they are made)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.made: dict[str, Any] = {}
        for name in ("Journal", "connect_autopilot", "open_uplink"):
            monkeypatch.setattr(daemon, name, self._recording(name, getattr(daemon, name)))

    def _recording(self, name: str, make: Any) -> Any:
        def made(*args: Any, **kw: Any) -> Any:
            self.made[name] = make(*args, **kw)
            return self.made[name]

        return made

    def assert_all_stopped(self) -> None:
        journal: Journal = self.made["Journal"]
        with pytest.raises(JournalError, match="closed database"):
            journal.unfinished()
        vehicle: Vehicle = self.made["connect_autopilot"]
        assert not vehicle.link.up
        with pytest.raises(LinkError, match="link is not open"):
            vehicle.link.send(mavlink.MAVLink_heartbeat_message(18, 8, 0, 0, 4, 3))


def _failing_start(tmp_path: Path, server: VehicleServer, **sections: dict[str, Any]) -> Config:
    return load_config(None).updated(
        "test",
        vehicle={"connection": f"tcp:127.0.0.1:{server.port}"},
        journal={"path": str(tmp_path / "journal.db")},
        intake={"queue_path": str(tmp_path / "orders.db"), "socket_path": str(tmp_path / "c.sock")},
        **sections,
    )


def _run_until(config: Config, condition: Any, what: str) -> int:
    """Run the daemon in a thread until `condition()` holds, then stop it; its exit status."""
    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(run_daemon(config, stop)))
    thread.start()
    try:
        wait_until(condition, what, 60)
    finally:
        stop.set()
        thread.join(60)
    assert result, "the daemon did not stop"
    return result[0]


def _status(config: Config) -> dict[str, Any]:
    return daemon_status(config.intake.socket_path)


def test_telemetry_failing_to_start_is_retried_while_the_rest_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    started = Started(monkeypatch)
    missing_ca = tmp_path / "no-such-ca.pem"
    seen: list[dict[str, Any]] = []

    def failed_and_answering() -> bool:
        try:
            seen.append(_status(config))
        except ControlError:
            return False
        return seen[-1]["subsystems"]["telemetry"]["state"] == "failed"

    with VehicleServer(DEFAULT_HOME, speedup=5.0, port=0) as server:
        config = _failing_start(
            tmp_path, server, telemetry={"transport": "ip", "tls_ca": str(missing_ca)}
        )
        code = _run_until(config, failed_and_answering, "telemetry failed, the daemon up")
    assert code == 0
    status = seen[-1]
    assert status["link"]["up"] is True  # the autopilot link and the control socket run on
    assert "FileNotFoundError" in status["subsystems"]["telemetry"]["detail"]
    assert status["subsystems"]["gps"]["state"] == "off"  # no port configured
    started.assert_all_stopped()
    assert "open_uplink" not in started.made  # it raised (the CA file is missing)
    assert any("telemetry: failed to start" in r.getMessage() for r in caplog.records)


def test_vision_failing_to_start_leaves_telemetry_running_and_all_stops_at_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = Started(monkeypatch)

    def broken_vision(*_args: object, **_kw: object) -> None:
        raise RuntimeError("camera driver crashed")

    monkeypatch.setattr(daemon, "start_vision", broken_vision)
    seen: list[dict[str, Any]] = []

    def vision_failed() -> bool:
        try:
            seen.append(_status(config))
        except ControlError:
            return False
        return seen[-1]["subsystems"]["vision"]["state"] == "failed"

    with VehicleServer(DEFAULT_HOME, speedup=5.0, port=0) as server:
        # IP telemetry to a port nobody listens on: it starts, and keeps trying to connect.
        config = _failing_start(
            tmp_path,
            server,
            telemetry={
                "transport": "ip",
                "broker": "tcp://127.0.0.1:9",
                "queue_path": str(tmp_path / "q.db"),
            },
        )
        assert _run_until(config, vision_failed, "vision failed") == 0
    assert seen[-1]["subsystems"]["telemetry"]["state"] == "running"
    assert "camera driver crashed" in seen[-1]["subsystems"]["vision"]["detail"]
    started.assert_all_stopped()
    uplink: TelemetryUplink = started.made["open_uplink"]
    with pytest.raises(StoreError, match="closed database"):
        uplink.store.peek()  # the telemetry queue was closed with the rest


def test_daemon_reports_an_unreachable_autopilot(tmp_path: Path) -> None:
    config = load_config(None).updated(
        "test",
        vehicle={"connection": "tcp:127.0.0.1:9", "connect_timeout_s": 1.0},
        journal={"path": str(tmp_path / "journal.db")},
        intake={"queue_path": str(tmp_path / "orders.db"), "socket_path": str(tmp_path / "c.sock")},
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
            intake={
                "queue_path": str(tmp_path / "orders.db"),
                "socket_path": str(tmp_path / "c.sock"),
            },
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


def test_the_daemon_process_refuses_a_config_with_an_unknown_key_naming_file_and_key(
    tmp_path: Path,
) -> None:
    """As systemd starts it: `skycourier run` exits 2 naming the file, the key and the
    nearest known one (in the journal, once per restart), before opening anything."""
    bad = tmp_path / "skycourier.toml"
    bad.write_text("[gps]\nbaudrate = 9600\n")
    done = subprocess.run(
        [sys.executable, "-m", "companion.cli", "run", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 2
    assert f"{bad}: gps.baudrate: unknown option; did you mean 'baud'?" in done.stderr
    assert list(tmp_path.iterdir()) == [bad]  # no journal, queue or socket was made
