"""The telemetry ingest with a real mosquitto: the drone's own publisher into the ground
store exactly once, hostile messages refused and counted, a database outage and a restart
that lose nothing, and two instances on one shared subscription, one of them killed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sqlalchemy", reason="install the ground extra: pip install -e '.[ground]'")

import paho.mqtt.client as mqtt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.exc import OperationalError

from companion.bus import Bus
from companion.intake.intake import OrderAck, OrderUpdate
from companion.mission.events import MissionEvent, Phase
from companion.telemetry import schema
from companion.telemetry.publisher import TelemetryPublisher
from companion.telemetry.store import Store as DroneQueue
from companion.telemetry.transport import PahoTransport
from firmware_bridge.state import Battery, GpsInfo, Position, VehicleState
from ground.ingest import REASONS, Decoder, IngestConfig, Ingestor, Refusal
from ground.store import Store
from sim.mqtt_broker import Broker, find_mosquitto, start_broker
from tests.ground_fixtures import db_url, pg_url  # noqa: F401
from tests.mqtt_fixtures import MOSQUITTO_SKIP
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]
DIGEST = "cd" * 32


@pytest.fixture
def broker() -> Iterator[Broker]:
    """A mosquitto of this test's own: persistent sessions must not outlive the test."""
    if find_mosquitto() is None:
        pytest.skip(MOSQUITTO_SKIP)
    with start_broker("mosquitto") as running:
        yield running


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path}/ground.db") as store:
        yield store


def config(broker: Broker, client_id: str = "ground-1", **kw: Any) -> IngestConfig:
    return IngestConfig(client_id=client_id, host=broker.host, port=broker.port, **kw)


def running(store: Store, cfg: IngestConfig) -> Ingestor:
    ingestor = Ingestor(store, cfg)
    ingestor.start()
    assert ingestor.wait_connected(10), ingestor.stats().last_error
    return ingestor


def publisher_client(broker: Broker) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fleet-{uuid.uuid4().hex}")
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def send(client: mqtt.Client, topic: str, payload: bytes, retain: bool = False) -> None:
    client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)


def samples(drone: str, first: int, count: int) -> list[bytes]:
    t = schema.utc_iso(time.time())
    out = []
    for seq in range(first, first + count):
        where = schema.Position(52.0, 4.0 + seq * 1e-5, 20.0, 15.0)
        out.append(schema.encode(schema.Telemetry(drone, seq, schema.new_id(), t, position=where)))
    return out


def stored_count(store: Store, table: str = "telemetry") -> int:
    with store.engine.connect() as conn:
        return conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one()


# -- the drone's own publisher ------------------------------------------------------------


def _vehicle() -> VehicleState:
    return VehicleState(
        wall_time=0.0,
        armed=True,
        mode="AUTO",
        position=Position(-35.36, 149.16, 634.0, 20.0),
        velocity_ned_mps=(3.0, 4.0, -0.5),
        heading_deg=90.0,
        battery=Battery(voltage_v=15.9, remaining_pct=76),
        gps=GpsInfo(fix_type=3, satellites=11),
    )


