"""Preflight: the autopilot's own limits against the plan, before the motors spin.

The autopilot stays in charge of flight safety (its fences, failsafes and gripper act even if
the companion dies), so a plan it would stop or could not fly must be refused on the ground,
not discovered in the air: a drop beyond FENCE_RADIUS is a GUIDED target ArduCopter refuses
(the drone would hover over home until its battery ran low); a ceiling above the legal limit is
one the autopilot would not hold; a gripper that is not configured answers MAV_CMD_DO_GRIPPER
with FAILED over the recipient's garden. Each check names the parameter, its value and the
value it needs.

Before the parameters are read, the plan's airspace limits (fence, rally points, fence
parameters) are uploaded and read back (`UploadLimits`), so the parameters judged are the
ones the flight will have. With no-fly zones in the fence the autopilot must also plan its own
returns around them (OA_TYPE Dijkstra): the watchdog's or a failsafe's RTL flies home with no
companion, and a straight line home may cross a zone.

The rest of the flight's readiness is checked here too, each with its reason: the battery
against the planner's energy price plus reserve (`EnergyBudget`), the GPS quality of the
autopilot's receiver and of the companion's own, the uplink, and the wind
(`check_receivers`, `check_ground`; what a plan demands is its `PreflightChecks`).

`check_autopilot` is a pure function of the parameters, the plan and home; `arming_refusal_is_
transient` sorts the autopilot's pre-arm texts into those that waiting fixes (sensors settling,
GPS, EKF) and those it does not (a low battery, a fence, a missing gripper).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from companion.mission.inputs import GroundStatus
from companion.mission.plan import MissionPlan, PreflightChecks
from firmware_bridge.state import GpsInfo

#: FENCE_TYPE bits (AC_Fence): 1 maximum altitude, 2 circle around home, 4 polygons.
FENCE_ALT_MAX_BIT = 1
FENCE_CIRCLE_BIT = 2
#: SERVOn_FUNCTION of a gripper output (SRV_Channel::k_gripper).
SERVO_FUNCTION_GRIPPER = 28
#: OA_TYPE values that plan paths around the fence (AP_OAPathPlanner: 2 Dijkstra, 3 Dijkstra
#: with BendyRuler).
OA_TYPES_AROUND_FENCE = (2, 3)


@dataclass(frozen=True)
class Finding:
    """One preflight check that failed: the parameter, what it is, what it must be."""

    param: str
    problem: str

    def __str__(self) -> str:
        return self.problem


def check_autopilot(
    params: Mapping[str, float],
    plan: MissionPlan,
    home: tuple[float, float],
    battery_pct: int | None,
) -> list[Finding]:
    """Every reason the autopilot (with these parameters, at this battery level) would stop
    or could not fly `plan` from `home`; empty when it can."""
    findings: list[Finding] = []
    for check in (_fence, _avoidance, _rtl, _battery_failsafes, _watchdog, _gripper):
        findings += check(params, plan, home)
    findings += _battery_level(battery_pct, plan)
    findings += _battery_energy(params, battery_pct, plan)
    return findings


def _avoidance(
    params: Mapping[str, float], plan: MissionPlan, home: tuple[float, float]
) -> list[Finding]:
    limits = plan.autopilot_limits
    if limits is None:
        return []
    zones = [p for p in limits.fence.polygons if not p.inclusion]
    zones += [c for c in limits.fence.circles if not c.inclusion]
    if not zones:
        return []
    oa_type = _get(params, "OA_TYPE")
    if oa_type is None:
        return [_missing("OA_TYPE", "the autopilot must plan its returns around the zones")]
    if int(oa_type) not in OA_TYPES_AROUND_FENCE:
        return [
            Finding(
                "OA_TYPE",
                f"OA_TYPE is {oa_type:g}: without the companion the autopilot's RTL would fly "
                f"straight home across {len(zones)} no-fly zone(s); set OA_TYPE 2 (Dijkstra, "
                "delivery-copter.parm) and reboot the flight controller",
            )
        ]
    return []


def _battery_energy(
    params: Mapping[str, float], battery_pct: int | None, plan: MissionPlan
) -> list[Finding]:
    budget = plan.energy
    if budget is None or battery_pct is None:
        return []  # no price to check, or no level at all (_battery_level refuses that)
    capacity = _get(params, "BATT_CAPACITY")
    if capacity is None or capacity <= 0:
        return [
            Finding(
                "BATT_CAPACITY",
                f"BATT_CAPACITY is {'missing' if capacity is None else f'{capacity:g}'}: the "
                f"plan's {budget.charge_mah:.0f} mAh cannot be checked against the battery",
            )
        ]
    findings = []
    if capacity < budget.capacity_mah:
        findings.append(
            Finding(
                "BATT_CAPACITY",
                f"BATT_CAPACITY is {capacity:g} mAh, smaller than the {budget.capacity_mah:g} "
                "mAh battery the plan was priced for: plan again for this battery",
            )
        )
    holds = capacity * battery_pct / 100.0
    needed = budget.charge_mah + budget.reserve_mah
    if holds < needed:
        findings.append(
            Finding(
                "battery",
                f"battery {battery_pct}% holds about {holds:.0f} mAh of BATT_CAPACITY "
                f"{capacity:g}; the plan draws {budget.charge_mah:.0f} mAh and must land with "
                f"{budget.reserve_mah:.0f} mAh in reserve: {needed:.0f} mAh needed",
            )
        )
    return findings


def check_receivers(
    autopilot: GpsInfo, status: GroundStatus | None, checks: PreflightChecks
) -> list[Finding]:
    """The GPS receivers against the plan's minimums: the autopilot's always, the
    companion's own when the plan demands it (a missing, stale or poor fix refuses)."""
    findings = _fix_quality(
        "autopilot GPS",
        autopilot.fix_type >= 3,
        autopilot.satellites,
        autopilot.hdop,
        checks,
    )
    if not checks.companion_gps:
        return findings
    gps = None if status is None else status.gps
    if gps is None:
        return [*findings, Finding("companion GPS", "companion GPS: no receiver reported")]
    if gps.age_s is None or gps.age_s > checks.max_fix_age_s:
        age = "no fix yet" if gps.age_s is None else f"last fix {gps.age_s:.1f} s old"
        findings.append(
            Finding(
                "companion GPS",
                f"companion GPS ({gps.status}): {age}, more than {checks.max_fix_age_s:g} s",
            )
        )
        return findings
    return findings + _fix_quality(
        f"companion GPS ({gps.status})", gps.fix_3d, gps.satellites, gps.hdop, checks
    )


