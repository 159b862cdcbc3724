"""Keeping the daemon's subsystems running: start each, restart a failed one with backoff
while the others go on, and say how each one is.

A subsystem (`Part`) is started by its own function, which returns a handle or raises (a
`StartError` when it can say why in words: a missing device, a model that will not load); it
counts as failed when starting raises, or later when its `alive` check says it stopped (a
thread that died, a capture that ended). A failed part is stopped (best effort), then started
again after a backoff that doubles from `base_s` up to `max_s` with each failure in a row and
resets once the part has run for `settled_s`. Nothing a part does can stop the supervisor or
another part: every call into a part is guarded and its error becomes that part's health.

The decisions (`Supervisor.step`) take the time as an argument and read no clock, so the
restart policy is tested without sleeping; `run` is the thin loop that calls it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

RUNNING, FAILED, OFF, STOPPED = "running", "failed", "off", "stopped"


class StartError(Exception):
    """A part cannot start, for the reason in the message (what is missing and where): one
    log line, no traceback, and the part is retried like any other failure, so that what an
    operator fixes meanwhile (a device plugged in, a model built) is taken up."""


@dataclass(frozen=True)
class Part:
    """A subsystem: `start()` returns its handle (None: not configured, so off), `stop(h)`
    stops it, `alive(h)` says whether it still runs, and `describe(h)` how a running one is
    doing (a receiver still being looked for is running, but not well)."""

    name: str
    start: Callable[[], Any]
    stop: Callable[[Any], None]
    alive: Callable[[Any], bool] = lambda _handle: True
    describe: Callable[[Any], str] = lambda _handle: ""


@dataclass(frozen=True)
class Health:
    """How one part is: `state` (running, failed, off, stopped), why, since when, and how
    many times it was restarted."""

    name: str
    state: str
    detail: str = ""
    since: float = 0.0
    restarts: int = 0


@dataclass
class _Slot:
    part: Part
    handle: Any = None
    state: str = STOPPED
    detail: str = ""
    since: float = 0.0
    failures: int = 0
    restarts: int = 0
    retry_at: float | None = None
    started_at: float | None = None


class Supervisor:
    """Runs `parts` (started in order, stopped in reverse)."""

    def __init__(
        self,
        parts: Sequence[Part],
        *,
        base_s: float = 1.0,
        max_s: float = 60.0,
        settled_s: float = 60.0,
    ) -> None:
        self._slots = [_Slot(p) for p in parts]
        self.base_s = base_s
        self.max_s = max_s
        self.settled_s = settled_s
        self._lock = threading.Lock()

    def handle(self, name: str) -> Any:
        """The running handle of part `name`, or None (off, failed or stopped)."""
        with self._lock:
            slot = self._slot(name)
            return slot.handle if slot.state == RUNNING else None

    def health(self) -> list[Health]:
        with self._lock:
            return [
                Health(s.part.name, s.state, self._detail(s), s.since, s.restarts)
                for s in self._slots
            ]

    def backoff_s(self, failures: int) -> float:
        """The wait before the next start after `failures` failures in a row."""
        return min(self.max_s, self.base_s * 2 ** max(0, failures - 1))

    def start_all(self, now: float) -> None:
        """Start every part once (a part that fails is retried by `step`)."""
        with self._lock:
            for slot in self._slots:
                self._start(slot, now)

    def step(self, now: float) -> None:
        """Notice parts that stopped running, and start again those whose backoff is over."""
        with self._lock:
            for slot in self._slots:
                if slot.state == RUNNING:
                    if not self._alive(slot):
                        self._fail(slot, now, "stopped running")
                    elif (
                        slot.failures
                        and slot.started_at is not None
                        and now - slot.started_at >= self.settled_s
                    ):
                        slot.failures = 0  # it has run long enough: the backoff starts over
                elif slot.state == FAILED and slot.retry_at is not None and now >= slot.retry_at:
                    slot.restarts += 1
                    self._start(slot, now)

    def stop_all(self, now: float) -> None:
        """Stop every running part, newest first."""
        with self._lock:
            for slot in reversed(self._slots):
                if slot.state == RUNNING:
                    self._stop(slot)
                slot.state, slot.detail, slot.since, slot.retry_at = STOPPED, "", now, None

    def run(self, stop: threading.Event, clock: Callable[[], float], tick_s: float,
            beat: Callable[[], None] | None = None) -> None:  # fmt: skip
        """Call `step` every `tick_s` until `stop` is set (`beat` after each, for a
        watchdog that must know the supervisor itself is alive)."""
        while not stop.wait(tick_s):
            self.step(clock())
            if beat is not None:
                beat()

    # -- inside the lock ----------------------------------------------------------------------

    def _slot(self, name: str) -> _Slot:
        for slot in self._slots:
            if slot.part.name == name:
                return slot
        raise KeyError(name)

    def _start(self, slot: _Slot, now: float) -> None:
        name = slot.part.name
        try:
            handle = slot.part.start()
        except StartError as exc:
            self._fail(slot, now, f"cannot start: {exc}")
            return
        except Exception as exc:
            log.exception("%s: failed to start", name)
            self._fail(slot, now, f"failed to start: {type(exc).__name__}: {exc}")
            return
        if handle is None:
            slot.state, slot.detail, slot.since, slot.retry_at = OFF, "not configured", now, None
            return
        slot.handle, slot.state, slot.detail, slot.since = handle, RUNNING, "", now
        slot.started_at, slot.retry_at = now, None
        if slot.restarts:
            log.warning("%s: running again (restart %d)", name, slot.restarts)

    def _fail(self, slot: _Slot, now: float, why: str) -> None:
        if slot.handle is not None:
            self._stop(slot)
        slot.failures += 1
        delay = self.backoff_s(slot.failures)
        slot.state, slot.detail, slot.since = FAILED, why, now
        slot.retry_at = now + delay
        log.error("%s: %s; starting it again in %.0f s", slot.part.name, why, delay)

    def _stop(self, slot: _Slot) -> None:
        try:
            slot.part.stop(slot.handle)
        except Exception:
            log.exception("%s: failed to stop", slot.part.name)
        slot.handle = None

    def _detail(self, slot: _Slot) -> str:
        if slot.state != RUNNING:
            return slot.detail
        try:
            return slot.part.describe(slot.handle)
        except Exception as exc:
            return f"cannot tell: {type(exc).__name__}: {exc}"

    def _alive(self, slot: _Slot) -> bool:
        try:
            return bool(slot.part.alive(slot.handle))
        except Exception:
            log.exception("%s: its health check failed", slot.part.name)
            return False
