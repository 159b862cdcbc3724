"""Multirotor energy model: the power, time and battery charge of every leg of a delivery.

Why a physical model rather than a table: the planner must price legs it has never flown
(other distances, payloads, winds, airframes), and a refusal must hold up ("drop 7 needs
2410 mAh, the battery has 2380 usable above its reserve"), so every number comes from a few
airframe constants with a stated source.

Power (rotary-wing model of Zeng, Xu and Zhang, "Energy Minimization for Wireless
Communication With Rotary-Wing UAV", IEEE Trans. Wireless Commun. 18(4), 2019, eq. 12, which
restates the blade-element/momentum model of Filippone's "Flight Performance of Fixed and
Rotary Wing Aircraft", 2006; the same three terms as Liu et al., "A power consumption model
for multi-rotor small unmanned aircraft systems", ICUAS 2017)::

    P = (P_induced + P_profile + P_parasite) / eta + P_avionics
    P_induced  = T * (Vc + v_i),  v_i * sqrt(V^2 + (Vc + v_i)^2) = v0^2,  v0^2 = T / (2 rho A)
    P_profile  = P0 * (1 + 3 V^2 / U_tip^2)
    P_parasite = D * V,  D = rho * S_fp * V^2 / 2,  T = sqrt((m g)^2 + D^2)

with V the airspeed, Vc the climb rate (negative descending), m the total mass (airframe
with battery, plus payload), A the rotor disk area, S_fp the equivalent flat-plate drag area
and eta the powertrain (motor, ESC) efficiency. In hover (V = Vc = 0) the induced power is
momentum theory's T^1.5 / sqrt(2 rho A): hover power grows with mass to the power 1.5. In
level flight v_i is Zeng's closed form: induced power falls with speed while profile and
parasitic power rise, a U-shaped curve. Climbing, T * Vc is the work against gravity and
the inflow follows Glauert's momentum relation; for slow descents (|Vc| well below v0, as
ArduCopter's 1.5 m/s against v0 of about 5.5 m/s) the same relation is the usual
approximation; where it has no positive root the induced power is taken as zero.

Times follow ArduCopter's flight: ground speed held at the waypoint speed (WPNAV_SPEED) with
WPNAV_ACCEL ramps at both ends, vertical rates with WPNAV_ACCEL_Z ramps, the take-off
spool-up, RTL's climb stage and RTL_LOIT_TIME, LAND's slow final metres (LAND_ALT_LOW,
LAND_SPEED).

Wind: with its direction known and a leg's track known, the airspeed is exact (ground
velocity minus wind: head, tail and cross components). Otherwise the allowance is the worst
case over every direction: the highest power over the airspeeds the wind can make,
|v - w| to v + w for a transit and 0 to w when holding position. Because that range only
widens as the wind grows, the allowance never falls with more wind.

Calibration (tests/test_routing_energy.py): the default delivery (500 m, 30 m cruise,
hand-over at 5 m) predicted against ArduCopter SITL's reported charge (1629 mAh, about
1840 mAh with the 1 kg parcel: shared/reference/ardupilot-sitl.md) and against the built-in
vehicle flying it, each within 10 %.

Sans-I/O: pure functions of numbers; no clock, no files.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from companion.mission.plan import MissionPlan

GRAVITY = 9.80665
#: ISA sea-level air density, kg/m³.
SEA_LEVEL_AIR_DENSITY = 1.225
#: Airspeeds sampled across a wind's range when looking for the worst case.
_WIND_SAMPLES = 16
_BISECTION_STEPS = 80


class EnergyInputError(ValueError):
    """An input the energy model cannot price: negative, not finite, or out of range. The
    message names the field and the value."""


class EnvelopeError(EnergyInputError):
    """A leg the airframe cannot fly: e.g. the wind needs more airspeed than it has."""


def _finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EnergyInputError(f"{name}: must be a number, got {value!r}")
    if not math.isfinite(value):
        raise EnergyInputError(f"{name}: must be finite, got {value!r}")
    return float(value)


def _non_negative(name: str, value: float) -> float:
    value = _finite(name, value)
    if value < 0:
        raise EnergyInputError(f"{name}: must not be negative, got {value:g}")
    return value


def _positive(name: str, value: float) -> float:
    value = _finite(name, value)
    if value <= 0:
        raise EnergyInputError(f"{name}: must be positive, got {value:g}")
    return value


def _fraction(name: str, value: float, *, allow_zero: bool) -> float:
    value = _finite(name, value)
    if not (0 <= value <= 1) or (value == 0 and not allow_zero):
        low = "0" if allow_zero else "above 0"
        raise EnergyInputError(f"{name}: must be {low} and at most 1, got {value:g}")
    return value


@dataclass(frozen=True)
class Battery:
    """A pack: rated charge, nominal voltage, the share of the rating it can really deliver
    (age, cold, voltage cut-off) and the share kept in reserve at landing."""

    capacity_mah: float
    nominal_voltage_v: float
    usable_fraction: float = 1.0
    reserve_fraction: float = 0.20

    def __post_init__(self) -> None:
        _positive("battery.capacity_mah", self.capacity_mah)
        _positive("battery.nominal_voltage_v", self.nominal_voltage_v)
        _fraction("battery.usable_fraction", self.usable_fraction, allow_zero=False)
        _fraction("battery.reserve_fraction", self.reserve_fraction, allow_zero=True)
        if self.reserve_fraction >= self.usable_fraction:
            raise EnergyInputError(
                f"battery.reserve_fraction ({self.reserve_fraction:g}) leaves nothing to fly "
                f"on: it must be below battery.usable_fraction ({self.usable_fraction:g})"
            )

    @property
    def capacity_wh(self) -> float:
        """Rated energy at nominal voltage."""
        return self.capacity_mah * self.nominal_voltage_v / 1000.0

    @property
    def usable_mah(self) -> float:
        """Charge the pack can deliver."""
        return self.capacity_mah * self.usable_fraction

    @property
    def reserve_mah(self) -> float:
        """Charge that must still be in the pack on landing (a share of the rating, as
        ArduPilot's BATT_LOW_MAH is)."""
        return self.capacity_mah * self.reserve_fraction

    @property
    def budget_mah(self) -> float:
        """Charge a flight may use: usable minus reserve."""
        return self.usable_mah - self.reserve_mah


@dataclass(frozen=True)
class Airframe:
    """The constants of the power model for one airframe; see the module docstring for the
    model. Each named profile below documents where each number comes from."""

    name: str
    #: Take-off mass with its battery and without payload, kg.
    mass_kg: float
    #: Heaviest parcel it may carry, kg.
    max_payload_kg: float
    #: Total rotor disk area, m².
    disk_area_m2: float
    #: Blade profile power in hover, W (mechanical).
    profile_power_w: float
    #: Rotor blade tip speed, m/s.
    tip_speed_mps: float
    #: Fuselage equivalent flat-plate drag area (drag coefficient times area), m².
    drag_area_m2: float
    #: Mechanical rotor power over electrical power drawn (motors, ESCs).
    powertrain_efficiency: float
    #: Flight controller, companion, radios, W.
    avionics_power_w: float
    #: Fastest airspeed it holds (lean-angle limit), m/s.
    max_airspeed_mps: float
    #: From the take-off command to lifting off (arming delay, spool-up), s, at hover power.
    spool_up_s: float
    battery: Battery

    def __post_init__(self) -> None:
        for name in (
            "mass_kg",
            "disk_area_m2",
            "tip_speed_mps",
            "max_airspeed_mps",
        ):
            _positive(f"airframe {self.name}: {name}", getattr(self, name))
        for name in (
            "max_payload_kg",
            "profile_power_w",
            "drag_area_m2",
            "avionics_power_w",
            "spool_up_s",
        ):
            _non_negative(f"airframe {self.name}: {name}", getattr(self, name))
        _fraction(
            f"airframe {self.name}: powertrain_efficiency",
            self.powertrain_efficiency,
            allow_zero=False,
        )


# ArduCopter SITL's quad (`--model +`): libraries/SITL/SIM_Frame.h, FrameModel defaults
# (ArduPilot master, October 2025) for the mass and the rotors; the rest fitted to SITL's
# measured currents (shared/reference/ardupilot-sitl.md) because SITL's current comes from
# its own motor model, not from blade aerodynamics.
SITL_COPTER = Airframe(
    name="sitl-copter",
    mass_kg=3.0,  # SIM_Frame.h FrameModel::mass
    max_payload_kg=1.0,  # SITL's simulated gripper load (ardupilot-sitl.md: 1 kg parcel)
    disk_area_m2=0.385,  # SIM_Frame.h FrameModel::disc_area, 4 x 0.35 m rotors
    # Fitted with powertrain_efficiency to SITL's hover current, ~30 A without and ~40 A
    # with the 1 kg load at 12.6 V (378 W and 504 W): two points, two unknowns.
    profile_power_w=102.6,
    powertrain_efficiency=0.706,
    tip_speed_mps=120.0,  # Zeng et al. 2019, Table I (a 0.4 m rotor at 300 rad/s)
    # Fitted so that 10 m/s cruise draws what hover does, as SITL does (~30 A both).
    drag_area_m2=0.112,
    avionics_power_w=0.0,  # SITL's current is the motors' only
    max_airspeed_mps=15.0,  # SIM_Frame.h refSpd 15.08 m/s at its 45° refAngle
    spool_up_s=4.2,  # ardupilot-sitl.md: 4.2 s from the take-off command to 0.5 m
    # sitl-copter.parm BATT_CAPACITY 3300; SIM_Frame.h maxVoltage 4.2 x 3 = 12.6 V, which
    # SITL holds (no sag); a coulomb counter, so all of it is usable.
    battery=Battery(capacity_mah=3300.0, nominal_voltage_v=12.6, usable_fraction=1.0),
)

# A 4S 5000 mAh quad (firmware_bridge/autopilot/params/airframes/quad-4s-5000.parm). The
# battery numbers are the parameter file's; the airframe numbers are those of a typical
# 550-650 mm class quad with 13-inch propellers and are assumptions to replace with the
# operator's own measurements (hover current from the flight log: CTUN/BAT at hover).
QUAD_4S_5000 = Airframe(
    name="quad-4s-5000",
    # assumption: ~1.55 kg frame, motors, ESCs, avionics + ~0.55 kg for the 4S 5000 mAh
    # pack (typical LiPo datasheets: 0.50-0.60 kg)
    mass_kg=2.1,
    max_payload_kg=1.0,  # assumption: the delivery payload the project flies (1 kg parcel)
    disk_area_m2=4 * math.pi * (0.3302 / 2) ** 2,  # four 13-inch (0.3302 m) propellers
    # assumption: profile power ~40 % of ideal induced power in hover (figure of merit ~0.7,
    # typical of small propellers: Leishman, "Principles of Helicopter Aerodynamics", ch. 2)
    profile_power_w=0.4 * (2.1 * GRAVITY) ** 1.5 / math.sqrt(2 * 1.225 * 4 * math.pi * 0.1651**2),
    tip_speed_mps=110.0,  # a 13-inch propeller at ~6300 rpm in hover
    # assumption: flat-plate area of the frame, arms and a parcel box, which puts the speed
    # of least power near 8 m/s (assumed typical of quads of this size)
    drag_area_m2=0.06,
    powertrain_efficiency=0.75,  # assumption: motor x ESC efficiency at hover throttle
    avionics_power_w=8.0,  # assumption: flight controller + Raspberry Pi + LTE modem
    max_airspeed_mps=15.0,  # assumption: ANGLE_MAX 30° against its drag
    spool_up_s=4.2,  # ArduCopter take-off: as SITL (ardupilot-sitl.md)
    # quad-4s-5000.parm BATT_CAPACITY 5000; 4 cells x 3.7 V nominal; usable 90 % (assumption:
    # a used LiPo above its 3.5 V/cell low-voltage threshold); reserve 20 % = BATT_LOW_MAH
    # 1000 of 5000.
    battery=Battery(capacity_mah=5000.0, nominal_voltage_v=14.8, usable_fraction=0.9),
)

#: The named profiles, by the name of their parameter file in
#: firmware_bridge/autopilot/params/airframes/.
AIRFRAMES: Mapping[str, Airframe] = {a.name: a for a in (SITL_COPTER, QUAD_4S_5000)}


def airframe(name: str) -> Airframe:
    """The named airframe profile, or an error that lists the known ones."""
    try:
        return AIRFRAMES[name]
    except KeyError:
        known = ", ".join(sorted(AIRFRAMES))
        raise EnergyInputError(f"unknown airframe {name!r} (known: {known})") from None


@dataclass(frozen=True)
class FlightProfile:
    """How the autopilot flies the legs: its speeds and the parameters that stretch a leg
    beyond distance over speed. Defaults are SkyCourier's (delivery-copter.parm) and
    ArduCopter's (WPNAV_ACCEL 250 cm/s², WPNAV_ACCEL_Z 100 cm/s², LAND_ALT_LOW 10 m,
    RTL_LOIT_TIME 5 s)."""

    cruise_mps: float = 10.0  # WPNAV_SPEED (ground speed)
    climb_mps: float = 2.5  # WPNAV_SPEED_UP
    descent_mps: float = 1.5  # WPNAV_SPEED_DN
    land_mps: float = 0.5  # LAND_SPEED
    land_slow_alt_m: float = 10.0  # LAND_ALT_LOW: below it LAND descends at LAND_SPEED
    accel_xy_mps2: float = 2.5  # WPNAV_ACCEL
    accel_z_mps2: float = 1.0  # WPNAV_ACCEL_Z
    rtl_climb_s: float = 3.0  # RTL's initial climb stage (ardupilot-sitl.md: ~3 s)
    rtl_loiter_s: float = 5.0  # RTL_LOIT_TIME
    disarm_s: float = 0.5  # from touch-down to disarm (ardupilot-sitl.md: ~0.45 s)
    air_density_kgm3: float = SEA_LEVEL_AIR_DENSITY

    def __post_init__(self) -> None:
        for name in (
            "cruise_mps",
            "climb_mps",
            "descent_mps",
            "land_mps",
            "accel_xy_mps2",
            "accel_z_mps2",
            "air_density_kgm3",
        ):
            _positive(f"flight profile: {name}", getattr(self, name))
        for name in ("land_slow_alt_m", "rtl_climb_s", "rtl_loiter_s", "disarm_s"):
            _non_negative(f"flight profile: {name}", getattr(self, name))


@dataclass(frozen=True)
class Wind:
    """Wind speed and the direction it blows from (degrees true, meteorological), or None
    when the direction is not known: then every leg gets the worst-case allowance."""

    speed_mps: float = 0.0
    from_deg: float | None = None

    def __post_init__(self) -> None:
        _non_negative("wind.speed_mps", self.speed_mps)
        if self.from_deg is not None:
            _finite("wind.from_deg", self.from_deg)


CALM = Wind()


class LegKind(str, Enum):
    """What a leg does, each timed the way ArduCopter flies it."""

    TAKEOFF = "takeoff"
    TRANSIT = "transit"
    DESCENT = "descent"
    HOVER = "hover"
    CLIMB = "climb"
    RETURN = "return"
    LAND = "land"
    WAIT = "wait"


@dataclass(frozen=True)
class FlightLeg:
    """One leg in plain numbers. `distance_m` and `track_deg` (course over ground, None when
    not known) for transit and return; `alt_m` the altitude climbed to (take-off), the
    altitude change (climb, descent) or the altitude landed from (land); `duration_s` for a
    hover; `until_s` for a wait (hover until that many seconds after the take-off command,
    as long as that takes by then: priced only within a plan); `payload_kg` what it
    carries; `label` names it in reports."""

    kind: LegKind
    payload_kg: float = 0.0
    distance_m: float = 0.0
    track_deg: float | None = None
    alt_m: float = 0.0
    duration_s: float = 0.0
    label: str = ""
    until_s: float = 0.0

    def __post_init__(self) -> None:
        where = f"leg {self.label or self.kind.value}"
        if not isinstance(self.kind, LegKind):
            raise EnergyInputError(f"{where}: kind must be a LegKind, got {self.kind!r}")
        _non_negative(f"{where}: payload_kg", self.payload_kg)
        _non_negative(f"{where}: distance_m", self.distance_m)
        _non_negative(f"{where}: alt_m", self.alt_m)
        _non_negative(f"{where}: duration_s", self.duration_s)
        _non_negative(f"{where}: until_s", self.until_s)
        if self.track_deg is not None:
            _finite(f"{where}: track_deg", self.track_deg)


def takeoff(alt_m: float, payload_kg: float = 0.0) -> FlightLeg:
    """Spool up and climb from the ground to `alt_m`."""
    return FlightLeg(LegKind.TAKEOFF, payload_kg, alt_m=alt_m, label="takeoff")


def transit(
    distance_m: float, payload_kg: float = 0.0, track_deg: float | None = None, label: str = ""
) -> FlightLeg:
    """Fly `distance_m` at cruise speed, from rest to rest."""
    return FlightLeg(LegKind.TRANSIT, payload_kg, distance_m, track_deg, label=label or "transit")


def descent(alt_m: float, payload_kg: float = 0.0, label: str = "") -> FlightLeg:
    """Descend `alt_m` metres at the descent rate."""
    return FlightLeg(LegKind.DESCENT, payload_kg, alt_m=alt_m, label=label or "descent")


def hover(duration_s: float, payload_kg: float = 0.0, label: str = "") -> FlightLeg:
    """Hold position for `duration_s` (a hand-over at the drop)."""
    return FlightLeg(LegKind.HOVER, payload_kg, duration_s=duration_s, label=label or "hover")


def wait_until(until_s: float, payload_kg: float = 0.0, label: str = "") -> FlightLeg:
    """Hold position until `until_s` after the take-off command (a drop whose window has not
    opened yet); nothing when the flight is already later."""
    return FlightLeg(LegKind.WAIT, payload_kg, until_s=until_s, label=label or "wait")


def climb(alt_m: float, payload_kg: float = 0.0, label: str = "") -> FlightLeg:
    """Climb `alt_m` metres at the climb rate."""
    return FlightLeg(LegKind.CLIMB, payload_kg, alt_m=alt_m, label=label or "climb")


def return_home(
    distance_m: float, payload_kg: float = 0.0, track_deg: float | None = None
) -> FlightLeg:
    """RTL: its climb stage, the flight home, RTL_LOIT_TIME over home."""
    return FlightLeg(LegKind.RETURN, payload_kg, distance_m, track_deg, label="return")


def land(alt_m: float, payload_kg: float = 0.0) -> FlightLeg:
    """LAND from `alt_m` to disarm."""
    return FlightLeg(LegKind.LAND, payload_kg, alt_m=alt_m, label="land")


def delivery_legs(
    distance_m: float,
    *,
    cruise_alt_m: float = 30.0,
    handover_alt_m: float = 5.0,
    handover_s: float = 3.0,
    parcel_kg: float = 0.0,
    track_deg: float | None = None,
) -> list[FlightLeg]:
    """One drop `distance_m` from home (SkyCourier's default delivery with the defaults):
    take off, fly there with the parcel, descend, hand over, climb, return, land."""
    back = None if track_deg is None else (track_deg + 180.0) % 360.0
    drop = cruise_alt_m - handover_alt_m
    return [
        takeoff(cruise_alt_m, parcel_kg),
        transit(distance_m, parcel_kg, track_deg, "to the drop"),
        descent(drop, parcel_kg, "descent to the hand-over"),
        hover(handover_s, 0.0, "hand-over"),
        climb(drop, 0.0, "climb after the drop"),
        return_home(distance_m, 0.0, back),
        land(cruise_alt_m),
    ]


# ---- power -------------------------------------------------------------------------------
def power_w(
    frame: Airframe,
    payload_kg: float,
    airspeed_mps: float,
    climb_mps: float = 0.0,
    air_density_kgm3: float = SEA_LEVEL_AIR_DENSITY,
) -> float:
    """Electrical power drawn at `airspeed_mps` level or climbing at `climb_mps` (negative
    descending), with `payload_kg` on board: the model in the module docstring."""
    payload_kg = _non_negative("payload_kg", payload_kg)
    speed = _non_negative("airspeed_mps", airspeed_mps)
    vc = _finite("climb_mps", climb_mps)
    rho = _positive("air_density_kgm3", air_density_kgm3)
    weight = (frame.mass_kg + payload_kg) * GRAVITY
    drag = 0.5 * rho * frame.drag_area_m2 * speed**2
    thrust = math.hypot(weight, drag)
    v0_sq = thrust / (2.0 * rho * frame.disk_area_m2)
    induced = thrust * max(0.0, vc + _induced_velocity(v0_sq, speed, vc))
    profile = frame.profile_power_w * (1.0 + 3.0 * speed**2 / frame.tip_speed_mps**2)
    parasite = drag * speed
    return (induced + profile + parasite) / frame.powertrain_efficiency + frame.avionics_power_w


def _induced_velocity(v0_sq: float, speed: float, vc: float) -> float:
    """Glauert's momentum relation v_i * sqrt(V^2 + (Vc + v_i)^2) = v0^2, solved for v_i on
    the branch where the inflow Vc + v_i is positive (the left side grows with v_i there);
    -Vc where it has no root (a descent fast enough to drive the rotor)."""
    low = max(0.0, -vc)

    def excess(v: float) -> float:
        return v * math.hypot(speed, vc + v) - v0_sq

    if excess(low) >= 0:
        return low
    high = low + math.sqrt(v0_sq) + 1.0
    while excess(high) < 0:
        high *= 2.0
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (low + high)
        if excess(mid) < 0:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def _worst_power(
    frame: Airframe, payload_kg: float, low: float, high: float, climb_mps: float, rho: float
) -> float:
    """The highest power over airspeeds from `low` to `high` (a wind of unknown direction)."""
    if high <= low:
        return power_w(frame, payload_kg, low, climb_mps, rho)
    step = (high - low) / _WIND_SAMPLES
    return max(
        power_w(frame, payload_kg, low + i * step, climb_mps, rho) for i in range(_WIND_SAMPLES + 1)
    )


def _transit_airspeeds(
    ground_mps: float, wind: Wind, track_deg: float | None
) -> tuple[float, float]:
    """The range of airspeeds a transit at `ground_mps` over ground may need: one value when
    the wind's direction and the track are known, the worst case's range otherwise."""
    w = wind.speed_mps
    if w == 0:
        return ground_mps, ground_mps
    if wind.from_deg is None or track_deg is None:
        return max(0.0, ground_mps - w), ground_mps + w
    # The wind blows towards from_deg + 180; airspeed = ground velocity - wind velocity.
    to = math.radians(wind.from_deg + 180.0)
    trk = math.radians(track_deg)
    north = ground_mps * math.cos(trk) - w * math.cos(to)
    east = ground_mps * math.sin(trk) - w * math.sin(to)
    speed = math.hypot(north, east)
    return speed, speed


# ---- legs and plans ----------------------------------------------------------------------
@dataclass(frozen=True)
class LegEnergy:
    """What one leg costs."""

    label: str
    kind: LegKind
    time_s: float
    energy_wh: float
    charge_mah: float

    @property
    def mean_power_w(self) -> float:
        """Average electrical power over the leg."""
        return self.energy_wh * 3600.0 / self.time_s if self.time_s > 0 else 0.0


@dataclass(frozen=True)
class EnergyModel:
    """An airframe (with its battery), the way the autopilot flies, and the wind."""

    frame: Airframe
    profile: FlightProfile = field(default_factory=FlightProfile)
    wind: Wind = CALM

    @property
    def battery(self) -> Battery:
        """The airframe's battery."""
        return self.frame.battery

    def with_battery(self, battery: Battery) -> EnergyModel:
        """The same model on another pack."""
        return replace(self, frame=replace(self.frame, battery=battery))

    def leg(self, leg: FlightLeg) -> LegEnergy:
        """Time, energy and charge of one leg; EnvelopeError when it cannot be flown.
        A wait has no length of its own: it is priced by `plan`, which knows the time."""
        if leg.kind is LegKind.WAIT:
            raise EnergyInputError(f"leg {leg.label}: a wait is priced within a plan")
        if leg.payload_kg > self.frame.max_payload_kg:
            raise EnvelopeError(
                f"leg {leg.label}: payload {leg.payload_kg:g} kg is above airframe "
                f"{self.frame.name}'s {self.frame.max_payload_kg:g} kg"
            )
        segments = list(self._segments(leg))
        time_s = sum(t for t, _ in segments)
        energy_wh = sum(t * p for t, p in segments) / 3600.0
        charge = energy_wh / self.battery.nominal_voltage_v * 1000.0
        return LegEnergy(leg.label or leg.kind.value, leg.kind, time_s, energy_wh, charge)

    def plan(self, legs: Sequence[FlightLeg]) -> PlanEnergy:
        """Every leg priced, the total, and whether the battery covers it with its reserve."""
        if not legs:
            raise EnergyInputError("plan: no legs to price")
        priced: list[LegEnergy] = []
        clock = 0.0
        for leg in legs:
            if leg.kind is LegKind.WAIT:
                leg = replace(leg, kind=LegKind.HOVER, duration_s=max(0.0, leg.until_s - clock))
            try:
                priced.append(self.leg(leg))
                clock += priced[-1].time_s
            except EnvelopeError as err:
                return PlanEnergy(tuple(priced), self.battery, can_fly=False, reason=str(err))
        plan = PlanEnergy(tuple(priced), self.battery, can_fly=True, reason="")
        if plan.charge_mah > self.battery.budget_mah:
            reason = (
                f"needs {plan.charge_mah:.0f} mAh, the battery has "
                f"{self.battery.budget_mah:.0f} mAh above its "
                f"{self.battery.reserve_fraction:.0%} reserve "
                f"({self.battery.usable_mah:.0f} mAh usable of {self.battery.capacity_mah:.0f})"
            )
            return replace(plan, can_fly=False, reason=reason)
        return plan

    # Each leg as (seconds, watts) pieces.
    def _segments(self, leg: FlightLeg) -> Iterable[tuple[float, float]]:
        p = self.profile
        m = leg.payload_kg
        if leg.kind is LegKind.TAKEOFF:
            yield self.frame.spool_up_s, self._hold(m, 0.0)
            yield self._vertical_time(leg.alt_m, p.climb_mps), self._hold(m, p.climb_mps)
        elif leg.kind is LegKind.TRANSIT:
            yield self._horizontal(leg, leg.distance_m)
        elif leg.kind is LegKind.DESCENT:
            yield self._vertical_time(leg.alt_m, p.descent_mps), self._hold(m, -p.descent_mps)
        elif leg.kind is LegKind.HOVER:
            yield leg.duration_s, self._hold(m, 0.0)
        elif leg.kind is LegKind.CLIMB:
            yield self._vertical_time(leg.alt_m, p.climb_mps), self._hold(m, p.climb_mps)
        elif leg.kind is LegKind.RETURN:
            yield p.rtl_climb_s, self._hold(m, 0.0)
            yield self._horizontal(leg, leg.distance_m)
            yield p.rtl_loiter_s, self._hold(m, 0.0)
        else:  # LAND
            fast = max(0.0, leg.alt_m - p.land_slow_alt_m)
            slow = leg.alt_m - fast
            if fast > 0:
                yield self._vertical_time(fast, p.descent_mps), self._hold(m, -p.descent_mps)
            yield slow / p.land_mps, self._hold(m, -p.land_mps)
            yield p.disarm_s, self._hold(m, 0.0)

    def _hold(self, payload_kg: float, climb_mps: float) -> float:
        """Power holding position (or climbing straight up or down) in the wind."""
        rho = self.profile.air_density_kgm3
        return _worst_power(self.frame, payload_kg, 0.0, self.wind.speed_mps, climb_mps, rho)

    def _vertical_time(self, height_m: float, rate: float) -> float:
        if height_m <= 0:
            return 0.0
        return _ramped_time(height_m, rate, self.profile.accel_z_mps2)

    def _horizontal(self, leg: FlightLeg, distance_m: float) -> tuple[float, float]:
        p = self.profile
        low, high = _transit_airspeeds(p.cruise_mps, self.wind, leg.track_deg)
        if high > self.frame.max_airspeed_mps:
            raise EnvelopeError(
                f"leg {leg.label}: holding {p.cruise_mps:g} m/s over ground in a "
                f"{self.wind.speed_mps:g} m/s wind needs up to {high:.1f} m/s airspeed, "
                f"above airframe {self.frame.name}'s {self.frame.max_airspeed_mps:g} m/s"
            )
        if distance_m <= 0:
            return 0.0, 0.0
        power = _worst_power(self.frame, leg.payload_kg, low, high, 0.0, p.air_density_kgm3)
        return _ramped_time(distance_m, p.cruise_mps, p.accel_xy_mps2), power


def _ramped_time(distance: float, speed: float, accel: float) -> float:
    """Time to cover `distance` from rest to rest at up to `speed` with `accel` ramps."""
    if distance >= speed**2 / accel:
        return distance / speed + speed / accel
    return 2.0 * math.sqrt(distance / accel)


@dataclass(frozen=True)
class PlanEnergy:
    """A plan's legs priced and its margin: the charge left above the reserve."""

    legs: tuple[LegEnergy, ...]
    battery: Battery
    can_fly: bool
    reason: str

    @property
    def time_s(self) -> float:
        """Flight time, take-off to disarm."""
        return sum(leg.time_s for leg in self.legs)

    @property
    def energy_wh(self) -> float:
        """Energy the plan uses."""
        return sum(leg.energy_wh for leg in self.legs)

    @property
    def charge_mah(self) -> float:
        """Charge the plan uses."""
        return sum(leg.charge_mah for leg in self.legs)

    @property
    def margin_mah(self) -> float:
        """Charge left above the reserve after the plan (negative: it eats into it)."""
        return self.battery.budget_mah - self.charge_mah

    @property
    def remaining_fraction(self) -> float:
        """Share of the rated capacity left at landing, as the autopilot would report it."""
        return 1.0 - self.charge_mah / self.battery.capacity_mah

    def report(self) -> dict[str, object]:
        """JSON-ready summary: each leg, totals, margin, verdict."""
        return {
            "legs": [
                {
                    "leg": leg.label,
                    "kind": leg.kind.value,
                    "time_s": round(leg.time_s, 1),
                    "energy_wh": round(leg.energy_wh, 2),
                    "charge_mah": round(leg.charge_mah, 1),
                }
                for leg in self.legs
            ],
            "time_s": round(self.time_s, 1),
            "energy_wh": round(self.energy_wh, 2),
            "charge_mah": round(self.charge_mah, 1),
            "capacity_mah": self.battery.capacity_mah,
            "capacity_wh": round(self.battery.capacity_wh, 2),
            "usable_mah": round(self.battery.usable_mah, 1),
            "reserve_mah": round(self.battery.reserve_mah, 1),
            "margin_mah": round(self.margin_mah, 1),
            "remaining_pct": round(100.0 * self.remaining_fraction, 1),
            "can_fly": self.can_fly,
            "reason": self.reason,
        }


def legs_from_mission(
    plan: MissionPlan,
    home: tuple[float, float],
    parcels_kg: Mapping[str, float],
    *,
    handover_extra_s: float = 0.0,
) -> list[FlightLeg]:
    """The mission core's plan (companion/mission/plan.py) as legs to price: every parcel
    (`parcels_kg` by drop id) on board from take-off until its drop; each hand-over a hover
    of the plan's release hold plus `handover_extra_s` (time allowed for the cone and the
    recipient), after a wait over the drop until its window opens when the drop says so;
    the return from the last point flown to `home` (lat, lon)."""
    from companion.geo import bearing_deg, distance_m
    from companion.mission.plan import DropLeg, LandLeg, ReturnLeg, TakeoffLeg, TransitLeg

    extra = _non_negative("handover_extra_s", handover_extra_s)
    missing = [d.drop_id for d in plan.drops() if d.drop_id not in parcels_kg]
    if missing:
        raise EnergyInputError(f"mission {plan.mission_id}: no parcel mass for drops {missing}")
    aboard = sum(_non_negative(f"parcel {k}", parcels_kg[k]) for k in parcels_kg)
    lat, lon = home
    alt = 0.0
    legs: list[FlightLeg] = []
    for leg in plan.legs:
        if isinstance(leg, TakeoffLeg):
            legs.append(takeoff(leg.alt_m, aboard))
            alt = leg.alt_m
        elif isinstance(leg, TransitLeg):
            for wp in leg.waypoints:
                if wp.alt_m > alt:
                    legs.append(climb(wp.alt_m - alt, aboard, f"climb towards {leg.to}"))
                elif wp.alt_m < alt:
                    legs.append(descent(alt - wp.alt_m, aboard, f"descent towards {leg.to}"))
                d = distance_m(lat, lon, wp.lat, wp.lon)
                trk = bearing_deg(lat, lon, wp.lat, wp.lon)
                legs.append(transit(d, aboard, trk, f"to {leg.to}"))
                lat, lon, alt = wp.lat, wp.lon, wp.alt_m
        elif isinstance(leg, DropLeg):
            d = distance_m(lat, lon, leg.lat, leg.lon)
            if d > 0:
                trk = bearing_deg(lat, lon, leg.lat, leg.lon)
                legs.append(transit(d, aboard, trk, f"to drop {leg.drop_id}"))
            lat, lon = leg.lat, leg.lon
            if leg.not_before_s is not None:
                label = f"waiting for drop {leg.drop_id}'s window"
                legs.append(wait_until(leg.not_before_s, aboard, label))
            down = max(0.0, alt - leg.handover_alt_m)
            legs.append(descent(down, aboard, f"descent at drop {leg.drop_id}"))
            aboard = max(0.0, aboard - parcels_kg[leg.drop_id])
            hold = plan.limits.release_hold_s + extra
            legs.append(hover(hold, aboard, f"hand-over at drop {leg.drop_id}"))
            up = max(0.0, leg.cruise_alt_m - leg.handover_alt_m)
            legs.append(climb(up, aboard, f"climb after drop {leg.drop_id}"))
            alt = leg.cruise_alt_m
        elif isinstance(leg, ReturnLeg):
            d = distance_m(lat, lon, *home)
            trk = bearing_deg(lat, lon, *home) if d > 0 else None
            legs.append(return_home(d, aboard, trk))
            lat, lon = home
        elif isinstance(leg, LandLeg):
            legs.append(land(alt, aboard))
            alt = 0.0
    return legs
