"""AUTO: running the stored mission the way AP_Mission and ModeAuto do.

One NAV command runs at a time. The DO/CONDITION commands between two NAV commands run when
the first of them completes (AP_Mission::advance_current_nav_cmd starts the first one,
advance_current_do_cmd the rest), one after the other, a CONDITION_DELAY holding back those
after it; DO commands before the first NAV command run when the mission starts. So a
DO_GRIPPER release placed after the drop waypoint fires once that waypoint (and its hold
time) is done. Each command started is announced ("Mission: 2 WP"); a NAV command that
completes sends MISSION_ITEM_REACHED. When the last command is done the vehicle holds
position in AUTO, or disarms if it has landed (ModeAuto::exit_mission).

Supported NAV commands: TAKEOFF, WAYPOINT (and SPLINE_WAYPOINT, flown straight), LOITER_TIME,
LOITER_UNLIM, LAND, RETURN_TO_LAUNCH, PAYLOAD_PLACE. Simplified PAYLOAD_PLACE: fly to the
point at the current altitude, descend at min(PLDP_SPEED_DN or LAND_SPEED, WPNAV_SPEED_DN)
until the parcel (hanging 0.3 m below the frame) or the vehicle touches the ground, or the
maximum descent (param1) is used up; release the gripper, wait PLDP_DELAY, climb back.
Other NAV commands are skipped with ArduCopter's "Skipping invalid cmd" warning.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .avoidance import AvoidingLeg
from .controllers import Controller, Land, PositionTarget, Rtl, Takeoff, arrived
from .dialect import mavlink
from .kinematics import MotionLimits
from .mission_store import MISSION, Item

if TYPE_CHECKING:
    from .copter import Copter

C = mavlink
LOAD_HANG_M = 0.3
PLACED_CHECK_S = 0.5  # ModeAuto PayloadPlace placed_check_duration_ms

NAV_COMMANDS = frozenset(
    {
        C.MAV_CMD_NAV_WAYPOINT, C.MAV_CMD_NAV_LOITER_UNLIM, C.MAV_CMD_NAV_LOITER_TURNS,
        C.MAV_CMD_NAV_LOITER_TIME, C.MAV_CMD_NAV_RETURN_TO_LAUNCH, C.MAV_CMD_NAV_LAND,
        C.MAV_CMD_NAV_TAKEOFF, C.MAV_CMD_NAV_CONTINUE_AND_CHANGE_ALT,
        C.MAV_CMD_NAV_LOITER_TO_ALT, C.MAV_CMD_NAV_SPLINE_WAYPOINT,
        C.MAV_CMD_NAV_GUIDED_ENABLE, C.MAV_CMD_NAV_DELAY, C.MAV_CMD_NAV_PAYLOAD_PLACE,
        C.MAV_CMD_NAV_SET_YAW_SPEED,
    }
)  # fmt: skip
# AP_Mission::Mission_Command::type()
TYPE_NAMES = {
    C.MAV_CMD_NAV_WAYPOINT: "WP", C.MAV_CMD_NAV_SPLINE_WAYPOINT: "SplineWP",
    C.MAV_CMD_NAV_RETURN_TO_LAUNCH: "RTL", C.MAV_CMD_NAV_LOITER_UNLIM: "LoitUnlim",
    C.MAV_CMD_NAV_LOITER_TIME: "LoitTime", C.MAV_CMD_NAV_TAKEOFF: "Takeoff",
    C.MAV_CMD_NAV_LAND: "Land", C.MAV_CMD_NAV_PAYLOAD_PLACE: "PayloadPlace",
    C.MAV_CMD_CONDITION_DELAY: "CondDelay", C.MAV_CMD_DO_CHANGE_SPEED: "ChangeSpeed",
    C.MAV_CMD_DO_SET_SERVO: "SetServo", C.MAV_CMD_DO_GRIPPER: "Gripper",
    C.MAV_CMD_DO_LAND_START: "LandStart", C.MAV_CMD_NAV_DELAY: "Delay",
}  # fmt: skip
_PASS_THROUGH_NEXT = (C.MAV_CMD_NAV_WAYPOINT, C.MAV_CMD_NAV_SPLINE_WAYPOINT)


class _Nav(Controller):
    """A running NAV command: a controller that says when it is done."""

    done = False


class _NavTakeoff(_Nav):
    def __init__(self, c: Copter, alt: float) -> None:
        self.takeoff = Takeoff(c, max(alt, c.body.alt))

    @property
    def taking_off(self) -> bool:
        return self.takeoff.taking_off

    def ground_step(self, c: Copter, dt: float) -> None:
        self.takeoff.ground_step(c, dt)

    def step(self, c: Copter, dt: float, lim: MotionLimits) -> None:
        self.takeoff.step(c, dt, lim)
        self.done = self.takeoff.complete


class _NavGoto(_Nav):
    """WAYPOINT, LOITER_TIME, LOITER_UNLIM: reach the point, then hold for `hold_s`
    (forever when None). A pass-through waypoint is passed at speed towards `next_point`
    unless the path planner says the way on meets the fence; while the planner routes the
    leg, the waypoint is not reached (AC_WPNav_OA::reached_wp_destination)."""

    def __init__(
        self,
        target: tuple[float, float, float],
        hold_s: float | None,
        pass_through: bool,
        radius: float,
        next_point: tuple[float, float] | None = None,
    ) -> None:
        self.point = target
        self.hold_s = hold_s
        self.pass_through = pass_through
        self.radius = radius
        self.reached_at: float | None = None
        self.leg = AvoidingLeg(target[:2], next_point if pass_through else None)

    def step(self, c: Copter, dt: float, lim: MotionLimits) -> None:
        north, east, alt = self.point
        body = c.body
        goal = self.leg.point(c)
        through = self.pass_through and self.leg.next_clear
        body.command_position_xy(*goal, lim, dt, pass_through=through and self.reached_at is None)
        body.command_altitude(alt, lim, dt)
        if self.reached_at is None and not self.leg.active:
            if through:
                reached = (
                    math.dist((north, east, alt), (body.north, body.east, body.alt)) < self.radius
                )
            else:
                reached = arrived(c, north, east) and abs(body.alt - alt) < 0.2
            if reached:
                self.reached_at = c.time
        if self.reached_at is not None and self.hold_s is not None:
            self.done = c.time - self.reached_at >= self.hold_s

    def target(self) -> tuple[float, float, float] | None:
        if self.leg.active:
            return (*self.leg.current, self.point[2])
        return self.point


class _NavLand(_Nav):
    """NAV_LAND: fly to the point at the current altitude (if one is given; around the fence
    when the path planner is on), then land."""

    def __init__(self, c: Copter, point: tuple[float, float] | None) -> None:
        self.approach = AvoidingLeg(point) if point else None
        self.approach_alt = c.body.alt
        self.land: Land | None = None if point else Land(c)

    @property
    def landing(self) -> bool:
        return self.land is not None

    def step(self, c: Copter, dt: float, lim: MotionLimits) -> None:
        if self.land is None and self.approach is not None:
            c.body.command_position_xy(*self.approach.point(c), lim, dt)
            c.body.command_altitude(self.approach_alt, lim, dt)
            if not self.approach.active and arrived(c, *self.approach.destination):
                self.land = Land(c)
        if self.land is not None:
            self.land.step(c, dt, lim)

    def ground_step(self, c: Copter, dt: float) -> None:
        self.done = self.land is not None


class _NavRtl(_Nav):
    def __init__(self, c: Copter) -> None:
        self.rtl = Rtl(c)

    @property
    def landing(self) -> bool:
        return self.rtl.landing

    def step(self, c: Copter, dt: float, lim: MotionLimits) -> None:
        self.rtl.step(c, dt, lim)

    def ground_step(self, c: Copter, dt: float) -> None:
        self.done = True

    def target(self) -> tuple[float, float, float] | None:
        return self.rtl.target()


class _NavPayloadPlace(_Nav):
    FLY, DESCENT, RELEASE, DELAY, ASCENT = range(5)
    PREFIX = "PayloadPlace:"

    def __init__(self, c: Copter, point: tuple[float, float], max_descent: float) -> None:
        self.point = point
        self.approach = AvoidingLeg(point)
        self.max_descent = max_descent
        self.state = self.FLY
        self.start_alt = c.body.alt
        self.since = c.time

    def _go(self, c: Copter, state: int) -> None:
        self.state = state
        self.since = c.time

    def step(self, c: Copter, dt: float, lim: MotionLimits) -> None:
        body = c.body
        goal = self.approach.point(c) if self.state == self.FLY else self.point
        body.command_position_xy(*goal, lim, dt)
        p = c.params
        if self.state == self.FLY:
            body.command_altitude(self.start_alt, lim, dt)
            if not self.approach.active and arrived(c, *self.point):
                self.start_alt = body.alt
                self._go(c, self.DESCENT)
        elif self.state == self.DESCENT:
            speed = p["PLDP_SPEED_DN"] if p["PLDP_SPEED_DN"] > 0 else abs(p["LAND_SPEED"]) / 100.0
            speed = min(speed, lim.speed_down)
            if self.max_descent > 0 and self.start_alt - body.alt > self.max_descent:
                c.out.text(C.MAV_SEVERITY_WARNING, f"{self.PREFIX} Reached maximum descent")
                self._go(c, self.ASCENT)
                return
            touching = c.touched_down or (c.gripper.load_held and body.alt <= LOAD_HANG_M)
            body.command_climb_rate(0.0 if touching else -speed, lim, dt)
            if not touching:
                self.since = c.time
            elif c.time - self.since >= PLACED_CHECK_S:
                c.out.text(C.MAV_SEVERITY_INFO, f"{self.PREFIX} landed")
                c.out.text(C.MAV_SEVERITY_INFO, f"{self.PREFIX} Releasing the gripper")
                c.gripper_action(C.GRIPPER_ACTION_RELEASE)
                self._go(c, self.RELEASE)
        elif self.state == self.RELEASE:
            body.command_climb_rate(0.0, lim, dt)
            if not c.gripper_busy():
                self._go(c, self.DELAY)
        elif self.state == self.DELAY:
            body.command_climb_rate(0.0, lim, dt)
            if c.time - self.since >= p["PLDP_DELAY"]:
                self._go(c, self.ASCENT)
        else:
            body.command_altitude(self.start_alt, lim, dt)
            self.done = abs(body.alt - self.start_alt) < 0.2


class AutoMission(Controller):
    """The AUTO mode controller."""

    def __init__(self, c: Copter) -> None:
        self.nav: _Nav | None = None
        self.hold: PositionTarget | None = None
        self.do_queue: list[Item] = []
        self.do_wait_until = 0.0
        self.delay_seq: int | None = None
        resume = not c.mission_complete and c.mission_index >= 1
        self._next = c.mission_index if resume else 1
        c.mission_complete = False

    @property
    def landing(self) -> bool:
        return self.nav is not None and self.nav.landing

    @property
    def taking_off(self) -> bool:
        return self.nav is not None and self.nav.taking_off

    def target(self) -> tuple[float, float, float] | None:
        """ModeAuto::get_wp: the waypoint of a WP-type or RTL command under way."""
        if self.hold is not None or self.nav is None:
            return None
        return self.nav.target()

    def restart_at(self, c: Copter, index: int) -> None:
        """MISSION_SET_CURRENT while running: abandon the current command, go to `index`."""
        self._next = max(index, 1)
        self.nav = None
        self.do_queue = []

    def ground_step(self, c: Copter, dt: float) -> None:
        if not (c.armed and c.auto_armed) or c.mission_complete:
            return
        self._advance(c)
        if self.nav is not None:
            self.nav.ground_step(c, dt)
            self._after_nav(c)

    def step(self, c: Copter, dt: float, lim: MotionLimits) -> None:
        if c.mission_complete or self.hold is not None:
            if self.hold is None:
                self.hold = PositionTarget(*c.body.stopping_point(lim))
            self.hold.step(c, dt, lim)
            return
        self._advance(c)
        if self.nav is None:
            return
        self.nav.step(c, dt, lim)
        self._run_do_commands(c)
        self._after_nav(c)

    def _after_nav(self, c: Copter) -> None:
        if self.nav is not None and self.nav.done:
            c.mission_item_reached(c.mission_index)
            self.nav = None
            # unfinished DO commands are dropped, as AP_Mission does when the NAV command advances
            self.do_queue, self.do_wait_until, self.delay_seq = [], 0.0, None
            self._advance(c)

    def _advance(self, c: Copter) -> None:
        """Start the next NAV command; the DO commands met on the way are queued to run."""
        items = c.missions.items(MISSION)
        while self.nav is None:
            index = self._next
            if index >= len(items):
                c.mission_done()
                return
            c.mission_index = index
            self._next = index + 1
            item = items[index]
            if item.command not in NAV_COMMANDS:
                self.do_queue.append(item)
                continue
            self._run_do_commands(c)
            self._announce(c, item)
            self.nav = self._start_nav(c, item, items)
        self._run_do_commands(c)

    def _announce(self, c: Copter, item: Item) -> None:
        name = TYPE_NAMES.get(item.command, "?")
        c.out.text(C.MAV_SEVERITY_INFO, f"Mission: {item.seq} {name}")

    def _run_do_commands(self, c: Copter) -> None:
        """Run queued DO commands. ModeAuto::verify_command reports MISSION_ITEM_REACHED for
        the ones the copter verifies (CONDITION_DELAY once over, DO_CHANGE_SPEED); those that
        AP_Mission runs itself (DO_GRIPPER, DO_SET_SERVO) are not reported."""
        if self.delay_seq is not None and c.time >= self.do_wait_until:
            c.mission_item_reached(self.delay_seq)
            self.delay_seq = None
        while self.do_queue and c.time >= self.do_wait_until:
            item = self.do_queue.pop(0)
            self._announce(c, item)
            self._run_do(c, item)

    def _run_do(self, c: Copter, item: Item) -> None:
        if item.command == C.MAV_CMD_CONDITION_DELAY:
            self.do_wait_until = c.time + item.param1
            self.delay_seq = item.seq
        elif item.command == C.MAV_CMD_DO_CHANGE_SPEED:
            if item.param2 > 0:
                c.set_speed(int(item.param1), item.param2)
            c.mission_item_reached(item.seq)
        elif item.command == C.MAV_CMD_DO_GRIPPER:
            c.gripper_action(int(item.param2))
        elif item.command == C.MAV_CMD_DO_SET_SERVO:
            c.set_servo(int(item.param1), int(item.param2))

    def _start_nav(self, c: Copter, item: Item, items: list[Item]) -> _Nav:
        north, east, alt = c.item_position(item)
        if item.command == C.MAV_CMD_NAV_TAKEOFF:
            return _NavTakeoff(c, alt)
        radius = c.params["WPNAV_RADIUS"] / 100.0
        if item.command in (C.MAV_CMD_NAV_WAYPOINT, C.MAV_CMD_NAV_SPLINE_WAYPOINT):
            following = next((i for i in items[item.seq + 1 :] if i.command in NAV_COMMANDS), None)
            hold = max(item.param1, 0.0)
            through = (
                hold == 0 and following is not None and following.command in _PASS_THROUGH_NEXT
            )
            after = c.item_position(following)[:2] if through and following else None
            return _NavGoto((north, east, alt), hold, through, radius, after)
        if item.command == C.MAV_CMD_NAV_LOITER_TIME:
            return _NavGoto((north, east, alt), max(item.param1, 0.0), False, radius)
        if item.command == C.MAV_CMD_NAV_LOITER_UNLIM:
            return _NavGoto((north, east, alt), None, False, radius)
        if item.command == C.MAV_CMD_NAV_LAND:
            return _NavLand(c, (north, east) if item.x or item.y else None)
        if item.command == C.MAV_CMD_NAV_RETURN_TO_LAUNCH:
            return _NavRtl(c)
        if item.command == C.MAV_CMD_NAV_PAYLOAD_PLACE:
            return _NavPayloadPlace(c, (north, east), max(item.param1, 0.0))
        c.out.text(C.MAV_SEVERITY_WARNING, f"Skipping invalid cmd #{item.command}")
        skipped = _Nav()
        skipped.done = True
        return skipped
