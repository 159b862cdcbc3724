"""Telemetry: building each streamed message from the vehicle state, and per-client rates.

Each client (link) has its own message intervals, as ArduPilot keeps them per channel:
defaults below, changed by MAV_CMD_SET_MESSAGE_INTERVAL (0 = default, -1 = off) or the legacy
REQUEST_DATA_STREAM groups. Rates are in simulated time; the server's speed-up scales them in
wall time.

Each builder fills its message the way ArduPilot's GCS_MAVLINK::send_* does for a copter:
before the EKF has an origin GLOBAL_POSITION_INT carries zeros, GPS_RAW_INT says NO_FIX until
the fix, the SYS_STATUS pre-arm bit reflects the checks of the *current* mode (so it is set in
STABILIZE long before GUIDED can arm, as on SITL), its geofence bit is healthy unless a fence is
breached, even with no fence at all (as GCS_MAVLINK::update_sensor_status_flags sets it; a
ground station such as MAVProxy reads a clear health bit as "fence breach"), and HOME_POSITION
exists once home is set.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from .dialect import MAVLinkMessage, mavlink
from .geo import offset_latlon
from .mission_store import MISSION
from .modes import POSITION_CONTROLLED, Mode

if TYPE_CHECKING:
    from .copter import Copter

C = mavlink
FIRMWARE_VERSION = (4 << 24) | (7 << 16) | (0 << 8) | C.FIRMWARE_VERSION_TYPE_DEV
BANNER = ("ArduCopter V4.7.0-dev (skycourier-sim)", "Frame: QUAD/PLUS")
CAPABILITIES = (
    C.MAV_PROTOCOL_CAPABILITY_MISSION_FLOAT
    | C.MAV_PROTOCOL_CAPABILITY_PARAM_FLOAT
    | C.MAV_PROTOCOL_CAPABILITY_MISSION_INT
    | C.MAV_PROTOCOL_CAPABILITY_COMMAND_INT
    | C.MAV_PROTOCOL_CAPABILITY_SET_POSITION_TARGET_LOCAL_NED
    | C.MAV_PROTOCOL_CAPABILITY_SET_POSITION_TARGET_GLOBAL_INT
    | C.MAV_PROTOCOL_CAPABILITY_MAVLINK2
    | C.MAV_PROTOCOL_CAPABILITY_MISSION_FENCE
    | C.MAV_PROTOCOL_CAPABILITY_MISSION_RALLY
)

# default stream intervals, seconds of simulated time
DEFAULT_INTERVALS: dict[int, float] = {
    C.MAVLINK_MSG_ID_HEARTBEAT: 1.0,
    C.MAVLINK_MSG_ID_GLOBAL_POSITION_INT: 0.1,
    C.MAVLINK_MSG_ID_ATTITUDE: 0.25,
    C.MAVLINK_MSG_ID_GPS_RAW_INT: 0.25,
    C.MAVLINK_MSG_ID_VFR_HUD: 0.25,
    C.MAVLINK_MSG_ID_SYS_STATUS: 0.5,
    C.MAVLINK_MSG_ID_BATTERY_STATUS: 0.5,
    C.MAVLINK_MSG_ID_EKF_STATUS_REPORT: 0.5,
    C.MAVLINK_MSG_ID_EXTENDED_SYS_STATE: 0.5,
    C.MAVLINK_MSG_ID_MISSION_CURRENT: 0.5,
    C.MAVLINK_MSG_ID_SERVO_OUTPUT_RAW: 0.5,
    C.MAVLINK_MSG_ID_SYSTEM_TIME: 1.0,
    C.MAVLINK_MSG_ID_FENCE_STATUS: 1.0,
    C.MAVLINK_MSG_ID_HOME_POSITION: 5.0,
}
# REQUEST_DATA_STREAM groups as ArduCopter's SRn_* streams contain them
DATA_STREAMS: dict[int, tuple[int, ...]] = {
    C.MAV_DATA_STREAM_EXTENDED_STATUS: (
        C.MAVLINK_MSG_ID_SYS_STATUS, C.MAVLINK_MSG_ID_GPS_RAW_INT,
        C.MAVLINK_MSG_ID_MISSION_CURRENT, C.MAVLINK_MSG_ID_FENCE_STATUS,
        C.MAVLINK_MSG_ID_POSITION_TARGET_GLOBAL_INT,
    ),
    C.MAV_DATA_STREAM_POSITION: (C.MAVLINK_MSG_ID_GLOBAL_POSITION_INT,),
    C.MAV_DATA_STREAM_RC_CHANNELS: (C.MAVLINK_MSG_ID_SERVO_OUTPUT_RAW,),
    C.MAV_DATA_STREAM_EXTRA1: (C.MAVLINK_MSG_ID_ATTITUDE,),
    C.MAV_DATA_STREAM_EXTRA2: (C.MAVLINK_MSG_ID_VFR_HUD,),
    C.MAV_DATA_STREAM_EXTRA3: (
        C.MAVLINK_MSG_ID_BATTERY_STATUS, C.MAVLINK_MSG_ID_EKF_STATUS_REPORT,
        C.MAVLINK_MSG_ID_SYSTEM_TIME, C.MAVLINK_MSG_ID_EXTENDED_SYS_STATE,
    ),
}  # fmt: skip

SENSORS = (
    C.MAV_SYS_STATUS_SENSOR_3D_GYRO
    | C.MAV_SYS_STATUS_SENSOR_3D_ACCEL
    | C.MAV_SYS_STATUS_SENSOR_3D_MAG
    | C.MAV_SYS_STATUS_SENSOR_ABSOLUTE_PRESSURE
    | C.MAV_SYS_STATUS_SENSOR_GPS
    | C.MAV_SYS_STATUS_SENSOR_MOTOR_OUTPUTS
    | C.MAV_SYS_STATUS_SENSOR_RC_RECEIVER
    | C.MAV_SYS_STATUS_AHRS
    | C.MAV_SYS_STATUS_SENSOR_BATTERY
    | C.MAV_SYS_STATUS_PREARM_CHECK
)
EKF_READY = (
    C.EKF_ATTITUDE | C.EKF_VELOCITY_HORIZ | C.EKF_VELOCITY_VERT | C.EKF_POS_HORIZ_REL
    | C.EKF_POS_HORIZ_ABS | C.EKF_POS_VERT_ABS | C.EKF_PRED_POS_HORIZ_REL
    | C.EKF_PRED_POS_HORIZ_ABS
)  # fmt: skip
EKF_ALIGNED = C.EKF_ATTITUDE | C.EKF_VELOCITY_VERT | C.EKF_POS_VERT_ABS | C.EKF_CONST_POS_MODE


def base_mode(c: Copter) -> int:
    """GCS_MAVLINK_Copter::base_mode."""
    flags = (
        C.MAV_MODE_FLAG_STABILIZE_ENABLED
        | C.MAV_MODE_FLAG_MANUAL_INPUT_ENABLED
        | C.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED
    )
    if c.armed:
        flags |= C.MAV_MODE_FLAG_SAFETY_ARMED
        if not c.landed and c.mode in POSITION_CONTROLLED:
            flags |= C.MAV_MODE_FLAG_GUIDED_ENABLED
    return flags


def system_status(c: Copter) -> int:
    """GCS_MAVLINK_Copter::vehicle_system_status."""
    if c.any_failsafe():
        return C.MAV_STATE_CRITICAL
    if c.landed:
        return C.MAV_STATE_STANDBY
    return C.MAV_STATE_ACTIVE


def landed_state(c: Copter) -> int:
    """GCS_MAVLINK_Copter::landed_state."""
    if c.landed:
        return C.MAV_LANDED_STATE_ON_GROUND
    if c.controller.landing:
        return C.MAV_LANDED_STATE_LANDING
    if c.controller.taking_off:
        return C.MAV_LANDED_STATE_TAKEOFF
    return C.MAV_LANDED_STATE_IN_AIR


def _boot_ms(c: Copter) -> int:
    return int(c.time * 1000) & 0xFFFFFFFF


def _heading_cd(c: Copter) -> int:
    return int(math.degrees(c.yaw) % 360.0 * 100) % 36000


def heartbeat(c: Copter) -> MAVLinkMessage:
    return C.MAVLink_heartbeat_message(
        C.MAV_TYPE_QUADROTOR, C.MAV_AUTOPILOT_ARDUPILOTMEGA, base_mode(c), int(c.mode),
        system_status(c), 3,
    )  # fmt: skip


def global_position_int(c: Copter) -> MAVLinkMessage:
    body = c.body
    if not c.home_set:
        return C.MAVLink_global_position_int_message(_boot_ms(c), 0, 0, 0, 0, 0, 0, 0, 65535)
    lat, lon = c.latlon()
    return C.MAVLink_global_position_int_message(
        _boot_ms(c), lat, lon, int((c.origin[2] + body.alt) * 1000), int(body.alt * 1000),
        int(body.vel[0] * 100), int(body.vel[1] * 100), int(-body.vel_z * 100), _heading_cd(c),
    )  # fmt: skip


def gps_raw_int(c: Copter) -> MAVLinkMessage:
    usec = int(c.time * 1e6)
    if not c.gps_fix:
        return C.MAVLink_gps_raw_int_message(
            usec, C.GPS_FIX_TYPE_NO_FIX, 0, 0, 0, 9999, 9999, 0, 65535, 0
        )
    lat, lon = c.latlon()
    body = c.body
    speed = body.ground_speed
    cog = int(math.degrees(math.atan2(body.vel[1], body.vel[0])) % 360 * 100) if speed > 0.2 else 0
    return C.MAVLink_gps_raw_int_message(
        usec, C.GPS_FIX_TYPE_3D_FIX, lat, lon, int((c.origin[2] + body.alt) * 1000), 121, 200,
        int(speed * 100), cog, 10, int((c.origin[2] + body.alt) * 1000), 300, 500, 100, 0, 0,
    )  # fmt: skip


def attitude(c: Copter) -> MAVLinkMessage:
    thrust_n, thrust_e = c.thrust_accel() if not c.landed else (0.0, 0.0)
    cos_y, sin_y = math.cos(c.yaw), math.sin(c.yaw)
    forward = thrust_n * cos_y + thrust_e * sin_y
    right = -thrust_n * sin_y + thrust_e * cos_y
    g = 9.80665 + (c.body.accel_z if not c.landed else 0.0)
    yaw = (c.yaw + math.pi) % (2 * math.pi) - math.pi
    return C.MAVLink_attitude_message(
        _boot_ms(c), math.atan2(right, g), -math.atan2(forward, g), yaw, 0.0, 0.0, 0.0
    )


def vfr_hud(c: Copter) -> MAVLinkMessage:
    body = c.body
    throttle = 0 if not c.armed else 8 if c.landed else int(min(100, 45 * c.battery.current_a / 30))
    return C.MAVLink_vfr_hud_message(
        c.airspeed(),
        body.ground_speed,
        _heading_cd(c) // 100,
        throttle,
        c.origin[2] + body.alt,
        body.vel_z,
    )


def sys_status(c: Copter) -> MAVLinkMessage:
    present = SENSORS
    enabled = SENSORS
    health = SENSORS
    fence_present, fence_enabled, fence_failed = c.fence_sys_status()
    if fence_present:
        present |= C.MAV_SYS_STATUS_GEOFENCE
    if fence_enabled:
        enabled |= C.MAV_SYS_STATUS_GEOFENCE
    if not fence_failed:
        health |= C.MAV_SYS_STATUS_GEOFENCE
    if not c.gps_fix:
        health &= ~C.MAV_SYS_STATUS_SENSOR_GPS
    if not c.attitude_ok:
        health &= ~C.MAV_SYS_STATUS_AHRS
    if c.battery_failsafe:
        health &= ~C.MAV_SYS_STATUS_SENSOR_BATTERY
    if c.armed or c.prearm_failures(c.mode):
        health &= ~C.MAV_SYS_STATUS_PREARM_CHECK
    battery = c.battery
    return C.MAVLink_sys_status_message(
        present, enabled, health, 150, int(battery.voltage * 1000), int(battery.current_a * 100),
        battery.remaining_pct(c.params["BATT_CAPACITY"]), 0, 0, 0, 0, 0, 0,
    )  # fmt: skip


def battery_status(c: Copter) -> MAVLinkMessage:
    charge = {0: C.MAV_BATTERY_CHARGE_STATE_OK, 1: C.MAV_BATTERY_CHARGE_STATE_LOW}.get(
        c.battery_failsafe, C.MAV_BATTERY_CHARGE_STATE_CRITICAL
    )
    return c.battery.status_message(c.params["BATT_CAPACITY"], charge)


def ekf_status_report(c: Copter) -> MAVLinkMessage:
    if c.position_ok:
        flags = EKF_READY
    elif c.attitude_ok:
        flags = EKF_ALIGNED
    else:
        flags = C.EKF_UNINITIALIZED
    return C.MAVLink_ekf_status_report_message(flags, 0.02, 0.02, 0.01, 0.03, 0.0, 0.0)


def extended_sys_state(c: Copter) -> MAVLinkMessage:
    return C.MAVLink_extended_sys_state_message(C.MAV_VTOL_STATE_UNDEFINED, landed_state(c))


def home_position(c: Copter) -> MAVLinkMessage | None:
    if not c.home_set:
        return None
    lat, lon, alt = c.origin
    return C.MAVLink_home_position_message(
        lat,
        lon,
        int(alt * 1000),
        0.0,
        0.0,
        0.0,
        [1.0, 0.0, 0.0, 0.0],
        0.0,
        0.0,
        0.0,
        int(c.time * 1e6),
    )


def system_time(c: Copter) -> MAVLinkMessage:
    return C.MAVLink_system_time_message(int((c.utc_at_boot + c.time) * 1e6), _boot_ms(c))


def mission_current(c: Copter) -> MAVLinkMessage:
    count = c.missions.count(MISSION)
    if count <= 1:
        state = C.MISSION_STATE_NO_MISSION
    elif c.mission_complete:
        state = C.MISSION_STATE_COMPLETE
    elif c.mode == Mode.AUTO and c.armed:
        state = C.MISSION_STATE_ACTIVE
    else:
        state = C.MISSION_STATE_NOT_STARTED
    return C.MAVLink_mission_current_message(
        c.mission_index, max(count - 1, 0), state, 1 if c.mode == Mode.AUTO else 0
    )


def servo_output_raw(c: Copter) -> MAVLinkMessage:
    if not c.armed:
        motor = 1000
    elif c.touched_down:
        motor = 1100
    else:
        motor = int(min(1950, 1100 + 400 * c.battery.current_a / 30))
    channels = [motor] * 4 + [c.servos.get(ch, 0) for ch in range(5, 17)]
    if c.servo_function(8) == 28:
        channels[7] = c.gripper.pwm
    return C.MAVLink_servo_output_raw_message(int(c.time * 1e6) & 0xFFFFFFFF, 0, *channels)


def fence_status(c: Copter) -> MAVLinkMessage | None:
    if not c.params["FENCE_ENABLE"]:
        return None
    breaches = c.fence_breaches
    kind = C.FENCE_BREACH_NONE
    if breaches & 1:
        kind = C.FENCE_BREACH_MAXALT
    elif breaches:
        kind = C.FENCE_BREACH_BOUNDARY
    return C.MAVLink_fence_status_message(
        1 if breaches else 0, c.fence_breach_count, kind, int(c.fence_breach_time * 1000)
    )


# GCS_MAVLINK_Copter::send_position_target_global_int: everything but the position ignored,
# plus the top four bits that ArduPilot sets (POSITION_TARGET_TYPEMASK_LAST_BYTE); SITL: 0xFDF8
POSITION_TARGET_MASK = (
    C.POSITION_TARGET_TYPEMASK_VX_IGNORE | C.POSITION_TARGET_TYPEMASK_VY_IGNORE
    | C.POSITION_TARGET_TYPEMASK_VZ_IGNORE | C.POSITION_TARGET_TYPEMASK_AX_IGNORE
    | C.POSITION_TARGET_TYPEMASK_AY_IGNORE | C.POSITION_TARGET_TYPEMASK_AZ_IGNORE
    | C.POSITION_TARGET_TYPEMASK_YAW_IGNORE | C.POSITION_TARGET_TYPEMASK_YAW_RATE_IGNORE
    | 0xF000
)  # fmt: skip


def position_target_global_int(c: Copter) -> MAVLinkMessage | None:
    """The current waypoint (Mode::get_wp) in MAV_FRAME_GLOBAL, altitude AMSL; nothing when
    the mode has none. On SITL in GUIDED: none during the takeoff or velocity control, the
    destination exactly once a goto or DO_REPOSITION is under way; also RTL's and AUTO's
    waypoints; none in LOITER. Requestable with SET_MESSAGE_INTERVAL (not sent by default)."""
    target = c.controller.target()
    if target is None:
        return None
    north, east, alt = target
    lat, lon = offset_latlon(c.origin[0], c.origin[1], north, east)
    return C.MAVLink_position_target_global_int_message(
        _boot_ms(c), C.MAV_FRAME_GLOBAL, POSITION_TARGET_MASK, lat, lon, c.origin[2] + alt,
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
    )  # fmt: skip


def autopilot_version(c: Copter) -> MAVLinkMessage:
    return C.MAVLink_autopilot_version_message(
        CAPABILITIES, FIRMWARE_VERSION, 0, 0, 0, b"skysim\0\0", [0] * 8, [0] * 8, 0, 0, 0
    )


BUILDERS: dict[int, Callable[[Copter], MAVLinkMessage | None]] = {
    C.MAVLINK_MSG_ID_HEARTBEAT: heartbeat,
    C.MAVLINK_MSG_ID_GLOBAL_POSITION_INT: global_position_int,
    C.MAVLINK_MSG_ID_GPS_RAW_INT: gps_raw_int,
    C.MAVLINK_MSG_ID_ATTITUDE: attitude,
    C.MAVLINK_MSG_ID_VFR_HUD: vfr_hud,
    C.MAVLINK_MSG_ID_SYS_STATUS: sys_status,
    C.MAVLINK_MSG_ID_BATTERY_STATUS: battery_status,
    C.MAVLINK_MSG_ID_EKF_STATUS_REPORT: ekf_status_report,
    C.MAVLINK_MSG_ID_EXTENDED_SYS_STATE: extended_sys_state,
    C.MAVLINK_MSG_ID_HOME_POSITION: home_position,
    C.MAVLINK_MSG_ID_SYSTEM_TIME: system_time,
    C.MAVLINK_MSG_ID_MISSION_CURRENT: mission_current,
    C.MAVLINK_MSG_ID_SERVO_OUTPUT_RAW: servo_output_raw,
    C.MAVLINK_MSG_ID_FENCE_STATUS: fence_status,
    C.MAVLINK_MSG_ID_POSITION_TARGET_GLOBAL_INT: position_target_global_int,
    C.MAVLINK_MSG_ID_AUTOPILOT_VERSION: autopilot_version,
}


class StreamSchedule:
    """One client's message intervals and when each is next due."""

    def __init__(self, now: float) -> None:
        self.intervals = dict(DEFAULT_INTERVALS)
        self._next = dict.fromkeys(self.intervals, now)

    def set_interval(self, msg_id: int, interval_us: int, now: float) -> int:
        """MAV_CMD_SET_MESSAGE_INTERVAL semantics; returns the MAV_RESULT."""
        if msg_id not in BUILDERS or msg_id == C.MAVLINK_MSG_ID_AUTOPILOT_VERSION:
            return C.MAV_RESULT_DENIED
        if interval_us == 0:
            interval = DEFAULT_INTERVALS.get(msg_id, 0.0)
        elif interval_us == -1:
            interval = 0.0
        elif interval_us < 0:
            return C.MAV_RESULT_DENIED
        else:
            interval = max(interval_us, 1000) / 1e6
        self.set(msg_id, interval, now)
        return C.MAV_RESULT_ACCEPTED

    def set(self, msg_id: int, interval: float, now: float) -> None:
        """Send `msg_id` every `interval` seconds (0 stops it)."""
        if interval <= 0:
            self.intervals.pop(msg_id, None)
            self._next.pop(msg_id, None)
        else:
            self.intervals[msg_id] = interval
            self._next[msg_id] = now

    def interval_us(self, msg_id: int) -> int:
        """Current interval as MESSAGE_INTERVAL reports it (-1: not sent)."""
        interval = self.intervals.get(msg_id)
        return int(interval * 1e6) if interval else -1

    def due(self, now: float) -> list[int]:
        """Message ids to send now; each is rescheduled one interval on."""
        ready = [msg_id for msg_id, t in self._next.items() if t <= now]
        for msg_id in ready:
            nxt = self._next[msg_id] + self.intervals[msg_id]
            self._next[msg_id] = nxt if nxt > now else now + self.intervals[msg_id]
        return ready
