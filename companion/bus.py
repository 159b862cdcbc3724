"""The in-process message bus: typed, immutable messages between subsystems (PX4 uORB spirit).

Subsystems never call each other; they publish small frozen dataclasses (`VehicleState`,
`MissionEvent`, ...) and subscribe to the types they care about. That keeps each one testable
alone and lets the daemon add a listener (recorder, telemetry uplink) without touching the
publisher.

Rules the bus enforces, and why:

- Messages must be frozen dataclass instances: every subscriber receives the same object, so a
  mutable one would let one subsystem change what another sees.
- Subscribing to a class receives its subclasses too (dispatch follows the MRO), so a listener
  can take a whole family, or every message with ``object``.
- Callbacks run synchronously on the publisher's thread, in subscription order, outside the
  bus lock (a callback may publish or subscribe). They must be quick: the bridge publishes from
  its link thread. Slow consumers use `Bus.queue`, which decouples them with a bounded queue.
  Messages from one thread arrive in the order published; messages published concurrently
  from different threads have no order between them.
- A callback that raises is logged with the message type, counted in `Bus.errors`, and never
  reaches the publisher: one broken listener must not stop telemetry to the others.
- Bounded queues drop their *oldest* message when full (the freshest state matters most) and
  count each drop in `Subscription.dropped`, so overload is visible, never silent.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import Counter, deque
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

Callback = Callable[[object], None]


@dataclasses.dataclass(eq=False)
class _Subscriber:
    seq: int
    callback: Callback


def _check_immutable(msg: object) -> None:
    cls = type(msg)
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen:
        raise TypeError(
            f"bus messages must be frozen dataclass instances, got {cls.__module__}.{cls.__name__}"
        )


class Bus:
    """Thread-safe publish/subscribe of immutable messages, keyed by message class."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[type, list[_Subscriber]] = {}
        self._dispatch: dict[type, tuple[_Subscriber, ...]] = {}
        self._latest: dict[type, object] = {}
        self._seq = 0
        self._errors: Counter[str] = Counter()

    @property
    def errors(self) -> int:
        """How many callback invocations have raised, all message types together."""
        with self._lock:
            return sum(self._errors.values())

    def errors_by_type(self) -> dict[str, int]:
        """Callback failures per message type name, to find which listener is broken."""
        with self._lock:
            return dict(self._errors)

    def publish(self, msg: object) -> None:
        """Deliver `msg` to every subscriber of its class or a base class, then return.

        Raises TypeError only for a message that is not a frozen dataclass (a programming
        error in the publisher); subscriber failures are contained.
        """
        _check_immutable(msg)
        cls = type(msg)
        with self._lock:
            for base in cls.__mro__:
                self._latest[base] = msg
            targets = self._dispatch.get(cls)
            if targets is None:
                found = [s for base in cls.__mro__ for s in self._subscribers.get(base, ())]
                targets = self._dispatch[cls] = tuple(sorted(found, key=lambda s: s.seq))
        for sub in targets:
            try:
                sub.callback(msg)
            except Exception:
                log.exception(
                    "bus subscriber %r failed on %s",
                    sub.callback,
                    cls.__name__,
                    extra={"message_type": cls.__name__},
                )
                with self._lock:
                    self._errors[cls.__name__] += 1

    def subscribe(self, type_: type[T], callback: Callable[[T], None]) -> Callable[[], None]:
        """Call `callback(msg)` for every later message that is an instance of `type_`.

        Returns an idempotent unsubscribe function. A message being delivered on another thread
        while unsubscribing may still reach the callback once.
        """
        with self._lock:
            self._seq += 1
            sub = _Subscriber(self._seq, callback)  # type: ignore[arg-type]
            self._subscribers.setdefault(type_, []).append(sub)
            self._dispatch.clear()

        def unsubscribe() -> None:
            with self._lock:
                subs = self._subscribers.get(type_, [])
                if sub in subs:
                    subs.remove(sub)
                    self._dispatch.clear()

        return unsubscribe

    def latest(self, type_: type[T]) -> T | None:
        """The last message published that is an instance of `type_`, or None if none yet."""
        with self._lock:
            return self._latest.get(type_)  # type: ignore[return-value]

    def queue(self, type_: type[T], maxsize: int) -> Subscription[T]:
        """A bounded, thread-safe queue of every later `type_` message, for slow consumers."""
        sub: Subscription[T] = Subscription(type_, maxsize)
        sub._unsubscribe = self.subscribe(type_, sub._put)
        return sub


class Subscription(Generic[T]):
    """A reader's end of `Bus.queue`: `get()` in its own thread, `close()` when done.

    When full, the oldest queued message is dropped to make room and counted in `dropped`.
    """

    def __init__(self, type_: type[T], maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"queue maxsize must be at least 1, got {maxsize}")
        self.type_ = type_
        self.maxsize = maxsize
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._dropped = 0
        self._closed = False
        self._unsubscribe: Callable[[], None] = lambda: None

    @property
    def dropped(self) -> int:
        """Messages discarded because the reader fell `maxsize` behind."""
        with self._cond:
            return self._dropped

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def _put(self, msg: T) -> None:
        with self._cond:
            if self._closed:
                return
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                self._dropped += 1
                if self._dropped & (self._dropped - 1) == 0:  # 1, 2, 4, 8...: visible, not spam
                    log.warning(
                        "bus queue for %s full (%d): %d message(s) dropped so far",
                        self.type_.__name__,
                        self.maxsize,
                        self._dropped,
                        extra={"message_type": self.type_.__name__, "dropped": self._dropped},
                    )
            self._items.append(msg)
            self._cond.notify()

    def get(self, timeout: float | None = None) -> T | None:
        """The oldest queued message; waits up to `timeout` s (None: forever) for one.

        Returns None on timeout, or once the subscription is closed and drained.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._items or self._closed, timeout=timeout)
            return self._items.popleft() if self._items else None

    def drain(self) -> list[T]:
        """Every queued message, oldest first, without waiting."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            return items

    def close(self) -> None:
        """Stop receiving; a blocked `get` wakes and returns what is left, then None."""
        self._unsubscribe()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __enter__(self) -> Subscription[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
