"""The delivery state machine: preflight → arm → takeoff → cruise → descend → release →
climb → return → land → done, with abort paths that end in RTL or LAND.

The autopilot stays in charge of flight safety (its failsafes hold if the companion dies);
this machine decides what to fly and when to give up. Every transition is journaled before
it is acted on and published on the bus, so an operator, the flight report and a restarted
daemon all see the same story. Time is the autopilot's clock (time_boot_ms): under
simulation it runs faster than the wall clock, and holds such as the 3 s after release are
measured in it.

An `ObstacleMonitor` (the descent-cone guard) is asked during the cruise, the descent and
before the parcel is let go: while it gives a reason the vehicle holds its position, with
"hold" and "resume" journaled; holds during the descent and release together are bounded by
`max_hold_s`, past which the delivery is aborted and the vehicle returns home.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol

from companion.geo import distance_m
from companion.mission.events import MissionEvent, Phase
from companion.mission.journal import Journal
from firmware_bridge.errors import ArmingRefused, BridgeError, ProtocolTimeout
from firmware_bridge.payload import Gripper
from firmware_bridge.state import VehicleState
from firmware_bridge.vehicle import Vehicle

log = logging.getLogger(__name__)

_POLL_S = 0.05
_ARM_RETRY_S = 2.0
_ALT_TOLERANCE_M = 0.5  # "reached" altitude, as SITL's reference (29.5 m for 30 m)


@dataclass(frozen=True)
class DeliveryPlan:
    """One parcel: where to drop it and how to fly there."""

    mission_id: str
    drop_lat: float
    drop_lon: float
    cruise_alt_m: float = 30.0
    handover_alt_m: float = 5.0
    arrival_radius_m: float = 2.0
    release_hold_s: float = 3.0
    min_battery_pct: float = 25.0
    preflight_timeout_s: float = 120.0
    phase_timeout_s: float = 600.0
    link_loss_grace_s: float = 5.0
    #: Longest total hold (autopilot seconds) for something in the descent cone, over the
    #: descent and the release together; past it the delivery is aborted and flies home.
    max_hold_s: float = 120.0


class DeliveryAborted(Exception):
    """Raised inside the machine to leave the normal path; `reason` becomes the outcome."""

    def __init__(self, reason: str, action: str = "RTL") -> None:
        super().__init__(reason)
        self.reason = reason
        self.action = action


class RecipientCheck(Protocol):
    """Seam for the recipient's identity check before release (filled by later work)."""

    def verify(self, state: VehicleState) -> str | None:
        """None when the parcel may be released; otherwise why not."""
        ...


class ObstacleMonitor(Protocol):
    """Seam for obstacle detection: while it returns a reason, the vehicle holds position."""

    def hold_reason(self, state: VehicleState) -> str | None: ...


