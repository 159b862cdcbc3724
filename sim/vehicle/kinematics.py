"""3-D point mass driven by ArduCopter's position-controller command shaping.

ArduCopter does not fly to a target directly: AC_PosControl turns every position or velocity
request into a jerk- and acceleration-limited trajectory with the "sqrt controller" of
AP_Math/control.cpp, and the airframe then tracks that trajectory closely. The functions below
are those shaping functions, transcribed, and `PointMass` follows the shaped trajectory. That
is why the built-in vehicle accelerates, cruises and brakes with ArduCopter's timing
(WPNAV_SPEED/ACCEL, WPNAV_SPEED_UP/DN, WPNAV_ACCEL_Z) instead of a hand-tuned curve.

Axes: north and east in metres from the EKF origin (home), `alt` in metres above home, up
positive. Horizontal vectors are plain (north, east) tuples: this runs thousands of times a
second of wall time and small tuples are the fastest thing Python has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Vec2 = tuple[float, float]

# ArduPilot's position-controller shaping jerk (PSC_JERK_NE, PSC_JERK_D defaults), m/s³: it
# sets how hard the position error is turned into a velocity request (the braking curve).
POS_JERK_XY = 5.0
JERK_Z = 5.0
# Jerk the airframe is given to reach a velocity. ArduCopter caps the shaping jerk by what the
# attitude controller can follow; 3 m/s³ reproduces SITL's measured ramp (1 m/s at 0.8 s,
# 5 m/s at 2.35 s, 9.5 m/s at ~5 s) and its 3 m/s entering the 2 m circle when stopping.
JERK_XY = 3.0
# accel reduction for zero-overshoot corners (AP_Math/control.cpp CORNER_ACCELERATION_RATIO)
_CORNER_RATIO = 1.0 / math.sqrt(2.0)


@dataclass(frozen=True)
class MotionLimits:
    """Kinematic limits of one control step, in SI units (WPNAV_* params are cm)."""

    speed_xy: float
    speed_up: float
    speed_down: float
    accel_xy: float
    accel_z: float
    jerk_xy: float = JERK_XY
    jerk_z: float = JERK_Z
    wind: Vec2 = (0.0, 0.0)
    airspeed_max: float = math.inf

    def ground_speed_limit(self, unit: Vec2) -> float:
        """Fastest ground speed along `unit` that keeps the airspeed within airspeed_max: with
        wind the vehicle can hold WPNAV_SPEED downwind but not always upwind, where its lean
        angle runs out."""
        if self.airspeed_max == math.inf:
            return self.speed_xy
        along = unit[0] * self.wind[0] + unit[1] * self.wind[1]
        wind_sq = self.wind[0] ** 2 + self.wind[1] ** 2
        disc = along * along - wind_sq + self.airspeed_max**2
        if disc <= 0.0:
            return 0.0
        return max(0.0, min(self.speed_xy, along + math.sqrt(disc)))


def sqrt_controller(error: float, p: float, second_ord_lim: float, dt: float) -> float:
    """Rate that closes `error` without exceeding `second_ord_lim` when braking (AP_Math)."""
    if second_ord_lim <= 0.0:
        rate = error * p
    elif p == 0.0:
        rate = math.copysign(math.sqrt(2.0 * second_ord_lim * abs(error)), error)
    else:
        linear_dist = second_ord_lim / (p * p)
        if error > linear_dist:
            rate = math.sqrt(2.0 * second_ord_lim * (error - linear_dist / 2.0))
        elif error < -linear_dist:
            rate = -math.sqrt(2.0 * second_ord_lim * (-error - linear_dist / 2.0))
        else:
            rate = error * p
    if dt > 0.0:
        bound = abs(error) / dt
        rate = max(-bound, min(bound, rate))
    return rate


def stopping_distance(speed: float, p: float, accel_max: float) -> float:
    """Distance the sqrt controller needs to stop from `speed` (AP_Math inv_sqrt_controller)."""
    linear_velocity = accel_max / p
    if abs(speed) < linear_velocity:
        return speed / p
    linear_dist = accel_max / (p * p)
    dist = linear_dist * 0.5 + speed * speed / (2.0 * accel_max)
    return dist if speed > 0 else -dist


def _limit(v: Vec2, length: float) -> Vec2:
    n = math.hypot(v[0], v[1])
    if n > length > 0.0:
        s = length / n
        return v[0] * s, v[1] * s
    return v


def shape_accel(accel_input: float, accel: float, jerk_max: float, dt: float) -> float:
    """Move `accel` toward `accel_input` no faster than `jerk_max`."""
    step = jerk_max * dt
    return accel + max(-step, min(step, accel_input - accel))


def shape_vel_accel(
    vel_input: float,
    vel: float,
    accel: float,
    accel_min: float,
    accel_max: float,
    jerk_max: float,
    dt: float,
) -> float:
    """Acceleration that brings `vel` to `vel_input` within accel and jerk limits (1-D)."""
    vel_error = vel_input - vel
    kpa = jerk_max / accel_max if vel_error > 0 else jerk_max / -accel_min
    accel_target = sqrt_controller(vel_error, kpa, jerk_max, dt)
    accel_target = max(accel_min, min(accel_max, accel_target))
    return shape_accel(accel_target, accel, jerk_max, dt)


def shape_vel_accel_xy(
    vel_input: Vec2, vel: Vec2, accel: Vec2, accel_max: float, jerk_max: float, dt: float
) -> Vec2:
    """Horizontal acceleration that brings `vel` to `vel_input` (AP_Math shape_vel_accel_xy)."""
    kpa = jerk_max / accel_max
    err = (vel_input[0] - vel[0], vel_input[1] - vel[1])
    err_len = math.hypot(err[0], err[1])
    if err_len > 0.0:
        rate = sqrt_controller(err_len, kpa, jerk_max, dt)
        target = (err[0] * rate / err_len, err[1] * rate / err_len)
    else:
        target = (0.0, 0.0)
    in_len = math.hypot(vel_input[0], vel_input[1])
    if in_len == 0.0:
        target = _limit(target, accel_max)
    else:
        unit = (vel_input[0] / in_len, vel_input[1] / in_len)
        along = unit[0] * target[0] + unit[1] * target[1]
        cross = (target[0] - unit[0] * along, target[1] - unit[1] * along)
        if along * along <= cross[0] ** 2 + cross[1] ** 2:
            target = _limit(target, accel_max)
        else:
            cross = _limit(cross, _CORNER_RATIO * accel_max)
            along_max = math.sqrt(max(accel_max**2 - cross[0] ** 2 - cross[1] ** 2, 0.0))
            along = max(-along_max, min(along_max, along))
            target = (cross[0] + unit[0] * along, cross[1] + unit[1] * along)
    step = _limit((target[0] - accel[0], target[1] - accel[1]), jerk_max * dt)
    return accel[0] + step[0], accel[1] + step[1]


class PointMass:
    """The vehicle's position, velocity and acceleration, moved one shaped control step at a
    time. Each step the owner calls one horizontal and one vertical `command_*` method and then
    `integrate`; the ground (alt 0) stops any descent."""

    def __init__(self) -> None:
        self.north = 0.0
        self.east = 0.0
        self.alt = 0.0
        self.vel: Vec2 = (0.0, 0.0)
        self.vel_z = 0.0
        self.accel: Vec2 = (0.0, 0.0)
        self.accel_z = 0.0

    @property
    def ground_speed(self) -> float:
        """Horizontal speed, m/s."""
        return math.hypot(self.vel[0], self.vel[1])

    def stop(self) -> None:
        """Sit still (on the ground): no velocity, no acceleration."""
        self.vel = (0.0, 0.0)
        self.vel_z = 0.0
        self.accel = (0.0, 0.0)
        self.accel_z = 0.0

    def stopping_point(self, limits: MotionLimits) -> tuple[float, float, float]:
        """Where the vehicle would come to rest if asked to stop now (AC_PosControl's
        get_stopping_point), used as the hold position for LOITER, BRAKE and LAND."""
        kp_xy = 0.5 * POS_JERK_XY / limits.accel_xy
        speed = self.ground_speed
        north, east = self.north, self.east
        if speed > 0.0:
            dist = stopping_distance(speed, kp_xy, 0.5 * limits.accel_xy)
            north += self.vel[0] / speed * dist
            east += self.vel[1] / speed * dist
        kp_z = 0.5 * limits.jerk_z / limits.accel_z
        alt = (
            self.alt + stopping_distance(self.vel_z, kp_z, 0.5 * limits.accel_z)
            if self.vel_z
            else self.alt
        )
        return north, east, alt

    def command_position_xy(
        self, north: float, east: float, limits: MotionLimits, dt: float, pass_through: bool = False
    ) -> None:
        """Head for a horizontal position (AC_PosControl input_pos_NE / shape_pos_vel_accel_xy).
        With `pass_through` the vehicle does not brake for the point: AUTO uses it for a
        waypoint that is followed by another, as ArduPilot's S-curves carry speed through."""
        err = (north - self.north, east - self.east)
        dist = math.hypot(err[0], err[1])
        if dist > 0.0:
            unit = (err[0] / dist, err[1] / dist)
            speed = limits.ground_speed_limit(unit)
            if not pass_through:
                kpv = 0.5 * POS_JERK_XY / limits.accel_xy
                speed = min(sqrt_controller(dist, kpv, 0.5 * limits.accel_xy, dt), speed)
            vel_target = (unit[0] * speed, unit[1] * speed)
        else:
            vel_target = (0.0, 0.0)
        self.accel = shape_vel_accel_xy(
            vel_target, self.vel, self.accel, limits.accel_xy, limits.jerk_xy, dt
        )

    def command_velocity_xy(self, vel: Vec2, limits: MotionLimits, dt: float) -> None:
        """Fly at a horizontal velocity (guided velocity control, shape_vel_accel_xy)."""
        length = math.hypot(vel[0], vel[1])
        if length > 0.0:
            vel = _limit(vel, limits.ground_speed_limit((vel[0] / length, vel[1] / length)))
        self.accel = shape_vel_accel_xy(
            vel, self.vel, self.accel, limits.accel_xy, limits.jerk_xy, dt
        )

    def command_altitude(self, alt: float, limits: MotionLimits, dt: float) -> None:
        """Head for an altitude (shape_pos_vel_accel on the U axis)."""
        kpv = 0.5 * limits.jerk_z / limits.accel_z
        vel_target = sqrt_controller(alt - self.alt, kpv, 0.5 * limits.accel_z, dt)
        vel_target = max(-limits.speed_down, min(limits.speed_up, vel_target))
        self.command_climb_rate(vel_target, limits, dt)

    def command_climb_rate(self, vel_z: float, limits: MotionLimits, dt: float) -> None:
        """Climb (positive) or descend at a vertical speed (shape_vel_accel on the U axis)."""
        self.accel_z = shape_vel_accel(
            vel_z, self.vel_z, self.accel_z, -limits.accel_z, limits.accel_z, limits.jerk_z, dt
        )

    def integrate(self, dt: float) -> bool:
        """Advance by `dt` with the commanded acceleration. Returns True when this step put the
        vehicle on the ground (it was descending and reached alt 0)."""
        ax, ay = self.accel
        vx, vy = self.vel
        half = 0.5 * dt * dt
        self.north += vx * dt + ax * half
        self.east += vy * dt + ay * half
        self.vel = (vx + ax * dt, vy + ay * dt)
        self.alt += self.vel_z * dt + self.accel_z * half
        self.vel_z += self.accel_z * dt
        if self.alt <= 0.0 and self.vel_z <= 0.0:
            self.alt = 0.0
            self.stop()
            return True
        return False
