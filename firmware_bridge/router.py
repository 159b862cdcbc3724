"""MAVLink routing between the flight controller and ground stations, sans-I/O.

Like mavlink-router, the daemon hands the flight controller's stream to configured ground
endpoints (QGroundControl, MAVProxy) and their commands back; unlike it, a ground endpoint
can never reach the flight controller without signing. This module decides; the sockets
are `firmware_bridge.router_io`'s. Frames come in (a decoded message from the flight
controller, or bytes from endpoint N), decisions go out (frames for which endpoint, frames
for the flight controller), and every frame dropped is counted per endpoint and reason.

Per endpoint (`EndpointPolicy`):

- Filters by message name in each direction (`out`: flight controller to endpoint, `in`:
  endpoint to flight controller): with an allow list only those names pass, and a deny list
  stops its names.
- A rate limit on what goes out (a token bucket in messages/s that holds one second's worth;
  the time is passed in, no clock is read here). HEARTBEAT is never rate limited: a ground
  station that misses the autopilot's heartbeat declares the link lost.
- An access mode. `read-only`: nothing from the endpoint reaches the flight controller, not
  even its HEARTBEAT (ArduPilot's GCS failsafe, FS_GCS_ENABLE, arms on the first heartbeat
  from system SYSID_MYGCS and would then fire when a mere viewer goes away).
  `command`: the endpoint signs every frame with its own 32-byte secret, checked like
  `firmware_bridge.signing.check_signature` checks the autopilot: the tag, then the MAVLink
  signing spec's replay rule, a timestamp that moves forward per (link id, system,
  component) stream, where a new stream may be at most a minute older than the endpoint's
  own timestamp (it starts at the caller's clock and follows what the endpoint sends; not
  the autopilot's, which ArduPilot starts a minute past its saved one at every boot). What
  passes is re-signed with the flight controller's secret (the drone's, the one the
  daemon's own link signs with), with the sender's ids, sequence number and payload kept. A
  ground station therefore needs a key of its own, and the flight controller only ever sees
  frames signed with the drone's key. Whatever the filters, SETUP_SIGNING from an endpoint
  is dropped (it would give the flight controller the ground's key in place of the
  drone's), and so is a frame that claims a system id of the vehicle's own (the
  autopilot's, the companion's).

Frames from the flight controller go out as received (`msg.get_msgbuf()`), so a ground
station sees the real autopilot; to a `command` endpoint they are re-signed with that
endpoint's secret, since a ground station that signs drops frames signed with another key
(QGroundControl accepts only RADIO_STATUS unsigned once it signs). Re-signed frames carry
link id `1 + endpoint index` (the companion's own link is 0) and timestamps from one counter
that starts at the caller's clock, goes up by one per frame, and is raised past every
timestamp accepted from the flight controller or an endpoint, as ArduPilot raises its own.

Bytes from an endpoint are decoded on their own (a datagram) or as a stream (TCP); bad input
(garbage, a bad CRC, a truncated frame, an oversize datagram, an unknown message) is
counted by reason and never raises.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from firmware_bridge.dialect import MAVLinkMessage, mavlink
from firmware_bridge.errors import SigningError
from firmware_bridge.signing import (
    ACCEPTED_UNSIGNED,
    SIGNED,
    check_secret,
    check_signature,
    signature_of,
    signature_valid,
)

log = logging.getLogger(__name__)

Mode = Literal["read-only", "command"]
Framing = Literal["datagram", "stream"]
READ_ONLY: Mode = "read-only"
COMMAND: Mode = "command"

#: The largest datagram decoded: seven MAVLink 2 frames of the largest size (280 bytes). A
#: ground station sends one frame per datagram; anything far larger is not one.
MAX_DATAGRAM = 2048
#: Link ids of re-signed frames are this plus the endpoint's index (0 is the daemon's link).
LINK_ID_BASE = 1

# Why a frame from an endpoint is dropped (besides check_signature's verdicts).
OVERSIZE = "oversize"
TRUNCATED = "truncated"
GARBAGE = "garbage"
BAD_CRC = "bad-crc"
MALFORMED = "malformed"
UNDECODABLE = "undecodable"
UNKNOWN_MESSAGE = "unknown-message"
READ_ONLY_DROP = "read-only"
UNSIGNED_RADIO = "unsigned-radio"
SETUP_SIGNING = "setup-signing"
SPOOFED_SOURCE = "spoofed-source"
FILTERED = "filtered"
# Why a frame from the flight controller is not handed to an endpoint.
RATE_LIMITED = "rate-limited"
UNSIGNABLE = "unsignable"

_V2_MAGIC = 0xFD
_V2_HEADER_LEN = 10
_SIGNATURE_BLOCK_LEN = 13
_TAG_LEN = 6
_NEVER_RATE_LIMITED = frozenset({"HEARTBEAT"})


class RouterError(ValueError):
    """A routing policy that cannot be used; the message names the endpoint and why."""


def message_names() -> frozenset[str]:
    """Every message name of the dialect (ardupilotmega, which includes common)."""
    return frozenset(cls.msgname for cls in mavlink.mavlink_map.values())


def check_message_names(names: Iterable[str]) -> frozenset[str]:
    """`names` as a set, or ValueError naming each one the dialect does not know (a filter
    on a misspelt name would silently never match)."""
    known = message_names()
    wanted = frozenset(names)
    unknown = sorted(wanted - known)
    if unknown:
        hints = []
        for name in unknown:
            near = difflib.get_close_matches(name.upper(), known, n=1)
            hints.append(f"{name!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
        raise ValueError(f"unknown MAVLink message name(s): {', '.join(hints)}")
    return wanted


@dataclass(frozen=True)
class Filter:
    """Message names that may pass one way: all (empty `allow`) or only `allow`, never
    `deny`."""

    allow: frozenset[str] = frozenset()
    deny: frozenset[str] = frozenset()

    def passes(self, name: str) -> bool:
        return (not self.allow or name in self.allow) and name not in self.deny


@dataclass(frozen=True)
class EndpointPolicy:
    """What one ground endpoint may see and do (see the module docstring)."""

    name: str
    mode: Mode = READ_ONLY
    secret: bytes | None = None
    """The endpoint's own signing secret (32 bytes); `command` only."""
    out_filter: Filter = Filter()
    in_filter: Filter = Filter()
    rate_hz: float | None = None
    """Most messages per second sent to the endpoint (HEARTBEAT aside); None: no limit."""
    framing: Framing = "datagram"

    def __post_init__(self) -> None:
        if self.mode == COMMAND:
            if self.secret is None:
                raise RouterError(f"{self.name}: a command endpoint needs its own secret")
            try:
                check_secret(self.secret)
            except SigningError as exc:
                raise RouterError(f"{self.name}: {exc}") from None
        elif self.secret is not None:
            raise RouterError(f"{self.name}: a read-only endpoint takes no secret")
        if self.rate_hz is not None and not self.rate_hz > 0:
            raise RouterError(f"{self.name}: rate_hz must be above 0, got {self.rate_hz}")
        for filt in (self.out_filter, self.in_filter):
            try:
                check_message_names(filt.allow | filt.deny)
            except ValueError as exc:
                raise RouterError(f"{self.name}: {exc}") from None


