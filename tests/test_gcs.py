"""Ground stations in the daemon (`[gcs]`, `companion.gcs`): the configuration refuses what
cannot work with the field and the reason, each command endpoint's key file is read like the
key store's, an endpoint that cannot run is named in the status while the others run, and
`skycourier run` routes the built-in vehicle's stream to a ground station and its signed
commands back, counting them in `skycourier status`."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from companion.config import Config, ConfigError, load_config, parse_config
from companion.daemon import run_daemon
from companion.gcs import load_endpoint_key, start_gcs
from companion.intake.control import ControlError, daemon_status
from companion.security.keys import KeyFileError, KeyStore
from firmware_bridge.dialect import MAVLinkMessage, mavlink
from firmware_bridge.signing import signing_timestamp
from sim.vehicle import DEFAULT_HOME, VehicleServer
from tests.waiting import wait_until

GCS_KEY = bytes(range(40, 72))


def write_key(path: Path, key: bytes = GCS_KEY, mode: int = 0o600) -> Path:
    path.write_text(key.hex() + "\n")
    path.chmod(mode)
    return path


def gcs_config(*endpoints: dict[str, Any]) -> Config:
    return load_config(None).updated("test", gcs={"endpoints": list(endpoints)})


# ---- configuration ---------------------------------------------------------------------------
def test_endpoints_as_tables_and_back() -> None:
    text = """
[[gcs.endpoints]]
name = "qgc"
url = "udp-out:127.0.0.1:14550"
deny_out = ["GLOBAL_POSITION_INT"]
rate_hz = 20.0

