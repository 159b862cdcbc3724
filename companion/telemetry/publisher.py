"""The telemetry uplink: bus messages in, ordered acknowledged MQTT records out.

Two halves joined only by the durable `Store` (the second also sets records aside):

- **sampling** (bus callbacks and `tick`): the latest `VehicleState`, mission phase, GPS
  integrity alarms, modem signal and the camera's detection counts (`Detections`, while
  fresh) are remembered; `tick(now)` writes a `Telemetry` sample at the rate of the current
  phase (5 Hz at hand-over, 1 Hz in cruise, 0.2 Hz idle on the ground: the operator
  watches a descent over a recipient closely, a parked drone hardly at all).
  Mission events and GPS alarms become `Event` records the moment they are published. Every
  record is appended to the store *first*, so nothing depends on the link being up.
- **draining** (one thread): the oldest records are published through the transport as one
  batch message (schema version 2: consecutive records of one topic, up to the schema's
  message size) and acked in the store only once the transport confirms the broker has it.
  A message costs the A76xx five AT exchanges and a broker round trip whatever it carries, so
  batching is what lets the modem path keep up with 5 Hz and replay an outage faster than it
  was recorded. A message that is not full and holds no event waits up to `linger_s` (from
  when its oldest record was first seen) for more records: at 5 Hz that is one message, three
  AT commands, a second instead of one per record. On a `TransportError` the same records are
  retried after a backoff, so order is preserved and nothing is skipped; records queue up
  meanwhile and replay, oldest first, when the link returns.
- **setting aside**: a record that can never be sent (not a valid record of its topic, larger
  than a message, or refused by the transport as such: `MessageRejected`; a rejected batch is
  first retried as its oldest record alone) is moved out of the queue by `Store.set_aside`,
  counted, logged, and reported to the operator as a ``record-set-aside`` event (except the
  report of a report, which could loop), instead of blocking the queue for ever. Event
  details too large for a record are cut to a preview when queued, so an event is never
  lost for its detail.

Status: the will is a retained ``offline`` `Status`, which the broker publishes whenever a
connection dies (where the transport can set a retained will: the A76xx cannot). So a retained
``online`` is published again after every new connection (the transport's `connections`
count changed, or a publish failed, or `connected` was seen False), before any queued record,
and every `status_period_s` as a heartbeat; each ``online`` carries a time-to-live of
`STATUS_TTL_PERIODS` periods, after which receivers stop believing it (a drone that died
without a will). `stop()` publishes ``offline`` itself, since a clean disconnect does not
fire the will.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from companion.bus import Bus
from companion.gps.integrity import IntegrityAlarm, IntegrityCleared
from companion.intake.commands import CommandAck
from companion.intake.intake import OrderAck, OrderUpdate
from companion.mission.events import MissionEvent, Phase
from companion.modem.state import ModemState
from companion.telemetry import schema
from companion.telemetry.store import Record, Store, StoreError
from companion.telemetry.transport import MessageRejected, Transport, TransportError
from companion.vision.service import Detections
from firmware_bridge.state import VehicleState

log = logging.getLogger(__name__)

#: Samples per second by mission phase; "idle" before any mission and after it ends.
DEFAULT_RATES_HZ: dict[str, float] = {
    "idle": 0.2,
    Phase.PREFLIGHT.value: 0.2,
    Phase.ARM.value: 1.0,
    Phase.TAKEOFF.value: 1.0,
    Phase.CRUISE.value: 1.0,
    Phase.DESCEND.value: 5.0,
    Phase.RELEASE.value: 5.0,
    Phase.CLIMB.value: 1.0,
    Phase.RETURN.value: 1.0,
    Phase.LAND.value: 2.0,
    Phase.ABORT.value: 2.0,
    Phase.DONE.value: 0.2,
}

DEFAULT_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)
#: A sample carries the latest frame's detection counts only while they are this fresh (the
#: publisher's clock): a camera that stopped must not show its last picture for ever.
DETECTIONS_FRESH_S = 2.0
#: An ``online`` status stays true this many heartbeat periods: one heartbeat may be lost or
#: late (a message of backlog ahead of it) without the drone looking dead.
STATUS_TTL_PERIODS = 3
#: The event that reports a record set aside.
SET_ASIDE_EVENT = "record-set-aside"
#: How much of an oversized event detail its truncated stand-in keeps.
DETAIL_PREVIEW_CHARS = 512
#: Records a message carries at most (besides the size limit): 64 of the smallest samples
#: (~150 bytes) still fill a message, and each message reads that many (+1) from the queue,
#: so a larger window would cost queue reads for records the message has no room for.
DEFAULT_MAX_BATCH = 64


@dataclass(frozen=True)
class PublisherStats:
    queued: int  # records appended to the store by this publisher
    published: int  # records the broker acknowledged
    retried: int  # publish (or queue read) attempts that failed and were retried
    pending: int  # records in the store awaiting acknowledgement
    thinned: int  # telemetry dropped by the store's bound policy (file lifetime)
    sample_errors: int  # samples that could not be built or stored (logged each time)
    last_error: str | None
    messages: int = 0  # MQTT messages (batches) that carried them
    set_aside: int = 0  # records moved out of the queue as unsendable (file lifetime)
    last_set_aside: str | None = None  # why the latest one was


class TelemetryPublisher:
    """Samples the bus into the store, and drains the store through a transport."""

    def __init__(
        self,
        bus: Bus,
        store: Store,
        transport: Transport,
        drone_id: str,
        clock: Callable[[], float] = time.monotonic,
        rates: Mapping[str, float] | None = None,
        *,
        wall_clock: Callable[[], float] = time.time,
        publish_timeout_s: float = 30.0,
        backoff_s: Sequence[float] = DEFAULT_BACKOFF_S,
        status_period_s: float = 30.0,
        tick_s: float = 0.05,
        max_batch: int = DEFAULT_MAX_BATCH,
        linger_s: float = 1.0,
    ) -> None:
        self.drone_id = schema.check_drone_id(drone_id)
        self.rates = dict(DEFAULT_RATES_HZ if rates is None else rates)
        for phase, hz in self.rates.items():
            if not hz > 0:
                raise ValueError(f"telemetry rate for phase {phase!r} must be > 0 Hz, got {hz}")
        if "idle" not in self.rates:
            raise ValueError("telemetry rates need an 'idle' entry (no mission in progress)")
        if not backoff_s:
            raise ValueError("backoff_s needs at least one delay")
        if not 1 <= max_batch <= schema.MAX_BATCH_RECORDS:
            raise ValueError(f"max_batch must be 1-{schema.MAX_BATCH_RECORDS}, got {max_batch}")
        if linger_s < 0 or status_period_s <= 0:
            raise ValueError(
                f"linger_s must be >= 0 and status_period_s > 0 (got {linger_s}, {status_period_s})"
            )
        self.bus = bus
        self.store = store
        self.transport = transport
        self.clock = clock
        self.wall_clock = wall_clock
        self.publish_timeout_s = publish_timeout_s
        self.backoff_s = tuple(backoff_s)
        self.status_period_s = status_period_s
        self.status_ttl_s = STATUS_TTL_PERIODS * status_period_s
        self.tick_s = tick_s
        self.max_batch = max_batch
        self.linger_s = linger_s
        self.topics = {ch: schema.topic(drone_id, ch) for ch in schema.CHANNELS}

        self._lock = threading.Lock()
        self._vehicle: VehicleState | None = None
        self._phase: str | None = None
        self._mission_id: str | None = None
        self._alarms: dict[str, IntegrityAlarm] = {}
        self._link: schema.LinkQuality | None = None
        self._detections: dict[str, int] = {}
        self._detections_at: float | None = None
        self._last_sample: float | None = None
        self._period = 0.0
        self._sample_errors = 0
        self._queued = 0
        self._published = 0
        self._messages = 0
        self._retried = 0
        self._last_error: str | None = None
        # drain thread only: the oldest record and when the drain first saw it (lingering),
        # seqs whose payloads were validated, and whether the next message is a lone record
        self._head: tuple[int, float] = (0, 0.0)
        self._valid: set[int] = set()
        self._single_through = 0  # records up to this seq go one per message (a rejection)

        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._unsubscribe: list[Callable[[], None]] = []

    # -- bus side ----------------------------------------------------------------------------

    def attach(self) -> None:
        """Subscribe to the bus messages that feed telemetry (once: `start` attaches too)."""
        if self._unsubscribe:
            return
        self._unsubscribe = [
            self.bus.subscribe(VehicleState, self.on_vehicle),
            self.bus.subscribe(MissionEvent, self.on_mission_event),
            self.bus.subscribe(IntegrityAlarm, self.on_integrity_alarm),
            self.bus.subscribe(IntegrityCleared, self.on_integrity_cleared),
            self.bus.subscribe(ModemState, self.on_modem),
            self.bus.subscribe(Detections, self.on_detections),
            self.bus.subscribe(OrderAck, self.on_order_ack),
            self.bus.subscribe(OrderUpdate, self.on_order_update),
            self.bus.subscribe(CommandAck, self.on_command_ack),
        ]

    def on_vehicle(self, state: VehicleState) -> None:
        with self._lock:
            self._vehicle = state

    def on_modem(self, state: ModemState) -> None:
        with self._lock:
            self._link = schema.LinkQuality(state.rssi_dbm, state.rsrp_dbm, state.sinr_db)

    def on_detections(self, detections: Detections) -> None:
        counts = detections.as_dict()
        now = self.clock()
        with self._lock:
            self._detections, self._detections_at = counts, now

    def on_mission_event(self, event: MissionEvent) -> None:
        phase = event.phase.value
        with self._lock:
            self._mission_id = event.mission_id
            self._phase = phase
        self._queue_event(event.event, phase, event.mission_id, schema.jsonable(event.detail))

    def on_order_ack(self, ack: OrderAck) -> None:
        """An order's answer goes up as an event, so the dispatcher learns its fate."""
        kind = "order-accepted" if ack.accepted else "order-refused"
        with self._lock:
            phase = self._phase
        self._queue_event(kind, phase, ack.order_id, schema.jsonable(ack.as_dict()))

    def on_order_update(self, update: OrderUpdate) -> None:
        """An order flying, done (with its outcome) or interrupted by a restart."""
        with self._lock:
            phase = self._phase
        detail = {"state": update.state, "outcome": update.outcome}
        self._queue_event(f"order-{update.state}", phase, update.order_id, detail)

    def on_command_ack(self, ack: CommandAck) -> None:
        """An operator command's answer, naming the command and the mission it went to."""
        kind = "command-accepted" if ack.accepted else "command-refused"
        with self._lock:
            phase = self._phase
        self._queue_event(kind, phase, ack.mission_id, schema.jsonable(ack.as_dict()))

    def on_integrity_alarm(self, alarm: IntegrityAlarm) -> None:
        with self._lock:
            self._alarms[alarm.kind] = alarm
            phase, mission = self._phase, self._mission_id
        detail = {"alarm": alarm.kind, "detail": alarm.detail, "value": alarm.value}
        detail["bound"] = alarm.bound
        self._queue_event("gps-integrity-alarm", phase, mission, schema.jsonable(detail))

    def on_integrity_cleared(self, cleared: IntegrityCleared) -> None:
        with self._lock:
            self._alarms.pop(cleared.kind, None)
            phase, mission = self._phase, self._mission_id
        self._queue_event("gps-integrity-cleared", phase, mission, {"alarm": cleared.kind})

    def _queue_event(
        self, kind: str, phase: str | None, mission: str | None, detail: object
    ) -> None:
        record_id, t = schema.new_id(), schema.utc_iso(self.wall_clock())

        def build(seq: int) -> bytes:
            def event(particulars: object) -> bytes:
                return schema.encode(
                    schema.Event(self.drone_id, seq, record_id, t, kind, mission, phase,
                                 particulars)  # type: ignore[arg-type]
                )  # fmt: skip

            try:
                return event(detail)
            except schema.RecordTooLarge as exc:
                # The event matters more than its particulars: keep it, with a preview.
                log.warning("event %s seq %d: detail cut to a preview: %s", kind, seq, exc)
                preview = json.dumps(detail, ensure_ascii=True, default=str)
                return event(
                    {
                        "truncated": True,
                        "record_bytes": exc.size,
                        "preview": preview[:DETAIL_PREVIEW_CHARS],
                    }
                )

        self.store.append("event", self.topics["events"], build)
        self._queued_one()

    # -- sampling ----------------------------------------------------------------------------

    def rate_hz(self) -> float:
        """Samples per second for the current phase (ended missions count as idle)."""
        with self._lock:
            phase = self._phase
        if phase is None:
            return self.rates["idle"]
        return self.rates.get(phase, self.rates["idle"])

    def tick(self, now: float | None = None) -> bool:
        """Queue a telemetry sample if one is due at `now` (default: the clock); True if it did.

        The next sample is due one period after this one: the period of the phase now, or
        the shorter one it had when this sample was taken (a switch to a faster rate takes
        effect at once, a switch to a slower one after the current period).
        """
        now = self.clock() if now is None else now
        period = 1.0 / self.rate_hz()
        with self._lock:
            if self._vehicle is None:
                return False
            last = self._last_sample
            if last is not None and now < last + min(period, self._period):
                return False
            self._last_sample, self._period = now, period
            sample = self._sample_locked(now)
        self.store.append("telemetry", self.topics["telemetry"], sample)
        self._queued_one()
        return True

    def _sample_locked(self, now: float) -> Callable[[int], bytes]:
        state = self._vehicle
        assert state is not None
        pos = state.position
        heading = _finite(state.heading_deg)
        pct = state.battery.remaining_pct  # MAVLink sends -1 for "unknown"
        vertical = None if state.velocity_ned_mps is None else -state.velocity_ned_mps[2]
        record_id, t = schema.new_id(), schema.utc_iso(self.wall_clock())
        fields = {
            "phase": self._phase,
            "armed": state.armed,
            "mode": state.mode,
            "position": None
            if pos is None
            else schema.Position(pos.lat, pos.lon, pos.alt_msl_m, pos.alt_rel_m),
            "heading_deg": None if heading is None else heading % 360.0,
            "ground_speed_mps": _finite(state.ground_speed_mps),
            "vertical_speed_mps": _finite(vertical),
            "battery": schema.Battery(
                pct if pct is not None and 0 <= pct <= 100 else None,
                _finite(state.battery.voltage_v),
            ),
            "gps": schema.GpsIntegrity(
                state.gps.fix_type, state.gps.satellites, tuple(sorted(self._alarms))
            ),
            "link": self._link,
            "detections": dict(self._detections)
            if self._detections_at is not None and now - self._detections_at <= DETECTIONS_FRESH_S
            else {},
        }

        def build(seq: int) -> bytes:
            return schema.encode(schema.Telemetry(self.drone_id, seq, record_id, t, **fields))

        return build

    def _queued_one(self) -> None:
        with self._lock:
            self._queued += 1
        with self._wake:
            self._wake.notify_all()

    # -- draining ----------------------------------------------------------------------------

    def _status(self, state: str) -> bytes:
        return schema.encode(
            schema.Status(
                self.drone_id,
                max(1, self.store.last_seq),
                schema.new_id(),
                schema.utc_iso(self.wall_clock()),
                state,
                self.status_ttl_s if state == "online" else None,
            )
        )

    def drain(self, stop: threading.Event) -> None:
        """Publish queued records oldest first until `stop` is set (the drain thread's body)."""
        failures = 0
        announced_at: float | None = None
        announced_for = -1  # the connection the last "online" went out on
        while not stop.is_set():
            connection = -1
            try:
                connection = self._connection()
                if (
                    announced_at is None
                    or connection != announced_for
                    or self.clock() - announced_at >= self.status_period_s
                ):
                    self.transport.publish(
                        self.topics["status"],
                        self._status("online"),
                        retain=True,
                        timeout_s=self.publish_timeout_s,
                    )
                    announced_at, announced_for = self.clock(), connection
                message = self._next_message()
                if message is None or stop.is_set():
                    continue
                records, payload = message
                self._send(records, payload)
                failures = 0
            except (TransportError, StoreError) as exc:
                announced_at = None  # the will may have fired: say "online" again first
                delay = self.backoff_s[min(failures, len(self.backoff_s) - 1)]
                failures += 1
                with self._lock:
                    self._retried += 1
                    self._last_error = str(exc)
                # Before the first connection (a modem still booting) this is expected.
                level = logging.WARNING if self.transport.connections else logging.INFO
                log.log(level, "telemetry uplink: %s; retrying in %g s", exc, delay)
                self._back_off(stop, delay, connection)

    def _send(self, records: list[Record], payload: bytes) -> None:
        """Publish one message and ack its records; a message the transport rejects for
        good is retried as its oldest record alone, and that record, rejected alone, is set
        aside. Other failures propagate (the drain retries them after a backoff)."""
        try:
            self.transport.publish(
                records[0].topic,
                payload,
                qos=1,
                retain=records[0].retain,
                timeout_s=self.publish_timeout_s,
            )
        except MessageRejected as exc:
            if len(records) > 1:
                log.warning("telemetry uplink: a %d-record message was rejected (%s); sending"
                            " its records one by one", len(records), exc)  # fmt: skip
                self._single_through = records[-1].seq
            else:
                self._set_aside(records[0], str(exc))
            return
        self.store.ack_through(records[-1].seq)
        self._valid = {seq for seq in self._valid if seq > records[-1].seq}
        with self._lock:
            self._published += len(records)
            self._messages += 1

    def _next_message(self) -> tuple[list[Record], bytes] | None:
        """The next message to publish: the oldest records that share a topic and fit one
        batch (a lone record after a rejection). None, after waiting, when there is nothing
        to send yet: the queue is empty (woken by the next record, or after 1 s for the
        heartbeat), or the message is worth lingering for; or when the oldest record was
        just set aside."""
        window = self.store.peek(self.max_batch + 1)
        if not window:
            with self._wake:
                self._wake.wait(min(1.0, self.status_period_s))
            return None
        head = window[0]
        problem = self._unsendable(head)
        if problem is not None:
            self._set_aside(head, problem)
            return None
        # The topic's drone: a queue written under an earlier drone_id still replays there.
        drone_id = schema.parse_topic(head.topic)[0]
        group = [head]
        single = head.seq <= self._single_through
        if not single:
            for record in window[1 : self.max_batch]:
                if record.topic != head.topic or record.retain != head.retain:
                    break
                if self._unsendable(record) is not None:
                    break  # dealt with when it is the oldest
                payloads = [r.payload for r in (*group, record)]
                if schema.batch_size(drone_id, payloads) > schema.MAX_MESSAGE_BYTES:
                    break
                group.append(record)
        now = time.monotonic()
        if self._head[0] != head.seq:
            self._head = (head.seq, now)
        waited = now - self._head[1]
        more_behind = len(group) < len(window)
        urgent = single or any(r.kind == "event" for r in group)
        if not (more_behind or urgent) and waited < self.linger_s:
            with self._wake:
                self._wake.wait(min(1.0, self.linger_s - waited))
            return None
        return group, schema.encode_batch(drone_id, [r.payload for r in group])

    def _unsendable(self, record: Record) -> str | None:
        """Why `record` can never be sent (not a valid record of its topic, a status, which
        is never batched, or too large for a message on its own), or None."""
        if record.seq in self._valid:
            return None
        try:
            decoded = schema.decode_for(record.topic, record.payload)
        except schema.SchemaError as exc:
            return f"not a valid record: {exc}"
        if isinstance(decoded, schema.Status):
            return "a status in the queue (statuses are sent directly, never batched)"
        if schema.batch_size(decoded.drone_id, [record.payload]) > schema.MAX_MESSAGE_BYTES:
            return (
                f"{len(record.payload)} bytes: no message can carry it (at most "
                f"{schema.MAX_MESSAGE_BYTES} bytes with its batch envelope)"
            )
        self._valid.add(record.seq)
        return None

    def _set_aside(self, record: Record, reason: str) -> None:
        """Move `record` out of the queue for good, and tell the operator (module doc)."""
        if not self.store.set_aside(record.seq, reason):
            return
        if _is_set_aside_report(record):
            return  # reporting the loss of a report could loop; the log and count have it
        detail = {
            "seq": record.seq,
            "kind": record.kind,
            "topic": record.topic,
            "bytes": len(record.payload),
            "reason": reason,
        }
        with self._lock:
            phase, mission = self._phase, self._mission_id
        self._queue_event(SET_ASIDE_EVENT, phase, mission, detail)

    def _back_off(self, stop: threading.Event, delay: float, failed_on: int) -> None:
        """Wait `delay` seconds, cut short when the transport is on another connection than
        the attempt that failed (`failed_on`, -1: it was down): the backoff spaces attempts on
        a link that claims to be up, it must not leave a link that just recovered idle while
        the queue holds a whole outage."""
        end = time.monotonic() + delay
        while not stop.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return
            now_on = self._connection()
            if now_on != -1 and now_on != failed_on:
                return
            stop.wait(min(0.1, left))

    def _connection(self) -> int:
        """Which connection the transport is on (its `connections` count); -1 while down."""
        return self.transport.connections if self.transport.connected else -1

    def _sample_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.tick_s):
            try:
                self.tick()
            except Exception:  # a bad reading must not end telemetry for the rest of the flight
                with self._lock:
                    self._sample_errors += 1
                log.exception("telemetry sample failed (%d so far)", self._sample_errors)

    def start(self) -> None:
        """Set the will, subscribe to the bus, and start the sampling and drain threads."""
        self.transport.set_will(self.topics["status"], self._status("offline"), retain=True)
        self.attach()
        self._stop.clear()
        self._threads = [
            threading.Thread(
                target=self._sample_loop, args=(self._stop,), name="telemetry-sample", daemon=True
            ),
            threading.Thread(
                target=self.drain, args=(self._stop,), name="telemetry-drain", daemon=True
            ),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def running(self) -> bool:
        """Whether the sampling and drain threads both run."""
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop both threads and say "offline" (best effort). Queued records stay in the
        store for the next start; the transport is left to its owner to close."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        for thread in self._threads:
            thread.join(timeout_s)
        if self.transport.connected:
            try:
                self.transport.publish(
                    self.topics["status"], self._status("offline"), retain=True, timeout_s=timeout_s
                )
            except TransportError as exc:
                log.warning("telemetry uplink: could not say offline: %s", exc)

    def stats(self) -> PublisherStats:
        store = self.store.stats()
        with self._lock:
            return PublisherStats(
                queued=self._queued,
                published=self._published,
                retried=self._retried,
                pending=store.pending,
                thinned=store.thinned,
                sample_errors=self._sample_errors,
                last_error=self._last_error,
                messages=self._messages,
                set_aside=store.set_aside,
                last_set_aside=store.last_set_aside,
            )


def _is_set_aside_report(record: Record) -> bool:
    """Whether `record` is a ``record-set-aside`` event."""
    try:
        decoded = schema.decode(record.payload)
    except schema.SchemaError:
        return False
    return isinstance(decoded, schema.Event) and decoded.kind == SET_ASIDE_EVENT


def _finite(value: float | None) -> float | None:
    """None for a missing or non-finite reading (JSON carries no NaN)."""
    return value if value is not None and value == value and abs(value) != float("inf") else None
