"""The airspace's limits uploaded to the built-in vehicle over TCP before arming: read back
identical, fence parameters verified, a refusal naming what differs, and the flight
controller alone returning home when a leg breaches a no-fly polygon (without the path
planner: with OA_TYPE 2 an RTL from inside a zone finds no way out; the return around the
zones is tests/test_zone_aware_return.py)."""

from __future__ import annotations

import dataclasses
import math
import time

import pytest

from companion.geo import offset
from companion.mission.limits_upload import LimitsRefused, upload_limits
from companion.routing.airspace import PROFILES
from companion.routing.frame import LocalFrame
from companion.routing.geojson import airspace_from_geojson
from companion.routing.limits import AutopilotLimits, build_limits
from firmware_bridge.errors import CommandError
from firmware_bridge.fence import FencePolygon
from firmware_bridge.vehicle import Vehicle
from sim.vehicle import DEFAULT_HOME, VehicleServer
from tests.conftest import HEARTBEAT_S, Autopilot
from tests.flight_helpers import arm_guided

HOME = DEFAULT_HOME[:2]
FRAME = LocalFrame(*HOME)


def _ring(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
    return [list(reversed(FRAME.to_latlon(x, y))) for x, y in corners]


def _limits() -> AutopilotLimits:
    """A 1.2 km operating area with a 40 m no-fly square 80 m north of home, across the
    way to a drop 160 m north."""
    features = [
        ("operating-area", _ring(-600, -600, 600, 600), {}),
        ("no-fly", _ring(-20, 60, 20, 100), {"name": "school"}),
    ]
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
        airspace_from_geojson(doc),
        HOME,
        PROFILES["easa-open"],
        cruise_alt_m=10,
        rally_points=[FRAME.to_latlon(-200, 0)],
    )


def test_limits_are_uploaded_read_back_and_a_breach_returns_home() -> None:
    limits = _limits()
    with (
        VehicleServer(DEFAULT_HOME, speedup=20.0, port=0, params={"OA_TYPE": 0}) as server,
        Vehicle.connect(f"tcp:127.0.0.1:{server.port}", heartbeat_interval_s=HEARTBEAT_S) as v,
    ):
        upload_limits(v, limits)
        assert v.download_fence() == limits.fence
        assert [(p.position, p.alt_m) for p in v.download_rally()] == [
            (p.position, p.alt_m) for p in limits.rally
        ]
        for name, value in limits.params.items():
            assert v.get_param(name) == pytest.approx(value)
        arm_guided(v)
        v.takeoff(10)
        v.wait_until(lambda s: s.position is not None and s.position.alt_rel_m > 9, 60, "10 m")
        with pytest.raises(CommandError, match="FAILED"):
            v.goto(*offset(*HOME, 80, 0), 10)  # a target inside the zone is refused
        started = time.time()
        v.goto(*offset(*HOME, 160, 0), 10)  # beyond it: the way there is a breach
        v.wait_until(lambda s: s.mode == "RTL", 60, "RTL after the polygon breach")
        assert "Polygon fence breached" in [t.text for t in v.tracker.recent_texts(started)]
        v.wait_until(lambda s: not s.armed, 120, "landed and disarmed")
        state = v.state
        assert state.position is not None
        lat, lon = state.position.lat, state.position.lon
        x, y = FRAME.to_xy(lat, lon)
        assert math.hypot(x, y) < 60  # home (or the depot rally point), not beyond the zone


def test_what_the_autopilot_does_not_hold_refuses_the_flight(
    builtin_autopilot: Autopilot,
) -> None:
    good = _limits()
    area = good.fence.polygons[0]
    broken = dataclasses.replace(
        good,
        fence=dataclasses.replace(good.fence, polygons=(FencePolygon(area.vertices[:2], True),)),
        params={**good.params, "FENCE_TYPE": 5.5, "NO_SUCH_PARAM": 1.0},
    )
    with Vehicle.connect(builtin_autopilot.connection, heartbeat_interval_s=HEARTBEAT_S) as v:
        upload_limits(v, good)
        with pytest.raises(LimitsRefused) as caught:
            upload_limits(v, broken)
        reasons = caught.value.reasons
        assert any(r.startswith("fence:") and "2 vertices" in r for r in reasons), reasons
        assert any(r.startswith("FENCE_TYPE: not set to 5.5") for r in reasons), reasons
        assert any(r.startswith("NO_SUCH_PARAM: not set to 1") for r in reasons), reasons
        assert v.download_fence() == good.fence  # the old fence stays
