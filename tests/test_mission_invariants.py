"""Invariants of the mission core over random event sequences (hypothesis, 10,000 runs).

Each run flies a short delivery in the scripted world (tests/mission_world.py) while random
things happen in between the vehicle's steps: refused, unanswered and ignored commands, a
pilot switching modes, failsafe and fence texts, the link dropping and coming back, camera
verdicts fresh and stale, operator commands, recipients' verdicts and fallback PINs (good,
spoilt, stale, for another drop), a failing journal, a draining battery, a lost position, a
disarm; half of the runs deliver to a named recipient (a recipient check before the release).
Whatever happens:

- the gripper is released only in a drop's release step, at most once per drop, and for a
  drop with a recipient check only after an input that clears it came during that check;
- no command follows a pilot's takeover;
- every abort names its reason, and its action fits the vehicle: RTL or LAND only while it
  flies and the companion still commands it, no command at all for a pilot, a failsafe of the
  autopilot or a lost link, nothing but a disarm on the ground;
- once the faults stop, every run ends, if only by a timeout: "delivered" (DONE) or an abort
  with its reason, with exactly one `Finish`, and nothing after it.
"""

from __future__ import annotations

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from companion.config import FlightConfig
from companion.geo import offset
from companion.mission.actions import (
    Arm,
    ChangeSpeed,
    Disarm,
    Finish,
    ReleaseParcel,
    Reposition,
    SetMode,
    Takeoff,
    Transition,
)
from companion.mission.core import MissionCore
from companion.mission.events import Phase
from companion.mission.inputs import (
    AutopilotText,
    CommandResult,
    ConeVerdict,
    FallbackPin,
    Input,
    JournalFailed,
    LinkStatus,
    OperatorAction,
    OperatorCommand,
    RecipientVerdict,
    StateUpdate,
)
from companion.mission.plan import delivery_plan
from companion.mission.stages import Release
from firmware_bridge.dialect import mavlink
from tests.mission_world import HOME, World, clears_release

FLIGHT = FlightConfig(cruise_alt_m=15.0, handover_alt_m=5.0)
COMMAND_TYPES = [SetMode, Arm, Disarm, Takeoff, Reposition, ChangeSpeed, ReleaseParcel]
TEXTS = [
    "Battery Failsafe", "Circle fence breached", "Fence breach cleared", "GCS Failsafe Cleared",
    "SCW: companion silent 5.1 s, mode 6", "PreArm: Need Position Estimate", "Arming motors",
]  # fmt: skip
MODES = ["LOITER", "RTL", "LAND", "BRAKE", "STABILIZE", "GUIDED", "ALT_HOLD"]
REASONS = [None, None, "person inside the descent cone, 4 deg off vertical"]

disruption = st.one_of(
    st.tuples(st.just("refuse"), st.sampled_from(range(len(COMMAND_TYPES)))),
    st.tuples(st.just("timeout"), st.sampled_from(range(len(COMMAND_TYPES)))),
    st.tuples(st.just("ignore_targets"), st.booleans()),
    st.tuples(st.just("mode"), st.sampled_from(MODES)),
    st.tuples(st.just("text"), st.sampled_from(TEXTS)),
    st.tuples(st.just("link"), st.floats(0.0, 20.0)),
    st.tuples(st.just("verdict"), st.tuples(st.sampled_from(REASONS), st.floats(0.0, 3.0))),
    st.tuples(st.just("operator"), st.sampled_from(list(OperatorAction))),
    st.tuples(st.just("journal"), st.just(0)),
    st.tuples(st.just("battery"), st.integers(0, 100)),
    st.tuples(st.just("disarm"), st.just(0)),
    st.tuples(st.just("arm_refuse"), st.sampled_from(["Arm: Battery 1 low voltage failsafe",
                                                      "PreArm: Gyros inconsistent"])),
    st.tuples(st.just("recipient"), st.tuples(st.sampled_from(["m1", "m2"]),
                                              st.sampled_from([0.0, 1.0, 3.0, -3.0]),
                                              st.booleans(), st.booleans(),
                                              st.sampled_from([None, 0.3, 0.7, float("nan")]))),
    st.tuples(st.just("pin"), st.tuples(st.sampled_from(["m1", "m2"]), st.booleans())),
)  # fmt: skip
#: Something happening after some half-second steps of flight, so that runs reach every
#: phase of the flight (about 90 steps long) before something goes wrong.
op = st.tuples(st.integers(0, 40), disruption)


