"""The live feed of the whole fleet on every instance: a second, non-shared MQTT subscription.

Several ``skycourier ground`` instances split the fleet's telemetry and events with an MQTT 5
shared subscription (`ground.ingest`), so what one instance's ingest stores is only its share;
a browser behind a load balancer would see about 1/N of the updates if the page were fed from
the ingest. So an instance that runs an ingest also keeps this subscription on the same topics
without ``$share/``: the broker sends it every message of the fleet, whichever instance stores
it, and it feeds the instance's `LiveHub` (and only it: the store's listener is detached, so
nothing is published twice).

Why the broker and not the database: it works the same with mosquitto or EMQX, SQLite or
PostgreSQL, adds no load to the database and no polling delay, and needs nothing a
deployment does not run already. What it costs: each instance receives the whole fleet once
more (at QoS 0) and decodes it while a page is open (messages are skipped, undecoded, while
nobody watches). A record is shown live when the broker passes it on, possibly before an
ingest has committed it, and a record the database then refuses (``unstorable``) may have been
shown: for a live view that is fine, and the page reads the stored state over REST on
``resync`` and every few seconds.

`FleetFeed` is the sans-I/O core: (topic, payload) in, batches of records not seen before
out. It decodes with the ingest's `Decoder` (the same refusals and allow-list; refusals are
counted here and logged by the ingest), forgets the oldest of the (drone, record id) pairs it
remembers past `remember` (a drone re-sends what the broker had not acknowledged after a lost
link; one re-sent later than that is shown again, and the page de-duplicates by record id
too), and holds records for at most `flush_s` or `max_batch_records` so that a browser gets a
few batches a second rather than one event per message. `FleetLive` binds it to paho-mqtt: QoS
0, clean start (no session: nothing is queued for it while it is away), no retained messages
(the page has the current state from REST), client id ``<ingest client id>-live``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from companion.telemetry import schema
from ground.ingest import CHANNELS, REASONS, Decoder, IngestConfig, Refusal
from ground.store import Received, Store
from ground.web.backend import LiveStore
from ground.web.live import LiveHub

log = logging.getLogger(__name__)

#: Appended to the ingest's client id to name the live subscription's client.
CLIENT_SUFFIX = "-live"

Publish = Callable[[Sequence[Received]], None]


@dataclass(frozen=True)
class FleetFeedStats:
    """Counters since start: `skipped` messages arrived while nobody watched (undecoded);
    `refused` counts messages by the ingest's reasons (``unstorable`` stays 0 here)."""

    connected: bool
    messages: int
    skipped: int
    records: int
    duplicates: int
    published: int
    refused: dict[str, int]


class FleetFeed:
    """Sans-I/O (module doc): `receive` messages, `take` a batch when `due`. Not thread-safe:
    its adapter holds a lock around it."""

    def __init__(
        self,
        decoder: Decoder,
        remember: int = 50_000,
        max_batch_records: int = 500,
        flush_s: float = 0.2,
    ) -> None:
        if remember < 1:
            raise ValueError(f"remember must be at least 1, got {remember}")
        if not 1 <= max_batch_records <= 100_000:
            raise ValueError(f"max_batch_records must be 1-100000, got {max_batch_records}")
        if not 0 < flush_s <= 60:
            raise ValueError(f"flush_s must be in (0, 60], got {flush_s}")
        self.decoder = decoder
        self.remember = remember
        self.max_batch_records = max_batch_records
        self.flush_s = flush_s
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._pending: list[Received] = []
        self._oldest: float | None = None  # when the oldest pending record came (monotonic)
        self.counts: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()

    def receive(self, topic: str, payload: bytes, now: float, received_at: float) -> Refusal | None:
        """Queue the message's records not seen before; its `Refusal` if it is refused.
        `now` is monotonic time (for flushing), `received_at` Unix time (for the records)."""
        self.counts["messages"] += 1
        try:
            decoded = self.decoder.decode(topic, payload)
        except Exception as exc:  # a decoder bug (or a topic that is not UTF-8): no crash
            decoded = Refusal("malformed", f"the decoder failed: {type(exc).__name__}: {exc}")
        if isinstance(decoded, Refusal):
            self.refused[decoded.reason] += 1
            return decoded
        for record in decoded:
            self.counts["records"] += 1
            key = (record.drone_id, record.id)
            if key in self._seen:
                self.counts["duplicates"] += 1
                continue
            self._seen[key] = None
            if len(self._seen) > self.remember:
                self._seen.popitem(last=False)
            if not self._pending:
                self._oldest = now
            self._pending.append(Received(record, received_at))
        return None

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def full(self) -> bool:
        """Whether the pending records make a whole batch (publish them at once)."""
        return len(self._pending) >= self.max_batch_records

    def due(self, now: float) -> bool:
        """Whether the pending records make a batch now."""
        if not self._pending or self._oldest is None:
            return False
        return self.full or now - self._oldest >= self.flush_s

    def wait_s(self, now: float) -> float | None:
        """Seconds until the pending records are due; None with nothing pending."""
        if not self._pending or self._oldest is None:
            return None
        return max(0.0, self._oldest + self.flush_s - now)

    def take(self) -> list[Received]:
        """The pending records (possibly none), in the order they came; counted as published."""
        batch, self._pending, self._oldest = self._pending, [], None
        self.counts["published"] += len(batch)
        return batch