def command_refusal(policy: EndpointPolicy, fc_secret: bytes | None) -> str | None:
    """Why `policy` cannot run with the flight controller's link signed with `fc_secret`
    (None: unsigned), or None when it can."""
    if policy.mode == COMMAND and fc_secret is None:
        return (
            "a command endpoint needs a signed link to the flight controller, and the daemon "
            "runs it unsigned (no drone keys in [security] keys_dir): the endpoint's commands "
            "could not be re-signed, so only read-only endpoints run"
        )
    if policy.mode == COMMAND and policy.secret == fc_secret:
        return (
            "its key is the drone's own MAVLink secret; give each ground station a key of "
            "its own, so that the drone's never leaves the drone"
        )
    return None


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; the caller says what time it is."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last: float | None = None

    def take(self, now: float) -> bool:
        """Spend one token at time `now` (seconds, any monotonic origin) if there is one."""
        if self._last is not None and now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


@dataclass(frozen=True)
class Inbound:
    """What one piece of bytes from an endpoint came to: the frames for the flight
    controller, and whether it held a frame that vouches for its sender (any well-formed
    frame from a read-only endpoint; a correctly signed one from a command endpoint), so
    that a listening UDP endpoint knows whom to answer."""

    to_fc: list[bytes]
    sender_valid: bool


@dataclass
class _Endpoint:
    policy: EndpointPolicy
    link_id: int
    bucket: TokenBucket | None
    signing: mavlink.MAVLinkSigning | None
    stream: mavlink.MAVLink | None = None
    dropped_out: dict[str, int] = field(default_factory=dict)
    dropped_in: dict[str, int] = field(default_factory=dict)


def _parser() -> mavlink.MAVLink:
    parser = mavlink.MAVLink(None)
    parser.robust_parsing = True
    return parser