class Checker:
    """Feeds the core and checks every action as it comes out."""

    def __init__(self, world: World, core: MissionCore) -> None:
        self.world = world
        self.core = core
        self.pilot = False
        self.finishes = 0
        self.after_finish: list[object] = []
        self.released: list[str] = []
        self.aborts: list[tuple[Transition, bool]] = []
        self.commands_after_abort: list[object] = []
        self.transitions: list[Transition] = []
        self.cleared: set[str] = set()

    def feed(self, event: Input | None = None) -> None:
        if isinstance(event, RecipientVerdict | FallbackPin) and clears_release(self.core, event):
            self.cleared.add(event.drop_id)
        # What the core knew of the vehicle when it decided: armed and off the ground.
        seen = event.state if isinstance(event, StateUpdate) else self.core.state
        airborne = (
            seen is not None
            and seen.armed
            and seen.landed_state != mavlink.MAV_LANDED_STATE_ON_GROUND
        )
        actions = self.core.start() if event is None else self.core.handle(event)
        pending: list[Input] = []
        for action in actions:
            if self.finishes:
                self.after_finish.append(action)
            if isinstance(action, Transition):
                self.transitions.append(action)
                if action.event == "abort":
                    self.aborts.append((action, airborne))
                    if action.detail["action"] == "PILOT":
                        self.pilot = True
                if action.phase is Phase.ABORT and action.event == "pilot":
                    self.pilot = True
            elif isinstance(action, Finish):
                self.finishes += 1
            else:
                assert not self.pilot, f"{action} after a pilot took over"
                if self.aborts:
                    self.commands_after_abort.append(action)
                if isinstance(action, ReleaseParcel):
                    assert isinstance(self.core.stage, Release), self.core.stage
                    assert self.core.phase is Phase.RELEASE
                    self.released.append(self.core.stage.drop_id)
                    assert len(self.released) == len(set(self.released))
                    drop = self.core.plan.drop(self.core.stage.drop_id)
                    assert drop is not None
                    if drop.requires_recipient:
                        assert drop.drop_id in self.cleared, "released without a clearance"
                pending += self.world.answer(action)
        for event in pending:
            self.feed(event)


# 4,000 sequences (about 16 s on two cores) keep the suite inside its time budget; run it
# with more (edit max_examples) when the core's stages change.
@settings(
    max_examples=4_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(op, max_size=12), st.booleans())
def test_invariants_hold_over_random_event_sequences(ops, recipient_check):
    world = World(speed_xy=8.0, speed_z=2.5, ready_at=1.0)
    plan = delivery_plan("m1", offset(*HOME, 40.0, 120.0), FLIGHT, recipient_check=recipient_check)
    core = MissionCore(plan)
    check = Checker(world, core)
    check.feed()
    for steps, (kind, arg) in ops:
        for _ in range(steps):
            world.step(0.5)
            check.feed(StateUpdate(world.state()))
            check.feed(LinkStatus(True, 0.0))
        if kind in ("refuse", "timeout"):
            world.answers[COMMAND_TYPES[arg]] = _failing(kind, world, COMMAND_TYPES[arg])
        elif kind == "ignore_targets":
            world.ignore_targets = arg
        elif kind == "mode":
            world.mode, world.target = arg, None
        elif kind == "text":
            check.feed(AutopilotText(4, arg, world.t))
        elif kind == "link":
            check.feed(LinkStatus(arg < 1.0, arg))
        elif kind == "verdict":
            reason, age = arg
            check.feed(ConeVerdict(world.t - age, reason))
        elif kind == "operator":
            check.feed(OperatorCommand(arg, "test"))
        elif kind == "journal":
            check.feed(JournalFailed("disk full"))
        elif kind == "battery":
            world.battery_pct = arg
        elif kind == "disarm":
            world.armed = False
        elif kind == "arm_refuse":
            world.arm_refusals, world.arm_texts = 1, (arg,)
        elif kind == "recipient":
            drop, age, matched, live, distance = arg
            check.feed(RecipientVerdict(drop, world.t - age, matched, live, distance, 0.6, 10))
        elif kind == "pin":
            check.feed(FallbackPin(*arg, "test"))
    # Then the faults stop and time goes on: from wherever it was left, every run must end
    # (delivered, or aborted with its reason), if only by a timeout.
    world.answers.clear()
    world.ignore_targets, world.arm_refusals = False, 0
    end = world.t + 1300.0
    while not core.finished and world.t < end:
        world.step(1.0)
        check.feed(StateUpdate(world.state()))
        check.feed(LinkStatus(True, 0.0))
    assert core.finished, core.stage
    event("outcome: " + ("delivered" if core.outcome == "delivered" else "aborted"))
    event(f"released: {bool(check.released)}" + (" (recipient check)" if recipient_check else ""))
    event(f"ended in: {check.transitions[-1].phase.value if check.aborts else 'done'}")
    if check.aborts:
        event(f"aborted from: {check.aborts[0][0].detail['phase']}")
    assert check.finishes == 1 and check.after_finish == []
    ended = [t for t in check.transitions if t.phase is Phase.DONE or t.event == "abort"]
    assert len(ended) == 1
    if ended[0].phase is Phase.DONE:
        assert core.outcome == "delivered" and check.released == ["m1"]
    else:
        assert core.outcome and core.outcome == ended[0].detail["reason"]
        ((abort, airborne),) = check.aborts
        action = abort.detail["action"]
        assert action in ("RTL", "LAND", "NONE", "PILOT", "AUTOPILOT", "FAILSAFE")
        if action in ("RTL", "LAND"):
            assert airborne
        if action == "NONE":
            assert not airborne
        if action in ("PILOT", "AUTOPILOT", "FAILSAFE"):
            assert check.commands_after_abort == []
        elif action == "NONE":
            assert all(isinstance(c, Disarm) for c in check.commands_after_abort)
        else:
            assert all(isinstance(c, SetMode) for c in check.commands_after_abort)
            modes = [c.mode for c in check.commands_after_abort]
            assert modes in ([], ["RTL"], ["LAND"], ["RTL", "LAND"]), modes


def _failing(kind: str, world: World, command_type: type):
    """An answer that refuses (or times out) the next command of a type, once."""
    used = []

    def answer(action) -> CommandResult | None:
        if used:
            return None
        used.append(action)
        if kind == "refuse":
            return CommandResult(action.token, False, "MAV_RESULT_FAILED")
        return CommandResult(action.token, False, "timeout", "no COMMAND_ACK")

    return answer
