"""The A7670's serial port: the thin I/O adapter around the sans-I/O `AtEngine`.

One thread owns the port. It writes what the engine wants sent, reads whatever the module has
sent and feeds it to the engine, and asks the engine for timeouts; it never interprets a byte
itself. Other threads talk to the module through `call`, which queues an `AtCommand` and blocks
on a future until the engine completes it (one command in flight, FIFO behind it, as the
manual requires: "wait for the final result code before sending the next command",
A76XX AT Command Manual V1.09 §1.5.2). A command's deadline starts when it is sent, not
when it is queued: one queued behind a 16 s `AT+COPS?` waits its turn, then has its own
time. The engine times every sent command out, so `call` only gives up by itself if the
port thread stops making progress; a command given up before it was sent is withdrawn, so
it never reaches the module as an orphan nobody waits for. URCs and assembled MQTT
messages go to subscriber callbacks, which run on the port thread and therefore must be
quick and must not `call` (that would wait for the very thread that is running them; it
raises instead). Errors and logs name a command without its parameters (`command_label`,
`redact`): command lines carry passwords and PINs.

It never dies of its port: a vanished device (USB unplug) ends every pending command with an
error of kind "reset", then the port is reopened by path with backoff, like the GPS driver.
Errors name the port and the cause (permission, missing device, busy).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

import serial

from companion.modem.at_engine import (
    AtCommand,
    AtEngine,
    AtResponse,
    MqttMessage,
    Urc,
    command_label,
)
from companion.serial_errors import serial_cause

log = logging.getLogger(__name__)

_POLL_S = 0.05  # longest sleep between engine timeout polls
_REOPEN_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
_CALL_SLACK_S = 5.0  # how much longer `call` waits than the engine's own timeouts
_STALL_S = 10.0  # a port thread that has not stepped for this long is stuck (reopen waits 5 s)

UrcCallback = Callable[[Urc], None]
MqttCallback = Callable[[MqttMessage], None]


class ChannelError(Exception):
    """The command could not be sent at all: the port is closed or the channel stopped."""


class _Call:
    """A caller's command on its way: queued, then sent (the deadline starts), then done."""

    def __init__(self, command: AtCommand) -> None:
        self.command = command
        self.future: Future[AtResponse] = Future()
        self.sent = threading.Event()
        self.cancelled = False