def test_the_drones_publisher_feeds_the_store_exactly_once(
    broker: Broker, sqlite_store: Store, tmp_path: Path
) -> None:
    """The real uplink (durable queue, batches, status with TTL) on the IP transport; then
    every message it sent arrives a second time (at-least-once redelivery)."""
    sqlite_store.create_order("o-1", "d1", DIGEST, created_by="dispatcher")
    ingestor = running(sqlite_store, config(broker))
    sent: list[tuple[str, bytes]] = []
    tap = publisher_client(broker)
    tap.on_message = lambda _c, _u, m: sent.append((m.topic, bytes(m.payload)))
    tap.subscribe("skycourier/v1/d1/+", qos=1)

    # The sampler's clock stands still at the last sample's time: the samples are the 40
    # made below, at 4 Hz (a period exact in binary floating point).
    times = [60.0 + i * 0.25 for i in range(40)]
    bus, frozen = Bus(), times[-1]
    transport = PahoTransport(broker.host, broker.port, "drone-d1")
    queue = DroneQueue(tmp_path / "queue.db")
    uplink = TelemetryPublisher(
        bus, queue, transport, "d1", lambda: frozen, rates={"idle": 4.0}, linger_s=0.2
    )
    uplink.attach()
    bus.publish(_vehicle())
    for at in times:
        assert uplink.tick(at)
    bus.publish(OrderAck(True, "accepted", "ok", "mqtt", "o-1", DIGEST))
    bus.publish(OrderUpdate("o-1", "flying"))
    bus.publish(MissionEvent("o-1", Phase.RELEASE, "released", {"drop": "drop-1"}))
    bus.publish(OrderUpdate("o-1", "done", "delivered"))
    uplink.start()
    try:
        wait_until(lambda: uplink.stats().pending == 0, "the drone's queue draining")
    finally:
        uplink.stop()
        transport.close()
        queue.close()
    wait_until(lambda: stored_count(sqlite_store) == 40, "40 samples stored")
    wait_until(lambda: sqlite_store.drone("d1").status_state == "offline", "the goodbye")  # type: ignore[union-attr]
    order = sqlite_store.order("o-1")
    assert order is not None and (order.state, order.outcome) == ("done", "delivered")
    assert [h.step for h in sqlite_store.handovers(order_id="o-1")] == ["released"]
    assert [p.lon for p in sqlite_store.track("d1")] == [149.16] * 40

    wait_until(lambda: any(b'"offline"' in p for _, p in sent), "the tap seeing it all")
    tap.disconnect()
    tap.loop_stop()
    sent = list(sent)
    before = ingestor.stats()
    again = publisher_client(broker)
    for topic, payload in sent:
        send(again, topic, payload)
    wait_until(lambda: ingestor.stats().messages == before.messages + len(sent), "redelivery")
    wait_until(lambda: ingestor.stats().pending == 0, "the redelivery committed")
    after = ingestor.stats()
    assert after.stored == before.stored  # nothing new
    assert after.duplicates - before.duplicates == sum(
        len(schema.decode_message(t, p)) for t, p in sent
    )
    assert stored_count(sqlite_store) == 40
    assert stored_count(sqlite_store, "events") == 4
    again.disconnect()
    again.loop_stop()
    ingestor.stop()


# -- hostile input ------------------------------------------------------------------------


def test_hostile_messages_are_refused_by_reason_and_never_stored(
    broker: Broker, sqlite_store: Store
) -> None:
    ingestor = running(sqlite_store, config(broker, allowed_drones=frozenset({"d1"})))
    fleet = publisher_client(broker)
    good = schema.encode_batch("d1", samples("d1", 1, 3))
    d1 = "skycourier/v1/d1/telemetry"
    hostile = [
        (d1, b"x" * (schema.MAX_PAYLOAD_BYTES + 1), "oversized"),
        (d1, b"{not json", "malformed"),
        (d1, b'{"v":2,"type":"batch","records":[[[[[[]]]]]]}', "malformed"),
        (d1, "\ud800".encode("utf-8", "surrogatepass"), "malformed"),
        (d1, schema.encode_batch("d2", samples("d2", 1, 1)), "wrong-topic"),
        ("skycourier/v1/d1/status", good, "wrong-topic"),
        ("skycourier/v1/not a drone!/telemetry", good, "wrong-topic"),
        (
            "skycourier/v1/intruder/telemetry",
            schema.encode_batch("intruder", samples("intruder", 1, 1)),
            "unknown-drone",
        ),
    ]
    for topic, payload, _ in hostile:
        send(fleet, topic, payload)
    send(fleet, "skycourier/v1/d1/telemetry", good)
    wait_until(lambda: ingestor.stats().messages == len(hostile) + 1, "every message")
    wait_until(lambda: ingestor.stats().pending == 0, "the batch committed")
    stats = ingestor.stats()
    expected = {reason: 0 for reason in REASONS}
    for _, _, reason in hostile:
        expected[reason] += 1
    assert stats.refused == expected
    assert stored_count(sqlite_store) == 3
    assert [d.drone_id for d in sqlite_store.drones()] == ["d1"]
    fleet.disconnect()
    fleet.loop_stop()
    ingestor.stop()


