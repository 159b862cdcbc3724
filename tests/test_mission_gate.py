"""The release gate of a hand-over: a drop whose plan checks its recipient releases the parcel
only after a verified, live and fresh face match, or a valid fallback PIN, for that drop,
given during its recipient check; otherwise the parcel is flown home. Driven through the core
in the scripted world (tests/mission_world.py), over random input sequences (hypothesis), and
proved the only way to the gripper by reading the source (`ast`)."""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from companion.config import FlightConfig
from companion.geo import offset
from companion.mission.actions import Finish, ReleaseParcel, Transition
from companion.mission.core import MissionCore
from companion.mission.events import Phase
from companion.mission.handover import MAX_WRONG_PINS, Clearance, release_refusal
from companion.mission.inputs import (
    CommandResult,
    FallbackPin,
    Input,
    LinkStatus,
    OperatorAction,
    OperatorCommand,
    RecipientVerdict,
    StateUpdate,
)
from companion.mission.plan import (
    RECIPIENT_HANDOVER,
    DropLeg,
    HandoverStep,
    LandLeg,
    Limits,
    MissionPlan,
    ReturnLeg,
    TakeoffLeg,
    TransitLeg,
    Waypoint,
    delivery_plan,
)
from companion.mission.stages import Release, VerifyRecipient
from firmware_bridge.dialect import mavlink
from tests.mission_world import HOME, World, clears_release

ROOT = Path(__file__).resolve().parents[1]
FLIGHT = FlightConfig(cruise_alt_m=15.0, handover_alt_m=5.0, recipient_timeout_s=20.0)
LIVENESS = (("ear_baseline", 0.31), ("ear_min", 0.12), ("blinks", 1.0))


def recipient_plan(flight: FlightConfig = FLIGHT, distance_m: float = 60.0) -> MissionPlan:
    return delivery_plan("m1", offset(*HOME, distance_m, 45.0), flight, recipient_check=True)


def verdict(world: World, **changes: object) -> RecipientVerdict:
    """A verified, live verdict for drop m1 decided now; `changes` spoil it."""
    fields: dict[str, object] = {
        "drop_id": "m1",
        "decided_at_s": world.t,
        "matched": True,
        "live": True,
        "distance": 0.38,
        "threshold": 0.6,
        "frames": 12,
        "liveness": LIVENESS,
        "reason": "",
    }
    fields.update(changes)
    return RecipientVerdict(**fields)  # type: ignore[arg-type]


def in_check(make: Callable[[World], list[Input]], after_s: float = 1.0):
    """A hook that acts once, `after_s` into the recipient check."""
    started: list[float] = []
    fired: list[float] = []

    def hook(world: World, core: MissionCore) -> list[Input]:
        if fired or not isinstance(core.stage, VerifyRecipient):
            return []
        if not started:
            started.append(world.t)
        if world.t - started[0] < after_s:
            return []
        fired.append(world.t)
        return make(world)

    return hook


def fly(world: World, plan: MissionPlan | None = None) -> MissionCore:
    core = MissionCore(plan or recipient_plan())
    world.run(core)
    return core


def releases(world: World) -> list[ReleaseParcel]:
    return [a for _, a in world.actions if isinstance(a, ReleaseParcel)]


def abort_of(world: World) -> Transition:
    return next(t for t in world.transitions() if t.event == "abort")


def flown_home_with_the_parcel(world: World, core: MissionCore) -> None:
    assert core.finished and releases(world) == [] and not world.released
    assert abort_of(world).detail["action"] == "RTL"
    assert not world.armed and world.distance_from_home() < 1.0


# -- the plan --------------------------------------------------------------------------------


def test_an_order_with_a_recipient_checks_right_before_the_release():
    (drop,) = recipient_plan().drops()
    assert drop.steps == RECIPIENT_HANDOVER and drop.requires_recipient
    (plain,) = delivery_plan("p", offset(*HOME, 60.0, 0.0), FLIGHT).drops()
    assert not plain.requires_recipient
    assert recipient_plan().limits.recipient_timeout_s == 20.0  # from [flight]
    # Steps read back from JSON are strings: they become steps.
    back = DropLeg("A", *HOME, 5.0, 30.0, steps=("clear-cone", "verify-recipient", "release"))  # type: ignore[arg-type]
    assert back.steps[1] is HandoverStep.VERIFY_RECIPIENT


