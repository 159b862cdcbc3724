"""The mission runner against the built-in vehicle over real TCP: the same runner
`skycourier sim` and the daemon use, in lockstep with the vehicle (no outcome depends on the
machine's speed). Whole deliveries on the shipped parameters, the preflight refusing a fence
too small, the abort paths that need a real autopilot (a pilot on a second link, a pulled
link, a low battery, a failing journal), and injected faults: lost, refused and ignored
targets recover or end with their reason within 5 simulated seconds."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from companion.bus import Bus
from companion.config import FlightConfig
from companion.geo import offset
from companion.mission.core import MissionCore
from companion.mission.events import MissionEvent, Phase
from companion.mission.inputs import RecipientVerdict
from companion.mission.journal import Journal, JournalError
from companion.mission.plan import MissionPlan, delivery_plan
from companion.mission.runner import MissionRunner
from firmware_bridge.dialect import mavlink, mavutil
from firmware_bridge.vehicle import Vehicle
from sim.harness.lockstep import Lockstep
from sim.vehicle import DEFAULT_HOME, VehicleServer
from sim.vehicle.faults import Faults
from tests.conftest import HEARTBEAT_S

FLIGHT = FlightConfig(cruise_alt_m=15.0)


@dataclass
class Flight:
    """A built-in vehicle, the companion's link to it, a journal and a runner in lockstep."""

    server: VehicleServer
    vehicle: Vehicle
    journal: Journal
    bus: Bus
    runner: MissionRunner
    events: list[MissionEvent] = field(default_factory=list)

    def fly(self, plan: MissionPlan) -> str:
        return self.runner.run(plan)

    def story(self) -> list[tuple[Phase, str]]:
        return [(e.phase, e.event) for e in self.events]

    def event(self, name: str) -> MissionEvent:
        return next(e for e in self.events if e.event == name)

    def on(self, phase: Phase, action: Callable[[Flight], None]) -> None:
        """Run `action` (on the runner's thread) when the mission enters `phase`."""

        def check(event: MissionEvent) -> None:
            if event.phase is phase and event.event == "enter":
                action(self)

        self.bus.subscribe(MissionEvent, check)


@contextmanager
def flight(tmp_path: Path, *, speedup: float = 25.0, **server: object) -> Iterator[Flight]:
    with VehicleServer(DEFAULT_HOME, speedup=speedup, port=0, **server) as srv:
        bus = Bus()
        vehicle = Vehicle.connect(
            f"tcp:127.0.0.1:{srv.port}",
            publish=bus.publish,
            heartbeat_interval_s=HEARTBEAT_S,
            clock=lambda: srv.sim_time,
        )
        journal = Journal(tmp_path / "journal.db")
        runner = MissionRunner(vehicle, journal, bus)
        srv.set_step_gate(Lockstep(srv, runner).gate)
        result = Flight(srv, vehicle, journal, bus, runner)
        bus.subscribe(MissionEvent, result.events.append)
        try:
            yield result
        finally:
            srv.set_step_gate(None)
            vehicle.close()
            journal.close()


def plan(distance_m: float = 80.0, mission_id: str = "m-1", **flight: float) -> MissionPlan:
    config = FlightConfig(**{"cruise_alt_m": 15.0, **flight})
    return delivery_plan(mission_id, offset(*DEFAULT_HOME[:2], distance_m, 45.0), config)


def test_a_delivery_on_the_shipped_parameters_is_flown_and_journaled(tmp_path: Path) -> None:
    with flight(tmp_path) as f:
        outcome = f.fly(plan())
        assert f.server.state.gripper_released
        assert not f.server.state.armed and f.server.state.alt_rel_m < 0.5
        journal = [(e.phase, e.event) for e in f.journal.events("m-1")]
    assert outcome == "delivered"
    entered = [p for p, e in f.story() if e == "enter"]
    assert entered == [
        Phase.PREFLIGHT, Phase.ARM, Phase.TAKEOFF, Phase.CRUISE, Phase.DESCEND,
        Phase.RELEASE, Phase.CLIMB, Phase.RETURN, Phase.LAND, Phase.DONE,
    ]  # fmt: skip
    # Journaled, then published; the end is both (journal.finish, then "finished" on the bus).
    assert journal == [(p.value, e) for p, e in f.story()]
    assert journal[-1] == ("done", "finished")
    assert f.event("checked").detail["findings"] == []


