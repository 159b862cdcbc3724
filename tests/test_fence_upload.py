"""Geofence and rally upload through the bridge: checks before upload, round trips against
the built-in vehicle (and SITL), the built-in vehicle's polygon fence enforcement."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import Point, Polygon

from companion.geo import offset
from firmware_bridge.dialect import mavlink
from firmware_bridge.errors import CommandError, FenceError, MissionError
from firmware_bridge.fence import (
    FENCE_MAX_ITEMS,
    RALLY_MAX_POINTS,
    FenceCircle,
    FenceDefinition,
    FencePolygon,
    RallyPoint,
    fence_differences,
    fence_problems,
    rally_differences,
    rally_problems,
    to_e7,
)
from firmware_bridge.mission_protocol import MissionItem
from firmware_bridge.vehicle import Vehicle
from sim.sitl import SitlProcess
from sim.vehicle import DEFAULT_HOME, VehicleServer
from sim.vehicle.mission_store import FENCE, Item, convert, fence_error
from tests.conftest import HEARTBEAT_S, SITL_SKIP, Autopilot, sitl_binary
from tests.flight_helpers import arm_guided

LAT0, LON0, _ = DEFAULT_HOME


def square(north: float, east: float, half: float) -> list[tuple[float, float]]:
    """Corners (lat, lon) of a square `half` metres each side of a point north/east of home."""
    lat, lon = offset(LAT0, LON0, math.hypot(north, east), math.degrees(math.atan2(east, north)))
    return [
        offset(*offset(lat, lon, half, 0 if dn > 0 else 180), half, 90 if de > 0 else 270)
        for dn, de in ((1, 1), (1, -1), (-1, -1), (-1, 1))
    ]


def delivery_fence() -> FenceDefinition:
    """An operating area, two no-fly zones, a no-fly circle and a return point."""
    return FenceDefinition(
        polygons=(
            FencePolygon.from_degrees(square(0, 0, 600), inclusion=True),
            FencePolygon.from_degrees(square(120, 0, 30), inclusion=False),
            FencePolygon.from_degrees(square(-200, 200, 40)[:3], inclusion=False),
        ),
        circles=(FenceCircle.from_degrees(*offset(LAT0, LON0, 300, 270), 25.5, inclusion=False),),
        return_point=to_e7(*offset(LAT0, LON0, 10, 0)),
    )


def _circle_points(n: int) -> list[tuple[float, float]]:
    return [offset(LAT0, LON0, 200, 360 * k / n) for k in range(n)]


# ---- checks before upload -------------------------------------------------------------------


def test_items_follow_ardupilots_layout_and_decode_back() -> None:
    fence = delivery_fence()
    items = fence.items()
    assert [i.seq for i in items] == list(range(4 + 4 + 3 + 1 + 1))
    assert {i.mission_type for i in items} == {mavlink.MAV_MISSION_TYPE_FENCE}
    assert [i.param1 for i in items[:11]] == [4.0] * 8 + [3.0] * 3
    assert items[11].command == mavlink.MAV_CMD_NAV_FENCE_CIRCLE_EXCLUSION
    assert items[11].param1 == 25.5
    assert items[12].command == mavlink.MAV_CMD_NAV_FENCE_RETURN_POINT
    assert FenceDefinition.from_items(items) == fence
    assert fence_problems(fence) == []


@pytest.mark.parametrize(
    ("fence", "expected"),
    [
        (FenceDefinition((FencePolygon(((0, 0), (10, 10)), True),)), "polygon 0 (inclusion): 2"),
        (
            FenceDefinition((FencePolygon(tuple((k, k * k) for k in range(256)), False),)),
            "256 vertices",
        ),
        (
            FenceDefinition((FencePolygon(((0, 0), (900_000_001, 0), (0, 5)), True),)),
            "vertex 1: latitude 90.0000001 is outside -90..90",
        ),
        (
            FenceDefinition((FencePolygon(((0, 0), (10, 10), (0, 10), (10, 0)), False),)),
            "polygon 0 (exclusion): edges 0 and 2 cross",
        ),
        (
            FenceDefinition((FencePolygon(((0, 0), (0, 0), (0, 10)), True),)),
            "vertices 0 and 1 are the same point",
        ),
        (FenceDefinition(circles=(FenceCircle((0, 0), math.nan, False),)), "radius nan m"),
        (FenceDefinition(circles=(FenceCircle((0, 0), -5.0, True),)), "radius -5.0 m"),
        (FenceDefinition(circles=(FenceCircle((0, 0), 1e39, True),)), "radius 1e+39 m"),
        (FenceDefinition(return_point=(0, 1_800_000_001)), "return point: longitude"),
        (FenceDefinition(return_point=(0.5, 1)), "not a (lat, lon) pair"),  # type: ignore[arg-type]
        (
            FenceDefinition(circles=(FenceCircle((0, 0), 5.0, True),) * (FENCE_MAX_ITEMS + 1)),
            "71 fence items; the flight controller stores at most 70",
        ),
        (
            # 70 items, but 4 + 2 + 8 * 69 + 13 = 571 bytes of storage > 560
            FenceDefinition(
                (FencePolygon.from_degrees(_circle_points(69), True),),
                (FenceCircle((0, 0), 5.0, False),),
            ),
            "needs 571 bytes of storage; the flight controller has 560",
        ),
    ],
)
def test_fences_ardupilot_would_refuse_are_refused_with_the_reason(
    fence: FenceDefinition, expected: str
) -> None:
    problems = fence_problems(fence)
    assert any(expected in p for p in problems), problems


def test_degrees_must_be_finite() -> None:
    with pytest.raises(ValueError, match="latitude nan is not a finite number"):
        FencePolygon.from_degrees([(math.nan, 0), (1, 1), (0, 1)], True)


def test_rally_points_that_would_not_read_back_identical_are_refused() -> None:
    good = RallyPoint.from_degrees(LAT0, LON0, 20)
    assert rally_problems([good]) == []
    assert "altitude 20.5 is not whole metres" in rally_problems([RallyPoint((0, 0), 20.5)])[0]  # type: ignore[arg-type]
    assert "altitude 40000" in rally_problems([RallyPoint((0, 0), 40000)])[0]
    assert "frame 1 is not a GLOBAL frame" in rally_problems([RallyPoint((0, 0), 5, frame=1)])[0]
    assert "47 rally points" in rally_problems([good] * (RALLY_MAX_POINTS + 1))[0]


def test_differences_name_the_item_and_the_field() -> None:
    sent = delivery_fence().items()
    moved = [*sent[:3], MissionItem(**{**sent[3].__dict__, "x": sent[3].x + 1}), *sent[4:]]
    assert fence_differences(sent, moved) == [
        f"fence item 3: ({sent[3].x}, {sent[3].y}) sent, ({sent[3].x + 1}, {sent[3].y}) read back"
    ]
    assert fence_differences(sent, sent[:-1]) == ["sent 13 fence items, read back 12"]
    rally = [RallyPoint((1, 2), 15).item(0)]
    back = [MissionItem(**{**rally[0].__dict__, "frame": mavlink.MAV_FRAME_GLOBAL_RELATIVE_ALT})]
    assert rally_differences(rally, back) == []
    higher = [MissionItem(**{**back[0].__dict__, "z": 16.0})]
    assert "at 15 m sent" in rally_differences(rally, higher)[0]


LATLON = st.tuples(
    st.integers(-1_000_000_000, 1_000_000_000), st.integers(-2_000_000_000, 2_000_000_000)
)
POLYGONS = st.builds(
    FencePolygon, st.lists(LATLON, min_size=0, max_size=8).map(tuple), st.booleans()
)
CIRCLES = st.builds(
    FenceCircle, LATLON, st.floats(allow_nan=True, allow_infinity=True), st.booleans()
)
FENCES = st.builds(
    FenceDefinition,
    st.lists(POLYGONS, max_size=4).map(tuple),
    st.lists(CIRCLES, max_size=4).map(tuple),
    st.none() | LATLON,
)


@settings(max_examples=300, deadline=None)
@given(FENCES)
def test_what_passes_our_checks_is_what_ardupilot_stores(fence: FenceDefinition) -> None:
    """Whatever hostile definition comes in: either we name a problem, or every item passes
    the built-in vehicle's model of ArduPilot's item conversion and fence validation and
    decodes back to the same definition."""
    if fence_problems(fence):
        return
    stored = []
    for item in fence.items():
        fields = (item.param1, item.param2, item.param3, item.param4, item.x, item.y, item.z)
        result, kept = convert(Item(item.seq, item.frame, item.command, *fields), FENCE)
        assert result == mavlink.MAV_MISSION_ACCEPTED and kept is not None
        stored.append(kept)
    assert fence_error(stored) is None
    back = [
        MissionItem(s.seq, s.frame, s.command, 0, 1, s.param1, 0, 0, 0, s.x, s.y, s.z, FENCE)
        for s in stored
    ]
    assert fence_differences(fence.items(), back) == []
    assert FenceDefinition.from_items(back) == fence


# ---- against the built-in vehicle over TCP --------------------------------------------------


def _round_trip(vehicle: Vehicle) -> None:
    fence = delivery_fence()
    assert vehicle.upload_fence(fence.polygons, fence.circles, fence.return_point) == fence
    assert vehicle.download_fence() == fence
    rally = [RallyPoint.from_degrees(*offset(LAT0, LON0, 150, b), 25) for b in (0, 120, 240)]
    vehicle.upload_rally(rally)
    back = vehicle.download_rally()
    assert [(p.position, p.alt_m) for p in back] == [(p.position, p.alt_m) for p in rally]
    assert {p.frame for p in back} == {mavlink.MAV_FRAME_GLOBAL_RELATIVE_ALT}
    vehicle.upload_fence()
    vehicle.upload_rally([])
    assert vehicle.download_fence() == FenceDefinition()
    assert vehicle.download_rally() == []


def _raw(items: list[tuple[int, int, int, float]]) -> list[MissionItem]:
    return [
        MissionItem(seq, mavlink.MAV_FRAME_GLOBAL_INT, cmd, 0, 1, p1, 0, 0, 0, x, y, 0.0, FENCE)
        for seq, (cmd, x, y, p1) in enumerate(items)
    ]


def _refusals(vehicle: Vehicle) -> None:
    """What the autopilot itself refuses, bypassing the bridge's checks; the old fence stays."""
    good = delivery_fence()
    vehicle.upload_fence(good.polygons, good.circles, good.return_point)
    vertex = mavlink.MAV_CMD_NAV_FENCE_POLYGON_VERTEX_EXCLUSION
    x, y = to_e7(LAT0, LON0)
    cases = [
        ([(vertex, x, y, 2), (vertex, x + 10, y, 2)], "MAV_MISSION_ERROR", "Invalid vertex count"),
        ([(vertex, x, y, 300)] * 3, "MAV_MISSION_INVALID_PARAM1", None),
        (
            [(mavlink.MAV_CMD_NAV_FENCE_CIRCLE_INCLUSION, x, y, 0.0)],
            "MAV_MISSION_ERROR",
            "Non-positive circle radius",
        ),
        ([(mavlink.MAV_CMD_NAV_FENCE_RETURN_POINT, x, y, 0)] * 2, "MAV_MISSION_ERROR", "Multiple"),
        ([(mavlink.MAV_CMD_NAV_WAYPOINT, x, y, 0)], "MAV_MISSION_UNSUPPORTED", None),
        (
            [(mavlink.MAV_CMD_NAV_FENCE_CIRCLE_INCLUSION, x, y, 5.0)] * (FENCE_MAX_ITEMS + 1),
            "MAV_MISSION_NO_SPACE",
            "Only 70 items are supported",
        ),
        (
            [(vertex, *to_e7(*p), 69) for p in _circle_points(69)]
            + [(mavlink.MAV_CMD_NAV_FENCE_CIRCLE_INCLUSION, x, y, 5.0)],
            "MAV_MISSION_ERROR",
            "Fence exceeds storage size",
        ),
    ]
    for items, result, text in cases:
        started = time.time()
        with pytest.raises(MissionError) as caught:
            vehicle.upload_mission(_raw(items), FENCE)
        assert caught.value.result == result
        if text is not None:
            deadline = time.time() + 2.0
            while not any(text in t.text for t in vehicle.tracker.recent_texts(started)):
                assert time.time() < deadline, f"no STATUSTEXT with {text!r}"
                time.sleep(0.05)
    assert vehicle.download_fence() == good
    with pytest.raises(FenceError, match="polygon 0 \\(inclusion\\): 2 vertices"):
        vehicle.upload_fence([FencePolygon(((x, y), (x + 5, y)), True)])
    with pytest.raises(MissionError, match="MAV_MISSION_INVALID_PARAM7"):
        vehicle.upload_mission(
            [MissionItem.waypoint(LAT0, LON0, 40000, command=mavlink.MAV_CMD_NAV_RALLY_POINT)],
            mavlink.MAV_MISSION_TYPE_RALLY,
        )