@pytest.mark.parametrize(
    "steps",
    [
        (HandoverStep.VERIFY_RECIPIENT, HandoverStep.CLEAR_CONE, HandoverStep.RELEASE),
        (HandoverStep.RELEASE, HandoverStep.VERIFY_RECIPIENT),
        (HandoverStep.VERIFY_RECIPIENT, HandoverStep.VERIFY_RECIPIENT, HandoverStep.RELEASE),
    ],
)
def test_nothing_may_come_between_the_recipient_check_and_the_release(steps):
    with pytest.raises(ValueError, match="right before the release"):
        DropLeg("A", *HOME, 5.0, 30.0, steps=steps)


def test_a_plan_refuses_unknown_steps_and_two_drops_of_one_name():
    with pytest.raises(ValueError, match="'open-anyway' is not a valid HandoverStep"):
        DropLeg("A", *HOME, 5.0, 30.0, steps=("release", "open-anyway"))  # type: ignore[arg-type]
    a = offset(*HOME, 50.0, 0.0)
    with pytest.raises(ValueError, match="drop ids must differ"):
        MissionPlan("x", (TakeoffLeg(30.0), DropLeg("A", *a, 5, 30), DropLeg("A", *a, 5, 30)))


# -- the hand-over in the core ---------------------------------------------------------------


def test_a_verified_live_match_during_the_check_releases_and_everything_is_recorded():
    world = World()
    world.hooks.append(in_check(lambda w: [verdict(w)], after_s=3.0))
    core = fly(world)
    assert core.outcome == "delivered" and world.released and len(releases(world)) == 1
    story = [e for _, e in world.story()]
    i = story.index("verify-recipient")
    assert story[i : i + 4] == ["verify-recipient", "recipient-verdict", "cleared", "released"]
    check = next(t for t in world.transitions() if t.event == "verify-recipient")
    assert check.detail == {"drop": "m1", "timeout_s": 20.0, "max_age_s": 2.0}
    judged = next(t for t in world.transitions() if t.event == "recipient-verdict")
    assert judged.detail == {
        "drop": "m1", "matched": True, "live": True, "distance": 0.38, "threshold": 0.6,
        "frames": 12, "liveness": {"ear_baseline": 0.31, "ear_min": 0.12, "blinks": 1.0},
        "reason": "", "decided_at_s": judged.boot_time_s, "outcome": "cleared", "why": "",
    }  # fmt: skip
    cleared = next(t for t in world.transitions() if t.event == "cleared")
    assert cleared.detail == {"drop": "m1", "by": "face", "source": "identity service"}
    # The drone hovered through the check: nothing was released before it.
    first_release = next(t for t, a in world.actions if isinstance(a, ReleaseParcel))
    assert first_release - check.boot_time_s >= 3.0


def test_no_verdict_times_out_and_the_parcel_is_flown_home():
    world = World()
    core = fly(world)
    assert core.outcome == (
        "recipient not verified within 20 s: no verdict and no fallback PIN came"
    )
    flown_home_with_the_parcel(world, core)
    check = next(t for t in world.transitions() if t.event == "verify-recipient")
    assert abort_of(world).boot_time_s - check.boot_time_s == pytest.approx(20.0, abs=0.2)