class AtChannel:
    """AT commands to a module on `port` (e.g. /dev/ttyUSB2 or /dev/serial0), 115200 8N1."""

    def __init__(
        self,
        port: str,
        *,
        baud: int = 115200,
        clock: Callable[[], float] = time.monotonic,
        echo_expected: bool = True,
    ) -> None:
        self.port = port
        self.baud = baud
        self.clock = clock
        self.engine = AtEngine(echo_expected=echo_expected)
        self.error: str | None = None  # why the port is closed, None while open
        self._serial: serial.Serial | None = None
        self._inbox: deque[_Call | str] = deque()
        self._pending: deque[_Call] = deque()
        self._last_step = time.monotonic()
        self._urc_callbacks: list[UrcCallback] = []
        self._mqtt_callbacks: list[MqttCallback] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._opened = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread: threading.Thread | None = None

    # -- public API ------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """Whether the port is open now (it is reopened by itself after a failure)."""
        return self._serial is not None

    def start(self) -> AtChannel:
        """Run the port thread; it opens the port (and keeps reopening it)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"at {self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread, end pending commands, close the port."""
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        self._close("channel stopped", logging.DEBUG)
        self._fail_inbox("channel stopped")
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> AtChannel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_open(self, timeout_s: float) -> bool:
        """Block until the port is open (True) or `timeout_s` passes (False)."""
        return self._opened.wait(timeout_s)

    def subscribe_urc(self, callback: UrcCallback) -> None:
        """Call `callback(urc)` on the port thread for every URC the engine reports."""
        with self._lock:
            self._urc_callbacks.append(callback)

    def unsubscribe_urc(self, callback: UrcCallback) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._urc_callbacks.remove(callback)

    def subscribe_mqtt(self, callback: MqttCallback) -> None:
        """Call `callback(message)` on the port thread for every incoming MQTT message."""
        with self._lock:
            self._mqtt_callbacks.append(callback)

    def unsubscribe_mqtt(self, callback: MqttCallback) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._mqtt_callbacks.remove(callback)

    def call(self, command: AtCommand) -> AtResponse:
        """Send `command` and block until the engine completes it (ok, error or timeout).

        The wait has no bound while the command is queued and the port thread works through
        the commands before it (each has its own timeout in the engine); once it is sent,
        the engine's timeout plus a margin bounds it. Raises `ChannelError` when the port is
        not open, when the channel stops, or when the port thread is stuck, and
        RuntimeError when called from the port thread itself (a URC callback must hand work
        to another thread).
        """
        label = command_label(command.line)
        if threading.current_thread() is self._thread:
            raise RuntimeError(
                f"AtChannel.call({label}) from the port thread would deadlock: "
                "hand the work to another thread"
            )
        if self._stop.is_set():
            raise ChannelError(f"{self.port}: channel stopped")
        if self._serial is None:
            raise ChannelError(f"{self.port}: port not open ({self.error or 'not started'})")
        pending = _Call(command)
        with self._lock:
            self._inbox.append(pending)
        self._wake()
        limit = command.timeout_s + _CALL_SLACK_S
        if command.result_urc is not None:
            limit += command.urc_timeout_s
        deadline: float | None = None
        while True:
            try:
                return pending.future.result(0.2)
            except FutureTimeout:
                pass
            now = time.monotonic()
            if deadline is None and pending.sent.is_set():
                deadline = now + limit  # counted from (about) when it was sent
            if deadline is not None and now > deadline:
                raise ChannelError(
                    f"{self.port}: no completion for {label} within {limit:.0f} s of sending "
                    "it (port thread stalled)"
                )
            if deadline is None and self._stalled(now):
                self._withdraw(pending)
                raise ChannelError(
                    f"{self.port}: {label} not sent: the port thread has not run for "
                    f"{now - self._last_step:.0f} s (withdrawn)"
                )

    def _stalled(self, now: float) -> bool:
        thread = self._thread
        dead = thread is None or not thread.is_alive()
        return dead or now - self._last_step > _STALL_S

    def _withdraw(self, pending: _Call) -> None:
        """Make sure a command given up before it was sent is never sent."""
        with self._lock:
            pending.cancelled = True
            if pending in self._inbox:
                self._inbox.remove(pending)

    def reset_engine(self, reason: str = "module reset") -> None:
        """End every queued and in-flight command (error kind "reset"): the module rebooted and
        will never answer them. Echo is on again after a reboot; the engine copes with both."""
        with self._lock:
            self._inbox.append(reason)
        self._wake()

    # -- the port thread -------------------------------------------------------------------

    def _run(self) -> None:
        backoff = iter(_REOPEN_BACKOFF_S)
        while not self._stop.is_set():
            self._last_step = time.monotonic()
            if self._serial is None:
                if not self._open():
                    self._drain_while_closed()
                    self._stop.wait(next(backoff, _REOPEN_BACKOFF_S[-1]))
                    continue
                backoff = iter(_REOPEN_BACKOFF_S)
            try:
                self._step()
            except (serial.SerialException, OSError) as exc:
                self._close(f"{self.port}: {serial_cause(exc)}")
            except Exception:  # a bug must not silence the modem: log it and go on
                log.exception("%s: unexpected error in the AT port thread", self.port)

    def _open(self) -> bool:
        try:
            self._serial = serial.Serial(self.port, self.baud, timeout=0, exclusive=True)
        except (serial.SerialException, OSError) as exc:
            message = f"cannot open {self.port}: {serial_cause(exc)}"
            if message != self.error:
                log.warning("%s", message)
            self.error = message
            return False
        if self.error is not None:
            log.info("%s: port open again", self.port)
        self.error = None
        self._opened.set()
        return True

    def _step(self) -> None:
        assert self._serial is not None
        self._take_inbox()
        self._send_next()
        readable, _, _ = select.select([self._serial.fileno(), self._wake_r], [], [], _POLL_S)
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
        if self._serial.fileno() in readable:
            data = self._serial.read(self._serial.in_waiting or 1)
            if not data:
                # select said readable but nothing came: the device is gone (pty closed)
                raise serial.SerialException(
                    "device reports readiness to read but returned no data"
                )
            self._dispatch(self.engine.receive(data, self.clock()))
        self._dispatch(self.engine.poll(self.clock()))
        self._send_next()

    def _send_next(self) -> None:
        """Write what the engine wants sent; a command that goes now starts its deadline."""
        before = self.engine.in_flight
        data = self.engine.outgoing(self.clock())
        sent = self.engine.in_flight
        if sent is not None and sent is not before:
            for pending in self._pending:
                if pending.command is sent:
                    pending.sent.set()
                    break
        self._write(data)

    def _take_inbox(self) -> None:
        with self._lock:
            withdrawn = [p for p in self._pending if p.cancelled]
        for pending in withdrawn:
            # Given up by its caller while queued in the engine: it must never go out.
            if self.engine.cancel(pending.command):
                self._pending.remove(pending)
        while True:
            with self._lock:
                if not self._inbox:
                    return
                item = self._inbox.popleft()
            if isinstance(item, str):
                self._dispatch(self.engine.abort_all(item))
                continue
            self._pending.append(item)
            self.engine.submit(item.command)

    def _dispatch(self, events: list[AtResponse | Urc | MqttMessage]) -> None:
        for event in events:
            if isinstance(event, AtResponse):
                self._complete(event)
            elif isinstance(event, Urc):
                for urc_callback in self._snapshot(self._urc_callbacks):
                    self._safely(urc_callback, event)
            elif isinstance(event, MqttMessage):
                for mqtt_callback in self._snapshot(self._mqtt_callbacks):
                    self._safely(mqtt_callback, event)

    def _complete(self, response: AtResponse) -> None:
        """Resolve the future of the command this response belongs to (FIFO; by identity
        first, so equal commands queued twice resolve in order)."""
        match = next((p for p in self._pending if p.command is response.command), None)
        if match is None:
            match = next((p for p in self._pending if p.command == response.command), None)
        if match is None:
            log.warning("%s: answer to %s, which nobody waits for: %s", self.port,
                        command_label(response.command.line), response.final)  # fmt: skip
            return
        self._pending.remove(match)
        if not match.future.done():
            match.future.set_result(response)

    def _snapshot(self, callbacks: list) -> list:
        with self._lock:
            return list(callbacks)

    def _safely(self, callback: Callable[[object], None], event: object) -> None:
        try:
            callback(event)
        except Exception:
            log.exception("%s: subscriber %r failed on %r", self.port, callback, event)

    def _write(self, data: bytes) -> None:
        if data and self._serial is not None:
            self._serial.write(data)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\x00")

    def _drain_while_closed(self) -> None:
        """While the port is closed, nothing can be sent: fail what callers queued."""
        self._fail_inbox(f"{self.port}: port not open ({self.error})")

    def _fail_inbox(self, reason: str) -> None:
        with self._lock:
            items, self._inbox = list(self._inbox), deque()
        for item in items:
            if not isinstance(item, str) and not item.future.done():
                item.future.set_exception(ChannelError(reason))

    def _close(self, reason: str, level: int = logging.WARNING) -> None:
        port, self._serial = self._serial, None
        self._opened.clear()
        if port is None:
            return
        log.log(level, "%s", reason)
        self.error = reason
        with contextlib.suppress(serial.SerialException, OSError):
            port.close()
        # The module will never answer what was in flight on the old port.
        self._dispatch(self.engine.abort_all(f"port closed: {reason}"))