def test_a_fence_smaller_than_the_drop_distance_is_refused_before_arming(tmp_path: Path) -> None:
    with flight(tmp_path, params={"FENCE_RADIUS": 300.0}) as f:
        outcome = f.fly(plan(500.0, cruise_alt_m=30.0))
        assert not f.server.state.armed
    assert "FENCE_RADIUS is 300 m but the plan goes 500 m from home" in outcome
    assert "set FENCE_RADIUS to at least 505" in outcome
    assert Phase.ARM not in [p for p, e in f.story() if e == "enter"]


def test_a_mission_id_used_before_is_refused_before_anything_is_commanded(
    tmp_path: Path,
) -> None:
    with flight(tmp_path) as f:
        f.journal.start_mission("m-1", {})
        with pytest.raises(JournalError, match="already exists"):
            f.fly(plan())
        assert f.events == [] and f.server.state.mode == "STABILIZE"


def test_a_vehicle_that_never_gets_ready_is_given_up_on_the_ground(tmp_path: Path) -> None:
    with flight(tmp_path, ready_delay_s=1e6) as f:
        outcome = f.fly(plan(preflight_timeout_s=3.0))
        assert not f.server.state.armed
    assert outcome == (
        "timed out after 3 s waiting for a 3-D fix, a home position and an EKF position estimate"
    )


def test_a_4s_battery_threshold_on_a_3s_pack_ends_the_attempt_at_once(tmp_path: Path) -> None:
    # The 4S airframe's BATT_LOW_VOLT on SITL's 3S copter: waiting cannot fix it.
    with flight(tmp_path, params={"BATT_LOW_VOLT": 14.0}) as f:
        outcome = f.fly(plan())
        assert not f.server.state.armed
    assert outcome == "arming refused: Battery 1 low voltage failsafe"
    arm = next(e for e in f.events if e.phase is Phase.ARM and e.event == "enter")
    assert f.event("abort").boot_time_s - arm.boot_time_s < 2.0


def test_low_battery_returns_home(tmp_path: Path) -> None:
    with flight(tmp_path) as f:
        outcome = f.fly(plan(300.0, min_battery_pct=85.0))
        state = f.server.state
        assert not state.armed and state.alt_rel_m < 0.5 and abs(state.north_m) < 3.0
    assert outcome.startswith("battery low")
    assert f.event("abort").detail["action"] == "RTL"
    assert f.story()[-2:] == [(Phase.ABORT, "landed"), (Phase.ABORT, "finished")]


def test_a_pilot_on_a_second_link_takes_over_and_the_companion_stops(tmp_path: Path) -> None:
    done = threading.Event()

    def take_over(f: Flight) -> None:
        pilot = threading.Thread(target=_pilot_flies_loiter, args=(f.server.port, done))
        pilot.start()

    try:
        with flight(tmp_path, speedup=10.0) as f:
            f.on(Phase.CRUISE, take_over)
            outcome = f.fly(plan(400.0))
            assert f.server.state.mode == "LOITER"
            assert f.server.state.armed  # the companion does not fight the pilot
    finally:
        done.set()
    assert outcome == "mode changed to LOITER outside the companion's control"
    assert f.event("abort").detail["action"] == "PILOT"


def _pilot_flies_loiter(port: int, done: threading.Event) -> None:
    """A ground station on a second link switches to LOITER, as a pilot would, and stays
    connected (with FS_GCS_ENABLE on, its silence would send the drone home)."""
    gcs = mavutil.mavlink_connection(f"tcp:127.0.0.1:{port}", source_system=255)
    try:
        gcs.wait_heartbeat(timeout=5)
        gcs.set_mode("LOITER")
        while not done.wait(0.05):
            gcs.mav.heartbeat_send(mavlink.MAV_TYPE_GCS, mavlink.MAV_AUTOPILOT_INVALID, 0, 0, 0)
    finally:
        gcs.close()


def test_a_pulled_link_leaves_the_return_to_the_autopilots_watchdog(tmp_path: Path) -> None:
    def cut(f: Flight) -> None:
        f.server.set_link_blocked(True)

    def restore_once_home(event: MissionEvent) -> None:
        if event.event == "abort":
            threading.Thread(target=_restore_when_landed, args=(flight_ref[0],)).start()

    flight_ref: list[Flight] = []
    with flight(tmp_path) as f:
        flight_ref.append(f)
        f.on(Phase.CRUISE, cut)
        f.bus.subscribe(MissionEvent, restore_once_home)
        outcome = f.fly(plan(400.0, link_loss_grace_s=1.0))
        assert not f.server.state.armed and f.server.state.alt_rel_m < 0.5
    assert outcome.startswith("link to the autopilot lost")
    assert f.event("abort").detail["action"] == "FAILSAFE"
    assert f.story()[-2:] == [(Phase.ABORT, "landed"), (Phase.ABORT, "finished")]