@pytest.mark.parametrize(
    ("spoil", "why"),
    [
        ({"live": False, "reason": "no blink in 40 frames"},
         "liveness check failed: no blink in 40 frames"),
        ({"matched": False, "distance": 0.81, "reason": "2 of 5 frames matched"},
         "face not matched (distance 0.810, threshold 0.600): 2 of 5 frames matched"),
        ({"matched": False, "distance": None, "reason": "no face"},
         "face not matched (no face, threshold 0.600): no face"),
        ({"distance": 0.72}, "a match claimed at distance 0.720, above 0.600"),
        ({"distance": None}, "a match without a distance"),
        ({"frames": 0}, "a verdict on no camera frames"),
        ({"matched": False, "live": False, "distance": 0.9},
         "face not matched (distance 0.900, threshold 0.600), liveness check failed"),
    ],
    ids=["not live", "far", "no face", "far match claimed", "no distance", "no frames", "both"],
)  # fmt: skip
def test_a_fresh_verdict_that_does_not_clear_ends_the_hand_over(spoil, why):
    world = World()
    world.hooks.append(in_check(lambda w: [verdict(w, **spoil)]))
    core = fly(world)
    assert core.outcome == f"recipient not verified: {why}"
    flown_home_with_the_parcel(world, core)
    judged = next(t for t in world.transitions() if t.event == "recipient-verdict")
    assert judged.detail["outcome"] == "refused" and judged.detail["why"] == why


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda w: verdict(w, decided_at_s=w.t - 2.5), "stale: decided 2.5 s ago (at most 2 s)"),
        (lambda w: verdict(w, decided_at_s=w.t + 3.0), "decided 3.0 s ahead of the autopilot"),
        (lambda w: verdict(w, distance=math.nan), "malformed verdict: distance is not a finite"),
        (lambda w: verdict(w, distance=-0.1), "distance is not a finite number of at least 0"),
        (lambda w: verdict(w, matched="yes"), "malformed verdict: matched is not true or false"),
        (lambda w: verdict(w, liveness=tuple((f"x{i}", 0.1) for i in range(128))),
         "malformed verdict: liveness must be at most 8 (name, number) pairs"),
        (lambda w: verdict(w, liveness=(("landmarks", 0.2),)),
         "malformed verdict: liveness figure 'landmarks' is named like biometric data"),
        (lambda w: verdict(w, threshold=math.inf), "malformed verdict: threshold is not"),
    ],
    ids=["stale", "future", "nan distance", "negative distance", "truthy matched", "an array",
         "landmarks", "inf"],
)  # fmt: skip
def test_a_stale_or_malformed_verdict_never_clears_and_a_good_one_still_can(make, why):
    world = World()
    world.hooks.append(in_check(lambda w: [make(w)], after_s=4.0))
    core = fly(world)
    assert core.outcome is not None and core.outcome.startswith(
        "recipient not verified within 20 s: "
    )
    assert why in core.outcome
    flown_home_with_the_parcel(world, core)
    ignored = next(t for t in world.transitions() if t.event == "recipient-verdict")
    assert ignored.detail["outcome"] == "ignored" and why in ignored.detail["why"]
    # Numbers and short words only reach the journal, whatever came in.
    assert len(ignored.detail["liveness"]) <= 8
    assert "landmarks" not in ignored.detail["liveness"]
    # The same spoilt verdict, then a good one: the hand-over goes on.
    world = World()
    world.hooks += [in_check(lambda w: [make(w)], 4.0), in_check(lambda w: [verdict(w)], 5.0)]
    assert fly(world).outcome == "delivered"


def test_a_verdict_for_another_drop_or_outside_the_check_clears_nothing():
    def early(world: World, core: MissionCore) -> list[Input]:
        # During the descent, a verdict for this drop: before its check, so not for it.
        if core.phase is Phase.DESCEND and not sent:
            sent.append(world.t)
            return [verdict(world)]
        return []

    sent: list[float] = []
    world = World()
    world.hooks += [
        early,
        in_check(lambda w: [verdict(w, drop_id="m2")], 1.0),
        # Decided before the check began, handed in during it.
        in_check(lambda w: [verdict(w, decided_at_s=sent[0])], 2.0),
    ]
    core = fly(world)
    assert core.outcome is not None and core.outcome.startswith(
        "recipient not verified within 20 s: decided at"
    )
    flown_home_with_the_parcel(world, core)
    ignored = [t.detail for t in world.transitions() if t.event == "recipient-ignored"]
    assert [d["why"] for d in ignored] == [
        "no recipient check under way (waiting for the hand-over altitude)",
        "for another drop: the recipient check is for drop m1",
    ]
    assert all(d["input"] == "verdict" and d["distance"] == 0.38 for d in ignored)


