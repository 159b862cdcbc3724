"""Ground-station endpoints of the MAVLink router: sockets and threads around the decisions
of `firmware_bridge.router`.

Endpoint URLs, after mavlink-router's endpoint kinds:

- ``udp-out:HOST:PORT`` sends to a fixed address (mavlink-router's "normal" mode; a
  QGroundControl on the same machine listens on 14550) and takes what comes back;
- ``udp-in:BIND:PORT`` listens, and answers the last sender whose datagram vouched for it
  (a well-formed frame to a read-only endpoint, a correctly signed one to a command
  endpoint); until one has, nothing is sent;
- ``tcp-out:HOST:PORT`` connects, and connects again with a growing pause when it cannot;
- ``tcp-in:BIND:PORT`` listens for one client at a time; a new connection replaces the one
  before (a ground station that vanished over LTE can leave a half-open one behind).

Each endpoint has a thread of its own. The flight controller's reader thread only puts
frames on a bounded queue per endpoint (`MAX_QUEUED` frames) and never touches a socket, so
a stuck or vanished endpoint cannot hold up the link: its queue fills and further frames
for it are dropped and counted (``queue-full``). Frames accepted from an endpoint are sent
to the flight controller from that endpoint's thread, in the order they came.

The core counts what it drops; this adapter counts what became of what it passed: out,
``sent``, ``no-peer`` (nobody to send to yet), ``queue-full``, ``send-failed``; in,
``forwarded`` and ``fc-link-down``.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from firmware_bridge.dialect import MAVLinkMessage
from firmware_bridge.errors import LinkError
from firmware_bridge.router import (
    MAX_DATAGRAM,
    EndpointPolicy,
    Framing,
    Inbound,
    Router,
    command_refusal,
)
from firmware_bridge.signing import signing_timestamp

log = logging.getLogger(__name__)

Kind = Literal["udp-out", "udp-in", "tcp-out", "tcp-in"]
KINDS: tuple[Kind, ...] = ("udp-out", "udp-in", "tcp-out", "tcp-in")

#: Frames waiting for one endpoint at most; at 50 messages/s that is about 10 s of stream.
MAX_QUEUED = 512
_TCP_BUFFER = 64 * 1024  # bytes handed to a TCP socket's send at a time, at most
_TCP_READ = 4096
_UDP_READS_PER_WAKE = 64  # datagrams read before the queue is served again
_WAIT_S = 0.5  # longest sleep of an endpoint thread (it is woken for work)
_CONNECT_TIMEOUT_S = 2.0
_RECONNECT_S = (0.5, 1.0, 2.0, 5.0)


class RouteUrlError(ValueError):
    """An endpoint URL that names no endpoint; the message says what is wrong."""


@dataclass(frozen=True)
class RouteUrl:
    """Where a ground endpoint is, and which way the connection goes."""

    kind: Kind
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.kind}:{self.host}:{self.port}"

    @property
    def framing(self) -> Framing:
        return "stream" if self.kind.startswith("tcp") else "datagram"


def parse_route_url(text: str) -> RouteUrl:
    """`text` as a `RouteUrl`, or RouteUrlError saying why not."""
    name, sep, rest = text.strip().partition(":")
    kind = {k: k for k in KINDS}.get(name)
    if kind is None or not sep:
        raise RouteUrlError(
            f"{text!r}: unknown endpoint type {name!r}; use udp-out:HOST:PORT, "
            "udp-in:BIND:PORT, tcp-out:HOST:PORT or tcp-in:BIND:PORT"
        )
    host, sep, port = rest.rpartition(":")
    if not sep or not host:
        raise RouteUrlError(f"{text!r}: expected {kind}:HOST:PORT")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise RouteUrlError(f"{text!r}: port must be a number from 1 to 65535, got {port!r}")
    return RouteUrl(kind, host, int(port))


@dataclass(frozen=True)
class Route:
    """One ground endpoint: where it is and what it may do."""

    url: RouteUrl
    policy: EndpointPolicy


class FlightControllerLink(Protocol):
    """What the router needs of the link to the flight controller (`link.MavLink`)."""

    def add_listener(self, listener: Callable[[MAVLinkMessage], None]) -> Callable[[], None]: ...

    def send_frame(self, frame: bytes) -> None: ...


Address = tuple[Any, ...]


class RouterService:
    """The router between the flight controller's link and its ground endpoints."""

    def __init__(
        self,
        link: FlightControllerLink,
        routes: Sequence[Route],
        *,
        fc_secret: bytes | None,
        vehicle_systems: Collection[int],
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """`fc_secret` is the secret the link signs with (None: it runs unsigned), and
        `vehicle_systems` the system ids of the autopilot and the companion; `clock` times the
        rate limits, `wall` gives the signing timestamps their start."""
        self._link = link
        self._routes = list(routes)
        self._fc_secret = fc_secret
        self._vehicle_systems = vehicle_systems
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._router: Router | None = None
        self._workers: list[_Worker] = []
        self._failed: dict[str, tuple[Route, str]] = {}
        self._remove_listener: Callable[[], None] | None = None

    def start(self) -> dict[str, str]:
        """Open every endpoint that can run and start routing; returns why each other one
        does not run, by name (a command endpoint on an unsigned link, a port taken...)."""
        opened: list[_Worker] = []
        for route in self._routes:
            refusal = command_refusal(route.policy, self._fc_secret)
            if refusal is not None:
                self._fail(route, refusal)
                continue
            worker = _make_worker(len(opened), route, self)
            try:
                worker.open()
            except OSError as exc:
                self._fail(route, f"cannot open {route.url}: {exc.strerror or exc}")
                continue
            opened.append(worker)
        self._router = Router(
            [w.route.policy for w in opened],
            fc_secret=self._fc_secret,
            start_timestamp=signing_timestamp(self._wall()),
            vehicle_systems=self._vehicle_systems,
        )
        self._workers = opened
        for worker in opened:
            worker.start()
            log.info("ground endpoint %s (%s, %s) running", worker.route.policy.name,
                     worker.route.url, worker.route.policy.mode)  # fmt: skip
        self._remove_listener = self._link.add_listener(self._from_fc)
        return {name: why for name, (_route, why) in self._failed.items()}

    def stop(self) -> None:
        """Stop routing and close every endpoint; safe to call twice."""
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
        for worker in self._workers:
            worker.stop()

    def _fail(self, route: Route, why: str) -> None:
        self._failed[route.policy.name] = (route, why)
        log.error("ground endpoint %s (%s) not started: %s", route.policy.name, route.url, why)

    # -- called from the link's reader thread and the endpoint threads -----------------------

    def _from_fc(self, msg: MAVLinkMessage) -> None:
        now = self._clock()
        with self._lock:
            assert self._router is not None
            deliveries = self._router.from_fc(msg, now)
        for index, frame in deliveries:
            self._workers[index].offer(frame)

    def inbound(self, index: int, data: bytes) -> Inbound:
        with self._lock:
            assert self._router is not None
            return self._router.from_endpoint(index, data)

    def restart_stream(self, index: int) -> None:
        with self._lock:
            assert self._router is not None
            self._router.restart_stream(index)

    def send_to_fc(self, frame: bytes) -> None:
        """LinkError when the flight controller's link is down."""
        self._link.send_frame(frame)

    # -- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, dict[str, Any]]:
        """Per endpoint: its URL, mode, state, peer, and frame counts out (to it) and in
        (from it) by what became of them."""
        with self._lock:
            dropped = self._router.dropped() if self._router is not None else {}
        out: dict[str, dict[str, Any]] = {}
        for worker in self._workers:
            name = worker.route.policy.name
            counts = worker.counts()
            drops = dropped.get(name, {"out": {}, "in": {}})
            out[name] = {
                "url": str(worker.route.url),
                "mode": worker.route.policy.mode,
                "state": "running",
                "peer": worker.peer_text(),
                "out": {**drops["out"], **counts["out"]},
                "in": {**drops["in"], **counts["in"]},
            }
        for name, (route, why) in self._failed.items():
            out[name] = {"url": str(route.url), "mode": route.policy.mode,
                         "state": f"not started: {why}", "peer": None, "out": {},
                         "in": {}}  # fmt: skip
        return out


def _make_worker(index: int, route: Route, service: RouterService) -> _Worker:
    if route.url.kind.startswith("udp"):
        return _UdpWorker(index, route, service)
    return _TcpWorker(index, route, service)


class _Worker(ABC):
    """One endpoint's thread, its queue of frames to send, and its counts."""

    def __init__(self, index: int, route: Route, service: RouterService) -> None:
        self.index = index
        self.route = route
        self._service = service
        self._name = route.policy.name
        self._queue: deque[bytes] = deque()
        self._lock = threading.Lock()
        self._counts: dict[str, dict[str, int]] = {"out": {}, "in": {}}
        self._logged: set[str] = set()
        self._closing = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread: threading.Thread | None = None
        self._peer: Address | None = None

    # -- life --------------------------------------------------------------------------------

    @abstractmethod
    def open(self) -> None:
        """Create the endpoint's socket(s); OSError when it cannot (a port in use...)."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"gcs-{self._name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._closing.set()
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        self._close_sockets()
        self._wake_r.close()
        self._wake_w.close()

    def _run(self) -> None:
        while not self._closing.is_set():
            try:
                self._step()
            except Exception:  # the endpoint must outlive anything its peer sends
                log.exception("ground endpoint %s: unexpected error", self._name)
                self._closing.wait(_WAIT_S)

    @abstractmethod
    def _step(self) -> None:
        """Wait (at most `_WAIT_S`) for the sockets or a wake-up, and do what is due."""

    @abstractmethod
    def _close_sockets(self) -> None: ...

    # -- frames to the endpoint (offer runs on the flight controller's reader thread) --------

    def offer(self, frame: bytes) -> None:
        """Queue `frame` for the endpoint without waiting; counted when it cannot be."""
        with self._lock:
            if self._peer is None:
                self._count_locked("out", "no-peer")
                return
            if len(self._queue) >= MAX_QUEUED:
                self._count_locked("out", "queue-full")
                return
            was_empty = not self._queue
            self._queue.append(frame)
        if was_empty:
            self._wake()

    def _take(self) -> list[bytes]:
        with self._lock:
            frames = list(self._queue)
            self._queue.clear()
        return frames

    def _discard_queue(self, reason: str) -> None:
        with self._lock:
            for _ in self._queue:
                self._count_locked("out", reason)
            self._queue.clear()

    def _wake(self) -> None:
        # BlockingIOError: a wake-up is pending already; OSError: the worker is closing.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(256):
                pass

    # -- frames from the endpoint ------------------------------------------------------------

    def _to_fc(self, frames: list[bytes]) -> None:
        for frame in frames:
            try:
                self._service.send_to_fc(frame)
            except LinkError as exc:
                self._count("in", "fc-link-down", str(exc))
            else:
                self._count("in", "forwarded")

    # -- counts ------------------------------------------------------------------------------

    def counts(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {way: dict(c) for way, c in self._counts.items()}

    def peer_text(self) -> str | None:
        peer = self._peer
        return None if peer is None else f"{peer[0]}:{peer[1]}"

    def _count(self, way: str, reason: str, detail: str = "") -> None:
        with self._lock:
            self._count_locked(way, reason)
        if detail and reason not in self._logged:
            self._logged.add(reason)
            log.warning("ground endpoint %s: %s: %s (logged once; `skycourier status` "
                        "counts them)", self._name, reason, detail)  # fmt: skip

    def _count_locked(self, way: str, reason: str) -> None:
        counts = self._counts[way]
        counts[reason] = counts.get(reason, 0) + 1


class _UdpWorker(_Worker):
    """udp-out (a fixed address) or udp-in (the last sender that vouched for itself)."""

    def open(self) -> None:
        url = self.route.url
        family, _type, _proto, _name, address = socket.getaddrinfo(
            url.host, url.port, type=socket.SOCK_DGRAM
        )[0]
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        if url.kind == "udp-in":
            try:
                # No SO_REUSEADDR: another program could then take the ground's datagrams.
                self._sock.bind(address)
            except OSError:
                self._sock.close()
                raise
        else:
            self._peer = address

    def _close_sockets(self) -> None:
        self._sock.close()

    def _step(self) -> None:
        ready, _, _ = select.select([self._sock, self._wake_r], [], [], _WAIT_S)
        if self._wake_r in ready:
            self._drain_wake()
        if self._sock in ready:
            self._receive()
        self._send()

    def _receive(self) -> None:
        for _ in range(_UDP_READS_PER_WAKE):
            try:
                # One byte more than the core takes: a longer datagram arrives cut, and is
                # still seen as too long.
                data, sender = self._sock.recvfrom(MAX_DATAGRAM + 1)
            except BlockingIOError:
                return
            except OSError as exc:  # e.g. an ICMP error reported on the socket
                self._count("in", "receive-error", exc.strerror or str(exc))
                return
            inbound = self._service.inbound(self.index, data)
            if inbound.sender_valid and self.route.url.kind == "udp-in" and sender != self._peer:
                log.info("ground endpoint %s: answering %s:%d", self._name, *sender[:2])
                self._peer = sender
            self._to_fc(inbound.to_fc)

    def _send(self) -> None:
        peer = self._peer
        for frame in self._take():
            assert peer is not None  # `offer` queues nothing before there is one
            try:
                self._sock.sendto(frame, peer)
            except OSError as exc:
                self._count("out", "send-failed", exc.strerror or str(exc))
            else:
                self._count("out", "sent")


class _TcpWorker(_Worker):
    """tcp-out (connects, and again after a pause) or tcp-in (one client, the newest)."""

    def open(self) -> None:
        self._listener: socket.socket | None = None
        self._client: socket.socket | None = None
        self._pending = bytearray()
        self._next_connect = 0.0
        self._backoff = iter(_RECONNECT_S)
        if self.route.url.kind == "tcp-in":
            url = self.route.url
            listener = socket.create_server((url.host, url.port), reuse_port=False)
            listener.setblocking(False)
            self._listener = listener

    def _close_sockets(self) -> None:
        if self._listener is not None:
            self._listener.close()
        self._drop_client("")

    def _step(self) -> None:
        if self.route.url.kind == "tcp-out" and self._client is None:
            self._connect()
        readers = [self._wake_r]
        readers += [s for s in (self._listener, self._client) if s is not None]
        writers = [self._client] if self._client is not None and self._pending else []
        ready, _, _ = select.select(readers, writers, [], _WAIT_S)
        if self._wake_r in ready:
            self._drain_wake()
        if self._listener is not None and self._listener in ready:
            self._accept()
        if self._client is not None and self._client in ready:
            self._receive()
        if self._client is not None:
            self._send()

    def _connect(self) -> None:
        if time.monotonic() < self._next_connect:
            return
        url = self.route.url
        try:
            sock = socket.create_connection((url.host, url.port), timeout=_CONNECT_TIMEOUT_S)
        except OSError as exc:
            self._next_connect = time.monotonic() + next(self._backoff, _RECONNECT_S[-1])
            self._count("out", "connect-failed", f"{url}: {exc.strerror or exc}")
            return
        self._backoff = iter(_RECONNECT_S)
        self._adopt(sock, sock.getpeername())

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, address = self._listener.accept()
        except OSError:
            return
        if self._client is not None:
            self._drop_client("a new connection replaces it")
        self._adopt(sock, address)

    def _adopt(self, sock: socket.socket, address: Address) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._service.restart_stream(self.index)
        self._client = sock
        self._pending.clear()
        self._peer = address
        log.info("ground endpoint %s: connected to %s:%d", self._name, *address[:2])

    def _drop_client(self, why: str) -> None:
        if self._client is None:
            return
        if why:
            log.info("ground endpoint %s: connection to %s closed: %s", self._name,
                     self.peer_text(), why)  # fmt: skip
        self._peer = None
        self._client.close()
        self._client = None
        self._pending.clear()
        self._discard_queue("send-failed")

    def _receive(self) -> None:
        assert self._client is not None
        try:
            data = self._client.recv(_TCP_READ)
        except BlockingIOError:
            return
        except OSError as exc:
            self._drop_client(exc.strerror or str(exc))
            return
        if not data:
            self._drop_client("closed by the ground station")
            return
        self._to_fc(self._service.inbound(self.index, data).to_fc)

    def _send(self) -> None:
        assert self._client is not None
        if len(self._pending) < _TCP_BUFFER:
            frames = self._take()
            for frame in frames:
                self._pending += frame
            if frames:
                with self._lock:
                    counts = self._counts["out"]
                    counts["sent"] = counts.get("sent", 0) + len(frames)
        if not self._pending:
            return
        try:
            sent = self._client.send(self._pending)
        except BlockingIOError:
            return
        except OSError as exc:
            self._drop_client(exc.strerror or str(exc))
            return
        del self._pending[:sent]