def _restore_when_landed(f: Flight) -> None:
    """The companion watchdog (Lua on the autopilot) brings the drone home; the link comes
    back once it has landed."""
    deadline = threading.Event()
    while f.server.state.armed and not deadline.wait(0.05):
        pass
    f.server.set_link_blocked(False)


def test_a_journal_that_fails_in_flight_still_ends_in_rtl(tmp_path: Path) -> None:
    def break_journal(f: Flight) -> None:
        f.journal._db.close()  # the disk is gone: every later write fails

    with flight(tmp_path) as f:
        f.on(Phase.CRUISE, break_journal)
        outcome = f.fly(plan(300.0))
        state = f.server.state
        assert not state.armed and abs(state.north_m) < 3.0 and abs(state.east_m) < 3.0
        assert not state.gripper_released
    assert outcome.startswith("journal failure: journal ")
    assert f.event("abort").detail["action"] == "RTL"


def test_a_failure_of_the_runner_itself_still_sends_the_drone_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = MissionCore.handle

    def broken(core: MissionCore, event: object) -> list:
        if core.phase is Phase.CRUISE:
            raise RuntimeError("a bug")
        return handle(core, event)

    monkeypatch.setattr(MissionCore, "handle", broken)
    with flight(tmp_path) as f:
        with pytest.raises(RuntimeError, match="a bug"):
            f.fly(plan(300.0))
        f.vehicle.wait_until(lambda s: s.mode == "RTL", 10, "RTL")


# -- injected faults -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "faults",
    [
        Faults(drop_commands=0.3, drop_command_ids=frozenset({mavlink.MAV_CMD_DO_REPOSITION})),
        Faults(drop_commands=0.2, seed=7),
    ],
    ids=["30% of repositions lost", "20% of all commands lost"],
)
def test_lost_commands_are_sent_again_and_the_delivery_goes_on(
    tmp_path: Path, faults: Faults
) -> None:
    with flight(tmp_path, faults=faults) as f:
        outcome = f.fly(plan(200.0))
        assert f.server.state.gripper_released
    assert outcome == "delivered"


def test_a_refused_target_aborts_at_once_with_the_autopilots_answer(tmp_path: Path) -> None:
    def refuse(f: Flight) -> None:
        f.server.set_faults(Faults(refuse_targets=True))

    with flight(tmp_path) as f:
        f.on(Phase.CRUISE, refuse)
        outcome = f.fly(plan(300.0))
        assert not f.server.state.armed
    assert outcome == "MAV_CMD_DO_REPOSITION to the drop point refused (MAV_RESULT_FAILED)"
    cruise = next(e for e in f.events if e.phase is Phase.CRUISE and e.event == "enter")
    assert f.event("abort").boot_time_s - cruise.boot_time_s <= 5.0


def test_an_ignored_target_is_an_abort_within_five_seconds(tmp_path: Path) -> None:
    def ignore(f: Flight) -> None:
        f.server.set_faults(Faults(ignore_targets=True))

    with flight(tmp_path) as f:
        f.on(Phase.CRUISE, ignore)
        outcome = f.fly(plan(300.0))
        assert not f.server.state.armed
    assert outcome.startswith("no progress towards the drop point for 4.0 s")
    cruise = next(e for e in f.events if e.phase is Phase.CRUISE and e.event == "enter")
    assert f.event("retarget").boot_time_s - cruise.boot_time_s <= 3.0
    assert f.event("abort").boot_time_s - cruise.boot_time_s <= 5.0
    assert f.event("abort").detail["action"] == "RTL"