def test_a_valid_fallback_pin_releases():
    world = World()
    world.hooks.append(in_check(lambda w: [FallbackPin("m1", True, "sms:+447700900123")], 2.0))
    core = fly(world)
    assert core.outcome == "delivered" and len(releases(world)) == 1
    pin = next(t for t in world.transitions() if t.event == "recipient-pin")
    assert pin.detail == {
        "drop": "m1", "valid": True, "source": "sms:+447700900123", "outcome": "cleared"
    }  # fmt: skip
    cleared = next(t for t in world.transitions() if t.event == "cleared")
    assert cleared.detail == {"drop": "m1", "by": "pin", "source": "sms:+447700900123"}


def test_an_invalid_pin_does_not_release_and_too_many_end_the_hand_over():
    world = World()
    world.hooks.append(in_check(lambda w: [FallbackPin("m1", False, "sms:+1")], 2.0))
    core = fly(world)
    assert core.outcome == (
        "recipient not verified within 20 s: no verdict and no fallback PIN came"
    )
    flown_home_with_the_parcel(world, core)
    # A wrong PIN, then the right one: released.
    world = World()
    world.hooks += [
        in_check(lambda w: [FallbackPin("m1", False, "sms:+1")], 1.0),
        in_check(lambda w: [FallbackPin("m1", True, "sms:+1")], 2.0),
    ]
    assert fly(world).outcome == "delivered"
    # MAX_WRONG_PINS wrong ones: home at once, and a right one after that is too late.
    world = World()
    world.hooks += [
        in_check(lambda w: [FallbackPin("m1", False, "sms:+1")] * MAX_WRONG_PINS, 1.0),
        in_check(lambda w: [FallbackPin("m1", True, "sms:+1")], 2.0),
    ]
    core = fly(world)
    assert core.outcome == f"recipient not verified: {MAX_WRONG_PINS} wrong fallback PINs"
    flown_home_with_the_parcel(world, core)
    late = [t for t in world.transitions() if t.event == "recipient-ignored"]
    assert late and late[0].detail["why"] == "the mission is aborting"


def test_a_pin_for_another_drop_does_not_release():
    world = World()
    world.hooks.append(in_check(lambda w: [FallbackPin("m2", True, "sms:+1")], 1.0))
    core = fly(world)
    flown_home_with_the_parcel(world, core)


def test_a_plain_delivery_releases_as_before_and_ignores_recipient_inputs():
    world = World()
    world.hooks.append(
        lambda w, c: (
            [verdict(w, matched=False), FallbackPin("m1", False, "sms:+1")]
            if c.phase is Phase.RELEASE and not w.released
            else []
        )
    )
    core = fly(world, delivery_plan("m1", offset(*HOME, 60.0, 45.0), FLIGHT))
    assert core.outcome == "delivered" and len(releases(world)) == 1
    assert "verify-recipient" not in [e for _, e in world.story()]


def test_the_gate_itself():
    plan = recipient_plan()
    plain = delivery_plan("p", offset(*HOME, 60.0, 0.0), FLIGHT)
    face = Clearance("m1", "face", 100.0, "identity service")
    assert release_refusal(plain, "p", None, 5.0) is None
    assert release_refusal(plan, "m1", None, 100.0) == (
        "no verified, live match and no valid fallback PIN for drop m1"
    )
    assert release_refusal(plan, "m1", face, 101.0) is None
    assert release_refusal(plan, "m1", face, 102.5) == "the match for drop m1 is no longer fresh"
    assert release_refusal(plan, "m1", face, None) is not None
    assert release_refusal(plan, "m1", Clearance("m2", "pin", 0.0, "x"), 100.0) is not None
    assert release_refusal(plan, "m1", Clearance("m1", "pin", 0.0, "x"), 500.0) is None
    assert release_refusal(plan, "zz", face, 100.0) == "drop 'zz' is not in the plan"


def test_the_release_step_refuses_without_a_clearance_even_if_reached():
    # Were the check wrong (it says done, but gave no clearance), the Release step itself
    # still refuses: the gate is there, not in the check.
    world = World(t=3.0, armed=True, mode="GUIDED", alt=5.0)
    core = MissionCore(recipient_plan())
    core.start(world.state())
    core._index = next(i for i, s in enumerate(core._stages) if isinstance(s, VerifyRecipient))
    core.phase = Phase.RELEASE
    check = core.stage
    assert isinstance(check, VerifyRecipient)
    check.started_at, check._cleared = world.t, True
    actions = core.handle(StateUpdate(world.state()))
    assert not any(isinstance(a, ReleaseParcel) for a in actions)
    abort = next(a for a in actions if isinstance(a, Transition) and a.event == "abort")
    assert abort.detail["reason"] == (
        "recipient not verified: no verified, live match and no valid fallback PIN for drop m1"
    )