def live_client_id(ingest_client_id: str) -> str:
    """The live subscription's client id: the ingest's, which is unique per instance, plus
    `CLIENT_SUFFIX` (two clients under one id would keep taking each other's connection)."""
    return ingest_client_id + CLIENT_SUFFIX


def live_topics() -> list[str]:
    """The ingest's topics, none of them shared."""
    return [f"{schema.TOPIC_ROOT}/+/{channel}" for channel in CHANNELS]


class FleetLive:
    """`FleetFeed` on a paho-mqtt client of its own (module doc). `publish` gets each batch,
    from one thread at a time and in order; `wanted` says whether anyone watches (messages
    are skipped while it is False)."""

    def __init__(
        self,
        ingest: IngestConfig,
        publish: Publish,
        wanted: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ingest = ingest
        self.client_id = live_client_id(ingest.client_id)
        self.publish = publish
        self.wanted = wanted
        self.clock = clock
        self.feed = FleetFeed(Decoder(ingest.allowed_drones))
        self._cond = threading.Condition()
        self._publishing = threading.Lock()  # one batch at a time, in the order taken
        self._stopping = False
        self._connected = False
        self._flusher = threading.Thread(target=self._flush_loop, name="ground-live-flush")
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5
        )
        if ingest.tls is not None:
            self._client.tls_set_context(ingest.tls)
        if ingest.username is not None:
            self._client.username_pw_set(ingest.username, ingest.password)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    def start(self) -> None:
        """Start the flusher and connect in the background (reconnecting by itself)."""
        self._flusher.start()
        self._client.connect_async(
            self.ingest.host, self.ingest.port, keepalive=self.ingest.keepalive_s, clean_start=True
        )
        self._client.loop_start()

    def wait_connected(self, timeout_s: float) -> bool:
        """True once subscribed on a connection, False if `timeout_s` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._connected, timeout_s)

    def stop(self) -> None:
        """Disconnect and publish what is pending."""
        with self._cond:
            self._stopping = True  # the disconnection is not a lost connection
        self._client.disconnect()
        self._client.loop_stop()
        with self._cond:
            self._cond.notify_all()
        if self._flusher.ident is not None:
            self._flusher.join()

    def stats(self) -> FleetFeedStats:
        with self._cond:
            counts, refused = self.feed.counts, self.feed.refused
            return FleetFeedStats(
                connected=self._connected,
                messages=counts["messages"],
                skipped=counts["skipped"],
                records=counts["records"],
                duplicates=counts["duplicates"],
                published=counts["published"],
                refused={reason: refused[reason] for reason in REASONS},
            )

    # -- paho callbacks (its network thread) -----------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.warning("live feed %s: the broker refused us: %s", self.client_id, reason)
            return
        options = SubscribeOptions(qos=0, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)  # type: ignore[no-untyped-call]
        client.subscribe([(topic, options) for topic in live_topics()])

    def _on_subscribe(
        self, _c: mqtt.Client, _u: Any, _mid: int, reasons: list[Any], _p: Any
    ) -> None:
        failed = [str(reason) for reason in reasons if reason.is_failure]
        if failed:
            log.warning("live feed %s: subscriptions refused: %s", self.client_id, failed)
            return
        with self._cond:
            self._connected = True
            self._cond.notify_all()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        with self._cond:
            was_up, self._connected = self._connected, False
            stopping = self._stopping
        if was_up and not stopping:
            log.warning("live feed %s: connection lost: %s", self.client_id, reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:  # an old status the broker kept, not news: the page has it from REST
            return
        if not self.wanted():
            with self._cond:
                self.feed.counts["skipped"] += 1
            return
        now, received_at = time.monotonic(), self.clock()
        with self._cond:
            was_empty = self.feed.pending == 0
            self.feed.receive(msg.topic, bytes(msg.payload), now, received_at)
            full = self.feed.full
            if was_empty and self.feed.pending:
                self._cond.notify_all()  # the flusher now has a deadline
        if full:
            self._flush()

    # -- publishing ------------------------------------------------------------------------

    def _flush(self) -> None:
        with self._publishing:
            with self._cond:
                batch = self.feed.take()
            if batch:
                try:
                    self.publish(batch)
                except Exception:  # a failing page feed must not stop the subscription
                    log.exception("live feed: publishing a batch failed")

    def _flush_loop(self) -> None:
        while True:
            with self._cond:
                while not self.feed.due(time.monotonic()):
                    if self._stopping:
                        break
                    self._cond.wait(self.feed.wait_s(time.monotonic()))
                stopping = self._stopping
            self._flush()
            if stopping:
                return


def feed_hub_from_broker(
    hub: LiveHub, store: Store, ingest: IngestConfig, clock: Callable[[], float] = time.time
) -> FleetLive:
    """Make the broker the hub's one source (module doc): detach the hub from `store`'s
    listeners and start a `FleetLive` that publishes to it while anyone watches."""
    if isinstance(store, LiveStore) and hub.publish in store.listeners:
        store.listeners.remove(hub.publish)
    live = FleetLive(ingest, hub.publish, lambda: hub.subscribers > 0, clock)
    live.start()
    return live
