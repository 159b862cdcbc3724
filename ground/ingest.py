"""Telemetry ingest: the fleet's MQTT topics into the ground store, exactly once.

`Ingestor` subscribes with MQTT 5 (paho-mqtt) to

- ``$share/<group>/skycourier/v1/+/telemetry`` and ``.../events``: a shared subscription,
  so that several ingest instances in one `group` split the fleet's records between them
  (mosquitto 2, EMQX); each message goes to one of them;
- ``skycourier/v1/+/status``, not shared: statuses are few (one per drone every
  ``ttl_s / 3``) and retained, and a shared subscription never delivers retained messages,
  so each instance gets every status, the retained ones at its first subscription too, and
  the store keeps each once (the duplicates are counted).

Each message is decoded with the wire format's decoder (`schema.decode_message`) on paho's
network thread, and its records are queued; a writer thread stores the queue as one batch
(one transaction, `Store.ingest`) when it holds `IngestConfig.max_batch_records` records, or
`receive_maximum / 2` messages, or its oldest message has waited `flush_s` (0.2 s).

**Acknowledgement and crashes.** paho acknowledges a QoS 1 message (PUBACK) as soon as its
callback returns, i.e. on receipt: a crash between receipt and commit would lose what was
received, because the drone forgot each record when the broker acknowledged it, and the
broker forgets a message once the ingest has. So this client acknowledges by hand
(``manual_ack``), after the batch holding the message has committed, in the order messages
came (MQTT 5 §4.6). A crash before the commit leaves the messages unacknowledged in the
broker's session for this client, and the session is persistent (``clean_start=False``,
a session expiry of `IngestConfig.session_expiry_s`): the broker keeps queueing this
instance's share of the messages while it is down and, when it reconnects under the same
client id, re-sends the unacknowledged ones and delivers the queued ones. A crash after the
commit but before the PUBACK re-delivers messages already stored: the store de-duplicates
them (by drone and record id). What this asks of a deployment: restart a dead instance under
its client id within the session expiry (systemd ``Restart=always``), and let the broker
queue enough for that time (mosquitto's ``max_queued_messages`` is 1000 messages a session
by default; past it, it drops QoS 1 messages). `receive_maximum` (default 1000) bounds the
unacknowledged messages in flight to this client: what bounds this process's memory when the
database is down (the broker stops sending until the ingest acknowledges; a drone's message
is at most 10 KiB, anything at all at most 64 KiB), and what a burst can hand over at once
before the rest waits in the broker's queue, under that queue's limit.

**Bad input.** A message is refused, counted by reason and logged (at most once per reason
every `LOG_EVERY_S`, with the count since), never stored and never a crash: ``oversized``
(over `schema.MAX_PAYLOAD_BYTES`), ``wrong-topic`` (not a drone's telemetry, events or
status topic, or records of another drone or channel than the topic's), ``unknown-drone``
(a drone not on `IngestConfig.allowed_drones`, when that is set) and ``malformed``
(anything else the decoder rejects); a record the database cannot keep (`Store.ingest`'s
refusals, or a record on which the database fails for a reason that retrying cannot fix) is
``unstorable``. A refused message is acknowledged: sending it again would not change it.
A database that is down (a transient error: `store.is_transient`) is retried with backoff,
the batch unacknowledged meanwhile.

Run one instance: ``python -m ground.ingest --broker HOST:PORT --db URL --client-id NAME``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import ssl
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy.exc import SQLAlchemyError

from companion.telemetry import schema
from ground.store import Received, Store, is_transient

log = logging.getLogger(__name__)

#: Refusal reasons, in the order `IngestStats.refused` lists them.
REASONS = ("oversized", "wrong-topic", "unknown-drone", "malformed", "unstorable")
#: The channels the ingest reads (orders and commands go the other way).
CHANNELS = ("telemetry", "events", "status")
#: A refusal reason is logged at most once in this many seconds (with the count since).
LOG_EVERY_S = 10.0
#: Pauses between attempts at a batch while the database is down.
BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True)
class IngestConfig:
    """Where and how one ingest instance subscribes. `client_id` names its persistent
    session: give each instance its own, and keep it across restarts."""

    client_id: str
    host: str = "127.0.0.1"
    port: int = 1883
    group: str = "skycourier-ground"
    allowed_drones: frozenset[str] | None = None
    max_batch_records: int = 1000
    flush_s: float = 0.2
    session_expiry_s: int = 3600
    receive_maximum: int = 1000
    keepalive_s: int = 30
    username: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        if not self.client_id or len(self.client_id) > 128:
            raise ValueError("client_id: 1-128 characters, the same each time this instance runs")
        if not self.group or any(c in self.group for c in "/+#"):
            raise ValueError(f"group {self.group!r}: a shared-subscription group has no / + #")
        if not 1 <= self.max_batch_records <= 100_000:
            raise ValueError(f"max_batch_records must be 1-100000, got {self.max_batch_records}")
        if not 0 < self.flush_s <= 60:
            raise ValueError(f"flush_s must be in (0, 60], got {self.flush_s}")
        if not 2 <= self.receive_maximum <= 65535:
            raise ValueError(f"receive_maximum must be 2-65535, got {self.receive_maximum}")
        if not 0 < self.session_expiry_s <= 0xFFFFFFFF:
            raise ValueError("session_expiry_s must be above 0 (a persistent session)")
        if self.allowed_drones is not None:
            for drone in self.allowed_drones:
                schema.check_drone_id(drone)

    def topics(self) -> list[str]:
        root = schema.TOPIC_ROOT
        return [
            f"$share/{self.group}/{root}/+/telemetry",
            f"$share/{self.group}/{root}/+/events",
            f"{root}/+/status",
        ]


@dataclass(frozen=True)
class IngestStats:
    """Counters since start. `refused` counts messages by reason (``unstorable``: records);
    `pending` messages are received but not yet committed and acknowledged."""

    connected: bool
    connections: int
    messages: int
    records: int
    stored: int
    duplicates: int
    refused: dict[str, int]
    batches: int
    db_errors: int
    pending: int
    last_error: str | None
    last_commit_at: float | None


@dataclass(frozen=True)
class Refusal:
    reason: str
    message: str


class Decoder:
    """Sans-I/O: a received (topic, payload) to its records or a `Refusal` (module doc)."""

    def __init__(self, allowed_drones: Collection[str] | None = None) -> None:
        self.allowed = None if allowed_drones is None else frozenset(allowed_drones)

    def allow(self, drones: Collection[str] | None) -> None:
        """Replace the allow-list (None: every drone), e.g. as drones are registered; safe
        while another thread decodes (one reference is swapped)."""
        self.allowed = None if drones is None else frozenset(drones)

    def decode(self, topic: str, payload: bytes) -> list[schema.Record] | Refusal:
        if len(payload) > schema.MAX_PAYLOAD_BYTES:
            return Refusal(
                "oversized",
                f"{len(payload)} bytes on {topic[:120]!r}, more than {schema.MAX_PAYLOAD_BYTES}",
            )
        try:
            drone_id, channel = schema.parse_topic(topic)
        except schema.SchemaError as exc:
            return Refusal("wrong-topic", str(exc))
        if channel not in CHANNELS:
            return Refusal("wrong-topic", f"{topic!r}: the ingest reads {', '.join(CHANNELS)}")
        if self.allowed is not None and drone_id not in self.allowed:
            return Refusal("unknown-drone", f"drone {drone_id!r} is not on the allow-list")
        try:
            return schema.decode_message(topic, payload)
        except schema.SchemaError as exc:
            if _misaddressed(payload, drone_id, channel):
                return Refusal("wrong-topic", f"on {topic!r}: {exc}")
            return Refusal("malformed", f"on {topic!r}: {exc}")


def _misaddressed(payload: bytes, drone_id: str, channel: str) -> bool:
    """Whether a payload the decoder refused names another drone or channel than its topic
    (a drone publishing on the wrong topic, or one impersonating another)."""
    try:
        obj = json.loads(payload.decode())
    except (ValueError, RecursionError):
        return False
    if not isinstance(obj, dict):
        return False
    items = obj.get("records") if obj.get("type") == "batch" else [obj]
    if obj.get("type") == "batch" and (channel == "status" or _names_other(obj, drone_id)):
        return True
    if not isinstance(items, list):
        return False
    for item in items:
        if isinstance(item, dict):
            kind = item.get("type")
            kind = schema.CHANNEL_OF.get(kind) if isinstance(kind, str) else None
            if _names_other(item, drone_id) or (kind is not None and kind != channel):
                return True
    return False


def _names_other(obj: dict[str, Any], drone_id: str) -> bool:
    named = obj.get("drone_id")
    return isinstance(named, str) and named != drone_id


@dataclass
class _Message:
    mid: int
    qos: int
    connection: int
    received_at: float  # the ingest's clock, stored with the records
    arrived: float  # time.monotonic(), for flushing
    records: list[schema.Record] = field(default_factory=list)


class _LogLimiter:
    """At most one log line per reason every `LOG_EVERY_S` (a flood of bad input must not
    flood the log), saying how many were not logged in between."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._last: dict[str, float] = {}
        self._quiet: Counter[str] = Counter()

    def warn(self, reason: str, text: str) -> None:
        now = self.clock()
        last = self._last.get(reason)
        if last is not None and now - last < LOG_EVERY_S:
            self._quiet[reason] += 1
            return
        since = self._quiet.pop(reason, 0)
        self._last[reason] = now
        more = f" ({since} more {reason} since the last report)" if since else ""
        log.warning("ingest refused a message (%s): %s%s", reason, text, more)