# -- over random input sequences --------------------------------------------------------------


TWO_DROPS = MissionPlan(
    "two",
    (
        TakeoffLeg(15.0),
        TransitLeg((Waypoint(*offset(*HOME, 30.0, 90.0), 15.0),), to="drop A"),
        DropLeg("A", *offset(*HOME, 30.0, 90.0), 5.0, 15.0, RECIPIENT_HANDOVER),
        TransitLeg((Waypoint(*offset(*HOME, 30.0, 0.0), 15.0),), to="drop B"),
        DropLeg("B", *offset(*HOME, 30.0, 0.0), 5.0, 15.0, RECIPIENT_HANDOVER),
        ReturnLeg(),
        LandLeg(),
    ),
    limits=Limits(recipient_timeout_s=8.0),
)
ONE_DROP = recipient_plan(FlightConfig(cruise_alt_m=15.0, recipient_timeout_s=8.0), 30.0)
DROPS = ["m1", "A", "B", "x"]

_verdict = st.builds(
    lambda drop, age, matched, live, distance, threshold, frames: (
        "verdict",
        drop,
        age,
        matched,
        live,
        distance,
        threshold,
        frames,
    ),
    st.sampled_from(DROPS),
    st.sampled_from([0.0, 0.5, 1.9, 2.1, 5.0, -1.0, -2.5, 30.0]),
    st.booleans(),
    st.booleans(),
    st.sampled_from([None, 0.2, 0.59, 0.6, 0.61, 1.1, math.nan, -math.inf]),
    st.sampled_from([0.6, 0.6, 0.0, math.nan]),
    st.sampled_from([0, 1, 10]),
)
#: Verdicts that nearly or just clear: the right drop or its neighbour, fresh or nearly stale.
_near_verdict = st.builds(
    lambda drop, age, distance, frames: ("verdict", drop, age, True, True, distance, 0.6, frames),
    st.sampled_from(["m1", "A", "B"]),
    st.sampled_from([0.0, 1.0, 2.0, 2.01]),
    st.sampled_from([0.2, 0.6, 0.6001]),
    st.sampled_from([0, 1, 10]),
)
given_input = st.one_of(
    _verdict,
    _near_verdict,
    st.tuples(st.just("pin"), st.sampled_from(DROPS), st.booleans()),
    # Now and then something else: an operator's request, a gripper that refuses.
    st.sampled_from([("operator", a) for a in OperatorAction] + [("refuse-release", 0)]),
)
#: (steps of half a second before the input; whether they count from the next recipient
#: check, so that many inputs land in one; the input).
op = st.tuples(st.integers(0, 30), st.booleans(), given_input)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([ONE_DROP, TWO_DROPS]), st.lists(op, max_size=10))
def test_no_release_without_a_clearance_given_in_that_drops_check(plan, ops):
    world = World(speed_xy=8.0, speed_z=2.5, ready_at=1.0)
    core = MissionCore(plan)
    cleared: set[str] = set()
    released: list[str] = []
    in_check: list[Input] = []

    def feed(given: Input | None) -> None:
        if isinstance(given, RecipientVerdict | FallbackPin):
            if isinstance(core.stage, VerifyRecipient) and core.phase is Phase.RELEASE:
                in_check.append(given)
            if clears_release(core, given):
                cleared.add(given.drop_id)
        actions = core.start() if given is None else core.handle(given)
        pending: list[Input] = []
        for action in actions:
            if isinstance(action, ReleaseParcel):
                stage = core.stage
                assert isinstance(stage, Release)
                assert stage.drop_id in cleared, f"released {stage.drop_id} without clearance"
                released.append(stage.drop_id)
            if not isinstance(action, Transition | Finish):
                pending += world.answer(action)
        for answer in pending:
            feed(answer)

    def step(seconds: float) -> None:
        world.step(seconds)
        feed(StateUpdate(world.state()))
        feed(LinkStatus(True, 0.0))

    feed(None)
    for steps, at_check, what in ops:
        if at_check:
            for _ in range(200):
                if core.finished or isinstance(core.stage, VerifyRecipient):
                    break
                step(0.5)
            steps %= 8
        for _ in range(steps):
            step(0.5)
        kind = what[0]
        if kind == "verdict":
            _, drop, age, matched, live, distance, threshold, frames = what
            feed(RecipientVerdict(drop, world.t - age, matched, live, distance, threshold,
                                  frames, LIVENESS))  # fmt: skip
        elif kind == "pin":
            feed(FallbackPin(what[1], what[2], "test"))
        elif kind == "operator":
            feed(OperatorCommand(what[1], "test"))
        else:  # the gripper refuses once
            world.answers[ReleaseParcel] = _refuse_once()
    end = world.t + 1300.0  # an operator's hold left alone ends by the phase timeout
    while not core.finished and world.t < end:
        step(1.0)
    assert core.finished
    assert len(released) == len(set(released))
    if core.outcome == "delivered":
        assert released == [d.drop_id for d in plan.drops()]
    event(f"inputs during a check: {min(len(in_check), 3)}")
    event(f"released: {len(released)}")
    event(f"outcome: {'delivered' if core.outcome == 'delivered' else 'aborted'}")


