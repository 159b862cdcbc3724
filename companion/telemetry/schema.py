"""The telemetry wire format, schema ``skycourier.telemetry/2``: what the drone sends to the
operator over MQTT, and the only thing a ground station needs to read it.

Three record types, one JSON object each (UTF-8, compact separators):

- `Telemetry` on ``skycourier/v1/<drone_id>/telemetry``: a sample of position, heading,
  speed, battery, mission phase, GPS integrity, detections and link quality;
- `Event` on ``.../events``: a mission event (phase entered, released, abort, GPS alarm...);
- `Status` on ``.../status``, retained, one record per message: ``online`` while connected,
  ``offline`` when the drone says goodbye or the broker publishes its last will.

Every record carries ``v`` (schema version), ``type``, ``drone_id``, ``seq``, ``id`` and ``t``.
``seq`` is the drone's store-and-forward sequence number: monotonic across restarts, so a
receiver orders by it. ``id`` is a UUID fixed when the record is queued (at most 64
characters), so a re-sent record (at-least-once delivery) carries the same ``id`` and a
receiver de-duplicates by it. The id is random rather than ``<drone>-<seq>`` on purpose: a
drone whose queue file is lost (new SD card) restarts its seq at 1, and a receiver keyed on
seq would silently discard its new records as duplicates.

**Batches** (new in version 2). On the telemetry and events topics one MQTT message carries
one or more records of that topic, in a batch: ``{"v":2,"type":"batch","drone_id":"d1",
"records":[<record>,<record>,...]}``, the records in increasing ``seq``, all of the batch's
drone and of the topic's channel, at most `MAX_BATCH_RECORDS` of them. A message costs the
A76xx modem five AT exchanges and a broker round trip (about 0.4 s) whatever its size, so
one record per message could not keep up with 5 Hz telemetry; a batch carries up to
`MAX_MESSAGE_BYTES` (the module's AT+CMQTTPAYLOAD limit) at the same cost. Events keep their
own topic so that a subscriber to events alone never has to read telemetry. `decode_message`
reads a message (a batch, or a single record as older drones send), `decode` one record.

**Status time-to-live** (new in version 2). An ``online`` Status carries ``ttl_s``: it stops
meaning "online" ``ttl_s`` seconds after the earlier of its ``t`` and the moment it arrived
(`status_expires_at`), unless a newer Status has come. The drone re-announces at least every
``ttl_s / 3`` while connected. The broker publishes a last will only where the drone could
set one that is retained (the A76xx's own MQTT stack cannot retain a will), so a dead drone's
retained ``online`` can stay on the broker for ever: ground tools must honour the TTL and
show such a drone as not online (``skycourier track`` prints ``STATUS expired``).

Bounds a decoder enforces (hostile input is rejected with a `SchemaError`, never a crash,
and the work is proportional to the payload's size): payloads up to `MAX_PAYLOAD_BYTES`,
JSON nested at most `MAX_DEPTH` deep, integers within ±2^63 (what SQLite and most JSON
readers hold exactly), finite numbers only, no lone UTF-16 surrogates in any string (they
cannot be re-encoded as UTF-8). The drone encodes nothing a receiver would reject, and no
record over `MAX_RECORD_BYTES` (`RecordTooLarge`), so that every record fits a message.

Compatibility: adding an optional field does not change ``v`` (decoders ignore unknown
keys); changing a field's meaning or removing one does. This build reads records of version
1 and 2 (a drone's queue may still hold version-1 records written before an upgrade; they
differ only in having no ``ttl_s``); anything else, and every malformed field, is a
`SchemaError` that names the field. The topic root ``skycourier/v1`` is the version of the
topic layout, which has not changed.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar, Union

SCHEMA = "skycourier.telemetry/2"
VERSION = 2
#: Record versions this build decodes (1: queued by a drone before it was upgraded).
READABLE_VERSIONS = (1, 2)
TOPIC_ROOT = "skycourier/v1"
CHANNELS = ("telemetry", "events", "status", "cmd", "orders", "commands")
STATUS_STATES = ("online", "offline")

#: A payload larger than this is not ours: rejected unread.
MAX_PAYLOAD_BYTES = 64 * 1024
#: The largest message a drone sends: the A76xx's AT+CMQTTPAYLOAD limit (1-10240 bytes,
#: AT Command Manual V1.09 §18.2.6), kept on every transport so that there is one format.
MAX_MESSAGE_BYTES = 10240
#: The largest record `encode` produces: one always fits a batch message on its own.
MAX_RECORD_BYTES = 8192
#: The most records one batch may carry.
MAX_BATCH_RECORDS = 256
#: The deepest JSON nesting a payload may have (a batch's records sit at depth 3; an event's
#: detail has the rest).
MAX_DEPTH = 16
#: Record ids are UUIDs (36 characters); a receiver remembers many, so they are bounded.
MAX_ID_CHARS = 64
#: Integers anywhere must lie strictly within ±2^63.
INT_LIMIT = 2**63
#: The longest time-to-live a Status may claim.
MAX_TTL_S = 86_400.0

_DRONE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_SURROGATE = re.compile("[\ud800-\udfff]")

T = TypeVar("T")


class SchemaError(ValueError):
    """A payload that is not a valid record; the message names the offending field."""


class RecordTooLarge(SchemaError):
    """A record whose encoding exceeds `MAX_RECORD_BYTES`; `size` is its encoded length."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


