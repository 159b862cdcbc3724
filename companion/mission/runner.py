"""The one runner that binds a `MissionCore` to the world: the bridge, the journal, the bus.

`skycourier sim`, the hardware-in-the-loop rig, the daemon and the tests all fly missions
through it, so what is tested is what flies. It is the only part of a mission with threads:

- the caller's thread runs the event loop: events from the bus (vehicle states, autopilot
  texts, camera verdicts), command results and a steady tick carrying the link's status go
  into the core; its actions come out in order;
- transitions are journaled (SQLite, fsynced) and then published as `MissionEvent`s before
  any command decided with them is sent; if the journal fails, the commands of that step are
  dropped and the core is told (`JournalFailed`), which aborts to RTL: the drone never flies
  on unrecorded;
- commands go to one worker thread that drives them through the bridge (acknowledged,
  retried, timed out there) and hands each result back as an event, so a slow command never
  stalls the loop or an abort; the preflight's requests go there too: the airspace limits
  (`upload_limits`, read back), the parameters, and the companion's own systems (the
  `systems` callable the runner is given: GPS receiver, uplink, wind);
- the hand-over's records (each recipient check, verdict, PIN result, clearance, release),
  every abort and the mission's end also go to the optional `audit` hook (e.g. an append-only
  audit trail) after the journal; a failing hook is treated like a failing journal.

`wait_idle` and `seen_time_s` let a simulator run in lockstep with the companion: the
simulated vehicle waits until the runner has taken in what it sent and its commands are
answered, so no outcome depends on how fast the machine is.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from companion.bus import Bus
from companion.mission.actions import (
    Action,
    Arm,
    ChangeSpeed,
    CheckSystems,
    Command,
    Disarm,
    Finish,
    ReadParams,
    ReleaseParcel,
    Reposition,
    SetMode,
    Takeoff,
    Transition,
    UploadLimits,
)
from companion.mission.core import MissionCore
from companion.mission.events import MissionEvent
from companion.mission.handover import AUDITED_EVENTS
from companion.mission.inputs import (
    AutopilotText,
    CommandResult,
    ConeVerdict,
    FallbackPin,
    GroundStatus,
    Input,
    JournalFailed,
    LimitsUploaded,
    LinkStatus,
    OperatorCommand,
    ParamsRead,
    RecipientVerdict,
    StateUpdate,
    SystemsChecked,
)
from companion.mission.journal import FINISHED_EVENT, Journal, JournalError
from companion.mission.limits_upload import LimitsRefused, upload_limits
from companion.mission.plan import MissionPlan
from firmware_bridge.dialect import mavlink
from firmware_bridge.errors import BridgeError, CommandError, LinkError, ProtocolTimeout
from firmware_bridge.modes import mode_number
from firmware_bridge.payload import Gripper
from firmware_bridge.state import StatusText, VehicleState
from firmware_bridge.vehicle import Vehicle

log = logging.getLogger(__name__)

#: How often the loop tells the core about the link (companion seconds).
TICK_S = 0.1
#: How long a mission waits for the autopilot's first timed message before it starts anyway
#: (its preflight then waits, and times out, on the autopilot's clock).
TELEMETRY_WAIT_S = 10.0

#: Receives audited records: the kind (the mission event's name, or "finished") and its data
#: (the mission id, the phase, the autopilot time and the record's detail: numbers and words).
AuditHook = Callable[[str, dict[str, Any]], None]


class MissionRunner:
    """Flies missions with `vehicle`, journaling to `journal` and publishing on `bus`; the
    hand-over's records, aborts and ends also go to `audit` when given. `systems` reports the
    companion's own systems for a preflight that demands them (without it, such a plan is
    refused on the ground)."""

    def __init__(
        self,
        vehicle: Vehicle,
        journal: Journal,
        bus: Bus,
        *,
        gripper: Gripper | None = None,
        tick_s: float = TICK_S,
        audit: AuditHook | None = None,
        systems: Callable[[], GroundStatus] | None = None,
    ) -> None:
        self.vehicle = vehicle
        self.journal = journal
        self.bus = bus
        self.gripper = gripper or Gripper(vehicle)
        self.tick_s = tick_s
        self.audit = audit
        self.systems = systems
        self._audit_ok = True
        self.core: MissionCore | None = None
        self._events: queue.Queue[Input] = queue.Queue()
        self._commands: queue.Queue[Command | None] = queue.Queue()
        self._idle = threading.Condition()
        self._busy = 0  # events queued or being handled, plus commands not yet sent
        self._seen_time_s: float | None = None
        self._journal_ok = True
        self._journal_error = ""
        self._mission_id = ""
        self._running = False

    # -- what other threads may call ---------------------------------------------------------

    def post(self, event: Input) -> None:
        """Give the mission an event (thread-safe): an operator's command, a camera verdict."""
        with self._idle:
            self._busy += 1
        self._events.put(event)

    @property
    def running(self) -> bool:
        """True while `run` flies a mission."""
        return self._running

    @property
    def idle(self) -> bool:
        """True when every event given so far has been handled and every command it led to
        has gone to the autopilot (answers may still be on their way)."""
        with self._idle:
            return self._busy == 0

    @property
    def seen_time_s(self) -> float | None:
        """The newest autopilot time the mission has taken in."""
        return self._seen_time_s

    def wait_idle(self, timeout: float) -> bool:
        """Wait until `idle`; False if that took longer than `timeout` seconds."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout=timeout)

    # -- flying ------------------------------------------------------------------------------

    def run(self, plan: MissionPlan) -> str:
        """Fly `plan` to its end; returns "delivered" or the reason it was aborted.

        Raises JournalError if the mission cannot even be journaled as started (an id used
        before, an unwritable journal): nothing has been commanded then."""
        self.journal.start_mission(plan.mission_id, plan.as_dict())
        self._mission_id = plan.mission_id
        self._journal_ok = self._audit_ok = True
        core = self.core = MissionCore(plan)
        stops = [
            self.bus.subscribe(VehicleState, self._on_state),
            self.bus.subscribe(StatusText, self._on_text),
            self.bus.subscribe(ConeVerdict, self.post),
            self.bus.subscribe(OperatorCommand, self.post),
            self.bus.subscribe(RecipientVerdict, self.post),
            self.bus.subscribe(FallbackPin, self.post),
        ]
        worker = threading.Thread(target=self._work, name="mission-commands", daemon=True)
        worker.start()
        self._running = True
        try:
            # The mission is timed on the autopilot's clock: start once it has been heard.
            heard = self.vehicle.tracker.wait_for(
                lambda s: s.boot_time_s is not None, TELEMETRY_WAIT_S
            )
            first = heard or self.vehicle.state
            self._seen_time_s = first.boot_time_s
            self._carry_out(core.start(first))
            next_tick = time.monotonic()
            while not core.finished:
                timeout = max(0.0, next_tick - time.monotonic())
                try:
                    event = self._events.get(timeout=timeout)
                except queue.Empty:
                    event = None
                if event is not None:
                    self._handle(core, event)
                    self._done_one()
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self.tick_s
                    link = self.vehicle.link
                    self._handle(core, LinkStatus(link.up, link.heartbeat_age()))
        except Exception:
            # A bug of ours must not leave a flying drone without anyone in charge.
            log.exception("mission %s: the runner failed", plan.mission_id)
            self._return_home_after_failure()
            raise
        finally:
            self._running = False
            for stop in stops:
                stop()
            self._commands.put(None)
            worker.join(timeout=30.0)
            self._drain()
        assert core.outcome is not None
        return core.outcome

    def _return_home_after_failure(self) -> None:
        """Best effort after an internal failure: RTL if the drone is armed and the mode is
        still one the companion commands (a pilot's mode is left alone)."""
        state = self.vehicle.state
        if not state.armed or state.mode not in ("GUIDED", "AUTO"):
            return
        try:
            _set_mode(self, SetMode(0, "RTL"))
        except BridgeError as exc:
            log.error("mission %s: RTL after the failure refused: %s", self._mission_id, exc)

    def _handle(self, core: MissionCore, event: Input) -> None:
        if isinstance(event, StateUpdate) and event.state.boot_time_s is not None:
            self._seen_time_s = event.state.boot_time_s
        self._carry_out(core.handle(event))

    def _carry_out(self, actions: list[Action]) -> None:
        for i, action in enumerate(actions):
            if isinstance(action, Transition):
                if not self._transition(action):
                    assert self.core is not None
                    dropped = [a for a in actions[i + 1 :] if not isinstance(a, Transition)]
                    log.error("mission %s: %d command(s) not sent: their step is unrecorded",
                              self._mission_id, len(dropped))  # fmt: skip
                    self._carry_out(self.core.handle(JournalFailed(self._journal_error)))
                    return
            elif isinstance(action, Finish):
                self._finish(action.outcome)
            else:
                with self._idle:
                    self._busy += 1
                self._commands.put(action)

    def _transition(self, t: Transition) -> bool:
        """Journal, audit (the records that are audited), then publish; False if the journal
        or the audit hook failed (the one that failed is then not used again)."""
        ok = self._journal(t)
        if t.event in AUDITED_EVENTS or t.event == "abort":
            data = {"phase": t.phase.value, "boot_time_s": t.boot_time_s, **t.detail}
            ok = self._audit(t.event, data) and ok
        self._publish(t)
        return ok

    def _journal(self, t: Transition) -> bool:
        if not self._journal_ok:
            return True
        try:
            self.journal.record(self._mission_id, t.phase.value, t.event, t.detail,
                                t.boot_time_s)  # fmt: skip
        except JournalError as exc:
            self._journal_ok = False
            self._journal_error = str(exc)
            log.error("mission %s: %s", self._mission_id, exc)
            return False
        return True

    def _audit(self, kind: str, data: dict[str, Any]) -> bool:
        """Give a record to the audit hook; False if it failed (the hook is then not used
        again in this mission, and the mission, told as of a failed journal, goes home)."""
        if self.audit is None or not self._audit_ok:
            return True
        try:
            self.audit(kind, {"mission": self._mission_id, **data})
        except Exception as exc:  # whatever the hook is, its failure must not go unnoticed
            self._audit_ok = False
            self._journal_error = f"audit: {type(exc).__name__}: {exc}"
            log.error("mission %s: %s record not audited: %s", self._mission_id, kind, exc)
            return False
        return True

    def _publish(self, t: Transition) -> None:
        log.info("mission %s: %s %s %s", self._mission_id, t.phase.value, t.event, t.detail or "")
        self.bus.publish(
            MissionEvent(self._mission_id, t.phase, t.event, dict(t.detail), t.boot_time_s,
                         time.time())
        )  # fmt: skip

    def _finish(self, outcome: str) -> None:
        """Journal the outcome, then say on the bus that the mission is over (whoever counts
        missions in flight, e.g. the SMS operator commands, needs the one exact end)."""
        if not self._journal_ok:
            log.error("mission %s ended unjournaled: %s", self._mission_id, outcome)
        else:
            try:
                self.journal.finish(self._mission_id, outcome, self._seen_time_s)
            except JournalError as exc:
                log.error("mission %s: outcome %r not journaled: %s", self._mission_id,
                          outcome, exc)  # fmt: skip
        assert self.core is not None
        end = Transition(self.core.phase, FINISHED_EVENT, {"outcome": outcome}, self._seen_time_s)
        self._audit(FINISHED_EVENT, {"phase": end.phase.value, "boot_time_s": end.boot_time_s,
                                     "outcome": outcome})  # fmt: skip
        self._publish(end)

    def _drain(self) -> None:
        """After the end: events still queued are dropped (the mission is over), and the
        count of busy work goes back to zero so waiters wake."""
        while True:
            try:
                self._events.get_nowait()
            except queue.Empty:
                break
        with self._idle:
            self._busy = 0
            self._idle.notify_all()

    def _done_one(self) -> None:
        with self._idle:
            self._busy = max(0, self._busy - 1)
            if self._busy == 0:
                self._idle.notify_all()

    # -- the bus -----------------------------------------------------------------------------

    def _on_state(self, state: VehicleState) -> None:
        self.post(StateUpdate(state))

    def _on_text(self, text: StatusText) -> None:
        self.post(AutopilotText(text.severity, text.text, text.boot_time_s))

    # -- the command worker ------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            command = self._commands.get()
            if command is None:
                return
            # Counted as sent from here: the bridge writes it before it waits for an answer.
            self._done_one()
            try:
                result = self._execute(command)
            except Exception as exc:  # a bug in a command must not leave the mission waiting
                log.exception("mission command %s failed", type(command).__name__)
                result = CommandResult(command.token, False, type(exc).__name__, str(exc))
            self.post(result)

    def _execute(self, command: Command) -> Input:
        """Drive one command through the bridge; its outcome as an event for the core."""
        v = self.vehicle
        if isinstance(command, ReadParams):
            try:
                values = v.get_all_params()
            except BridgeError as exc:
                return ParamsRead(command.token, error=str(exc))
            return ParamsRead(command.token, tuple(sorted(values.items())))
        if isinstance(command, UploadLimits):
            try:
                upload_limits(v, command.limits)
            except LimitsRefused as exc:
                return LimitsUploaded(command.token, tuple(exc.reasons))
            return LimitsUploaded(command.token)
        if isinstance(command, CheckSystems):
            if self.systems is None:
                return SystemsChecked(command.token, error="this runner has no systems to report")
            try:
                status = self.systems()
            except Exception as exc:  # a broken source refuses the flight, named
                log.exception("the companion's systems report failed")
                return SystemsChecked(command.token, error=f"{type(exc).__name__}: {exc}")
            return SystemsChecked(command.token, status)
        started = time.time()
        try:
            _COMMANDS[type(command)](self, command)
        except CommandError as exc:
            texts = tuple(v.arming_texts(started)) if isinstance(command, Arm) else ()
            return CommandResult(command.token, False, exc.result, exc.detail, texts)
        except ProtocolTimeout as exc:
            return CommandResult(command.token, False, "timeout", str(exc))
        except LinkError as exc:
            return CommandResult(command.token, False, "link down", str(exc))
        except BridgeError as exc:
            return CommandResult(command.token, False, type(exc).__name__, str(exc))
        return CommandResult(command.token, True)


def _set_mode(runner: MissionRunner, c: SetMode) -> None:
    runner.vehicle.command_long(
        mavlink.MAV_CMD_DO_SET_MODE, mavlink.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED, mode_number(c.mode)
    )


def _arm(runner: MissionRunner, c: Arm) -> None:
    runner.vehicle.command_long(mavlink.MAV_CMD_COMPONENT_ARM_DISARM, 1, 0)


def _disarm(runner: MissionRunner, c: Disarm) -> None:
    runner.vehicle.command_long(mavlink.MAV_CMD_COMPONENT_ARM_DISARM, 0, 0)


def _takeoff(runner: MissionRunner, c: Takeoff) -> None:
    runner.vehicle.takeoff(c.alt_m)


def _reposition(runner: MissionRunner, c: Reposition) -> None:
    runner.vehicle.goto(c.lat, c.lon, c.alt_m)


def _change_speed(runner: MissionRunner, c: ChangeSpeed) -> None:
    runner.vehicle.set_speed(c.mps, int(c.speed_type))


def _release(runner: MissionRunner, c: ReleaseParcel) -> None:
    runner.gripper.release()


_COMMANDS: dict[type, Callable[[MissionRunner, object], None]] = {
    SetMode: _set_mode,  # type: ignore[dict-item]
    Arm: _arm,  # type: ignore[dict-item]
    Disarm: _disarm,  # type: ignore[dict-item]
    Takeoff: _takeoff,  # type: ignore[dict-item]
    Reposition: _reposition,  # type: ignore[dict-item]
    ChangeSpeed: _change_speed,  # type: ignore[dict-item]
    ReleaseParcel: _release,  # type: ignore[dict-item]
}
