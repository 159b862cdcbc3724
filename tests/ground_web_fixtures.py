"""Helpers for the ground web service's tests: a simulated clock, an app on a fresh SQLite
store with one operator, sign-in through the real form, records as the ingest stores them,
and the app served by a real uvicorn on a free port (for the live feed and the browser)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="install the ground extra: pip install -e '.[ground]'")

from fastapi import FastAPI
from fastapi.testclient import TestClient

from companion.telemetry import schema
from ground.store import Received
from ground.web.app import create_app
from ground.web.backend import Accounts, LiveStore
from ground.web.background import BackgroundServer, local_socket
from ground.web.config import WebConfig
from ground.web.service import Ground

PASSWORD = "correct horse battery"
T0 = 1_800_000_000.0


class Clock:
    """Simulated Unix time, moved by the test."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Web:
    app: FastAPI
    store: LiveStore
    clock: Any  # a Clock, or time.time where real time matters
    config: WebConfig

    @property
    def ground(self) -> Ground:
        return self.app.state.ground  # type: ignore[no-any-return]


def make_web(tmp_path: Path, clock: Callable[[], float] | None = None, **config: Any) -> Web:
    """The app on a fresh SQLite store with operator alice; `clock` default a `Clock`."""
    clock = clock or Clock()
    cfg = WebConfig(
        db_url=f"sqlite:///{tmp_path}/ground.db", secret_file=tmp_path / "secret.key", **config
    )
    store = LiveStore.open(cfg.db_url, clock)
    Accounts(store).add("alice", PASSWORD)
    return Web(create_app(cfg, store, clock), store, clock, cfg)


def form_csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page has no CSRF field"
    return found.group(1)


def login(client: TestClient, username: str = "alice", password: str = PASSWORD) -> Any:
    page = client.get("/login")
    return client.post(
        "/login",
        data={"username": username, "password": password, "csrf": form_csrf(page.text)},
        follow_redirects=False,
    )


def iso(ts: float) -> str:
    return schema.utc_iso(ts)


def telemetry(drone: str, seq: int, at: float, lat: float, lon: float, **kw: Any) -> Received:
    record = schema.Telemetry(
        drone_id=drone,
        seq=seq,
        id=schema.new_id(),
        t=iso(at),
        phase=kw.get("phase", "cruise"),
        armed=True,
        mode="GUIDED",
        position=schema.Position(lat, lon, 120.0, 30.0),
        ground_speed_mps=kw.get("speed", 10.0),
        battery=schema.Battery(pct=kw.get("battery", 80), voltage_v=15.9),
        gps=schema.GpsIntegrity(fix_type=3, satellites=12),
        link=schema.LinkQuality(rssi_dbm=-71),
    )
    return Received(record, at)


def status(drone: str, seq: int, at: float, state: str = "online", ttl_s: float = 30.0) -> Received:
    return Received(schema.Status(drone, seq, schema.new_id(), iso(at), state, ttl_s), at)


def event(
    drone: str, seq: int, at: float, kind: str, mission: str | None, **detail: Any
) -> Received:
    record = schema.Event(drone, seq, schema.new_id(), iso(at), kind, mission, "cruise", detail)
    return Received(record, at)


@contextmanager
def served(app: FastAPI) -> Iterator[str]:
    """`app` on a real uvicorn (its lifespan run) at 127.0.0.1:<free port>; the base URL."""
    server = BackgroundServer(
        app, local_socket(), f"uvicorn-{uuid.uuid4().hex[:6]}", graceful_shutdown_s=2
    )
    if not server.start(20):
        server.stop(20)
        raise AssertionError("uvicorn did not start within 20 s")
    try:
        yield server.url
    finally:
        server.stop(20)
