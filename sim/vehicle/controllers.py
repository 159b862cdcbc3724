"""What each flight mode does with the position controller, one control step at a time.

A controller is the part of an ArduCopter mode's run() that matters to the outside: which
position, altitude, velocity or descent rate it asks for. The copter calls `step` every
control period while airborne and `ground_step` while landed (only a takeoff, or AUTO waiting
to start, does anything there). Timings that are not a consequence of the shaping are
ArduCopter's constants, named where they are defined, or SITL measurements, said so.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .avoidance import AvoidingLeg
from .kinematics import MotionLimits, sqrt_controller

if TYPE_CHECKING:
    from .copter import Copter

ARMING_DELAY_S = 2.0  # ArduCopter ARMING_DELAY_SEC: motors idle before a takeoff may start
# Spool-up from ground idle to lift-off once a takeoff may start. Fitted to SITL: 4.2 s from
# the takeoff command to 0.5 m and 17.4 s to 29.5 m, given the 2 s arming delay.
SPOOL_UP_S = 1.15
LAND_PAUSE_S = 4.0  # ArduCopter LAND_WITH_DELAY_MS: failsafe landings hover first
BRAKE_DECEL = 7.5  # ArduCopter BRAKE_MODE_DECEL_RATE, m/s²
BRAKE_JERK = 15.0  # BRAKE tilts back as fast as the attitude controller allows, m/s³
POS_Z_P = 1.0  # PSC_POSZ_P, used by the landing descent-rate controller
# A waypoint that the vehicle stops at counts as reached once the shaped trajectory has
# settled on it; with these thresholds the final approach after entering the 2 m circle takes
# the ~2.7 s SITL takes between "within 2 m of home" and the start of RTL's loiter.
ARRIVE_DIST_M = 0.5
ARRIVE_SPEED = 0.5
# SITL's RTL spends ~3 s in its initial-climb stage even when it is already above RTL_ALT
# (the S-curve leg to the climb target at WPNAV_JERK); modelled as this minimum stage time.
RTL_CLIMB_STAGE_MIN_S = 3.0
RTL_ALT_MIN = 0.3  # ArduCopter RTL_ALT_MIN, m
RTL_MIN_CONE_SLOPE = 0.5


def arrived(c: Copter, north: float, east: float) -> bool:
    """The vehicle has come to rest at a horizontal point."""
    body = c.body
    return (
        math.hypot(north - body.north, east - body.east) < ARRIVE_DIST_M
        and body.ground_speed < ARRIVE_SPEED
    )


def land_descent_rate(c: Copter, lim: MotionLimits, dt: float) -> float:
    """ArduCopter's landing climb rate (negative): WPNAV_SPEED_DN (or LAND_SPEED_HIGH) above
    LAND_ALT_LOW, blended by the sqrt controller to LAND_SPEED below it."""
    p = c.params
    land_speed = abs(p["LAND_SPEED"]) / 100.0
    high = p["LAND_SPEED_HIGH"] / 100.0 if p["LAND_SPEED_HIGH"] > 0 else lim.speed_down
    alt_low = max(p["LAND_ALT_LOW"], 100.0) / 100.0
    rate = sqrt_controller(alt_low - c.body.alt, POS_Z_P, p["WPNAV_ACCEL_Z"] / 100.0, dt)
    return max(-max(high, land_speed), min(-land_speed, rate))


class Controller:
    """Base: hold nothing, command nothing."""

    @property
    def landing(self) -> bool:
        """Descending to land: touch-down ends in disarm (EXTENDED_SYS_STATE LANDING)."""
        return False

    @property
    def taking_off(self) -> bool:
        """A takeoff is under way (EXTENDED_SYS_STATE TAKEOFF once off the ground)."""
        return False

    def step(self, c: Copter, dt: float, lim: MotionLimits) -> None:
        """One control step while airborne."""

    def ground_step(self, c: Copter, dt: float) -> None:
        """One control step while landed."""

    def target(self) -> tuple[float, float, float] | None:
        """The waypoint the mode reports (Mode::get_wp), north/east/alt above home, or None
        where ArduCopter has none (takeoff, velocity control, loiter, landing)."""
        return None


class PositionTarget(Controller):
    """Fly to and hold a point: LOITER/POSHOLD hold, any hover."""

    def __init__(self, north: float, east: float, alt: float) -> None:
        self.north, self.east, self.alt = north, east, alt

    def step(self, c: Copter, dt: float, lim: MotionLimits) -> None:
        c.body.command_position_xy(self.north, self.east, lim, dt)
        c.body.command_altitude(self.alt, lim, dt)


class GuidedPosition(PositionTarget):
    """GUIDED position control: a destination from DO_REPOSITION or a position setpoint,
    reported by POSITION_TARGET_GLOBAL_INT. On the ground it is stored and nothing moves
    (pos_control_run's ground handling). ModeGuided flies it with the position controller
    (SubMode::Pos), straight; with `wpnav` (GUID_OPTIONS bit 6, SubMode::WP) with the waypoint
    navigator, which goes around the fence when the path planner is on (`avoidance`)."""

    def __init__(self, north: float, east: float, alt: float, wpnav: bool = False) -> None:
        super().__init__(north, east, alt)
        self.leg = AvoidingLeg((north, east)) if wpnav else None

    def step(self, c: Copter, dt: float, lim: MotionLimits) -> None:
        if self.leg is None:
            super().step(c, dt, lim)
            return
        c.body.command_position_xy(*self.leg.point(c), lim, dt)
        c.body.command_altitude(self.alt, lim, dt)

    def target(self) -> tuple[float, float, float] | None:
        """The destination, or the planner's point on the way (get_oa_wp_destination)."""
        if self.leg is not None and self.leg.active:
            return (*self.leg.current, self.alt)
        return self.north, self.east, self.alt


class VelocityTarget(Controller):
    """GUIDED velocity control (SubMode::VelAccel), also what GUIDED starts in (zero velocity:
    the vehicle stops and stays); stops if not refreshed within GUID_TIMEOUT."""

    def __init__(self, vel: tuple[float, float], climb: float, now: float) -> None:
        self.vel, self.climb, self.set_at = vel, climb, now

    def step(self, c: Copter, dt: float, lim: MotionLimits) -> None:
        if c.time - self.set_at > c.params["GUID_TIMEOUT"]:
            self.vel, self.climb = (0.0, 0.0), 0.0
        c.body.command_velocity_xy(self.vel, lim, dt)
        c.body.command_climb_rate(self.climb, lim, dt)


class Brake(Controller):
    """BRAKE: stop as hard as BRAKE_MODE_DECEL_RATE allows, then hold."""

    def __init__(self, alt: float) -> None:
        self.alt = alt
        self.hold: PositionTarget | None = None

    def step(self, c: Copter, dt: float, lim: MotionLimits) -> None:
        if self.hold is None and c.body.ground_speed < 0.1:
            self.hold = PositionTarget(c.body.north, c.body.east, self.alt)
        if self.hold is not None:
            self.hold.step(c, dt, lim)
            return
        hard = MotionLimits(
            lim.speed_xy, lim.speed_up, lim.speed_down, BRAKE_DECEL, lim.accel_z, BRAKE_JERK
        )
        c.body.command_velocity_xy((0.0, 0.0), hard, dt)
        c.body.command_altitude(self.alt, lim, dt)


class Manual(Controller):
    """STABILIZE/ALT_HOLD with the sticks centred: altitude held, no position control, so the
    vehicle coasts to a stop relative to the air and then drifts with the wind."""

    def __init__(self, alt: float) -> None:
        self.alt = alt

    def step(self, c: Copter, dt: float, lim: MotionLimits) -> None:
        drift = MotionLimits(lim.speed_xy, lim.speed_up, lim.speed_down, 1.0, lim.accel_z)
        c.body.command_velocity_xy(lim.wind, drift, dt)
        c.body.command_altitude(self.alt, lim, dt)


class Takeoff(Controller):
    """User or mission takeoff: motors idle until the arming delay is over, spool up, then a
    vertical climb at WPNAV_SPEED_UP to the target; afterwards the point is held."""

    def __init__(self, c: Copter, alt: float) -> None:
        self.north, self.east = c.body.north, c.body.east
        self.alt = alt
        self.climb_start = max(c.time, c.arm_time + ARMING_DELAY_S) + SPOOL_UP_S
        self.complete = False

    def ground_step(self, c: Copter, dt: float) -> None:
        if c.time >= self.climb_start:
            c.lift_off()

    def step(self, c: Copter, dt: float, lim: MotionLimits) -> None:
        c.body.command_position_xy(self.north, self.east, lim, dt)
        c.body.command_altitude(self.alt, lim, dt)
        if not self.complete and c.body.alt >= self.alt - 0.1:
            self.complete = True

    @property
    def taking_off(self) -> bool:
        return not self.complete


class Land(Controller):
    """LAND: hold the stopping point horizontally and descend at the landing rate (after a
    4 s hover when a failsafe asked for it)."""

    def __init__(self, c: Copter, pause: bool = False) -> None:
        self.north, self.east, _ = c.body.stopping_point(c.limits())
        self.pause_until = c.time + (LAND_PAUSE_S if pause else 0.0)

    @property
    def landing(self) -> bool:
        return True

    def step(self, c: Copter, dt: float, lim: MotionLimits) -> None:
        c.body.command_position_xy(self.north, self.east, lim, dt)
        rate = 0.0 if c.time < self.pause_until else land_descent_rate(c, lim, dt)
        c.body.command_climb_rate(rate, lim, dt)


class Rtl(Controller):
    """RTL's stages (ArduCopter mode_rtl.cpp): initial climb to the return altitude over the
    stopping point, return at that altitude to home or the nearest rally point (around the
    fence when the path planner is on, `avoidance`), loiter RTL_LOIT_TIME, then land (or
    descend to RTL_ALT_FINAL and hover)."""

    CLIMB, RETURN, LOITER, DESCENT, LAND = range(5)

    def __init__(self, c: Copter) -> None:
        lim = c.limits()
        p = c.params
        north, east, _ = c.body.stopping_point(lim)
        self.origin = (north, east)
        tgt_north, tgt_east, rally_alt = c.return_point()
        self.target_ne = (tgt_north, tgt_east)
        curr_alt = c.body.alt
        min_alt = max(RTL_ALT_MIN, curr_alt + max(0.0, p["RTL_CLIMB_MIN"] / 100.0))
        alt = max(max(rally_alt, 0.0), p["RTL_ALT"] / 100.0, min_alt)
        dist = math.hypot(tgt_north - north, tgt_east - east)
        if p["RTL_CONE_SLOPE"] >= RTL_MIN_CONE_SLOPE:
            alt = min(alt, max(dist * p["RTL_CONE_SLOPE"], min_alt))
        if c.fence_enabled_types() & 1:
            alt = min(alt, p["FENCE_ALT_MAX"] - p["FENCE_MARGIN"])
        self.return_alt = max(alt, curr_alt)
        self.stage = self.CLIMB
        self.stage_start = c.time
        self._land: Land | None = None
        self._return = AvoidingLeg(self.target_ne)

    @property
    def landing(self) -> bool:
        return self.stage == self.LAND

    def target(self) -> tuple[float, float, float] | None:
        """ModeRTL::get_wp: the climb target, then the return point at the return altitude
        (the path planner's point on the way while it is routing the return; the return
        point again while loitering and descending over it); none once landing."""
        if self.stage == self.CLIMB:
            return (*self.origin, self.return_alt)
        if self.stage == self.LAND:
            return None
        if self.stage == self.RETURN and self._return.active:
            return (*self._return.current, self.return_alt)
        return (*self.target_ne, self.return_alt)

    def _next(self, c: Copter, stage: int) -> None:
        self.stage = stage
        self.stage_start = c.time

    def step(self, c: Copter, dt: float, lim: MotionLimits) -> None:
        body = c.body
        if self.stage == self.CLIMB:
            body.command_position_xy(*self.origin, lim, dt)
            body.command_altitude(self.return_alt, lim, dt)
            if (
                c.time - self.stage_start >= RTL_CLIMB_STAGE_MIN_S
                and abs(body.alt - self.return_alt) < 0.2
                and abs(body.vel_z) < 0.2
            ):
                self._next(c, self.RETURN)
        elif self.stage == self.RETURN:
            body.command_position_xy(*self._return.point(c), lim, dt)
            body.command_altitude(self.return_alt, lim, dt)
            if arrived(c, *self.target_ne):
                self._next(c, self.LOITER)
        elif self.stage == self.LOITER:
            body.command_position_xy(*self.target_ne, lim, dt)
            body.command_altitude(self.return_alt, lim, dt)
            if c.time - self.stage_start >= c.params["RTL_LOIT_TIME"] / 1000.0:
                final = c.params["RTL_ALT_FINAL"] / 100.0
                self._next(c, self.LAND if final <= 0 else self.DESCENT)
                if self.stage == self.LAND:
                    self._land = Land(c)
        elif self.stage == self.DESCENT:
            body.command_position_xy(*self.target_ne, lim, dt)
            body.command_altitude(c.params["RTL_ALT_FINAL"] / 100.0, lim, dt)
        elif self._land is not None:
            self._land.step(c, dt, lim)