def test_operator_sms_commands_act_on_the_flying_mission_and_are_journaled_and_answered(
    tmp_path: Path,
) -> None:
    """The SMS path end to end on the runner: signed `hold`, `resume` and `abort` from the
    operator's number, handled on a thread of their own as `SmsClient` calls them, stop the
    drone, send it on and then home (RTL); each is journaled with its source and answered
    with what the mission did; a replay of the abort is refused and nothing acts on it."""
    import time as wall

    from companion.modem.operator_sms import (
        CommandAuthenticator,
        CounterStore,
        OperatorSms,
        sign_command,
    )
    from companion.modem.sms import SmsMessage

    key, drone, sender = bytes(range(32)), "skycourier-1", "+447700900123"
    answers: list[tuple[str, str]] = []

    def text(counter: int, command: str) -> str:
        return sign_command(key, drone, sender, counter, int(wall.time()), command)

    with flight(tmp_path) as f:
        operator = OperatorSms(
            bus=f.bus,
            authenticator=CommandAuthenticator(
                key=key,
                drone_id=drone,
                counters=CounterStore(tmp_path / "counters.json"),
                validity_s=300.0,
            ),
            send=lambda number, body: answers.append((number, body)),
            drone_id=drone,
        )
        abort = text(3, "abort")
        script = [text(1, "hold"), text(2, "resume"), abort, abort]

        def operator_sends(_: Flight) -> None:
            def send_all() -> None:
                for body in script:
                    operator(SmsMessage(1, sender, "26/12/07,12:00:00+00", body))

            threading.Thread(target=send_all, daemon=True).start()

        f.on(Phase.CRUISE, operator_sends)
        outcome = f.fly(plan(300.0))
        operator.close()
        journal = [(e.phase, e.event, e.detail) for e in f.journal.events("m-1")]
        assert not f.server.state.gripper_released
    assert outcome == f"operator abort (sms:{sender})"
    events = [(phase, event) for phase, event, _ in journal]
    assert ("cruise", "hold") in events and ("cruise", "resume") in events
    abort_entry = next(d for _, e, d in journal if e == "abort")
    assert abort_entry["action"] == "RTL" and abort_entry["reason"] == outcome
    assert [number for number, _ in answers] == [sender] * 4
    said = [body for _, body in answers]
    assert said[0] == f"{drone} HOLD mission m-1: holding in cruise"
    assert said[1].startswith(f"{drone} RESUME mission m-1: resumed cruise after ")
    assert said[2] == f"{drone} ABORT mission m-1: aborting, RTL (was in cruise)"
    assert "refused" in said[3] and "counter" in said[3]
    assert operator.accepted == 3 and operator.refused == 1


# -- the release gate: a parcel for a named recipient ----------------------------------------


def recipient_plan(timeout_s: float = 20.0) -> MissionPlan:
    config = FlightConfig(cruise_alt_m=15.0, recipient_timeout_s=timeout_s)
    drop = offset(*DEFAULT_HOME[:2], 80.0, 45.0)
    return delivery_plan("m-1", drop, config, recipient_check=True)


def when_checking(f: Flight, act: Callable[[Flight, MissionEvent], None]) -> None:
    """Run `act` on a thread of its own (as the identity service or an operator would) once
    the mission's recipient check has begun."""

    def check(event: MissionEvent) -> None:
        if event.event == "verify-recipient":
            threading.Thread(target=act, args=(f, event), daemon=True).start()

    f.bus.subscribe(MissionEvent, check)


def after_check_began(f: Flight, check: MissionEvent, seconds: float) -> float:
    """Wait until the mission has seen `seconds` of autopilot time into the check; that time."""
    start = check.boot_time_s or 0.0
    f.vehicle.tracker.wait_for(lambda s: (s.boot_time_s or 0.0) >= start + seconds, 30.0)
    f.runner.wait_idle(5.0)
    seen = f.runner.seen_time_s
    assert seen is not None
    return seen


def test_a_verified_live_recipient_on_the_bus_receives_the_parcel(tmp_path: Path) -> None:
    from companion.security.audit import AuditTrail, verify_audit

    audit: list[tuple[str, dict]] = []
    trail = AuditTrail(tmp_path / "audit.jsonl")

    def record(kind: str, data: dict) -> None:
        audit.append((kind, data))
        trail.append(kind, **data)  # refuses anything that could be biometric data

    def identity_service(f: Flight, check: MissionEvent) -> None:
        decided = after_check_began(f, check, 2.0)
        liveness = (("ear_baseline", 0.305), ("ear_min", 0.118), ("frames", 31.0))
        f.bus.publish(RecipientVerdict("m-1", decided, True, True, 0.412, 0.6, 12, liveness))

    with flight(tmp_path) as f:
        f.runner.audit = record
        when_checking(f, identity_service)
        outcome = f.fly(recipient_plan())
        assert f.server.state.gripper_released
        journal = [(e.event, e.detail) for e in f.journal.events("m-1")]
    trail.close()
    assert outcome == "delivered"
    report = verify_audit(tmp_path / "audit.jsonl")
    assert report.ok and report.records == 5
    events = [event for event, _ in journal]
    i = events.index("verify-recipient")
    assert events[i : i + 4] == ["verify-recipient", "recipient-verdict", "cleared", "released"]
    assert [kind for kind, _ in audit] == [
        "verify-recipient", "recipient-verdict", "cleared", "released", "finished"
    ]  # fmt: skip
    verdict = audit[1][1]
    assert verdict["mission"] == "m-1" and verdict["outcome"] == "cleared"
    assert (verdict["distance"], verdict["threshold"], verdict["frames"]) == (0.412, 0.6, 12)
    assert verdict["liveness"] == {"ear_baseline": 0.305, "ear_min": 0.118, "frames": 31.0}
    assert audit[-1][1]["outcome"] == "delivered"
    # What reaches the audit trail is numbers and words: no list or array at all.
    assert not any(isinstance(v, list | tuple) for _, data in audit for v in data.values())


