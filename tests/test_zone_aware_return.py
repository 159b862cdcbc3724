"""With the companion dead mid-delivery, the flight controller alone brings the drone home
around the no-fly zone: issue 12's acceptance, on the built-in vehicle and on ArduCopter SITL.

The airspace is GeoJSON (an operating area and a no-fly zone lying between home and the
drop), turned into the autopilot's limits by `build_limits` and put on the flight controller
by `upload_limits` before arming, as a delivery does. The drone flies out around the zone
(GUIDED gotos through a corner waypoint, as the companion's planner would route it), hovers
at the drop, and the companion dies: its link closes, its heartbeat stops. The companion
watchdog (companion_watchdog.lua on SITL, its emulation in the built-in vehicle) switches to
RTL, and RTL's return goes around the zone with the shipped OA_TYPE 2 (Dijkstra, margin
OA_MARGIN_MAX 10 m) and lands home. A second MAVLink client, which sends no companion
heartbeat, records the track from take-off to disarm; the track is checked with shapely
against the zone in the planner's local metric frame. With OA_TYPE 0 the same return crosses
the zone: that is what makes the first test able to fail."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from shapely.geometry import Point, Polygon

from companion.mission.limits_upload import upload_limits
from companion.routing.airspace import PROFILES
from companion.routing.frame import LocalFrame
from companion.routing.geojson import airspace_from_geojson
from companion.routing.limits import AutopilotLimits, build_limits
from firmware_bridge.dialect import mavlink, mavutil
from firmware_bridge.vehicle import Vehicle
from sim.sitl import SitlProcess
from sim.vehicle import DEFAULT_HOME, VehicleServer
from tests.conftest import HEARTBEAT_S, SITL_SKIP, sitl_binary
from tests.flight_helpers import arm_guided

HOME = DEFAULT_HOME[:2]
FRAME = LocalFrame(*HOME)
CRUISE_M = 30.0
#: The no-fly zone, x east / y north metres from home: 80 m square centred 150 m north.
ZONE = Polygon([(-40, 110), (40, 110), (40, 190), (-40, 190)])
DROP = (0.0, 300.0)  # x, y: beyond the zone, straight north of home
CORNER = (100.0, 150.0)  # the way out: home -> corner -> drop keeps 60 m east of the zone
SITL_INSTANCE = 9  # TCP 5850-5852, used by no other test
OA_MARGIN_MAX = 10.0  # delivery-copter.parm


def _ring(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
    return [list(reversed(FRAME.to_latlon(x, y))) for x, y in corners]


def airspace_limits() -> AutopilotLimits:
    """An operating area 1.2 km across and a no-fly zone between home and the drop."""
    features = [
        ("operating-area", _ring(-600, -600, 600, 600), {}),
        ("no-fly", [list(reversed(FRAME.to_latlon(x, y))) for x, y in ZONE.exterior.coords],
         {"name": "hospital"}),
    ]  # fmt: skip
    doc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {"role": role, **props},
                "geometry": {"type": "Polygon", "coordinates": [coords]},
            }
            for role, coords, props in features
        ],
    }
    return build_limits(
        airspace_from_geojson(doc), HOME, PROFILES["easa-open"], cruise_alt_m=CRUISE_M
    )


@dataclass
class Watcher:
    """A second MAVLink client (system 245, no companion heartbeat) recording the track,
    the texts and the mode the autopilot reports, on a thread of its own."""

    connection: str
    track: list[tuple[float, float]] = field(default_factory=list)  # x, y metres
    texts: list[str] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)
    armed: bool | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        link = mavutil.mavlink_connection(self.connection, source_system=245)
        link.wait_heartbeat(timeout=20)
        # ArduPilot sends STATUSTEXT only on links it has heard from
        link.mav.heartbeat_send(mavlink.MAV_TYPE_GCS, mavlink.MAV_AUTOPILOT_INVALID, 0, 0, 0)
        link.mav.command_long_send(
            1, 1, mavlink.MAV_CMD_SET_MESSAGE_INTERVAL, 0,
            mavlink.MAVLINK_MSG_ID_GLOBAL_POSITION_INT, 100_000, 0, 0, 0, 0, 0,
        )  # fmt: skip
        self._thread = threading.Thread(target=self._run, args=(link,), daemon=True)
        self._thread.start()

    def _run(self, link: mavutil.mavfile) -> None:
        try:
            while not self._stop.is_set():
                msg = link.recv_match(
                    type=["HEARTBEAT", "STATUSTEXT", "GLOBAL_POSITION_INT"], timeout=0.2
                )
                if msg is None:
                    continue
                kind = msg.get_type()
                if kind == "GLOBAL_POSITION_INT":
                    self.track.append(FRAME.to_xy(msg.lat / 1e7, msg.lon / 1e7))
                elif kind == "STATUSTEXT":
                    self.texts.append(msg.text)
                elif msg.get_srcSystem() == 1 and msg.get_srcComponent() == 1:
                    mode = mavutil.mode_string_v10(msg)
                    if not self.modes or self.modes[-1] != mode:
                        self.modes.append(mode)
                    self.armed = bool(msg.base_mode & mavlink.MAV_MODE_FLAG_SAFETY_ARMED)
        finally:
            link.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


@dataclass(frozen=True)
class Return:
    """What the watcher saw from the companion's death to the disarm."""

    track: list[tuple[float, float]]  # the whole flight, x/y metres
    return_track: list[tuple[float, float]]  # from the companion's death
    texts: list[str]
    modes: list[str]

    def inside(self) -> int:
        return sum(ZONE.contains(Point(p)) for p in self.track)

    def clearance(self) -> float:
        """The closest the whole track comes to the zone, metres (negative: inside)."""
        return min(
            -1.0 if ZONE.contains(Point(p)) else ZONE.exterior.distance(Point(p))
            for p in self.track
        )


