"""The one owner of the MAVLink connection to the autopilot.

Every internal user (state cache, command sender, mission and parameter transfers) goes
through one `MavLink`: a reader thread decodes bytes and fans messages out, a heartbeat
thread announces the companion as MAV_TYPE_ONBOARD_CONTROLLER, and `run()` drives any
sans-I/O transaction to completion. Reads are bounded in time, a lost link is detected from
the autopilot's heartbeat and reopened with backoff, and callers are told, never blocked.

Over UDP anyone who can reach the port can send a datagram, so the link locks onto the
autopilot: the first datagram that carries a HEARTBEAT from `target_system`/
`target_component` names the autopilot's address; until then nothing is sent and nothing
is dispatched, and afterwards datagrams from any other address are dropped, counted and
logged. Each datagram is decoded on its own, so that bytes from one sender can never
complete a frame of another. When the autopilot's heartbeat stops, the transport is
reopened and the link locks again (the autopilot may come back from another port). The
lock stops redirection by a stranger on the network, not a peer that forges the
autopilot's ids before it speaks: that needs MAVLink 2 signing.

Signing (`firmware_bridge.signing`) is the link's too, since it sits between the bytes and
every user: `start_signing` signs everything sent from then on, and while the set-up is
pending (`SigningSetup`, driven by `Vehicle.setup_signing`) everything received still passes;
`enforce_signing` then lets through only frames signed with the key whose timestamps move
forward (and ArduPilot's unsigned exceptions, RADIO_STATUS and RADIO). Dropped frames are
counted by reason in `LinkStats.signature_rejects` and never reach a listener, so a forged
heartbeat can neither lock a UDP link nor keep it up. The signing state outlives reconnects:
the timestamps go on from where they were.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from firmware_bridge.dialect import MAVLinkMessage, mavlink
from firmware_bridge.endpoint import Endpoint, parse_endpoint
from firmware_bridge.errors import LinkError, ProtocolTimeout, SigningError
from firmware_bridge.signing import ADMITTED, check_secret, check_signature
from firmware_bridge.state import LinkState
from firmware_bridge.transaction import Transaction
from firmware_bridge.transports import (
    Address,
    Datagram,
    DatagramTransport,
    Transport,
    open_transport,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
Listener = Callable[[MAVLinkMessage], None]

_READ_SLICE_S = 0.05
_RECONNECT_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
_MAX_STRANGERS_LOGGED = 32  # addresses named in the log per lock; a flood of them is counted

SigningMode = Literal["off", "pending", "on"]


@dataclass
class LinkStats:
    """Counters for the link, so that nothing bad on the wire goes unnoticed."""

    bytes_in: int = 0
    messages_in: int = 0
    messages_out: int = 0
    bad_frames: int = 0
    listener_errors: int = 0
    reconnects: int = 0
    foreign_datagrams: int = 0
    """Datagrams dropped because they came from another address than the locked autopilot."""
    unverified_datagrams: int = 0
    """Datagrams dropped before the lock: they carried no heartbeat from the autopilot."""
    signature_rejects: dict[str, int] = field(default_factory=dict)
    """Messages dropped with signing on, by `check_signature` verdict ("unsigned", ...)."""
    by_type: dict[str, int] = field(default_factory=dict)


class _Writer:
    """File-like sink that pymavlink's `MAVLink.send` writes encoded frames into."""

    def __init__(self, link: MavLink) -> None:
        self._link = link

    def write(self, data: bytes) -> None:
        self._link._write(data)