_json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_record_like = st.fixed_dictionaries(
    {
        "v": st.sampled_from([1, 2, 3, "2", None]),
        "type": st.sampled_from(["telemetry", "event", "status", "batch", "x"]),
        "drone_id": st.sampled_from(["d1", "d2", "", "a/b", None]),
        "seq": st.integers(-2, 2**64),
        "id": st.text(max_size=70),
        "t": st.text(max_size=30),
    },
    optional={
        "records": st.lists(_json_value, max_size=3),
        "state": st.text(max_size=8),
        "ttl_s": _json_value,
        "pos": _json_value,
        "detail": _json_value,
    },
)
_payloads = st.one_of(
    st.binary(max_size=300),
    _json_value.map(lambda v: json.dumps(v).encode()),
    _record_like.map(lambda v: json.dumps(v).encode()),
)


@settings(max_examples=300, deadline=None)
@given(
    payload=_payloads,
    level=st.sampled_from(["d1", "d2", "d 1", ""]),
    channel=st.sampled_from(["telemetry", "events", "status", "cmd", "x"]),
)
def test_the_decoder_answers_records_or_a_reason_for_anything(
    payload: bytes, level: str, channel: str
) -> None:
    result = Decoder({"d1"}).decode(f"skycourier/v1/{level}/{channel}", payload)
    if isinstance(result, Refusal):
        assert result.reason in REASONS and result.message
    else:
        assert result and all(r.drone_id == "d1" for r in result)


