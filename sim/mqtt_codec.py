"""Sans-I/O MQTT 3.1.1 packet codec: bytes in, packets out; packets in, bytes out.

`PacketReader.feed(data)` takes whatever a socket read returned (any split) and returns the
packets it completes. A malformed packet raises `MqttProtocolError` naming the rule it broke
(OASIS MQTT Version 3.1.1, 2014, section numbers below); after that the reader is finished,
as the spec's answer to a malformed packet is always to close the connection (§4.8). The
reader holds at most `max_packet` + 5 bytes between calls: a packet whose remaining length
says it is longer is refused as soon as its fixed header is read, before its body arrives, so
a hostile or broken peer cannot make it buffer megabytes.

`encode(packet)` is the inverse. Both directions are covered (a server receives CONNECT,
a client CONNACK), so the tests can speak raw MQTT to any broker through the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Default bound on a whole packet (fixed header + body). Telemetry records are a few hundred
#: bytes; 1 MiB leaves room for any sane payload while keeping a bad peer's cost bounded.
MAX_PACKET = 1 << 20

#: §2.2.3: the remaining length is at most four bytes, so at most 268,435,455.
MAX_REMAINING_LENGTH = 268_435_455

PROTOCOLS = {"MQTT": 4, "MQIsdp": 3}  # §3.1.2.1-2; "MQIsdp"/3 is MQTT 3.1, still in use

# Control packet types, §2.2.1 table 2.1.
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14

# CONNACK return codes, §3.2.2.3 table 3.1.
ACCEPTED = 0
REFUSED_PROTOCOL_VERSION = 1
REFUSED_IDENTIFIER = 2
REFUSED_SERVER_UNAVAILABLE = 3
REFUSED_BAD_CREDENTIALS = 4
REFUSED_NOT_AUTHORIZED = 5

SUBACK_FAILURE = 0x80  # §3.9.3


class MqttProtocolError(Exception):
    """The peer broke MQTT 3.1.1; the message names the rule. The connection must be closed."""


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


@dataclass(frozen=True)
class Connect:
    client_id: str
    clean_session: bool = True
    keepalive: int = 60
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None
    protocol_name: str = "MQTT"
    protocol_level: int = 4


@dataclass(frozen=True)
class ConnAck:
    session_present: bool
    return_code: int


@dataclass(frozen=True)
class Publish:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None  # present exactly when qos > 0 (§2.3.1)


@dataclass(frozen=True)
class PubAck:
    packet_id: int


@dataclass(frozen=True)
class PubRec:
    packet_id: int


@dataclass(frozen=True)
class PubRel:
    packet_id: int


@dataclass(frozen=True)
class PubComp:
    packet_id: int


@dataclass(frozen=True)
class Subscribe:
    packet_id: int
    topics: tuple[tuple[str, int], ...]  # (filter, requested QoS)


@dataclass(frozen=True)
class SubAck:
    packet_id: int
    return_codes: tuple[int, ...]


@dataclass(frozen=True)
class Unsubscribe:
    packet_id: int
    topics: tuple[str, ...]


@dataclass(frozen=True)
class UnsubAck:
    packet_id: int


@dataclass(frozen=True)
class PingReq:
    pass


@dataclass(frozen=True)
class PingResp:
    pass


@dataclass(frozen=True)
class Disconnect:
    pass


Packet = (
    Connect
    | ConnAck
    | Publish
    | PubAck
    | PubRec
    | PubRel
    | PubComp
    | Subscribe
    | SubAck
    | Unsubscribe
    | UnsubAck
    | PingReq
    | PingResp
    | Disconnect
)

_ID_ONLY = {PUBACK: PubAck, PUBREC: PubRec, PUBREL: PubRel, PUBCOMP: PubComp, UNSUBACK: UnsubAck}
_EMPTY = {PINGREQ: PingReq, PINGRESP: PingResp, DISCONNECT: Disconnect}
# §2.2.2 table 2.2: fixed-header flags are fixed for every type but PUBLISH.
_FLAGS = {PUBREL: 0b0010, SUBSCRIBE: 0b0010, UNSUBSCRIBE: 0b0010}


# --- topics (§4.7) ----------------------------------------------------------------------


def topic_name_error(topic: str) -> str | None:
    """Why `topic` is not a valid PUBLISH topic name (§4.7.1, §4.7.3), or None."""
    if not topic:
        return "empty topic name (§4.7.3)"
    if "+" in topic or "#" in topic:
        return f"wildcard in topic name {topic!r} (§3.3.2.1)"
    return None


def topic_filter_error(topic_filter: str) -> str | None:
    """Why `topic_filter` is not a valid subscription filter (§4.7.1), or None."""
    if not topic_filter:
        return "empty topic filter (§4.7.3)"
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return f"'#' must be a whole, last level in {topic_filter!r} (§4.7.1.2)"
        if "+" in level and level != "+":
            return f"'+' must be a whole level in {topic_filter!r} (§4.7.1.3)"
    return None


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether `topic` matches the (valid) `topic_filter`, wildcards included (§4.7).

    Topics starting with '$' are not matched by a filter starting with a wildcard (§4.7.2).
    'a/#' matches 'a' itself (§4.7.1.2).
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    for i, level in enumerate(filter_levels):
        if level == "#":
            return True
        if i >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[i]:
            return False
    return len(filter_levels) == len(topic_levels)


# --- encoding ---------------------------------------------------------------------------


def _string(text: str) -> bytes:
    return _binary(text.encode("utf-8"))


def _binary(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError(f"field of {len(data)} bytes exceeds 65535 (§1.5.3)")
    return len(data).to_bytes(2, "big") + data


def encode_remaining_length(n: int) -> bytes:
    """§2.2.3: 7 bits per byte, least significant first, top bit = more bytes follow."""
    if not 0 <= n <= MAX_REMAINING_LENGTH:
        raise ValueError(f"remaining length {n} out of range (§2.2.3)")
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _frame(packet_type: int, flags: int, body: bytes) -> bytes:
    return bytes([packet_type << 4 | flags]) + encode_remaining_length(len(body)) + body


def encode(packet: Packet) -> bytes:
    """The wire bytes of `packet`. Raises ValueError for a field that cannot be encoded."""
    if isinstance(packet, Connect):
        flags = 0x02 if packet.clean_session else 0
        payload = _string(packet.client_id)
        if packet.will is not None:
            flags |= 0x04 | packet.will.qos << 3 | (0x20 if packet.will.retain else 0)
            payload += _string(packet.will.topic) + _binary(packet.will.payload)
        if packet.username is not None:
            flags |= 0x80
            payload += _string(packet.username)
        if packet.password is not None:
            flags |= 0x40
            payload += _binary(packet.password)
        header = _string(packet.protocol_name) + bytes([packet.protocol_level, flags])
        return _frame(CONNECT, 0, header + packet.keepalive.to_bytes(2, "big") + payload)
    if isinstance(packet, ConnAck):
        return _frame(CONNACK, 0, bytes([int(packet.session_present), packet.return_code]))
    if isinstance(packet, Publish):
        flags = packet.qos << 1 | int(packet.retain) | (0x08 if packet.dup else 0)
        body = _string(packet.topic)
        if packet.qos:
            if packet.packet_id is None:
                raise ValueError("a QoS 1/2 PUBLISH needs a packet id (§2.3.1)")
            body += packet.packet_id.to_bytes(2, "big")
        return _frame(PUBLISH, flags, body + packet.payload)
    if isinstance(packet, Subscribe):
        body = packet.packet_id.to_bytes(2, "big")
        body += b"".join(_string(f) + bytes([qos]) for f, qos in packet.topics)
        return _frame(SUBSCRIBE, 0b0010, body)
    if isinstance(packet, SubAck):
        return _frame(SUBACK, 0, packet.packet_id.to_bytes(2, "big") + bytes(packet.return_codes))
    if isinstance(packet, Unsubscribe):
        body = packet.packet_id.to_bytes(2, "big") + b"".join(_string(f) for f in packet.topics)
        return _frame(UNSUBSCRIBE, 0b0010, body)
    for packet_type, cls in _ID_ONLY.items():
        if isinstance(packet, cls):
            flags = _FLAGS.get(packet_type, 0)
            return _frame(packet_type, flags, packet.packet_id.to_bytes(2, "big"))
    for packet_type, cls in _EMPTY.items():
        if isinstance(packet, cls):
            return _frame(packet_type, 0, b"")
    raise TypeError(f"not an MQTT packet: {packet!r}")


# --- decoding ---------------------------------------------------------------------------


class _Body:
    """A cursor over one packet's body; every read is bounds-checked."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, field: str) -> bytes:
        if self.left < n:
            raise MqttProtocolError(
                f"{self.what}: body ends inside {field} (needs {n} bytes, {self.left} left)"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def byte(self, field: str) -> int:
        return self.take(1, field)[0]

    def u16(self, field: str) -> int:
        return int.from_bytes(self.take(2, field), "big")

    def packet_id(self) -> int:
        value = self.u16("packet identifier")
        if value == 0:
            raise MqttProtocolError(f"{self.what}: packet identifier 0 (§2.3.1-1)")
        return value

    def binary(self, field: str) -> bytes:
        return self.take(self.u16(f"{field} length"), field)

    def string(self, field: str) -> str:
        raw = self.binary(field)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MqttProtocolError(f"{self.what}: {field} is not UTF-8 (§1.5.3): {exc}") from None
        if "\x00" in text:
            raise MqttProtocolError(f"{self.what}: {field} contains U+0000 (§1.5.3-2)")
        return text

    def end(self) -> None:
        if self.left:
            raise MqttProtocolError(f"{self.what}: {self.left} unexpected bytes after the body")


def _decode_connect(b: _Body) -> Connect:
    name = b.string("protocol name")
    if name not in PROTOCOLS:
        raise MqttProtocolError(f"CONNECT: unknown protocol name {name!r} (§3.1.2.1)")
    level = b.byte("protocol level")
    flags = b.byte("connect flags")
    if flags & 0x01:
        raise MqttProtocolError("CONNECT: reserved flag bit 0 is set (§3.1.2-3)")
    keepalive = b.u16("keep alive")
    client_id = b.string("client identifier")
    will = None
    will_qos = flags >> 3 & 0x03
    if flags & 0x04:
        if will_qos == 3:
            raise MqttProtocolError("CONNECT: will QoS 3 (§3.1.2-14)")
        topic = b.string("will topic")
        if (error := topic_name_error(topic)) is not None:
            raise MqttProtocolError(f"CONNECT: will topic: {error}")
        will = Will(topic, b.binary("will message"), will_qos, bool(flags & 0x20))
    elif will_qos or flags & 0x20:
        raise MqttProtocolError("CONNECT: will QoS/retain set without the will flag (§3.1.2-11)")
    username = b.string("user name") if flags & 0x80 else None
    if flags & 0x40:
        if username is None:
            raise MqttProtocolError("CONNECT: password without a user name (§3.1.2-22)")
        password = b.binary("password")
    else:
        password = None
    b.end()
    return Connect(client_id, bool(flags & 0x02), keepalive, will, username, password, name, level)


def _decode_publish(b: _Body, flags: int) -> Publish:
    qos = flags >> 1 & 0x03
    if qos == 3:
        raise MqttProtocolError("PUBLISH: QoS 3 (§3.3.1-4)")
    if qos == 0 and flags & 0x08:
        raise MqttProtocolError("PUBLISH: DUP set on a QoS 0 message (§3.3.1-2)")
    topic = b.string("topic name")
    if (error := topic_name_error(topic)) is not None:
        raise MqttProtocolError(f"PUBLISH: {error}")
    packet_id = b.packet_id() if qos else None
    payload = b.take(b.left, "payload")
    return Publish(topic, payload, qos, bool(flags & 0x01), bool(flags & 0x08), packet_id)


def _decode_subscribe(b: _Body) -> Subscribe:
    packet_id = b.packet_id()
    topics = []
    while b.left:
        topic_filter = b.string("topic filter")
        options = b.byte("requested QoS")
        if options > 2:
            raise MqttProtocolError(f"SUBSCRIBE: requested QoS byte {options:#04x} (§3.8.3-4)")
        topics.append((topic_filter, options))
    if not topics:
        raise MqttProtocolError("SUBSCRIBE: no topic filter (§3.8.3-3)")
    return Subscribe(packet_id, tuple(topics))


def _decode_unsubscribe(b: _Body) -> Unsubscribe:
    packet_id = b.packet_id()
    topics = []
    while b.left:
        topics.append(b.string("topic filter"))
    if not topics:
        raise MqttProtocolError("UNSUBSCRIBE: no topic filter (§3.10.3-2)")
    return Unsubscribe(packet_id, tuple(topics))


def _decode_connack(b: _Body) -> ConnAck:
    ack_flags = b.byte("acknowledge flags")
    if ack_flags & 0xFE:
        raise MqttProtocolError(f"CONNACK: reserved acknowledge flags {ack_flags:#04x} (§3.2.2.1)")
    code = b.byte("return code")
    b.end()
    return ConnAck(bool(ack_flags), code)


def _decode_suback(b: _Body) -> SubAck:
    packet_id = b.packet_id()
    codes = tuple(b.take(b.left, "return codes"))
    if not codes or any(c not in (0, 1, 2, SUBACK_FAILURE) for c in codes):
        raise MqttProtocolError(f"SUBACK: bad return codes {codes} (§3.9.3)")
    return SubAck(packet_id, codes)


_NAMES = {
    CONNECT: "CONNECT",
    CONNACK: "CONNACK",
    PUBLISH: "PUBLISH",
    PUBACK: "PUBACK",
    PUBREC: "PUBREC",
    PUBREL: "PUBREL",
    PUBCOMP: "PUBCOMP",
    SUBSCRIBE: "SUBSCRIBE",
    SUBACK: "SUBACK",
    UNSUBSCRIBE: "UNSUBSCRIBE",
    UNSUBACK: "UNSUBACK",
    PINGREQ: "PINGREQ",
    PINGRESP: "PINGRESP",
    DISCONNECT: "DISCONNECT",
}


def decode_packet(first_byte: int, body: bytes) -> Packet:
    """One packet from its fixed header's first byte and its whole body."""
    packet_type, flags = first_byte >> 4, first_byte & 0x0F
    name = _NAMES.get(packet_type)
    if name is None:
        raise MqttProtocolError(f"reserved control packet type {packet_type} (§2.2.1)")
    if packet_type != PUBLISH and flags != _FLAGS.get(packet_type, 0):
        raise MqttProtocolError(f"{name}: fixed-header flags {flags:#06b} are reserved (§2.2.2)")
    b = _Body(body, name)
    if packet_type == CONNECT:
        return _decode_connect(b)
    if packet_type == PUBLISH:
        return _decode_publish(b, flags)
    if packet_type == SUBSCRIBE:
        return _decode_subscribe(b)
    if packet_type == UNSUBSCRIBE:
        return _decode_unsubscribe(b)
    if packet_type == CONNACK:
        return _decode_connack(b)
    if packet_type == SUBACK:
        return _decode_suback(b)
    if packet_type in _ID_ONLY:
        packet = _ID_ONLY[packet_type](b.packet_id())
    else:
        packet = _EMPTY[packet_type]()
    b.end()
    return packet


class PacketReader:
    """Reassembles packets from a byte stream; see the module docstring for the bounds."""

    def __init__(self, max_packet: int = MAX_PACKET) -> None:
        self.max_packet = max_packet
        self._buffer = bytearray()
        self._failed: MqttProtocolError | None = None

    @property
    def pending(self) -> int:
        """Bytes held for a packet not yet complete."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Packet]:
        """The packets that `data` completes, in order.

        Raises MqttProtocolError on the first malformed packet (the packets before it in the
        same call are lost with the connection, as a server closes it at once), and again on
        every later call.
        """
        if self._failed is not None:
            raise self._failed
        self._buffer += data
        packets: list[Packet] = []
        try:
            while (packet := self._next()) is not None:
                packets.append(packet)
        except MqttProtocolError as exc:
            self._failed = exc
            self._buffer.clear()
            raise
        return packets

    def _next(self) -> Packet | None:
        buf = self._buffer
        if not buf:
            return None
        # §2.2.3: remaining length, 7 bits per byte, least significant first, at most 4 bytes.
        length = 0
        for i in range(1, 5):
            if i >= len(buf):
                return None
            length |= (buf[i] & 0x7F) << 7 * (i - 1)
            if not buf[i] & 0x80:
                header = i + 1
                break
        else:
            raise MqttProtocolError("remaining length longer than 4 bytes (§2.2.3)")
        if header + length > self.max_packet:
            raise MqttProtocolError(
                f"packet of {header + length} bytes exceeds the limit of {self.max_packet}"
            )
        if len(buf) < header + length:
            return None
        body = bytes(buf[header : header + length])
        first = buf[0]
        del buf[: header + length]
        return decode_packet(first, body)