def _refuse_once() -> Callable[[ReleaseParcel], CommandResult | None]:
    used: list[int] = []

    def answer(action: ReleaseParcel) -> CommandResult | None:
        if used:
            return None
        used.append(action.token)
        return CommandResult(action.token, False, "MAV_RESULT_FAILED")

    return answer


# -- no other way to the gripper -------------------------------------------------------------

#: Every name that opens the gripper, or builds a command that does.
_RELEASE_NAMES = {
    "ReleaseParcel",  # the mission's release command
    "MAV_CMD_DO_GRIPPER",  # MAVLink's gripper command
    "MAV_CMD_DO_SET_SERVO",  # the servo fallback (the gripper is a servo)
    "MAV_CMD_NAV_PAYLOAD_PLACE",  # a mission item that releases on touch-down
    "GRIPPER_ACTION_RELEASE",
    "GRIPPER_RELEASE",
    "Gripper",  # firmware_bridge.payload's gripper
    "payload_place_item",
    "release_refusal",  # the gate: asked in one place only
}
#: The same commands by number, should anything send them as bare integers.
_RELEASE_COMMAND_IDS = {
    mavlink.MAV_CMD_DO_GRIPPER,
    mavlink.MAV_CMD_DO_SET_SERVO,
    mavlink.MAV_CMD_NAV_PAYLOAD_PLACE,
}
#: What sends or holds a command number, and where the number goes among its arguments.
_SENDERS = {"command_long": 0, "command_int": 0, "CommandLong": 0, "CommandInt": 0,
            "command_long_send": 2, "command_int_send": 3, "MissionItem": 2,
            "mission_item_int_send": 4}  # fmt: skip


