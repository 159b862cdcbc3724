"""The preflight's reading of the autopilot's parameters, and what ships: the parameter files
in firmware_bridge/autopilot/params pass it for every drop the default configuration allows,
and each check that fails names the parameter and the value it needs. Arming refusals are
sorted with ArduPilot's own texts (AP_Arming.cpp, AP_Arming_Copter.cpp, AP_BattMonitor)."""

from __future__ import annotations

from pathlib import Path

import pytest

from companion.config import Config
from companion.geo import offset
from companion.mission.plan import MissionPlan, delivery_plan
from companion.mission.preflight import (
    arming_refusal_is_transient,
    check_autopilot,
    speed_notes,
)

PARAMS = Path(__file__).resolve().parents[1] / "firmware_bridge" / "autopilot" / "params"
HOME = (-35.363261, 149.165230)
#: What ArduCopter holds before any file is loaded, for the parameters the checks read.
STOCK = {"FENCE_ENABLE": 0, "FENCE_TYPE": 7, "FENCE_ALT_MAX": 100, "FENCE_RADIUS": 300,
         "FENCE_MARGIN": 2, "FENCE_ACTION": 1, "RTL_ALT": 1500, "BATT_FS_LOW_ACT": 0,
         "BATT_FS_CRT_ACT": 0, "BATT_LOW_VOLT": 10.5, "BATT_LOW_MAH": 0, "BATT_CRT_VOLT": 0,
         "BATT_CRT_MAH": 0, "GRIP_ENABLE": 0, "GRIP_TYPE": 0, "SCR_ENABLE": 0,
         "WPNAV_SPEED": 1000, "RTL_SPEED": 0, "LAND_SPEED": 50}  # fmt: skip


def parm(*names: str) -> dict[str, float]:
    """ArduCopter's stock values, then the named files in order (ArduPilot's .parm format:
    NAME VALUE or NAME,VALUE, # comments), then the table the watchdog script adds."""
    values: dict[str, float] = dict(STOCK)
    for name in names:
        for line in (PARAMS / name).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                key, value = line.replace(",", " ").split()
                values[key] = float(value)
    if values.get("SCR_ENABLE") == 1:
        values["SCW_ENABLE"] = 1.0  # companion_watchdog.lua's own parameter table
    return values


def default_plan(distance_m: float, bearing: float = 45.0) -> MissionPlan:
    config = Config()
    return delivery_plan("p-1", offset(*HOME, distance_m, bearing), config.flight)


@pytest.mark.parametrize("airframe", ["airframes/sitl-copter.parm", "airframes/quad-4s-5000.parm"])
@pytest.mark.parametrize("distance_m", [50.0, 500.0, Config().delivery.max_range_m])
def test_the_shipped_parameters_allow_every_drop_the_configuration_allows(airframe, distance_m):
    params = parm("delivery-copter.parm", airframe)
    assert check_autopilot(params, default_plan(distance_m), HOME, 100) == []


def test_the_shipped_fence_holds_the_configured_ceiling():
    params = parm("delivery-copter.parm", "airframes/sitl-copter.parm")
    config = Config()
    assert params["FENCE_ALT_MAX"] == config.flight.altitude_ceiling_m
    assert params["RTL_ALT"] / 100 <= config.flight.altitude_ceiling_m
    assert params["FENCE_RADIUS"] >= config.delivery.max_range_m + params["FENCE_MARGIN"]


