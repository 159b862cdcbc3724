"""A small MQTT 3.1.1 broker in pure Python, so `skycourier sim` runs where no broker is
installed. mosquitto stays the real part (DESIGN.md principle 6); `sim.mqtt_broker` picks it
when present.

One thread runs a `selectors` loop over the listening socket and every connection, so the
session and routing state needs no locks. Packets are framed by `sim.mqtt_codec`.

What it does (OASIS MQTT Version 3.1.1 section numbers):
- CONNECT/CONNACK for protocol level 4 ("MQTT") and 3 ("MQIsdp", MQTT 3.1); any other level
  gets return code 1 and the connection is closed (§3.1.2.2); an empty client id with
  clean session 0 gets return code 2 (§3.1.3-8), with clean session 1 a generated id.
  User name and password are accepted and ignored (anonymous broker, as the test config of
  mosquitto). The first packet must be CONNECT, within `connect_timeout_s` (§3.1.0-1).
- PUBLISH QoS 0, 1 (PUBACK) and 2 (PUBREC/PUBREL/PUBCOMP, delivered once, §4.3.3) from
  clients. Subscriptions are granted at most QoS 1 (§3.9.3 allows a lower grant), so the
  broker itself sends QoS 0 and 1 only; a message goes out at min(its QoS, the grant).
  A client whose filters overlap gets one copy at the highest QoS (§3.3.5).
- Retained messages: stored per topic, sent with RETAIN=1 on a new subscription, an empty
  retained payload clears the topic (§3.3.1.3); live deliveries carry RETAIN=0.
- SUBSCRIBE with '+' and '#' (§4.7; '$' topics not matched by a leading wildcard), an
  invalid filter gets return code 0x80; UNSUBSCRIBE; PINGREQ/PINGRESP; DISCONNECT.
- Last will: published when a connection ends without DISCONNECT: socket closed or reset,
  keep-alive expired (no packet for 1.5 x keep-alive, §3.1.2.10), protocol error, client id
  taken over by a new connection (§3.1.4-2), or a client that stopped reading.
- Sessions: clean session 1 discards the state on connect and disconnect. Clean session 0
  keeps subscriptions, unacknowledged QoS 1 messages (resent with DUP=1 on reconnect,
  §4.4) and queues QoS 1 messages that arrive while the client is away, in memory only.
- Flow control, as mosquitto's max_inflight_messages/max_queued_messages: at most
  `max_inflight` QoS 1 messages await a client's PUBACK; more wait in its queue, which holds
  at most `max_queued` (the oldest is dropped with a warning past that).
- Bounds: a packet over `max_packet` bytes, a malformed packet, or a second CONNECT closes
  that connection with a logged reason; the broker goes on serving everyone else.

Not supported: TLS, authentication/ACLs, outgoing QoS 2, retry of unacknowledged messages
within one connection (3.1.1 only requires it on reconnect), persistence across restarts,
MQTT 5, WebSockets, $SYS topics.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import selectors
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace

from sim.mqtt_codec import (
    ACCEPTED,
    MAX_PACKET,
    PROTOCOLS,
    REFUSED_IDENTIFIER,
    REFUSED_PROTOCOL_VERSION,
    SUBACK_FAILURE,
    ConnAck,
    Connect,
    Disconnect,
    MqttProtocolError,
    Packet,
    PacketReader,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    Will,
    encode,
    topic_filter_error,
    topic_matches,
)

log = logging.getLogger(__name__)

#: Highest QoS the broker grants; see the module docstring.
MAX_GRANTED_QOS = 1
#: Bytes waiting to be written to one client past which it is taken as not reading.
MAX_OUTPUT = 16 << 20
READ_SIZE = 65536


@dataclass
class Session:
    """What a client id keeps between connections when clean session is 0."""

    client_id: str
    clean: bool
    subscriptions: dict[str, int] = field(default_factory=dict)  # filter -> granted QoS
    inflight: dict[int, Publish] = field(default_factory=dict)  # sent QoS 1, awaiting PUBACK
    queued: deque[Publish] = field(default_factory=deque)  # QoS 1 not yet sent
    qos2_received: set[int] = field(default_factory=set)  # PUBREC sent, PUBREL not yet
    next_id: int = 1

    def packet_id(self) -> int:
        """A packet id not in flight (§2.3.1); one exists, as max_inflight < 65536."""
        while True:
            pid = self.next_id
            self.next_id = pid % 0xFFFF + 1
            if pid not in self.inflight:
                return pid


class _Connection:
    def __init__(self, sock: socket.socket, peer: str, now: float, max_packet: int) -> None:
        self.sock = sock
        self.peer = peer
        self.reader = PacketReader(max_packet)
        self.output = bytearray()
        self.last_rx = now
        self.opened = now
        self.session: Session | None = None
        self.keepalive = 0
        self.will: Will | None = None
        self.closing = False  # write what is queued (a refusing CONNACK), then close

    @property
    def name(self) -> str:
        client = self.session.client_id if self.session else "?"
        return f"{client!r} from {self.peer}"


class EmbeddedBroker:
    """The broker; `start()` binds and runs the loop thread, `stop()` ends it."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_packet: int = MAX_PACKET,
        max_inflight: int = 100,
        max_queued: int = 10_000,
        connect_timeout_s: float = 10.0,
    ) -> None:
        if not 1 <= max_inflight <= 0xFFFF:
            raise ValueError(f"max_inflight {max_inflight} outside 1..65535 (packet ids, §2.3.1)")
        self.host = host
        self.max_packet = max_packet
        self.max_inflight = max_inflight
        self.max_queued = max_queued
        self.connect_timeout_s = connect_timeout_s
        self._listener = socket.create_server((host, port))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._connections: dict[socket.socket, _Connection] = {}
        self._sessions: dict[str, Session] = {}
        self._online: dict[str, _Connection] = {}
        self._retained: dict[str, Publish] = {}
        self._ids = itertools.count(1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"mqtt-broker:{self.port}")

    def start(self) -> None:
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread.daemon = True
        self._thread.start()
        log.info("embedded MQTT broker listening on %s:%d", self.host, self.port)

    def stop(self) -> None:
        """Close every connection (no wills: the broker, not the clients, went away)."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        for sock in [self._listener, self._wake_r, self._wake_w, *self._connections]:
            with contextlib.suppress(OSError):
                sock.close()
        self._connections.clear()
        self._selector.close()

    # --- the loop -----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, events in self._selector.select(timeout=self._timeout()):
                sock = key.fileobj
                if sock is self._listener:
                    self._accept()
                elif sock is self._wake_r:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(64)
                else:
                    conn = self._connections.get(sock)  # type: ignore[arg-type]
                    if conn is None:
                        continue
                    try:
                        if events & selectors.EVENT_READ:
                            self._read(conn)
                        if events & selectors.EVENT_WRITE and sock in self._connections:
                            self._flush(conn)
                    except Exception:  # a bug here must cost one connection, not the broker
                        log.exception("internal error serving MQTT client %s", conn.name)
                        self._drop(conn, "internal broker error (logged above)", fault=True)
            self._check_timers(time.monotonic())

    def _timeout(self) -> float:
        """Until the next keep-alive or connect deadline, at most 0.5 s."""
        now = time.monotonic()
        soonest = now + 0.5
        for conn in self._connections.values():
            soonest = min(soonest, self._deadline(conn))
        return max(0.0, soonest - now)

    def _deadline(self, conn: _Connection) -> float:
        if conn.session is None:
            return conn.opened + self.connect_timeout_s
        if conn.keepalive:
            return conn.last_rx + 1.5 * conn.keepalive  # §3.1.2.10
        return float("inf")

    def _check_timers(self, now: float) -> None:
        for conn in list(self._connections.values()):
            if now >= self._deadline(conn):
                if conn.session is None:
                    self._drop(conn, f"no CONNECT within {self.connect_timeout_s:g} s")
                else:
                    self._drop(conn, f"keep-alive {conn.keepalive} s expired (1.5 x, §3.1.2.10)")

    def _accept(self) -> None:
        try:
            sock, addr = self._listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                log.warning("accept failed: %s", exc)
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Connection(sock, f"{addr[0]}:{addr[1]}", time.monotonic(), self.max_packet)
        self._connections[sock] = conn
        self._selector.register(sock, selectors.EVENT_READ)

    def _read(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._drop(conn, f"socket error: {exc}")
            return
        if not data:
            self._drop(conn, "connection closed by the client without DISCONNECT")
            return
        conn.last_rx = time.monotonic()
        try:
            packets = conn.reader.feed(data)
        except MqttProtocolError as exc:
            self._drop(conn, f"protocol error: {exc}", fault=True)
            return
        for packet in packets:
            if conn.sock not in self._connections or conn.closing:
                return
            try:
                self._handle(conn, packet)
            except MqttProtocolError as exc:
                self._drop(conn, f"protocol error: {exc}", fault=True)
                return

    def _send(self, conn: _Connection, packet: Packet) -> None:
        if conn.sock not in self._connections:
            return
        conn.output += encode(packet)
        if len(conn.output) > MAX_OUTPUT:
            self._drop(conn, f"client not reading: over {MAX_OUTPUT} bytes waiting to be sent")
            return
        self._flush(conn)

    def _flush(self, conn: _Connection) -> None:
        try:
            while conn.output:
                sent = conn.sock.send(conn.output)
                del conn.output[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self._drop(conn, f"socket error: {exc}")
            return
        if conn.closing and not conn.output:
            self._close(conn)
            return
        wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.output else 0)
        if self._selector.get_key(conn.sock).events != wanted:
            self._selector.modify(conn.sock, wanted)

    # --- ending connections ---------------------------------------------------------------

    def _drop(self, conn: _Connection, reason: str, *, fault: bool = False) -> None:
        """End a connection abnormally: log why (a warning when the client broke the
        protocol or the broker failed), publish its will (§3.1.2.5)."""
        if conn.sock not in self._connections:
            return
        log.log(
            logging.WARNING if fault else logging.INFO,
            "MQTT client %s dropped: %s",
            conn.name,
            reason,
        )
        will, conn.will = conn.will, None
        self._close(conn)
        if will is not None:
            self._route(Publish(will.topic, will.payload, will.qos, will.retain))

    def _close(self, conn: _Connection) -> None:
        if self._connections.pop(conn.sock, None) is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        with contextlib.suppress(OSError):
            conn.sock.close()
        session = conn.session
        if session is not None and self._online.get(session.client_id) is conn:
            del self._online[session.client_id]
            if session.clean:
                self._sessions.pop(session.client_id, None)

    # --- packets ------------------------------------------------------------------------

    def _handle(self, conn: _Connection, packet: Packet) -> None:
        if isinstance(packet, Connect):
            if conn.session is not None:
                raise MqttProtocolError("second CONNECT on one connection (§3.1.0-2)")
            self._connect(conn, packet)
            return
        if conn.session is None:
            raise MqttProtocolError(f"{type(packet).__name__} before CONNECT (§3.1.0-1)")
        session = conn.session
        if isinstance(packet, Publish):
            self._publish(conn, session, packet)
        elif isinstance(packet, PubAck):
            session.inflight.pop(packet.packet_id, None)
            self._send_queued(conn, session)
        elif isinstance(packet, PubRel):
            session.qos2_received.discard(packet.packet_id)
            self._send(conn, PubComp(packet.packet_id))
        elif isinstance(packet, Subscribe):
            self._subscribe(conn, session, packet)
        elif isinstance(packet, Unsubscribe):
            for topic_filter in packet.topics:
                session.subscriptions.pop(topic_filter, None)
            self._send(conn, UnsubAck(packet.packet_id))
        elif isinstance(packet, PingReq):
            self._send(conn, PingResp())
        elif isinstance(packet, Disconnect):
            conn.will = None  # §3.14.4-3: a clean DISCONNECT discards the will
            log.info("MQTT client %s disconnected", conn.name)
            self._close(conn)
        else:  # CONNACK, SUBACK, PUBREC, PUBCOMP, ...: only a server sends those
            raise MqttProtocolError(f"{type(packet).__name__} sent by a client")

    def _connect(self, conn: _Connection, packet: Connect) -> None:
        expected = PROTOCOLS[packet.protocol_name]
        if packet.protocol_level != expected:
            log.info(
                "refusing %s: protocol %s level %d (want %d)",
                conn.peer,
                packet.protocol_name,
                packet.protocol_level,
                expected,
            )
            self._refuse(conn, REFUSED_PROTOCOL_VERSION)
            return
        client_id = packet.client_id
        if not client_id:
            if not packet.clean_session:
                log.info("refusing %s: empty client id with clean session 0", conn.peer)
                self._refuse(conn, REFUSED_IDENTIFIER)
                return
            client_id = f"auto-{next(self._ids)}"
        old = self._online.get(client_id)
        if old is not None:
            self._drop(old, "client id taken over by a new connection (§3.1.4-2)")
        session = self._sessions.get(client_id)
        present = session is not None and not packet.clean_session
        if session is None or not present:  # §3.1.2.4: clean session 1 starts afresh
            session = Session(client_id, packet.clean_session)
            self._sessions[client_id] = session
        session.clean = packet.clean_session
        conn.session = session
        conn.keepalive = packet.keepalive
        conn.will = packet.will
        self._online[client_id] = conn
        log.info(
            "MQTT client %s connected (clean=%d, keepalive=%d s)",
            conn.name,
            packet.clean_session,
            packet.keepalive,
        )
        self._send(conn, ConnAck(present, ACCEPTED))
        for message in list(session.inflight.values()):  # §4.4: resend unacknowledged
            self._send(conn, replace(message, dup=True))
        self._send_queued(conn, session)

    def _refuse(self, conn: _Connection, code: int) -> None:
        conn.closing = True
        conn.output += encode(ConnAck(False, code))
        self._flush(conn)

    def _publish(self, conn: _Connection, session: Session, packet: Publish) -> None:
        pid = packet.packet_id or 0  # an id is there for QoS > 0: the codec checked (§2.3.1)
        if packet.qos == 1:
            self._send(conn, PubAck(pid))
        elif packet.qos == 2:
            self._send(conn, PubRec(pid))
            if pid in session.qos2_received:
                return  # §4.3.3: a resent QoS 2 PUBLISH is delivered once
            session.qos2_received.add(pid)
        self._route(packet)

    def _subscribe(self, conn: _Connection, session: Session, packet: Subscribe) -> None:
        codes = []
        for topic_filter, qos in packet.topics:
            error = topic_filter_error(topic_filter)
            if error is not None:
                log.info("MQTT client %s: refused subscription: %s", conn.name, error)
                codes.append(SUBACK_FAILURE)
                continue
            granted = min(qos, MAX_GRANTED_QOS)
            session.subscriptions[topic_filter] = granted
            codes.append(granted)
        self._send(conn, SubAck(packet.packet_id, tuple(codes)))
        # §3.3.1.3: retained messages matching a new subscription go out with RETAIN=1.
        for (topic_filter, _), code in zip(packet.topics, codes, strict=True):
            if code == SUBACK_FAILURE:
                continue
            for message in list(self._retained.values()):
                if topic_matches(topic_filter, message.topic):
                    qos = min(message.qos, code)
                    self._deliver(session, Publish(message.topic, message.payload, qos, True))

    # --- routing ------------------------------------------------------------------------

    def _route(self, message: Publish) -> None:
        """Store if retained, then deliver to every matching session."""
        if message.retain:
            if message.payload:
                self._retained[message.topic] = message
            else:
                self._retained.pop(message.topic, None)  # §3.3.1-10/11
        for session in list(self._sessions.values()):
            granted = [
                qos
                for topic_filter, qos in session.subscriptions.items()
                if topic_matches(topic_filter, message.topic)
            ]
            if granted:
                qos = min(message.qos, max(granted))
                self._deliver(session, Publish(message.topic, message.payload, qos, False))

    def _deliver(self, session: Session, message: Publish) -> None:
        conn = self._online.get(session.client_id)
        if message.qos == 0:
            if conn is not None:  # §3.1.2.4: QoS 0 is not kept for an absent client
                self._send(conn, message)
            return
        if conn is None and session.clean:
            return
        if len(session.queued) >= self.max_queued:
            dropped = session.queued.popleft()
            log.warning(
                "client %r: queue full (%d messages), dropped the oldest, on %r",
                session.client_id,
                self.max_queued,
                dropped.topic,
            )
        session.queued.append(message)
        if conn is not None:
            self._send_queued(conn, session)

    def _send_queued(self, conn: _Connection, session: Session) -> None:
        """Send queued QoS 1 messages while fewer than `max_inflight` await a PUBACK."""
        while session.queued and len(session.inflight) < self.max_inflight:
            if conn.sock not in self._connections:
                return
            pid = session.packet_id()
            message = replace(session.queued.popleft(), dup=False, packet_id=pid)
            session.inflight[pid] = message
            self._send(conn, message)
