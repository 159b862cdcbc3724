"""MAVLink mission microservice: upload, download, clear and set-current.

Implements https://mavlink.io/en/services/mission.html (cited below as "mission.html,
<section>") for the three plan types a delivery needs: MAV_MISSION_TYPE_MISSION (the flight
plan), _FENCE (geofence) and _RALLY (rally points). Each operation is a sans-I/O core
(`transaction.Transaction`): decoded messages and clock readings in, messages to send out.

ArduPilot specifics that matter here (mission.html, "Implementations > ArduPilot", and
libraries/GCS_MAVLink/MissionItemProtocol.cpp):
- item 0 of a MISSION-type plan is the home position, not the first thing to fly.
  `MissionUpload` sends whatever item 0 the caller gives, unchanged, and `MissionDownload`
  returns the vehicle's home as item 0; callers that build a flight plan put a home (or
  placeholder) waypoint first and their first real item at seq 1.
- it may ask for items with the legacy MISSION_REQUEST (`queued_request_send`) as well as
  MISSION_REQUEST_INT, and re-requests an item by itself after about 1 s without it;
- it answers an item that is not the one it expects with MISSION_ACK
  MAV_MISSION_INVALID_SEQUENCE but keeps the upload going (see `MissionUpload`).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

from firmware_bridge.dialect import MAVLinkMessage, enum_name, mavlink
from firmware_bridge.errors import MissionError, ProtocolTimeout
from firmware_bridge.exchange import OWN_COMPONENT, OWN_SYSTEM, Exchange, RequestReply

MISSION_TYPES = (
    mavlink.MAV_MISSION_TYPE_MISSION,
    mavlink.MAV_MISSION_TYPE_FENCE,
    mavlink.MAV_MISSION_TYPE_RALLY,
)

_INT_RANGES = {
    "seq": (0, 0xFFFF),
    "frame": (0, 0xFF),
    "command": (0, 0xFFFF),
    "current": (0, 0xFF),
    "autocontinue": (0, 0xFF),
    "x": (-(2**31), 2**31 - 1),
    "y": (-(2**31), 2**31 - 1),
    "mission_type": (0, 0xFF),
}
_FLOAT_FIELDS = ("param1", "param2", "param3", "param4", "z")


def result_name(result: int) -> str:
    """Name of a MAV_MISSION_RESULT value, e.g. 4 -> "MAV_MISSION_NO_SPACE"."""
    return enum_name("MAV_MISSION_RESULT", result)


def mission_type_name(mission_type: int) -> str:
    """Name of a MAV_MISSION_TYPE value, e.g. 1 -> "MAV_MISSION_TYPE_FENCE"."""
    return enum_name("MAV_MISSION_TYPE", mission_type)


def _check_mission_type(mission_type: int) -> None:
    if mission_type not in MISSION_TYPES:
        raise ValueError(
            f"mission_type must be MISSION, FENCE or RALLY (0, 1, 2), got {mission_type}"
        )


def _float32(value: float, name: str) -> float:
    try:
        return struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:
        raise ValueError(f"{name}={value} does not fit a float32") from None


@dataclass(frozen=True)
class MissionItem:
    """One plan item, as carried by MISSION_ITEM_INT (mission.html, "Mission Items").

    `x`, `y` are latitude/longitude in degrees * 1e7 for global frames (local frames: metres
    * 1e4). The float fields are stored as the float32 the wire carries, so an item equals
    its own round trip through `to_msg`/`from_msg`.
    """

    seq: int
    frame: int
    command: int
    current: int
    autocontinue: int
    param1: float
    param2: float
    param3: float
    param4: float
    x: int
    y: int
    z: float
    mission_type: int = mavlink.MAV_MISSION_TYPE_MISSION

    def __post_init__(self) -> None:
        for name, (low, high) in _INT_RANGES.items():
            value = getattr(self, name)
            if not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"MissionItem.{name}={value!r} is not an integer in {low}..{high}")
        for name in _FLOAT_FIELDS:
            object.__setattr__(self, name, _float32(float(getattr(self, name)), name))

    @classmethod
    def waypoint(
        cls,
        lat: float,
        lon: float,
        alt: float,
        *,
        seq: int = 0,
        frame: int = mavlink.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT,
        command: int = mavlink.MAV_CMD_NAV_WAYPOINT,
        hold_s: float = 0.0,
        params: Sequence[float] = (),
        mission_type: int = mavlink.MAV_MISSION_TYPE_MISSION,
    ) -> MissionItem:
        """A positional item at `lat`, `lon` (degrees) and `alt` (metres, per `frame`).

        `params` are param1..param4 (for NAV_WAYPOINT param1 is the hold time, which
        `hold_s` sets when `params` is empty). The frame defaults to the _INT variant the
        spec asks for in MISSION_ITEM_INT (mission.html, "Frames & Positional Information").
        """
        p = [float(v) for v in params] or [hold_s]
        if len(p) > 4:
            raise ValueError(f"at most 4 params, got {len(p)}")
        p += [0.0] * (4 - len(p))
        return cls(
            seq=seq,
            frame=frame,
            command=command,
            current=0,
            autocontinue=1,
            param1=p[0],
            param2=p[1],
            param3=p[2],
            param4=p[3],
            x=round(lat * 1e7),
            y=round(lon * 1e7),
            z=alt,
            mission_type=mission_type,
        )

    def to_msg(self, target_system: int, target_component: int) -> MAVLinkMessage:
        """This item as a MISSION_ITEM_INT addressed to the autopilot."""
        return mavlink.MAVLink_mission_item_int_message(
            target_system,
            target_component,
            self.seq,
            self.frame,
            self.command,
            self.current,
            self.autocontinue,
            self.param1,
            self.param2,
            self.param3,
            self.param4,
            self.x,
            self.y,
            self.z,
            self.mission_type,
        )

    @classmethod
    def from_msg(cls, msg: MAVLinkMessage) -> MissionItem:
        """The item a MISSION_ITEM_INT carries."""
        return cls(**{f.name: getattr(msg, f.name) for f in fields(cls)})


def _mission_type_matches(msg: MAVLinkMessage, mission_type: int) -> bool:
    # "The mission types must be stored and handled separately/independently" (mission.html,
    # "Mission Types"): a message about another plan type is not part of this transfer.
    return getattr(msg, "mission_type", None) == mission_type


class MissionUpload(Exchange[None]):
    """Upload `items` as the vehicle's plan of `mission_type`; `result()` -> None.

    Items are numbered by position (seq 0..n-1) and stamped with `mission_type`, whatever
    their own fields say. An empty list uploads an empty plan, which the spec equates with
    clearing (mission.html, "Upload a Mission"); `MissionClear` says so more plainly.

    Raises `MissionError("upload", "MAV_MISSION_...")` when the vehicle answers with an error,
    and `ProtocolTimeout` when it stops asking for items for `item_timeout` seconds, `retries`
    re-sends included.
    """

    def __init__(
        self,
        items: Sequence[MissionItem],
        mission_type: int,
        target_system: int,
        target_component: int,
        *,
        item_timeout: float = 1.5,
        retries: int = 5,
        own_system: int = OWN_SYSTEM,
        own_component: int = OWN_COMPONENT,
    ) -> None:
        super().__init__(target_system, target_component, own_system, own_component)
        _check_mission_type(mission_type)
        if len(items) > 0xFFFF:
            raise ValueError(f"MISSION_COUNT is 16 bits: {len(items)} items is too many")
        self.mission_type = mission_type
        self.items = [
            replace(item, seq=i, mission_type=mission_type) for i, item in enumerate(items)
        ]
        self.item_timeout = item_timeout
        self.retries = retries
        self._requested: set[int] = set()
        self._last_sent: MAVLinkMessage | None = None
        self._sends = 0
        self._pending_nack: str | None = None
        self._nack_grace_given = False

    def start(self, now: float) -> list[MAVLinkMessage]:
        # mission.html, "Upload": GCS sends MISSION_COUNT and starts a timeout for the
        # vehicle's first MISSION_REQUEST_INT.
        count = mavlink.MAVLink_mission_count_message(
            self.target_system, self.target_component, len(self.items), self.mission_type
        )
        return self._send(count, now)

    def _send(self, msg: MAVLinkMessage, now: float) -> list[MAVLinkMessage]:
        self._last_sent = msg
        self._sends = 1
        self._deadline = now + self.item_timeout
        return [msg]

    def _on_message(self, msg: MAVLinkMessage, now: float) -> list[MAVLinkMessage]:
        kind = msg.get_type()
        if not _mission_type_matches(msg, self.mission_type):
            return []
        if kind in ("MISSION_REQUEST_INT", "MISSION_REQUEST"):
            return self._on_request(msg.seq, now)
        if kind == "MISSION_ACK":
            self._on_ack(msg.type, now)
        return []

    def _on_request(self, seq: int, now: float) -> list[MAVLinkMessage]:
        # A request for an item we do not have cannot be answered; the vehicle's own timeout
        # (or ours) ends that.
        if seq >= len(self.items):
            return []
        self._pending_nack = None
        # "If MISSION_REQUEST is received the system should instead respond with
        # MISSION_ITEM_INT items" (mission.html, "Deprecated Types"), so both kinds of request
        # get the same answer.
        item = self.items[seq].to_msg(self.target_system, self.target_component)
        if seq not in self._requested:
            # Progress: a new item is wanted, so the per-item timeout and retries start over.
            self._requested.add(seq)
            self._nack_grace_given = False
            return self._send(item, now)
        # A request for an item sent before (the vehicle lost our item, or re-requested
        # before it arrived): answer it again, without extending the timeout, so that a
        # vehicle stuck re-requesting cannot keep the upload alive forever.
        self._last_sent = item
        return [item]

    def _on_ack(self, result: int, now: float) -> None:
        if result == mavlink.MAV_MISSION_ACCEPTED:
            # The vehicle accepts "after receiving the last mission item" (mission.html,
            # "Upload"); an ACCEPTED before it has asked for every item is a stale ack of an
            # earlier operation, or a vehicle that did not get the whole plan.
            if len(self._requested) == len(self.items):
                self._succeed(None)
            return
        if result == mavlink.MAV_MISSION_INVALID_SEQUENCE:
            # "Out-of-sequence messages in mission upload/download are recoverable"
            # (mission.html, "Errors/Completion"): ArduPilot sends this NACK when a duplicate
            # of an item it already has arrives, and then carries on. Wait for the vehicle to
            # re-request; if it does not by the deadline, the NACK stands. The deadline moves
            # to give it item_timeout once per item, so NACKs alone cannot stall the upload.
            self._pending_nack = result_name(result)
            if not self._nack_grace_given:
                self._nack_grace_given = True
                self._deadline = now + self.item_timeout
            return
        # "Errors are considered unrecoverable" (mission.html, "Errors/Completion").
        self._fail(MissionError("upload", result_name(result)))

    def _on_deadline(self, now: float) -> list[MAVLinkMessage]:
        if self._pending_nack is not None:
            self._fail(MissionError("upload", self._pending_nack))
            return []
        # "If the expected response is not received before the timeout then the message must
        # be resent" (mission.html, "Timeouts and Retries"): MISSION_COUNT before the first
        # request, the last item sent afterwards.
        if self._sends <= self.retries and self._last_sent is not None:
            self._sends += 1
            self._deadline = now + self.item_timeout
            return [self._last_sent]
        if not self.items:
            waiting = "no MISSION_ACK after MISSION_COUNT 0"
        elif not self._requested:
            waiting = "no MISSION_REQUEST for item 0 after MISSION_COUNT"
        elif len(self._requested) == len(self.items):
            waiting = "no MISSION_ACK after the last item"
        else:
            waiting = f"no MISSION_REQUEST after item {self._last_sent.seq}"
        self._fail(
            ProtocolTimeout(
                f"{mission_type_name(self.mission_type)} upload: {waiting} "
                f"({self._sends} tries, {self.item_timeout:g} s each)"
            )
        )
        return []


class MissionDownload(Exchange[list[MissionItem]]):
    """Download the vehicle's plan of `mission_type`; `result()` -> list[MissionItem].

    For MAV_MISSION_TYPE_MISSION on ArduPilot, item 0 is home.
    Raises `MissionError("download", "MAV_MISSION_...")` when the vehicle answers a request
    with an error, `ProtocolTimeout` when it stops answering.
    """

    def __init__(
        self,
        mission_type: int,
        target_system: int,
        target_component: int,
        *,
        item_timeout: float = 1.5,
        retries: int = 5,
        own_system: int = OWN_SYSTEM,
        own_component: int = OWN_COMPONENT,
    ) -> None:
        super().__init__(target_system, target_component, own_system, own_component)
        _check_mission_type(mission_type)
        self.mission_type = mission_type
        self.item_timeout = item_timeout
        self.retries = retries
        self._count: int | None = None
        self._items: list[MissionItem] = []
        self._request: MAVLinkMessage | None = None
        self._sends = 0

    def start(self, now: float) -> list[MAVLinkMessage]:
        # mission.html, "Download": MISSION_REQUEST_LIST, answered by MISSION_COUNT.
        return self._send(
            mavlink.MAVLink_mission_request_list_message(
                self.target_system, self.target_component, self.mission_type
            ),
            now,
        )

    def _send(self, msg: MAVLinkMessage, now: float) -> list[MAVLinkMessage]:
        self._request = msg
        self._sends = 1
        self._deadline = now + self.item_timeout
        return [msg]

    def _request_item(self, seq: int) -> MAVLinkMessage:
        return mavlink.MAVLink_mission_request_int_message(
            self.target_system, self.target_component, seq, self.mission_type
        )

    def _on_message(self, msg: MAVLinkMessage, now: float) -> list[MAVLinkMessage]:
        kind = msg.get_type()
        if not _mission_type_matches(msg, self.mission_type):
            return []
        if kind == "MISSION_COUNT" and self._count is None:
            self._count = msg.count
            return self._next(now)
        if kind == "MISSION_ITEM_INT" and self._count is not None:
            expected = len(self._items)
            if msg.seq == expected:
                self._items.append(MissionItem.from_msg(msg))
                return self._next(now)
            if msg.seq > expected:
                # "If an item is received out-of-sequence the expected item should be
                # re-requested by the GCS (the out-of-sequence item is dropped)" (mission.html,
                # "Download"). Items below `expected` are late copies of ones we have.
                return [self._request_item(expected)]
            return []
        if kind == "MISSION_ACK" and msg.type != mavlink.MAV_MISSION_ACCEPTED:
            # The vehicle may answer any request with an error, which "must cancel the
            # operation" (mission.html, "Download"); ArduPilot sends DENIED while an upload
            # is in progress.
            self._fail(MissionError("download", result_name(msg.type)))
        return []

    def _next(self, now: float) -> list[MAVLinkMessage]:
        assert self._count is not None
        if len(self._items) < self._count:
            return self._send(self._request_item(len(self._items)), now)
        # Download ends with the GCS sending MISSION_ACK ACCEPTED (mission.html, "Download").
        ack = mavlink.MAVLink_mission_ack_message(
            self.target_system,
            self.target_component,
            mavlink.MAV_MISSION_ACCEPTED,
            self.mission_type,
        )
        self._succeed(list(self._items))
        return [ack]

    def _on_deadline(self, now: float) -> list[MAVLinkMessage]:
        if self._sends <= self.retries and self._request is not None:
            self._sends += 1
            self._deadline = now + self.item_timeout
            return [self._request]
        waiting = (
            "no MISSION_COUNT"
            if self._count is None
            else f"no MISSION_ITEM_INT {len(self._items)} of {self._count}"
        )
        self._fail(
            ProtocolTimeout(
                f"{mission_type_name(self.mission_type)} download: {waiting} "
                f"({self._sends} tries, {self.item_timeout:g} s each)"
            )
        )
        return []


class MissionClear(RequestReply[None]):
    """Delete the vehicle's plan of `mission_type`; `result()` -> None.

    MISSION_CLEAR_ALL, answered by MISSION_ACK (mission.html, "Clear Missions"). ArduPilot
    refuses (MAV_MISSION_ERROR) while it is receiving an upload or flying the mission in
    AUTO; that surfaces as `MissionError("clear", name)`.
    """

    def __init__(
        self,
        mission_type: int,
        target_system: int,
        target_component: int,
        *,
        timeout: float = 1.5,
        retries: int = 5,
        own_system: int = OWN_SYSTEM,
        own_component: int = OWN_COMPONENT,
    ) -> None:
        super().__init__(
            target_system,
            target_component,
            timeout=timeout,
            retries=retries,
            own_system=own_system,
            own_component=own_component,
        )
        _check_mission_type(mission_type)
        self.mission_type = mission_type

    def _request(self) -> MAVLinkMessage:
        return mavlink.MAVLink_mission_clear_all_message(
            self.target_system, self.target_component, self.mission_type
        )

    def _what(self) -> str:
        return f"{mission_type_name(self.mission_type)} clear: MISSION_ACK"

    def _on_message(self, msg: MAVLinkMessage, now: float) -> list[MAVLinkMessage]:
        if msg.get_type() != "MISSION_ACK" or not _mission_type_matches(msg, self.mission_type):
            return []
        if msg.type == mavlink.MAV_MISSION_ACCEPTED:
            self._succeed(None)
        else:
            self._fail(MissionError("clear", result_name(msg.type)))
        return []


class MissionSetCurrent(RequestReply[None]):
    """Make item `seq` of the flight plan the current one; `result()` -> None.

    MISSION_SET_CURRENT; on success the vehicle "must broadcast a MISSION_CURRENT message
    containing the current sequence number" (mission.html, "Set Current Mission Item"), which
    is the only confirmation, so the request is re-sent until a MISSION_CURRENT with `seq`
    arrives. A failure is only a STATUSTEXT, not tied to the request, so it ends as
    `ProtocolTimeout`. (MAV_CMD_DO_SET_MISSION_CURRENT is the newer, acknowledged way; the
    message is what every ArduPilot release answers.)
    """

    def __init__(
        self,
        seq: int,
        target_system: int,
        target_component: int,
        *,
        timeout: float = 1.5,
        retries: int = 5,
        own_system: int = OWN_SYSTEM,
        own_component: int = OWN_COMPONENT,
    ) -> None:
        super().__init__(
            target_system,
            target_component,
            timeout=timeout,
            retries=retries,
            own_system=own_system,
            own_component=own_component,
        )
        if not 0 <= seq <= 0xFFFF:
            raise ValueError(f"seq must be 0..65535, got {seq}")
        self.seq = seq

    def _request(self) -> MAVLinkMessage:
        return mavlink.MAVLink_mission_set_current_message(
            self.target_system, self.target_component, self.seq
        )

    def _what(self) -> str:
        return f"set current mission item {self.seq}: MISSION_CURRENT"

    def _on_message(self, msg: MAVLinkMessage, now: float) -> list[MAVLinkMessage]:
        if msg.get_type() == "MISSION_CURRENT" and msg.seq == self.seq:
            self._succeed(None)
        return []