class Router:
    """The routing decisions for one flight controller and its ground endpoints."""

    def __init__(
        self,
        endpoints: Sequence[EndpointPolicy],
        *,
        fc_secret: bytes | None,
        start_timestamp: int,
        vehicle_systems: Collection[int],
    ) -> None:
        """`fc_secret` is the drone's signing secret (None: the link is unsigned, and then
        no endpoint may be `command`); `start_timestamp` the signing timestamp to start
        from (`signing.signing_timestamp` of the wall clock); `vehicle_systems` the system
        ids of the autopilot and the companion, which no ground frame may claim."""
        if fc_secret is not None:
            fc_secret = check_secret(fc_secret)
        names = [p.name for p in endpoints]
        if len(set(names)) != len(names):
            raise RouterError(f"endpoint names must differ, got {names}")
        if len(endpoints) > 255 - LINK_ID_BASE:
            raise RouterError(f"at most {255 - LINK_ID_BASE} endpoints, got {len(endpoints)}")
        self._fc_secret = fc_secret
        self._timestamp = start_timestamp
        self._vehicle_systems = frozenset(vehicle_systems)
        self._endpoints: list[_Endpoint] = []
        for index, policy in enumerate(endpoints):
            refusal = command_refusal(policy, fc_secret)
            if refusal is not None:
                raise RouterError(f"{policy.name}: {refusal}")
            self._endpoints.append(self._make(index, policy, start_timestamp))

    @staticmethod
    def _make(index: int, policy: EndpointPolicy, start_timestamp: int) -> _Endpoint:
        bucket = None
        if policy.rate_hz is not None:
            bucket = TokenBucket(policy.rate_hz, max(1.0, policy.rate_hz))
        signing = None
        if policy.secret is not None:
            signing = mavlink.MAVLinkSigning()
            signing.secret_key = policy.secret
            signing.timestamp = start_timestamp
        stream = _parser() if policy.framing == "stream" else None
        return _Endpoint(policy, LINK_ID_BASE + index, bucket, signing, stream)

    @property
    def policies(self) -> list[EndpointPolicy]:
        return [ep.policy for ep in self._endpoints]

    # -- from the flight controller ----------------------------------------------------------

    def from_fc(self, msg: MAVLinkMessage, now: float) -> list[tuple[int, bytes]]:
        """(endpoint index, frame) for each endpoint that gets `msg` at time `now` (seconds,
        monotonic), in endpoint order."""
        name = msg.get_type()
        frame = bytes(msg.get_msgbuf())
        self._observe_fc(msg)
        out = []
        for index, ep in enumerate(self._endpoints):
            if not ep.policy.out_filter.passes(name):
                self._drop_out(ep, FILTERED, name)
                continue
            if (
                ep.bucket is not None
                and name not in _NEVER_RATE_LIMITED
                and not ep.bucket.take(now)
            ):
                self._drop_out(ep, RATE_LIMITED, name)
                continue
            if ep.signing is None:
                out.append((index, frame))
                continue
            signed = sign_frame(frame, ep.signing.secret_key, ep.link_id, self._next_timestamp())
            if signed is None:
                self._drop_out(ep, UNSIGNABLE, name)
                continue
            out.append((index, signed))
        return out

    def _observe_fc(self, msg: MAVLinkMessage) -> None:
        """Raise the counter past the flight controller's own timestamp (GPS time), so that
        the streams it is sent are never older than it allows a new one to be."""
        if self._fc_secret is None:
            return
        signature = signature_of(msg)
        if signature is not None and signature_valid(self._fc_secret, msg):
            self._timestamp = max(self._timestamp, signature.timestamp + 1)

    def _next_timestamp(self) -> int:
        self._timestamp += 1
        return self._timestamp

    # -- from an endpoint --------------------------------------------------------------------

    def from_endpoint(self, index: int, data: bytes) -> Inbound:
        """Decide on `data` from endpoint `index`: one datagram, or the next bytes of its
        stream."""
        ep = self._endpoints[index]
        if ep.stream is None:
            if len(data) > MAX_DATAGRAM:
                self._drop_in(ep, OVERSIZE, f"{len(data)} bytes")
                return Inbound([], False)
            parser = _parser()
        else:
            parser = ep.stream
        try:
            messages = parser.parse_buffer(data) or []
        except Exception as exc:  # pymavlink can raise on corrupt input even when robust
            self._drop_in(ep, UNDECODABLE, f"{type(exc).__name__}: {exc}")
            if ep.stream is not None:
                ep.stream = _parser()  # a parser that raised is in no known state
            return Inbound([], False)
        if ep.stream is None and parser.buf_len() > 0:
            self._drop_in(ep, TRUNCATED, f"{parser.buf_len()} bytes left over")
        to_fc: list[bytes] = []
        valid = False
        for msg in messages:
            frame, vouches = self._admit(ep, msg)
            if frame is not None:
                to_fc.append(frame)
            valid = valid or vouches
        return Inbound(to_fc, valid)

    def restart_stream(self, index: int) -> None:
        """A new connection on a stream endpoint: forget the bytes of the last one."""
        ep = self._endpoints[index]
        if ep.stream is not None:
            ep.stream = _parser()

    def _admit(self, ep: _Endpoint, msg: MAVLinkMessage) -> tuple[bytes | None, bool]:
        """The frame re-signed for the flight controller (None, counted, when dropped), and
        whether it vouches for its sender (see `Inbound`)."""
        name = msg.get_type()
        if name == "BAD_DATA":
            self._drop_in(ep, _bad_data_reason(msg.reason), msg.reason)
            return None, False
        if isinstance(msg, mavlink.MAVLink_unknown):
            self._drop_in(ep, UNKNOWN_MESSAGE, name)
            return None, False
        if ep.policy.mode == READ_ONLY:
            self._drop_in(ep, READ_ONLY_DROP, name)
            return None, True
        assert ep.signing is not None and self._fc_secret is not None
        verdict = check_signature(ep.signing, msg)
        if verdict != SIGNED:
            self._drop_in(ep, UNSIGNED_RADIO if verdict == ACCEPTED_UNSIGNED else verdict, name)
            return None, False
        signature = signature_of(msg)
        assert signature is not None
        self._timestamp = max(self._timestamp, signature.timestamp + 1)
        if name == "SETUP_SIGNING":
            self._drop_in(ep, SETUP_SIGNING, name)
            return None, True
        if msg.get_srcSystem() in self._vehicle_systems:
            self._drop_in(ep, SPOOFED_SOURCE, f"{name} from system {msg.get_srcSystem()}")
            return None, True
        if not ep.policy.in_filter.passes(name):
            self._drop_in(ep, FILTERED, name)
            return None, True
        frame = bytes(msg.get_msgbuf())
        signed = sign_frame(frame, self._fc_secret, ep.link_id, self._next_timestamp())
        assert signed is not None  # a signed MAVLink 2 frame can always be re-signed
        return signed, True

    # -- counters ----------------------------------------------------------------------------

    def dropped(self) -> dict[str, dict[str, dict[str, int]]]:
        """Per endpoint name: frames dropped `out` (to it) and `in` (from it), by reason."""
        return {
            ep.policy.name: {"out": dict(ep.dropped_out), "in": dict(ep.dropped_in)}
            for ep in self._endpoints
        }

    def _drop_out(self, ep: _Endpoint, reason: str, what: str) -> None:
        _count(ep.dropped_out, reason, f"not sending {what} to {ep.policy.name}")

    def _drop_in(self, ep: _Endpoint, reason: str, what: str) -> None:
        _count(ep.dropped_in, reason, f"dropping {what} from {ep.policy.name}")


