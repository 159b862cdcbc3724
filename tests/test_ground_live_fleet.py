"""The live feed sees the whole fleet on every instance (`ground.web.live_fleet`): the sans-I/O
core (decode, de-duplicate, bounded memory, batching), then two ground services on one
mosquitto shared subscription and one database, whose pages each get every record exactly
once although each ingest stores only its share."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="install the ground extra: pip install -e '.[ground]'")

import httpx
import paho.mqtt.client as mqtt

from companion.telemetry import schema
from ground.ingest import Decoder, IngestConfig, IngestStats, Refusal
from ground.store import Received
from ground.web.app import create_app
from ground.web.backend import Accounts, LiveStore
from ground.web.config import WebConfig
from ground.web.live_fleet import FleetFeed, live_client_id, live_topics
from sim.mqtt_broker import Broker, find_mosquitto, start_broker
from tests.ground_fixtures import db_url, pg_url  # noqa: F401
from tests.ground_web_fixtures import PASSWORD, event, form_csrf, served, status, telemetry
from tests.mqtt_fixtures import MOSQUITTO_SKIP
from tests.waiting import wait_until

NOW = time.time()


def _message(item: Received) -> tuple[str, bytes]:
    record = item.record
    return schema.topic(record.drone_id, schema.CHANNEL_OF[record.type]), schema.encode(record)


def _ids(batch: list[Received]) -> list[str]:
    return [item.record.id for item in batch]


# -- the core -----------------------------------------------------------------------------


def test_each_record_is_passed_on_once_in_the_order_it_came() -> None:
    feed = FleetFeed(Decoder(), flush_s=0.2)
    first = [telemetry("d1", seq, NOW + seq, 51.5, -0.1) for seq in range(1, 4)]
    other = event("d2", 1, NOW, "enter", "o-1")
    for item in [*first, other, first[1], first[0]]:  # the last two: re-sent by the drone
        assert feed.receive(*_message(item), now=10.0, received_at=NOW) is None
    batch = schema.encode_batch("d1", [schema.encode(i.record) for i in first])
    feed.receive(schema.topic("d1", "telemetry"), batch, now=10.05, received_at=NOW)
    assert feed.pending == 4
    assert not feed.due(10.1) and feed.wait_s(10.1) == pytest.approx(0.1)
    assert feed.due(10.25)
    taken = feed.take()
    assert _ids(taken) == _ids([*first, other])
    assert taken[0].received_at == NOW
    assert feed.counts["duplicates"] == 5 and feed.counts["published"] == 4
    assert feed.take() == [] and feed.wait_s(11.0) is None and not feed.due(11.0)


def test_a_full_batch_is_due_at_once() -> None:
    feed = FleetFeed(Decoder(), max_batch_records=3)
    for seq in range(1, 4):
        assert not feed.full
        feed.receive(*_message(telemetry("d1", seq, NOW, 51.5, -0.1)), now=0.0, received_at=NOW)
    assert feed.full and feed.due(0.0)


def test_memory_is_bounded_and_the_oldest_is_forgotten() -> None:
    feed = FleetFeed(Decoder(), remember=3)
    items = [telemetry("d1", seq, NOW, 51.5, -0.1) for seq in range(1, 6)]
    for item in items:
        feed.receive(*_message(item), now=0.0, received_at=NOW)
    feed.take()
    feed.receive(*_message(items[4]), now=1.0, received_at=NOW)  # remembered: dropped
    feed.receive(*_message(items[0]), now=1.0, received_at=NOW)  # forgotten: shown again
    assert _ids(feed.take()) == [items[0].record.id]
    assert len(feed._seen) == 3


def test_refusals_are_the_ingests_and_nothing_of_them_is_passed_on() -> None:
    feed = FleetFeed(Decoder(allowed_drones={"d1"}))
    stranger = _message(telemetry("d9", 1, NOW, 51.5, -0.1))
    topic = schema.topic("d1", "telemetry")
    cases = {
        "unknown-drone": stranger,
        "malformed": (topic, b"{not json"),
        "oversized": (topic, b"x" * (schema.MAX_PAYLOAD_BYTES + 1)),
        "wrong-topic": ("skycourier/v1/d1/commands", b"{}"),
    }
    for reason, (topic_, payload) in cases.items():
        refusal = feed.receive(topic_, payload, now=0.0, received_at=NOW)
        assert isinstance(refusal, Refusal) and refusal.reason == reason
    assert feed.pending == 0 and sum(feed.refused.values()) == 4


@pytest.mark.parametrize(
    "kw", [{"remember": 0}, {"max_batch_records": 0}, {"flush_s": 0.0}, {"flush_s": 61.0}]
)
def test_bad_settings_are_refused_by_name(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kw))):
        FleetFeed(Decoder(), **kw)  # type: ignore[arg-type]


def test_the_live_subscription_is_its_own_client_on_the_unshared_topics() -> None:
    ingest = IngestConfig(client_id="ground-a")
    assert live_client_id(ingest.client_id) == "ground-a-live"
    assert live_topics() == [
        topic.replace(f"$share/{ingest.group}/", "") for topic in ingest.topics()
    ]


# -- two services on one shared subscription ----------------------------------------------


@dataclass
class Stream:
    """One browser's ``/api/live``, read on a thread of its own until `sentinel` comes."""

    client: httpx.Client
    sentinel: str
    kinds: list[str] = field(default_factory=list)
    telemetry: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    opened: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def read(self) -> None:
        try:
            with self.client.stream("GET", "/api/live") as response:
                lines = response.iter_lines()
                assert next(lines).startswith("retry:")
                self.opened.set()
                kind = ""
                for line in lines:
                    if line.startswith("event: "):
                        kind = line.removeprefix("event: ")
                        self.kinds.append(kind)
                    elif line.startswith("data: ") and kind == "records":
                        data = json.loads(line.removeprefix("data: "))
                        self.telemetry += [p["record_id"] for p in data["telemetry"]]
                        self.events += [e["record_id"] for e in data["events"]]
                        self.statuses += [s["record_id"] for s in data["statuses"]]
                        if self.sentinel in self.events:
                            return
        finally:
            self.done.set()


