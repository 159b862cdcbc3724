"""A companion restarted while the vehicle flies resumes MAVLink signing with the key the
autopilot already holds (ArduPilot ignores SETUP_SIGNING when armed, but keeps the key it was
given), and is told plainly when the armed autopilot holds no key or another one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from firmware_bridge.errors import SigningError
from firmware_bridge.vehicle import Vehicle
from sim.vehicle import DEFAULT_HOME, VehicleServer
from tests.conftest import HEARTBEAT_S

SECRET = bytes(range(1, 33))
OTHER_SECRET = bytes(range(101, 133))


@pytest.fixture
def server() -> Iterator[VehicleServer]:
    srv = VehicleServer(DEFAULT_HOME, speedup=20.0, port=0)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def connect(server: VehicleServer, secret: bytes | None) -> Vehicle:
    return Vehicle.connect(
        f"tcp:127.0.0.1:{server.port}",
        connect_timeout_s=10.0,
        heartbeat_interval_s=HEARTBEAT_S,
        signing_secret=secret,
    )


def test_a_restarted_companion_resumes_signing_with_an_armed_autopilot(
    server: VehicleServer,
) -> None:
    first = connect(server, SECRET)
    first.wait_armable(20.0)
    first.set_mode("GUIDED")
    first.arm()
    first.close()  # the companion dies with the vehicle armed
    assert server.state.armed
    again = connect(server, SECRET)
    try:
        assert again.link.signing == "on"
        again.set_mode("LOITER")  # a signed command the autopilot takes
        again.wait_until(lambda s: s.mode == "LOITER", 10.0, "LOITER")
        again.set_mode("GUIDED")
        again.disarm(force=True)
    finally:
        again.close()


def test_an_armed_autopilot_holding_another_key_is_refused_at_once(
    server: VehicleServer,
) -> None:
    first = connect(server, OTHER_SECRET)
    first.wait_armable(20.0)
    first.set_mode("GUIDED")
    first.arm()
    try:
        with pytest.raises(SigningError, match="it signs with another key"):
            connect(server, SECRET)
        assert server.state.armed  # nothing was changed on the autopilot
    finally:
        first.disarm(force=True)
        first.close()