def _count(counts: dict[str, int], reason: str, what: str) -> None:
    counts[reason] = counts.get(reason, 0) + 1
    if counts[reason] == 1 and reason not in (FILTERED, RATE_LIMITED, READ_ONLY_DROP):
        log.warning("%s: %s (logged once per reason; `skycourier status` counts them)",
                    what, reason)  # fmt: skip


def _bad_data_reason(reason: str) -> str:
    """pymavlink's BAD_DATA reason as one of ours."""
    if reason == "Bad prefix":
        return GARBAGE
    if "CRC" in reason:
        return BAD_CRC
    return MALFORMED


def sign_frame(frame: bytes, secret: bytes, link_id: int, timestamp: int) -> bytes | None:
    """`frame` (MAVLink 2, signed or not) signed with `secret` as link `link_id` at
    `timestamp`, header and payload unchanged; None for a frame that cannot be signed (MAVLink
    1, or an unsigned frame of a message this dialect does not know, whose checksum cannot
    be redone for the signed flag)."""
    if len(frame) < _V2_HEADER_LEN + 2 or frame[0] != _V2_MAGIC:
        return None
    if frame[2] & mavlink.MAVLINK_IFLAG_SIGNED:
        if len(frame) < _V2_HEADER_LEN + 2 + _SIGNATURE_BLOCK_LEN:
            return None
        body = frame[:-_SIGNATURE_BLOCK_LEN]
    else:
        # The checksum covers the incompat flags: setting the signed flag changes it.
        msg_id = int.from_bytes(frame[7:10], "little")
        spec = mavlink.mavlink_map.get(msg_id)
        if spec is None:
            return None
        header = bytearray(frame[:-2])
        header[2] |= mavlink.MAVLINK_IFLAG_SIGNED
        crc = mavlink.x25crc(header[1:] + bytes([spec.crc_extra])).crc
        body = bytes(header) + crc.to_bytes(2, "little")
    unsigned = body + bytes([link_id]) + timestamp.to_bytes(6, "little")
    return unsigned + hashlib.sha256(secret + unsigned).digest()[:_TAG_LEN]