class _ReleaseFinder(ast.NodeVisitor):
    """Records (file, enclosing function, what) for every use of a release name, every
    import of the payload module, every `.release()` call in a module that imports it, and
    every command sent by a bare number that releases."""

    def __init__(self, path: str, imports_payload: bool) -> None:
        self.path = path
        self.imports_payload = imports_payload
        self.scope: list[str] = []
        self.found: set[tuple[str, str, str]] = set()

    def _add(self, what: str) -> None:
        self.found.add((self.path, ".".join(self.scope) or "<module>", what))

    def _scoped(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        if node.name in _RELEASE_NAMES:
            self._add(f"defines {node.name}")
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scoped

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in _RELEASE_NAMES and isinstance(node.ctx, ast.Load):
            self._add(node.id)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in _RELEASE_NAMES and isinstance(node.ctx, ast.Load):
            self._add(node.attr)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name == "release" and self.imports_payload:
            self._add(".release()")
        if name in ("getattr", "setattr") and any(
            isinstance(a, ast.Constant) and a.value in _RELEASE_NAMES | {"release"}
            for a in node.args
        ):
            self._add(f"{name} of a release name")
        at = _SENDERS.get(name, 0)
        numbers = [*node.args[at : at + 1], *(k.value for k in node.keywords if k.arg == "command")]
        if name in _SENDERS and any(
            isinstance(a, ast.Constant) and a.value in _RELEASE_COMMAND_IDS for a in numbers
        ):
            self._add(f"{name} with a release command number")
        self.generic_visit(node)


def _imports_payload(tree: ast.Module) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "firmware_bridge.payload":
            return True
        if (
            isinstance(node, ast.ImportFrom)
            and node.module == "firmware_bridge"
            and any(alias.name == "payload" for alias in node.names)
        ):
            return True
        if isinstance(node, ast.Import) and any(
            alias.name == "firmware_bridge.payload" for alias in node.names
        ):
            return True
    return False


def _sources() -> Iterator[Path]:
    for folder in ("companion", "firmware_bridge", "sim/harness"):
        yield from sorted((ROOT / folder).rglob("*.py"))


def test_the_gripper_is_reached_only_through_the_release_step_the_runner_and_the_payload():
    found: set[tuple[str, str, str]] = set()
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        rel = path.relative_to(ROOT).as_posix()
        finder = _ReleaseFinder(rel, _imports_payload(tree))
        if finder.imports_payload:
            finder._add("imports firmware_bridge.payload")
        finder.visit(tree)
        found |= finder.found
    actions, stages, runner = (
        "companion/mission/actions.py",
        "companion/mission/stages.py",
        "companion/mission/runner.py",
    )
    handover, payload = "companion/mission/handover.py", "firmware_bridge/payload.py"
    assert found == {
        # The command, and the union of commands it belongs to.
        (actions, "<module>", "defines ReleaseParcel"),
        (actions, "<module>", "ReleaseParcel"),
        # The gate, defined once and asked once: by the Release step, right before it builds
        # the one ReleaseParcel of the whole companion.
        (handover, "<module>", "defines release_refusal"),
        (stages, "Release.start", "release_refusal"),
        (stages, "Release.start", "ReleaseParcel"),
        # The runner: the gripper it drives, and the translation of ReleaseParcel into it.
        (runner, "<module>", "imports firmware_bridge.payload"),
        (runner, "MissionRunner.__init__", "Gripper"),
        (runner, "_release", "ReleaseParcel"),
        (runner, "_release", ".release()"),
        (runner, "<module>", "ReleaseParcel"),  # the command table
        # The payload module: the gripper, its servo fallback, the payload-place item.
        (payload, "<module>", "defines Gripper"),
        (payload, "Gripper.release", "GRIPPER_RELEASE"),
        (payload, "Gripper._act", "GRIPPER_RELEASE"),
        (payload, "Gripper._act", "MAV_CMD_DO_GRIPPER"),
        (payload, "Gripper._act", "MAV_CMD_DO_SET_SERVO"),
        (payload, "<module>", "defines payload_place_item"),
        (payload, "payload_place_item", "MAV_CMD_NAV_PAYLOAD_PLACE"),
        # The simulator loads the parcel into SITL's gripper before flight (a grab: a release
        # there would show up as ".release()").
        ("sim/harness/simulate.py", "<module>", "imports firmware_bridge.payload"),
        ("sim/harness/simulate.py", "run_simulation", "Gripper"),
        # The HIL rig loads the parcel into SITL's gripper the same way (GRIPPER_GRAB).
        ("sim/harness/hil_sitl.py", "SitlWatcher._request", "MAV_CMD_DO_GRIPPER"),
    }, "a new way to the gripper: it must go through the Release step's gate"


def test_the_release_step_asks_the_gate_before_it_builds_the_release():
    tree = ast.parse((ROOT / "companion/mission/stages.py").read_text(encoding="utf-8"))
    release = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "Release")
    start = next(n for n in release.body if isinstance(n, ast.FunctionDef) and n.name == "start")

    def first(match: Callable[[ast.AST], bool]) -> int:
        return min(n.lineno for n in ast.walk(start) if match(n))  # type: ignore[attr-defined]

    asked = first(lambda n: isinstance(n, ast.Name) and n.id == "release_refusal")
    refused = first(lambda n: isinstance(n, ast.Raise))
    built = first(lambda n: isinstance(n, ast.Name) and n.id == "ReleaseParcel")
    assert asked < refused < built