def check_drone_id(drone_id: str) -> str:
    """`drone_id` if it can be an MQTT topic level: no ``/``, ``+``, ``#`` or spaces."""
    if not isinstance(drone_id, str) or not _DRONE_ID.fullmatch(drone_id):
        raise SchemaError(
            f"drone_id: {_show(drone_id)} is not 1-64 characters of letters, digits, '_', '-', '.'"
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
        raise SchemaError(f"topic {_show(name)} is not {TOPIC_ROOT}/<drone_id>/<channel>")
    return check_drone_id(parts[2]), parts[3]


def utc_iso(ts: float) -> str:
    """Unix time as UTC ISO 8601 with milliseconds and a Z: ``2026-11-27T21:44:44.123Z``."""
    moment = datetime.fromtimestamp(ts, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_time(text: str) -> float | None:
    """Unix time of a record's ``t``; None if it is not an ISO 8601 time with a zone that
    converts to UTC (which `decode` checks for every record)."""
    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
        if moment.utcoffset() is None:
            return None
        return moment.astimezone(timezone.utc).timestamp()
    except (ValueError, OverflowError):
        return None


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
    """Whether the drone is connected. `seq` is the last seq it had queued when it said so;
    `ttl_s` how long an ``online`` stays true without a newer Status (see the module doc;
    None only in version-1 records and, optionally, in ``offline``)."""

    drone_id: str
    seq: int
    id: str
    t: str
    state: str
    ttl_s: float | None = None

    type = "status"


Record = Union[Telemetry, Event, Status]  # noqa: UP007 (a runtime alias, py3.10 target)

CHANNEL_OF = {"telemetry": "telemetry", "event": "events", "status": "status"}


def status_expires_at(status: Status, received_at: float) -> float | None:
    """Unix time at which `status`, received at `received_at` (the receiver's clock), stops
    meaning "online": ``ttl_s`` after the earlier of the two clocks, so that neither a
    retained message delivered long after it was said nor a drone clock running ahead can
    stretch it. None when it never expires by itself (offline, or a version-1 status)."""
    if status.state != "online" or status.ttl_s is None:
        return None
    said = parse_time(status.t)
    return (received_at if said is None else min(said, received_at)) + status.ttl_s


# -- encoding ------------------------------------------------------------------------------


def _drop_none(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if v is not None}


def to_dict(record: Record) -> dict[str, Any]:
    """The JSON object of `record` (None-valued optional fields left out). An ``online``
    status without ``ttl_s`` can only have come from a version-1 record, and is written as
    one, so that what was decoded can always be written again and read back."""
    legacy = isinstance(record, Status) and record.state == "online" and record.ttl_s is None
    head = {
        "v": 1 if legacy else VERSION,
        "type": record.type,
        "drone_id": record.drone_id,
        "seq": record.seq,
        "id": record.id,
        "t": record.t,
    }
    if isinstance(record, Status):
        return {**head, **_drop_none({"state": record.state, "ttl_s": record.ttl_s})}
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
    a record its receivers reject) and at most `MAX_RECORD_BYTES` long (`RecordTooLarge`,
    so that every queued record fits a message); SchemaError names the field."""
    obj = to_dict(record)
    try:
        from_dict(obj)
        text = json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except SchemaError as exc:
        raise SchemaError(f"{record.type} seq {_show(record.seq)}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise SchemaError(f"{record.type} seq {_show(record.seq)}: cannot encode: {exc}") from exc
    data = text.encode()
    if len(data) > MAX_RECORD_BYTES:
        raise RecordTooLarge(
            f"{record.type} seq {record.seq}: {len(data)} bytes encoded, more than the "
            f"{MAX_RECORD_BYTES} a record may have",
            len(data),
        )
    return data


def _batch_prefix(drone_id: str) -> bytes:
    return b'{"v":%d,"type":"batch","drone_id":"%s","records":[' % (VERSION, drone_id.encode())


def batch_size(drone_id: str, payloads: Sequence[bytes]) -> int:
    """The length of `encode_batch(drone_id, payloads)`, without building it."""
    commas = max(0, len(payloads) - 1)
    return len(_batch_prefix(drone_id)) + sum(map(len, payloads)) + commas + 2


def encode_batch(drone_id: str, payloads: Sequence[bytes]) -> bytes:
    """One batch message of already-encoded records of one drone and channel, in seq order.

    The records are spliced in as they are (each was validated by `encode` when it was
    queued, and the uplink checks it again with `decode_for` before batching it); this only
    checks the envelope's bounds: 1 to `MAX_BATCH_RECORDS` records, at most
    `MAX_MESSAGE_BYTES` in all."""
    check_drone_id(drone_id)
    if not 1 <= len(payloads) <= MAX_BATCH_RECORDS:
        raise SchemaError(f"a batch holds 1-{MAX_BATCH_RECORDS} records, not {len(payloads)}")
    data = _batch_prefix(drone_id) + b",".join(payloads) + b"]}"
    if len(data) > MAX_MESSAGE_BYTES:
        raise SchemaError(
            f"batch of {len(payloads)} records is {len(data)} bytes, more than a message's "
            f"{MAX_MESSAGE_BYTES}"
        )
    return data


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

    def integer(
        self, key: str, required: bool = False, low: int | None = None, high: int | None = None
    ) -> int | None:
        def check(v: object) -> int | None:
            if not isinstance(v, int) or isinstance(v, bool):
                return None
            ok = (low is None or v >= low) and (high is None or v <= high)
            return v if ok else None

        if low is None and high is None:
            what = "an integer"
        elif high is None:
            what = f"an integer >= {low}"
        else:
            what = f"an integer in [{low}, {high}]"
        return self._typed(key, required, check, what)

    def number(
        self, key: str, required: bool = False, bound: tuple[float, float] | None = None
    ) -> float | None:
        def check(v: object) -> float | None:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                return None
            x = float(v)  # integers are within ±2^63 (checked by _check_tree): no overflow
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


_SHOW_CHARS = 40


def _show(value: object) -> str:
    """`value` as (the start of) its JSON, at most 40 characters, in work bounded by that
    length whatever the value's size or depth (a hostile payload must not make an error
    message expensive, or recurse)."""
    pieces: list[str] = []
    size = 0
    stack: list[object] = [value]
    while stack and size <= _SHOW_CHARS:
        item = stack.pop()
        if isinstance(item, _Text):
            piece = item.text
        elif isinstance(item, dict):
            piece = "{"
            stack.append(_Text("}"))
            entries = list(itertools.islice(item.items(), _SHOW_CHARS))
            for i, (key, sub) in enumerate(reversed(entries)):
                stack.extend((sub, _Text(":"), key))
                if i < len(entries) - 1:
                    stack.append(_Text(","))
        elif isinstance(item, list):
            piece = "["
            stack.append(_Text("]"))
            head = item[:_SHOW_CHARS]
            for i, sub in enumerate(reversed(head)):
                stack.append(sub)
                if i < len(head) - 1:
                    stack.append(_Text(","))
        else:
            piece = _scalar(item)
        pieces.append(piece)
        size += len(piece)
    text = "".join(pieces)
    return text if len(text) <= _SHOW_CHARS and not stack else text[: _SHOW_CHARS - 3] + "..."


@dataclass(frozen=True)
class _Text:
    """Punctuation waiting on `_show`'s stack."""

    text: str


