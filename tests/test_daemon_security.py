"""`skycourier run` with the drone's keys (`[security]`): the autopilot link is MAVLink 2
signed, what the daemon decides goes into the signed audit trail, and a key store it cannot
use stops it from starting with the file and the reason."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest

from companion.config import Config, load_config
from companion.daemon import run_daemon
from companion.mission.journal import Journal
from companion.security.audit import verify_audit
from companion.security.keys import KeyStore
from sim.vehicle import DEFAULT_HOME, VehicleServer


def daemon_config(tmp_path: Path, server: VehicleServer, keys: Path) -> Config:
    return load_config(None).updated(
        "test",
        vehicle={"connection": f"tcp:127.0.0.1:{server.port}"},
        journal={"path": str(tmp_path / "journal.db")},
        intake={"queue_path": str(tmp_path / "orders.db"), "socket_path": str(tmp_path / "c.sock")},
        security={"keys_dir": str(keys), "audit_path": str(tmp_path / "audit.jsonl")},
    )


def run_once(config: Config) -> int:
    """Start the daemon, let it recover and stop at once (in a thread: no signal handlers)."""
    stop = threading.Event()
    stop.set()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(run_daemon(config, stop)))
    thread.start()
    thread.join(60)
    assert result, "the daemon did not stop"
    return result[0]


def test_with_drone_keys_the_link_is_signed_and_recoveries_are_audited(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys")
    keys.init_drone("skycourier-1")
    with Journal(tmp_path / "journal.db") as journal:
        journal.start_mission("m-2", {})
    with VehicleServer(DEFAULT_HOME, speedup=5.0, port=0) as server:
        assert run_once(daemon_config(tmp_path, server, keys.path)) == 0
        assert server.signing_enabled
    report = verify_audit(tmp_path / "audit.jsonl", keys.drone_identity_key().public_key())
    assert report.ok and report.records == 1 and report.signatures_checked
    record = json.loads((tmp_path / "audit.jsonl").read_text())
    assert record["kind"] == "restart-recovery"
    assert record["data"]["mission"] == "m-2" and not record["data"]["armed"]
    assert record["data"]["outcome"] == "interrupted on the ground by a companion restart"


def test_without_drone_keys_it_flies_unsigned_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "companion.daemon")
    with VehicleServer(DEFAULT_HOME, speedup=5.0, port=0) as server:
        assert run_once(daemon_config(tmp_path, server, tmp_path / "no-keys")) == 0
        assert not server.signing_enabled
    assert not (tmp_path / "audit.jsonl").exists()
    assert any(
        "MAVLink signing and the audit trail are off" in r.getMessage()
        and "skycourier keys init" in r.getMessage()
        for r in caplog.records
    )


def test_a_key_others_can_read_stops_the_daemon(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = KeyStore(tmp_path / "keys")
    keys.init_drone("skycourier-1")
    secret = keys.path / "mavlink-signing.key"
    secret.chmod(0o644)
    with VehicleServer(DEFAULT_HOME, speedup=5.0, port=0) as server:
        assert run_once(daemon_config(tmp_path, server, keys.path)) == 1
        assert not server.signing_enabled
    (error,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert str(secret) in error and "chmod 600" in error
