"""The telemetry publisher: sampling rates by phase on a fake clock, events queued as they
happen, and at-least-once ordered delivery through a transport that fails, loses
acknowledgements, and comes back after a restart."""

from __future__ import annotations

import json
import random
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from companion.bus import Bus
from companion.gps.integrity import IntegrityAlarm, IntegrityCleared
from companion.mission.events import MissionEvent, Phase
from companion.modem.mqtt_at import AtMqttLimitError
from companion.modem.state import initial_state
from companion.telemetry import schema
from companion.telemetry.publisher import TelemetryPublisher
from companion.telemetry.store import Store
from companion.telemetry.transport import TransportError
from firmware_bridge.state import Battery, GpsInfo, Position, VehicleState
from tests.waiting import wait_until

STATUS = "skycourier/v1/d1/status"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FlakyTransport:
    """Delivers to `delivered`; fails when `should_fail(call)` says so: "down" fails before
    the broker has the message, "ack-lost" after (the broker delivers it, the PUBACK is lost)."""

    def __init__(self, should_fail: Callable[[int], str | None] = lambda call: None) -> None:
        self.should_fail = should_fail
        self.delivered: list[tuple[str, bytes, bool]] = []
        self.will: tuple[str, bytes, bool] | None = None
        self.calls = 0
        self.lock = threading.Lock()

    @property
    def connected(self) -> bool:
        return True

    @property
    def connections(self) -> int:
        return 1  # one connection that never drops: failures are per publish

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout_s: float = 30.0,
    ) -> None:
        with self.lock:
            self.calls += 1
            failure = self.should_fail(self.calls)
            if failure == "down":
                raise TransportError("broker test:1883 refused the connection: test outage")
            self.delivered.append((topic, payload, retain))
            if failure == "ack-lost":
                raise TransportError("connection to broker test:1883 lost before the PUBACK")

    def subscribe(self, topic: str, callback: Callable[[str, bytes], None]) -> None:
        raise AssertionError("the publisher does not subscribe")

    def set_will(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = True) -> None:
        self.will = (topic, payload, retain)

    def close(self) -> None:
        pass

    def records(self) -> list[schema.Record]:
        with self.lock:
            return [r for t, p, _ in self.delivered for r in schema.decode_message(t, p)]


def _state(alt: float = 30.0) -> VehicleState:
    return VehicleState(
        wall_time=0.0,
        armed=True,
        mode="AUTO",
        position=Position(-35.36, 149.16, 614.0 + alt, alt),
        velocity_ned_mps=(3.0, 4.0, -1.5),
        heading_deg=-90.0,
        battery=Battery(voltage_v=15.9, remaining_pct=-1),
        gps=GpsInfo(fix_type=3, satellites=11),
    )


