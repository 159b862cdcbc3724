"""Shared fixtures: an autopilot to talk to (the built-in vehicle always, ArduPilot SITL when
SKYCOURIER_SITL names an arducopter binary) and a connected `Vehicle`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from firmware_bridge.vehicle import Vehicle
from sim.sitl import SitlProcess
from sim.vehicle import DEFAULT_HOME, VehicleServer
from tests.face_images import analyzer, bus, zidane  # noqa: F401
from tests.model_fixtures import sources  # noqa: F401
from tests.mqtt_fixtures import embedded_mqtt_broker, mosquitto, mqtt_broker  # noqa: F401

SHARED = Path(__file__).resolve().parents[2] / "shared"
SITL_ENV = "SKYCOURIER_SITL"
SITL_SKIP = (
    f"set {SITL_ENV} to the path of an ArduPilot arducopter SITL binary to run the SITL tests "
    "(build it from ArduPilot's source: ./waf configure --board sitl && ./waf copter)"
)


#: The companion's heartbeat period in the tests. Simulated autopilots run up to 20x faster
#: than the wall clock and time their failsafes (the companion watchdog's 5 s) in their own
#: clock, so a 1 Hz heartbeat would look like a companion that keeps dying.
HEARTBEAT_S = 0.05


@dataclass
class Autopilot:
    """Where a test's autopilot listens, and which kind it is."""

    kind: str
    connection: str
    server: VehicleServer | None = None


def sitl_binary() -> Path | None:
    """The SITL binary named by the environment, if any."""
    value = os.environ.get(SITL_ENV)
    return Path(value) if value else None


@pytest.fixture
def builtin_autopilot() -> Iterator[Autopilot]:
    """The built-in vehicle, fast (speed-up 20), on a free loopback port."""
    server = VehicleServer(DEFAULT_HOME, speedup=20.0, port=0)
    server.start()
    try:
        yield Autopilot("builtin", f"tcp:127.0.0.1:{server.port}", server)
    finally:
        server.stop()


@pytest.fixture(params=["builtin", pytest.param("sitl", marks=pytest.mark.sitl)])
def autopilot(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Autopilot]:
    """Each test using this runs against the built-in vehicle and, if available, SITL."""
    if request.param == "builtin":
        yield request.getfixturevalue("builtin_autopilot")
        return
    binary = sitl_binary()
    if binary is None:
        pytest.skip(SITL_SKIP)
    sitl = SitlProcess(binary, speedup=5.0, workdir=tmp_path / "sitl")
    sitl.start()
    try:
        yield Autopilot("sitl", sitl.connection)
    finally:
        sitl.stop()


@pytest.fixture
def vehicle(autopilot: Autopilot) -> Iterator[Vehicle]:
    """A `Vehicle` connected to the test's autopilot."""
    v = Vehicle.connect(
        autopilot.connection, connect_timeout_s=20.0, heartbeat_interval_s=HEARTBEAT_S
    )
    try:
        yield v
    finally:
        v.close()