class MavLink:
    """A MAVLink 2 connection to one autopilot, owned by one object for all users."""

    def __init__(
        self,
        endpoint: str | Endpoint,
        *,
        target_system: int = 1,
        target_component: int = 1,
        own_system: int = 1,
        own_component: int = mavlink.MAV_COMP_ID_ONBOARD_COMPUTER,
        heartbeat_interval_s: float = 1.0,
        heartbeat_timeout_s: float = 3.0,
        connect_timeout_s: float = 10.0,
        publish: Callable[[object], None] | None = None,
        opener: Callable[[Endpoint, float], Transport | DatagramTransport] = open_transport,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock` times the heartbeat timeout and the protocol transactions' retransmissions
        and timeouts: the monotonic clock, or under simulation the simulated autopilot's
        clock, so that they last as long in the autopilot's time at any speed-up (and a
        simulator paused in lockstep does not look like a dead autopilot)."""
        self.endpoint = endpoint if isinstance(endpoint, Endpoint) else parse_endpoint(endpoint)
        self.target_system = target_system
        self.target_component = target_component
        self.own_system = own_system
        self.own_component = own_component
        self.heartbeat_interval_s = heartbeat_interval_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.stats = LinkStats()
        self._publish = publish or (lambda _msg: None)
        self._opener = opener
        self._clock = clock
        # Under another clock the wall-clock waits must be short: its deadlines can come at
        # any moment of wall time.
        self._max_wait_s = 0.5 if clock is time.monotonic else 0.005
        # The encoder carries the signing state (pymavlink signs what it packs); decoding has
        # a parser of its own without a key, so that signatures are checked by
        # `check_signature`, in ArduPilot's order, and not by pymavlink's decoder.
        self._mav = mavlink.MAVLink(_Writer(self), srcSystem=own_system, srcComponent=own_component)
        self._parser = mavlink.MAVLink(None)
        self._parser.robust_parsing = True
        self._signing_mode: SigningMode = "off"
        self._transport: Transport | DatagramTransport | None = None
        self._peer: Address | None = None
        self._strangers: set[Address] = set()
        self._send_lock = threading.Lock()
        self._listeners: dict[int, Listener] = {}
        self._listener_ids = itertools.count()
        self._listeners_lock = threading.Lock()
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_heartbeat: float | None = None
        self._up = False
        self._up_changed = threading.Condition()

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Connect and wait for the autopilot's first heartbeat, within `connect_timeout_s`.

        Raises LinkError naming the endpoint and the cause (refused, no such device, silence).
        """
        deadline = time.monotonic() + self.connect_timeout_s
        self._transport = self._opener(self.endpoint, self.connect_timeout_s)
        self._closing.clear()
        for target, name in (
            (self._read_loop, "mavlink-reader"),
            (self._heartbeat_loop, "mavlink-heartbeat"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        if not self.wait_up(max(deadline - time.monotonic(), 0.0)):
            self.close()
            raise LinkError(
                f"no heartbeat from autopilot {self.target_system}/{self.target_component} "
                f"on {self.endpoint} within {self.connect_timeout_s:g} s"
            )

    def close(self) -> None:
        """Stop the threads and close the transport; safe to call twice."""
        self._closing.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=2.0)
        self._threads.clear()
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self._peer = None
        self._set_up(False, "closed")

    def __enter__(self) -> MavLink:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state of the link -----------------------------------------------------------------

    @property
    def up(self) -> bool:
        """True while the autopilot's heartbeat is fresh."""
        return self._up

    @property
    def peer(self) -> Address | None:
        """The autopilot's address on a UDP link once locked onto it; None before, and on
        a stream (TCP, serial), which has only one peer."""
        return self._peer

    def heartbeat_age(self) -> float:
        """Seconds since the autopilot's last heartbeat (inf before the first)."""
        last = self._last_heartbeat
        return float("inf") if last is None else self._clock() - last

    def wait_up(self, timeout: float) -> bool:
        """Wait until the link is up; False if it is not within `timeout` seconds."""
        with self._up_changed:
            return self._up_changed.wait_for(lambda: self._up, timeout=timeout)

    def require_up(self) -> None:
        """Raise LinkError unless the autopilot's heartbeat is fresh: commands are gated on it."""
        if not self._up:
            age = self.heartbeat_age()
            heard = "never heard" if age == float("inf") else f"last heard {age:.1f} s ago"
            raise LinkError(f"autopilot on {self.endpoint} is not answering ({heard})")

    def _set_up(self, up: bool, reason: str) -> None:
        with self._up_changed:
            if up == self._up:
                return
            self._up = up
            self._up_changed.notify_all()
        log.info("link %s: %s", "up" if up else "down", reason or str(self.endpoint))
        self._publish(
            LinkState(up=up, endpoint=str(self.endpoint), reason=reason, since=time.time())
        )

    # -- sending ---------------------------------------------------------------------------

    def send(self, msg: MAVLinkMessage) -> None:
        """Encode and send one message; LinkError if the transport is gone."""
        with self._send_lock:
            if self._transport is None:
                raise LinkError(f"{self.endpoint}: link is not open")
            self._mav.send(msg)
            self.stats.messages_out += 1

    def send_frame(self, frame: bytes) -> None:
        """Send one frame that is already encoded (and signed, when signing is on) as it is:
        a ground station's command that the router (`firmware_bridge.router`) re-signed with
        its sender's ids kept. LinkError if the transport is gone."""
        with self._send_lock:
            self._write(frame)
            self.stats.messages_out += 1

    def _write(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            raise LinkError(f"{self.endpoint}: link is not open")
        transport.write(data)

    def _heartbeat_loop(self) -> None:
        beat = mavlink.MAVLink_heartbeat_message(
            mavlink.MAV_TYPE_ONBOARD_CONTROLLER,
            mavlink.MAV_AUTOPILOT_INVALID,
            0,
            0,
            mavlink.MAV_STATE_ACTIVE,
            3,
        )
        while not self._closing.is_set():
            try:
                self.send(beat)
            except LinkError as exc:
                log.debug("heartbeat not sent: %s", exc)
            self._closing.wait(self.heartbeat_interval_s)

    # -- signing ---------------------------------------------------------------------------

    @property
    def signing(self) -> SigningMode:
        """The signing mode: "off"; "pending" while the autopilot is being given the key
        (everything sent is signed, everything received passes); "on" once only signed
        messages pass."""
        return self._signing_mode

    def start_signing(self, secret: bytes, *, link_id: int, timestamp: int) -> int:
        """Sign everything sent from now on with `secret` as link `link_id`, starting at
        signing timestamp `timestamp` or, if this link has already signed, past the last one
        it used or accepted; returns the timestamp it starts from. Received messages are
        checked (and raise the timestamp) but all still pass until `enforce_signing`."""
        secret = check_secret(secret)
        if not 0 <= link_id <= 255:
            raise SigningError(f"signing link id must be 0..255, got {link_id}")
        with self._send_lock:
            signing = self._mav.signing
            signing.secret_key = secret
            signing.link_id = link_id
            signing.timestamp = max(signing.timestamp, timestamp)
            signing.stream_timestamps = {}
            signing.sign_outgoing = True
            self._signing_mode = "pending"
            return signing.timestamp

    def enforce_signing(self) -> None:
        """From now on drop every received message that `check_signature` does not admit."""
        if self._signing_mode == "off":
            raise RuntimeError("enforce_signing before start_signing")
        self._signing_mode = "on"
        log.info("MAVLink signing on for %s: unsigned messages are dropped", self.endpoint)

    def stop_signing(self) -> None:
        """Send unsigned and pass everything again (a set-up that failed). The timestamp is
        kept, so that a later set-up on this link goes on from it."""
        with self._send_lock:
            signing = self._mav.signing
            signing.secret_key = None
            signing.sign_outgoing = False
            signing.stream_timestamps = {}
            self._signing_mode = "off"

    def _admit(self, messages: list[MAVLinkMessage]) -> list[MAVLinkMessage]:
        """The messages that may reach the listeners under the signing mode."""
        mode = self._signing_mode
        if mode == "off":
            return messages
        admitted = []
        # The check raises the sending timestamp, which the senders' packing advances.
        with self._send_lock:
            for msg in messages:
                if msg.get_type() == "BAD_DATA" or self._mav.signing.secret_key is None:
                    admitted.append(msg)
                    continue
                verdict = check_signature(self._mav.signing, msg)
                if verdict in ADMITTED or mode == "pending":
                    admitted.append(msg)
                else:
                    self._drop_by_signature(msg, verdict)
        return admitted

    def _drop_by_signature(self, msg: MAVLinkMessage, verdict: str) -> None:
        rejects = self.stats.signature_rejects
        rejects[verdict] = rejects.get(verdict, 0) + 1
        if rejects[verdict] == 1:
            log.warning("dropping %s from %d/%d on %s: %s (signing is on; logged once per "
                        "reason, LinkStats.signature_rejects counts them; an autopilot that "
                        "lost its key needs a new connection that sets signing up)", msg.get_type(),
                        msg.get_srcSystem(), msg.get_srcComponent(), self.endpoint,
                        verdict)  # fmt: skip

    # -- receiving -------------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` (on the reader thread) with every message from the autopilot.

        Returns a function that removes it. A listener that raises is logged and counted.
        """
        key = next(self._listener_ids)
        with self._listeners_lock:
            self._listeners[key] = listener

        def remove() -> None:
            with self._listeners_lock:
                self._listeners.pop(key, None)

        return remove

    def _read_loop(self) -> None:
        backoff = iter(_RECONNECT_BACKOFF_S)
        while not self._closing.is_set():
            transport = self._transport
            if transport is None:
                if not self._reopen(next(backoff, _RECONNECT_BACKOFF_S[-1])):
                    continue
                backoff = iter(_RECONNECT_BACKOFF_S)
                transport = self._transport
                assert transport is not None
            try:
                if isinstance(transport, DatagramTransport):
                    datagram = transport.receive(_READ_SLICE_S)
                    if datagram is not None:
                        self._receive_datagram(transport, datagram)
                else:
                    data = transport.read(_READ_SLICE_S)
                    if data:
                        self.stats.bytes_in += len(data)
                        self._dispatch(self._admit(self._decode(self._parser, data)))
            except LinkError as exc:
                self._drop_transport(str(exc))
                continue
            if self._up and self.heartbeat_age() > self.heartbeat_timeout_s:
                reason = f"no heartbeat for {self.heartbeat_timeout_s:g} s"
                if self._peer is not None:
                    # Listen afresh: the autopilot may come back from another address.
                    self._drop_transport(reason)
                else:
                    self._set_up(False, reason)

    def _decode(self, parser: mavlink.MAVLink, data: bytes) -> list[MAVLinkMessage]:
        """Frames in `data`; pymavlink's parser can still raise on some corrupt input even
        with robust parsing, and the reader thread must outlive any byte on the wire."""
        try:
            return parser.parse_buffer(data) or []
        except Exception as exc:
            self.stats.bad_frames += 1
            log.debug("undecodable bytes from %s: %s", self.endpoint, exc)
            return []

    def _receive_datagram(self, transport: DatagramTransport, datagram: Datagram) -> None:
        """Dispatch a datagram from the autopilot's address; lock onto that address on the
        first datagram with the autopilot's heartbeat; drop (and count) everything else."""
        self.stats.bytes_in += len(datagram.data)
        sender = datagram.sender
        if self._peer is not None and sender != self._peer:
            self._drop_stranger(sender, self._peer)
            return
        # A parser of its own per datagram: a partial frame left by one sender must not
        # join the next datagram, which may come from someone else.
        parser = mavlink.MAVLink(None)
        parser.robust_parsing = True
        messages = self._admit(self._decode(parser, datagram.data))
        if self._peer is None:
            if not any(self._is_target_heartbeat(m) for m in messages):
                self.stats.unverified_datagrams += 1
                log.debug("datagram from %s:%d dropped: not locked onto the autopilot yet "
                          "and it carries no heartbeat from it", *sender)  # fmt: skip
                return
            transport.lock(sender)
            self._peer = sender
            self._strangers.clear()
            log.info("locked onto autopilot %d/%d at %s:%d on %s", self.target_system,
                     self.target_component, *sender, self.endpoint)  # fmt: skip
        self._dispatch(messages)

    def _drop_stranger(self, sender: Address, peer: Address) -> None:
        self.stats.foreign_datagrams += 1
        if sender in self._strangers or len(self._strangers) > _MAX_STRANGERS_LOGGED:
            return
        self._strangers.add(sender)
        if len(self._strangers) > _MAX_STRANGERS_LOGGED:
            log.warning("datagrams from more than %d other addresses on %s: dropping them "
                        "without naming each (LinkStats.foreign_datagrams counts them)",
                        _MAX_STRANGERS_LOGGED, self.endpoint)  # fmt: skip
            return
        log.warning("dropping datagrams from %s:%d on %s: the link is locked onto the "
                    "autopilot at %s:%d (logged once per address)",
                    *sender, self.endpoint, *peer)  # fmt: skip

    def _is_target_heartbeat(self, msg: MAVLinkMessage) -> bool:
        return (
            msg.get_type() == "HEARTBEAT"
            and msg.get_srcSystem() == self.target_system
            and msg.get_srcComponent() == self.target_component
        )

    def _drop_transport(self, reason: str) -> None:
        log.warning("link lost: %s", reason)
        with self._send_lock:
            if self._transport is not None:
                self._transport.close()
                self._transport = None
        self._peer = None
        self._set_up(False, reason)

    def _reopen(self, delay: float) -> bool:
        if self._closing.wait(delay):
            return False
        try:
            transport = self._opener(self.endpoint, min(self.connect_timeout_s, 2.0))
        except LinkError as exc:
            log.debug("reconnect failed: %s", exc)
            return False
        with self._send_lock:
            self._transport = transport
        self.stats.reconnects += 1
        log.info("reconnected to %s", self.endpoint)
        return True

    def _dispatch(self, messages: list[MAVLinkMessage]) -> None:
        for msg in messages:
            kind = msg.get_type()
            if kind == "BAD_DATA":
                self.stats.bad_frames += 1
                continue
            self.stats.messages_in += 1
            self.stats.by_type[kind] = self.stats.by_type.get(kind, 0) + 1
            if self._is_target_heartbeat(msg):
                self._last_heartbeat = self._clock()
                self._set_up(True, "")
            with self._listeners_lock:
                listeners = list(self._listeners.values())
            for listener in listeners:
                try:
                    listener(msg)
                except Exception:
                    self.stats.listener_errors += 1
                    log.exception("listener failed on %s", kind)

    # -- driving transactions --------------------------------------------------------------

    def run(self, transaction: Transaction[T], timeout: float | None = None) -> T:
        """Drive a sans-I/O transaction to its end and return its result.

        Replies are fed to the transaction on the reader thread as they are decoded, and its
        answers sent from there at once: a mission upload is a ping-pong of hundreds of
        messages, and a hand-over to the caller's thread per message would double its
        latency. The caller's thread only handles deadlines (retransmission, timeouts). The
        transaction's own timeouts and retries decide the outcome; `timeout` is a backstop
        so that nothing can hang the caller.
        """
        lock = threading.Lock()
        changed = threading.Event()
        failure: list[LinkError] = []

        def feed(outgoing: list[MAVLinkMessage]) -> None:
            try:
                for out in outgoing:
                    self.send(out)
            except LinkError as exc:
                failure.append(exc)
            changed.set()

        def on_message(msg: MAVLinkMessage) -> None:
            with lock:
                if not transaction.finished and not failure:
                    feed(transaction.receive(msg, self._clock()))

        backstop = time.monotonic() + timeout if timeout is not None else None
        with lock:
            # Listen before the first send, or a quick reply could arrive unheard; replies
            # that come while `start` runs wait on the lock and are fed in order after it.
            remove = self.add_listener(on_message)
            feed(transaction.start(self._clock()))
        try:
            while True:
                with lock:
                    if failure:
                        raise failure[0]
                    if transaction.finished:
                        return transaction.result()
                    now = self._clock()
                    due = transaction.deadline
                    if due is not None and now >= due:
                        feed(transaction.tick(now))
                        continue
                    changed.clear()
                wall = time.monotonic()
                if backstop is not None and wall >= backstop:
                    raise ProtocolTimeout(
                        f"{type(transaction).__name__} did not finish within {timeout:g} s"
                    )
                wait = self._max_wait_s if due is None else min(due - now, self._max_wait_s)
                if backstop is not None:
                    wait = min(wait, backstop - wall)
                changed.wait(max(wait, 0.0))
        finally:
            remove()
