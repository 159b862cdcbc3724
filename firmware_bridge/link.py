"""The one owner of the MAVLink connection to the autopilot.

Every internal user (state cache, command sender, mission and parameter transfers) goes
through one `MavLink`: a reader thread decodes bytes and fans messages out, a heartbeat
thread announces the companion as MAV_TYPE_ONBOARD_CONTROLLER, and `run()` drives any
sans-I/O transaction to completion. Reads are bounded in time, a lost link is detected from
the autopilot's heartbeat and reopened with backoff, and callers are told, never blocked.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from firmware_bridge.dialect import MAVLinkMessage, mavlink
from firmware_bridge.endpoint import Endpoint, parse_endpoint
from firmware_bridge.errors import LinkError, ProtocolTimeout
from firmware_bridge.state import LinkState
from firmware_bridge.transaction import Transaction
from firmware_bridge.transports import Transport, open_transport

log = logging.getLogger(__name__)

T = TypeVar("T")
Listener = Callable[[MAVLinkMessage], None]

_READ_SLICE_S = 0.05
_RECONNECT_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass
class LinkStats:
    """Counters for the link, so that nothing bad on the wire goes unnoticed."""

    bytes_in: int = 0
    messages_in: int = 0
    messages_out: int = 0
    bad_frames: int = 0
    listener_errors: int = 0
    reconnects: int = 0
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
        opener: Callable[[Endpoint, float], Transport] = open_transport,
    ) -> None:
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
        self._mav = mavlink.MAVLink(_Writer(self), srcSystem=own_system, srcComponent=own_component)
        self._mav.robust_parsing = True
        self._transport: Transport | None = None
        self._send_lock = threading.Lock()
        self._listeners: dict[int, Listener] = {}
        self._listener_ids = itertools.count()
        self._listeners_lock = threading.Lock()
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_heartbeat = 0.0
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

    def heartbeat_age(self) -> float:
        """Seconds since the autopilot's last heartbeat (inf before the first)."""
        return time.monotonic() - self._last_heartbeat if self._last_heartbeat else float("inf")

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
                data = transport.read(_READ_SLICE_S)
            except LinkError as exc:
                self._drop_transport(str(exc))
                continue
            if data:
                self.stats.bytes_in += len(data)
                self._dispatch(self._decode(data))
            if self._up and self.heartbeat_age() > self.heartbeat_timeout_s:
                self._set_up(False, f"no heartbeat for {self.heartbeat_timeout_s:g} s")

    def _decode(self, data: bytes) -> list[MAVLinkMessage]:
        """Frames in `data`; pymavlink's parser can still raise on some corrupt input even
        with robust parsing, and the reader thread must outlive any byte on the wire."""
        try:
            return self._mav.parse_buffer(data) or []
        except Exception as exc:
            self.stats.bad_frames += 1
            log.debug("undecodable bytes from %s: %s", self.endpoint, exc)
            return []

    def _drop_transport(self, reason: str) -> None:
        log.warning("link lost: %s", reason)
        with self._send_lock:
            if self._transport is not None:
                self._transport.close()
                self._transport = None
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
            if (
                kind == "HEARTBEAT"
                and msg.get_srcSystem() == self.target_system
                and msg.get_srcComponent() == self.target_component
            ):
                self._last_heartbeat = time.monotonic()
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
                    feed(transaction.receive(msg, time.monotonic()))

        backstop = time.monotonic() + timeout if timeout is not None else None
        with lock:
            # Listen before the first send, or a quick reply could arrive unheard; replies
            # that come while `start` runs wait on the lock and are fed in order after it.
            remove = self.add_listener(on_message)
            feed(transaction.start(time.monotonic()))
        try:
            while True:
                with lock:
                    if failure:
                        raise failure[0]
                    if transaction.finished:
                        return transaction.result()
                    now = time.monotonic()
                    due = transaction.deadline
                    if due is not None and now >= due:
                        feed(transaction.tick(now))
                        continue
                    changed.clear()
                if backstop is not None and now >= backstop:
                    raise ProtocolTimeout(
                        f"{type(transaction).__name__} did not finish within {timeout:g} s"
                    )
                wait_until = due
                if backstop is not None:
                    wait_until = backstop if wait_until is None else min(wait_until, backstop)
                changed.wait(0.5 if wait_until is None else max(wait_until - now, 0.0))
        finally:
            remove()
