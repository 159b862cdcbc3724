"""Incoming messages: commands, mode changes, guided targets, and routing to the parameter
and mission services.

Commands follow GCS_MAVLINK(_Copter)::handle_command_int_packet: a COMMAND_LONG is run as the
equivalent COMMAND_INT, each gets one COMMAND_ACK on the link it came from, and unknown
commands are MAV_RESULT_UNSUPPORTED. ArduPilot never reads COMMAND_LONG.confirmation
(GCS_MAVLINK::handle_command_long), so a retransmission is run again exactly like the first
transmission, with whatever effect and result that has now: on SITL a DO_SEND_BANNER sent
again with confirmation 1 prints the banner twice, and a NAV_TAKEOFF repeated during the
spool-up is ACCEPTED again and restarts the takeoff. A sender that retries must therefore only
retry what is safe to run twice.

Messages addressed to another system or component are ignored, as MAVLink routing does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import telemetry
from .avoidance import GUIDED_USES_WPNAV
from .controllers import GuidedPosition, Takeoff, VelocityTarget
from .dialect import MAVLinkMessage, mavlink
from .modes import USER_TAKEOFF, Mode

if TYPE_CHECKING:
    from .copter import Copter

C = mavlink
COMPONENT_ID = 1
FORCE_ARM = (2989.0, 21196.0)  # GCS_MAVLINK magic_force_arm_value, magic_force_arm_disarm_value
FORCE_DISARM = 21196.0
_MISSION_MESSAGES = frozenset(
    {
        "MISSION_COUNT", "MISSION_REQUEST_LIST", "MISSION_REQUEST_INT", "MISSION_REQUEST",
        "MISSION_ITEM_INT", "MISSION_ITEM", "MISSION_CLEAR_ALL",
    }
)  # fmt: skip
_PARAM_MESSAGES = frozenset({"PARAM_REQUEST_LIST", "PARAM_REQUEST_READ", "PARAM_SET"})
_SPEED_TYPES = frozenset(
    {C.SPEED_TYPE_AIRSPEED, C.SPEED_TYPE_GROUNDSPEED, C.SPEED_TYPE_CLIMB_SPEED,
     C.SPEED_TYPE_DESCENT_SPEED}
)  # fmt: skip
LOCATION_ALT_MAX_M = 83000  # AP_Common/Location.h: what Location's altitude field can hold
_POS_IGNORE = 0b111
_VEL_IGNORE = 0b111000
_ABSOLUTE_FRAMES = (C.MAV_FRAME_GLOBAL, C.MAV_FRAME_GLOBAL_INT)
_GLOBAL_FRAMES = (
    *_ABSOLUTE_FRAMES,
    C.MAV_FRAME_GLOBAL_RELATIVE_ALT, C.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT,
    C.MAV_FRAME_GLOBAL_TERRAIN_ALT, C.MAV_FRAME_GLOBAL_TERRAIN_ALT_INT,
)  # fmt: skip


class Command:
    """A COMMAND_LONG or COMMAND_INT in COMMAND_INT terms (x/y as 1e-7 degrees for the
    commands that carry a location)."""

    def __init__(self, msg: MAVLinkMessage) -> None:
        self.command: int = msg.command
        self.params = (msg.param1, msg.param2, msg.param3, msg.param4)
        self.is_long = msg.get_type() == "COMMAND_LONG"
        if self.is_long:
            self.frame = C.MAV_FRAME_GLOBAL_RELATIVE_ALT
            self.x: float = msg.param5
            self.y: float = msg.param6
            self.z: float = msg.param7
        else:
            self.frame = msg.frame
            self.x, self.y, self.z = msg.x, msg.y, msg.z


def _addressed_elsewhere(c: Copter, msg: MAVLinkMessage) -> bool:
    sysid = c.sysid
    target = getattr(msg, "target_system", 0)
    component = getattr(msg, "target_component", 0)
    return target not in (0, sysid) or component not in (0, COMPONENT_ID)


def handle(c: Copter, msg: MAVLinkMessage, client: int) -> None:
    """Dispatch one decoded message from `client`."""
    kind = msg.get_type()
    if kind == "HEARTBEAT":
        c.heartbeat_from(msg.get_srcSystem(), msg.get_srcComponent())
        return
    if kind == "BAD_DATA" or _addressed_elsewhere(c, msg):
        return
    if kind in ("COMMAND_LONG", "COMMAND_INT"):
        if not c.faults.drop_command(msg.command):
            _command(c, msg, client)
    elif kind in _MISSION_MESSAGES:
        c.missions.handle(msg, client, c.time)
    elif kind in _PARAM_MESSAGES:
        for reply, to_all in c.param_server.handle(msg):
            c.out.send(reply, None if to_all else client)
    elif kind == "MISSION_SET_CURRENT":
        if c.set_mission_current(msg.seq):
            reply = telemetry.mission_current(c)
            reply.seq = msg.seq
            c.out.send(reply, client)
    elif kind == "SET_MODE":
        _set_mode_common(c, msg.base_mode, msg.custom_mode)
    elif kind == "SET_POSITION_TARGET_GLOBAL_INT":
        if not c.faults.drop_setpoint():
            _position_target_global(c, msg)
    elif kind == "SET_POSITION_TARGET_LOCAL_NED":
        if not c.faults.drop_setpoint():
            _position_target_local(c, msg)
    elif kind == "REQUEST_DATA_STREAM":
        _request_data_stream(c, msg, client)
    elif kind == "TIMESYNC" and msg.tc1 == 0:
        c.out.send(C.MAVLink_timesync_message(int(c.time * 1e9), msg.ts1), client)
    elif kind == "SETUP_SIGNING":
        # GCS_Signing.cpp handle_setup_signing: no ACK; a refusal is a STATUSTEXT
        refusal = c.signing.setup(msg, c.armed)
        if refusal is not None:
            c.out.text(C.MAV_SEVERITY_WARNING, refusal, client)


# ---- commands -------------------------------------------------------------------------------
def _command(c: Copter, msg: MAVLinkMessage, client: int) -> None:
    cmd = Command(msg)
    handler = HANDLERS.get(cmd.command)
    result = handler(c, cmd, client) if handler else C.MAV_RESULT_UNSUPPORTED
    ack = C.MAVLink_command_ack_message(
        cmd.command, result, 0, 0, msg.get_srcSystem(), msg.get_srcComponent()
    )
    c.out.send(ack, client)


def _arm_disarm(c: Copter, cmd: Command, client: int) -> int:
    p1, p2 = cmd.params[0], cmd.params[1]
    if p1 == 1:
        return (
            C.MAV_RESULT_ACCEPTED if c.arm(force=p2 in (2989.0, 21196.0)) else C.MAV_RESULT_FAILED
        )
    if p1 == 0:
        if not c.armed:
            return C.MAV_RESULT_ACCEPTED
        if p2 != FORCE_DISARM and not c.landed:
            return C.MAV_RESULT_FAILED
        c.disarm()
        return C.MAV_RESULT_ACCEPTED
    return C.MAV_RESULT_UNSUPPORTED


def _set_mode_common(c: Copter, base_mode: int, custom_mode: int) -> int:
    """GCS_MAVLINK::_set_mode_common."""
    if base_mode & C.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED:
        return C.MAV_RESULT_ACCEPTED if c.set_mode(int(custom_mode)) else C.MAV_RESULT_FAILED
    if base_mode == C.MAV_MODE_FLAG_DECODE_POSITION_SAFETY and custom_mode in (0, 1):
        return C.MAV_RESULT_ACCEPTED
    return C.MAV_RESULT_DENIED


def _do_set_mode(c: Copter, cmd: Command, client: int) -> int:
    return _set_mode_common(c, int(cmd.params[0]), int(cmd.params[1]))


def _takeoff(c: Copter, cmd: Command, client: int) -> int:
    """Mode::do_user_takeoff: armed, landed, a mode with user takeoff, target above us."""
    if cmd.frame != C.MAV_FRAME_GLOBAL_RELATIVE_ALT:
        return C.MAV_RESULT_DENIED
    alt = cmd.z
    if not c.armed or not c.landed or c.mode not in USER_TAKEOFF or alt <= c.body.alt:
        return C.MAV_RESULT_FAILED
    c.controller = Takeoff(c, alt)
    c.auto_armed = True
    return C.MAV_RESULT_ACCEPTED


def _mode_command(mode: Mode) -> Callable[[Copter, Command, int], int]:
    def run(c: Copter, cmd: Command, client: int) -> int:
        return C.MAV_RESULT_ACCEPTED if c.set_mode(mode) else C.MAV_RESULT_FAILED

    return run


def _mission_start(c: Copter, cmd: Command, client: int) -> int:
    if cmd.params[0] != 0 or cmd.params[1] != 0:
        return C.MAV_RESULT_DENIED
    if not c.set_mode(Mode.AUTO):
        return C.MAV_RESULT_FAILED
    c.auto_armed = True
    return C.MAV_RESULT_ACCEPTED


def _change_speed(c: Copter, cmd: Command, client: int) -> int:
    """GCS_MAVLINK_Copter::handle_MAV_CMD_DO_CHANGE_SPEED: a speed that is not positive and
    SPEED_TYPE_ENUM_END are DENIED; any other speed type that is not one of the four, and every
    mode but AUTO, GUIDED and RTL (the modes with set_speed_*_cms), FAILED. Checked on SITL."""
    speed_type, speed = cmd.params[0], cmd.params[1]
    if not speed > 0 or speed_type == C.SPEED_TYPE_ENUM_END:
        return C.MAV_RESULT_DENIED
    if math.isnan(speed_type) or int(speed_type) not in _SPEED_TYPES:
        return C.MAV_RESULT_FAILED
    if c.mode not in (Mode.GUIDED, Mode.AUTO, Mode.RTL):
        return C.MAV_RESULT_FAILED
    c.set_speed(int(speed_type), speed)
    return C.MAV_RESULT_ACCEPTED


def _accepts_destination(c: Copter, north: float, east: float, alt: float) -> bool:
    """ModeGuided::set_destination's refusal: a destination outside the fence
    (AC_Fence::check_destination_within_fence), or any while `refuse_targets` is injected."""
    return not c.faults.faults.refuse_targets and c.destination_in_fence(north, east, alt)


def _set_guided_position(c: Copter, north: float, east: float, alt: float) -> None:
    """Fly GUIDED to a destination. Starting position control from another GUIDED submode
    (takeoff, velocity, or GUIDED just entered) resets the speeds to WPNAV_* as
    ModeGuided::pva_control_start does, dropping an earlier DO_CHANGE_SPEED: on SITL a
    DO_CHANGE_SPEED 4 sent after the takeoff and before the first goto leaves the goto at
    10 m/s, while one sent during a goto holds for the next goto too. GUID_OPTIONS bit 6
    flies it with the waypoint navigator, and so around the fence (`avoidance`)."""
    if not isinstance(c.controller, GuidedPosition):
        c.speed_override.clear()
    wpnav = bool(int(c.params["GUID_OPTIONS"]) & GUIDED_USES_WPNAV)
    c.controller = GuidedPosition(north, east, alt, wpnav)


def _check_latlng(lat: float, lon: float) -> bool:
    """AP_Common check_latlng: within ±90° latitude and ±180° longitude."""
    return abs(lat) <= 900_000_000 and abs(lon) <= 1_800_000_000


def _reposition(c: Copter, cmd: Command, client: int) -> int:
    """GCS_MAVLINK_Copter::handle_command_int_do_reposition, results checked on SITL.

    COMMAND_LONG: UNSUPPORTED (it has no frame for the location). Outside GUIDED without
    MAV_DO_REPOSITION_FLAGS_CHANGE_MODE, a latitude/longitude out of range, an altitude that
    is NaN or too large, a frame that is not global (SITL also says "Unknown mavlink coordinate
    frame N"), and what Location::sanitize would change (lat = lon = 0, relative altitude 0):
    DENIED. A destination ModeGuided::set_destination refuses (outside the fence): FAILED,
    before any mode change. Otherwise GUIDED (if need be) and ACCEPTED. An absolute altitude
    of 0 is not sanitized: it is a target at sea level."""
    if cmd.is_long:
        return C.MAV_RESULT_UNSUPPORTED
    change_mode = int(cmd.params[1]) & C.MAV_DO_REPOSITION_FLAGS_CHANGE_MODE
    if c.mode != Mode.GUIDED and not change_mode:
        return C.MAV_RESULT_DENIED
    if not _check_latlng(cmd.x, cmd.y):
        return C.MAV_RESULT_DENIED
    if math.isnan(cmd.z) or abs(cmd.z) > LOCATION_ALT_MAX_M:
        return C.MAV_RESULT_DENIED
    if cmd.frame not in _GLOBAL_FRAMES:
        c.out.text(C.MAV_SEVERITY_INFO, f"Unknown mavlink coordinate frame {cmd.frame}")
        return C.MAV_RESULT_DENIED
    if (cmd.x == 0 and cmd.y == 0) or (cmd.z == 0 and cmd.frame not in _ABSOLUTE_FRAMES):
        return C.MAV_RESULT_DENIED
    north, east = c.to_ne(int(cmd.x), int(cmd.y))
    alt = c.relative_alt(cmd.z, cmd.frame)
    if not _accepts_destination(c, north, east, alt):
        return C.MAV_RESULT_FAILED
    if c.faults.faults.ignore_targets:
        return C.MAV_RESULT_ACCEPTED
    if c.mode != Mode.GUIDED and not c.set_mode(Mode.GUIDED):
        return C.MAV_RESULT_FAILED
    _set_guided_position(c, north, east, alt)
    return C.MAV_RESULT_ACCEPTED


def _gripper(c: Copter, cmd: Command, client: int) -> int:
    return c.gripper_action(int(cmd.params[1]))


def _set_servo(c: Copter, cmd: Command, client: int) -> int:
    ok = c.set_servo(int(cmd.params[0]), int(cmd.params[1]))
    return C.MAV_RESULT_ACCEPTED if ok else C.MAV_RESULT_FAILED


def _set_message_interval(c: Copter, cmd: Command, client: int) -> int:
    if cmd.params[2] != 0:
        return C.MAV_RESULT_DENIED
    schedule = c.streams.get(client)
    if schedule is None:
        return C.MAV_RESULT_FAILED
    return schedule.set_interval(int(cmd.params[0]), int(cmd.params[1]), c.time)


def _message_interval(c: Copter, msg_id: int, client: int) -> int:
    schedule = c.streams.get(client)
    if schedule is None:
        return C.MAV_RESULT_FAILED
    c.out.send(C.MAVLink_message_interval_message(msg_id, schedule.interval_us(msg_id)), client)
    return C.MAV_RESULT_ACCEPTED


def _get_message_interval(c: Copter, cmd: Command, client: int) -> int:
    return _message_interval(c, int(cmd.params[0]), client)


def _request_message(c: Copter, cmd: Command, client: int) -> int:
    msg_id = int(cmd.params[0])
    if msg_id == C.MAVLINK_MSG_ID_MESSAGE_INTERVAL:
        return _message_interval(c, int(cmd.params[1]), client)
    builder = telemetry.BUILDERS.get(msg_id)
    if builder is None:
        return C.MAV_RESULT_FAILED
    reply = builder(c)
    if reply is not None:
        c.out.send(reply, client)
    return C.MAV_RESULT_ACCEPTED


def _autopilot_capabilities(c: Copter, cmd: Command, client: int) -> int:
    c.out.send(telemetry.autopilot_version(c), client)
    return C.MAV_RESULT_ACCEPTED


def _get_home_position(c: Copter, cmd: Command, client: int) -> int:
    home = telemetry.home_position(c)
    if home is None:
        return C.MAV_RESULT_FAILED
    c.out.send(home, client)
    return C.MAV_RESULT_ACCEPTED


def _set_mission_current(c: Copter, cmd: Command, client: int) -> int:
    seq = int(cmd.params[0])
    if not c.set_mission_current(seq):
        return C.MAV_RESULT_DENIED
    reply = telemetry.mission_current(c)
    reply.seq = seq
    c.out.send(reply, client)
    return C.MAV_RESULT_ACCEPTED


def _fence_enable(c: Copter, cmd: Command, client: int) -> int:
    action = int(cmd.params[0])
    if action not in (0, 1, 2):
        return C.MAV_RESULT_DENIED
    c.params.set("FENCE_ENABLE", 1 if action == 1 else 0)
    return C.MAV_RESULT_ACCEPTED


def _condition_yaw(c: Copter, cmd: Command, client: int) -> int:
    """Accepted when valid (ArduCopter's checks); the built-in vehicle's yaw follows its
    track, so the heading request itself has no effect."""
    angle, relative = cmd.params[0], cmd.params[3]
    if 0 <= angle <= 360 and relative in (0, 1):
        return C.MAV_RESULT_ACCEPTED
    return C.MAV_RESULT_FAILED


def _send_banner(c: Copter, cmd: Command, client: int) -> int:
    for line in telemetry.BANNER:
        c.out.text(C.MAV_SEVERITY_INFO, line)
    return C.MAV_RESULT_ACCEPTED


def _run_prearm_checks(c: Copter, cmd: Command, client: int) -> int:
    if c.armed:
        return C.MAV_RESULT_DENIED
    for reason in c.prearm_failures(c.mode):
        c.out.text(C.MAV_SEVERITY_CRITICAL, f"PreArm: {reason}")
    return C.MAV_RESULT_ACCEPTED


HANDLERS: dict[int, Callable[[Copter, Command, int], int]] = {
    C.MAV_CMD_COMPONENT_ARM_DISARM: _arm_disarm,
    C.MAV_CMD_DO_SET_MODE: _do_set_mode,
    C.MAV_CMD_NAV_TAKEOFF: _takeoff,
    C.MAV_CMD_NAV_LAND: _mode_command(Mode.LAND),
    C.MAV_CMD_NAV_RETURN_TO_LAUNCH: _mode_command(Mode.RTL),
    C.MAV_CMD_NAV_LOITER_UNLIM: _mode_command(Mode.LOITER),
    C.MAV_CMD_MISSION_START: _mission_start,
    C.MAV_CMD_DO_CHANGE_SPEED: _change_speed,
    C.MAV_CMD_DO_REPOSITION: _reposition,
    C.MAV_CMD_DO_GRIPPER: _gripper,
    C.MAV_CMD_DO_SET_SERVO: _set_servo,
    C.MAV_CMD_SET_MESSAGE_INTERVAL: _set_message_interval,
    C.MAV_CMD_GET_MESSAGE_INTERVAL: _get_message_interval,
    C.MAV_CMD_REQUEST_MESSAGE: _request_message,
    C.MAV_CMD_REQUEST_AUTOPILOT_CAPABILITIES: _autopilot_capabilities,
    C.MAV_CMD_GET_HOME_POSITION: _get_home_position,
    C.MAV_CMD_DO_SET_MISSION_CURRENT: _set_mission_current,
    C.MAV_CMD_DO_FENCE_ENABLE: _fence_enable,
    C.MAV_CMD_CONDITION_YAW: _condition_yaw,
    C.MAV_CMD_DO_SEND_BANNER: _send_banner,
    C.MAV_CMD_RUN_PREARM_CHECKS: _run_prearm_checks,
}


# ---- guided targets -------------------------------------------------------------------------
def _position_target_global(c: Copter, msg: MAVLinkMessage) -> None:
    """GCS_MAVLINK_Copter::handle_message_set_position_target_global_int (GUIDED only)."""
    if c.mode != Mode.GUIDED or msg.coordinate_frame not in _GLOBAL_FRAMES:
        return
    mask = msg.type_mask
    if mask & _POS_IGNORE != _POS_IGNORE:
        if abs(msg.lat_int) > 900_000_000 or abs(msg.lon_int) > 1_800_000_000:
            return
        north, east = c.to_ne(msg.lat_int, msg.lon_int)
        _position_setpoint(c, north, east, c.relative_alt(msg.alt, msg.coordinate_frame))
    elif mask & _VEL_IGNORE != _VEL_IGNORE:
        _guided_velocity(c, msg.vx, msg.vy, msg.vz)


def _position_target_local(c: Copter, msg: MAVLinkMessage) -> None:
    """SET_POSITION_TARGET_LOCAL_NED in LOCAL_NED (from home), LOCAL_OFFSET_NED (from here),
    BODY_NED / BODY_OFFSET_NED (from here, rotated by heading)."""
    frame = msg.coordinate_frame
    if c.mode != Mode.GUIDED or frame not in (
        C.MAV_FRAME_LOCAL_NED, C.MAV_FRAME_LOCAL_OFFSET_NED, C.MAV_FRAME_BODY_NED,
        C.MAV_FRAME_BODY_OFFSET_NED,
    ):  # fmt: skip
        return
    body_frame = frame in (C.MAV_FRAME_BODY_NED, C.MAV_FRAME_BODY_OFFSET_NED)
    cos_y, sin_y = (math.cos(c.yaw), math.sin(c.yaw)) if body_frame else (1.0, 0.0)

    def rotate(x: float, y: float) -> tuple[float, float]:
        return x * cos_y - y * sin_y, x * sin_y + y * cos_y

    mask = msg.type_mask
    if mask & _POS_IGNORE != _POS_IGNORE:
        dn, de = rotate(msg.x, msg.y)
        if frame == C.MAV_FRAME_LOCAL_NED:
            north, east, alt = dn, de, -msg.z
        else:
            north, east, alt = c.body.north + dn, c.body.east + de, c.body.alt - msg.z
        _position_setpoint(c, north, east, alt)
    elif mask & _VEL_IGNORE != _VEL_IGNORE:
        vn, ve = rotate(msg.vx, msg.vy)
        _guided_velocity(c, vn, ve, msg.vz)


def _position_setpoint(c: Copter, north: float, east: float, alt: float) -> None:
    """A position setpoint: set_destination, silently ignored when refused (no ACK exists)."""
    if _accepts_destination(c, north, east, alt) and not c.faults.faults.ignore_targets:
        _set_guided_position(c, north, east, alt)


def _guided_velocity(c: Copter, vn: float, ve: float, vd: float) -> None:
    """ModeGuided::set_velocity: entering velocity control from another submode resets the
    speeds as position control does. On the ground it is stored and nothing moves."""
    if not isinstance(c.controller, VelocityTarget):
        c.speed_override.clear()
    c.controller = VelocityTarget((vn, ve), -vd, c.time)


def _request_data_stream(c: Copter, msg: MAVLinkMessage, client: int) -> None:
    """Legacy stream rates (REQUEST_DATA_STREAM) mapped onto message intervals."""
    schedule = c.streams.get(client)
    if schedule is None:
        return
    groups = DATA_GROUPS_ALL if msg.req_stream_id == C.MAV_DATA_STREAM_ALL else (msg.req_stream_id,)
    interval = 1.0 / msg.req_message_rate if msg.start_stop and msg.req_message_rate > 0 else 0.0
    for group in groups:
        for msg_id in telemetry.DATA_STREAMS.get(group, ()):
            schedule.set(msg_id, interval, c.time)


DATA_GROUPS_ALL = tuple(telemetry.DATA_STREAMS)
