"""ArduCopter's failsafes and geofence checks for the built-in vehicle.

A mixin of `Copter`, kept apart because these rules are long and read against ArduCopter's
own sources (events.cpp, failsafe.cpp, fence.cpp, AP_BattMonitor), and because the
companion watchdog emulates a script of ours (companion_watchdog.lua) rather than ArduPilot.
It uses the vehicle state that `Copter` owns (params, mode, arming, battery, fence, out).
"""

from __future__ import annotations

import math

from .dialect import mavlink
from .fence import ALT_MAX, ALT_MIN, CIRCLE, POLYGON, describe
from .modes import Mode

C = mavlink
FENCE_GIVE_UP_M = 100.0  # AC_FENCE_GIVE_UP_DISTANCE: further outside than this, just land


class FailsafeRules:
    """GCS, battery and fence failsafes, and the companion watchdog."""

    # ---- failsafes ------------------------------------------------------------------------
    def any_failsafe(self) -> bool:
        """Copter::any_failsafe_triggered (system_status CRITICAL)."""
        return self.gcs_failsafe or self.battery_failsafe > 0

    def _should_disarm_on_failsafe(self) -> bool:
        if self.in_arming_delay:
            return True
        if self.mode == Mode.AUTO:
            return not self.auto_armed and self.landed
        return self.landed

    def _fs_option(self, bit: int) -> bool:
        return bool(int(self.params["FS_OPTIONS"]) & bit)

    def _announce_failsafe(self, kind: str, action: str | None = None) -> None:
        text = f"{kind} Failsafe - {action}" if action else f"{kind} Failsafe"
        self.out.text(C.MAV_SEVERITY_WARNING, text)

    def do_failsafe_action(self, action: int) -> None:
        """Copter::do_failsafe_action (FailsafeAction: 1 LAND, 2 RTL, 3 SmartRTL, 4 SmartRTL
        or land, 5 terminate, 6 DO_LAND_START or RTL, 7 brake or land). There is no SmartRTL
        path or landing sequence here, so those fall back as ArduCopter does without them."""
        if action == 0:
            return
        if action == 5:
            self.disarm()
        elif action in (1, 7):
            self.set_mode(Mode.LAND, failsafe_land=True)
        elif action == 4:
            self.out.text(C.MAV_SEVERITY_WARNING, "SmartRTL Unavailable, Using Land Mode")
            self.set_mode(Mode.LAND, failsafe_land=True)
        else:
            if action == 3:
                self.out.text(C.MAV_SEVERITY_WARNING, "SmartRTL Unavailable, Trying RTL Mode")
            elif action == 6:
                self.out.text(C.MAV_SEVERITY_WARNING, "Trying RTL Mode")
            if not self.set_mode(Mode.RTL):
                self.set_mode(Mode.LAND, failsafe_land=True)
        if self._fs_option(32):
            self.gripper_action(C.GRIPPER_ACTION_RELEASE)

    def heartbeat_from(self, system: int, component: int) -> None:
        """A HEARTBEAT arrived. As in ArduPilot, only system SYSID_MYGCS feeds the GCS
        failsafe; the companion (component SCW_COMPID) feeds the companion watchdog."""
        if system == int(self.params["SYSID_MYGCS"]):
            self.last_gcs_heartbeat = self.time
        if component == int(self.params["SCW_COMPID"]):
            self.last_companion_heartbeat = self.time
            if self.companion_watchdog_tripped:
                self.companion_watchdog_tripped = False
                self.out.text(C.MAV_SEVERITY_CRITICAL, "SCW: companion heartbeat back")

    def _companion_watchdog_check(self) -> None:
        """What companion_watchdog.lua does on the flight controller (where it runs with
        SCR_ENABLE 1): once the companion has been heard, its silence for SCW_TIMEOUT while
        armed in GUIDED or AUTO switches to mode SCW_ACTION (RTL)."""
        p = self.params
        last = self.last_companion_heartbeat
        if p["SCR_ENABLE"] != 1 or p["SCW_ENABLE"] != 1:
            return  # the script does not run, or is switched off
        if last is None or self.companion_watchdog_tripped:
            return
        if not self.armed or self.mode not in (Mode.GUIDED, Mode.AUTO):
            return
        silent = self.time - last
        if silent > p["SCW_TIMEOUT"]:
            self.companion_watchdog_tripped = True
            action = int(p["SCW_ACTION"])
            self.set_mode(action)
            self.out.text(
                C.MAV_SEVERITY_CRITICAL, f"SCW: companion silent {silent:.1f} s, mode {action}"
            )

    def _gcs_failsafe_check(self) -> None:
        """Copter::failsafe_gcs_check and failsafe_gcs_on_event."""
        fs_mode = int(self.params["FS_GCS_ENABLE"])
        if fs_mode == 0 or self.last_gcs_heartbeat is None:
            return
        lost = self.time - self.last_gcs_heartbeat > self.params["FS_GCS_TIMEOUT"]
        if not lost:
            if self.gcs_failsafe:
                self.gcs_failsafe = False
                self.out.text(C.MAV_SEVERITY_WARNING, "GCS Failsafe Cleared")
            return
        if self.gcs_failsafe:
            return
        self.gcs_failsafe = True
        action = {1: 2, 2: 2, 3: 3, 4: 4, 5: 1, 6: 6, 7: 7}.get(fs_mode, 2)
        if not self.armed:
            action = 0
            self._announce_failsafe("GCS")
        elif self._should_disarm_on_failsafe():
            self.disarm()
            action = 0
            self._announce_failsafe("GCS", "Disarming")
        elif self.controller.landing and self.battery_failsafe > 0:
            self._announce_failsafe("GCS + Battery", "Continuing Landing")
            action = 1
        elif self.controller.landing and self._fs_option(8):
            self._announce_failsafe("GCS", "Continuing Landing")
            action = 1
        elif self.mode == Mode.AUTO and self._fs_option(2):
            self._announce_failsafe("GCS", "Continuing Auto Mode")
            action = 0
        elif self._fs_option(16) and self.mode in (
            Mode.STABILIZE,
            Mode.ALT_HOLD,
            Mode.LOITER,
            Mode.POSHOLD,
        ):
            self._announce_failsafe("GCS", "Continuing Pilot Control")
            action = 0
        else:
            self._announce_failsafe("GCS")
        if action == 1 and self.controller.landing:
            return
        self.do_failsafe_action(action)

    def _battery_failsafe_check(self) -> None:
        """AP_BattMonitor::check_failsafes and Copter::handle_battery_failsafe (armed only)."""
        p = self.params
        volt = self.battery.voltage
        remaining = self.battery.remaining_mah(p["BATT_CAPACITY"])
        low_volt = p["BATT_LOW_VOLT"] > 0 and volt < p["BATT_LOW_VOLT"]
        if low_volt:
            if self._low_voltage_since is None:
                self._low_voltage_since = self.time
        else:
            self._low_voltage_since = None
        volt_timed_out = self._low_voltage_since is not None and (
            self.time - self._low_voltage_since >= 10.0
        )
        critical = (p["BATT_CRT_MAH"] > 0 and remaining < p["BATT_CRT_MAH"]) or (
            volt_timed_out and p["BATT_CRT_VOLT"] > 0 and volt < p["BATT_CRT_VOLT"]
        )
        low = (p["BATT_LOW_MAH"] > 0 and remaining < p["BATT_LOW_MAH"]) or volt_timed_out
        level = 2 if critical else 1 if low else 0
        if not self.armed or level <= self.battery_failsafe:
            return
        self.battery_failsafe = level
        kind = "critical" if level == 2 else "low"
        self.out.text(
            C.MAV_SEVERITY_WARNING,
            f"Battery 1 is {kind} {volt:.2f}V used {self.battery.consumed_mah:.0f} mAh",
        )
        action = int(p["BATT_FS_CRT_ACT"] if level == 2 else p["BATT_FS_LOW_ACT"])
        if self._should_disarm_on_failsafe():
            self.disarm()
            self._announce_failsafe("Battery", "Disarming")
            return
        if self.controller.landing and self._fs_option(8) and action != 0:
            self._announce_failsafe("Battery", "Continuing Landing")
            return
        self._announce_failsafe("Battery")
        self.do_failsafe_action(action)

    # ---- fence ----------------------------------------------------------------------------
    def fence_enabled_types(self) -> int:
        """FENCE_TYPE bits in force (0 unless FENCE_ENABLE); polygon only with items."""
        if self.params["FENCE_ENABLE"] != 1:
            return 0
        enabled = int(self.params["FENCE_TYPE"]) & (ALT_MAX | CIRCLE | POLYGON)
        if not self.fence.has_polygon_items():
            enabled &= ~POLYGON
        return enabled

    def fence_sys_status(self) -> tuple[bool, bool, bool]:
        """SYS_STATUS's geofence bits as (present, enabled, failed): AC_Fence's
        sys_status_present (a configured fence type exists; the polygon only with items),
        sys_status_enabled (present, FENCE_ENABLE on and FENCE_ACTION not report-only) and
        sys_status_failed (present and breached). SITL with SkyCourier's parameters sends all
        three bits set (present, enabled, healthy) on the ground and in flight inside the fence;
        with stock ArduCopter's (FENCE_ENABLE 0) present and healthy but not enabled."""
        p = self.params
        configured = int(p["FENCE_TYPE"]) & (ALT_MAX | CIRCLE | POLYGON | ALT_MIN)
        if not self.fence.has_polygon_items():
            configured &= ~POLYGON
        present = configured != 0
        enabled_types = int(p["FENCE_TYPE"]) & ~ALT_MIN if p["FENCE_ENABLE"] == 1 else 0
        enabled = present and p["FENCE_ACTION"] != 0 and enabled_types != 0
        failed = present and self.fence_breaches != 0
        return present, enabled, failed

    def destination_in_fence(self, north: float, east: float, alt: float) -> bool:
        """AC_Fence::check_destination_within_fence: GUIDED refuses targets outside."""
        p = self.params
        return not self.fence.breaches(
            self.fence_enabled_types(), north, east, alt, p["FENCE_ALT_MAX"], p["FENCE_RADIUS"]
        )

    def _fence_check(self) -> None:
        """Copter::fence_check: act on new breaches while armed."""
        p = self.params
        body = self.body
        breaches = self.fence.breaches(
            self.fence_enabled_types(), body.north, body.east, body.alt,
            p["FENCE_ALT_MAX"], p["FENCE_RADIUS"],
        )  # fmt: skip
        new = breaches & ~self.fence_breaches
        cleared = self.fence_breaches and not breaches
        self.fence_breaches = breaches
        if cleared and not self.landed:
            self.out.text(C.MAV_SEVERITY_NOTICE, "Fence breach cleared")
        if not new or not self.armed:
            return
        self.fence_breach_count += 1
        self.fence_breach_time = self.time
        if not self.landed:
            self.out.text(C.MAV_SEVERITY_NOTICE, f"{describe(new)} breached")
        action = int(p["FENCE_ACTION"])
        if action == 0:
            return
        if self.landed:
            self.disarm()
            return
        outside = max(
            body.alt - p["FENCE_ALT_MAX"] if new & ALT_MAX else 0.0,
            math.hypot(body.north, body.east) - p["FENCE_RADIUS"] if new & CIRCLE else 0.0,
        )
        if outside > FENCE_GIVE_UP_M or action in (2, 5):
            self.set_mode(Mode.LAND)
        elif action == 4:
            if not self.set_mode(Mode.BRAKE):
                self.set_mode(Mode.LAND)
        elif not self.set_mode(Mode.RTL):
            self.set_mode(Mode.LAND)