def test_fence_and_rally_round_trip_on_the_builtin_vehicle(builtin_autopilot: Autopilot) -> None:
    with Vehicle.connect(builtin_autopilot.connection, heartbeat_interval_s=HEARTBEAT_S) as v:
        _round_trip(v)
        _refusals(v)


def test_rally_altitude_is_stored_as_whole_metres(builtin_autopilot: Autopilot) -> None:
    with Vehicle.connect(builtin_autopilot.connection, heartbeat_interval_s=HEARTBEAT_S) as v:
        item = MissionItem.waypoint(
            LAT0, LON0, 20.7, command=mavlink.MAV_CMD_NAV_RALLY_POINT, mission_type=2
        )
        v.upload_mission([item], mavlink.MAV_MISSION_TYPE_RALLY)
        assert v.download_mission(mavlink.MAV_MISSION_TYPE_RALLY)[0].z == 20.0


def test_polygon_exclusion_breach_triggers_rtl() -> None:
    """A no-fly polygon across the path: the destination beyond it is accepted (ArduPilot
    checks only the destination), crossing into it is a breach, and FENCE_ACTION 1 is RTL.
    Without the path planner (OA_TYPE 0): with it, the RTL from inside the zone would find no
    way out (tests/test_sim_vehicle_oa.py)."""
    with (
        VehicleServer(DEFAULT_HOME, speedup=20.0, port=0, params={"OA_TYPE": 0}) as server,
        Vehicle.connect(f"tcp:127.0.0.1:{server.port}", heartbeat_interval_s=HEARTBEAT_S) as v,
    ):
        zone = FencePolygon.from_degrees(square(80, 0, 20), inclusion=False)
        v.upload_fence([zone])
        arm_guided(v)
        v.takeoff(10)
        v.wait_until(lambda s: s.position is not None and s.position.alt_rel_m > 9, 60, "10 m")
        with pytest.raises(CommandError, match="FAILED"):
            v.goto(*offset(LAT0, LON0, 80, 0), 10)  # a destination inside the zone
        started = time.time()
        v.goto(*offset(LAT0, LON0, 160, 0), 10)
        v.wait_until(lambda s: s.mode == "RTL", 60, "RTL after the polygon breach")
        texts = [t.text for t in v.tracker.recent_texts(started)]
        assert "Polygon fence breached" in texts
        v.wait_until(lambda s: not s.armed, 120, "landed and disarmed at home")


