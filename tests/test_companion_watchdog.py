"""The flight controller's companion watchdog (Lua) on real ArduCopter SITL: when the
companion falls silent while flying GUIDED, the autopilot returns home on its own.

SITL runs as sim.sitl sets it up by default, like a SkyCourier flight controller: the shipped
parameter files (SCR_ENABLE 1) and companion_watchdog.lua installed in its scripts folder."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from firmware_bridge.dialect import mavutil
from firmware_bridge.vehicle import Vehicle
from sim.sitl import SitlProcess
from tests.conftest import SITL_SKIP, sitl_binary
from tests.flight_helpers import arm_guided

pytestmark = pytest.mark.sitl

INSTANCE = 3  # TCP 5790: clear of a SITL or MAVProxy session on the default 5760


def test_silent_companion_makes_the_autopilot_return(tmp_path: Path) -> None:
    binary = sitl_binary()
    if binary is None:
        pytest.skip(SITL_SKIP)
    workdir = tmp_path / "sitl"
    sitl = SitlProcess(binary, speedup=5.0, workdir=workdir, instance=INSTANCE)
    sitl.start()
    try:
        assert (workdir / "scripts" / "companion_watchdog.lua").is_file()
        # At 5x speed-up a 1 Hz heartbeat is 5 s apart in SITL's clock: beat faster.
        companion = Vehicle.connect(
            sitl.connection, connect_timeout_s=20.0, heartbeat_interval_s=0.1
        )
        assert companion.get_param("SCW_ENABLE") == 1  # the script runs and added its table
        arm_guided(companion)
        companion.takeoff(10.0)
        companion.wait_until(
            lambda s: s.position is not None and s.position.alt_rel_m > 8, 60, "8 m"
        )
        # Not system 255 (SYSID_MYGCS): with the shipped FS_GCS_ENABLE its silence would set
        # off the GCS failsafe, whose RTL would race the watchdog's.
        ground_station = mavutil.mavlink_connection(
            f"tcp:127.0.0.1:{sitl.port + 2}", source_system=245
        )
        try:
            ground_station.wait_heartbeat(timeout=10)
            # ArduPilot sends STATUSTEXT only on channels it has heard from.
            ground_station.mav.heartbeat_send(6, 8, 0, 0, 0)
            companion.close()  # the companion dies: its heartbeat stops
            deadline = time.monotonic() + 30
            texts: list[str] = []
            mode = None
            said = False
            while time.monotonic() < deadline and not (mode == "RTL" and said):
                msg = ground_station.recv_match(type=["HEARTBEAT", "STATUSTEXT"], timeout=1)
                if msg is None:
                    continue
                if msg.get_type() == "STATUSTEXT":
                    texts.append(msg.text)
                    said = said or msg.text.startswith("SCW: companion silent")
                elif msg.get_srcComponent() == 1:
                    mode = mavutil.mode_string_v10(msg)
            assert mode == "RTL", texts
            assert said, texts
        finally:
            ground_station.close()
    finally:
        sitl.stop()