class Ingestor:
    """One ingest instance: an MQTT 5 client with a persistent session, feeding `store`
    (module doc). `clock` stamps ``received_at`` (Unix time)."""

    def __init__(
        self, store: Store, config: IngestConfig, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.decoder = Decoder(config.allowed_drones)
        self._flush_messages = max(1, config.receive_maximum // 2)
        self._cond = threading.Condition()
        self._pending: list[_Message] = []
        self._pending_records = 0
        self._committing = 0  # messages of the batch being stored and acknowledged
        self._stopping = False
        self._give_up = threading.Event()
        self._connected = False  # connected and subscribed (SUBACK granted)
        self._connection = 0
        self._session = "new"  # whether the broker had kept our session, for the log
        self._counts: Counter[str] = Counter()
        self._refused: Counter[str] = Counter()
        self._last_error: str | None = None
        self._last_commit_at: float | None = None
        self._limiter = _LogLimiter(time.monotonic)
        self._writer = threading.Thread(target=self._write_loop, name="ground-ingest-writer")
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if config.tls is not None:
            self._client.tls_set_context(config.tls)
        if config.username is not None:
            self._client.username_pw_set(config.username, config.password)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread and connect in the background (reconnecting by itself)."""
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self.config.session_expiry_s
        properties.ReceiveMaximum = self.config.receive_maximum
        self._writer.start()
        self._client.connect_async(
            self.config.host,
            self.config.port,
            keepalive=self.config.keepalive_s,
            clean_start=False,
            properties=properties,
        )
        self._client.loop_start()

    def wait_connected(self, timeout_s: float) -> bool:
        """True once subscribed on a connection, False if `timeout_s` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._connected, timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Store and acknowledge what was received, then disconnect; the session stays on
        the broker (messages for this client wait there). A batch the database still refuses
        after `timeout_s` is left unacknowledged: the broker re-sends it next time."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._writer.ident is None:
            return  # never started
        self._writer.join(timeout_s)
        if self._writer.is_alive():
            self._give_up.set()
            self._writer.join()
        self._client.disconnect()
        self._client.loop_stop()

    def stats(self) -> IngestStats:
        with self._cond:
            return IngestStats(
                connected=self._connected,
                connections=self._connection,
                messages=self._counts["messages"],
                records=self._counts["records"],
                stored=self._counts["stored"],
                duplicates=self._counts["duplicates"],
                refused={reason: self._refused[reason] for reason in REASONS},
                batches=self._counts["batches"],
                db_errors=self._counts["db_errors"],
                pending=len(self._pending) + self._committing,
                last_error=self._last_error,
                last_commit_at=self._last_commit_at,
            )

    # -- paho callbacks (its network thread) -----------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self._error(f"broker {self.config.host}:{self.config.port} refused us: {reason}")
            return
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)  # type: ignore[no-untyped-call]
        with self._cond:
            self._connection += 1
            self._session = "resumed" if flags.session_present else "new"
        client.subscribe([(topic, options) for topic in self.config.topics()])

    def _on_subscribe(
        self, _c: mqtt.Client, _u: Any, _mid: int, reasons: list[Any], _p: Any
    ) -> None:
        failed = [
            f"{topic} ({reason})"
            for topic, reason in zip(self.config.topics(), reasons, strict=False)
            if reason.is_failure
        ]
        if failed:
            # e.g. a broker without shared subscriptions: nothing would arrive; say so.
            self._error(f"the broker refused the subscriptions {', '.join(failed)}")
            return
        with self._cond:
            self._connected = True
            self._cond.notify_all()
        log.info(
            "ingest %s subscribed at %s:%d (session %s)",
            self.config.client_id,
            self.config.host,
            self.config.port,
            self._session,
        )

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        with self._cond:
            was_up, self._connected = self._connected, False
            stopping = self._stopping
        if was_up and not stopping:
            self._error(f"connection to {self.config.host}:{self.config.port} lost: {reason}")

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        received_at = self.clock()
        try:
            decoded = self.decoder.decode(msg.topic, bytes(msg.payload))
        except Exception as exc:  # a decoder bug (or a topic that is not UTF-8): no crash
            decoded = Refusal("malformed", f"the decoder failed: {type(exc).__name__}: {exc}")
        with self._cond:
            message = _Message(msg.mid, msg.qos, self._connection, received_at, time.monotonic())
            self._counts["messages"] += 1
            if isinstance(decoded, Refusal):
                self._refused[decoded.reason] += 1
            else:
                message.records = decoded
                self._counts["records"] += len(decoded)
                self._pending_records += len(decoded)
            self._pending.append(message)
            if self._due():
                self._cond.notify_all()
        if isinstance(decoded, Refusal):
            self._limiter.warn(decoded.reason, decoded.message)

    # -- the writer ------------------------------------------------------------------------

    def _due(self) -> bool:
        """Whether the queued messages make a batch now (called holding the lock)."""
        if not self._pending:
            return False
        return (
            self._stopping
            or self._pending_records >= self.config.max_batch_records
            or len(self._pending) >= self._flush_messages
            or time.monotonic() - self._pending[0].arrived >= self.config.flush_s
        )

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._due():
                    if self._stopping:
                        return
                    wait = self.config.flush_s
                    if self._pending:
                        age = time.monotonic() - self._pending[0].arrived
                        wait = max(0.0, self.config.flush_s - age)
                    self._cond.wait(wait)
                batch, self._pending, self._pending_records = self._pending, [], 0
                self._committing = len(batch)
            if self._commit([Received(r, m.received_at) for m in batch for r in m.records]):
                self._acknowledge(batch)
            with self._cond:
                self._committing = 0

    def _commit(self, received: Sequence[Received]) -> bool:
        """Store `received`: True once it is (or what of it can be), False if the ingest
        gave up on a database that stayed down while stopping (nothing acknowledged then)."""
        if not received:
            return True  # a batch of refused messages: nothing to store, all to acknowledge
        failures = 0
        while True:
            try:
                result = self.store.ingest(received)
            except SQLAlchemyError as exc:
                if not is_transient(exc):
                    return self._commit_one_by_one(received, exc)
                failures += 1
                with self._cond:
                    self._counts["db_errors"] += 1
                delay = BACKOFF_S[min(failures, len(BACKOFF_S)) - 1]
                self._error(f"database: {_first_line(exc)}; retrying in {delay:g} s")
                if self._give_up.wait(delay):
                    return False
                continue
            except Exception as exc:  # a bug must cost a batch, not the ingest
                log.exception("ingest: storing a batch failed")
                return self._commit_one_by_one(received, exc)
            with self._cond:
                self._counts["batches"] += 1
                self._counts["stored"] += result.stored
                self._counts["duplicates"] += result.duplicates
                self._refused["unstorable"] += len(result.refused)
                self._last_commit_at = self.clock()
            for refused in result.refused:
                self._limiter.warn(
                    "unstorable",
                    f"{refused.record.type} {refused.record.id!r:.70} from "
                    f"{refused.record.drone_id}: {refused.reason}",
                )
            return True

    def _commit_one_by_one(self, received: Sequence[Received], exc: Exception) -> bool:
        """A batch failed for something in its data: store its records one at a time, and
        refuse the one(s) that fail alone."""
        if len(received) == 1:
            record = received[0].record
            with self._cond:
                self._refused["unstorable"] += 1
            self._limiter.warn(
                "unstorable",
                f"{record.type} {record.id!r:.70} from {record.drone_id}: {_first_line(exc)}",
            )
            return True
        done = [self._commit([item]) for item in received]
        return all(done)

    def _acknowledge(self, batch: list[_Message]) -> None:
        """PUBACK each message, in the order received; one that came on an earlier
        connection is not: the broker re-sends it on this one (and the store has it)."""
        with self._cond:
            connection = self._connection
        for message in batch:
            if message.qos > 0 and message.connection == connection:
                self._client.ack(message.mid, message.qos)

    def _error(self, text: str) -> None:
        with self._cond:
            changed = text != self._last_error
            self._last_error = text
        if changed:
            log.warning("ingest %s: %s", self.config.client_id, text)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


# -- command line ------------------------------------------------------------------------


def parse_broker(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``HOST`` (port 1883); ValueError says what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, 1883
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--broker {text!r}: expected HOST:PORT with a port in 1..65535")
    return host, int(port)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ingest instance until SIGTERM or Ctrl-C (then store what it has and stop)."""
    parser = argparse.ArgumentParser(prog="python -m ground.ingest", description=__doc__)
    parser.add_argument("--broker", default="127.0.0.1:1883", help="MQTT broker HOST:PORT")
    parser.add_argument("--db", default=None, help="database URL (default: a SQLite file)")
    parser.add_argument("--client-id", required=True, help="this instance's session name")
    parser.add_argument("--group", default="skycourier-ground", help="shared-subscription group")
    parser.add_argument(
        "--allow", action="append", metavar="DRONE", help="accept only these drones (repeat)"
    )
    parser.add_argument("--stats-every", type=float, default=30.0, help="log counters (s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        host, port = parse_broker(args.broker)
        config = IngestConfig(
            client_id=args.client_id,
            host=host,
            port=port,
            group=args.group,
            allowed_drones=None if args.allow is None else frozenset(args.allow),
        )
        store = Store.open(args.db)
    except (ValueError, SQLAlchemyError) as exc:
        print(f"ground ingest: {_first_line(exc)}", file=sys.stderr)
        return 2
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    ingestor = Ingestor(store, config)
    ingestor.start()
    try:
        while not done.wait(args.stats_every):
            log.info("ingest: %s", ingestor.stats())
    except KeyboardInterrupt:
        pass
    finally:
        ingestor.stop()
        log.info("ingest stopped: %s", ingestor.stats())
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
