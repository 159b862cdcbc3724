"""systemd's service notification protocol, and a watchdog that pings only while we make progress.

`skycourier run` is a `Type=notify` service with `WatchdogSec=` (deploy/skycourier.service). The
protocol (sd_notify(3)) is small enough to speak without libsystemd: newline-separated
`KEY=VALUE` assignments in one datagram to the AF_UNIX socket named by `$NOTIFY_SOCKET`, a
filesystem path or, starting with "@", an abstract socket. We send `READY=1` once the autopilot
link is up, `STATUS=...` lines for `systemctl status`, `STOPPING=1` on shutdown, and
`WATCHDOG=1` pings. Outside systemd (`$NOTIFY_SOCKET` unset) every send is a no-op.

A watchdog that pings from a timer thread proves only that the timer thread runs. Here the
daemon's critical loops register with `Watchdog` and beat each time round; the pings go out
(every `WATCHDOG_USEC` / 2, as sd_watchdog_enabled(3) advises) only while every registered
loop has beaten within its allowed staleness. When one is stuck the pings stop and a STATUS
line names it, so systemd kills the daemon (SIGABRT, then the unit's `Restart=`) instead of
keeping a hung companion alive. Threads the daemon does not own are watched through a probe,
a cheap question asked on every tick ("does the autopilot link's reader still run?").

The decision is a sans-I/O core, `Liveness`, fed times and beats and asked for a verdict;
`Notifier` (the socket) and `Watchdog` (the ticker thread) are thin layers around it.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType

log = logging.getLogger(__name__)

#: How long one notification may wait for room in the service manager's socket.
_SEND_TIMEOUT_S = 0.5


# -- the decision core (sans-I/O) --------------------------------------------------------------


@dataclass(frozen=True)
class Stuck:
    """A registered loop that has not beaten within its allowed staleness."""

    name: str
    age_s: float
    max_stale_s: float


@dataclass(frozen=True)
class Verdict:
    """What the watchdog does on one tick: ping, and the STATUS line to send (None: none)."""

    ping: bool
    stuck: tuple[Stuck, ...]
    status: str | None


class Liveness:
    """Which critical loops have made progress recently; pure bookkeeping, times passed in.

    A loop is registered with the longest pause it may take between beats (`max_stale_s`);
    registering counts as its first beat. The verdict says ping only when no registered loop
    is stale: a loop that never beats again is, after `max_stale_s`, stuck for good, and a
    missing beat never counts as progress.
    """

    def __init__(self) -> None:
        self._max_stale: dict[str, float] = {}
        self._last_beat: dict[str, float] = {}
        self._was_stuck: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """The registered loops, in registration order."""
        return tuple(self._max_stale)

    def register(self, name: str, max_stale_s: float, now: float) -> None:
        """Watch `name` from `now` on; ValueError for a name taken or a staleness not > 0."""
        if not name or name in self._max_stale:
            raise ValueError(f"watchdog loop name {name!r} is empty or already registered")
        if not (math.isfinite(max_stale_s) and max_stale_s > 0):
            raise ValueError(
                f"watchdog loop {name!r}: max_stale_s must be a positive number, got {max_stale_s}"
            )
        self._max_stale[name] = max_stale_s
        self._last_beat[name] = now

    def unregister(self, name: str) -> None:
        """Stop watching `name` (a loop that ended on purpose); unknown names are ignored."""
        self._max_stale.pop(name, None)
        self._last_beat.pop(name, None)

    def beat(self, name: str, now: float) -> None:
        """`name` made progress at `now`; ValueError for a loop never registered."""
        if name not in self._last_beat:
            raise ValueError(f"watchdog loop {name!r} is not registered")
        self._last_beat[name] = max(now, self._last_beat[name])

    def stuck(self, now: float) -> tuple[Stuck, ...]:
        """The loops whose last beat is older than their allowed staleness at `now`."""
        return tuple(
            Stuck(name, now - self._last_beat[name], limit)
            for name, limit in self._max_stale.items()
            if now - self._last_beat[name] > limit
        )

    def verdict(self, now: float) -> Verdict:
        """Ping only if every loop is live. While any is stuck, a STATUS line naming them
        (every tick, with their ages); once they are all live again, one line saying so."""
        stuck = self.stuck(now)
        names = tuple(s.name for s in stuck)
        status = None
        if stuck:
            status = "watchdog pings stopped, stuck: " + ", ".join(
                f"{s.name} (no progress for {s.age_s:.1f} s, limit {s.max_stale_s:g} s)"
                for s in stuck
            )
        elif self._was_stuck:
            status = "watchdog pings resumed: " + ", ".join(self._was_stuck) + " live again"
        self._was_stuck = names
        return Verdict(ping=not stuck, stuck=stuck, status=status)


# -- the protocol's inputs from the environment ------------------------------------------------


def notify_address(value: str) -> str:
    """The AF_UNIX address for a `$NOTIFY_SOCKET` value: an absolute path, or "@name" for the
    abstract socket "name" (returned with its leading NUL). ValueError for anything else
    (systemd's vsock: form is for virtual machines, not for this daemon)."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/") and "\0" not in value:
        return value
    raise ValueError(
        f"NOTIFY_SOCKET={value!r} is neither an absolute path nor an abstract socket (@name)"
    )


def watchdog_interval_s(env: Mapping[str, str], pid: int) -> float | None:
    """The service's watchdog timeout in seconds from `WATCHDOG_USEC`, or None when there is
    none for process `pid` (unset, or `WATCHDOG_PID` names another process). ValueError for a
    value that is not a positive whole number of microseconds, or a `WATCHDOG_PID` that is
    not a process id."""
    usec = env.get("WATCHDOG_USEC")
    if usec is None:
        return None
    owner = env.get("WATCHDOG_PID")
    if owner is not None:
        if not owner.isdigit() or int(owner) <= 0:
            raise ValueError(f"WATCHDOG_PID={owner!r} is not a process id")
        if int(owner) != pid:
            return None
    if not usec.isdigit() or int(usec) <= 0:
        raise ValueError(f"WATCHDOG_USEC={usec!r} is not a positive number of microseconds")
    return int(usec) / 1e6


def one_line(text: str) -> str:
    """`text` made safe as one assignment's value: line breaks and NULs would end the
    assignment and let the rest of the text (say an autopilot message) pose as another one."""
    return " ".join(text.replace("\0", " ").splitlines())


# -- the socket --------------------------------------------------------------------------------


class Notifier:
    """Sends notifications to the service manager; a no-op without an address.

    A send never raises: the daemon's work matters more than telling systemd about it. A
    failure is logged as a warning once, then at debug level until a send succeeds again (a
    service manager gone away must not flood the log).
    """

    def __init__(self, address: str | None) -> None:
        self.address = address
        self.sent = 0
        self.failed = 0
        self._failing = False
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> Notifier:
        """From `$NOTIFY_SOCKET`; a disabled notifier (with one log line saying why) when it is
        unset or unusable."""
        env = os.environ if env is None else env
        value = env.get("NOTIFY_SOCKET")
        if not value:
            log.debug("not started by systemd with Type=notify (NOTIFY_SOCKET unset)")
            return cls(None)
        try:
            return cls(notify_address(value))
        except ValueError as exc:
            log.error("systemd notifications off: %s", exc)
            return cls(None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send `KEY=VALUE` assignments in one datagram; True if it went out."""
        if self.address is None:
            return False
        data = "\n".join(assignments).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(_SEND_TIMEOUT_S)
                sock.sendto(data, self.address)
        except OSError as exc:
            with self._lock:
                self.failed += 1
                first, self._failing = not self._failing, True
            log.log(logging.WARNING if first else logging.DEBUG,
                    "cannot notify systemd at %r (%s): %s", self.address.replace("\0", "@"),
                    assignments[0].split("=", 1)[0] if assignments else "", exc)  # fmt: skip
            return False
        with self._lock:
            self.sent += 1
            self._failing = False
        return True

    def ready(self, status: str | None = None) -> bool:
        extra = () if status is None else (f"STATUS={one_line(status)}",)
        return self.send("READY=1", *extra)

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={one_line(text)}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        extra = () if status is None else (f"STATUS={one_line(status)}",)
        return self.send("STOPPING=1", *extra)


# -- the ticker --------------------------------------------------------------------------------


Beat = Callable[[], None]


class Watchdog:
    """Pings systemd's watchdog every `interval_s` / 2 while every registered loop is live.

    Use as a context manager: entering starts the ticker thread (only when systemd asked for a
    watchdog), leaving stops it. `register` returns the beat function a loop calls each time
    round; `watch` asks a probe on every tick instead, for threads the daemon does not own.
    Without a watchdog (`interval_s` None) registering and beating still work and cost
    nothing, so the daemon's code is the same under systemd and in a terminal.
    """

    def __init__(
        self,
        notifier: Notifier,
        interval_s: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s is not None and not (math.isfinite(interval_s) and interval_s > 0):
            raise ValueError(f"watchdog interval must be a positive number, got {interval_s}")
        self.notifier = notifier
        self.interval_s = interval_s
        self._clock = clock
        self._core = Liveness()
        self._probes: dict[str, Callable[[], bool]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping_sent = False
        self._stuck: tuple[Stuck, ...] = ()

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> Watchdog:
        """From `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`. A watchdog value that
        cannot be read is logged as an error and no pings are sent, so systemd, which set it,
        restarts the daemon and the log says why."""
        env = os.environ if env is None else env
        notifier = Notifier.from_environment(env)
        try:
            interval = watchdog_interval_s(env, os.getpid())
        except ValueError as exc:
            log.error("systemd watchdog pings off: %s", exc)
            interval = None
        if interval is not None and not notifier.enabled:
            log.warning("WATCHDOG_USEC is set but NOTIFY_SOCKET is not: no watchdog pings")
            interval = None
        if interval is not None:
            log.info("systemd watchdog: %g s, pinging every %g s while every loop is live",
                     interval, interval / 2)  # fmt: skip
        return cls(notifier, interval)

    @property
    def tick_s(self) -> float | None:
        """Seconds between ticks (pings), or None without a watchdog."""
        return None if self.interval_s is None else self.interval_s / 2

    def wake_period(self, period_s: float) -> float:
        """How often a loop with its own `period_s` must wake to keep the watchdog fed."""
        tick = self.tick_s
        return period_s if tick is None else min(period_s, tick)

    def max_stale(self, wake_s: float) -> float:
        """The staleness to allow a loop that wakes every `wake_s`: the whole watchdog
        timeout, and at least three wake-ups so one late wake-up is not a hang."""
        return max(self.interval_s or 0.0, 3 * wake_s)

    def register(self, name: str, max_stale_s: float) -> Beat:
        """Watch loop `name`, which must beat at least every `max_stale_s` seconds."""
        with self._lock:
            self._core.register(name, max_stale_s, self._clock())

        def beat() -> None:
            with self._lock:
                if name in self._core.names:
                    self._core.beat(name, self._clock())

        return beat

    def watch(self, name: str, probe: Callable[[], bool], max_stale_s: float) -> None:
        """Watch a thread through `probe`, asked on every tick: True means it is making
        progress. A probe that says False (or raises) for longer than `max_stale_s` is stuck."""
        with self._lock:
            self._core.register(name, max_stale_s, self._clock())
            self._probes[name] = probe

    def unregister(self, name: str) -> None:
        with self._lock:
            self._core.unregister(name)
            self._probes.pop(name, None)

    @property
    def stuck(self) -> tuple[Stuck, ...]:
        """The loops found stuck on the latest tick."""
        return self._stuck

    def ready(self, status: str) -> None:
        self.notifier.ready(status)

    def status(self, text: str) -> None:
        """A STATUS line; while a loop is stuck it leads with that, which matters more."""
        stuck = self._stuck
        if stuck:
            text = "STUCK: " + ", ".join(s.name for s in stuck) + "; " + text
        self.notifier.status(text)

    def stopping(self, status: str = "stopping") -> None:
        """Tell systemd the daemon is shutting down (once); pings stop with it."""
        if not self._stopping_sent:
            self._stopping_sent = True
            self._stop.set()
            self.notifier.stopping(status)

    def tick(self) -> Verdict:
        """One round: ask the probes, decide, send the STATUS line and the ping it calls for."""
        with self._lock:
            probes = list(self._probes.items())
        live = [name for name, probe in probes if self._ask(name, probe)]
        with self._lock:
            now = self._clock()
            for name in live:
                if name in self._core.names:
                    self._core.beat(name, now)
            verdict = self._core.verdict(now)
        names = [s.name for s in verdict.stuck]
        if names != [s.name for s in self._stuck]:  # the log says each change once
            log.log(logging.ERROR if names else logging.WARNING, "%s", verdict.status)
        self._stuck = verdict.stuck
        if verdict.status is not None:
            self.notifier.status(verdict.status)
        if verdict.ping and not self._stop.is_set():
            self.notifier.watchdog()
        return verdict

    def _ask(self, name: str, probe: Callable[[], bool]) -> bool:
        try:
            return bool(probe())
        except Exception:
            log.exception("watchdog probe for %s failed: counted as no progress", name)
            return False

    def _run(self) -> None:
        tick = self.tick_s
        assert tick is not None
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(tick)

    def __enter__(self) -> Watchdog:
        if self.interval_s is not None and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