@pytest.fixture
def broker() -> Iterator[Broker]:
    """A mosquitto of this test's own: the ingests' persistent sessions must not outlive it."""
    if find_mosquitto() is None:
        pytest.skip(MOSQUITTO_SKIP)
    with start_broker("mosquitto") as running:
        yield running


def test_every_instance_shows_every_record_once_whichever_instance_stored_it(
    broker: Broker,
    db_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    stores = [LiveStore.open(db_url) for _ in range(2)]
    Accounts(stores[0]).add("alice", PASSWORD)
    run = uuid.uuid4().hex[:8]
    apps = [
        create_app(
            WebConfig(
                db_url=db_url,
                broker=f"{broker.host}:{broker.port}",
                secret_file=tmp_path / "secret.key",  # one key: a session is valid on both
                ingest_client_id=f"ground-{name}-{run}",
            ),
            store,
        )
        for name, store in zip("ab", stores, strict=True)
    ]
    drone = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fleet-{run}")
    drone.connect(broker.host, broker.port)
    drone.loop_start()

    def send(items: list[Received], times: int = 1) -> None:
        for item in items:
            for _ in range(times):
                drone.publish(*_message(item), qos=1).wait_for_publish(10)

    # A status the broker keeps: old news to a page, which has it from REST, never live.
    kept = status("d4", 1, NOW - 60)
    drone.publish(*_message(kept), qos=1, retain=True).wait_for_publish(10)
    try:
        with served(apps[0]) as base_a, served(apps[1]) as base_b:
            services = [app.state.ground for app in apps]
            for app, service in zip(apps, services, strict=True):
                assert app.state.live.wait_connected(20), app.state.live.stats()
                assert service.ingestor.wait_connected(20), service.ingestor.stats()
                assert service.hub.publish not in service.store.listeners  # one source
            # Nobody watches yet: the live feed skips it (the ingest stores it).
            early = telemetry("d0", 1, NOW, 51.4, -0.1)
            send([early])
            wait_until(lambda: all(a.state.live.stats().skipped == 1 for a in apps), "skipped")

            clients = [httpx.Client(base_url=base, timeout=30) for base in (base_a, base_b)]
            page = clients[0].get("/login")
            signed_in = clients[0].post(
                "/login",
                data={"username": "alice", "password": PASSWORD, "csrf": form_csrf(page.text)},
            )
            assert "skycourier_session" in clients[0].cookies, signed_in.text
            clients[1].cookies.update(clients[0].cookies)  # signed in on A, watching on B
            sentinel = event("d1", 999, NOW + 99, "landed", None)
            streams = [Stream(client, sentinel.record.id) for client in clients]
            readers = [threading.Thread(target=s.read, daemon=True) for s in streams]
            for reader in readers:
                reader.start()
            wait_until(lambda: all(s.opened.is_set() for s in streams), "both streams open")
            wait_until(lambda: all(s.hub.subscribers == 1 for s in services), "subscribed")

            fleet = [
                telemetry(f"d{d}", seq, NOW + seq / 5, 51.5 + seq / 1e4, -0.1, battery=70 + d)
                for seq in range(1, 21)
                for d in (1, 2, 3)
            ]
            events = [event("d2", 100, NOW + 5, "enter", "o-7"), status("d3", 200, NOW)]
            send(fleet + events)
            send(fleet[:10] + events, times=2)  # at-least-once: re-sent after a lost link
            drone.publish(schema.topic("d1", "telemetry"), b"{not json", qos=1).wait_for_publish()
            send([sentinel])
            for stream in streams:
                assert stream.done.wait(60), f"{stream.sentinel} never came: {stream.kinds}"

            for stream in streams:
                assert set(stream.kinds) == {"records"}  # no resync: nothing was dropped
                assert sorted(stream.telemetry) == sorted(_ids(fleet))  # each exactly once
                assert stream.events == [events[0].record.id, sentinel.record.id]
                assert stream.statuses == [events[1].record.id]
            for app in apps:
                stats = app.state.live.stats()
                assert stats.refused["malformed"] == 1 and stats.duplicates == 2 * 12
            # ... while each ingest stored only its share, and the two together all of it.
            total = len(fleet) + len(events) + 3  # the kept status, early sample, sentinel

            def ingested() -> list[IngestStats]:
                return [service.ingestor.stats() for service in services]

            wait_until(
                lambda: (
                    sum(st.stored for st in ingested()) == total
                    and not any(st.pending for st in ingested())
                ),
                "the fleet stored",
            )
            assert all(0 < st.stored < total for st in ingested()), ingested()
            assert len(stores[0].track("d1")) == 20
            for client in clients:
                client.close()
    finally:
        drone.loop_stop()
        drone.disconnect()
        for store in stores:
            store.close()
