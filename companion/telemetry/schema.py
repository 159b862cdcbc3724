"""The telemetry wire format, schema ``skycourier.telemetry/1``: what the drone sends to the
operator over MQTT, and the only thing a ground station needs to read it.

Three record types, one JSON object each (UTF-8, compact separators):

- `Telemetry` on ``skycourier/v1/<drone_id>/telemetry``: a sample of position, heading,
  speed, battery, mission phase, GPS integrity, detections and link quality;
- `Event` on ``.../events``: a mission event (phase entered, released, abort, GPS alarm...);
- `Status` on ``.../status``, retained: ``online`` while connected; the broker publishes the
  last will, an ``offline`` Status, when the drone vanishes.

Every record carries ``v`` (schema version), ``type``, ``drone_id``, ``seq``, ``id`` and ``t``.
``seq`` is the drone's store-and-forward sequence number: monotonic across restarts, so a
receiver orders by it. ``id`` is a UUID fixed when the record is queued, so a re-sent record
(at-least-once delivery) carries the same ``id`` and a receiver de-duplicates by it. The id is
random rather than ``<drone>-<seq>`` on purpose: a drone whose queue file is lost (new SD
card) restarts its seq at 1, and a receiver keyed on seq would silently discard its new
records as duplicates.

Compatibility: adding an optional field does not change ``v`` (decoders ignore unknown keys);
changing a field's meaning or removing one does. `decode` rejects any other ``v`` and every
malformed field with a `SchemaError` that names the field, never a crash.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar, Union

SCHEMA = "skycourier.telemetry/1"
VERSION = 1
TOPIC_ROOT = "skycourier/v1"
CHANNELS = ("telemetry", "events", "status", "cmd")
STATUS_STATES = ("online", "offline")

#: A record larger than this is not ours (ours are a few hundred bytes): rejected unread.
MAX_PAYLOAD_BYTES = 64 * 1024

_DRONE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")

T = TypeVar("T")


class SchemaError(ValueError):
    """A payload that is not a valid record; the message names the offending field."""


def check_drone_id(drone_id: str) -> str:
    """`drone_id` if it can be an MQTT topic level: no ``/``, ``+``, ``#`` or spaces."""
    if not isinstance(drone_id, str) or not _DRONE_ID.fullmatch(drone_id):
        raise SchemaError(
            f"drone_id: {drone_id!r} is not 1-64 characters of letters, digits, '_', '-', '.'"
        )
    return drone_id


def topic(drone_id: str, channel: str) -> str:
    """The MQTT topic of one of a drone's channels: ``skycourier/v1/<drone_id>/<channel>``."""
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}, expected one of {', '.join(CHANNELS)}")
    return f"{TOPIC_ROOT}/{check_drone_id(drone_id)}/{channel}"


def parse_topic(name: str) -> tuple[str, str]:
    """(drone_id, channel) of one of our topics; SchemaError for any other topic."""
    parts = name.split("/")
    if len(parts) != 4 or "/".join(parts[:2]) != TOPIC_ROOT or parts[3] not in CHANNELS:
        raise SchemaError(f"topic {name!r} is not {TOPIC_ROOT}/<drone_id>/<channel>")
    return check_drone_id(parts[2]), parts[3]


