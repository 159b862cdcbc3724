"""A small deterministic world for the mission core's tests: a vehicle that answers the
core's actions the way ArduCopter does, moving as a point at fixed speeds, with knobs for the
faults a test wants. No threads, sockets or clocks: `World.run` feeds the core a state every
`dt` seconds of the vehicle's time and answers each command at once (or not, or wrongly).

It is a test double for the core's own tests, not a simulator: the built-in vehicle and
ArduPilot SITL check the real flying.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from companion.geo import distance_m, local_en_m, offset
from companion.mission.actions import (
    Action,
    Arm,
    ChangeSpeed,
    CheckSystems,
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
from companion.mission.events import Phase
from companion.mission.inputs import (
    CommandResult,
    FallbackPin,
    GroundStatus,
    Input,
    LimitsUploaded,
    ParamsRead,
    RecipientVerdict,
    StateUpdate,
    SystemsChecked,
)
from companion.mission.stages import VerifyRecipient
from firmware_bridge.dialect import mavlink
from firmware_bridge.state import Battery, GpsInfo, Position, VehicleState

HOME = (-35.363261, 149.165230)
EKF_OK = mavlink.EKF_POS_HORIZ_ABS | mavlink.EKF_PRED_POS_HORIZ_ABS

#: The shipped parameters as the autopilot reports them (delivery-copter.parm + the SITL
#: overlay, and the watchdog script's table).
SHIPPED_PARAMS: dict[str, float] = {
    "FENCE_ENABLE": 1, "FENCE_TYPE": 7, "FENCE_ALT_MAX": 120, "FENCE_RADIUS": 800,
    "FENCE_ACTION": 1, "FENCE_MARGIN": 5, "RTL_ALT": 3000, "RTL_LOIT_TIME": 5000,
    "BATT_FS_LOW_ACT": 2, "BATT_FS_CRT_ACT": 1, "BATT_LOW_VOLT": 10.5, "BATT_CRT_VOLT": 10.05,
    "BATT_LOW_MAH": 660, "BATT_CRT_MAH": 330, "SCR_ENABLE": 1, "SCW_ENABLE": 1,
    "GRIP_ENABLE": 1, "GRIP_TYPE": 1, "SERVO8_FUNCTION": 28, "OA_TYPE": 2,
    "OA_MARGIN_MAX": 10, "BATT_CAPACITY": 3300,
}  # fmt: skip


@dataclass
class World:
    """The vehicle and its answers. Positions are kept as north/east metres from home."""

    t: float = 0.0
    armed: bool = False
    mode: str = "STABILIZE"
    north: float = 0.0
    east: float = 0.0
    alt: float = 0.0
    battery_pct: int = 100
    target: tuple[float, float, float] | None = None
    released: bool = False
    params: dict[str, float] = field(default_factory=lambda: dict(SHIPPED_PARAMS))
    #: What `CheckSystems` is answered with (None: the companion has nothing to report).
    ground: GroundStatus | None = None
    #: The airspace limits the vehicle holds once uploaded.
    limits_held: object | None = None
    ready_at: float = 2.0
    speed_xy: float = 10.0
    speed_z: float = 2.0
    #: Knobs: answers to override by action type (a function of the action; None: the
    #: normal answer), targets that are acknowledged but not flown, pre-arm texts of a
    #: refused arm.
    answers: dict[type, Callable[[Action], CommandResult | None]] = field(default_factory=dict)
    ignore_targets: bool = False
    arm_texts: tuple[str, ...] = ()
    arm_refusals: int = 0
    actions: list[tuple[float, Action]] = field(default_factory=list)
    #: Called before every step with the world and the core; returns extra events to feed
    #: (a test's script: cut the link when the cruise starts, and so on).
    hooks: list[Callable[[World, MissionCore], list[Input]]] = field(default_factory=list)

    # -- what the core sees ------------------------------------------------------------------

    def state(self) -> VehicleState:
        lat, lon = self.latlon()
        ready = self.t >= self.ready_at
        vz = 0.0
        if self.mode in ("RTL", "LAND") and self.armed and self._over_home():
            vz = 0.5 if self.alt > 0 else 0.0
        return VehicleState(
            wall_time=0.0,
            boot_time_s=self.t,
            armed=self.armed,
            mode=self.mode,
            system_status=mavlink.MAV_STATE_ACTIVE if self.armed else mavlink.MAV_STATE_STANDBY,
            position=Position(lat, lon, 584.0 + self.alt, self.alt) if ready else None,
            velocity_ned_mps=(0.0, 0.0, vz),
            home=Position(*HOME, 584.0, 0.0) if ready else None,
            battery=Battery(12.6, 30.0, self.battery_pct, 0.0),
            gps=GpsInfo(fix_type=3 if ready else 0, satellites=10, hdop=0.8),
            ekf_flags=EKF_OK if ready else 0,
            heartbeats=int(self.t * 10),
            landed_state=(
                mavlink.MAV_LANDED_STATE_IN_AIR
                if self.armed and self.alt > 0.05
                else mavlink.MAV_LANDED_STATE_ON_GROUND
            ),
        )

    def latlon(self) -> tuple[float, float]:
        dist = math.hypot(self.north, self.east)
        bearing = math.degrees(math.atan2(self.east, self.north)) % 360.0
        return offset(*HOME, dist, bearing) if dist > 0 else HOME

    def _over_home(self) -> bool:
        return math.hypot(self.north, self.east) < 1.0

    # -- answering ---------------------------------------------------------------------------

    def answer(self, action: Action) -> list[Input]:
        """The events an action leads to at once (a command's result)."""
        self.actions.append((self.t, action))
        if isinstance(action, Transition | Finish):
            return []
        override = self.answers.get(type(action))
        result = override(action) if override is not None else None
        if result is not None:
            return [result]
        if isinstance(action, ReadParams):
            return [ParamsRead(action.token, tuple(sorted(self.params.items())))]
        if isinstance(action, UploadLimits):
            self.limits_held = action.limits
            self.params.update(action.limits.params)
            return [LimitsUploaded(action.token)]
        if isinstance(action, CheckSystems):
            if self.ground is None:
                return [SystemsChecked(action.token, error="nothing to report")]
            return [SystemsChecked(action.token, self.ground)]
        ok = CommandResult(action.token, True)
        if isinstance(action, SetMode):
            self.mode = action.mode
            self.target = None
        elif isinstance(action, Arm):
            if self.arm_refusals > 0:
                self.arm_refusals -= 1
                texts = self.arm_texts
                return [CommandResult(action.token, False, "MAV_RESULT_FAILED", texts=texts)]
            self.armed = True
        elif isinstance(action, Disarm):
            self.armed = False
        elif isinstance(action, Takeoff):
            if not self.armed or self.alt > 0.1 or self.mode != "GUIDED":
                return [CommandResult(action.token, False, "MAV_RESULT_FAILED")]
            self.target = (self.north, self.east, action.alt_m)
        elif isinstance(action, Reposition):
            if self.mode != "GUIDED":
                return [CommandResult(action.token, False, "MAV_RESULT_DENIED")]
            if not self.ignore_targets:
                east, north = local_en_m(*HOME, action.lat, action.lon)
                self.target = (north, east, action.alt_m)
        elif isinstance(action, ReleaseParcel):
            self.released = True
        elif isinstance(action, ChangeSpeed):
            pass
        return [ok]

    # -- moving ------------------------------------------------------------------------------

    def step(self, dt: float) -> None:
        self.t = round(self.t + dt, 6)
        if not self.armed:
            return
        if self.mode == "RTL":
            if self._over_home():
                self._descend(dt)
            else:
                self._toward((0.0, 0.0, max(self.alt, 15.0)), dt)
        elif self.mode == "LAND":
            self._descend(dt)
        elif self.target is not None:
            self._toward(self.target, dt)

    def _toward(self, target: tuple[float, float, float], dt: float) -> None:
        n, e, a = target
        dn, de = n - self.north, e - self.east
        dist = math.hypot(dn, de)
        step = min(dist, self.speed_xy * dt)
        if dist > 0:
            self.north += dn / dist * step
            self.east += de / dist * step
        da = a - self.alt
        self.alt += max(-self.speed_z * dt, min(self.speed_z * dt, da))

    def _descend(self, dt: float) -> None:
        self.alt = max(0.0, self.alt - self.speed_z * dt)
        if self.alt == 0.0:
            self.armed = False

    # -- driving a core ----------------------------------------------------------------------

    def run(self, core: MissionCore, *, dt: float = 0.1, until_s: float = 2000.0) -> None:
        """Fly `core` in this world until it finishes or `until_s` of vehicle time."""
        pending: list[Input] = []
        for action in core.start():
            pending += self.answer(action)
        while not core.finished and self.t < until_s:
            events: list[Input] = [StateUpdate(self.state()), *pending]
            pending = []
            for hook in self.hooks:
                events += hook(self, core)
            for event in events:
                for action in core.handle(event):
                    pending += self.answer(action)
            self.step(dt)

    # -- reading what happened ---------------------------------------------------------------

    def transitions(self) -> list[Transition]:
        return [a for _, a in self.actions if isinstance(a, Transition)]

    def story(self) -> list[tuple[str, str]]:
        return [(t.phase.value, t.event) for t in self.transitions()]

    def commands(self) -> list[Action]:
        return [a for _, a in self.actions if not isinstance(a, Transition | Finish)]

    def distance_from_home(self) -> float:
        lat, lon = self.latlon()
        return distance_m(*HOME, lat, lon)

    def replace(self, **changes: object) -> World:
        return dataclasses.replace(self, **changes)


def clears_release(core: MissionCore, given: Input) -> bool:
    """The specification, independent of the core's code: an input clears its drop when the
    core is in that drop's recipient check (not aborting), and it is a valid PIN, or a verdict
    decided during the check and at most `recipient_max_age_s` from now that says matched at
    a finite distance within a positive threshold, live, on at least one frame."""
    stage = core.stage
    if not isinstance(stage, VerifyRecipient) or core.phase is not Phase.RELEASE:
        return False
    if not isinstance(given, RecipientVerdict | FallbackPin) or given.drop_id != stage.drop_id:
        return False
    if isinstance(given, FallbackPin):
        return given.valid is True
    assert isinstance(given, RecipientVerdict) and core.now is not None
    limit = core.plan.limits.recipient_max_age_s
    d, th = given.distance, given.threshold
    return (
        stage.started_at is not None
        and given.decided_at_s >= stage.started_at
        and abs(core.now - given.decided_at_s) <= limit
        and given.matched is True
        and given.live is True
        and d is not None
        and math.isfinite(d)
        and math.isfinite(th)
        and th > 0
        and d <= th
        and given.frames >= 1
    )