def _fix_quality(
    who: str, fix_3d: bool, satellites: int | None, hdop: float | None, checks: PreflightChecks
) -> list[Finding]:
    problems = []
    if not fix_3d:
        problems.append("no 3-D fix")
    if satellites is None or satellites < checks.min_satellites:
        problems.append(
            f"{'unknown' if satellites is None else satellites} satellites, "
            f"{checks.min_satellites} needed"
        )
    if hdop is None or hdop > checks.max_hdop:
        problems.append(
            f"HDOP {'unknown' if hdop is None else f'{hdop:.2f}'} above {checks.max_hdop:g}"
        )
    return [Finding(who, f"{who}: " + ", ".join(problems))] if problems else []


def check_ground(
    status: GroundStatus | None, checks: PreflightChecks, drops: Sequence[str] = ()
) -> list[Finding]:
    """The uplink, the wind and the `drops`' signed orders against what the plan demands
    (missing counts as failing)."""
    findings = []
    if checks.signed_orders:
        known = {} if status is None else {o.order_id: o for o in status.orders}
        for drop in drops:
            order = known.get(drop)
            if order is None:
                findings.append(Finding("order", f"drop {drop!r}: no verified signed order"))
            elif not order.valid:
                findings.append(Finding("order", f"drop {drop!r}: order {order.reason}"))
    if checks.uplink:
        uplink = None if status is None else status.uplink
        if uplink is None:
            findings.append(Finding("uplink", "telemetry uplink: none reported"))
        elif not (uplink.registered and uplink.flowing):
            what = "not registered on a network" if not uplink.registered else "not flowing"
            detail = f" ({uplink.detail})" if uplink.detail else ""
            findings.append(Finding("uplink", f"telemetry uplink: modem {what}{detail}"))
    limit = checks.max_wind_mps
    if limit is not None:
        wind = None if status is None else status.wind_mps
        source = "" if status is None or not status.wind_source else f" ({status.wind_source})"
        if wind is None:
            findings.append(
                Finding("wind", f"wind: no report, and the limit is {limit:g} m/s{source}")
            )
        elif not wind <= limit:  # NaN fails too
            findings.append(
                Finding(
                    "wind",
                    f"wind {wind:g} m/s{source} is above the {limit:g} m/s limit "
                    "(preflight.max_wind_mps)",
                )
            )
    return findings


def _get(params: Mapping[str, float], name: str) -> float | None:
    value = params.get(name)
    return None if value is None else float(value)


def _missing(name: str, what: str) -> Finding:
    return Finding(name, f"{name} is missing from the autopilot's parameters ({what})")