def test_without_a_verdict_the_parcel_is_flown_home_and_the_gripper_never_opens(
    tmp_path: Path,
) -> None:
    audit: list[tuple[str, dict]] = []
    with flight(tmp_path) as f:
        f.runner.audit = lambda kind, data: audit.append((kind, data))
        outcome = f.fly(recipient_plan(timeout_s=5.0))
        state = f.server.state
        assert not state.gripper_released
        assert not state.armed and state.alt_rel_m < 0.5 and abs(state.north_m) < 3.0
    assert outcome == "recipient not verified within 5 s: no verdict and no fallback PIN came"
    abort = f.event("abort")
    assert abort.detail["action"] == "RTL" and abort.detail["phase"] == "release"
    assert "released" not in [e for _, e in f.story()]
    assert [kind for kind, _ in audit] == ["verify-recipient", "abort", "finished"]
    assert audit[1][1]["reason"] == outcome and audit[2][1]["outcome"] == outcome


def test_a_failing_audit_trail_stops_the_release_and_sends_the_parcel_home(
    tmp_path: Path,
) -> None:
    def broken(kind: str, data: dict) -> None:
        if kind == "verify-recipient":
            raise OSError("audit disk full")

    with flight(tmp_path) as f:
        f.runner.audit = broken
        outcome = f.fly(recipient_plan())
        assert not f.server.state.gripper_released
    assert outcome == "journal failure: audit: OSError: audit disk full"
    assert f.event("abort").detail["action"] == "RTL"


def test_a_fallback_pin_by_signed_sms_releases_and_is_never_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The operator's path end to end: signed `pin` SMS commands during the check, checked
    against the order's PIN outside the core; a wrong one is refused, the right one releases.
    The digits appear in no log line, journal record or answer."""
    import hmac
    import json
    import time as wall

    from companion.modem.operator_sms import (
        CommandAuthenticator,
        CounterStore,
        OperatorSms,
        sign_command,
    )
    from companion.modem.sms import SmsMessage

    key, drone, sender, pin = bytes(range(32)), "skycourier-1", "+447700900123", "80604217"
    answers: list[str] = []

    def pin_check(digits: str) -> tuple[str, bool]:
        return "m-1", hmac.compare_digest(digits.encode(), pin.encode())

    def operator_sends(f: Flight, check: MissionEvent) -> None:
        after_check_began(f, check, 1.0)
        for counter, digits in ((1, "11112222"), (2, pin)):
            text = sign_command(key, drone, sender, counter, int(wall.time()), f"pin {digits}")
            operator(SmsMessage(1, sender, "26/12/07,12:00:00+00", text))

    caplog.set_level("DEBUG")
    with flight(tmp_path) as f:
        operator = OperatorSms(
            bus=f.bus,
            authenticator=CommandAuthenticator(
                key=key,
                drone_id=drone,
                counters=CounterStore(tmp_path / "counters.json"),
                validity_s=300.0,
            ),
            send=lambda number, body: answers.append(body),
            drone_id=drone,
            pin_check=pin_check,
        )
        when_checking(f, operator_sends)
        outcome = f.fly(recipient_plan())
        operator.close()
        assert f.server.state.gripper_released
        journal = [(e.event, e.detail) for e in f.journal.events("m-1")]
    assert outcome == "delivered"
    pins = [detail for event, detail in journal if event == "recipient-pin"]
    assert [(p["valid"], p["outcome"], p["source"]) for p in pins] == [
        (False, "refused", f"sms:{sender}"),
        (True, "cleared", f"sms:{sender}"),
    ]
    assert answers == [
        f"{drone} PIN mission m-1: PIN refused for drop m-1 (wrong PIN 1)",
        f"{drone} PIN mission m-1: PIN accepted for drop m-1: releasing the parcel",
    ]
    for digits in (pin, "11112222"):
        assert digits not in caplog.text and digits not in json.dumps(journal)
