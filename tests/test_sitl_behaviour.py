"""What the built-in vehicle copies from ArduCopter, checked on real SITL set up as SkyCourier
ships it (sim.sitl's defaults: copter.parm, delivery-copter.parm, airframes/sitl-copter.parm,
companion_watchdog.lua). The built-in side of each check is in test_sim_vehicle_commands.py.

A raw pymavlink client plays a ground station (system 245: neither SYSID_MYGCS, so no GCS
failsafe, nor the companion's component 191, so the watchdog stays out of it) and asks for
all streams at 4 Hz as MAVProxy does. Times are SITL's simulated seconds (time_boot_ms)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from firmware_bridge.dialect import MAVLinkMessage, mavlink, mavutil
from sim.sitl import SitlProcess
from sim.vehicle.geo import ne_offset, offset_latlon
from tests.conftest import SITL_SKIP, sitl_binary

pytestmark = pytest.mark.sitl

C = mavlink
ACCEPTED, DENIED, FAILED, UNSUPPORTED = 0, 2, 4, 3
GUIDED, LOITER = 4, 5
GEOFENCE = C.MAV_SYS_STATUS_GEOFENCE
REL_INT = C.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT
POS_ONLY = 0b110111111000
INSTANCE = 3  # TCP 5790: clear of a SITL or MAVProxy session on the default 5760
_KEPT = frozenset({"COMMAND_ACK", "PARAM_VALUE"})


class GroundStation:
    """A raw MAVLink client of SITL, independent of the bridge's state tracking."""

    def __init__(self, port: int) -> None:
        self.conn = mavutil.mavlink_connection(
            f"tcp:127.0.0.1:{port}", source_system=245, source_component=190
        )
        self.last: dict[str, MAVLinkMessage] = {}
        self.texts: list[str] = []
        self.inbox: list[MAVLinkMessage] = []
        self._beat_at = 0.0
        self.pump(0.1)
        self.conn.mav.request_data_stream_send(1, 1, C.MAV_DATA_STREAM_ALL, 4, 1)

    def pump(self, timeout: float = 0.02) -> None:
        if time.monotonic() - self._beat_at > 0.1:
            self._beat_at = time.monotonic()
            self.conn.mav.heartbeat_send(C.MAV_TYPE_GCS, C.MAV_AUTOPILOT_INVALID, 0, 0, 0)
        msg = self.conn.recv_match(blocking=True, timeout=timeout)
        while msg is not None:
            kind = msg.get_type()
            if kind == "STATUSTEXT":
                self.texts.append(msg.text)
            elif msg.get_srcComponent() == 1:
                self.last[kind] = msg
            if kind in _KEPT:
                self.inbox.append(msg)
            msg = self.conn.recv_match(blocking=False)

    @property
    def time(self) -> float:
        times = [m.time_boot_ms for k, m in self.last.items() if hasattr(m, "time_boot_ms")]
        return max(times, default=0) / 1000.0

    def wait(self, pred: Callable[[], bool], what: str, timeout: float = 120.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump()
            try:
                if pred():
                    return self.time
            except KeyError:
                pass
        raise AssertionError(f"SITL: timed out waiting for {what}; texts {self.texts[-8:]}")

    def settle(self, seconds: float) -> None:
        until = self.time + seconds
        self.wait(lambda: self.time >= until, f"{seconds} s")

    def _ack(self, command: int) -> int:
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            for i, msg in enumerate(self.inbox):
                if msg.get_type() == "COMMAND_ACK" and msg.command == command:
                    return self.inbox.pop(i).result
            self.pump()
        raise AssertionError(f"SITL: no COMMAND_ACK for {command}")

    def command(self, command: int, *params: float, confirmation: int = 0) -> int:
        self.inbox = [m for m in self.inbox if m.get_type() != "COMMAND_ACK"]
        p = [*params, *[0.0] * (7 - len(params))]
        self.conn.mav.command_long_send(1, 1, command, confirmation, *p)
        return self._ack(command)

    def reposition(self, lat: int, lon: int, z: float, frame: int = REL_INT, flags: int = 0) -> int:
        self.inbox = [m for m in self.inbox if m.get_type() != "COMMAND_ACK"]
        self.conn.mav.command_int_send(
            1, 1, frame, C.MAV_CMD_DO_REPOSITION, 0, 0, -1, flags, 0, 0, lat, lon, z
        )
        return self._ack(C.MAV_CMD_DO_REPOSITION)

    def param(self, name: str) -> float | None:
        self.inbox = [m for m in self.inbox if m.get_type() != "PARAM_VALUE"]
        self.conn.mav.param_request_read_send(1, 1, name.encode(), -1)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            for msg in self.inbox:
                if msg.get_type() == "PARAM_VALUE" and msg.param_id == name:
                    return msg.param_value
            self.pump()
        return None

    def goto(self, lat: int, lon: int, alt: float) -> None:
        self.conn.mav.set_position_target_global_int_send(
            0, 1, 1, REL_INT, POS_ONLY, lat, lon, alt, 0, 0, 0, 0, 0, 0, 0, 0
        )

    def fence_bits(self) -> tuple[bool, bool, bool]:
        status = self.last["SYS_STATUS"]
        return (
            bool(status.onboard_control_sensors_present & GEOFENCE),
            bool(status.onboard_control_sensors_enabled & GEOFENCE),
            bool(status.onboard_control_sensors_health & GEOFENCE),
        )

    def mode(self) -> int:
        return self.last["HEARTBEAT"].custom_mode

    def alt(self) -> float:
        return self.last["GLOBAL_POSITION_INT"].relative_alt / 1000.0

    def speed(self) -> float:
        return self.last["VFR_HUD"].groundspeed

    def top_speed(self, seconds: float) -> float:
        top = [0.0]
        until = self.time + seconds

        def track() -> bool:
            top[0] = max(top[0], self.speed())
            return self.time >= until

        self.wait(track, f"{seconds} s of flight")
        return top[0]


@pytest.fixture(scope="module")
def sitl(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[GroundStation, tuple[int, int]]]:
    """SITL as shipped, a ground station on it, and home (1e-7 degrees) once set."""
    binary = sitl_binary()
    if binary is None:
        pytest.skip(SITL_SKIP)
    workdir: Path = tmp_path_factory.mktemp("sitl")
    process = SitlProcess(binary, speedup=5.0, workdir=workdir, instance=INSTANCE)
    process.start()
    try:
        gcs = GroundStation(process.port)
        try:
            assert gcs.command(C.MAV_CMD_SET_MESSAGE_INTERVAL, 87, 100_000) == ACCEPTED

            def home_set() -> bool:
                if gcs.command(C.MAV_CMD_GET_HOME_POSITION) == ACCEPTED:
                    return True
                gcs.settle(1.0)
                return False

            gcs.wait(home_set, "home")
            gcs.wait(lambda: "HOME_POSITION" in gcs.last, "HOME_POSITION")
            home = gcs.last["HOME_POSITION"]
            yield gcs, (home.latitude, home.longitude)
        finally:
            gcs.conn.close()
    finally:
        process.stop()


def offset(home: tuple[int, int], north: float, east: float) -> tuple[int, int]:
    return offset_latlon(home[0], home[1], north, east)


def distance(gcs: GroundStation, point: tuple[int, int]) -> float:
    pos = gcs.last["GLOBAL_POSITION_INT"]
    return math.hypot(*ne_offset(point[0], point[1], pos.lat, pos.lon))


def test_on_the_ground(sitl: tuple[GroundStation, tuple[int, int]]) -> None:
    gcs, home = sitl
    # the shipped setup: scripting runs the companion watchdog, fence and failsafes are on
    gcs.wait(lambda: "SCW: companion watchdog running" in gcs.texts, "the watchdog's banner")
    assert gcs.param("SCW_ENABLE") == 1 and gcs.param("FENCE_ENABLE") == 1
    assert gcs.param("BATT_LOW_MAH") == 660
    assert gcs.fence_bits() == (True, True, True)
    # a retransmission (confirmation 1) is run again
    banners = gcs.texts.count("Frame: QUAD/PLUS")
    assert gcs.command(C.MAV_CMD_DO_SEND_BANNER) == ACCEPTED
    assert gcs.command(C.MAV_CMD_DO_SEND_BANNER, confirmation=1) == ACCEPTED
    gcs.wait(lambda: gcs.texts.count("Frame: QUAD/PLUS") == banners + 2, "two banners")
    # DO_CHANGE_SPEED and DO_REPOSITION outside GUIDED
    speed = C.MAV_CMD_DO_CHANGE_SPEED
    assert [gcs.command(speed, 1, 5), gcs.command(speed, 1, 0)] == [FAILED, DENIED]
    assert [gcs.command(speed, 4, 5), gcs.command(speed, 7, 5)] == [DENIED, FAILED]
    near = offset(home, 50, 0)
    assert gcs.reposition(*near, 10) == DENIED
    assert gcs.command(C.MAV_CMD_DO_SET_MODE, 1, GUIDED) == ACCEPTED
    assert [gcs.command(speed, kind, 5) for kind in range(4)] == [ACCEPTED] * 4
    assert [gcs.command(speed, 5, 5), gcs.command(speed, -1, 5)] == [FAILED, FAILED]
    # disarmed in GUIDED a destination is stored and reported
    assert gcs.reposition(*near, 10) == ACCEPTED
    gcs.wait(lambda: "POSITION_TARGET_GLOBAL_INT" in gcs.last, "the target on the ground")
    target = gcs.last["POSITION_TARGET_GLOBAL_INT"]
    assert (target.lat_int, target.lon_int, target.type_mask) == (*near, 0xFDF8)


def test_in_flight(sitl: tuple[GroundStation, tuple[int, int]]) -> None:
    gcs, home = sitl
    assert gcs.command(C.MAV_CMD_DO_SET_MODE, 1, GUIDED) == ACCEPTED

    def armed() -> bool:
        if gcs.command(C.MAV_CMD_COMPONENT_ARM_DISARM, 1) == ACCEPTED:
            return True
        gcs.settle(1.0)
        return False

    gcs.wait(armed, "arming in GUIDED", 180)
    assert not [text for text in gcs.texts if "Battery" in text]  # no low-voltage failsafe
    takeoff = (C.MAV_CMD_NAV_TAKEOFF, 0, 0, 0, 0, 0, 0, 10)
    assert gcs.command(*takeoff) == ACCEPTED
    assert gcs.command(*takeoff, confirmation=1) == ACCEPTED  # still spooling up: run again
    gcs.wait(lambda: gcs.alt() >= 9.5, "10 m")
    assert gcs.fence_bits() == (True, True, True)
    # a speed change before the first goto is dropped; one during a goto holds
    assert gcs.command(C.MAV_CMD_DO_CHANGE_SPEED, 1, 4) == ACCEPTED
    goal = offset(home, 150, 0)
    gcs.goto(*goal, 10)
    assert gcs.top_speed(12.0) > 9.5
    target = gcs.last["POSITION_TARGET_GLOBAL_INT"]
    assert (target.lat_int, target.lon_int, target.coordinate_frame) == (*goal, 0)
    assert target.alt == pytest.approx(gcs.last["HOME_POSITION"].altitude / 1000 + 10, abs=0.05)
    assert gcs.command(C.MAV_CMD_DO_CHANGE_SPEED, 1, 3) == ACCEPTED
    gcs.settle(6.0)
    assert gcs.speed() == pytest.approx(3.0, abs=0.3)  # SITL's groundspeed wavers a little
    gcs.goto(*offset(home, 150, 60), 10)
    assert gcs.top_speed(8.0) < 3.2
    # DO_REPOSITION's refusals
    near, outside = offset(home, 50, 0), offset(home, 900, 0)
    assert gcs.reposition(0, 0, 10) == DENIED
    assert gcs.reposition(*near, 0) == DENIED
    assert gcs.reposition(*near, math.nan) == DENIED
    assert gcs.reposition(910_000_000, near[1], 10) == DENIED
    assert gcs.reposition(*near, 10, frame=C.MAV_FRAME_LOCAL_NED) == DENIED
    assert gcs.reposition(*outside, 10) == FAILED
    assert gcs.reposition(*near, 130) == FAILED
    by_long = (C.MAV_CMD_DO_REPOSITION, -1, 0, 0, 0, near[0] * 1e-7, near[1] * 1e-7, 10)
    assert gcs.command(*by_long) == UNSUPPORTED
    assert gcs.command(C.MAV_CMD_DO_SET_MODE, 1, LOITER) == ACCEPTED
    assert gcs.command(C.MAV_CMD_DO_CHANGE_SPEED, 1, 5) == FAILED
    assert gcs.reposition(*near, 10) == DENIED
    assert gcs.reposition(*outside, 10, flags=1) == FAILED
    gcs.settle(1.5)
    assert gcs.mode() == LOITER
    assert gcs.reposition(*near, 10, flags=1) == ACCEPTED
    gcs.wait(lambda: gcs.mode() == GUIDED, "GUIDED from the reposition")
    gcs.wait(lambda: distance(gcs, near) < 2.0, "the reposition point")
    # the gripper as shipped (with SITL's simulated one)
    assert gcs.command(C.MAV_CMD_DO_GRIPPER, 1, C.GRIPPER_ACTION_RELEASE) == ACCEPTED
    gcs.wait(lambda: "Gripper load released" in gcs.texts, "the release")
    gcs.wait(lambda: gcs.last["SERVO_OUTPUT_RAW"].servo8_raw == 1100, "servo 8 at 1100")
    assert gcs.command(C.MAV_CMD_NAV_RETURN_TO_LAUNCH) == ACCEPTED
    speed = C.MAV_CMD_DO_CHANGE_SPEED
    assert [gcs.command(speed, kind, 5) for kind in range(4)] == [ACCEPTED] * 4
