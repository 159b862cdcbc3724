"""Mission, fence and rally storage, and the MAVLink mission protocol spoken server side.

Behaviour follows ArduPilot's MissionItemProtocol (GCS_MAVLink/MissionItemProtocol*.cpp):

- upload: MISSION_COUNT -> we request item 0, 1, ... with MISSION_REQUEST_INT (re-requested
  every second of silence; cancelled with MAV_MISSION_OPERATION_CANCELLED after 8 s) -> each
  MISSION_ITEM_INT must carry the expected seq (else MAV_MISSION_INVALID_SEQUENCE, the upload
  goes on) and come from the uploader (else MAV_MISSION_DENIED) -> MISSION_ACK. An item that
  does not convert ends the upload with its MAV_MISSION_RESULT (UNSUPPORTED,
  UNSUPPORTED_FRAME, INVALID_PARAMn...). A count above the store's size is NO_SPACE; a
  second uploader, or a download during an upload, is DENIED; an item outside an upload is
  ERROR. (ArduPilot itself requests with the legacy MISSION_REQUEST; the spec and the bridge
  want MISSION_REQUEST_INT, which is what this vehicle sends.)
- download: MISSION_REQUEST_LIST -> MISSION_COUNT; MISSION_REQUEST_INT n -> MISSION_ITEM_INT,
  or MISSION_COUNT plus MAV_MISSION_INVALID_SEQUENCE when n is out of range. The legacy
  MISSION_REQUEST and MISSION_ITEM are answered too, with ArduPilot's one-time warning.
- MISSION_CLEAR_ALL -> MISSION_ACK.
- Items read back the way ArduPilot stores them: MISSION item 0 is always home (frame
  GLOBAL, altitude AMSL); *_INT frames come back as their plain equivalents (6 -> 3, 5 -> 0);
  commands without a location come back with frame 0 and x = y = z = 0; fence items come back
  with frame 0, z 0 and only param1; rally points with their altitude frame, whole metres
  and no params.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from .dialect import MAVLinkMessage, mavlink
from .outbox import Outbox

MISSION = mavlink.MAV_MISSION_TYPE_MISSION
FENCE = mavlink.MAV_MISSION_TYPE_FENCE
RALLY = mavlink.MAV_MISSION_TYPE_RALLY

# MissionItemProtocol::max_items with SITL's 32 KiB storage (StorageManager layout): 724
# mission items; fence 560 bytes / 8 = 70 items (AC_PolyFence_loader::max_items); rally
# 690 bytes / 15 = 46 points (AP_Rally::get_rally_max).
MAX_ITEMS = {MISSION: 724, FENCE: 70, RALLY: 46}
FENCE_STORAGE_BYTES = 560
UPLOAD_TIMEOUT_S = 8.0  # MissionItemProtocol::upload_timeout_ms
REREQUEST_S = 1.0  # MissionItemProtocol::update wp_recv_timeout_ms
LOCATION_ALT_MAX_M = 83000
_TYPE_NAME = {MISSION: "Mission", FENCE: "Fence", RALLY: "Rally"}

# AP_Mission::mavlink_int_to_mission_cmd knows these; anything else is MAV_MISSION_UNSUPPORTED
_C = mavlink
MISSION_COMMANDS = frozenset(
    {
        _C.MAV_CMD_NAV_WAYPOINT, _C.MAV_CMD_NAV_LOITER_UNLIM, _C.MAV_CMD_NAV_LOITER_TURNS,
        _C.MAV_CMD_NAV_LOITER_TIME, _C.MAV_CMD_NAV_RETURN_TO_LAUNCH, _C.MAV_CMD_NAV_LAND,
        _C.MAV_CMD_NAV_TAKEOFF, _C.MAV_CMD_NAV_CONTINUE_AND_CHANGE_ALT,
        _C.MAV_CMD_NAV_LOITER_TO_ALT, _C.MAV_CMD_NAV_SPLINE_WAYPOINT,
        _C.MAV_CMD_NAV_GUIDED_ENABLE, _C.MAV_CMD_NAV_DELAY, _C.MAV_CMD_CONDITION_DELAY,
        _C.MAV_CMD_CONDITION_DISTANCE, _C.MAV_CMD_CONDITION_YAW, _C.MAV_CMD_DO_JUMP,
        _C.MAV_CMD_DO_CHANGE_SPEED, _C.MAV_CMD_DO_SET_HOME, _C.MAV_CMD_DO_SET_RELAY,
        _C.MAV_CMD_DO_REPEAT_RELAY, _C.MAV_CMD_DO_SET_SERVO, _C.MAV_CMD_DO_REPEAT_SERVO,
        _C.MAV_CMD_DO_LAND_START, _C.MAV_CMD_DO_SET_ROI_LOCATION, _C.MAV_CMD_DO_SET_ROI_NONE,
        _C.MAV_CMD_DO_SET_ROI, _C.MAV_CMD_DO_DIGICAM_CONFIGURE, _C.MAV_CMD_DO_DIGICAM_CONTROL,
        _C.MAV_CMD_DO_MOUNT_CONTROL, _C.MAV_CMD_DO_SET_CAM_TRIGG_DIST,
        _C.MAV_CMD_DO_FENCE_ENABLE, _C.MAV_CMD_DO_AUX_FUNCTION, _C.MAV_CMD_DO_PARACHUTE,
        _C.MAV_CMD_DO_GRIPPER, _C.MAV_CMD_DO_GUIDED_LIMITS, _C.MAV_CMD_NAV_PAYLOAD_PLACE,
        _C.MAV_CMD_DO_WINCH, _C.MAV_CMD_DO_SPRAYER, _C.MAV_CMD_NAV_SET_YAW_SPEED,
    }
)  # fmt: skip
# AP_Mission::stored_in_location: commands whose x/y/z/frame survive storage
LOCATION_COMMANDS = frozenset(
    {
        _C.MAV_CMD_NAV_WAYPOINT, _C.MAV_CMD_NAV_LOITER_UNLIM, _C.MAV_CMD_NAV_LOITER_TURNS,
        _C.MAV_CMD_NAV_LOITER_TIME, _C.MAV_CMD_NAV_LAND, _C.MAV_CMD_NAV_TAKEOFF,
        _C.MAV_CMD_NAV_CONTINUE_AND_CHANGE_ALT, _C.MAV_CMD_NAV_LOITER_TO_ALT,
        _C.MAV_CMD_NAV_SPLINE_WAYPOINT, _C.MAV_CMD_NAV_GUIDED_ENABLE, _C.MAV_CMD_DO_SET_HOME,
        _C.MAV_CMD_DO_LAND_START, _C.MAV_CMD_DO_SET_ROI_LOCATION, _C.MAV_CMD_DO_SET_ROI,
        _C.MAV_CMD_NAV_PAYLOAD_PLACE,
    }
)  # fmt: skip
FENCE_COMMANDS = frozenset(
    {
        _C.MAV_CMD_NAV_FENCE_POLYGON_VERTEX_INCLUSION,
        _C.MAV_CMD_NAV_FENCE_POLYGON_VERTEX_EXCLUSION,
        _C.MAV_CMD_NAV_FENCE_CIRCLE_INCLUSION,
        _C.MAV_CMD_NAV_FENCE_CIRCLE_EXCLUSION,
        _C.MAV_CMD_NAV_FENCE_RETURN_POINT,
    }
)
# how each accepted frame is stored (and therefore read back)
_ALT_FRAMES = {
    _C.MAV_FRAME_GLOBAL: _C.MAV_FRAME_GLOBAL,
    _C.MAV_FRAME_GLOBAL_INT: _C.MAV_FRAME_GLOBAL,
    _C.MAV_FRAME_GLOBAL_RELATIVE_ALT: _C.MAV_FRAME_GLOBAL_RELATIVE_ALT,
    _C.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT: _C.MAV_FRAME_GLOBAL_RELATIVE_ALT,
    _C.MAV_FRAME_GLOBAL_TERRAIN_ALT: _C.MAV_FRAME_GLOBAL_TERRAIN_ALT,
    _C.MAV_FRAME_GLOBAL_TERRAIN_ALT_INT: _C.MAV_FRAME_GLOBAL_TERRAIN_ALT,
}
_MISSION_FRAMES = {**_ALT_FRAMES, _C.MAV_FRAME_MISSION: _C.MAV_FRAME_GLOBAL}


@dataclass(frozen=True)
class Item:
    """One stored item, in MISSION_ITEM_INT terms."""

    seq: int
    frame: int
    command: int
    param1: float
    param2: float
    param3: float
    param4: float
    x: int
    y: int
    z: float
    autocontinue: int = 1

    @classmethod
    def from_msg(cls, m: MAVLinkMessage) -> Item:
        """From a MISSION_ITEM_INT, or a legacy MISSION_ITEM (degrees converted to 1e-7)."""
        x, y = m.x, m.y
        if m.get_type() == "MISSION_ITEM":
            x, y = round(x * 1e7), round(y * 1e7)
        return cls(
            m.seq, m.frame, m.command, m.param1, m.param2, m.param3, m.param4, x, y, m.z,
            m.autocontinue,
        )  # fmt: skip

    def to_msg(
        self, target: tuple[int, int], mission_type: int, current: int = 0
    ) -> MAVLinkMessage:
        """MISSION_ITEM_INT addressed to `target` (sysid, compid)."""
        return mavlink.MAVLink_mission_item_int_message(
            target[0], target[1], self.seq, self.frame, self.command, current, self.autocontinue,
            self.param1, self.param2, self.param3, self.param4, self.x, self.y, self.z,
            mission_type,
        )  # fmt: skip


def _check_location(item: Item) -> int:
    if abs(item.x) > 900_000_000:
        return mavlink.MAV_MISSION_INVALID_PARAM5_X
    if abs(item.y) > 1_800_000_000:
        return mavlink.MAV_MISSION_INVALID_PARAM6_Y
    if math.isnan(item.z) or abs(item.z) >= LOCATION_ALT_MAX_M:
        return mavlink.MAV_MISSION_INVALID_PARAM7
    return mavlink.MAV_MISSION_ACCEPTED


def convert(item: Item, mission_type: int) -> tuple[int, Item | None]:
    """Validate an uploaded item the way ArduPilot does and return (MAV_MISSION_RESULT, the
    item as it will be stored)."""
    params = (item.param1, item.param2, item.param3, item.param4)
    if mission_type == MISSION:
        if item.command not in MISSION_COMMANDS:
            return mavlink.MAV_MISSION_UNSUPPORTED, None
        nan_ok_param4 = item.command in (
            _C.MAV_CMD_NAV_WAYPOINT, _C.MAV_CMD_NAV_LOITER_UNLIM, _C.MAV_CMD_NAV_LAND,
            _C.MAV_CMD_NAV_TAKEOFF,
        )  # fmt: skip
        for n, p in enumerate(params):
            if math.isinf(p) or (math.isnan(p) and not (n == 3 and nan_ok_param4)):
                return mavlink.MAV_MISSION_INVALID_PARAM1 + n, None
        if item.command not in LOCATION_COMMANDS:
            return mavlink.MAV_MISSION_ACCEPTED, replace(
                item, frame=0, x=0, y=0, z=0.0, autocontinue=1
            )
        result = _check_location(item)
        if result != mavlink.MAV_MISSION_ACCEPTED:
            return result, None
        if item.frame not in _MISSION_FRAMES:
            return mavlink.MAV_MISSION_UNSUPPORTED_FRAME, None
        return mavlink.MAV_MISSION_ACCEPTED, replace(
            item, frame=_MISSION_FRAMES[item.frame], autocontinue=1
        )
    if mission_type == FENCE:
        if item.frame not in _ALT_FRAMES:
            return mavlink.MAV_MISSION_UNSUPPORTED_FRAME, None
        if item.command not in FENCE_COMMANDS:
            return mavlink.MAV_MISSION_UNSUPPORTED, None
        polygon = item.command in (
            _C.MAV_CMD_NAV_FENCE_POLYGON_VERTEX_INCLUSION,
            _C.MAV_CMD_NAV_FENCE_POLYGON_VERTEX_EXCLUSION,
        )
        # ArduPilot refuses param1 > 255 and converts the rest to a uint8; a NaN or negative
        # count (undefined in that conversion) is refused the same way here.
        if polygon and not 0 <= item.param1 <= 255:
            return mavlink.MAV_MISSION_INVALID_PARAM1, None
        p1 = 0.0 if item.command == _C.MAV_CMD_NAV_FENCE_RETURN_POINT else float(item.param1)
        if polygon:
            p1 = float(int(item.param1))
        stored = Item(item.seq, 0, item.command, p1, 0.0, 0.0, 0.0, item.x, item.y, 0.0, 0)
        return mavlink.MAV_MISSION_ACCEPTED, stored
    # MissionItemProtocol_Rally::convert_MISSION_ITEM_INT_to_RallyLocation: the altitude is
    # an int16 of metres (a fraction is dropped); a NaN, undefined there, is refused here.
    if item.command != _C.MAV_CMD_NAV_RALLY_POINT:
        return mavlink.MAV_MISSION_UNSUPPORTED, None
    if abs(item.x) > 900_000_000:
        return mavlink.MAV_MISSION_INVALID_PARAM5_X, None
    if abs(item.y) > 1_800_000_000:
        return mavlink.MAV_MISSION_INVALID_PARAM6_Y, None
    if not -32768 <= item.z <= 32767:
        return mavlink.MAV_MISSION_INVALID_PARAM7, None
    if item.frame not in _ALT_FRAMES:
        return mavlink.MAV_MISSION_UNSUPPORTED_FRAME, None
    stored = Item(
        item.seq,
        _ALT_FRAMES[item.frame],
        item.command,
        0.0,
        0.0,
        0.0,
        0.0,
        item.x,
        item.y,
        float(math.trunc(item.z)),
        0,
    )
    return mavlink.MAV_MISSION_ACCEPTED, stored


def fence_error(items: list[Item]) -> str | None:
    """Why a fence list cannot be stored, as ArduPilot's STATUSTEXT says it, or None:
    AC_PolyFence_loader::validate_fence, then the storage check of write_fence
    (fence_storage_space_required: 4 header bytes, 2 + 8 per polygon vertex, 13 per circle,
    9 for the return point)."""
    polygons = (
        _C.MAV_CMD_NAV_FENCE_POLYGON_VERTEX_INCLUSION,
        _C.MAV_CMD_NAV_FENCE_POLYGON_VERTEX_EXCLUSION,
    )
    expecting, remaining, want = 0, 0, 0
    seen_return = False
    needed = 4
    for item in items:
        if item.command in polygons:
            count = int(item.param1)
            if count < 3:
                return f"Invalid vertex count ({count})"
            if remaining == 0:
                expecting, remaining, want = item.command, count, count
                needed += 2 + 8 * count
            elif item.command != expecting:
                return f"Received incorrect vertex type (want={expecting} got={item.command})"
            elif count != want:
                return f"Unexpected vertex count want={want} got={count}"
            remaining -= 1
        elif remaining:
            return f"Received incorrect type (want={expecting} got={item.command})"
        elif item.command == _C.MAV_CMD_NAV_FENCE_RETURN_POINT:
            if seen_return:
                return "Multiple return points"
            seen_return = True
            needed += 9
        else:  # a circle
            if not item.param1 >= 1.1920929e-07:  # is_positive(): >= FLT_EPSILON
                return "Non-positive circle radius"
            needed += 13
        if abs(item.x) > 900_000_000 or abs(item.y) > 1_800_000_000:
            return "Bad lat or lon"
    if remaining:
        return "Incorrect item count"
    if needed > FENCE_STORAGE_BYTES:
        return "Fence exceeds storage size"
    return None


@dataclass
class _Upload:
    client: int
    source: tuple[int, int]
    count: int
    next_seq: int
    items: list[Item]
    last_item_time: float
    last_request_time: float


class MissionStore:
    """The stored lists and the protocol state for each mission type.

    `home` gives the home position (lat_e7, lon_e7, alt_amsl_m) once set, for MISSION item 0.
    `on_change(mission_type)` is called after a list has been replaced or cleared."""

    def __init__(
        self,
        home: Callable[[], tuple[int, int, float] | None],
        on_change: Callable[[int], None],
        outbox: Outbox,
    ) -> None:
        self._home = home
        self._on_change = on_change
        self._out = outbox
        self._lists: dict[int, list[Item]] = {MISSION: [], FENCE: [], RALLY: []}
        self._uploads: dict[int, _Upload] = {}
        self._legacy_warned: set[str] = set()

    # ---- what the vehicle reads -------------------------------------------------------
    def items(self, mission_type: int) -> list[Item]:
        """The stored list as it reads back (MISSION: item 0 is home)."""
        stored = self._lists[mission_type]
        if mission_type != MISSION:
            return list(stored)
        home = self._home()
        if home is None and not stored:
            return []
        lat, lon, alt = home if home is not None else (0, 0, 0.0)
        home_item = Item(0, _C.MAV_FRAME_GLOBAL, _C.MAV_CMD_NAV_WAYPOINT, 0, 0, 0, 0, lat, lon, alt)
        return [home_item, *stored[1:]]

    def count(self, mission_type: int) -> int:
        """Number of items a download would report."""
        return len(self.items(mission_type))

    # ---- protocol -------------------------------------------------------------------------
    def handle(self, msg: MAVLinkMessage, client: int, now: float) -> None:
        """Process one mission-protocol message from `client` (answers go to the outbox)."""
        kind = msg.get_type()
        mission_type = getattr(msg, "mission_type", MISSION)
        if mission_type not in self._lists:
            self._ack(client, msg, mavlink.MAV_MISSION_UNSUPPORTED, mission_type)
            return
        if kind == "MISSION_COUNT":
            self._count(msg, client, now)
        elif kind == "MISSION_REQUEST_LIST":
            if mission_type in self._uploads:
                self._ack(client, msg, mavlink.MAV_MISSION_DENIED, mission_type)
            else:
                self._send_count(msg, client, mission_type)
        elif kind in ("MISSION_REQUEST_INT", "MISSION_REQUEST"):
            self._request(msg, client, kind == "MISSION_REQUEST")
        elif kind in ("MISSION_ITEM_INT", "MISSION_ITEM"):
            self._item(msg, client, now, kind == "MISSION_ITEM")
        elif kind == "MISSION_CLEAR_ALL" and self._cancel(msg, client, mission_type):
            self._lists[mission_type] = []
            self._on_change(mission_type)
            self._ack(client, msg, mavlink.MAV_MISSION_ACCEPTED, mission_type)

    def tick(self, now: float) -> None:
        """Re-request a missing item after a quiet second; give up after 8 s."""
        for mission_type, up in list(self._uploads.items()):
            if now - up.last_item_time > UPLOAD_TIMEOUT_S:
                del self._uploads[mission_type]
                self._out.text(
                    mavlink.MAV_SEVERITY_WARNING,
                    f"{_TYPE_NAME[mission_type]} upload timeout",
                    up.client,
                )
                ack = mavlink.MAVLink_mission_ack_message(
                    up.source[0],
                    up.source[1],
                    mavlink.MAV_MISSION_OPERATION_CANCELLED,
                    mission_type,
                )
                self._out.send(ack, up.client)
            elif now - up.last_request_time > REREQUEST_S:
                self._request_next(mission_type, up, now)

    def _ack(self, client: int, msg: MAVLinkMessage, result: int, mission_type: int) -> None:
        ack = mavlink.MAVLink_mission_ack_message(
            msg.get_srcSystem(), msg.get_srcComponent(), result, mission_type
        )
        self._out.send(ack, client)

    def _send_count(self, msg: MAVLinkMessage, client: int, mission_type: int) -> None:
        reply = mavlink.MAVLink_mission_count_message(
            msg.get_srcSystem(), msg.get_srcComponent(), self.count(mission_type), mission_type
        )
        self._out.send(reply, client)

    def _cancel(self, msg: MAVLinkMessage, client: int, mission_type: int) -> bool:
        """Drop an upload in progress; refuse (DENIED) if someone else is uploading."""
        up = self._uploads.get(mission_type)
        if up is None:
            return True
        if (msg.get_srcSystem(), msg.get_srcComponent()) != up.source:
            self._ack(client, msg, mavlink.MAV_MISSION_DENIED, mission_type)
            return False
        del self._uploads[mission_type]
        return True

    def _count(self, msg: MAVLinkMessage, client: int, now: float) -> None:
        mission_type = msg.mission_type
        if not self._cancel(msg, client, mission_type):
            return
        if msg.count > MAX_ITEMS[mission_type]:
            self._ack(client, msg, mavlink.MAV_MISSION_NO_SPACE, mission_type)
            self._out.text(
                mavlink.MAV_SEVERITY_WARNING, f"Only {MAX_ITEMS[mission_type]} items are supported"
            )
            return
        source = (msg.get_srcSystem(), msg.get_srcComponent())
        up = _Upload(client, source, msg.count, 0, [], now, now)
        if msg.count == 0:
            self._complete(mission_type, up, msg)
            return
        self._uploads[mission_type] = up
        self._request_next(mission_type, up, now)

    def _request_next(self, mission_type: int, up: _Upload, now: float) -> None:
        up.last_request_time = now
        req = mavlink.MAVLink_mission_request_int_message(
            up.source[0], up.source[1], up.next_seq, mission_type
        )
        self._out.send(req, up.client)

    def _item(self, msg: MAVLinkMessage, client: int, now: float, legacy: bool) -> None:
        mission_type = msg.mission_type
        if legacy:
            self._warn_once("got MISSION_ITEM; GCS should send MISSION_ITEM_INT", client)
        up = self._uploads.get(mission_type)
        if up is None:
            self._ack(client, msg, mavlink.MAV_MISSION_ERROR, mission_type)
            return
        if msg.seq != up.next_seq:
            self._ack(client, msg, mavlink.MAV_MISSION_INVALID_SEQUENCE, mission_type)
            return
        if (msg.get_srcSystem(), msg.get_srcComponent()) != up.source:
            self._ack(client, msg, mavlink.MAV_MISSION_DENIED, mission_type)
            return
        result, stored = convert(Item.from_msg(msg), mission_type)
        if stored is None:
            del self._uploads[mission_type]
            self._ack(client, msg, result, mission_type)
            return
        up.items.append(stored)
        up.next_seq += 1
        up.last_item_time = now
        if up.next_seq >= up.count:
            del self._uploads[mission_type]
            self._complete(mission_type, up, msg)
        else:
            self._request_next(mission_type, up, now)

    def _complete(self, mission_type: int, up: _Upload, msg: MAVLinkMessage) -> None:
        if mission_type == FENCE:
            problem = fence_error(up.items)
            if problem is not None:
                self._out.text(mavlink.MAV_SEVERITY_WARNING, problem)
                if problem != "Fence exceeds storage size":
                    self._out.text(mavlink.MAV_SEVERITY_WARNING, "Fence validation failed")
                self._ack(up.client, msg, mavlink.MAV_MISSION_ERROR, mission_type)
                return
        self._lists[mission_type] = up.items
        self._on_change(mission_type)
        if mission_type == MISSION:
            self._out.text(mavlink.MAV_SEVERITY_INFO, "Flight plan received", up.client)
        self._ack(up.client, msg, mavlink.MAV_MISSION_ACCEPTED, mission_type)

    def _request(self, msg: MAVLinkMessage, client: int, legacy: bool) -> None:
        mission_type = msg.mission_type
        if mission_type in self._uploads:
            self._ack(client, msg, mavlink.MAV_MISSION_DENIED, mission_type)
            return
        items = self.items(mission_type)
        if not 0 <= msg.seq < len(items) and not (mission_type == MISSION and msg.seq == 0):
            self._send_count(msg, client, mission_type)
            self._ack(client, msg, mavlink.MAV_MISSION_INVALID_SEQUENCE, mission_type)
            return
        if not items:
            self._ack(client, msg, mavlink.MAV_MISSION_ERROR, mission_type)
            return
        item = items[msg.seq]
        target = (msg.get_srcSystem(), msg.get_srcComponent())
        if legacy:
            self._warn_once("got MISSION_REQUEST; use MISSION_REQUEST_INT!", client)
            reply = mavlink.MAVLink_mission_item_message(
                target[0], target[1], item.seq, item.frame, item.command, 0, item.autocontinue,
                item.param1, item.param2, item.param3, item.param4, item.x * 1e-7, item.y * 1e-7,
                item.z, mission_type,
            )  # fmt: skip
        else:
            reply = item.to_msg(target, mission_type)
        self._out.send(reply, client)

    def _warn_once(self, text: str, client: int) -> None:
        if text not in self._legacy_warned:
            self._legacy_warned.add(text)
            self._out.text(mavlink.MAV_SEVERITY_WARNING, text, client)