[[gcs.endpoints]]
name = "ops"
url = "tcp-in:0.0.0.0:5770"
mode = "command"
key_file = "/etc/skycourier/keys/ops.key"
deny_in = ["HEARTBEAT"]
"""
    config = parse_config(text)
    qgc, ops = config.gcs.endpoints
    assert (qgc.mode, qgc.deny_out, qgc.rate_hz) == ("read-only", ("GLOBAL_POSITION_INT",), 20.0)
    assert (ops.mode, ops.key_file, ops.deny_in) == (
        "command",
        Path("/etc/skycourier/keys/ops.key"),
        ("HEARTBEAT",),
    )
    assert parse_config(config.to_toml()) == config
    assert Config().gcs.endpoints == ()


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"url": "udp:127.0.0.1:14550"}, "gcs.endpoints.0.url: 'udp:127.0.0.1:14550': unknown"),
        ({"mode": "command"}, 'gcs.endpoints.0.key_file: missing: mode is "command"'),
        ({"key_file": "/k"}, 'gcs.endpoints.0.key_file: only a mode = "command" endpoint'),
        ({"deny_out": ["HEARTBAET"]}, "'HEARTBAET' (did you mean 'HEARTBEAT'?)"),
        ({"allow_in": ["PARAM_SET"]}, "allow_in: a read-only endpoint sends nothing"),
        ({"rate_hz": 0.0}, "gcs.endpoints.0.rate_hz: input should be greater than 0"),
        ({"nmae": "x"}, "gcs.endpoints.0.nmae: unknown option; did you mean 'name'?"),
        ({"deny_out": "HEARTBEAT"}, "gcs.endpoints.0.deny_out: input should be a valid tuple"),
    ],
)
def test_endpoint_mistakes_name_the_field(entry: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        gcs_config({"name": "qgc", "url": "udp-out:127.0.0.1:14550", **entry})
    assert problem in str(info.value)


def test_endpoint_names_differ() -> None:
    entry = {"name": "qgc", "url": "udp-out:127.0.0.1:14550"}
    with pytest.raises(ConfigError, match="endpoint names must differ; qgc used twice"):
        gcs_config(entry, entry)


# ---- key files --------------------------------------------------------------------------------
def test_an_endpoint_key_is_read_like_the_key_stores(tmp_path: Path) -> None:
    assert load_endpoint_key(write_key(tmp_path / "ok.key")) == GCS_KEY
    with pytest.raises(KeyFileError, match=r"mode 0644 lets the group .*\(chmod 600 "):
        load_endpoint_key(write_key(tmp_path / "open.key", mode=0o644))
    (tmp_path / "text.key").write_text("not hex")
    (tmp_path / "text.key").chmod(0o600)
    with pytest.raises(KeyFileError, match="not hexadecimal"):
        load_endpoint_key(tmp_path / "text.key")
    with pytest.raises(KeyFileError, match="16 bytes; a MAVLink signing key is 32"):
        load_endpoint_key(write_key(tmp_path / "short.key", GCS_KEY[:16]))
    with pytest.raises(KeyFileError, match="missing"):
        load_endpoint_key(tmp_path / "none.key")


class FakeLink:
    def __init__(self) -> None:
        self.listeners: list[Callable[[MAVLinkMessage], None]] = []

    def add_listener(self, listener: Callable[[MAVLinkMessage], None]) -> Callable[[], None]:
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)

    def send_frame(self, frame: bytes) -> None:
        raise AssertionError("nothing may reach the flight controller here")


def test_endpoints_that_cannot_run_are_named_and_the_rest_runs(tmp_path: Path) -> None:
    drone = bytes(range(1, 33))
    config = gcs_config(
        {"name": "qgc", "url": "udp-out:127.0.0.1:14550"},
        {"name": "open", "url": "udp-in:127.0.0.1:2", "mode": "command",
         "key_file": str(write_key(tmp_path / "open.key", mode=0o640))},
        {"name": "same", "url": "udp-in:127.0.0.1:1", "mode": "command",
         "key_file": str(write_key(tmp_path / "drone.key", drone))},
    )  # fmt: skip
    link = FakeLink()
    with ExitStack() as running:
        status = start_gcs(config, link, drone, running)
        assert status is not None and len(link.listeners) == 1
        states = {name: entry["state"] for name, entry in status().items()}
    assert link.listeners == []  # stopped with the stack
    assert states["qgc"] == "running"
    assert states["open"].startswith("not started: ") and "chmod 600" in states["open"]
    assert "the drone's own MAVLink secret" in states["same"]
    with ExitStack() as running:
        assert start_gcs(Config(), link, drone, running) is None


# ---- the daemon -----------------------------------------------------------------------------
def test_the_daemon_routes_ground_stations_and_counts_them_in_its_status(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys")
    keys.init_drone("skycourier-1")
    view = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    view.bind(("127.0.0.1", 0))
    view.settimeout(0.2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        ops_port = probe.getsockname()[1]
    ops = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ops.settimeout(0.2)
    mav = mavlink.MAVLink(None, srcSystem=255, srcComponent=190)
    mav.signing.secret_key = GCS_KEY
    mav.signing.sign_outgoing = True
    mav.signing.timestamp = signing_timestamp(time.time())  # before the daemon's start

    # In real time, so that the simulated GPS time (to which the autopilot raises its signing
    # timestamp) keeps with the ground station's clock.
    with VehicleServer(DEFAULT_HOME, speedup=1.0, port=0) as server:
        config = load_config(None).updated(
            "test",
            vehicle={"connection": f"tcp:127.0.0.1:{server.port}"},
            journal={"path": str(tmp_path / "journal.db")},
            intake={"queue_path": str(tmp_path / "o.db"), "socket_path": str(tmp_path / "c.sock")},
            security={"keys_dir": str(keys.path), "audit_path": str(tmp_path / "audit.jsonl")},
            gcs={"endpoints": [
                {"name": "view", "url": f"udp-out:127.0.0.1:{view.getsockname()[1]}"},
                {"name": "ops", "url": f"udp-in:127.0.0.1:{ops_port}", "mode": "command",
                 "key_file": str(write_key(tmp_path / "ops.key"))},
            ]},
        )  # fmt: skip
        stop = threading.Event()
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(run_daemon(config, stop)))
        thread.start()
        try:
            got = receive_until(view, lambda m: m.get_type() == "HEARTBEAT")
            assert (got.get_srcSystem(), got.get_srcComponent()) == (1, 1)
            request = mavlink.MAVLink_param_set_message(1, 1, b"RTL_ALT_FINAL", 33.0, 9)
            ops.sendto(bytes(request.pack(mav)), ("127.0.0.1", ops_port))
            wait_until(lambda: server.param("RTL_ALT_FINAL") == 33.0, "the command applied")
            ops.sendto(
                bytes(request.pack(mavlink.MAVLink(None, 255, 190))), ("127.0.0.1", ops_port)
            )
            gcs = status_when(config, lambda s: s["gcs"]["ops"]["in"].get("unsigned") == 1)["gcs"]
        finally:
            stop.set()
            thread.join(30)
    assert result == [0]
    assert gcs["ops"]["in"]["forwarded"] == 1 and gcs["ops"]["mode"] == "command"
    assert gcs["view"]["out"]["sent"] > 0 and gcs["view"]["state"] == "running"
    assert server.signing_enabled  # the daemon's link was signed all along
    view.close()
    ops.close()


def receive_until(sock: socket.socket, wanted: Callable[[MAVLinkMessage], bool]) -> Any:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65535)
        except TimeoutError:
            continue
        parser = mavlink.MAVLink(None)
        parser.robust_parsing = True
        for msg in parser.parse_buffer(data) or []:
            if wanted(msg):
                return msg
    raise AssertionError("the ground station heard nothing it wanted within 30 s")


def status_when(config: Config, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    seen: list[dict[str, Any]] = []

    def answered() -> bool:
        try:
            seen.append(daemon_status(config.intake.socket_path))
        except ControlError:
            return False
        return wanted(seen[-1])

    wait_until(answered, "the status to show it")
    return seen[-1]
