"""The vehicle: ArduCopter's state machine around a shaped point mass.

`Copter` owns the vehicle state (position, arming, mode, battery, gripper, failsafes, fence,
stored missions, parameters) and advances it one control step at a time with `step(dt)`. It
knows nothing of sockets or wall time: the server feeds it decoded messages with
`handle(msg, client)` and sends whatever it leaves in `out`. Mode, command and failsafe rules
are ArduCopter's (mode.cpp, events.cpp, fence.cpp, AP_Arming*.cpp); where this vehicle
simplifies, the docstring of the part says how.

Start-up follows SITL's time line scaled to `ready_delay_s` (SITL: ~41.6 s): attitude after
10 %, GPS 3-D fix after 22 %, EKF origin and home after 48 %, position estimate good enough to
arm in GUIDED at 100 %.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from . import commands, telemetry
from .auto_mission import AutoMission
from .avoidance import PathPlanner
from .battery import DISARMED_CURRENT_A, GRAVITY, GROUND_IDLE_CURRENT_A, Battery, flight_current
from .controllers import (
    ARMING_DELAY_S,
    Brake,
    Controller,
    Land,
    Manual,
    PositionTarget,
    Rtl,
    VelocityTarget,
)
from .dialect import MAVLinkMessage, mavlink
from .failsafes import FailsafeRules
from .faults import Faults, FaultState
from .fence import ALT_MAX, CIRCLE, POLYGON, Fence
from .geo import ne_offset, offset_latlon
from .gripper import CHANNEL as GRIPPER_CHANNEL
from .gripper import FUNCTION_GRIPPER, Gripper, GripperState
from .kinematics import MotionLimits, PointMass
from .mission_store import FENCE, MISSION, RALLY, Item, MissionStore
from .modes import (
    ALLOWS_ARMING,
    FLYABLE,
    MANUAL_THROTTLE,
    REQUIRES_GPS,
    Mode,
    mode_name,
)
from .outbox import Outbox
from .params import ParamServer, ParamTable
from .signing import Signing
from .telemetry import StreamSchedule

C = mavlink
# Touch-down to "landed" (land_complete): the throttle unwinding to the motors' lower limit,
# then ArduCopter's LAND_DETECTOR_TRIGGER_SEC (1 s); fitted so that SITL's 36.8 s landing from
# 29.5 m comes out.
LAND_DETECT_S = 1.6
SPOOL_DOWN_S = 0.45  # SITL: disarm ~0.45 s after on-ground (motors spool down first)
FENCE_CHECK_S = 0.04  # Copter::fence_checks_async runs at 25 Hz
PREARM_DISPLAY_S = 30.0  # AP_Arming PREARM_DISPLAY_PERIOD
BATTERY_CHECK_S = 0.1
DRAG_PER_M = 0.01  # horizontal drag deceleration per (m/s)² of airspeed
YAW_RATE = math.radians(60.0)  # ATC_SLEW_YAW default 6000 cdeg/s
DEFAULT_READY_DELAY_S = 5.0


@dataclass(frozen=True)
class VehicleSnapshot:
    """What a test may ask the vehicle directly (thread-safe copy)."""

    time_s: float
    lat: float
    lon: float
    alt_rel_m: float
    north_m: float
    east_m: float
    velocity_ned: tuple[float, float, float]
    mode: str
    armed: bool
    landed: bool
    battery_pct: int
    battery_used_mah: float
    current_a: float
    gripper_released: bool
    load_held: bool
    gcs_failsafe: bool
    battery_failsafe: int
    fence_breaches: int


class Copter(FailsafeRules):
    """One simulated ArduCopter."""

    def __init__(
        self,
        home: tuple[float, float, float],
        params: ParamTable,
        ready_delay_s: float | None = None,
    ) -> None:
        self.time = 0.0
        # UTC (Unix seconds) at simulated time 0: the vehicle's GPS time runs with its own
        # clock, so SYSTEM_TIME and a simulated companion receiver stay in step at any speed.
        # The server resets it when simulated time actually starts (`start_clock`).
        self.utc_at_boot = time.time()
        self.params = params
        self.sysid = int(params["SYSID_THISMAV"])
        self.streams: dict[int, StreamSchedule] = {}
        self.param_server = ParamServer(params)
        self.faults = FaultState(Faults())
        self.out = Outbox()
        self.signing = Signing()
        self.origin = (round(home[0] * 1e7), round(home[1] * 1e7), float(home[2]))
        self.ready_delay = DEFAULT_READY_DELAY_S if ready_delay_s is None else ready_delay_s
        self.body = PointMass()
        self.battery = Battery()
        self.gripper = Gripper(int(params["GRIP_GRAB"]))
        self.servos: dict[int, int] = {}
        self.fence = Fence(self.to_ne)
        self.path_planner = PathPlanner(int(params["OA_TYPE"]))
        self.missions = MissionStore(self._home_for_mission, self._missions_changed, self.out)
        self.mode = Mode.STABILIZE
        self.controller: Controller = Controller()
        self.armed = False
        self.arm_time = -math.inf
        self.auto_armed = False
        self.landed = True
        self.touchdown_since: float | None = None
        self.ground_idle_since: float | None = None
        self.disarm_at: float | None = None
        self.speed_override: dict[int, float] = {}
        self.yaw = 0.0
        self.mission_index = 0
        self.mission_complete = False
        self.gcs_failsafe = False
        self.battery_failsafe = 0
        self.last_gcs_heartbeat: float | None = None
        self.last_companion_heartbeat: float | None = None
        self.companion_watchdog_tripped = False
        self.fence_breaches = 0
        self.fence_breach_count = 0
        self.fence_breach_time = 0.0
        self._last_fence_check = -math.inf
        self._last_battery_check = -math.inf
        self._low_voltage_since: float | None = None
        self._last_prearm_display = 0.0

    def start_clock(self, utc_now: float) -> None:
        """Simulated time starts now (the first client connected): UTC at time 0 is `utc_now`,
        so that SYSTEM_TIME matches real UTC however long the vehicle waited for a client."""
        self.utc_at_boot = utc_now - self.time

    # ---- start-up time line ---------------------------------------------------------------
    @property
    def attitude_ok(self) -> bool:
        """AHRS aligned."""
        return self.time >= 0.10 * self.ready_delay

    @property
    def gps_fix(self) -> bool:
        """GPS has a 3-D fix."""
        return self.time >= 0.22 * self.ready_delay

    @property
    def home_set(self) -> bool:
        """EKF origin and home are set."""
        return self.time >= 0.48 * self.ready_delay

    @property
    def position_ok(self) -> bool:
        """The EKF uses GPS: Copter::position_ok()."""
        return self.time >= self.ready_delay

    # ---- geometry ---------------------------------------------------------------------------
    def to_ne(self, lat_e7: int, lon_e7: int) -> tuple[float, float]:
        """Metres north/east of home."""
        return ne_offset(self.origin[0], self.origin[1], lat_e7, lon_e7)

    def latlon(self) -> tuple[int, int]:
        """Current position, 1e-7 degrees."""
        return self.latlon_of(self.body.north, self.body.east)

    def latlon_of(self, north: float, east: float) -> tuple[int, int]:
        """A local position, 1e-7 degrees."""
        return offset_latlon(self.origin[0], self.origin[1], north, east)

    def relative_alt(self, z: float, frame: int) -> float:
        """An altitude in a MAVLink frame as metres above home (terrain is flat at home)."""
        if frame in (C.MAV_FRAME_GLOBAL, C.MAV_FRAME_GLOBAL_INT):
            return z - self.origin[2]
        return z

    def item_position(self, item: Item) -> tuple[float, float, float]:
        """Local position of a mission item; lat/lon 0 means here, altitude 0 means this
        altitude (ArduPilot's Location::sanitize)."""
        if item.x == 0 and item.y == 0:
            north, east = self.body.north, self.body.east
        else:
            north, east = self.to_ne(item.x, item.y)
        alt = self.relative_alt(item.z, item.frame) if item.z != 0 else self.body.alt
        return north, east, alt

    def return_point(self) -> tuple[float, float, float]:
        """Home or the nearest rally point, whichever is closer (AP_Rally), with the rally
        point's altitude above home (0 for home)."""
        best = (0.0, 0.0, 0.0)
        best_dist = math.hypot(self.body.north, self.body.east)
        for item in self.missions.items(RALLY):
            north, east = self.to_ne(item.x, item.y)
            dist = math.hypot(north - self.body.north, east - self.body.east)
            if dist < best_dist:
                best, best_dist = (north, east, self.relative_alt(item.z, item.frame)), dist
        return best

    def _home_for_mission(self) -> tuple[int, int, float] | None:
        return self.origin if self.home_set else None

    def _missions_changed(self, mission_type: int) -> None:
        if mission_type == FENCE:
            self.fence.load(self.missions.items(FENCE))
            self.path_planner.fence_changed()
        elif mission_type == MISSION and self.mode != Mode.AUTO:
            self.mission_index = 0
            self.mission_complete = False

    # ---- limits -------------------------------------------------------------------------
    def wind(self) -> tuple[float, float]:
        """Air velocity, north/east m/s (SIM_WIND_DIR is where the wind comes from)."""
        speed = self.params["SIM_WIND_SPD"]
        if speed <= 0:
            return (0.0, 0.0)
        heading = math.radians(self.params["SIM_WIND_DIR"])
        return (-speed * math.cos(heading), -speed * math.sin(heading))

    def limits(self) -> MotionLimits:
        """Speed/acceleration limits of the current mode (WPNAV_*, RTL_SPEED, DO_CHANGE_SPEED)."""
        p = self.params
        speed_xy = p["WPNAV_SPEED"] / 100.0
        if self.mode == Mode.RTL and p["RTL_SPEED"] > 0:
            speed_xy = p["RTL_SPEED"] / 100.0
        over = self.speed_override
        wind = self.wind()
        airspeed_max = math.inf
        if wind != (0.0, 0.0):
            lean = math.radians(min(max(p["ANGLE_MAX"], 1000.0), 8000.0) / 100.0)
            airspeed_max = math.sqrt(GRAVITY * math.tan(lean) / DRAG_PER_M)
        return MotionLimits(
            speed_xy=over.get(C.SPEED_TYPE_GROUNDSPEED, speed_xy),
            speed_up=over.get(C.SPEED_TYPE_CLIMB_SPEED, p["WPNAV_SPEED_UP"] / 100.0),
            speed_down=over.get(C.SPEED_TYPE_DESCENT_SPEED, abs(p["WPNAV_SPEED_DN"]) / 100.0),
            accel_xy=max(p["WPNAV_ACCEL"], 50.0) / 100.0,
            accel_z=max(p["WPNAV_ACCEL_Z"], 50.0) / 100.0,
            wind=wind,
            airspeed_max=airspeed_max,
        )

    def set_speed(self, speed_type: int, speed: float) -> None:
        """DO_CHANGE_SPEED (airspeed is taken as ground speed, like ArduCopter)."""
        if speed_type == C.SPEED_TYPE_AIRSPEED:
            speed_type = C.SPEED_TYPE_GROUNDSPEED
        self.speed_override[speed_type] = speed

    # ---- the control step -------------------------------------------------------------------
    def step(self, dt: float) -> None:
        """Advance the vehicle by `dt` seconds of simulated time."""
        self.time += dt
        lim = self.limits()
        if self.armed:
            if self.landed:
                self.controller.ground_step(self, dt)
            if not self.landed:
                self.controller.step(self, dt, lim)
                self._touchdown(self.body.integrate(dt))
            self._disarm_checks()
        elif not self.landed:
            self._fall(dt)
        self._update_yaw(dt)
        self._update_battery(dt)
        self.gripper.update(
            self.time, int(self.params["GRIP_GRAB"]), int(self.params["GRIP_RELEASE"]), self.out
        )
        self._gcs_failsafe_check()
        self._companion_watchdog_check()
        if self.time - self._last_battery_check >= BATTERY_CHECK_S:
            self._last_battery_check = self.time
            self._battery_failsafe_check()
        if self.time - self._last_fence_check >= FENCE_CHECK_S:
            self._last_fence_check = self.time
            self._fence_check()
        self.missions.tick(self.time)
        self._prearm_display()
        if self.gps_fix:
            # AP_GPS::update_instance -> AP_RTC::set_utc_usec -> update_signing_timestamp
            self.signing.update_timestamp(round((self.utc_at_boot + self.time) * 1e6))

    @property
    def touched_down(self) -> bool:
        """On the ground, whether or not the land detector has concluded yet."""
        return self.landed or self.touchdown_since is not None

    def _touchdown(self, touching: bool) -> None:
        if not touching:
            self.touchdown_since = None
            return
        if self.touchdown_since is None:
            self.touchdown_since = self.time
        elif self.time - self.touchdown_since >= LAND_DETECT_S:
            self.landed = True
            self.touchdown_since = None
            self.body.stop()

    def lift_off(self) -> None:
        """A takeoff has spooled up: the vehicle is no longer landed."""
        self.landed = False
        self.touchdown_since = None
        self.ground_idle_since = None

    def _fall(self, dt: float) -> None:
        """Disarmed in the air (forced disarm): ballistic until it hits the ground."""
        self.body.accel = (0.0, 0.0)
        self.body.accel_z = -GRAVITY
        if self.body.integrate(dt):
            self.landed = True

    def _disarm_checks(self) -> None:
        """Disarm once landed in a landing mode (after the motors spool down), or after
        DISARM_DELAY seconds on the ground without a takeoff."""
        if self.landed and self.controller.landing and self.disarm_at is None:
            self.disarm_at = self.time + SPOOL_DOWN_S
        if self.disarm_at is not None and self.time >= self.disarm_at:
            self.disarm()
            return
        if not self.landed or self.controller.taking_off:
            self.ground_idle_since = None
            return
        if self.ground_idle_since is None:
            self.ground_idle_since = self.time
        delay = self.params["DISARM_DELAY"]
        if delay > 0 and self.time - self.ground_idle_since >= delay:
            self.disarm()

    def _update_yaw(self, dt: float) -> None:
        vel = self.body.vel
        if self.body.ground_speed < 1.0 or self.touched_down:
            return
        error = math.atan2(vel[1], vel[0]) - self.yaw
        error = (error + math.pi) % (2 * math.pi) - math.pi
        step = YAW_RATE * dt
        self.yaw = (self.yaw + max(-step, min(step, error)) + math.pi) % (2 * math.pi) - math.pi

    def thrust_accel(self) -> tuple[float, float]:
        """Horizontal acceleration the rotors produce: the manoeuvre plus the drag of the
        airspeed, north/east m/s². It sets the lean angle and part of the current."""
        wind = self.wind()
        air = (self.body.vel[0] - wind[0], self.body.vel[1] - wind[1])
        airspeed = math.hypot(*air)
        return (
            self.body.accel[0] + DRAG_PER_M * airspeed * air[0],
            self.body.accel[1] + DRAG_PER_M * airspeed * air[1],
        )

    def airspeed(self) -> float:
        """Speed relative to the air, m/s."""
        wind = self.wind()
        return math.hypot(self.body.vel[0] - wind[0], self.body.vel[1] - wind[1])

    def _update_battery(self, dt: float) -> None:
        if not self.armed:
            current = DISARMED_CURRENT_A
        elif self.touched_down:
            current = GROUND_IDLE_CURRENT_A
        else:
            thrust = self.thrust_accel()
            current = flight_current(
                math.hypot(*thrust), self.body.accel_z, self.body.vel_z, self.gripper.load_held
            )
        self.battery.update(dt, current)

    # ---- arming -------------------------------------------------------------------------
    def _mandatory_failures(self, mode: Mode) -> list[str]:
        if not self.home_set:
            return ["AHRS: waiting for home"]
        fence_needs_gps = self.fence_enabled_types() & (CIRCLE | POLYGON)
        if mode in REQUIRES_GPS and not self.position_ok:
            return ["Need Position Estimate"]
        if fence_needs_gps and not self.position_ok:
            return ["Fence enabled, need position estimate"]
        return []

    def prearm_failures(self, mode: Mode) -> list[str]:
        """Failed pre-arm checks for `mode`, ArduPilot's texts without the prefix."""
        failures = self._mandatory_failures(mode)
        if self.params["ARMING_CHECK"] == 0:
            return failures
        p = self.params
        if p["FENCE_ENABLE"] and int(p["FENCE_TYPE"]) & (ALT_MAX | CIRCLE | POLYGON) == 0:
            failures.append("Fences enabled, but none selected")
        battery = self._battery_arming_failure()
        if battery:
            failures.append(f"Battery 1 {battery}")
        avoidance = self.path_planner.prearm_failure(int(p["OA_TYPE"]))  # oa_checks
        if avoidance:
            failures.append(avoidance)
        if self.gcs_failsafe:
            failures.append("GCS failsafe on")
        return failures

    def _battery_arming_failure(self) -> str | None:
        p = self.params
        remaining = self.battery.remaining_mah(p["BATT_CAPACITY"])
        volt = self.battery.voltage
        if p["BATT_ARM_VOLT"] > 0 and volt < p["BATT_ARM_VOLT"]:
            return "below minimum arming voltage"
        if p["BATT_ARM_MAH"] > 0 and remaining < p["BATT_ARM_MAH"]:
            return "below minimum arming capacity"
        if p["BATT_LOW_VOLT"] > 0 and volt < p["BATT_LOW_VOLT"]:
            return "low voltage failsafe"
        if p["BATT_LOW_MAH"] > 0 and remaining < p["BATT_LOW_MAH"]:
            return "low capacity failsafe"
        if p["BATT_CRT_VOLT"] > 0 and volt < p["BATT_CRT_VOLT"]:
            return "critical voltage failsafe"
        if p["BATT_CRT_MAH"] > 0 and remaining < p["BATT_CRT_MAH"]:
            return "critical capacity failsafe"
        return None

    def arm(self, force: bool) -> bool:
        """AP_Arming::arm for a GCS request. Failures are reported as "Arm: <reason>"
        (ArduPilot prefixes with "Arm:" while an arm attempt runs its checks, "PreArm:" only
        in its periodic 30 s report)."""
        if self.armed:
            return True
        if force:
            failures = self._mandatory_failures(self.mode)
        else:
            failures = self.prearm_failures(self.mode)
            if (
                not failures
                and self.mode not in ALLOWS_ARMING
                and not (self.mode == Mode.AUTO and int(self.params["AUTO_OPTIONS"]) & 1)
            ):
                failures = [f"{self.mode.name} mode not armable"]
        if failures:
            for reason in failures:
                self.out.text(C.MAV_SEVERITY_CRITICAL, f"Arm: {reason}")
            return False
        self.armed = True
        self.arm_time = self.time
        self.auto_armed = False
        self.disarm_at = None
        self.ground_idle_since = None
        self.out.text(C.MAV_SEVERITY_INFO, "Arming motors")
        return True

    def disarm(self) -> None:
        """Stop the motors."""
        if not self.armed:
            return
        self.armed = False
        self.auto_armed = False
        self.disarm_at = None
        self.out.text(C.MAV_SEVERITY_INFO, "Disarming motors")

    @property
    def in_arming_delay(self) -> bool:
        """Motors armed less than ARMING_DELAY_SEC ago."""
        return self.armed and self.time - self.arm_time < ARMING_DELAY_S

    def _prearm_display(self) -> None:
        if self.armed or self.time - self._last_prearm_display < PREARM_DISPLAY_S:
            return
        self._last_prearm_display = self.time
        for reason in self.prearm_failures(self.mode):
            self.out.text(C.MAV_SEVERITY_CRITICAL, f"PreArm: {reason}")

    # ---- modes --------------------------------------------------------------------------
    def set_mode(self, number: int, failsafe_land: bool = False) -> bool:
        """Copter::set_mode. Refusals are announced like ArduCopter's mode_change_failed."""
        try:
            mode = Mode(number)
        except ValueError:
            self.out.text(C.MAV_SEVERITY_WARNING, f"No such mode {number}")
            return False
        if mode == self.mode and not failsafe_land:
            return True
        if mode not in FLYABLE:
            self._mode_failed(mode, "not available in the built-in vehicle")
            return False
        if self.armed and mode in REQUIRES_GPS and not self.position_ok:
            self._mode_failed(mode, "requires position")
            return False
        controller = self._controller_for(mode, failsafe_land)
        if controller is None:
            return False
        self.mode = mode
        self.controller = controller
        self.speed_override = {}
        self.disarm_at = None
        # Copter::set_mode sends a HEARTBEAT at once (ArduCopter/mode.cpp), so every link
        # sees a new mode without waiting for the next 1 Hz heartbeat.
        self.out.send(telemetry.heartbeat(self))
        return True

    def _mode_failed(self, mode: Mode, reason: str) -> None:
        self.out.text(C.MAV_SEVERITY_WARNING, f"Mode change to {mode_name(mode)} failed: {reason}")

    def _controller_for(self, mode: Mode, failsafe_land: bool) -> Controller | None:
        body = self.body
        flying = self.armed and not self.landed
        if mode == Mode.AUTO:
            items = self.missions.items(MISSION)
            if self.armed and len(items) <= 1:
                self._mode_failed(mode, "init failed")
                return None
            skippable = (C.MAV_CMD_DO_AUX_FUNCTION, C.MAV_CMD_NAV_DELAY)
            first = next((i for i in items[1:] if i.command not in skippable), None)
            if (
                self.armed
                and self.landed
                and (first is None or first.command != C.MAV_CMD_NAV_TAKEOFF)
            ):
                self.out.text(C.MAV_SEVERITY_CRITICAL, "Auto: Missing Takeoff Cmd")
                self._mode_failed(mode, "init failed")
                return None
            return AutoMission(self)
        if mode == Mode.LAND:
            return Land(self, pause=failsafe_land)
        if not flying:
            return Controller()
        lim = self.limits()
        if mode == Mode.RTL:
            return Rtl(self)
        if mode == Mode.BRAKE:
            return Brake(body.stopping_point(lim)[2])
        if mode in MANUAL_THROTTLE or mode == Mode.ALT_HOLD:
            return Manual(body.alt)
        if mode == Mode.GUIDED:
            return VelocityTarget((0.0, 0.0), 0.0, self.time)  # ModeGuided::init
        return PositionTarget(*body.stopping_point(lim))

    # ---- mission ------------------------------------------------------------------------
    def mission_item_reached(self, seq: int) -> None:
        """A NAV command completed."""
        self.out.send(C.MAVLink_mission_item_reached_message(seq))

    def mission_done(self) -> None:
        """The last command has run: hold in AUTO, or disarm if landed (exit_mission)."""
        self.mission_complete = True
        if self.landed:
            self.disarm()

    def set_mission_current(self, seq: int) -> bool:
        """MISSION_SET_CURRENT / DO_SET_MISSION_CURRENT: the command to run next (at once when
        AUTO is running)."""
        if not 0 <= seq < self.missions.count(MISSION):
            return False
        self.mission_complete = False
        if isinstance(self.controller, AutoMission):
            self.controller.restart_at(self, seq)
        self.mission_index = seq
        return True

    # ---- payload ----------------------------------------------------------------------------
    def gripper_action(self, action: int) -> int:
        """MAV_CMD_DO_GRIPPER: MAV_RESULT. FAILED unless GRIP_ENABLE, like ArduPilot; with a
        wrong GRIP_TYPE or no SERVO8_FUNCTION 28 it is accepted and nothing moves."""
        p = self.params
        if p["GRIP_ENABLE"] != 1:
            return C.MAV_RESULT_FAILED
        if action not in (C.GRIPPER_ACTION_RELEASE, C.GRIPPER_ACTION_GRAB):
            return C.MAV_RESULT_FAILED
        if p["GRIP_TYPE"] != 1 or p["SERVO8_FUNCTION"] != FUNCTION_GRIPPER:
            return C.MAV_RESULT_ACCEPTED
        if action == C.GRIPPER_ACTION_RELEASE:
            self.gripper.release(self.time, int(p["GRIP_RELEASE"]), self.out)
        else:
            self.gripper.grab(self.time, int(p["GRIP_GRAB"]), self.touched_down, self.out)
        return C.MAV_RESULT_ACCEPTED

    def gripper_busy(self) -> bool:
        """The gripper servo is still moving to a commanded state."""
        return self.gripper.state in (GripperState.RELEASING, GripperState.GRABBING) and (
            self.params["GRIP_TYPE"] == 1 and self.params["SERVO8_FUNCTION"] == FUNCTION_GRIPPER
        )

    def servo_function(self, channel: int) -> int:
        """SERVOn_FUNCTION: 33-36 for the quad's motors on 1-4, SERVO8_FUNCTION on 8."""
        if 1 <= channel <= 4:
            return 32 + channel
        if channel == GRIPPER_CHANNEL:
            return int(self.params["SERVO8_FUNCTION"])
        return 0

    def set_servo(self, channel: int, pwm: int) -> bool:
        """MAV_CMD_DO_SET_SERVO (AP_ServoRelayEvents::do_set_servo)."""
        if not 1 <= channel <= 16:
            return False
        if self.servo_function(channel) not in (0, 1, FUNCTION_GRIPPER):
            self.out.text(
                C.MAV_SEVERITY_INFO, f"ServoRelayEvent: Channel {channel} is already in use"
            )
            return False
        if channel == GRIPPER_CHANNEL:
            self.gripper.set_pwm(pwm, self.time, self.touched_down)
        else:
            self.servos[channel] = pwm
        return True

    # ---- messages ---------------------------------------------------------------------------
    def client_connected(self, client: int) -> None:
        """A link opened: it gets the default telemetry streams, and the signing key."""
        self.streams[client] = StreamSchedule(self.time)
        self.signing.link_opened(client)

    def client_disconnected(self, client: int) -> None:
        """A link closed."""
        self.streams.pop(client, None)
        self.signing.link_closed(client)

    def handle(self, msg: MAVLinkMessage, client: int) -> None:
        """Process one message from `client`; replies go to `out`. With a signing key set,
        a frame that fails the signature check is dropped first, unanswered, as ArduPilot's
        parser drops it before routing (see `signing`)."""
        if self.signing.accept(msg, client):
            commands.handle(self, msg, client)

    def snapshot(self) -> VehicleSnapshot:
        """A copy of the state, for tests and the CLI."""
        lat, lon = self.latlon()
        body = self.body
        return VehicleSnapshot(
            time_s=self.time,
            lat=lat * 1e-7,
            lon=lon * 1e-7,
            alt_rel_m=body.alt,
            north_m=body.north,
            east_m=body.east,
            velocity_ned=(body.vel[0], body.vel[1], -body.vel_z),
            mode=self.mode.name,
            armed=self.armed,
            landed=self.landed,
            battery_pct=self.battery.remaining_pct(self.params["BATT_CAPACITY"]),
            battery_used_mah=self.battery.consumed_mah,
            current_a=self.battery.current_a,
            gripper_released=self.gripper.is_open,
            load_held=self.gripper.load_held,
            gcs_failsafe=self.gcs_failsafe,
            battery_failsafe=self.battery_failsafe,
            fence_breaches=self.fence_breaches,
        )
