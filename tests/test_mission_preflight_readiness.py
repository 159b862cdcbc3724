"""The preflight's readiness checks in the mission core: the airspace limits uploaded and
read back before the parameters are judged, the autopilot's own path planning around the
zones, the battery against the planner's energy price, both GPS receivers, the uplink and
the wind. Every refusal happens on the ground, names its reason, and nothing is armed."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest

from companion.config import FlightConfig
from companion.geo import offset
from companion.mission.actions import Arm, CheckSystems, ReadParams, UploadLimits
from companion.mission.core import MissionCore
from companion.mission.inputs import (
    GroundStatus,
    LimitsUploaded,
    ReceiverStatus,
    SystemsChecked,
    UplinkStatus,
)
from companion.mission.plan import EnergyBudget, MissionPlan, PreflightChecks, delivery_plan
from firmware_bridge.fence import AutopilotLimits, FenceDefinition, FencePolygon, RallyPoint
from firmware_bridge.state import GpsInfo
from tests.mission_world import HOME, World

FLIGHT = FlightConfig()


def _square(north: float, east: float, half: float) -> list[tuple[float, float]]:
    return [
        offset(*HOME, math.hypot(n, e), _bearing(n, e))
        for n, e in (
            (north - half, east - half),
            (north - half, east + half),
            (north + half, east + half),
            (north + half, east - half),
        )
    ]


def _bearing(n: float, e: float) -> float:
    return math.degrees(math.atan2(e, n)) % 360.0


LIMITS = AutopilotLimits(
    fence=FenceDefinition(
        polygons=(
            FencePolygon.from_degrees(_square(0, 0, 600), inclusion=True),
            FencePolygon.from_degrees(_square(80, 200, 20), inclusion=False),
        ),
        return_point=(round(HOME[0] * 1e7), round(HOME[1] * 1e7)),
    ),
    rally=(RallyPoint.from_degrees(*HOME, 30),),
    params={"FENCE_ENABLE": 1, "FENCE_TYPE": 5, "FENCE_ALT_MAX": 120, "FENCE_ACTION": 1},
    notes=(),
)
GOOD_GROUND = GroundStatus(
    gps=ReceiverStatus(True, 9, 0.9, 0.2, "ok"),
    uplink=UplinkStatus(True, True),
    wind_mps=3.0,
    wind_source="simulated",
)
ALL_CHECKS = PreflightChecks(companion_gps=True, uplink=True, max_wind_mps=8.0)


def plan(**changes: object) -> MissionPlan:
    base = delivery_plan("m1", offset(*HOME, 300.0, 45.0), FLIGHT)
    return dataclasses.replace(base, **changes)


def fly(world: World, mission: MissionPlan) -> MissionCore:
    core = MissionCore(mission)
    world.run(core)
    return core


def abort_time(world: World) -> float:
    return next(
        t for t, a in world.actions if type(a).__name__ == "Transition" and a.event == "abort"
    )


def commands(world: World) -> list[object]:
    return [a for _, a in world.actions if type(a).__name__ not in ("Transition", "Finish")]


def test_limits_are_uploaded_before_the_parameters_are_read_and_the_delivery_flies():
    world = World()
    core = fly(world, plan(autopilot_limits=LIMITS))
    assert core.outcome == "delivered"
    kinds = [type(c) for c in commands(world)]
    assert kinds.index(UploadLimits) < kinds.index(ReadParams) < kinds.index(Arm)
    uploaded = next(t for t in world.transitions() if t.event == "limits-uploaded")
    assert uploaded.detail["exclusion_polygons"] == 1
    assert uploaded.detail["rally_points"] == 1
    assert world.limits_held is LIMITS


def test_limits_the_autopilot_does_not_hold_refuse_on_the_ground_naming_them():
    world = World(
        answers={
            UploadLimits: lambda a: LimitsUploaded(
                a.token, ("fence: item 3: x sent -353, read -354", "FENCE_TYPE: set to 5, holds 7")
            )
        }
    )
    core = fly(world, plan(autopilot_limits=LIMITS))
    assert core.outcome is not None
    assert core.outcome.startswith("preflight refused: the autopilot does not hold the airspace")
    assert "item 3" in core.outcome and "FENCE_TYPE: set to 5, holds 7" in core.outcome
    assert Arm not in [type(c) for c in commands(world)]
    assert ReadParams not in [type(c) for c in commands(world)]


@pytest.mark.parametrize("oa_type", [0, 1, None])
def test_zones_without_the_autopilots_own_path_planning_are_refused(oa_type):
    world = World()
    if oa_type is None:
        world.params.pop("OA_TYPE")
    else:
        world.params["OA_TYPE"] = oa_type
    core = fly(world, plan(autopilot_limits=LIMITS))
    assert "OA_TYPE" in (core.outcome or "")
    if oa_type is not None:
        assert "straight home across 1 no-fly zone(s)" in (core.outcome or "")
    assert Arm not in [type(c) for c in commands(world)]


def test_without_zones_the_path_planner_is_not_demanded():
    world = World()
    world.params["OA_TYPE"] = 0
    assert fly(world, plan()).outcome == "delivered"


@pytest.mark.parametrize(
    ("pct", "capacity", "reason"),
    [
        (60, 3300, "battery 60% holds about 1980 mAh of BATT_CAPACITY 3300"),
        (100, 2200, "BATT_CAPACITY is 2200 mAh, smaller than the 3300 mAh battery"),
        (100, None, "BATT_CAPACITY is missing"),
    ],
)
def test_a_battery_that_cannot_pay_the_plans_price_with_reserve_is_refused(pct, capacity, reason):
    world = World(battery_pct=pct)
    if capacity is None:
        world.params.pop("BATT_CAPACITY")
    else:
        world.params["BATT_CAPACITY"] = capacity
    budget = EnergyBudget(charge_mah=1800.0, reserve_mah=660.0, capacity_mah=3300.0)
    core = fly(world, plan(energy=budget))
    assert reason in (core.outcome or "")
    assert Arm not in [type(c) for c in commands(world)]


def test_a_battery_that_pays_the_price_with_reserve_flies():
    world = World(battery_pct=80)  # 2640 mAh >= 1800 + 660
    budget = EnergyBudget(charge_mah=1800.0, reserve_mah=660.0, capacity_mah=3300.0)
    assert fly(world, plan(energy=budget)).outcome == "delivered"


def test_every_demanded_system_in_order_flies():
    world = World(ground=GOOD_GROUND)
    core = fly(world, plan(checks=ALL_CHECKS))
    assert core.outcome == "delivered"
    assert CheckSystems in [type(c) for c in commands(world)]
    ready = next(t for t in world.transitions() if t.event == "ready")
    assert ready.detail["findings"] == []
    checked = ready
    assert checked.detail["companion_gps"]["satellites"] == 9
    assert checked.detail["uplink"] == {"registered": True, "flowing": True}
    assert checked.detail["wind_mps"] == 3.0


@pytest.mark.parametrize(
    ("ground", "reason"),
    [
        (None, "companion systems: nothing to report"),
        (
            dataclasses.replace(GOOD_GROUND, gps=ReceiverStatus(False, 3, 5.0, 0.2, "no-fix")),
            "companion GPS (no-fix): no 3-D fix, 3 satellites, 6 needed, HDOP 5.00 above 2",
        ),
        (
            dataclasses.replace(GOOD_GROUND, gps=ReceiverStatus(True, 9, 0.9, 7.5, "silent")),
            "companion GPS (silent): last fix 7.5 s old, more than 2 s",
        ),
        (dataclasses.replace(GOOD_GROUND, gps=None), "companion GPS: no receiver reported"),
        (
            dataclasses.replace(GOOD_GROUND, uplink=UplinkStatus(False, False, "searching")),
            "telemetry uplink: modem not registered on a network (searching)",
        ),
        (
            dataclasses.replace(GOOD_GROUND, uplink=UplinkStatus(True, False, "no broker")),
            "telemetry uplink: modem not flowing (no broker)",
        ),
        (
            dataclasses.replace(GOOD_GROUND, wind_mps=11.0),
            "wind 11 m/s (simulated) is above the 8 m/s limit",
        ),
        (
            dataclasses.replace(GOOD_GROUND, wind_mps=float("nan")),
            "wind nan m/s (simulated) is above the 8 m/s limit",
        ),
        (dataclasses.replace(GOOD_GROUND, wind_mps=None), "wind: no report"),
    ],
)
def test_a_missing_stale_or_failing_system_is_refused_on_the_ground(ground, reason):
    world = World(ground=ground)
    core = fly(world, plan(checks=ALL_CHECKS))
    assert core.outcome is not None
    assert core.outcome.startswith("timed out after 120 s waiting for readiness: ")
    assert reason in core.outcome
    assert Arm not in [type(c) for c in commands(world)]


def test_systems_that_come_up_later_are_waited_for_and_the_delivery_flies():
    searching = dataclasses.replace(GOOD_GROUND, uplink=UplinkStatus(False, False, "searching"))
    world = World(ground=searching)

    def registers(w: World, core: MissionCore) -> list:
        if w.t >= 15.0:
            w.ground = GOOD_GROUND
        return []

    world.hooks.append(registers)
    core = fly(world, plan(checks=ALL_CHECKS))
    assert core.outcome == "delivered"
    asked = [t for t, a in world.actions if isinstance(a, CheckSystems)]
    assert len(asked) >= 3 and all(b - a >= 2.0 - 1e-9 for a, b in itertools.pairwise(asked))
    events = [t.event for t in world.transitions() if t.event in ("not-ready", "ready")]
    assert events == ["not-ready", "ready"]
    arm_at = next(t for t, a in world.actions if isinstance(a, Arm))
    assert arm_at >= 15.0


def test_the_autopilots_receiver_is_always_checked():
    world = World()
    original = world.state

    def poor_gps():
        return dataclasses.replace(original(), gps=GpsInfo(fix_type=3, satellites=4, hdop=2.5))

    world.state = poor_gps  # type: ignore[method-assign]
    core = fly(world, plan())
    assert "autopilot GPS: 4 satellites, 6 needed, HDOP 2.50 above 2" in (core.outcome or "")
    assert Arm not in [type(c) for c in commands(world)]


def test_every_autopilot_finding_is_named_in_one_refusal_without_waiting():
    world = World(battery_pct=50, ground=GOOD_GROUND)
    world.params["OA_TYPE"] = 0
    world.params["GRIP_ENABLE"] = 0
    budget = EnergyBudget(charge_mah=1800.0, reserve_mah=660.0, capacity_mah=3300.0)
    core = fly(world, plan(autopilot_limits=LIMITS, energy=budget, checks=ALL_CHECKS))
    outcome = core.outcome or ""
    assert outcome.startswith("preflight refused: ")
    for reason in ("OA_TYPE is 0", "battery 50% holds about 1650 mAh", "GRIP_ENABLE"):
        assert reason in outcome
    refused_at = abort_time(world)
    assert refused_at < 5.0  # on the first reading, not after the preflight's timeout


def test_a_systems_answer_for_another_request_is_not_taken():
    """An answer whose token is not the preflight's own (a late one from an earlier request)
    must not stand in for the report the preflight asked for."""
    world = World(
        ground=GOOD_GROUND,
        answers={CheckSystems: lambda a: SystemsChecked(a.token + 100, GOOD_GROUND)},
    )
    core = fly(
        world,
        plan(checks=ALL_CHECKS, limits=dataclasses.replace(plan().limits, preflight_timeout_s=20)),
    )
    assert "the companion's systems report" in (core.outcome or "")
    assert Arm not in [type(c) for c in commands(world)]