def _near(vehicle: Vehicle, xy: tuple[float, float], within_m: float) -> bool:
    position = vehicle.state.position
    if position is None:
        return False
    here = FRAME.to_xy(position.lat, position.lon)
    return math.dist(here, xy) < within_m


def fly_out_and_kill_the_companion(
    connection: str, watch: str, *, timeout_s: float, heartbeat_s: float = HEARTBEAT_S
) -> Return:
    """Limits uploaded, out to the drop around the zone, companion dead; returns once the
    autopilot has disarmed (or `timeout_s` of wall time after the companion died)."""
    companion = Vehicle.connect(
        connection, connect_timeout_s=30.0, heartbeat_interval_s=heartbeat_s
    )
    watcher = Watcher(watch)
    try:
        try:
            upload_limits(companion, airspace_limits())
            watcher.start()
            arm_guided(companion)
            companion.takeoff(CRUISE_M)
            companion.wait_until(
                lambda s: s.position is not None and s.position.alt_rel_m > CRUISE_M - 1,
                120,
                "30 m",
            )
            for xy in (CORNER, DROP):
                companion.goto(*FRAME.to_latlon(*xy), CRUISE_M)
                companion.wait_until(lambda s, xy=xy: _near(companion, xy, 2.0), 120, f"at {xy}")
            assert watcher.modes[-1] == "GUIDED", watcher.texts
            died = len(watcher.track)
        finally:
            companion.close()  # the companion dies: its heartbeat stops
        deadline = time.monotonic() + timeout_s
        while watcher.armed is not False and time.monotonic() < deadline:
            time.sleep(0.05)
        assert watcher.armed is False, (watcher.modes, watcher.texts[-10:])
    finally:
        watcher.stop()
    return Return(watcher.track, watcher.track[died:], watcher.texts, watcher.modes)


@contextmanager
def builtin_vehicle(**params: float) -> Iterator[str]:
    """The built-in vehicle, fast, with the shipped parameters and `params` over them; its
    connection string (the watcher connects to the same port as a second client)."""
    with VehicleServer(DEFAULT_HOME, speedup=40.0, port=0, params=params) as server:
        yield f"tcp:127.0.0.1:{server.port}"


def _assert_watchdog_returned_home(result: Return) -> None:
    assert any(t.startswith("SCW: companion silent") for t in result.texts), result.texts
    assert result.modes[result.modes.index("GUIDED") :] == ["GUIDED", "RTL"], result.modes
    assert math.dist(result.track[-1], (0.0, 0.0)) < 2.0  # landed at home


def test_the_watchdog_return_goes_around_the_zone() -> None:
    with builtin_vehicle() as vehicle:
        result = fly_out_and_kill_the_companion(vehicle, vehicle, timeout_s=60)
    _assert_watchdog_returned_home(result)
    assert result.inside() == 0
    # the return was routed: it went as far aside as the zone's corner plus the margin
    assert max(abs(x) for x, _ in result.return_track) > 40.0
    clearance = result.clearance()
    print(f"built-in vehicle: closest approach to the zone {clearance:.2f} m")
    # Dijkstra's nodes sit OA_MARGIN_MAX out from the corners along their bisectors, so the
    # legs between them run margin / sqrt(2) from a square zone's sides
    assert OA_MARGIN_MAX / math.sqrt(2) - 1.0 < clearance < OA_MARGIN_MAX


def test_without_the_planner_the_same_return_crosses_the_zone() -> None:
    with builtin_vehicle(OA_TYPE=0) as vehicle:
        result = fly_out_and_kill_the_companion(vehicle, vehicle, timeout_s=60)
    _assert_watchdog_returned_home(result)
    assert result.inside() > 20  # 80 m of zone at 10 m/s, sampled at 10 Hz
    assert "Polygon fence breached" in result.texts


@pytest.mark.sitl
@pytest.mark.parametrize("oa_type", [2, 0])
def test_sitl_watchdog_return_goes_around_the_zone(tmp_path: Path, oa_type: int) -> None:
    """SkyCourier's shipped parameters (OA_TYPE 2, OA_MARGIN_MAX 10, SCR_ENABLE 1), and
    the same with OA_TYPE 0 to show the return would otherwise cross the zone."""
    binary = sitl_binary()
    if binary is None:
        pytest.skip(SITL_SKIP)
    params = {} if oa_type == 2 else {"OA_TYPE": float(oa_type)}
    sitl = SitlProcess(
        binary, speedup=10.0, instance=SITL_INSTANCE, workdir=tmp_path / "sitl", params=params
    )
    sitl.start()
    try:
        watch = f"tcp:127.0.0.1:{sitl.port + 2}"
        result = fly_out_and_kill_the_companion(
            sitl.connection, watch, timeout_s=120, heartbeat_s=0.05
        )
    finally:
        sitl.stop()
    _assert_watchdog_returned_home(result)
    if oa_type == 0:
        assert result.inside() > 20
        assert "Polygon fence breached" in result.texts
        return
    assert result.inside() == 0
    assert max(abs(x) for x, _ in result.return_track) > 40.0
    clearance = result.clearance()
    print(f"SITL: closest approach to the zone {clearance:.2f} m")
    assert OA_MARGIN_MAX / math.sqrt(2) - 1.0 < clearance < OA_MARGIN_MAX
