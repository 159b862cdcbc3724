"""Battery: a coulomb counter fed by a current model fitted to ArduCopter SITL.

SITL (default quad, BATT_CAPACITY 3300) draws about 30 A hovering and in 10 m/s cruise alike,
33 A climbing at 2.5 m/s, 29 A descending at 1.5 m/s, 39.5 A at the takeoff peak, and ~10 A
more with its 1 kg load held; the voltage stays at 12.6 V because SITL has no sag model by
default. The current here is hover current scaled by thrust (mass and acceleration) and by
climb rate, which reproduces those figures; battery_remaining is the unused fraction of
BATT_CAPACITY, as ArduPilot reports it for a current-integrating monitor.
"""

from __future__ import annotations

from .dialect import MAVLinkMessage, mavlink

VOLTAGE = 12.6
HOVER_CURRENT_A = 30.0
GROUND_IDLE_CURRENT_A = 2.0  # armed on the ground, motors at MOT_SPIN_ARM
DISARMED_CURRENT_A = 0.3  # flight controller and companion, motors stopped
LOAD_CURRENT_RATIO = 4.0 / 3.0  # SITL: ~40 A instead of ~30 A with the 1 kg parcel held
THRUST_EXPONENT = 2.5  # fitted: 1 m/s² of climb acceleration gives SITL's 39.5 A peak
CLIMB_GAIN = 0.04  # per m/s climbing: 2.5 m/s -> x1.10 (33 A)
DESCENT_GAIN = 0.022  # per m/s descending: 1.5 m/s -> x0.967 (29 A)
GRAVITY = 9.80665


def flight_current(accel_h: float, accel_z: float, climb_rate: float, load_held: bool) -> float:
    """Current in amps while flying, from the thrust the manoeuvre needs.

    `accel_h` is the horizontal acceleration the thrust must supply (including drag), `accel_z`
    the vertical acceleration, `climb_rate` the vertical speed (up positive)."""
    thrust_ratio = ((GRAVITY + accel_z) ** 2 + accel_h**2) ** 0.5 / GRAVITY
    factor = 1.0 + (CLIMB_GAIN if climb_rate > 0 else DESCENT_GAIN) * climb_rate
    if load_held:
        factor *= LOAD_CURRENT_RATIO
    return HOVER_CURRENT_A * max(thrust_ratio, 0.1) ** THRUST_EXPONENT * factor


class Battery:
    """Charge used so far and the last current drawn."""

    def __init__(self) -> None:
        self.consumed_mah = 0.0
        self.consumed_wh = 0.0
        self.current_a = DISARMED_CURRENT_A
        self.voltage = VOLTAGE

    def update(self, dt: float, current_a: float) -> None:
        """Draw `current_a` for `dt` seconds."""
        self.current_a = current_a
        self.consumed_mah += current_a * dt / 3.6
        self.consumed_wh += current_a * self.voltage * dt / 3600.0

    def remaining_pct(self, capacity_mah: float) -> int:
        """Unused share of the capacity, 0-100 (ArduPilot's capacity_remaining_pct)."""
        if capacity_mah <= 0:
            return -1
        left = 100.0 * (capacity_mah - self.consumed_mah) / capacity_mah
        return int(max(0.0, min(100.0, left)))

    def remaining_mah(self, capacity_mah: float) -> float:
        """Capacity not yet used, mAh."""
        return capacity_mah - self.consumed_mah

    def status_message(self, capacity_mah: float, charge_state: int) -> MAVLinkMessage:
        """BATTERY_STATUS as ArduPilot fills it for a voltage/current monitor."""
        cells = [min(int(self.voltage * 1000), 65534)] + [65535] * 9
        return mavlink.MAVLink_battery_status_message(
            0,
            mavlink.MAV_BATTERY_FUNCTION_UNKNOWN,
            mavlink.MAV_BATTERY_TYPE_UNKNOWN,
            32767,
            cells,
            int(self.current_a * 100),
            int(self.consumed_mah),
            int(self.consumed_wh * 36),
            self.remaining_pct(capacity_mah),
            0,
            charge_state,
            [0, 0, 0, 0],
            0,
            0,
        )
