"""The mission core, driven without threads, sleeps or sockets: every transition and every
abort path against a scripted world (tests/mission_world.py), each with its reason and the
action that makes the drone safe."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import pytest

from companion.config import FlightConfig
from companion.geo import offset
from companion.mission.actions import (
    Arm,
    ChangeSpeed,
    Disarm,
    ReleaseParcel,
    Reposition,
    SetMode,
    SpeedType,
    Takeoff,
    Transition,
)
from companion.mission.core import MissionCore
from companion.mission.events import Phase
from companion.mission.inputs import (
    AutopilotText,
    CommandResult,
    ConeVerdict,
    Input,
    JournalFailed,
    LinkStatus,
    OperatorAction,
    OperatorCommand,
)
from companion.mission.plan import DropLeg, Limits, MissionPlan, delivery_plan
from companion.mission.stages import WaitForWindow
from tests.mission_world import HOME, World

FLIGHT = FlightConfig()
FLYING = ["takeoff", "cruise", "descend", "release", "climb", "return"]


def plan(distance_m: float = 200.0, **options: object) -> MissionPlan:
    camera = bool(options.pop("camera_required", False))
    base = delivery_plan("m1", offset(*HOME, distance_m, 45.0), FLIGHT, camera_required=camera)
    if options:
        limits = Limits(**{**base.limits.__dict__, **options})
        base = MissionPlan(base.mission_id, base.legs, base.speeds, limits, camera)
    return base


def fly(world: World, mission: MissionPlan | None = None, **run: float) -> MissionCore:
    core = MissionCore(mission or plan())
    world.run(core, **run)
    return core


def abort_of(world: World) -> Transition:
    return next(t for t in world.transitions() if t.event == "abort")


def commands_after_abort(world: World) -> list:
    seen = False
    after = []
    for _, action in world.actions:
        if isinstance(action, Transition) and action.event == "abort":
            seen = True
        elif seen and not isinstance(action, Transition) and type(action).__name__ != "Finish":
            after.append(action)
    return after


def once_in(phase: str, make: Callable[[World, MissionCore], list[Input]]):
    """A hook that acts once, the first time the core is in `phase`."""
    fired = []

    def hook(world: World, core: MissionCore) -> list[Input]:
        if fired or core.phase.value != phase:
            return []
        fired.append(world.t)
        return make(world, core)

    hook.fired = fired  # type: ignore[attr-defined]
    return hook


# -- the whole flight ------------------------------------------------------------------------


def test_a_delivery_goes_through_every_phase_and_releases_once_in_the_release_step():
    world = World()
    core = fly(world)
    assert core.finished and core.outcome == "delivered"
    entered = [phase for phase, event in world.story() if event == "enter"]
    assert entered == [
        "preflight", "arm", "takeoff", "cruise", "descend", "release", "climb", "return",
        "land", "done",
    ]  # fmt: skip
    releases = [(t, a) for t, a in world.actions if isinstance(a, ReleaseParcel)]
    assert len(releases) == 1
    assert world.released and not world.armed and world.distance_from_home() < 1.0
    # Transitions carry the autopilot's time, in order.
    times = [t.boot_time_s for t in world.transitions() if t.boot_time_s is not None]
    assert times == sorted(times)


def test_configured_speeds_are_set_once_the_first_target_is_accepted():
    # ArduCopter resets GUIDED's speeds when it starts flying to a position: speeds sent
    # before the first target would be lost.
    world = World()
    fly(world)
    commands = world.commands()
    speeds = [c for c in commands if isinstance(c, ChangeSpeed)]
    assert {(s.speed_type, s.mps) for s in speeds} == {
        (SpeedType.GROUND, FLIGHT.cruise_speed_mps),
        (SpeedType.CLIMB, FLIGHT.climb_rate_mps),
        (SpeedType.DESCENT, FLIGHT.descent_rate_mps),
    }
    first_target = next(i for i, c in enumerate(commands) if isinstance(c, Reposition))
    assert all(commands.index(s) == first_target + 1 + n for n, s in enumerate(speeds))


def test_a_refused_speed_is_an_abort_naming_it():
    world = World(
        answers={ChangeSpeed: lambda a: CommandResult(a.token, False, "MAV_RESULT_FAILED")}
    )
    core = fly(world)
    assert core.outcome == "MAV_CMD_DO_CHANGE_SPEED (ground speed) refused (MAV_RESULT_FAILED)"
    assert abort_of(world).detail["action"] == "RTL"


def test_the_plan_is_checked_against_the_autopilots_parameters_before_arming():
    world = World()
    world.params["FENCE_RADIUS"] = 300.0
    core = fly(world, plan(500.0))
    assert core.outcome is not None and core.outcome.startswith("preflight refused: ")
    assert "FENCE_RADIUS is 300 m but the plan goes 500 m from home" in core.outcome
    assert "set FENCE_RADIUS to at least 505" in core.outcome
    assert abort_of(world).detail["action"] == "NONE"
    assert not any(isinstance(c, Arm) for c in world.commands())


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"SCW_ENABLE": None}, "companion watchdog is not running"),
        ({"GRIP_ENABLE": 0}, "GRIP_ENABLE is not 1"),
        ({"FENCE_ALT_MAX": 150}, "FENCE_ALT_MAX is 150 m, above the legal ceiling"),
        ({"BATT_FS_LOW_ACT": 0}, "BATT_FS_LOW_ACT is 0"),
        ({"FENCE_ENABLE": 0}, "FENCE_ENABLE is 0"),
    ],
)
def test_preflight_names_the_parameter_the_autopilot_needs(change, names):
    world = World()
    for name, value in change.items():
        if value is None:
            world.params.pop(name)
        else:
            world.params[name] = value
    core = fly(world)
    assert names in (core.outcome or "")
    assert not any(isinstance(c, Arm) for c in world.commands())


def test_a_battery_too_low_to_start_is_refused_on_the_ground():
    world = World(battery_pct=20)
    core = fly(world)
    assert "battery 20% is below the 25% needed to start" in (core.outcome or "")


# -- arming ----------------------------------------------------------------------------------


def test_an_arming_refusal_that_waiting_cannot_fix_ends_at_once_with_the_autopilots_reason():
    world = World(arm_refusals=1, arm_texts=("Arm: Battery 1 low voltage failsafe",))
    core = fly(world)
    assert core.outcome == "arming refused: Battery 1 low voltage failsafe"
    assert abort_of(world).detail["action"] == "NONE"
    assert sum(isinstance(c, Arm) for c in world.commands()) == 1
    assert world.t < 3.0  # not retried for the preflight timeout


def test_a_passing_arming_refusal_is_retried_and_the_delivery_goes_on():
    world = World(arm_refusals=2, arm_texts=("PreArm: Need Position Estimate",))
    core = fly(world)
    assert core.outcome == "delivered"
    refused = [t for t in world.transitions() if t.event == "refused"]
    assert len(refused) == 2 and refused[0].detail["reasons"] == ["Need Position Estimate"]
    arms = [t for t, a in world.actions if isinstance(a, Arm)]
    assert len(arms) == 3 and arms[1] - arms[0] >= 2.0 and arms[2] - arms[1] >= 2.0


def test_guided_refused_ends_on_the_ground():
    world = World(answers={SetMode: lambda a: CommandResult(a.token, False, "MAV_RESULT_DENIED")})
    core = fly(world)
    assert core.outcome == "GUIDED refused (MAV_RESULT_DENIED)"
    assert not any(isinstance(c, Arm) for c in world.commands())


def test_a_refused_takeoff_disarms_on_the_ground():
    world = World(answers={Takeoff: lambda a: CommandResult(a.token, False, "MAV_RESULT_FAILED")})
    core = fly(world)
    assert core.outcome == "MAV_CMD_NAV_TAKEOFF refused (MAV_RESULT_FAILED)"
    assert abort_of(world).detail["action"] == "NONE"
    assert any(isinstance(c, Disarm) for c in commands_after_abort(world))
    assert not world.armed


# -- confirmed flight commands ---------------------------------------------------------------


def test_a_refused_target_is_a_named_abort_at_once():
    def refuse(action: Reposition) -> CommandResult:
        return CommandResult(action.token, False, "MAV_RESULT_FAILED")

    world = World(answers={Reposition: refuse})
    core = fly(world)
    assert core.outcome == ("MAV_CMD_DO_REPOSITION to the drop point refused (MAV_RESULT_FAILED)")
    cruise = next(t.boot_time_s for t in world.transitions() if t.phase is Phase.CRUISE)
    assert abort_of(world).boot_time_s - cruise < 0.5
    assert [c.mode for c in commands_after_abort(world) if isinstance(c, SetMode)] == ["RTL"]
    assert not world.armed and world.distance_from_home() < 1.0  # home by RTL


def test_an_ignored_target_is_sent_again_then_aborted_within_five_seconds():
    world = World(ignore_targets=True)
    core = fly(world)
    assert core.outcome is not None
    assert core.outcome.startswith("no progress towards the drop point for 4.0 s")
    cruise = next(t.boot_time_s for t in world.transitions() if t.event == "enter"
                  and t.phase is Phase.CRUISE)  # fmt: skip
    retarget = next(t for t in world.transitions() if t.event == "retarget")
    assert retarget.detail["target"] == "the drop point"
    assert abort_of(world).boot_time_s - cruise <= 5.0
    assert abort_of(world).detail["action"] == "RTL"


def test_a_target_lost_once_is_recovered_by_sending_it_again():
    lost = []

    def lose_first(action: Reposition) -> CommandResult | None:
        if not lost:  # acknowledged, but the vehicle never takes it (a lost setpoint)
            lost.append(action)
            return CommandResult(action.token, True)
        return None

    world = World(answers={Reposition: lose_first})
    core = fly(world)
    assert core.outcome == "delivered"
    assert [t.detail["target"] for t in world.transitions() if t.event == "retarget"] == [
        "the drop point"
    ]


def test_an_unanswered_command_is_an_abort_naming_it():
    world = World(
        answers={Reposition: lambda a: CommandResult(a.token, False, "timeout", "no ACK")}
    )
    core = fly(world)
    assert core.outcome == "MAV_CMD_DO_REPOSITION to the drop point refused (timeout: no ACK)"


def test_a_refused_gripper_flies_the_parcel_home():
    world = World(
        answers={ReleaseParcel: lambda a: CommandResult(a.token, False, "MAV_RESULT_FAILED")}
    )
    core = fly(world)
    assert core.outcome == "MAV_CMD_DO_GRIPPER release refused (MAV_RESULT_FAILED)"
    assert "released" not in [e for _, e in world.story()]
    assert abort_of(world).detail == {
        "reason": core.outcome, "action": "RTL", "phase": "release", "step": 6
    }  # fmt: skip


def test_a_refused_rtl_falls_back_to_land():
    def refuse_rtl(action: SetMode) -> CommandResult | None:
        if action.mode == "RTL":
            return CommandResult(action.token, False, "MAV_RESULT_FAILED")
        return None

    world = World(answers={SetMode: refuse_rtl})
    world.hooks.append(once_in("cruise", lambda w, c: [OperatorCommand(OperatorAction.ABORT)]))
    core = fly(world)
    assert core.outcome == "operator abort (operator)"
    modes = [c.mode for c in commands_after_abort(world) if isinstance(c, SetMode)]
    assert modes == ["RTL", "LAND"]
    assert ("abort", "abort-action-failed") in world.story()
    assert world.story()[-1] == ("abort", "landed")


# -- guards ----------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", FLYING)
def test_link_loss_in_flight_leaves_the_drone_to_the_autopilot(phase):
    def cut(world: World, core: MissionCore) -> list[Input]:
        return [LinkStatus(False, 6.0)]

    def autopilot_returns(world: World, core: MissionCore) -> list[Input]:
        # The autopilot's own watchdog brings it home; later the link comes back.
        if core.phase is Phase.ABORT and world.mode != "RTL":
            world.mode = "RTL"
            return [LinkStatus(True, 0.0)]
        return []

    world = World()
    world.hooks += [once_in(phase, cut), autopilot_returns]
    core = fly(world)
    assert core.outcome == "link to the autopilot lost for 6 s"
    assert abort_of(world).detail["action"] == "FAILSAFE"
    assert commands_after_abort(world) == []
    assert world.story()[-1] == ("abort", "landed")


@pytest.mark.parametrize("phase", ["preflight", "arm"])
def test_link_loss_on_the_ground_ends_the_mission_there(phase):
    world = World()
    world.hooks.append(once_in(phase, lambda w, c: [LinkStatus(False, 6.0)]))
    core = fly(world)
    assert core.finished and core.outcome == "link to the autopilot lost for 6 s"
    assert not any(isinstance(c, Takeoff) for c in world.commands())


@pytest.mark.parametrize("phase", [*FLYING, "arm"])
def test_a_pilot_taking_over_stops_the_companion(phase):
    def take_over(world: World, core: MissionCore) -> list[Input]:
        world.mode, world.target = "LOITER", None
        return []

    world = World()
    world.hooks.append(once_in(phase, take_over))
    core = fly(world)
    assert (
        core.finished and core.outcome == "mode changed to LOITER outside the companion's control"
    )
    assert abort_of(world).detail["action"] == "PILOT"
    assert commands_after_abort(world) == []


def test_a_mode_change_the_companion_asked_for_is_not_a_takeover():
    # The heartbeat shows the new mode only after the acknowledgement: meanwhile the old one
    # is expected, and only a third mode would be a pilot's.
    world = World()
    slow = []

    def delay_mode(action: SetMode) -> CommandResult | None:
        if action.mode == "GUIDED" and not slow:
            slow.append(action)
            return CommandResult(action.token, True)  # mode shows a little later
        return None

    def switch_late(world: World, core: MissionCore) -> list[Input]:
        if slow and world.mode == "STABILIZE" and world.t > 1.0:
            world.mode = "GUIDED"
        return []

    world.answers[SetMode] = delay_mode
    world.hooks.append(switch_late)
    assert fly(world).outcome == "delivered"


@pytest.mark.parametrize(
    ("text", "mode"),
    [
        ("Battery Failsafe", "RTL"),
        ("GCS Failsafe - Continuing Auto Mode", "RTL"),
        ("Circle fence breached", "RTL"),
        ("SCW: companion silent 5.2 s, mode 6", "RTL"),
    ],
)
def test_an_autopilot_failsafe_is_left_to_the_autopilot(text, mode):
    def failsafe(world: World, core: MissionCore) -> list[Input]:
        world.mode = mode
        return [AutopilotText(4, text, world.t)]

    world = World()
    world.hooks.append(once_in("cruise", failsafe))
    core = fly(world)
    assert core.outcome is not None
    assert core.outcome.startswith(("autopilot failsafe: ", "fence breach reported")), core.outcome
    assert text in core.outcome
    assert abort_of(world).detail["action"] == "AUTOPILOT"
    assert commands_after_abort(world) == []
    assert world.story()[-1] == ("abort", "landed")


def test_a_report_only_fence_breach_returns_home():
    world = World()
    world.params["FENCE_ACTION"] = 0
    world.hooks.append(
        once_in("cruise", lambda w, c: [AutopilotText(5, "Circle fence breached", w.t)])
    )
    core = fly(world)
    assert core.outcome == "fence breach reported by the autopilot: Circle fence breached"
    assert abort_of(world).detail["action"] == "RTL"
    assert isinstance(commands_after_abort(world)[0], SetMode)


@pytest.mark.parametrize(("pct", "action"), [(20, "RTL"), (10, "LAND")])
def test_a_low_battery_returns_home_and_a_critical_one_lands(pct, action):
    def drain(world: World, core: MissionCore) -> list[Input]:
        world.battery_pct = pct
        return []

    world = World()
    world.hooks.append(once_in("cruise", drain))
    core = fly(world)
    assert core.outcome is not None and core.outcome.startswith(
        "battery low" if action == "RTL" else "battery critical"
    )
    assert abort_of(world).detail["action"] == action
    assert [c.mode for c in commands_after_abort(world) if isinstance(c, SetMode)] == [action]
    assert not world.armed


def test_a_disarm_in_flight_ends_the_mission():
    def disarm(world: World, core: MissionCore) -> list[Input]:
        world.armed = False
        return []

    world = World()
    world.hooks.append(once_in("cruise", disarm))
    core = fly(world)
    assert core.outcome == "vehicle disarmed unexpectedly"
    assert commands_after_abort(world) == []


def test_a_leg_that_takes_too_long_is_aborted():
    world = World(speed_xy=1.0)  # far too slow for the phase timeout
    core = fly(world, plan(200.0, phase_timeout_s=30.0))
    assert core.outcome == "timed out after 30 s waiting for the drop point"
    assert abort_of(world).detail["action"] == "RTL"


def test_a_journal_failure_still_returns_home():
    world = World()
    world.hooks.append(once_in("cruise", lambda w, c: [JournalFailed("disk I/O error")]))
    core = fly(world)
    assert core.outcome == "journal failure: disk I/O error"
    assert [c.mode for c in commands_after_abort(world) if isinstance(c, SetMode)] == ["RTL"]
    assert not world.armed and world.distance_from_home() < 1.0


# -- operators -------------------------------------------------------------------------------


@pytest.mark.parametrize(("action", "mode"), [(OperatorAction.ABORT, "RTL"),
                                              (OperatorAction.LAND, "LAND")])  # fmt: skip
def test_an_operator_can_abort_or_land(action, mode):
    world = World()
    world.hooks.append(once_in("descend", lambda w, c: [OperatorCommand(action, "sms:+4477")]))
    core = fly(world)
    assert core.outcome == f"operator {action.value} (sms:+4477)"
    assert [c.mode for c in commands_after_abort(world) if isinstance(c, SetMode)] == [mode]
    assert not world.released


def test_an_operator_hold_stops_the_drone_until_resumed():
    positions = []

    def hold(world: World, core: MissionCore) -> list[Input]:
        return [OperatorCommand(OperatorAction.HOLD)]

    def resume_later(world: World, core: MissionCore) -> list[Input]:
        if core.holding:
            positions.append((world.north, world.east))
            if len(positions) == 300:  # 30 s of holding: longer than the progress watch
                return [OperatorCommand(OperatorAction.RESUME)]
        return []

    world = World()
    world.hooks += [once_in("cruise", hold), resume_later]
    core = fly(world, plan(300.0))
    assert core.outcome == "delivered"
    story = world.story()
    assert ("cruise", "hold") in story and ("cruise", "resume") in story
    assert positions[-1] == positions[-50]  # stood still
    resume = next(t for t in world.transitions() if t.event == "resume")
    assert resume.detail["held_s"] == pytest.approx(30.0, abs=0.2)


def test_a_hold_where_it_cannot_be_done_is_recorded_not_obeyed():
    world = World()
    world.hooks.append(once_in("takeoff", lambda w, c: [OperatorCommand(OperatorAction.HOLD)]))
    core = fly(world)
    assert core.outcome == "delivered"
    ignored = next(t for t in world.transitions() if t.event == "operator-ignored")
    assert ignored.detail["request"] == "hold"


# -- the descent cone ------------------------------------------------------------------------


def camera(script: Callable[[float], str | None], period: float = 0.3):
    """A camera hook: a verdict every `period` s of vehicle time; `script(t)` is the reason."""
    last = [-1e9]

    def hook(world: World, core: MissionCore) -> list[Input]:
        if world.t - last[0] < period - 1e-9:
            return []
        last[0] = world.t
        return [ConeVerdict(world.t, script(world.t))]

    return hook


def test_with_a_clear_camera_the_hand_over_goes_on_without_holds():
    world = World()
    world.hooks.append(camera(lambda t: None))
    core = fly(world, plan(camera_required=True))
    assert core.outcome == "delivered"
    assert "hold" not in [e for _, e in world.story()]


def test_without_camera_frames_the_descent_holds_and_the_parcel_flies_home():
    world = World()
    core = fly(world, plan(camera_required=True, max_hold_s=10.0))
    assert core.outcome == "obstacle in the descent cone for 10 s (no camera frame yet)"
    assert ("descend", "hold") in world.story()
    assert not world.released


def test_stale_frames_hold_the_descent_until_fresh_ones_come():
    frozen_from = [None]

    def script(world: World, core: MissionCore) -> list[Input]:
        # The camera stops for 5 s of vehicle time as the descent starts, then comes back.
        if core.phase is Phase.DESCEND and frozen_from[0] is None:
            frozen_from[0] = world.t
        if frozen_from[0] is not None and world.t - frozen_from[0] < 5.0:
            return []
        return [ConeVerdict(world.t, None)]

    world = World()
    world.hooks.append(script)
    core = fly(world, plan(camera_required=True))
    assert core.outcome == "delivered"
    hold = next(t for t in world.transitions() if t.event == "hold")
    assert hold.detail["reason"].startswith("no fresh camera frame")
    resume = next(t for t in world.transitions() if t.event == "resume")
    assert 3.5 <= resume.detail["held_s"] <= 5.5


def test_someone_in_the_cone_holds_the_descent_then_it_resumes():
    started = [None]

    def reason(world: World, core: MissionCore) -> list[Input]:
        if core.phase is Phase.DESCEND and started[0] is None and world.alt < 20:
            started[0] = world.t
        person = started[0] is not None and world.t - started[0] < 6.0
        return [ConeVerdict(world.t, "person inside the descent cone, 3 deg off vertical"
                            if person else None)]  # fmt: skip

    world = World()
    alts = []
    world.hooks += [reason, lambda w, c: alts.append((c.holding, w.alt)) or []]
    core = fly(world, plan(camera_required=True))
    assert core.outcome == "delivered"
    story = world.story()
    i = story.index(("descend", "hold"))
    assert story[i + 1] == ("descend", "resume")
    resume = next(t for t in world.transitions() if t.event == "resume")
    assert resume.detail["held_s"] == pytest.approx(6.0, abs=0.2)
    held = [alt for holding, alt in alts if holding]
    assert max(held) - min(held) < 0.5  # it stopped where it was
    # Released only after the resume.
    assert story.index(("release", "released")) > story.index(("descend", "resume"))


def test_a_cone_that_never_clears_flies_the_parcel_home_after_max_hold():
    world = World()
    world.hooks.append(camera(lambda t: "person inside the descent cone, 0 deg off vertical"))
    core = fly(world, plan(camera_required=True, max_hold_s=20.0))
    assert core.outcome == (
        "obstacle in the descent cone for 20 s (person inside the descent cone, 0 deg off vertical)"
    )
    assert not world.released and not world.armed
    assert abort_of(world).detail["action"] == "RTL"


# -- plans of several legs -------------------------------------------------------------------


def test_a_plan_with_two_drops_and_waypoints_flies_them_in_order():
    from companion.mission.plan import (
        DropLeg,
        LandLeg,
        ReturnLeg,
        TakeoffLeg,
        TransitLeg,
        Waypoint,
    )

    a = offset(*HOME, 150.0, 90.0)
    b = offset(*HOME, 150.0, 0.0)
    corner = offset(*HOME, 200.0, 45.0)
    two = MissionPlan(
        "route-1",
        (
            TakeoffLeg(30.0),
            TransitLeg((Waypoint(*a, 30.0),), to="drop A"),
            DropLeg("A", *a, 5.0, 30.0),
            TransitLeg((Waypoint(*corner, 30.0), Waypoint(*b, 30.0)), to="drop B"),
            DropLeg("B", *b, 5.0, 30.0),
            ReturnLeg(),
            LandLeg(),
        ),
    )
    world = World()
    core = fly(world, two)
    assert core.outcome == "delivered" and core.released == ["A", "B"]
    assert [t.detail["drop"] for t in world.transitions() if t.event == "released"] == ["A", "B"]
    assert sum(isinstance(c, ChangeSpeed) for c in world.commands()) == 3  # once, at the start
    targets = [(round(c.lat, 5), round(c.lon, 5)) for c in world.commands()
               if isinstance(c, Reposition) and c.alt_m == 30.0]  # fmt: skip
    rounded = [(round(p[0], 5), round(p[1], 5)) for p in (a, a, corner, b, b)]
    assert targets == rounded  # A, climb over A, the corner, B, climb over B


def test_a_plan_must_start_with_a_takeoff_and_release_once_per_drop():
    from companion.mission.plan import DropLeg, HandoverStep, TakeoffLeg

    with pytest.raises(ValueError, match="first leg must be a take-off"):
        MissionPlan("x", (DropLeg("A", *HOME, 5.0, 30.0),))
    with pytest.raises(ValueError, match="releases exactly once"):
        DropLeg("A", *HOME, 5.0, 30.0, steps=(HandoverStep.CLEAR_CONE,))
    with pytest.raises(ValueError, match="legal ceiling"):
        MissionPlan("x", (TakeoffLeg(150.0),))


def test_a_drop_whose_window_has_not_opened_is_waited_for_over_it():
    base = plan(200.0)
    legs = tuple(
        dataclasses.replace(leg, not_before_s=90.0) if isinstance(leg, DropLeg) else leg
        for leg in base.legs
    )
    world = World()
    held: list[tuple[float, float, float]] = []

    def watch(w: World, core: MissionCore) -> list:
        if isinstance(core.stage, WaitForWindow):
            held.append((w.t, w.alt, math.hypot(w.north, w.east)))
        return []

    world.hooks.append(watch)
    core = fly(world, dataclasses.replace(base, legs=legs))
    assert core.outcome == "delivered"
    takeoff_at = next(t for t, a in world.actions if isinstance(a, Takeoff))
    waiting = next(t for t in world.transitions() if t.event == "waiting")
    assert waiting.detail["until_s"] == 90.0 and waiting.detail["wait_s"] > 30
    descend = next(t for t in world.transitions() if t.phase is Phase.DESCEND)
    assert descend.boot_time_s is not None
    assert descend.boot_time_s - takeoff_at >= 90.0
    # It waited over the drop at cruise altitude, for as long as the window needed.
    assert held and held[-1][0] - held[0][0] > 30
    assert all(abs(alt - FLIGHT.cruise_alt_m) < 0.5 and abs(r - 200.0) < 2.5 for _, alt, r in held)