def test_with_the_planner_a_guided_goto_beyond_a_zone_goes_around_it() -> None:
    """The shipped OA_TYPE 2, with GUIDED flying its targets with the waypoint navigator
    (GUID_OPTIONS bit 6; ArduCopter's default flies them straight, planner or not): the goto
    beyond the zone arrives without a breach, and the track keeps out of the zone."""
    with (
        VehicleServer(DEFAULT_HOME, speedup=20.0, port=0, params={"GUID_OPTIONS": 64}) as server,
        Vehicle.connect(f"tcp:127.0.0.1:{server.port}", heartbeat_interval_s=HEARTBEAT_S) as v,
    ):
        assert v.get_param("OA_TYPE") == 2  # delivery-copter.parm
        v.upload_fence([FencePolygon.from_degrees(square(80, 0, 20), inclusion=False)])
        arm_guided(v)
        v.takeoff(10)
        v.wait_until(lambda s: s.position is not None and s.position.alt_rel_m > 9, 60, "10 m")
        v.goto(*offset(LAT0, LON0, 160, 0), 10)
        track = []
        deadline = time.monotonic() + 60
        while True:
            state = server.state
            track.append((state.north_m, state.east_m))
            if math.hypot(state.north_m - 160, state.east_m) < 1.0:
                break
            assert time.monotonic() < deadline, f"not there: {track[-1]}"
            time.sleep(0.005)
        state = server.state
        assert (state.mode, state.fence_breaches) == ("GUIDED", 0)
        zone = Polygon([(60, -20), (60, 20), (100, 20), (100, -20)])  # north, east
        assert not any(zone.intersects(Point(p)) for p in track)
        assert max(abs(e) for _, e in track) > 20  # it went round, not through


# ---- SITL -----------------------------------------------------------------------------------


@pytest.mark.sitl
def test_fence_and_rally_round_trip_on_sitl(tmp_path: Path) -> None:
    binary = sitl_binary()
    if binary is None:
        pytest.skip(SITL_SKIP)
    sitl = SitlProcess(
        binary, home=(LAT0, LON0, DEFAULT_HOME[2], 0.0), instance=6, workdir=tmp_path / "sitl"
    )
    sitl.start()
    try:
        with Vehicle.connect(
            sitl.connection, connect_timeout_s=30.0, heartbeat_interval_s=HEARTBEAT_S
        ) as v:
            _round_trip(v)
            _refusals(v)
    finally:
        sitl.stop()
