"""The mission core: a sans-I/O state machine that flies a `MissionPlan`.

Events in (`inputs`: vehicle states, command results, the link's status, camera verdicts,
operator commands, autopilot texts), actions out (`actions`: transitions to journal and
publish, commands to send, the end). No threads, sleeps, sockets or clock reads: the clock is
the autopilot's own boot time from the states it is fed, so every path, abort paths included,
is a deterministic unit test, and one runner binds it to the bridge for the simulator, the
HIL rig and the drone.

On every event the core first checks the guards, then runs the current step's verify, and
starts the next step as soon as one is done (`stages`). The guards, in order:

- the link: the autopilot's heartbeat silent for `link_loss_grace_s` leaves the flight to the
  autopilot's own failsafes (action FAILSAFE);
- the mode: a mode the companion did not command is a failsafe of the autopilot when the
  autopilot says so (a "... Failsafe" or fence text, or MAV_STATE_CRITICAL: action
  AUTOPILOT), otherwise a pilot taking over (PILOT): in both cases the companion stops
  commanding;
- a fence breach the autopilot reports while the mode is still ours (report-only fence): RTL;
- an unexpected disarm in flight; a position lost in flight (LAND);
- the battery: below `min_battery_pct` RTL, below half of it LAND;
- the step's own timeout (RTL in the air, nothing on the ground).

During a drop's descent and hand-over the descent cone is checked: a camera verdict with a
reason, or (when the plan has a camera) no fresh frame at all, holds the drone where it is
until a fresh clear frame; holds over one drop add up to at most `max_hold_s`.

A drop with a recipient check releases only with a clearance from that check (`handover`): a
recipient's verdict or fallback PIN is taken by the check of its drop while it runs, and
recorded as ignored at any other time; the Release step asks the release gate before it
opens the gripper.

An abort is a transition with its reason and the action that makes the drone safe; the core
then commands that action (RTL, falling back to LAND; a disarm on the ground), or none (pilot,
autopilot failsafe, lost link), and finishes once the vehicle is disarmed.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from companion.mission.actions import (
    Action,
    Command,
    Disarm,
    Finish,
    Reposition,
    SetMode,
    Transition,
)
from companion.mission.events import Phase
from companion.mission.handover import Clearance, input_record
from companion.mission.inputs import (
    AutopilotText,
    CommandResult,
    ConeVerdict,
    FallbackPin,
    Input,
    JournalFailed,
    LimitsUploaded,
    LinkStatus,
    OperatorAction,
    OperatorCommand,
    ParamsRead,
    RecipientVerdict,
    StateUpdate,
    SystemsChecked,
)
from companion.mission.plan import MissionPlan
from companion.mission.stages import (
    MODE_CONFIRM_S,
    Abort,
    Descend,
    Landing,
    Stage,
    VerifyRecipient,
    expand,
)
from firmware_bridge.dialect import mavlink
from firmware_bridge.state import VehicleState

#: Autopilot texts that say a failsafe changed the mode (ArduCopter events.cpp, fence.cpp, and
#: our companion_watchdog.lua), as opposed to a pilot.
_FAILSAFE_TEXT = re.compile(
    r"\bfailsafe\b(?! cleared)|fences? breached|^SCW: companion silent", re.IGNORECASE
)
#: AC_Fence::print_fence_message(..., "breached").
_FENCE_BREACH_TEXT = re.compile(r"fences? breached$", re.IGNORECASE)
#: How long (autopilot seconds) a text may explain a mode change.
_TEXT_WINDOW_S = 5.0
#: A position missing this long in flight is a lost position, not a dropped message.
_POSITION_LOSS_S = 2.0


@dataclass
class _Aborting:
    """An abort under way: the action, whether the vehicle was flying, and the command (if
    any) whose answer decides the next fallback."""

    action: str
    airborne: bool
    started_at: float | None
    mode_token: int | None = None
    mode: str | None = None


class MissionCore:
    """Flies one `MissionPlan`: `start()` once, then `handle(event)` for every event; both
    return the actions to carry out, in order. `finished` and `outcome` say how it ended."""

    def __init__(self, plan: MissionPlan) -> None:
        self.plan = plan
        self.phase = Phase.PREFLIGHT
        self.finished = False
        self.outcome: str | None = None
        #: What the core knows, for its steps.
        self.now: float | None = None
        self.state: VehicleState | None = None
        self.home: tuple[float, float] | None = None
        #: When the take-off command was sent (autopilot time): drop windows count from it.
        self.took_off_at: float | None = None
        self.params: dict[str, float] = {}
        self.released: list[str] = []
        #: Leave to release, per drop, from its recipient check (taken by its release).
        self.clearances: dict[str, Clearance] = {}
        self._stages: list[Stage] = expand(plan)
        self._index = 0
        self._actions: list[Action] = []
        self._next_token = 1
        self._owners: dict[int, Stage | None] = {}
        self._expected_mode: str | None = None
        self._mode_from: str | None = None
        self._texts: deque[tuple[float | None, str]] = deque(maxlen=32)
        self._fence_breach: str | None = None
        self._verdict: ConeVerdict | None = None
        self._cone_since: float | None = None
        self._cone_held_s = 0.0
        self._operator_since: float | None = None
        self._link: LinkStatus | None = None
        self._no_position_since: float | None = None
        self._aborting: _Aborting | None = None
        #: A refusal waiting for the next heartbeat: (abort, heartbeats then, deadline).
        self._deferred: tuple[Abort, int, float] | None = None

    # -- what the steps use ------------------------------------------------------------------

    @property
    def stage(self) -> Stage:
        """The step being flown (the last one once the mission is over)."""
        return self._stages[min(self._index, len(self._stages) - 1)]

    @property
    def holding(self) -> bool:
        """True while the drone holds in place for the descent cone or an operator."""
        return self._cone_since is not None or self._operator_since is not None

    def send(self, make: Callable[[int], Command]) -> int:
        """Queue a command built by `make(token)` for the current step, which gets its answer.
        Returns the token."""
        return self._send(make, self.stage)

    def _send(self, make: Callable[[int], Command], owner: Stage | None) -> int:
        """Queue a command; its answer goes to `owner` (None: the core's own, a hold or an
        abort's command)."""
        token = self._next_token
        self._next_token += 1
        self._owners[token] = owner
        self._actions.append(make(token))
        return token

    def record(self, event: str, **detail: object) -> None:
        """Journal and publish `event` in the current phase."""
        self._actions.append(Transition(self.phase, event, dict(detail), self.now))

    def expect_mode(self, mode: str) -> None:
        """The companion has asked for `mode`: until the heartbeat shows it, the mode it is
        leaving is not a pilot's doing."""
        self._mode_from = self.state.mode if self.state is not None else None
        self._expected_mode = mode

    def cone_hold_reason(self) -> str | None:
        """Why the descent cone is not clear now, or None. With a camera in the plan, no
        verdict or a stale one is a reason: a missing frame never counts as clear."""
        verdict, now = self._verdict, self.now
        limit = self.plan.limits.camera_max_age_s
        if verdict is None or now is None:
            return "no camera frame yet" if self.plan.camera_required else None
        age = now - verdict.frame_time_s
        if age > limit:
            if self.plan.camera_required:
                return f"no fresh camera frame (the newest is {age:.1f} s old)"
            return None
        return verdict.reason

    # -- driving the core --------------------------------------------------------------------

    def start(self, state: VehicleState | None = None) -> list[Action]:
        """Begin: enter the first phase and start the first step, at the time of `state`
        (the vehicle as it is now, if known)."""
        if state is not None:
            self._absorb(StateUpdate(state))
        first = self.stage
        self.phase = first.phase
        self._actions.append(
            Transition(self.phase, "enter", {**first.enter_detail(), "step": 0}, self.now)
        )
        first.start(self)
        return self._take()

    def handle(self, event: Input) -> list[Action]:
        """Take one event; returns the actions it leads to (none once finished)."""
        if self.finished:
            return []
        try:
            self._absorb(event)
            if self._aborting is not None:
                self._abort_step()
            else:
                self._fly()
        except Abort as abort:
            self._begin_abort(abort)
        return self._take()

    def _take(self) -> list[Action]:
        actions, self._actions = self._actions, []
        return actions

    # -- taking events in --------------------------------------------------------------------

    def _absorb(self, event: Input) -> None:
        if isinstance(event, StateUpdate):
            self.state = event.state
            if event.state.boot_time_s is not None:
                self.now = event.state.boot_time_s
        elif isinstance(event, LinkStatus):
            self._link = event
        elif isinstance(event, CommandResult):
            self._on_result(event)
        elif isinstance(event, ParamsRead | LimitsUploaded | SystemsChecked):
            if self._aborting is None:
                self.stage.on_answer(self, event)
        elif isinstance(event, AutopilotText):
            self._texts.append((event.boot_time_s, event.text))
            if _FENCE_BREACH_TEXT.search(event.text):
                self._fence_breach = event.text
        elif isinstance(event, ConeVerdict):
            if self._verdict is None or event.frame_time_s >= self._verdict.frame_time_s:
                self._verdict = event
        elif isinstance(event, OperatorCommand):
            self._on_operator(event)
        elif isinstance(event, RecipientVerdict | FallbackPin):
            self._on_recipient(event)
        elif isinstance(event, JournalFailed):
            if self._aborting is not None:
                self.record("journal-failed", error=event.error)
                return
            raise Abort(f"journal failure: {event.error}", "RTL")

    def _on_result(self, result: CommandResult) -> None:
        if result.token not in self._owners:
            return
        owner = self._owners.pop(result.token)
        if self._aborting is not None:
            self._abort_result(result)
            return
        try:
            if owner is None:
                if not result.accepted:
                    raise Abort(f"holding position refused ({result.result})")
            elif owner is self.stage:
                owner.on_result(self, result)
        except Abort as abort:
            if result.accepted:
                raise
            self._refused(abort, result)

    def _refused(self, abort: Abort, result: CommandResult) -> None:
        """A command was refused or went unanswered. Unanswered with the link down: the link
        is the problem. Refused in flight: a pilot may have just switched modes (ArduCopter
        answers DENIED to a GUIDED target outside GUIDED) before a heartbeat has shown it, and
        an RTL now would take the drone from them, so the abort waits for the next heartbeat
        (at most `MODE_CONFIRM_S`); the mode guard decides first if the mode has changed."""
        link = self._link
        if result.result in ("timeout", "link down") and link is not None and not link.up:
            raise Abort(f"link to the autopilot lost for {link.silent_s:.0f} s", "FAILSAFE")
        state = self.state
        if self.stage.airborne and state is not None:
            if self._deferred is None:  # the first refusal is the one to report
                deadline = (self.now or 0.0) + MODE_CONFIRM_S
                self._deferred = (abort, state.heartbeats, deadline)
            return
        raise abort

    def _on_operator(self, command: OperatorCommand) -> None:
        action, source = command.action, command.source
        if self._aborting is not None:
            self.record("operator-ignored", request=action.value, source=source,
                        why="the mission is already aborting")  # fmt: skip
            return
        if action is OperatorAction.ABORT:
            raise Abort(f"operator abort ({source})", "RTL")
        if action is OperatorAction.LAND:
            raise Abort(f"operator land ({source})", "LAND")
        stage = self.stage
        if action is OperatorAction.HOLD:
            if not stage.holdable or self._operator_since is not None:
                self.record("operator-ignored", request="hold", source=source,
                            why=f"cannot hold during {stage.what}")  # fmt: skip
                return
            self._operator_since = self.now
            self.record("hold", reason=f"operator hold ({source})")
            if self._cone_since is None:
                self._hold_here()
        elif self._operator_since is not None:  # RESUME
            held = (self.now or 0.0) - (self._operator_since or 0.0)
            self._operator_since = None
            if stage.started_at is not None:
                stage.started_at += held  # an operator's hold is not the step's own time
            self.record("resume", held_s=round(held, 1), source=source)
            if self._cone_since is None:
                stage.resume(self)
        else:
            self.record("operator-ignored", request="resume", source=source, why="not holding")

    def _on_recipient(self, given: RecipientVerdict | FallbackPin) -> None:
        """A recipient's verdict or PIN result: for the check of its drop while it runs;
        recorded as ignored (with its figures, and why) at any other time."""
        stage = self.stage
        if self._aborting is None and isinstance(stage, VerifyRecipient):
            if isinstance(given.drop_id, str) and given.drop_id == stage.drop_id:
                stage.on_recipient(self, given)
                return
            why = f"for another drop: the recipient check is for drop {stage.drop_id}"
        elif self._aborting is not None:
            why = "the mission is aborting"
        else:
            why = f"no recipient check under way (waiting for {stage.what})"
        self.record("recipient-ignored", **input_record(given), why=why)

    # -- flying ------------------------------------------------------------------------------

    def _fly(self) -> None:
        self._guards()
        if self._deferred is not None:
            abort, heartbeats, deadline = self._deferred
            state, now = self.state, self.now or 0.0
            if (state is not None and state.heartbeats > heartbeats) or now >= deadline:
                self._deferred = None
                raise abort
            return
        self._cone()
        while not self.finished:
            stage = self.stage
            if stage.started_at is None:
                stage.started_at = self.now
            if stage.verify(self):
                self._advance()
                continue
            self._check_timeout(stage)
            return

    def _advance(self) -> None:
        self._index += 1
        if self._index >= len(self._stages):
            self._complete()
            return
        stage = self.stage
        if stage.phase is not self.phase:
            self.phase = stage.phase
            detail = {**stage.enter_detail(), "step": self._index}
            self._actions.append(Transition(self.phase, "enter", detail, self.now))
        if isinstance(stage, Descend):
            self._cone_held_s = 0.0  # each drop has its own bound on holds
        stage.started_at = self.now
        stage.start(self)

    def _complete(self) -> None:
        drops = [d.drop_id for d in self.plan.drops()]
        self.outcome = "delivered" if drops and self.released == drops else "completed"
        self.phase = Phase.DONE
        self._index = len(self._stages) - 1
        self._actions.append(Transition(Phase.DONE, "enter", {"outcome": self.outcome}, self.now))
        self._finish()

    def _check_timeout(self, stage: Stage) -> None:
        if stage.started_at is None or self.now is None:
            return
        limit = stage.timeout_s(self)
        if self.now - stage.started_at > limit:
            raise Abort(
                f"timed out after {limit:g} s waiting for {stage.what}",
                "LAND" if stage.returning else "RTL",
            )

    def _guards(self) -> None:
        state, stage, limits = self.state, self.stage, self.plan.limits
        link = self._link
        if link is not None and not link.up and link.silent_s > limits.link_loss_grace_s:
            raise Abort(f"link to the autopilot lost for {link.silent_s:.0f} s", "FAILSAFE")
        if state is None:
            return
        self._mode_guard(state)
        if self._fence_breach is not None and stage.airborne:
            text, self._fence_breach = self._fence_breach, None
            report_only = self.params.get("FENCE_ACTION") == 0
            raise Abort(
                f"fence breach reported by the autopilot: {text}",
                "RTL" if report_only else "AUTOPILOT",
            )
        if not stage.airborne:
            return
        if not state.armed and not isinstance(stage, Landing):
            raise Abort("vehicle disarmed unexpectedly", "NONE")
        if state.position is None and state.armed:
            if self._no_position_since is None:
                self._no_position_since = self.now
            elif self.now is not None and self.now - self._no_position_since > _POSITION_LOSS_S:
                raise Abort("the autopilot reports no position", "LAND")
        else:
            self._no_position_since = None
        battery = state.battery.remaining_pct
        if battery is None:
            return
        critical = limits.min_battery_pct / 2
        if battery < critical and not isinstance(stage, Landing):
            raise Abort(f"battery critical: {battery}% < {critical:g}%", "LAND")
        if battery < limits.min_battery_pct and not stage.returning:
            raise Abort(f"battery low: {battery}% < {limits.min_battery_pct:g}%", "RTL")

    def _mode_guard(self, state: VehicleState) -> None:
        expected = self._expected_mode
        if expected is None:
            return
        if state.mode == expected:
            self._mode_from = None
            return
        if self._mode_from is not None and state.mode == self._mode_from:
            return  # the commanded mode has not shown in a heartbeat yet
        why = self._failsafe_text()
        if why is not None or state.system_status == mavlink.MAV_STATE_CRITICAL:
            raise Abort(
                f"autopilot failsafe: {why or 'a failsafe is active'} (mode {state.mode})",
                "AUTOPILOT",
            )
        raise Abort(f"mode changed to {state.mode} outside the companion's control", "PILOT")

    def _failsafe_text(self) -> str | None:
        for at, text in reversed(self._texts):
            if at is not None and self.now is not None and self.now - at > _TEXT_WINDOW_S:
                break
            if _FAILSAFE_TEXT.search(text):
                return text
        return None

    def _cone(self) -> None:
        if not self.stage.cone_guarded:
            return
        reason = self.cone_hold_reason()
        now = self.now or 0.0
        if reason is not None:
            if self._cone_since is None:
                self._cone_since = now
                self.record("hold", reason=reason)
                if self._operator_since is None:
                    self._hold_here()
            held = self._cone_held_s + now - self._cone_since
            if held > self.plan.limits.max_hold_s:
                raise Abort(
                    f"obstacle in the descent cone for {self.plan.limits.max_hold_s:g} s ({reason})"
                )
        elif self._cone_since is not None:
            this_hold = now - self._cone_since
            self._cone_held_s += this_hold
            self._cone_since = None
            self.record("resume", held_s=round(this_hold, 1))
            if self._operator_since is None:
                self.stage.resume(self)

    def _hold_here(self) -> None:
        """Stop where the drone is: a GUIDED target at its own position."""
        state = self.state
        if state is None or state.position is None:
            return
        pos = state.position
        self._send(lambda t: Reposition(t, pos.lat, pos.lon, pos.alt_rel_m), None)

    # -- aborting ----------------------------------------------------------------------------

    def _airborne(self) -> bool:
        state = self.state
        if state is None or not state.armed:
            return False
        if state.landed_state == mavlink.MAV_LANDED_STATE_ON_GROUND:
            return False
        if state.landed_state == mavlink.MAV_LANDED_STATE_UNDEFINED:
            return state.position is None or state.position.alt_rel_m > 0.5
        return True

    def _begin_abort(self, abort: Abort) -> None:
        airborne = self._airborne()
        action = abort.action
        if action in ("RTL", "LAND") and not airborne:
            action = "NONE"
        self.outcome = abort.reason
        self._actions.append(
            Transition(
                Phase.ABORT,
                "abort",
                {"reason": abort.reason, "action": action, "phase": self.phase.value,
                 "step": self._index},
                self.now,
            )
        )  # fmt: skip
        self.phase = Phase.ABORT
        self._cone_since = self._operator_since = None
        self._aborting = _Aborting(action, airborne, self.now)
        if action == "PILOT":
            self._finish()
            return
        self._expected_mode = self._mode_from = None
        state = self.state
        if action in ("RTL", "LAND"):
            if state is not None and state.mode == action:
                self._expected_mode = action
            else:
                self._abort_mode(action)
        elif action == "NONE" and state is not None and state.armed:
            self._send(Disarm, None)
        self._abort_step()

    def _abort_mode(self, mode: str) -> None:
        assert self._aborting is not None
        self._aborting.mode = mode
        self._aborting.mode_token = self._send(lambda t: SetMode(t, mode), None)
        self.expect_mode(mode)

    def _abort_result(self, result: CommandResult) -> None:
        aborting = self._aborting
        assert aborting is not None
        if result.accepted:
            return
        if result.token == aborting.mode_token and aborting.mode == "RTL":
            self.record("abort-action-failed", action="RTL", error=result.result)
            self._abort_mode("LAND")
            return
        self._expected_mode = None
        self.record("abort-action-failed", action=aborting.mode or "DISARM", error=result.result)

    def _abort_step(self) -> None:
        aborting, state = self._aborting, self.state
        assert aborting is not None
        if state is not None and not state.armed:
            self.record("landed" if aborting.airborne else "disarmed")
            self._finish()
            return
        if state is not None and self._expected_mode is not None:
            expected = self._expected_mode
            if state.mode == expected:
                self._mode_from = None
            elif not (self._mode_from is not None and state.mode == self._mode_from):
                self._expected_mode = None
                why = self._failsafe_text()
                if why is None and state.system_status != mavlink.MAV_STATE_CRITICAL:
                    self.record("pilot", mode=state.mode)
                    self._finish()
                    return
                self.record("autopilot", mode=state.mode, text=why or "failsafe active")
        limit = self.plan.limits.phase_timeout_s
        link = self._link
        lost = link is not None and not link.up and link.silent_s > limit
        waited = (
            self.now is not None
            and aborting.started_at is not None
            and self.now - aborting.started_at > limit
        )
        if lost or waited:
            self.record("still-armed", waited_s=limit)
            self._finish()

    def _finish(self) -> None:
        assert self.outcome is not None
        self.finished = True
        self._actions.append(Finish(self.outcome))