def _scalar(value: object) -> str:
    if isinstance(value, str):
        # ASCII escapes: a lone surrogate is shown, not re-encoded (which would fail).
        return json.dumps(value[: _SHOW_CHARS + 1])
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 128 else "(a very large integer)"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return f"({type(value).__name__})"


#: Where a value sits in a payload, built only for an error message: (parent, key or index).
_Where = Union[tuple["_Where", Union[str, int]], None]  # noqa: UP007


def _where(root: str, where: _Where) -> str:
    """The path `where` as text under `root`: ``record.detail.a[3]`` (keys shortened)."""
    parts: list[str] = []
    while where is not None:
        where, key = where
        parts.append(f"[{key}]" if isinstance(key, int) else "." + _show(key).strip('"'))
    return root + "".join(reversed(parts))


def _check_tree(obj: object, root: str) -> None:
    """The bounds every payload keeps, checked in one pass without recursion: nesting at
    most `MAX_DEPTH`, string keys, integers within ±2^63, finite numbers, and no lone
    surrogates in any string or key (JSON's ``\\ud800`` escape yields one; it cannot be
    re-encoded as UTF-8). Errors name the value's path; paths are built only then."""
    stack: list[tuple[object, int, _Where]] = [(obj, 1, None)]
    while stack:
        value, depth, where = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise SchemaError(
                    f"{_where(root, where)}: string {_show(value)} holds a lone UTF-16 surrogate"
                )
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int):
            if not -INT_LIMIT < value < INT_LIMIT:
                raise SchemaError(f"{_where(root, where)}: integer {_show(value)} is beyond ±2^63")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise SchemaError(f"{_where(root, where)}: {value} is not a finite number")
        elif isinstance(value, (dict, list)):
            if depth > MAX_DEPTH:
                raise SchemaError(
                    f"{_where(root, where)}: JSON nested deeper than {MAX_DEPTH} levels"
                )
            if isinstance(value, dict):
                for key, sub in value.items():
                    if not isinstance(key, str):
                        raise SchemaError(
                            f"{_where(root, where)}: cannot encode key {_show(key)} (not a string)"
                        )
                    if _SURROGATE.search(key):
                        raise SchemaError(
                            f"{_where(root, where)}: key {_show(key)} holds a lone UTF-16 surrogate"
                        )
                    stack.append((sub, depth + 1, (where, key)))
            else:
                stack.extend((sub, depth + 1, (where, i)) for i, sub in enumerate(value))
        else:
            raise SchemaError(
                f"{_where(root, where)}: cannot encode {type(value).__name__} (not JSON data)"
            )