def _fence(
    params: Mapping[str, float], plan: MissionPlan, home: tuple[float, float]
) -> list[Finding]:
    findings: list[Finding] = []
    ceiling = plan.limits.altitude_ceiling_m
    enable = _get(params, "FENCE_ENABLE")
    if enable is None:
        return [_missing("FENCE_ENABLE", "a geofence is needed to hold the ceiling")]
    if enable != 1:
        return [
            Finding(
                "FENCE_ENABLE",
                f"FENCE_ENABLE is {enable:g}: the autopilot enforces no altitude ceiling or "
                "geofence; set FENCE_ENABLE 1",
            )
        ]
    types = int(_get(params, "FENCE_TYPE") or 0)
    margin = _get(params, "FENCE_MARGIN") or 0.0
    alt_max = _get(params, "FENCE_ALT_MAX")
    if not types & FENCE_ALT_MAX_BIT or alt_max is None:
        findings.append(
            Finding(
                "FENCE_TYPE",
                f"FENCE_TYPE {types} has no altitude fence (bit {FENCE_ALT_MAX_BIT}): the "
                f"autopilot would not hold the {ceiling:g} m ceiling; set FENCE_TYPE "
                f"{types | FENCE_ALT_MAX_BIT}",
            )
        )
    else:
        if alt_max > ceiling:
            findings.append(
                Finding(
                    "FENCE_ALT_MAX",
                    f"FENCE_ALT_MAX is {alt_max:g} m, above the legal ceiling of {ceiling:g} m "
                    f"(flight.altitude_ceiling_m): set FENCE_ALT_MAX to {ceiling:g} or less",
                )
            )
        highest = plan.highest_m()
        if highest + margin > alt_max:
            findings.append(
                Finding(
                    "FENCE_ALT_MAX",
                    f"FENCE_ALT_MAX is {alt_max:g} m: the plan flies at {highest:g} m, which "
                    f"with FENCE_MARGIN {margin:g} m needs FENCE_ALT_MAX of at least "
                    f"{highest + margin:g}",
                )
            )
    if types & FENCE_CIRCLE_BIT:
        radius = _get(params, "FENCE_RADIUS")
        reach = plan.farthest_from(*home)
        if radius is None:
            findings.append(_missing("FENCE_RADIUS", "FENCE_TYPE has the circle fence"))
        elif reach + margin > radius:
            findings.append(
                Finding(
                    "FENCE_RADIUS",
                    f"FENCE_RADIUS is {radius:g} m but the plan goes {reach:.0f} m from home: "
                    "the autopilot would refuse the target; set FENCE_RADIUS to at least "
                    f"{_ceil(reach + margin)} (distance + FENCE_MARGIN {margin:g} m)",
                )
            )
    return findings


def _rtl(
    params: Mapping[str, float], plan: MissionPlan, home: tuple[float, float]
) -> list[Finding]:
    ceiling = plan.limits.altitude_ceiling_m
    rtl_cm = _get(params, "RTL_ALT")
    if rtl_cm is None:
        return [_missing("RTL_ALT", "the return altitude")]
    if rtl_cm / 100.0 > ceiling:
        return [
            Finding(
                "RTL_ALT",
                f"RTL_ALT is {rtl_cm:g} cm ({rtl_cm / 100:g} m), above the legal ceiling of "
                f"{ceiling:g} m: set RTL_ALT to {ceiling * 100:g} or less",
            )
        ]
    return []


def _battery_failsafes(
    params: Mapping[str, float], plan: MissionPlan, home: tuple[float, float]
) -> list[Finding]:
    findings: list[Finding] = []
    for level, action_name, volt_name, mah_name, wanted in (
        ("low", "BATT_FS_LOW_ACT", "BATT_LOW_VOLT", "BATT_LOW_MAH", "2 (RTL)"),
        ("critical", "BATT_FS_CRT_ACT", "BATT_CRT_VOLT", "BATT_CRT_MAH", "1 (LAND)"),
    ):
        action = _get(params, action_name)
        if not action:
            findings.append(
                Finding(
                    action_name,
                    f"{action_name} is {0 if action is None else action:g}: the autopilot "
                    f"takes no action on a {level} battery; set {action_name} {wanted}",
                )
            )
        elif not (_get(params, volt_name) or _get(params, mah_name)):
            findings.append(
                Finding(
                    volt_name,
                    f"{volt_name} and {mah_name} are both 0: the {level}-battery failsafe "
                    f"never triggers; set the airframe's thresholds (airframes/*.parm)",
                )
            )
    return findings


def _watchdog(
    params: Mapping[str, float], plan: MissionPlan, home: tuple[float, float]
) -> list[Finding]:
    if _get(params, "SCW_ENABLE") is None:
        return [
            Finding(
                "SCW_ENABLE",
                "the companion watchdog is not running on the flight controller (no SCW_ENABLE "
                "parameter): copy companion_watchdog.lua to its APM/scripts/ folder, set "
                "SCR_ENABLE 1 and reboot it",
            )
        ]
    if _get(params, "SCW_ENABLE") != 1:
        return [
            Finding(
                "SCW_ENABLE",
                "SCW_ENABLE is 0: nothing would return the drone if the companion died; set "
                "SCW_ENABLE 1",
            )
        ]
    return []


