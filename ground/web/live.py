"""Live updates for the page: the fleet's records, pushed to every open ``/api/live``.

One source calls `LiveHub.publish` with each batch of records: with a broker, the instance's
own non-shared subscription to the whole fleet (`ground.web.live_fleet`, so that every
instance of a fleet deployment shows every drone); without one, the `LiveStore` after each
batch it commits. The batch is encoded once (JSON) and handed to each subscriber's queue on
the web server's event loop.
Each queue holds at most `max_batches`: a browser that does not read (a slow link, a laptop
asleep) loses the oldest batches rather than growing this process's memory, and is sent a
``resync`` event telling it to fetch the current state again. Drops are counted.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from ground.store import Received
from ground.web.views import live_batch


@dataclass(eq=False)  # hashed by identity: kept in a set
class Subscription:
    """One open live stream: `next` waits for a message, ``(kind, data)``."""

    loop: asyncio.AbstractEventLoop
    max_batches: int
    queue: deque[str] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    overflowed: bool = False
    dropped: int = 0

    def _put(self, data: str) -> None:  # on the event loop
        if len(self.queue) >= self.max_batches:
            self.queue.popleft()
            self.dropped += 1
            self.overflowed = True
        self.queue.append(data)
        self.wake.set()

    async def next(self, timeout_s: float) -> tuple[str, str] | None:
        """The next message, or None after `timeout_s` with nothing (time for a keep-alive).
        After an overflow the first message is ``("resync", "")``."""
        if not self.queue:
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), timeout_s)
            except asyncio.TimeoutError:
                return None
        if self.overflowed:
            self.overflowed = False
            self.queue.clear()
            return "resync", "{}"
        return "records", self.queue.popleft()


class LiveHub:
    """The subscribers of the live feed (module doc). Thread-safe `publish`."""

    def __init__(self, max_batches: int) -> None:
        self.max_batches = max_batches
        self._lock = threading.Lock()
        self._subs: set[Subscription] = set()
        self.published = 0
        self.dropped = 0

    def subscribe(self) -> Subscription:
        """A new subscription on the running event loop."""
        sub = Subscription(asyncio.get_running_loop(), self.max_batches)
        with self._lock:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.discard(sub)
            self.dropped += sub.dropped

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)

    def publish(self, batch: Sequence[Received]) -> None:
        """Send a batch of records to every subscriber (from any thread)."""
        with self._lock:
            subs = list(self._subs)
            self.published += 1
        if not subs:
            return
        data = live_batch(list(batch)).model_dump_json()
        for sub in subs:
            try:
                sub.loop.call_soon_threadsafe(sub._put, data)
            except RuntimeError:  # its loop has closed: the server is stopping
                self.unsubscribe(sub)