def _publisher(tmp_path: Path, transport: FlakyTransport, clock: FakeClock, **kw: object):
    bus = Bus()
    store = Store(tmp_path / "queue.db")
    publisher = TelemetryPublisher(
        bus, store, transport, "d1", clock, wall_clock=lambda: 1_795_000_000.0 + clock.now,
        backoff_s=(0.001, 0.002), **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    return bus, store, publisher


def _queued(store: Store) -> list[schema.Record]:
    return [schema.decode_for(r.topic, r.payload) for r in store.peek(100_000)]


def test_rates_follow_the_mission_phase(tmp_path: Path) -> None:
    clock = FakeClock()
    bus, store, publisher = _publisher(tmp_path, FlakyTransport(), clock)
    publisher.attach()
    assert not publisher.tick(0.0)  # nothing known about the vehicle yet: nothing to say
    bus.publish(_state())

    def run(seconds: float) -> int:
        before = store.pending()
        end = clock.now + seconds
        while clock.now < end - 1e-9:
            publisher.tick(clock.now)
            clock.now = round(clock.now + 0.01, 6)
        return store.pending() - before

    assert run(50.0) == 10  # idle on the ground: 0.2 Hz
    bus.publish(MissionEvent("m1", Phase.CRUISE, "enter"))
    cruise = run(20.0)
    bus.publish(MissionEvent("m1", Phase.DESCEND, "enter"))
    descend = run(4.0)
    bus.publish(MissionEvent("m1", Phase.DONE, "done"))
    done = run(20.0)
    # 1 Hz cruise, 5 Hz descend, 0.2 Hz after; each faster phase starts with a sample at once.
    assert (cruise, descend, done) == (20, 20, 4)


def test_custom_rates_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rate for phase 'cruise' must be > 0 Hz, got 0"):
        _publisher(tmp_path, FlakyTransport(), FakeClock(), rates={"idle": 1.0, "cruise": 0})
    with pytest.raises(ValueError, match="need an 'idle' entry"):
        _publisher(tmp_path, FlakyTransport(), FakeClock(), rates={"cruise": 1.0})


def test_records_carry_the_whole_picture(tmp_path: Path) -> None:
    clock = FakeClock()
    bus, store, publisher = _publisher(tmp_path, FlakyTransport(), clock)
    publisher.attach()
    bus.publish(_state())
    bus.publish(MissionEvent("m7", Phase.CRUISE, "enter", {"leg": (1, 2), "phase": Phase.CRUISE}))
    bus.publish(IntegrityAlarm("jump", "companion jumped 300 m", 300.0, 40.0, 1.0))
    bus.publish(replace(initial_state(0.0), rssi_dbm=-71, sinr_db=9.5))
    assert publisher.tick(0.0)
    bus.publish(IntegrityCleared("jump", 2.0))
    clock.now = 1.0
    assert publisher.tick()

    enter, alarm, sample, cleared, after = _queued(store)
    assert isinstance(enter, schema.Event)
    assert (enter.kind, enter.mission_id, enter.phase) == ("enter", "m7", "cruise")
    assert enter.detail == {"leg": [1, 2], "phase": "cruise"}
    assert isinstance(alarm, schema.Event) and alarm.kind == "gps-integrity-alarm"
    assert alarm.detail["alarm"] == "jump" and alarm.mission_id == "m7"
    assert isinstance(sample, schema.Telemetry)
    assert sample.phase == "cruise" and sample.armed and sample.mode == "AUTO"
    assert sample.position == schema.Position(-35.36, 149.16, 644.0, 30.0)
    assert sample.ground_speed_mps == pytest.approx(5.0)
    assert sample.vertical_speed_mps == pytest.approx(1.5)  # NED down -1.5: climbing
    assert sample.heading_deg == 270.0
    assert sample.battery == schema.Battery(None, 15.9)  # MAVLink's -1 means unknown
    assert sample.gps == schema.GpsIntegrity(3, 11, ("jump",)) and sample.gps.status == "alarm"
    assert sample.link == schema.LinkQuality(-71, None, 9.5)
    assert isinstance(cleared, schema.Event) and cleared.kind == "gps-integrity-cleared"
    assert isinstance(after, schema.Telemetry) and after.gps.status == "ok"
    seqs = [r.seq for r in (enter, alarm, sample, cleared, after)]
    assert seqs == [1, 2, 3, 4, 5]
    assert sample.t == "2026-11-18T11:06:40.000Z" and after.t == "2026-11-18T11:06:41.000Z"
    assert len({r.id for r in (enter, alarm, sample, cleared, after)}) == 5


def _fill(bus: Bus, publisher: TelemetryPublisher, n: int) -> None:
    bus.publish(_state())
    for i in range(n):
        if i % 7 == 0:
            bus.publish(MissionEvent("m1", Phase.CRUISE, f"event-{i}"))
        else:
            publisher.tick(float(i * 10))


def _delivered_in_order(transport: FlakyTransport, queued: list[schema.Record]) -> None:
    """Every queued record arrived, first copies in order; a repeat is the same record in a
    message re-sent after its acknowledgement was lost (batches: a whole message again)."""
    arrived = [r for r in transport.records() if not isinstance(r, schema.Status)]
    first_copies: dict[str, schema.Record] = {}
    for record in arrived:
        assert first_copies.setdefault(record.id, record) == record, "same id, other content"
    assert list(first_copies.values()) == queued, "a record overtook an older one, or is missing"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_at_least_once_in_order_through_a_flaky_link(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)

    def flaky(call: int) -> str | None:
        roll = rng.random()
        return "down" if roll < 0.25 else "ack-lost" if roll < 0.35 else None

    transport, clock = FlakyTransport(flaky), FakeClock()
    bus, store, publisher = _publisher(tmp_path, transport, clock)
    publisher.attach()
    _fill(bus, publisher, 150)
    queued = _queued(store)
    assert len(queued) == 150

    publisher.start()
    try:
        wait_until(lambda: store.pending() == 0, "draining the queue")
    finally:
        publisher.stop()
    _delivered_in_order(transport, queued)
    stats = publisher.stats()
    assert stats.published == 150 and stats.pending == 0 and stats.retried > 0
    assert "test outage" in (stats.last_error or "") or "PUBACK" in (stats.last_error or "")


def test_status_online_first_again_after_an_outage_and_offline_at_stop(tmp_path: Path) -> None:
    transport, clock = FlakyTransport(lambda call: "down" if call in (3, 4) else None), FakeClock()
    bus, store, publisher = _publisher(tmp_path, transport, clock)
    publisher.attach()
    _fill(bus, publisher, 5)
    publisher.start()
    wait_until(lambda: store.pending() == 0, "draining the queue")
    publisher.stop()

    assert transport.will is not None
    will_topic, will_payload, will_retain = transport.will
    will = schema.decode_for(will_topic, will_payload)
    assert (will_topic, will_retain) == (STATUS, True)
    assert isinstance(will, schema.Status) and will.state == "offline"
    kinds = [r.state if isinstance(r, schema.Status) else r.type for r in transport.records()]
    # online, record 1, (2 fails twice), online again, records 2..5, offline at stop
    assert kinds[0] == "online" and kinds[-1] == "offline"
    assert kinds[1:-1].count("online") == 1
    assert [retain for topic, _, retain in transport.delivered if topic == STATUS] == [True] * 3


def test_queue_replays_after_a_restart(tmp_path: Path) -> None:
    """Records queued while the link is down survive the process; the next run sends them,
    oldest first, before anything new."""
    down, clock = FlakyTransport(lambda call: "down"), FakeClock()
    bus, store, publisher = _publisher(tmp_path, down, clock)
    publisher.attach()
    _fill(bus, publisher, 30)
    publisher.start()
    wait_until(lambda: publisher.stats().retried >= 3, "retrying")
    publisher.stop()
    queued = _queued(store)
    store.close()
    assert len(queued) == 30 and not [r for r in down.records() if r.type != "status"]

    up = FlakyTransport()
    bus2, store2, publisher2 = _publisher(tmp_path, up, clock)
    assert store2.pending() == 30
    publisher2.attach()
    bus2.publish(_state())
    publisher2.tick(10_000.0)  # a new sample, queued behind the backlog
    publisher2.start()
    wait_until(lambda: store2.pending() == 0, "replaying the backlog")
    publisher2.stop()
    replayed = [r for r in up.records() if not isinstance(r, schema.Status)]
    assert replayed[:30] == queued
    assert replayed[30].seq == 31


def test_a_bad_reading_does_not_stop_sampling(tmp_path: Path) -> None:
    clock = FakeClock()
    bus, store, publisher = _publisher(tmp_path, FlakyTransport(), clock)
    publisher.attach()
    bus.publish(_state())
    bus.publish(
        VehicleState(wall_time=0.0, position=Position(95.0, 0.0, 0.0, 0.0))  # impossible latitude
    )
    with pytest.raises(schema.SchemaError, match=r"telemetry\.pos\.lat"):
        publisher.tick(0.0)
    assert store.pending() == 0  # nothing half-written
    bus.publish(_state())
    assert publisher.tick(100.0)


class OutageTransport(FlakyTransport):
    """Down (not connected, publishes refused) until `restore()`."""

    def __init__(self) -> None:
        super().__init__(lambda call: None if self.up else "down")
        self.up = False

    @property
    def connected(self) -> bool:
        return self.up

    @property
    def connections(self) -> int:
        return int(self.up)


def test_a_link_that_comes_back_is_used_at_once_not_after_the_backoff(tmp_path: Path) -> None:
    transport, clock = OutageTransport(), FakeClock()
    bus = Bus()
    store = Store(tmp_path / "queue.db")
    publisher = TelemetryPublisher(bus, store, transport, "d1", clock, backoff_s=(600.0,))
    publisher.attach()
    _fill(bus, publisher, 5)
    publisher.start()
    try:
        wait_until(lambda: publisher.stats().retried >= 1, "a failed attempt")
        transport.up = True  # coverage is back: the 600 s backoff must not be waited out
        wait_until(lambda: store.pending() == 0, "draining the queue", within_s=10.0)
    finally:
        publisher.stop()
    assert publisher.stats().published == 5


# -- batches, lingering, records set aside, status time-to-live ------------------------------


class Messages(FlakyTransport):
    """Records each message's records; `reject(payload)` says which messages the link
    refuses for good (`MessageRejected`, as the modem's AtMqttLimitError is)."""

    def __init__(self, reject: Callable[[bytes], bool] = lambda payload: False) -> None:
        super().__init__()
        self.reject = reject
        self.rejected = 0

    def publish(self, topic: str, payload: bytes, **kw: object) -> None:  # type: ignore[override]
        if self.reject(payload):
            with self.lock:
                self.rejected += 1
            raise AtMqttLimitError(f"payload of {len(payload)} bytes refused")
        super().publish(topic, payload, **kw)  # type: ignore[arg-type]

    def messages(self) -> list[list[schema.Record]]:
        with self.lock:
            return [schema.decode_message(t, p) for t, p, _ in self.delivered if t != STATUS]


def _run(publisher: TelemetryPublisher, store: Store) -> None:
    publisher.start()
    try:
        wait_until(lambda: store.pending() == 0, "draining the queue")
    finally:
        publisher.stop()


def test_a_backlog_goes_out_in_few_full_messages(tmp_path: Path) -> None:
    """An outage's backlog (5 Hz samples and events) replays in batches of the schema's
    message size, in order, every record once."""
    transport, clock = Messages(), FakeClock()
    bus, store, publisher = _publisher(tmp_path, transport, clock)
    publisher.attach()
    bus.publish(_state())
    for i in range(300):
        if i % 100 == 50:
            bus.publish(MissionEvent("m1", Phase.DESCEND, f"event-{i}"))
        else:
            publisher.tick(i * 0.2)
    queued = _queued(store)
    _run(publisher, store)
    messages = transport.messages()
    assert [r for m in messages for r in m] == queued
    # ~20 samples a message; each event goes apart and splits the run of samples
    assert len(queued) > 190 and len(messages) <= len(queued) // 15 + 2 * 3, len(messages)
    for (_topic, payload, _), records in zip(
        [d for d in transport.delivered if d[0] != STATUS], messages, strict=True
    ):
        assert len(payload) <= schema.MAX_MESSAGE_BYTES
        assert len({r.type for r in records}) == 1  # one channel per message
    stats = publisher.stats()
    assert (stats.published, stats.messages) == (len(queued), len(messages))


def test_a_message_that_is_not_full_lingers_but_an_event_does_not(tmp_path: Path) -> None:
    transport, clock = Messages(), FakeClock()
    bus, store, publisher = _publisher(tmp_path, transport, clock, linger_s=600.0)
    publisher.attach()
    bus.publish(_state())
    publisher.start()
    try:
        publisher.tick(0.0)
        wait_until(lambda: publisher._head[0] == 1, "the drain seeing the first sample")
        publisher.tick(10.0)
        publisher.tick(20.0)
        bus.publish(MissionEvent("m1", Phase.DESCEND, "enter"))  # an event: no waiting
        wait_until(lambda: store.pending() == 0, "the event and what lingered before it")
    finally:
        publisher.stop()
    assert [[r.seq for r in m] for m in transport.messages()] == [[1, 2, 3], [4]]


def _valid_sample(seq: int) -> bytes:
    return schema.encode(schema.Telemetry("d1", seq, f"id-{seq}", "2026-11-27T21:44:44.123Z"))


TEL = "skycourier/v1/d1/telemetry"


def test_unsendable_records_are_set_aside_counted_and_reported(tmp_path: Path) -> None:
    """A corrupt record and one larger than any message (as an older version could queue)
    no longer block the queue: each is moved aside once, counted, logged and reported to
    the operator as an event; everything else is delivered in order."""
    transport, clock = Messages(), FakeClock()
    _bus, store, publisher = _publisher(tmp_path, transport, clock)
    store.append("telemetry", TEL, _valid_sample)
    store.append("telemetry", TEL, b'{"v":2,"type":"telemetry", cut short')
    big = schema.Event(
        "d1", 3, "big", "2026-11-27T21:44:44.123Z", "note", detail={"x": "y" * 12_000}
    )
    store.append("event", "skycourier/v1/d1/events", json.dumps(schema.to_dict(big)).encode())
    store.append("telemetry", TEL, _valid_sample)
    _run(publisher, store)
    delivered = [r for m in transport.messages() for r in m]
    assert [r.seq for r in delivered if isinstance(r, schema.Telemetry)] == [1, 4]
    reports = [r for r in delivered if isinstance(r, schema.Event)]
    assert [r.kind for r in reports] == ["record-set-aside"] * 2
    assert [(r.detail["seq"], r.detail["kind"]) for r in reports] == [
        (2, "telemetry"),
        (3, "event"),
    ]
    assert "not a valid record: payload is not JSON" in reports[0].detail["reason"]
    assert "no message can carry it" in reports[1].detail["reason"]
    stats = publisher.stats()
    assert stats.set_aside == 2 and "no message can carry it" in (stats.last_set_aside or "")
    kept = sqlite3.connect(tmp_path / "queue.db").execute("SELECT seq FROM set_aside").fetchall()
    assert kept == [(2,), (3,)]  # moved, not deleted: there to inspect


def test_a_message_the_link_rejects_is_split_and_only_its_culprit_set_aside(
    tmp_path: Path,
) -> None:
    """The issue's endless AtMqttLimitError: the transport refuses any message holding one
    record. The batch is retried record by record; that record alone is set aside."""
    transport = Messages(reject=lambda payload: b'"poison"' in payload)
    clock = FakeClock()
    _bus, store, publisher = _publisher(tmp_path, transport, clock)
    for seq in range(1, 7):
        if seq == 3:
            poison = schema.Telemetry("d1", 3, "x", "2026-11-27T21:44:44.123Z", mode="poison")
            store.append("telemetry", TEL, schema.encode(poison))
        else:
            store.append("telemetry", TEL, _valid_sample)
    _run(publisher, store)
    telemetry = [r.seq for m in transport.messages() for r in m if r.type == "telemetry"]
    assert telemetry == [1, 2, 4, 5, 6]
    assert transport.rejected == 2  # the batch, then the record alone: never again
    assert publisher.stats().set_aside == 1


def test_a_report_that_cannot_be_sent_is_not_reported_again(tmp_path: Path) -> None:
    """A link that refuses every event: the event is set aside and reported, the report is
    set aside and not reported (that would never end)."""
    transport = Messages(reject=lambda payload: b'"type":"event"' in payload)
    clock = FakeClock()
    bus, store, publisher = _publisher(tmp_path, transport, clock)
    publisher.attach()
    bus.publish(MissionEvent("m1", Phase.CRUISE, "enter"))
    publisher.start()
    try:
        wait_until(lambda: publisher.stats().set_aside == 2, "the event and its report set aside")
    finally:
        publisher.stop()
    assert store.pending() == 0 and publisher.stats().queued == 2  # the report, once


def test_an_event_detail_too_large_for_a_record_is_cut_to_a_preview(tmp_path: Path) -> None:
    transport, clock = Messages(), FakeClock()
    bus, store, publisher = _publisher(tmp_path, transport, clock)
    publisher.attach()
    bus.publish(MissionEvent("m1", Phase.ABORT, "abort", {"log": "z" * 50_000}))
    (event,) = _queued(store)
    assert isinstance(event, schema.Event) and event.kind == "abort"
    assert event.detail["truncated"] is True and event.detail["record_bytes"] > 50_000
    assert event.detail["preview"].startswith('{"log": "zzz')
    assert len(event.detail["preview"]) == 512


def test_online_carries_a_time_to_live_of_three_heartbeats(tmp_path: Path) -> None:
    transport, clock = Messages(), FakeClock()
    _bus, store, publisher = _publisher(tmp_path, transport, clock, status_period_s=20.0)
    store.append("telemetry", TEL, _valid_sample)
    _run(publisher, store)
    statuses = [r for r in transport.records() if isinstance(r, schema.Status)]
    assert (statuses[0].state, statuses[0].ttl_s) == ("online", 60.0)
    assert (statuses[-1].state, statuses[-1].ttl_s) == ("offline", None)
