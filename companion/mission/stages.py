"""The steps a mission runs, each with a start and a verify, as ArduPilot's AP_Mission runs
its commands: `start` once (the commands to send), then `verify` on every event until it says
the step is done; it raises `Abort` with a reason when the step cannot be done. The core checks
the safety guards before every verify.

A plan's legs expand into these steps (`expand`): the take-off leg into preflight, arming and
take-off; a transit into one step per waypoint (the first sets the plan's speeds); a drop into the
descent, its hand-over steps and the climb; the return into RTL and the landing. Flight
commands are confirmed: a refused one aborts at once with the autopilot's answer, and a target
that is accepted but not flown to shows up as no progress within `Limits.no_progress_s`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from companion.geo import distance_m
from companion.mission.actions import (
    Arm,
    ChangeSpeed,
    CheckSystems,
    ReadParams,
    ReleaseParcel,
    Reposition,
    SetMode,
    SpeedType,
    Takeoff,
    UploadLimits,
)
from companion.mission.events import Phase
from companion.mission.handover import (
    MAX_WRONG_PINS,
    Clearance,
    input_record,
    judge_verdict,
    pin_record,
    release_refusal,
    verdict_figures,
)
from companion.mission.inputs import (
    CommandResult,
    FallbackPin,
    GroundStatus,
    LimitsUploaded,
    ParamsRead,
    RecipientVerdict,
    SystemsChecked,
)
from companion.mission.plan import (
    DropLeg,
    HandoverStep,
    LandLeg,
    Leg,
    MissionPlan,
    ReturnLeg,
    TakeoffLeg,
    TransitLeg,
    Waypoint,
)
from companion.mission.preflight import (
    Finding,
    arming_reason,
    arming_refusal_is_transient,
    check_autopilot,
    check_ground,
    check_receivers,
    speed_notes,
)
from companion.mission.progress import ProgressWatch
from firmware_bridge.dialect import mavlink
from firmware_bridge.state import VehicleState

#: How often (autopilot seconds) the preflight asks again for systems that were not ready.
SYSTEMS_RETRY_S = 2.0
#: Answers to a step's requests that are not flight commands.
Answer = ParamsRead | LimitsUploaded | SystemsChecked

if TYPE_CHECKING:
    from companion.mission.core import MissionCore

#: EKF flags that arming in GUIDED needs: an absolute horizontal position, now and predicted.
_EKF_POSITION = mavlink.EKF_POS_HORIZ_ABS | mavlink.EKF_PRED_POS_HORIZ_ABS
#: Seconds (autopilot) after a take-off is accepted before it must climb: ArduCopter's 2 s
#: arming delay and the spool-up (SITL: 4.2 s from the command to 0.5 m).
TAKEOFF_GRACE_S = 6.0
#: A commanded mode must show in the heartbeat within this time of its acknowledgement.
MODE_CONFIRM_S = 3.0
#: An accepted arm must show in the heartbeat within this time.
ARM_CONFIRM_S = 3.0
#: The final descent of RTL over home: within this distance, sinking at least this fast.
HOME_RADIUS_M = 2.0
FINAL_DESCENT_MPS = 0.2


class Abort(Exception):
    """Leave the plan: `reason` becomes the outcome; `action` is what makes the drone safe
    (RTL, LAND; NONE on the ground; PILOT: the pilot has it, the companion stops commanding;
    AUTOPILOT: a failsafe of the autopilot has it; FAILSAFE: the link is lost and the
    autopilot's own failsafes bring it home)."""

    def __init__(self, reason: str, action: str = "RTL") -> None:
        super().__init__(reason)
        self.reason = reason
        self.action = action


def refused(what: str, result: CommandResult) -> str:
    """How a refused command reads in an abort reason."""
    why = result.result if not result.detail else f"{result.result}: {result.detail}"
    return f"{what} refused ({why})"


def armable(state: VehicleState) -> bool:
    """What arming in GUIDED needs: a 3-D fix, a home, and the EKF's absolute position."""
    return (
        state.gps.fix_type >= 3
        and state.home is not None
        and state.position is not None
        and state.ekf_flags & _EKF_POSITION == _EKF_POSITION
    )


@dataclass
class Stage:
    """One step of a mission. Subclasses set the class attributes that describe it:
    `phase` it belongs to, `airborne` (the vehicle must be armed and flying), `cone_guarded`
    (the descent-cone camera holds it), `returning` (the autopilot is already bringing the
    drone home), `holdable` (an operator may hold it)."""

    phase = Phase.PREFLIGHT
    airborne = True
    cone_guarded = False
    returning = False
    holdable = False

    started_at: float | None = field(default=None, init=False)
    done: bool = field(default=False, init=False)

    @property
    def what(self) -> str:
        """What the step waits for, for a timeout's reason."""
        return type(self).__name__

    def timeout_s(self, core: MissionCore) -> float:
        """How long the step may take."""
        return core.plan.limits.phase_timeout_s

    def enter_detail(self) -> dict:
        """Detail of the phase's "enter" transition when this step opens its phase."""
        return {}

    def start(self, core: MissionCore) -> None:
        """Send what the step needs (once)."""

    def resume(self, core: MissionCore) -> None:
        """Go on after a hold: send the step's target again."""

    def on_result(self, core: MissionCore, result: CommandResult) -> None:
        """A command this step sent has been answered."""

    def on_answer(self, core: MissionCore, answer: Answer) -> None:
        """A non-command request of this step (parameters, limits, systems) is answered."""

    def verify(self, core: MissionCore) -> bool:
        """True once the step is done; raise Abort when it cannot be."""
        return True


# -- on the ground ---------------------------------------------------------------------------


@dataclass
class Preflight(Stage):
    """Wait until the vehicle can arm in GUIDED; put the plan's airspace limits on the
    autopilot and read them back (`UploadLimits`); then read its parameters and judge them
    with the battery (`preflight.check_autopilot`): any finding there refuses at once, every
    one named. Then the receivers, the uplink and the wind (`check_receivers`,
    `check_ground`; the companion's own systems are asked for with `CheckSystems` when the
    plan demands them): these come up by themselves after a boot, so they are asked again
    every `SYSTEMS_RETRY_S` until ready, and the preflight times out naming what is not."""

    phase = Phase.PREFLIGHT
    airborne = False
    _limits_token: int | None = field(default=None, init=False)
    _limits_done: bool = field(default=False, init=False)
    _params_token: int | None = field(default=None, init=False)
    _params: ParamsRead | None = field(default=None, init=False)
    _systems_token: int | None = field(default=None, init=False)
    _systems: SystemsChecked | None = field(default=None, init=False)
    _next_systems_at: float | None = field(default=None, init=False)
    _not_ready: list[str] = field(default_factory=list, init=False)
    _reported: bool = field(default=False, init=False)

    @property
    def what(self) -> str:
        if self._limits_token is not None and not self._limits_done:
            return "the airspace limits to be uploaded and read back"
        if self._params_token is None:
            return "a 3-D fix, a home position and an EKF position estimate"
        if self._params is None:
            return "the autopilot's parameters"
        if self._not_ready:
            return "readiness: " + "; ".join(self._not_ready)
        return "the companion's systems report"

    def timeout_s(self, core: MissionCore) -> float:
        return core.plan.limits.preflight_timeout_s

    def verify(self, core: MissionCore) -> bool:
        state = core.state
        if state is None or not armable(state):
            return False
        plan = core.plan
        if core.home is None:
            assert state.home is not None
            core.home = (state.home.lat, state.home.lon)
        limits = plan.autopilot_limits
        if limits is not None and self._limits_token is None:
            self._limits_token = core.send(lambda t: UploadLimits(t, limits))
            return False
        if limits is not None and not self._limits_done:
            return False
        if self._params_token is None:
            self._params_token = core.send(ReadParams)
            return False
        if self._params is None:
            return False
        if plan.checks.needs_ground_status:
            if self._systems_token is None or self._due(core):
                self._systems = None
                self._systems_token = core.send(CheckSystems)
                return False
            if self._systems is None:
                return False
        not_ready = [str(f) for f in self._readiness(core)]
        if not_ready != self._not_ready or (not not_ready and not self._reported):
            status = None if self._systems is None else self._systems.status
            core.record(
                "not-ready" if not_ready else "ready",
                findings=not_ready,
                **_ground_summary(status),
            )
            self._not_ready = not_ready
            self._reported = True
        if not_ready:
            if self._next_systems_at is None:
                self._next_systems_at = (core.now or 0.0) + SYSTEMS_RETRY_S
            return False
        return True

    def _due(self, core: MissionCore) -> bool:
        """Whether a systems report that showed something not ready is due to be asked again."""
        due = self._next_systems_at
        if due is None or core.now is None or core.now < due:
            return False
        self._next_systems_at = None
        return True

    def on_answer(self, core: MissionCore, answer: Answer) -> None:
        if isinstance(answer, LimitsUploaded) and answer.token == self._limits_token:
            if answer.problems:
                raise Abort(
                    "preflight refused: the autopilot does not hold the airspace limits: "
                    + "; ".join(answer.problems),
                    "NONE",
                )
            self._limits_done = True
            core.record("limits-uploaded", **_limits_summary(core.plan))
        elif isinstance(answer, ParamsRead) and answer.token == self._params_token:
            if answer.error:
                raise Abort(
                    f"preflight: cannot read the autopilot's parameters ({answer.error})", "NONE"
                )
            self._params = answer
            self._judge_autopilot(core, dict(answer.values))
        elif isinstance(answer, SystemsChecked) and answer.token == self._systems_token:
            self._systems = answer

    def _judge_autopilot(self, core: MissionCore, params: dict[str, float]) -> None:
        """The parameters, limits and battery: what waiting cannot fix, refused at once."""
        state = core.state
        assert core.home is not None and state is not None
        plan = core.plan
        findings = [
            str(f) for f in check_autopilot(params, plan, core.home, state.battery.remaining_pct)
        ]
        core.params = params
        core.record("checked", findings=findings, notes=speed_notes(params, plan))
        if findings:
            raise Abort("preflight refused: " + "; ".join(findings), "NONE")

    def _readiness(self, core: MissionCore) -> list[Finding]:
        """The receivers, the uplink and the wind now."""
        state = core.state
        assert state is not None
        checks = core.plan.checks
        status = None if self._systems is None else self._systems.status
        findings = check_receivers(state.gps, status, checks)
        findings += check_ground(status, checks, [d.drop_id for d in core.plan.drops()])
        if self._systems is not None and self._systems.error:
            findings.insert(0, Finding("systems", f"companion systems: {self._systems.error}"))
        return findings


def _limits_summary(plan: MissionPlan) -> dict[str, object]:
    limits = plan.autopilot_limits
    assert limits is not None
    fence = limits.fence
    return {
        "inclusion_polygons": sum(p.inclusion for p in fence.polygons),
        "exclusion_polygons": sum(not p.inclusion for p in fence.polygons),
        "circles": len(fence.circles),
        "rally_points": len(limits.rally),
        "params": dict(limits.params),
        "notes": list(limits.notes),
    }


def _ground_summary(status: GroundStatus | None) -> dict[str, object]:
    if status is None:
        return {}
    gps, uplink = status.gps, status.uplink
    summary: dict[str, object] = {}
    if gps is not None:
        summary["companion_gps"] = {
            "status": gps.status, "fix_3d": gps.fix_3d, "satellites": gps.satellites,
            "hdop": gps.hdop, "age_s": gps.age_s,
        }  # fmt: skip
    if uplink is not None:
        summary["uplink"] = {"registered": uplink.registered, "flowing": uplink.flowing}
    if status.wind_mps is not None:
        summary["wind_mps"] = status.wind_mps
    if status.orders:
        summary["orders"] = {o.order_id: o.reason or "valid" for o in status.orders}
    return summary


@dataclass
class ArmInGuided(Stage):
    """GUIDED, then arm. A refusal for a passing reason (sensors settling, GPS, EKF) is tried
    again every `arm_retry_s`; any other reason ends the mission on the ground at once."""

    phase = Phase.ARM
    airborne = False
    _mode_token: int | None = field(default=None, init=False)
    _arm_token: int | None = field(default=None, init=False)
    _accepted_at: float | None = field(default=None, init=False)
    _next_try: float | None = field(default=None, init=False)
    _mode_acked_at: float | None = field(default=None, init=False)

    @property
    def what(self) -> str:
        return "the vehicle to arm"

    def timeout_s(self, core: MissionCore) -> float:
        return core.plan.limits.preflight_timeout_s

    def start(self, core: MissionCore) -> None:
        self._mode_token = core.send(lambda t: SetMode(t, "GUIDED"))
        core.expect_mode("GUIDED")

    def on_result(self, core: MissionCore, result: CommandResult) -> None:
        if result.token == self._mode_token:
            if not result.accepted:
                raise Abort(refused("GUIDED", result), "NONE")
            self._mode_acked_at = core.now
        elif result.token == self._arm_token:
            self._arm_token = None
            if result.accepted:
                self._accepted_at = core.now
                return
            reasons = [arming_reason(t) for t in result.texts] or [result.result]
            if not arming_refusal_is_transient(result.texts):
                raise Abort("arming refused: " + "; ".join(reasons), "NONE")
            core.record("refused", reasons=reasons)
            self._next_try = (core.now or 0.0) + core.plan.limits.arm_retry_s

    def verify(self, core: MissionCore) -> bool:
        state = core.state
        now = core.now
        if state is None or now is None:
            return False
        if state.mode != "GUIDED":
            if self._mode_acked_at is not None and now - self._mode_acked_at > MODE_CONFIRM_S:
                raise Abort(f"GUIDED was accepted but the vehicle stayed in {state.mode}", "NONE")
            return False
        if state.armed:
            return True
        if self._accepted_at is not None:
            if now - self._accepted_at > ARM_CONFIRM_S:
                raise Abort("arming was accepted but the vehicle did not arm", "NONE")
            return False
        if self._arm_token is None and (self._next_try is None or now >= self._next_try):
            self._arm_token = core.send(Arm)
        return False


# -- flying to a point -----------------------------------------------------------------------


@dataclass
class GoTo(Stage):
    """Fly to `target` with MAV_CMD_DO_REPOSITION and wait until within the arrival radius
    (horizontally; `vertical` steps wait for the altitude instead). Progress is watched: the
    target is sent once more after half of `no_progress_s` without progress, and the step is
    aborted after all of it."""

    target: Waypoint = field(default_factory=lambda: Waypoint(0.0, 0.0, 0.0))
    to: str = "the target"
    vertical: bool = False
    #: Set the plan's speeds once this target is accepted: ArduCopter resets its GUIDED
    #: speeds to WPNAV_* when GUIDED starts flying to a position, so speeds sent before the
    #: first target are lost (seen on SITL); they then hold for the later targets.
    set_speeds: bool = False
    _token: int | None = field(default=None, init=False)
    _resent: bool = field(default=False, init=False)
    _watch: ProgressWatch = field(default_factory=ProgressWatch, init=False)
    _speed_tokens: dict[int, SpeedType] = field(default_factory=dict, init=False)
    _speeds_sent: bool = field(default=False, init=False)

    @property
    def what(self) -> str:
        return self.to

    def start(self, core: MissionCore) -> None:
        self._send(core)

    def resume(self, core: MissionCore) -> None:
        self._resent = False
        self._send(core)

    def _send(self, core: MissionCore) -> None:
        t = self.target
        self._token = core.send(lambda token: Reposition(token, t.lat, t.lon, t.alt_m))
        self._watch.restart(core.now)

    def on_result(self, core: MissionCore, result: CommandResult) -> None:
        if result.token == self._token:
            if not result.accepted:
                raise Abort(refused(f"MAV_CMD_DO_REPOSITION to {self.what}", result))
            if self.set_speeds and not self._speeds_sent:
                self._send_speeds(core)
        elif result.token in self._speed_tokens:
            kind = self._speed_tokens.pop(result.token)
            if not result.accepted:
                raise Abort(refused(f"MAV_CMD_DO_CHANGE_SPEED ({kind.name.lower()} speed)", result))

    def _send_speeds(self, core: MissionCore) -> None:
        """The plan's cruise, climb and descent speeds (a refusal aborts: the autopilot
        would fly other speeds than planned)."""
        self._speeds_sent = True
        s = core.plan.speeds
        for kind, mps in (
            (SpeedType.GROUND, s.cruise_mps),
            (SpeedType.CLIMB, s.climb_mps),
            (SpeedType.DESCENT, s.descent_mps),
        ):
            token = core.send(lambda t, kind=kind, mps=mps: ChangeSpeed(t, kind, mps))
            self._speed_tokens[token] = kind

    def to_go_m(self, state: VehicleState) -> tuple[float, float] | None:
        """(horizontal, vertical) metres to the target, or None without a position."""
        pos = state.position
        if pos is None:
            return None
        t = self.target
        return distance_m(pos.lat, pos.lon, t.lat, t.lon), abs(pos.alt_rel_m - t.alt_m)

    def arrived(self, core: MissionCore, state: VehicleState) -> bool:
        """Whether the step's target counts as reached."""
        togo = self.to_go_m(state)
        if togo is None:
            return False
        if self.vertical:
            return togo[1] <= core.plan.limits.alt_tolerance_m
        return togo[0] <= core.plan.limits.arrival_radius_m

    def verify(self, core: MissionCore) -> bool:
        state = core.state
        if state is None:
            return False
        if core.holding:
            return False
        if self.arrived(core, state):
            return True
        togo = self.to_go_m(state)
        self._watch.update(core.now, None if togo is None else (togo[0] ** 2 + togo[1] ** 2) ** 0.5)
        stalled = self._watch.stalled_s(core.now)
        limit = core.plan.limits.no_progress_s
        if stalled >= limit:
            left = "" if togo is None else f" ({(togo[0] ** 2 + togo[1] ** 2) ** 0.5:.1f} m to go)"
            raise Abort(f"no progress towards {self.what} for {stalled:.1f} s{left}")
        if stalled >= limit / 2 and not self._resent:
            self._resent = True
            core.record("retarget", target=self.what, stalled_s=round(stalled, 1))
            t = self.target
            self._token = core.send(lambda token: Reposition(token, t.lat, t.lon, t.alt_m))
        return False


@dataclass
class TakeoffTo(Stage):
    """GUIDED take-off to `alt_m`; done within the altitude tolerance of it."""

    phase = Phase.TAKEOFF
    alt_m: float = 30.0
    _token: int | None = field(default=None, init=False)
    _watch: ProgressWatch = field(
        default_factory=lambda: ProgressWatch(grace_s=TAKEOFF_GRACE_S), init=False
    )

    @property
    def what(self) -> str:
        return f"the take-off altitude ({self.alt_m:g} m)"

    def enter_detail(self) -> dict:
        return {"target_alt_m": self.alt_m}

    def start(self, core: MissionCore) -> None:
        alt = self.alt_m
        self._token = core.send(lambda token: Takeoff(token, alt))
        core.took_off_at = core.now  # drop windows count from the take-off command
        self._watch.restart(core.now)

    def on_result(self, core: MissionCore, result: CommandResult) -> None:
        if result.token != self._token or result.accepted:
            return
        pos = core.state.position if core.state is not None else None
        if pos is not None and pos.alt_rel_m > core.plan.limits.alt_tolerance_m:
            # A re-sent take-off (its first answer lost) is refused once the first one has
            # lifted the drone: it is climbing, which is what was asked.
            return
        raise Abort(refused("MAV_CMD_NAV_TAKEOFF", result), "NONE")

    def verify(self, core: MissionCore) -> bool:
        state = core.state
        if state is None or state.position is None:
            return False
        alt = state.position.alt_rel_m
        if alt >= self.alt_m - core.plan.limits.alt_tolerance_m:
            return True
        self._watch.update(core.now, self.alt_m - alt)
        stalled = self._watch.stalled_s(core.now)
        if stalled >= core.plan.limits.no_progress_s:
            raise Abort(f"no climb towards {self.what} for {stalled:.1f} s (at {alt:.1f} m)")
        return False


@dataclass
class Transit(GoTo):
    """A waypoint of a transit leg."""

    phase = Phase.CRUISE
    holdable = True

    def enter_detail(self) -> dict:
        return {"drop": [self.target.lat, self.target.lon]}


@dataclass
class Descend(GoTo):
    """Down over the drop point to the hand-over altitude, held while the cone is not clear."""

    phase = Phase.DESCEND
    cone_guarded = True
    holdable = True

    def enter_detail(self) -> dict:
        return {"target_alt_m": self.target.alt_m}


@dataclass
class Climb(GoTo):
    """Back up to the cruise altitude over the drop point after the hand-over."""

    phase = Phase.CLIMB
    holdable = True

    def enter_detail(self) -> dict:
        return {"target_alt_m": self.target.alt_m}


# -- the hand-over ---------------------------------------------------------------------------


@dataclass
class ClearCone(Stage):
    """Hold at the hand-over altitude until the descent cone is clear (the core's hold logic
    holds the drone while it is not; with a camera, only a fresh clear frame counts)."""

    phase = Phase.RELEASE
    cone_guarded = True

    @property
    def what(self) -> str:
        return "the descent cone to clear"

    def verify(self, core: MissionCore) -> bool:
        return not core.holding and core.cone_hold_reason() is None


@dataclass
class VerifyRecipient(Stage):
    """Hover at the hand-over altitude until the recipient of `drop_id` is cleared: a fresh,
    verified and live face verdict, or a valid fallback PIN, given during this step
    (`handover`). A refusing verdict, `MAX_WRONG_PINS` invalid PINs or no clearance within
    `recipient_timeout_s` ends the hand-over: the parcel is flown home (RTL).

    The step's "verify-recipient" record is what the identity service starts its check on."""

    phase = Phase.RELEASE
    drop_id: str = ""
    _cleared: bool = field(default=False, init=False)
    _wrong_pins: int = field(default=0, init=False)
    _last_ignored: str | None = field(default=None, init=False)

    @property
    def what(self) -> str:
        return "the recipient to be verified"

    def timeout_s(self, core: MissionCore) -> float:
        return core.plan.limits.recipient_timeout_s

    def start(self, core: MissionCore) -> None:
        limits = core.plan.limits
        core.record("verify-recipient", drop=self.drop_id, timeout_s=limits.recipient_timeout_s,
                    max_age_s=limits.recipient_max_age_s)  # fmt: skip

    def on_recipient(self, core: MissionCore, given: RecipientVerdict | FallbackPin) -> None:
        """A verdict or PIN result for this drop, while this step runs."""
        if self._cleared:
            core.record("recipient-ignored", **input_record(given), why="already cleared")
        elif isinstance(given, FallbackPin):
            self._on_pin(core, given)
        else:
            self._on_verdict(core, given)

    def _on_verdict(self, core: MissionCore, verdict: RecipientVerdict) -> None:
        figures, problems = verdict_figures(verdict)
        limit = core.plan.limits.recipient_max_age_s
        outcome, why = judge_verdict(
            verdict, problems, now=core.now, check_started_s=self.started_at, max_age_s=limit
        )
        core.record("recipient-verdict", **figures, outcome=outcome, why=why)
        if outcome == "refused":
            raise Abort(f"recipient not verified: {why}")
        if outcome == "ignored":
            self._last_ignored = why
            return
        self._clear(core, Clearance(self.drop_id, "face", float(verdict.decided_at_s),
                                    "identity service"))  # fmt: skip

    def _on_pin(self, core: MissionCore, pin: FallbackPin) -> None:
        record = pin_record(pin)
        if record["valid"]:
            core.record("recipient-pin", **record, outcome="cleared")
            self._clear(core, Clearance(self.drop_id, "pin", core.now or 0.0, record["source"]))
            return
        self._wrong_pins += 1
        core.record("recipient-pin", **record, outcome="refused", wrong_pins=self._wrong_pins)
        if self._wrong_pins >= MAX_WRONG_PINS:
            raise Abort(f"recipient not verified: {self._wrong_pins} wrong fallback PINs")

    def _clear(self, core: MissionCore, clearance: Clearance) -> None:
        core.clearances[self.drop_id] = clearance
        self._cleared = True
        core.record("cleared", drop=self.drop_id, by=clearance.by, source=clearance.source)

    def verify(self, core: MissionCore) -> bool:
        if self._cleared:
            return True
        now, limit = core.now, self.timeout_s(core)
        if now is not None and self.started_at is not None and now - self.started_at > limit:
            last = self._last_ignored or "no verdict and no fallback PIN came"
            raise Abort(f"recipient not verified within {limit:g} s: {last}")
        return False


@dataclass
class Release(Stage):
    """Open the gripper: the only step that sends `ReleaseParcel`, and only once the release
    gate (`handover.release_refusal`) allows it; a refusal flies the parcel home."""

    phase = Phase.RELEASE
    drop_id: str = ""
    _token: int | None = field(default=None, init=False)
    _released: bool = field(default=False, init=False)

    @property
    def what(self) -> str:
        return "the gripper to open"

    def start(self, core: MissionCore) -> None:
        clearance = core.clearances.pop(self.drop_id, None)  # one clearance, one release
        why = release_refusal(core.plan, self.drop_id, clearance, core.now)
        if why is not None:
            raise Abort(f"recipient not verified: {why}")
        self._token = core.send(ReleaseParcel)

    def on_result(self, core: MissionCore, result: CommandResult) -> None:
        if result.token != self._token:
            return
        if not result.accepted:
            raise Abort(refused("MAV_CMD_DO_GRIPPER release", result))
        self._released = True
        core.released.append(self.drop_id)
        core.record("released", drop=self.drop_id)

    def verify(self, core: MissionCore) -> bool:
        return self._released


@dataclass
class WaitForWindow(Stage):
    """Hover over the drop at cruise altitude until `until_s` after the take-off command: the
    order's window opens then, and a parcel left early may be left with no one to take it.
    Nothing is sent (GUIDED holds the last target); the guards (battery, link, mode) still
    run."""

    phase = Phase.CRUISE
    drop_id: str = ""
    until_s: float = 0.0

    @property
    def what(self) -> str:
        return f"drop {self.drop_id}'s window to open ({self.until_s:g} s after take-off)"

    def timeout_s(self, core: MissionCore) -> float:
        return self.until_s + core.plan.limits.phase_timeout_s

    def start(self, core: MissionCore) -> None:
        elapsed = self._elapsed(core)
        if elapsed is not None and elapsed < self.until_s:
            core.record(
                "waiting", drop=self.drop_id, until_s=self.until_s,
                wait_s=round(self.until_s - elapsed, 1),
            )  # fmt: skip

    def verify(self, core: MissionCore) -> bool:
        elapsed = self._elapsed(core)
        return elapsed is not None and elapsed >= self.until_s

    @staticmethod
    def _elapsed(core: MissionCore) -> float | None:
        if core.now is None or core.took_off_at is None:
            return None
        return core.now - core.took_off_at


@dataclass
class Dwell(Stage):
    """Hover the plan's release hold after letting go of the parcel."""

    phase = Phase.RELEASE

    @property
    def what(self) -> str:
        return "the release hold"

    def verify(self, core: MissionCore) -> bool:
        now = core.now
        if now is None or self.started_at is None:
            return False
        return now - self.started_at >= core.plan.limits.release_hold_s


# -- home ------------------------------------------------------------------------------------


@dataclass
class ReturnToLaunch(Stage):
    """The autopilot's RTL, until its final descent over home."""

    phase = Phase.RETURN
    returning = True
    _token: int | None = field(default=None, init=False)
    _acked_at: float | None = field(default=None, init=False)

    @property
    def what(self) -> str:
        return "the final descent over home"

    def start(self, core: MissionCore) -> None:
        self._token = core.send(lambda t: SetMode(t, "RTL"))
        core.expect_mode("RTL")

    def on_result(self, core: MissionCore, result: CommandResult) -> None:
        if result.token != self._token:
            return
        if not result.accepted:
            raise Abort(refused("RTL", result), "LAND")
        self._acked_at = core.now

    def verify(self, core: MissionCore) -> bool:
        state, now = core.state, core.now
        if state is None or now is None or state.mode != "RTL":
            late = self._acked_at is not None and now is not None
            if late and now - self._acked_at > MODE_CONFIRM_S:
                raise Abort("RTL was accepted but the vehicle did not switch to it", "LAND")
            return False
        pos, home = state.position, core.home
        if pos is None or home is None:
            return False
        sinking = (state.velocity_ned_mps or (0.0, 0.0, 0.0))[2] > FINAL_DESCENT_MPS
        return distance_m(pos.lat, pos.lon, *home) < HOME_RADIUS_M and sinking


@dataclass
class Landing(Stage):
    """The end of RTL: down and disarmed."""

    phase = Phase.LAND
    returning = True

    @property
    def what(self) -> str:
        return "disarm after landing"

    def verify(self, core: MissionCore) -> bool:
        return core.state is not None and not core.state.armed


def expand(plan: MissionPlan) -> list[Stage]:
    """The steps of `plan`, in flying order."""
    stages: list[Stage] = []
    speeds_set = False
    for leg in plan.legs:
        stages += _leg_stages(leg, plan, speeds_set)
        speeds_set = speeds_set or isinstance(leg, TransitLeg)
    return stages


def _leg_stages(leg: Leg, plan: MissionPlan, speeds_set: bool) -> list[Stage]:
    if isinstance(leg, TakeoffLeg):
        return [Preflight(), ArmInGuided(), TakeoffTo(alt_m=leg.alt_m)]
    if isinstance(leg, TransitLeg):
        steps: list[Stage] = []
        last = len(leg.waypoints) - 1
        for i, wp in enumerate(leg.waypoints):
            to = leg.to if i == last else f"waypoint {i + 1} on the way to {leg.to}"
            steps.append(Transit(target=wp, to=to, set_speeds=not speeds_set and i == 0))
        return steps
    if isinstance(leg, DropLeg):
        low = Waypoint(leg.lat, leg.lon, leg.handover_alt_m)
        high = Waypoint(leg.lat, leg.lon, leg.cruise_alt_m)
        steps = []
        if leg.not_before_s is not None:
            steps.append(WaitForWindow(drop_id=leg.drop_id, until_s=leg.not_before_s))
        steps.append(Descend(target=low, to="the hand-over altitude", vertical=True))
        for step in leg.steps:
            if step is HandoverStep.CLEAR_CONE:
                steps.append(ClearCone())
            elif step is HandoverStep.VERIFY_RECIPIENT:
                steps.append(VerifyRecipient(drop_id=leg.drop_id))
            elif step is HandoverStep.RELEASE:
                steps.append(Release(drop_id=leg.drop_id))
            elif step is HandoverStep.DWELL:
                steps.append(Dwell())
            else:
                raise TypeError(f"unknown hand-over step {step!r}")
        steps.append(Climb(target=high, to="the cruise altitude", vertical=True))
        return steps
    if isinstance(leg, ReturnLeg):
        return [ReturnToLaunch()]
    if isinstance(leg, LandLeg):
        return [Landing()]
    raise TypeError(f"unknown leg {leg!r}")