class DeliveryMission:
    """Flies one `DeliveryPlan` with a `Vehicle`, journaling every transition."""

    def __init__(
        self,
        vehicle: Vehicle,
        plan: DeliveryPlan,
        journal: Journal,
        publish: Callable[[object], None],
        *,
        gripper: Gripper | None = None,
        recipient_check: RecipientCheck | None = None,
        obstacle_monitor: ObstacleMonitor | None = None,
    ) -> None:
        self.vehicle = vehicle
        self.plan = plan
        self.journal = journal
        self.publish = publish
        self.gripper = gripper or Gripper(vehicle)
        self.recipient_check = recipient_check
        self.obstacle_monitor = obstacle_monitor
        self.phase = Phase.PREFLIGHT
        self.outcome: str | None = None
        self._expected_mode = ""
        self._home: tuple[float, float] | None = None
        self._hold_since: float | None = None  # autopilot time the current cone hold began
        self._held_s = 0.0  # cone holds before the current one, autopilot seconds

    # -- journal and bus -------------------------------------------------------------------

    def _event(self, phase: Phase, event: str, **detail: object) -> None:
        state = self.vehicle.state
        self.journal.record(self.plan.mission_id, phase.value, event, detail, state.boot_time_s)
        self.publish(
            MissionEvent(
                self.plan.mission_id, phase, event, dict(detail), state.boot_time_s, time.time()
            )
        )

    def _enter(self, phase: Phase, **detail: object) -> None:
        self.phase = phase
        log.info("mission %s: %s", self.plan.mission_id, phase.value)
        self._event(phase, "enter", **detail)

    # -- the machine -----------------------------------------------------------------------

    def run(self) -> str:
        """Fly the delivery; returns "delivered" or the reason it was aborted."""
        self.journal.start_mission(self.plan.mission_id, asdict(self.plan))
        try:
            # Phases are timed on the autopilot's clock: wait until it has been heard.
            self.vehicle.wait_until(lambda s: s.boot_time_s is not None, 10.0, "telemetry")
            self._preflight()
            self._arm()
            self._takeoff()
            self._cruise()
            self._descend()
            self._release()
            self._climb()
            self._return_home()
        except DeliveryAborted as abort:
            self._abort(abort)
        except BridgeError as exc:
            self._abort(DeliveryAborted(f"{type(exc).__name__}: {exc}"))
        else:
            self.outcome = "delivered"
            self._enter(Phase.DONE, outcome="delivered")
        assert self.outcome is not None
        self.journal.finish(self.plan.mission_id, self.outcome)
        return self.outcome

    def _preflight(self) -> None:
        self._enter(Phase.PREFLIGHT)
        try:
            state = self.vehicle.wait_armable(self.plan.preflight_timeout_s)
        except ProtocolTimeout as exc:
            raise DeliveryAborted(f"not ready to fly: {exc}", action="NONE") from exc
        battery = state.battery.remaining_pct
        if battery is not None and battery < self.plan.min_battery_pct:
            raise DeliveryAborted(
                f"battery {battery}% below the {self.plan.min_battery_pct:g}% needed to start",
                action="NONE",
            )
        assert state.home is not None
        self._home = (state.home.lat, state.home.lon)

    def _arm(self) -> None:
        self._enter(Phase.ARM)
        self.vehicle.set_mode("GUIDED")
        self._expected_mode = "GUIDED"
        deadline = time.monotonic() + self.plan.preflight_timeout_s
        while True:
            try:
                self.vehicle.arm()
                return
            except ArmingRefused as refused:
                self._event(Phase.ARM, "refused", reasons=refused.reasons)
                if time.monotonic() + _ARM_RETRY_S > deadline:
                    raise DeliveryAborted(
                        f"arming refused: {'; '.join(refused.reasons)}", "NONE"
                    ) from refused
                time.sleep(_ARM_RETRY_S)

    def _takeoff(self) -> None:
        self._enter(Phase.TAKEOFF, target_alt_m=self.plan.cruise_alt_m)
        self.vehicle.takeoff(self.plan.cruise_alt_m)
        self._wait_alt_at_least(self.plan.cruise_alt_m - _ALT_TOLERANCE_M, "takeoff altitude")

    def _cruise(self) -> None:
        self._enter(Phase.CRUISE, drop=[self.plan.drop_lat, self.plan.drop_lon])
        self._fly_to(self.plan.cruise_alt_m)

    def _descend(self) -> None:
        self._enter(Phase.DESCEND, target_alt_m=self.plan.handover_alt_m)
        plan = self.plan

        def at_handover(s: VehicleState) -> bool:
            return (
                s.position is not None
                and s.position.alt_rel_m <= plan.handover_alt_m + _ALT_TOLERANCE_M
            )

        self._to_handover_point()
        deadline = time.monotonic() + plan.phase_timeout_s
        while True:
            # A hold keeps the vehicle where it is, even if it is already low enough: the
            # phase ends only with the cone clear (the release checks it again).
            holding = self._cone_hold(self._to_handover_point)
            if not holding and at_handover(self.vehicle.state):
                return
            self._guard()
            if time.monotonic() > deadline:
                raise DeliveryAborted(
                    f"timed out after {plan.phase_timeout_s:g} s waiting for handover altitude"
                )
            if holding:
                time.sleep(_POLL_S)
            else:
                self.vehicle.tracker.wait_for(at_handover, _POLL_S)

    def _release(self) -> None:
        self._enter(Phase.RELEASE)
        self._hold_while_cone_occupied()
        if self.recipient_check is not None:
            refusal = self.recipient_check.verify(self.vehicle.state)
            if refusal is not None:
                raise DeliveryAborted(f"recipient not verified: {refusal}")
            # Someone may have stepped under the drone while the recipient was checked.
            self._hold_while_cone_occupied()
        self.gripper.release()
        self._event(Phase.RELEASE, "released")
        start = self.vehicle.state.boot_time_s or 0.0
        self._wait(
            lambda s: (s.boot_time_s or 0.0) - start >= self.plan.release_hold_s,
            self.plan.phase_timeout_s,
            "the release hold",
        )

    def _climb(self) -> None:
        self._enter(Phase.CLIMB, target_alt_m=self.plan.cruise_alt_m)
        self.vehicle.goto(self.plan.drop_lat, self.plan.drop_lon, self.plan.cruise_alt_m)
        self._wait_alt_at_least(self.plan.cruise_alt_m - _ALT_TOLERANCE_M, "cruise altitude")

    def _return_home(self) -> None:
        self._enter(Phase.RETURN)
        self.vehicle.rtl()
        self._expected_mode = "RTL"
        assert self._home is not None
        home_lat, home_lon = self._home
        self._wait(
            lambda s: (
                s.position is not None
                and distance_m(s.position.lat, s.position.lon, home_lat, home_lon) < 2.0
                and (s.velocity_ned_mps or (0.0, 0.0, 0.0))[2] > 0.2
            ),
            self.plan.phase_timeout_s,
            "the final descent over home",
        )
        self._enter(Phase.LAND)
        self._wait(lambda s: not s.armed, self.plan.phase_timeout_s, "disarm after landing")

    # -- waiting with guards ---------------------------------------------------------------

    def _fly_to(self, alt_m: float) -> None:
        plan = self.plan
        self.vehicle.goto(plan.drop_lat, plan.drop_lon, alt_m)
        holding = False

        def arrived(s: VehicleState) -> bool:
            return (
                s.position is not None
                and distance_m(s.position.lat, s.position.lon, plan.drop_lat, plan.drop_lon)
                <= plan.arrival_radius_m
            )

        deadline = time.monotonic() + plan.phase_timeout_s
        while not arrived(self.vehicle.state):
            self._guard()
            if self.obstacle_monitor is not None:
                reason = self.obstacle_monitor.hold_reason(self.vehicle.state)
                if reason and not holding:
                    pos = self.vehicle.state.position
                    assert pos is not None
                    self._event(self.phase, "hold", reason=reason)
                    self.vehicle.goto(pos.lat, pos.lon, pos.alt_rel_m)
                elif not reason and holding:
                    self._event(self.phase, "resume")
                    self.vehicle.goto(plan.drop_lat, plan.drop_lon, alt_m)
                holding = bool(reason)
            if time.monotonic() > deadline:
                raise DeliveryAborted(f"did not reach the drop point in {plan.phase_timeout_s:g} s")
            self.vehicle.tracker.wait_for(arrived, _POLL_S)

    def _to_handover_point(self) -> None:
        self.vehicle.goto(self.plan.drop_lat, self.plan.drop_lon, self.plan.handover_alt_m)

    def _cone_hold(self, resume: Callable[[], None]) -> bool:
        """Ask the obstacle monitor during the descent and hand-over: on a reason, hold
        position (a goto to the current point) and journal "hold"; once it clears, journal
        "resume" and call `resume`. True while holding. Holds are timed on the autopilot's
        clock and add up over the descent and release; past `max_hold_s` the delivery is
        aborted (RTL)."""
        if self.obstacle_monitor is None:
            return False
        state = self.vehicle.state
        reason = self.obstacle_monitor.hold_reason(state)
        now = state.boot_time_s or 0.0
        if reason:
            if self._hold_since is None:
                self._hold_since = now
                self._event(self.phase, "hold", reason=reason)
                pos = state.position
                if pos is not None:
                    self.vehicle.goto(pos.lat, pos.lon, pos.alt_rel_m)
            held = self._held_s + now - self._hold_since
            if held > self.plan.max_hold_s:
                raise DeliveryAborted(
                    f"obstacle in the descent cone for {self.plan.max_hold_s:g} s ({reason})"
                )
            return True
        if self._hold_since is not None:
            this_hold = now - self._hold_since
            self._held_s += this_hold
            self._hold_since = None
            self._event(self.phase, "resume", held_s=round(this_hold, 1))
            resume()
        return False

    def _hold_while_cone_occupied(self) -> None:
        """Before letting go of the parcel: wait, holding position, until the cone is clear."""
        deadline = time.monotonic() + self.plan.phase_timeout_s
        while self._cone_hold(self._to_handover_point):
            self._guard()
            if time.monotonic() > deadline:
                raise DeliveryAborted(
                    f"timed out after {self.plan.phase_timeout_s:g} s waiting for the descent "
                    "cone to clear"
                )
            time.sleep(_POLL_S)

    def _wait_alt_at_least(self, alt_m: float, what: str) -> None:
        self._wait(
            lambda s: s.position is not None and s.position.alt_rel_m >= alt_m,
            self.plan.phase_timeout_s,
            what,
        )

    def _wait(
        self,
        predicate: Callable[[VehicleState], bool],
        timeout: float,
        what: str,
        *,
        guard: bool = True,
    ) -> VehicleState:
        deadline = time.monotonic() + timeout
        while True:
            state = self.vehicle.tracker.wait_for(predicate, _POLL_S)
            if state is not None:
                return state
            if guard:
                self._guard()
            if time.monotonic() > deadline:
                raise DeliveryAborted(f"timed out after {timeout:g} s waiting for {what}")

    def _guard(self) -> None:
        """Abort conditions checked while waiting in flight."""
        link = self.vehicle.link
        if not link.up and link.heartbeat_age() > self.plan.link_loss_grace_s:
            raise DeliveryAborted(
                f"link to the autopilot lost for {link.heartbeat_age():.0f} s", action="FAILSAFE"
            )
        state = self.vehicle.state
        if self._expected_mode and state.mode != self._expected_mode:
            raise DeliveryAborted(
                f"mode changed to {state.mode} outside the companion's control", action="PILOT"
            )
        if self.phase is not Phase.ARM and not state.armed:
            raise DeliveryAborted("vehicle disarmed unexpectedly", action="NONE")
        battery = state.battery.remaining_pct
        if battery is not None and battery < self.plan.min_battery_pct:
            critical = battery < self.plan.min_battery_pct / 2
            raise DeliveryAborted(
                f"battery low: {battery}% < {self.plan.min_battery_pct:g}%",
                action="LAND" if critical else "RTL",
            )

    # -- aborting --------------------------------------------------------------------------

    def _abort(self, abort: DeliveryAborted) -> None:
        """Record the reason, then make the vehicle safe: RTL, LAND, or leave it to the
        autopilot's failsafe (link lost) or to the pilot (mode taken over)."""
        self.outcome = abort.reason
        log.warning("mission %s aborted: %s", self.plan.mission_id, abort.reason)
        self._event(Phase.ABORT, "abort", reason=abort.reason, action=abort.action)
        self.phase = Phase.ABORT
        if abort.action in ("RTL", "LAND") and self.vehicle.state.armed:
            try:
                self.vehicle.set_mode(abort.action)
            except BridgeError as exc:
                self._event(Phase.ABORT, "abort-action-failed", error=str(exc))
                return
            self._expected_mode = abort.action
        if self.vehicle.state.armed and abort.action != "PILOT":
            # Wait for the vehicle to come down (RTL, LAND or the autopilot's own failsafe).
            state = self.vehicle.tracker.wait_for(lambda s: not s.armed, self.plan.phase_timeout_s)
            self._event(Phase.ABORT, "landed" if state is not None else "still-armed")