def _check_t(text: str, path: str) -> str:
    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise SchemaError(f"{path}.t: {_show(text)} is not an ISO 8601 time") from None
    if moment.utcoffset() is None:
        raise SchemaError(f"{path}.t: {_show(text)} has no time zone (expected UTC, 'Z')")
    if parse_time(text) is None:
        raise SchemaError(f"{path}.t: {_show(text)} is out of range in UTC")
    return text


def from_dict(obj: object) -> Record:
    """Validate a decoded JSON object and build its record; SchemaError names the field."""
    _check_tree(obj, "record")
    return _record(obj, "")


def _record(obj: object, where: str) -> Record:
    """One record (its tree already checked); `where` prefixes every path (in a batch)."""
    head = _Reader(obj, f"{where}record")
    version = head.obj.get("v")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise SchemaError(
            f"{where}record.v: unsupported schema version {_show(version)} (this build "
            f"reads {SCHEMA} and version 1 records)"
        )
    kind = head.text("type", required=True)
    if kind not in CHANNEL_OF:
        raise SchemaError(f"{where}record.type: {_show(kind)} is not telemetry, event or status")
    path = f"{where}{kind}"
    r = _Reader(head.obj, path)
    try:
        drone_id = check_drone_id(r.text("drone_id", required=True))  # type: ignore[arg-type]
    except SchemaError as exc:
        raise SchemaError(f"{path}.{exc}") from None
    common = {
        "drone_id": drone_id,
        "seq": r.integer("seq", required=True, low=1),
        "id": r.text("id", required=True),
        "t": _check_t(r.text("t", required=True), path),  # type: ignore[arg-type]
    }
    if not 1 <= len(common["id"]) <= MAX_ID_CHARS:
        raise SchemaError(f"{path}.id: must be 1-{MAX_ID_CHARS} characters")
    if kind == "status":
        state = r.text("state", required=True)
        if state not in STATUS_STATES:
            raise SchemaError(f"{path}.state: {_show(state)} is not online or offline")
        ttl = r.number("ttl_s", bound=(0.0, MAX_TTL_S))
        if ttl == 0.0:
            raise SchemaError(f"{path}.ttl_s: must be above 0")
        if ttl is None and state == "online" and version >= 2:
            raise SchemaError(f"{path}.ttl_s: missing (an online status must say how long)")
        return Status(**common, state=state, ttl_s=ttl)  # type: ignore[arg-type]
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
    bat = r.sub("battery") or _Reader({}, f"{r.path}.battery")
    gps = r.sub("gps") or _Reader({}, f"{r.path}.gps")
    alarms = gps.obj.get("alarms") or []
    if not isinstance(alarms, list) or not all(isinstance(a, str) for a in alarms):
        raise SchemaError(f"{r.path}.gps.alarms: expected an array of strings, got {_show(alarms)}")
    integrity = gps.text("integrity")
    if integrity is not None and integrity != ("alarm" if alarms else "ok"):
        raise SchemaError(
            f"{r.path}.gps.integrity: {_show(integrity)} contradicts alarms {_show(alarms)}"
        )
    detections = r.mapping("detections")
    for name, count in detections.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise SchemaError(
                f"{r.path}.detections.{name}: expected a count >= 0, got {_show(count)}"
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


def _parse(payload: bytes) -> object:
    """UTF-8 JSON within the payload bounds, as Python data; SchemaError for anything else."""
    if not isinstance(payload, (bytes, bytearray)):
        raise SchemaError(f"payload is {type(payload).__name__}, not bytes")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise SchemaError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        text = payload.decode()  # UTF-8 only: json.loads(bytes) would guess UTF-16/32 too
    except UnicodeDecodeError as exc:
        raise SchemaError(f"payload is not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"payload is not JSON: {exc.msg} at byte {exc.pos}") from None
    except RecursionError:
        raise SchemaError("payload is not JSON a record can be: nested too deeply") from None
    except ValueError as exc:  # an integer of more than 4300 digits (int_max_str_digits)
        raise SchemaError(f"payload is not JSON a record can be: {exc}") from None


def decode(payload: bytes) -> Record:
    """Parse and validate one record; SchemaError (naming the field) for anything malformed."""
    return from_dict(_parse(payload))


def decode_for(name: str, payload: bytes) -> Record:
    """Decode one record received on topic `name`, checking that topic and record agree."""
    drone_id, channel = parse_topic(name)
    record = decode(payload)
    _check_topic(record, drone_id, channel, name, "")
    return record


def decode_message(name: str, payload: bytes) -> list[Record]:
    """The records of one message received on topic `name`: a batch, or a single record;
    every record checked against the topic. SchemaError (naming the field, and the record's
    index in a batch) rejects the whole message."""
    drone_id, channel = parse_topic(name)
    obj = _parse(payload)
    _check_tree(obj, "message")
    if not (isinstance(obj, dict) and obj.get("type") == "batch"):
        record = _record(obj, "")
        _check_topic(record, drone_id, channel, name, "")
        return [record]
    batch = _Reader(obj, "batch")
    version = obj.get("v")
    if type(version) is not int or version != VERSION:
        raise SchemaError(
            f"batch.v: unsupported batch version {_show(version)} (this build reads {SCHEMA})"
        )
    if batch.text("drone_id", required=True) != drone_id:
        raise SchemaError(f"batch.drone_id: {_show(obj['drone_id'])} is not {drone_id!r}")
    items = batch._get("records", True)
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH_RECORDS:
        raise SchemaError(
            f"batch.records: expected an array of 1-{MAX_BATCH_RECORDS} records, got "
            f"{_kind(items) if not isinstance(items, list) else f'{len(items)} records'}"
        )
    records: list[Record] = []
    for index, item in enumerate(items):
        where = f"batch.records[{index}]."
        record = _record(item, where)
        if isinstance(record, Status):
            raise SchemaError(f"{where}status: a status is never batched")
        _check_topic(record, drone_id, channel, name, where)
        if records and record.seq <= records[-1].seq:
            raise SchemaError(
                f"{where}{record.type}.seq: {record.seq} after {records[-1].seq} (a batch is in "
                "increasing seq)"
            )
        records.append(record)
    return records


def _check_topic(record: Record, drone_id: str, channel: str, name: str, where: str) -> None:
    if record.drone_id != drone_id or CHANNEL_OF[record.type] != channel:
        raise SchemaError(
            f"{where}{record.type} from drone {record.drone_id!r} arrived on the wrong topic "
            f"{_show(name)}"
        )


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