def _gripper(
    params: Mapping[str, float], plan: MissionPlan, home: tuple[float, float]
) -> list[Finding]:
    if not plan.drops():
        return []
    if _get(params, "GRIP_ENABLE") != 1:
        return [
            Finding(
                "GRIP_ENABLE",
                "GRIP_ENABLE is not 1: MAV_CMD_DO_GRIPPER would fail at the drop; set "
                "GRIP_ENABLE 1, GRIP_TYPE 1 and a SERVOn_FUNCTION 28, then reboot",
            )
        ]
    if not _get(params, "GRIP_TYPE"):
        return [
            Finding(
                "GRIP_TYPE",
                "GRIP_TYPE is 0 (none): the gripper would not move; set GRIP_TYPE 1 (servo) "
                "or 2 (EPM) and reboot",
            )
        ]
    outputs = [
        name
        for name, value in params.items()
        if re.fullmatch(r"SERVO\d+_FUNCTION", name) and value == SERVO_FUNCTION_GRIPPER
    ]
    if not outputs:
        return [
            Finding(
                "SERVO8_FUNCTION",
                "no servo output drives the gripper: set SERVOn_FUNCTION 28 on its output "
                "(SERVO8_FUNCTION 28 in delivery-copter.parm)",
            )
        ]
    return []


def _battery_level(battery_pct: int | None, plan: MissionPlan) -> list[Finding]:
    needed = plan.limits.min_battery_pct
    if battery_pct is None:
        return [
            Finding(
                "BATT_MONITOR",
                "the autopilot reports no battery level (BATT_MONITOR): cannot tell whether "
                "the flight fits the battery",
            )
        ]
    if battery_pct < needed:
        return [
            Finding(
                "battery",
                f"battery {battery_pct}% is below the {needed:g}% needed to start "
                "(flight.min_battery_pct)",
            )
        ]
    return []


def speed_notes(params: Mapping[str, float], plan: MissionPlan) -> list[str]:
    """Where the autopilot's own speeds differ from the plan's, without stopping the flight:
    the legs' speeds are set by command, but the autopilot returns (RTL) at RTL_SPEED, or
    WPNAV_SPEED when that is 0, and lands at LAND_SPEED; the report's ideal times assume the
    plan's."""
    notes = []
    speeds = plan.speeds
    rtl = _get(params, "RTL_SPEED") or _get(params, "WPNAV_SPEED")
    if rtl is not None and abs(rtl / 100.0 - speeds.cruise_mps) > 0.05:
        name = "RTL_SPEED" if _get(params, "RTL_SPEED") else "WPNAV_SPEED"
        notes.append(
            f"the return (RTL) flies at {name} {rtl / 100:g} m/s, not the cruise speed of "
            f"{speeds.cruise_mps:g} m/s (flight.cruise_speed_mps)"
        )
    land = _get(params, "LAND_SPEED")
    if land is not None and abs(land / 100.0 - speeds.land_mps) > 0.05:
        notes.append(
            f"the autopilot lands at LAND_SPEED {land / 100:g} m/s, not {speeds.land_mps:g} m/s "
            "(flight.land_speed_mps)"
        )
    return notes


def _ceil(value: float) -> int:
    return int(-(-value // 1))


#: Pre-arm failures that go away by themselves while the vehicle starts up: sensors settling,
#: GPS and EKF converging, home being set (ArduPilot's AP_Arming and AP_AHRS texts).
_TRANSIENT = re.compile(
    r"waiting|settling|inconsistent|position estimate|\bGPS\b|\bEKF|\bAHRS\b|HDOP|not healthy"
    r"|initiali[sz]",
    re.IGNORECASE,
)
_PREFIX = re.compile(r"^(PreArm|Arm):\s*")


def arming_reason(text: str) -> str:
    """An arming refusal text without ArduPilot's "PreArm: " / "Arm: " prefix."""
    return _PREFIX.sub("", text).strip()


def arming_refusal_is_transient(texts: tuple[str, ...]) -> bool:
    """Whether waiting can fix an arming refusal: every reason the autopilot gave is a start-up
    condition. A refusal with no reason, or with one reason that waiting does not fix (a low
    battery, a fence, a gripper, calibration), is final."""
    reasons = [arming_reason(t) for t in texts if arming_reason(t)]
    return bool(reasons) and all(_TRANSIENT.search(r) for r in reasons)