def utc_iso(ts: float) -> str:
    """Unix time as UTC ISO 8601 with milliseconds and a Z: ``2026-11-27T21:44:44.123Z``."""
    moment = datetime.fromtimestamp(ts, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def new_id() -> str:
    """A record id: a random UUID, unique across drones, restarts and lost queue files."""
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Position:
    """WGS-84 degrees; altitudes in metres above mean sea level and above home."""

    lat: float
    lon: float
    alt_msl_m: float
    alt_rel_m: float


@dataclass(frozen=True)
class Battery:
    pct: int | None = None
    voltage_v: float | None = None


@dataclass(frozen=True)
class GpsIntegrity:
    """The autopilot's GPS fix (MAVLink GPS_FIX_TYPE) and the integrity monitor's verdict:
    the kinds of alarm active now (divergence, jump, time); none active means ``ok``."""

    fix_type: int = 0
    satellites: int | None = None
    alarms: tuple[str, ...] = ()

    @property
    def status(self) -> str:
        return "alarm" if self.alarms else "ok"


@dataclass(frozen=True)
class LinkQuality:
    """The modem's signal as it reports it (A7670: +CSQ RSSI, +CPSI RSRP and SINR)."""

    rssi_dbm: int | None = None
    rsrp_dbm: float | None = None
    sinr_db: float | None = None


@dataclass(frozen=True)
class Telemetry:
    """One sample. Speeds in m/s, vertical speed positive up; heading in degrees [0, 360)."""

    drone_id: str
    seq: int
    id: str
    t: str
    phase: str | None = None
    armed: bool = False
    mode: str = "UNKNOWN"
    position: Position | None = None
    heading_deg: float | None = None
    ground_speed_mps: float | None = None
    vertical_speed_mps: float | None = None
    battery: Battery = field(default_factory=Battery)
    gps: GpsIntegrity = field(default_factory=GpsIntegrity)
    detections: dict[str, int] = field(default_factory=dict)
    link: LinkQuality | None = None

    type = "telemetry"


@dataclass(frozen=True)
class Event:
    """A mission event: `kind` is what happened (``enter``, ``released``, ``abort``,
    ``gps-alarm``...), `detail` its JSON-safe particulars."""

    drone_id: str
    seq: int
    id: str
    t: str
    kind: str
    mission_id: str | None = None
    phase: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    type = "event"


@dataclass(frozen=True)
class Status:
    """Whether the drone is connected. `seq` is the last seq it had queued when it said so."""

    drone_id: str
    seq: int
    id: str
    t: str
    state: str

    type = "status"


Record = Union[Telemetry, Event, Status]  # noqa: UP007 (a runtime alias, py3.10 target)

CHANNEL_OF = {"telemetry": "telemetry", "event": "events", "status": "status"}


# -- encoding ------------------------------------------------------------------------------


def _drop_none(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if v is not None}


def to_dict(record: Record) -> dict[str, Any]:
    """The JSON object of `record` (None-valued optional fields left out)."""
    head = {
        "v": VERSION,
        "type": record.type,
        "drone_id": record.drone_id,
        "seq": record.seq,
        "id": record.id,
        "t": record.t,
    }
    if isinstance(record, Status):
        return {**head, "state": record.state}
    if isinstance(record, Event):
        body = {
            "kind": record.kind,
            "mission_id": record.mission_id,
            "phase": record.phase,
            "detail": record.detail,
        }
        return {**head, **_drop_none(body)}
    pos = record.position
    body = {
        "phase": record.phase,
        "armed": record.armed,
        "mode": record.mode,
        "pos": None
        if pos is None
        else {
            "lat": pos.lat,
            "lon": pos.lon,
            "alt_msl_m": pos.alt_msl_m,
            "alt_rel_m": pos.alt_rel_m,
        },
        "heading_deg": record.heading_deg,
        "ground_speed_mps": record.ground_speed_mps,
        "vertical_speed_mps": record.vertical_speed_mps,
        "battery": _drop_none({"pct": record.battery.pct, "voltage_v": record.battery.voltage_v}),
        "gps": _drop_none(
            {
                "fix": record.gps.fix_type,
                "sats": record.gps.satellites,
                "integrity": record.gps.status,
                "alarms": list(record.gps.alarms),
            }
        ),
        "detections": record.detections,
        "link": None
        if record.link is None
        else _drop_none(
            {
                "rssi_dbm": record.link.rssi_dbm,
                "rsrp_dbm": record.link.rsrp_dbm,
                "sinr_db": record.link.sinr_db,
            }
        ),
    }
    return {**head, **_drop_none(body)}


def encode(record: Record) -> bytes:
    """Compact UTF-8 JSON of `record`, validated as `decode` would (so the drone never queues
    a record its receivers reject); SchemaError names the field or the unencodable value."""
    obj = to_dict(record)
    from_dict(obj)
    try:
        text = json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise SchemaError(f"{record.type} seq {record.seq}: cannot encode: {exc}") from exc
    return text.encode()


# -- decoding ------------------------------------------------------------------------------


class _Reader:
    """Typed access to one JSON object, every error naming the field's path."""

    def __init__(self, obj: object, path: str) -> None:
        if not isinstance(obj, dict):
            raise SchemaError(f"{path}: expected an object, got {_kind(obj)}")
        self.obj = obj
        self.path = path

    def _get(self, key: str, required: bool) -> object:
        if key not in self.obj or self.obj[key] is None:
            if required:
                raise SchemaError(f"{self.path}.{key}: missing")
            return None
        return self.obj[key]

    def _typed(self, key: str, required: bool, check: Callable[[object], T | None], what: str):
        value = self._get(key, required)
        if value is None:
            return None
        result = check(value)
        if result is None:
            raise SchemaError(f"{self.path}.{key}: expected {what}, got {_show(value)}")
        return result

    def text(self, key: str, required: bool = False) -> str | None:
        return self._typed(key, required, lambda v: v if isinstance(v, str) else None, "a string")

    def integer(self, key: str, required: bool = False, low: int | None = None) -> int | None:
        def check(v: object) -> int | None:
            ok = isinstance(v, int) and not isinstance(v, bool) and (low is None or v >= low)
            return v if ok else None  # type: ignore[return-value]

        what = "an integer" if low is None else f"an integer >= {low}"
        return self._typed(key, required, check, what)

    def number(
        self, key: str, required: bool = False, bound: tuple[float, float] | None = None
    ) -> float | None:
        def check(v: object) -> float | None:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                return None
            x = float(v)
            if not math.isfinite(x) or (bound is not None and not bound[0] <= x <= bound[1]):
                return None
            return x

        what = "a finite number" if bound is None else f"a number in [{bound[0]}, {bound[1]}]"
        return self._typed(key, required, check, what)

    def flag(self, key: str) -> bool | None:
        return self._typed(key, False, lambda v: v if isinstance(v, bool) else None, "true/false")

    def sub(self, key: str) -> _Reader | None:
        value = self._get(key, False)
        return None if value is None else _Reader(value, f"{self.path}.{key}")

    def mapping(self, key: str) -> dict[str, Any]:
        value = self._get(key, False)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise SchemaError(f"{self.path}.{key}: expected an object, got {_kind(value)}")
        return value


def _kind(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "true/false"}.get(
        type(value), "null" if value is None else "a number"
    )


def _show(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_t(text: str, path: str) -> str:
    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise SchemaError(f"{path}.t: {_show(text)} is not an ISO 8601 time") from None
    if moment.utcoffset() is None:
        raise SchemaError(f"{path}.t: {_show(text)} has no time zone (expected UTC, 'Z')")
    return text


def from_dict(obj: object) -> Record:
    """Validate a decoded JSON object and build its record; SchemaError names the field."""
    head = _Reader(obj, "record")
    version = head.obj.get("v")
    if version != VERSION:
        raise SchemaError(
            f"record.v: unsupported schema version {_show(version)} (this build reads {SCHEMA})"
        )
    kind = head.text("type", required=True)
    if kind not in CHANNEL_OF:
        raise SchemaError(f"record.type: {_show(kind)} is not telemetry, event or status")
    r = _Reader(head.obj, kind)
    try:
        drone_id = check_drone_id(r.text("drone_id", required=True))  # type: ignore[arg-type]
    except SchemaError as exc:
        raise SchemaError(f"{kind}.{exc}") from None
    common = {
        "drone_id": drone_id,
        "seq": r.integer("seq", required=True, low=1),
        "id": r.text("id", required=True),
        "t": _check_t(r.text("t", required=True), kind),  # type: ignore[arg-type]
    }
    if not common["id"]:
        raise SchemaError(f"{kind}.id: empty")
    if kind == "status":
        state = r.text("state", required=True)
        if state not in STATUS_STATES:
            raise SchemaError(f"status.state: {_show(state)} is not online or offline")
        return Status(**common, state=state)  # type: ignore[arg-type]
    if kind == "event":
        return Event(
            **common,  # type: ignore[arg-type]
            kind=r.text("kind", required=True),  # type: ignore[arg-type]
            mission_id=r.text("mission_id"),
            phase=r.text("phase"),
            detail=r.mapping("detail"),
        )
    return _telemetry(r, common)


def _telemetry(r: _Reader, common: dict[str, Any]) -> Telemetry:
    position = None
    pos = r.sub("pos")
    if pos is not None:
        position = Position(
            lat=pos.number("lat", required=True, bound=(-90.0, 90.0)),  # type: ignore[arg-type]
            lon=pos.number("lon", required=True, bound=(-180.0, 180.0)),  # type: ignore[arg-type]
            alt_msl_m=pos.number("alt_msl_m", required=True),  # type: ignore[arg-type]
            alt_rel_m=pos.number("alt_rel_m", required=True),  # type: ignore[arg-type]
        )
    bat = r.sub("battery") or _Reader({}, "telemetry.battery")
    gps = r.sub("gps") or _Reader({}, "telemetry.gps")
    alarms = gps.obj.get("alarms") or []
    if not isinstance(alarms, list) or not all(isinstance(a, str) for a in alarms):
        raise SchemaError(
            f"telemetry.gps.alarms: expected an array of strings, got {_show(alarms)}"
        )
    integrity = gps.text("integrity")
    if integrity is not None and integrity != ("alarm" if alarms else "ok"):
        raise SchemaError(
            f"telemetry.gps.integrity: {_show(integrity)} contradicts alarms {_show(alarms)}"
        )
    detections = r.mapping("detections")
    for name, count in detections.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise SchemaError(
                f"telemetry.detections.{name}: expected a count >= 0, got {_show(count)}"
            )
    link = r.sub("link")
    return Telemetry(
        **common,
        phase=r.text("phase"),
        armed=bool(r.flag("armed")),
        mode=r.text("mode") or "UNKNOWN",
        position=position,
        heading_deg=r.number("heading_deg", bound=(0.0, 360.0)),
        ground_speed_mps=r.number("ground_speed_mps"),
        vertical_speed_mps=r.number("vertical_speed_mps"),
        battery=Battery(pct=bat.integer("pct", low=0), voltage_v=bat.number("voltage_v")),
        gps=GpsIntegrity(
            fix_type=gps.integer("fix", low=0) or 0,
            satellites=gps.integer("sats", low=0),
            alarms=tuple(alarms),
        ),
        detections=detections,
        link=None
        if link is None
        else LinkQuality(
            rssi_dbm=link.integer("rssi_dbm"),
            rsrp_dbm=link.number("rsrp_dbm"),
            sinr_db=link.number("sinr_db"),
        ),
    )


def decode(payload: bytes) -> Record:
    """Parse and validate one payload; SchemaError (naming the field) for anything malformed."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise SchemaError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        text = payload.decode()  # UTF-8 only: json.loads(bytes) would guess UTF-16/32 too
    except UnicodeDecodeError as exc:
        raise SchemaError(f"payload is not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"payload is not JSON: {exc.msg} at byte {exc.pos}") from None
    except RecursionError:
        raise SchemaError("payload is not a record: JSON nested too deeply") from None
    return from_dict(obj)


def decode_for(name: str, payload: bytes) -> Record:
    """Decode a payload received on topic `name`, checking that topic and record agree."""
    drone_id, channel = parse_topic(name)
    record = decode(payload)
    if record.drone_id != drone_id or CHANNEL_OF[record.type] != channel:
        raise SchemaError(
            f"{record.type} from drone {record.drone_id!r} arrived on the wrong topic {name!r}"
        )
    return record


def jsonable(value: object) -> object:
    """`value` as plain JSON data: enums by value, tuples/sets as lists, non-finite floats as
    None, anything else unknown as its str(). For event details built from bus messages."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    enum_value = getattr(value, "value", None)
    if isinstance(enum_value, (str, int)):
        return enum_value
    return str(value)