def test_hostile_payloads_through_the_broker_are_counted_and_not_stored(
    broker: Broker, sqlite_store: Store
) -> None:
    ingestor = running(sqlite_store, config(broker))
    fleet = publisher_client(broker)

    @settings(
        max_examples=8,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(st.lists(_payloads, min_size=5, max_size=20))
    def check(payloads: list[bytes]) -> None:
        before = ingestor.stats()
        refusable = []
        for payload in payloads:
            if isinstance(Decoder().decode("skycourier/v1/d9/telemetry", payload), Refusal):
                refusable.append(payload)
                send(fleet, "skycourier/v1/d9/telemetry", payload)
        wait_until(lambda: ingestor.stats().messages == before.messages + len(refusable), "all")
        wait_until(lambda: ingestor.stats().pending == 0, "acknowledged")
        after = ingestor.stats()
        assert sum(after.refused.values()) - sum(before.refused.values()) == len(refusable)
        assert after.stored == before.stored == 0

    check()
    assert ingestor.stats().connected
    assert stored_count(sqlite_store) == 0
    fleet.disconnect()
    fleet.loop_stop()
    ingestor.stop()


# -- outages and restarts -----------------------------------------------------------------


class OutageStore:
    """A store whose database is down for the first `failures` batches."""

    def __init__(self, store: Store, failures: int) -> None:
        self.store = store
        self.failures = failures

    def ingest(self, batch: Any) -> Any:
        if self.failures > 0:
            self.failures -= 1
            raise OperationalError(
                "INSERT ...", {}, ConnectionError("server closed the connection")
            )
        return self.store.ingest(batch)


def test_a_database_outage_is_retried_until_the_batch_commits(
    broker: Broker, sqlite_store: Store
) -> None:
    flaky = OutageStore(sqlite_store, failures=2)
    ingestor = running(flaky, config(broker))  # type: ignore[arg-type]
    fleet = publisher_client(broker)
    send(fleet, "skycourier/v1/d1/telemetry", schema.encode_batch("d1", samples("d1", 1, 5)))
    wait_until(lambda: stored_count(sqlite_store) == 5, "the batch stored after the outage")
    stats = ingestor.stats()
    assert (stats.db_errors, stats.stored, stats.batches) == (2, 5, 1)
    assert "server closed the connection" in (stats.last_error or "")
    fleet.disconnect()
    fleet.loop_stop()
    ingestor.stop()


def test_a_batch_that_never_committed_was_never_acknowledged_and_comes_again(
    broker: Broker, sqlite_store: Store
) -> None:
    """The database stays down until the instance stops: the broker still holds the message
    (no PUBACK went out), and re-sends it to the instance's next run."""
    cfg = config(broker, client_id="ground-down")
    down = running(OutageStore(sqlite_store, failures=10**9), cfg)  # type: ignore[arg-type]
    fleet = publisher_client(broker)
    send(fleet, "skycourier/v1/d1/telemetry", schema.encode_batch("d1", samples("d1", 1, 5)))
    wait_until(lambda: down.stats().db_errors >= 1, "the database failing")
    down.stop(timeout_s=0.5)
    assert down.stats().stored == 0
    again = running(sqlite_store, cfg)
    wait_until(lambda: stored_count(sqlite_store) == 5, "the unacknowledged batch stored")
    assert again.stats().messages == 1
    fleet.disconnect()
    fleet.loop_stop()
    again.stop()


def test_a_restarted_instance_gets_what_arrived_while_it_was_down(
    broker: Broker, sqlite_store: Store
) -> None:
    cfg = config(broker, client_id="ground-restart")
    first = running(sqlite_store, cfg)
    first.stop()
    fleet = publisher_client(broker)
    for first_seq in range(1, 101, 10):
        send(fleet, "skycourier/v1/d1/telemetry",
             schema.encode_batch("d1", samples("d1", first_seq, 10)))  # fmt: skip
    again = running(sqlite_store, cfg)  # the same client id: the broker kept its session
    wait_until(lambda: stored_count(sqlite_store) == 100, "the queued messages stored")
    assert again.stats().messages == 10
    fleet.disconnect()
    fleet.loop_stop()
    again.stop()


# -- two instances, one killed ------------------------------------------------------------


def _instance(broker: Broker, url: str, client_id: str, group: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ground.ingest", "--broker", f"{broker.host}:{broker.port}",
             "--db", url, "--client-id", client_id, "--group", group, "--stats-every", "0.1"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )  # fmt: skip


def _subscribed(log: Path, times: int = 1) -> bool:
    return log.exists() and log.read_text().count(" subscribed at ") >= times


def _last_stats(log: Path) -> dict[str, int]:
    found = re.findall(r"messages=(\d+), records=(\d+), stored=(\d+)", log.read_text())
    if not found:
        return {"messages": 0, "records": 0, "stored": 0}
    messages, records, stored = map(int, found[-1])
    return {"messages": messages, "records": records, "stored": stored}


def test_two_instances_share_the_fleet_and_killing_one_loses_nothing(
    broker: Broker,
    db_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    store = Store.open(db_url)  # migrated before the instances start, as a deployment would
    group = f"g-{uuid.uuid4().hex[:8]}"
    logs = {name: tmp_path / f"{name}.log" for name in ("a", "b")}
    procs = {name: _instance(broker, db_url, f"ground-{name}", group, logs[name]) for name in logs}
    try:
        wait_until(lambda: all(_subscribed(log) for log in logs.values()), "both subscribed", 60)
        fleet = publisher_client(broker)
        drones = [f"drone-{i:02d}" for i in range(20)]
        total, killed_at = 0, None
        for round_ in range(30):  # 20 drones, a 5-record batch each per round
            for drone in drones:
                payload = schema.encode_batch(drone, samples(drone, round_ * 5 + 1, 5))
                fleet.publish(schema.topic(drone, "telemetry"), payload, qos=1)
                total += 5
            if round_ == 10:  # mid-run: A dies without a goodbye, holding messages
                wait_until(lambda: _last_stats(logs["a"])["messages"] > 0, "A working")
                procs["a"].send_signal(signal.SIGKILL)
                procs["a"].wait(10)
                killed_at = _last_stats(logs["a"])
            if round_ == 20:  # ... and comes back under its client id
                procs["a"] = _instance(broker, db_url, "ground-a", group, logs["a"])
            time.sleep(0.03)
        fleet.disconnect()
        fleet.loop_stop()
        wait_until(lambda: stored_count(store) == total, f"all {total} records stored", 60)
        time.sleep(0.5)  # anything stored twice would show now
        assert stored_count(store) == total
        with store.engine.connect() as conn:
            distinct = conn.exec_driver_sql(
                "SELECT count(DISTINCT record_id) FROM telemetry"
            ).scalar_one()
        assert distinct == total
        assert sorted(d.drone_id for d in store.drones()) == drones
        assert all(len(store.track(d)) == 150 for d in drones[:3])
        assert killed_at is not None and killed_at["messages"] > 0  # A had its share
        assert _subscribed(logs["a"], times=2)
        assert "session resumed" in logs["a"].read_text()
        wait_until(lambda: _last_stats(logs["b"])["stored"] > 0, "B's share")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(20)
        store.close()