def test_stock_arducopter_is_refused_for_every_reason_with_the_parameter_named():
    findings = check_autopilot(parm(), default_plan(500.0), HOME, 100)
    assert [f.param for f in findings] == [
        "FENCE_ENABLE", "BATT_FS_LOW_ACT", "BATT_FS_CRT_ACT", "SCW_ENABLE", "GRIP_ENABLE",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "param", "needs"),
    [
        ({"FENCE_RADIUS": 300}, "FENCE_RADIUS", "set FENCE_RADIUS to at least 505"),
        ({"FENCE_ALT_MAX": 150}, "FENCE_ALT_MAX", "set FENCE_ALT_MAX to 120 or less"),
        ({"FENCE_ALT_MAX": 32}, "FENCE_ALT_MAX", "needs FENCE_ALT_MAX of at least 35"),
        ({"FENCE_TYPE": 6}, "FENCE_TYPE", "set FENCE_TYPE 7"),
        ({"RTL_ALT": 15000}, "RTL_ALT", "set RTL_ALT to 12000 or less"),
        ({"BATT_LOW_VOLT": 0, "BATT_LOW_MAH": 0}, "BATT_LOW_VOLT", "never triggers"),
        ({"GRIP_TYPE": 0}, "GRIP_TYPE", "set GRIP_TYPE 1"),
        ({"SERVO8_FUNCTION": 0}, "SERVO8_FUNCTION", "SERVOn_FUNCTION 28"),
        ({"SCW_ENABLE": 0}, "SCW_ENABLE", "set SCW_ENABLE 1"),
    ],
)
def test_each_failing_check_names_the_parameter_and_the_value_it_needs(change, param, needs):
    params = {**parm("delivery-copter.parm", "airframes/sitl-copter.parm"), **change}
    findings = check_autopilot(params, default_plan(500.0), HOME, 100)
    assert [f.param for f in findings] == [param]
    assert needs in str(findings[0])


def test_a_gripper_on_another_output_is_found():
    params = parm("delivery-copter.parm", "airframes/sitl-copter.parm")
    params.update({"SERVO8_FUNCTION": 0, "SERVO10_FUNCTION": 28})
    assert check_autopilot(params, default_plan(300.0), HOME, 100) == []


def test_an_unknown_or_low_battery_is_refused():
    params = parm("delivery-copter.parm", "airframes/sitl-copter.parm")
    assert "no battery level" in str(check_autopilot(params, default_plan(100), HOME, None)[0])
    assert "below the 25%" in str(check_autopilot(params, default_plan(100), HOME, 24)[0])


def test_speeds_the_autopilot_flies_differently_are_noted_not_refused():
    params = parm("delivery-copter.parm", "airframes/sitl-copter.parm")
    assert speed_notes(params, default_plan(300.0)) == []
    params.update({"RTL_SPEED": 500, "LAND_SPEED": 70})
    notes = speed_notes(params, default_plan(300.0))
    assert notes == [
        "the return (RTL) flies at RTL_SPEED 5 m/s, not the cruise speed of 10 m/s "
        "(flight.cruise_speed_mps)",
        "the autopilot lands at LAND_SPEED 0.7 m/s, not 0.5 m/s (flight.land_speed_mps)",
    ]


@pytest.mark.parametrize(
    "texts",
    [
        ("PreArm: Need Position Estimate",),
        ("Arm: AHRS: waiting for home",),
        ("PreArm: Gyros inconsistent", "PreArm: Accels inconsistent"),
        ("PreArm: GPS 1: Bad fix",),
        ("PreArm: EKF attitude is bad",),
        ("PreArm: Fence enabled, need position estimate",),
        ("PreArm: High GPS HDOP",),
    ],
)
def test_start_up_refusals_are_waited_out(texts):
    assert arming_refusal_is_transient(texts)


@pytest.mark.parametrize(
    "texts",
    [
        ("Arm: Battery 1 low voltage failsafe",),
        ("PreArm: Battery 1 below minimum arming voltage",),
        ("PreArm: Need Position Estimate", "PreArm: Hardware safety switch"),
        ("PreArm: RC not calibrated",),
        ("PreArm: 3D Accel calibration needed",),
        ("Arm: GUIDED mode not armable",),
        (),
    ],
)
def test_refusals_that_waiting_cannot_fix_are_final(texts):
    assert not arming_refusal_is_transient(texts)
