"""Ground ingest: telemetry records per second from simulated drones through mosquitto into
SQLite and PostgreSQL, our batched ingest against a naive per-message insert-and-commit.

The fleet runs in a process of its own (so that its Python does not share the ingest's
GIL) and publishes what drones publish, QoS 1: one telemetry record per MQTT message (a
drone on an IP link with no linger, the most messages a fleet can send for its records).

- **Live**: `--drones` (100) drones at `--hz` (5 Hz) for 15 s (4 s with ``--quick``), on
  schedule. For each database and ingest: records/s stored, lag (from the record's ``t``,
  stamped as it is published, to the commit that stored it: p50/p95/max), the largest backlog
  (published but not yet stored, sampled every 0.25 s), records lost (an ingest that falls
  more than its in-flight window plus mosquitto's default queue of 1000 messages a session
  behind has messages dropped by the broker), and whether the rate was sustained (nothing
  lost, every record stored within 2 s of the last publish, lag p95 under 1 s).
- **Capacity**: a backlog of 6000 records (2000 with ``--quick``) published as fast as the
  ingest takes them (at most 1000 outstanding, so that the broker drops nothing): records/s
  from the first publish to the last commit. Repetitions interleave ours and the naive
  ingest; medians.

Ours: `ground.ingest.Ingestor` (batches of up to 1000 records or 0.2 s, one transaction, the
broker acknowledged after the commit). The naive ingest: a paho MQTT 5 client on the same
shared subscription whose callback stores each message's records in their own transaction
(the same `Store.ingest`, so the same SQL and rows) and acknowledges it when the callback
returns. Same durability on both: the same engine (SQLite WAL with ``synchronous=FULL``;
PostgreSQL's defaults, ``synchronous_commit=on``), a fresh database per run.

PostgreSQL: the server named by ``--pg-url`` or SKYCOURIER_TEST_PG_URL (a role that may
create databases); without one, SQLite only (said in the results).

    python bench/ground_ingest.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy import text
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import write_results
from companion.telemetry import schema
from ground.db import create_engine
from ground.ingest import IngestConfig, Ingestor
from ground.store import IngestResult, Received, Store
from sim.mqtt_broker import Broker, start_broker

log = logging.getLogger("bench.ground_ingest")
#: Records published but not yet stored, at most, in a burst: mosquitto queues a lagging
#: session's in-flight window plus 1000 messages (its default), and drops the rest; what is
#: stored may not be acknowledged yet (ours acknowledges a batch after its commit).
MAX_OUTSTANDING = 1000
DRAIN_S = 2.0
SUSTAINED_P95_S = 1.0
#: A run that stores nothing for this long after the fleet is done has lost the rest.
STALL_S = 10.0


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary_ms(samples: Sequence[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(samples, 0.5) * 1000, 1),
        "p95": round(percentile(samples, 0.95) * 1000, 1),
        "max": round(max(samples) * 1000, 1),
    }


# -- the fleet (a process of its own) -----------------------------------------------------


def _payload(drone: str, seq: int) -> bytes:
    where = schema.Position(52.0 + seq * 1e-6, 4.0, 40.0, 30.0)
    sample = schema.Telemetry(
        drone, seq, schema.new_id(), schema.utc_iso(time.time()), phase="cruise", mode="AUTO",
        armed=True, position=where, heading_deg=45.0, ground_speed_mps=12.0,
        battery=schema.Battery(71, 15.6), gps=schema.GpsIntegrity(3, 12),
    )  # fmt: skip
    return schema.encode(sample)


def _client(host: str, port: int) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fleet-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(1000)
    client.connect(host, port)
    client.loop_start()
    return client


def fleet_live(
    host: str, port: int, drones: int, hz: float, seconds: float, published: Any, go: Any
) -> None:
    """Each drone publishes a sample every 1/hz s, on schedule (when it falls behind, the
    time publishing took, `fleet_publish_s`, shows it)."""
    client = _client(host, port)
    names = [f"drone-{i:03d}" for i in range(drones)]
    go.wait()
    start = time.monotonic()
    infos = []
    for tick in range(int(seconds * hz)):
        delay = start + tick / hz - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        for name in names:
            infos.append(
                client.publish(schema.topic(name, "telemetry"), _payload(name, tick + 1), 1)
            )
            published.value += 1
    for info in infos:
        info.wait_for_publish(30)
    client.disconnect()
    client.loop_stop()


def fleet_burst(host: str, port: int, drones: int, count: int, published: Any, stored: Any,
                go: Any) -> None:  # fmt: skip
    """`count` samples round-robin over the drones, as fast as the ingest keeps up with."""
    client = _client(host, port)
    names = [f"drone-{i:03d}" for i in range(drones)]
    payloads = [(names[i % drones], _payload(names[i % drones], i // drones + 1))
                for i in range(count)]  # fmt: skip
    go.wait()
    infos = []
    for name, payload in payloads:
        while published.value - stored.value >= MAX_OUTSTANDING:
            time.sleep(0.0005)
        infos.append(client.publish(schema.topic(name, "telemetry"), payload, 1))
        published.value += 1
    for info in infos:
        info.wait_for_publish(30)
    client.disconnect()
    client.loop_stop()


# -- the two ingests ----------------------------------------------------------------------


class TimedStore:
    """A store that notes, per record, the lag from its ``t`` to the commit."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.lags: list[float] = []
        self.stored = 0
        self.lock = threading.Lock()

    def ingest(self, batch: Sequence[Received]) -> IngestResult:
        result = self.store.ingest(batch)
        now = time.time()
        lags = [now - (schema.parse_time(r.record.t) or now) for r in batch]
        with self.lock:
            self.lags.extend(lags)
            self.stored += result.stored
        return result


class Ours:
    name = "ours"

    def __init__(self, broker: Broker, store: TimedStore) -> None:
        cfg = IngestConfig(
            client_id=f"bench-ours-{uuid.uuid4().hex[:8]}",
            host=broker.host,
            port=broker.port,
            group=f"bench-{uuid.uuid4().hex[:8]}",
        )
        self.ingestor = Ingestor(store, cfg)  # type: ignore[arg-type]
        self.ingestor.start()
        if not self.ingestor.wait_connected(10):
            raise RuntimeError(f"ingest did not connect: {self.ingestor.stats().last_error}")

    def close(self) -> None:
        self.ingestor.stop()


class Naive:
    """One transaction per MQTT message, in paho's callback; acknowledged on return."""

    name = "naive"

    def __init__(self, broker: Broker, store: TimedStore) -> None:
        self.store = store
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-naive-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        subscribed = threading.Event()
        group = f"bench-{uuid.uuid4().hex[:8]}"
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_connect = lambda c, *_: c.subscribe(
            f"$share/{group}/{schema.TOPIC_ROOT}/+/telemetry", options=SubscribeOptions(qos=1)
        )
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.ReceiveMaximum = IngestConfig.receive_maximum  # the same window as ours
        self.client.connect(broker.host, broker.port, properties=properties)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("naive ingest did not subscribe")

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        received = time.time()
        records = schema.decode_message(msg.topic, bytes(msg.payload))
        self.store.ingest([Received(r, received) for r in records])

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- databases ----------------------------------------------------------------------------


@contextlib.contextmanager
def fresh_database(kind: str, pg_url: str | None, folder: Path) -> Iterator[str]:
    if kind == "sqlite":
        path = folder / f"ground-{uuid.uuid4().hex[:8]}.db"
        yield f"sqlite:///{path}"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    assert pg_url is not None
    name = f"skycourier_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def run_once(
    broker: Broker,
    url: str,
    variant: type[Ours] | type[Naive],
    fleet: Callable[..., None],
    fleet_args: tuple[Any, ...],
    expected: int,
) -> dict[str, Any]:
    """One ingest on a fresh database while the fleet process publishes; the figures."""
    store = Store.open(url)
    timed = TimedStore(store)
    ingest = variant(broker, timed)
    ctx = mp.get_context("spawn")  # no fork of a process running the ingest's threads
    published, stored, go = ctx.Value("l", 0), ctx.Value("l", 0), ctx.Event()
    shared = (published, stored, go) if fleet is fleet_burst else (published, go)
    proc = ctx.Process(target=fleet, args=(broker.host, broker.port, *fleet_args, *shared))
    proc.start()
    backlog: list[int] = []
    try:
        time.sleep(0.3)  # the fleet's connection is up
        start = time.monotonic()
        go.set()
        last_sample = 0.0
        published_done_at: float | None = None
        count, progress_at = 0, start
        while True:
            with timed.lock:
                if timed.stored != count:
                    count, progress_at = timed.stored, time.monotonic()
            stored.value = count
            now = time.monotonic()
            if now - last_sample >= 0.25:
                backlog.append(published.value - count)
                last_sample = now
            if published_done_at is None and not proc.is_alive():
                published_done_at = now
            if count >= expected:
                end = now
                break
            if published_done_at is not None and now - progress_at > STALL_S:
                # What the broker dropped (its queue for a lagging session overflowed)
                # never comes: counted as lost.
                log.warning("%s: %d of %d records stored, nothing more for %g s",
                            variant.name, count, expected, STALL_S)  # fmt: skip
                end = progress_at
                break
            time.sleep(0.002)
        proc.join(30)
        done_at = published_done_at or end
    finally:
        if proc.is_alive():
            proc.terminate()
        ingest.close()
        store.close()
    return {
        "seconds": end - start,
        "records_per_s": count / (end - start),
        "lost": expected - count,
        "lags": timed.lags,
        "max_backlog": max(backlog, default=0),
        "drained_after_publish_s": max(0.0, end - done_at),
        "published_s": done_at - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run")
    parser.add_argument("--pg-url", default=os.environ.get("SKYCOURIER_TEST_PG_URL"))
    parser.add_argument("--drones", type=int, default=100)
    parser.add_argument("--hz", type=float, default=5.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    log.setLevel(logging.INFO)
    seconds, burst, reps = (4.0, 2000, 1) if args.quick else (15.0, 6000, 3)
    live_expected = int(seconds * args.hz) * args.drones
    kinds = ["sqlite"] + (["postgresql"] if args.pg_url else [])
    broker = start_broker("mosquitto")
    if broker.kind != "mosquitto":
        broker.stop()
        raise SystemExit("install mosquitto (apt install mosquitto): the bench measures it")
    figures: dict[str, Any] = {
        "drones": args.drones,
        "hz": args.hz,
        "records_per_message": 1,
        "live_seconds": seconds,
        "live_records": live_expected,
        "burst_records": burst,
        "repetitions": reps,
        "broker": "mosquitto",
        "databases": kinds,
    }
    ratios: dict[str, float] = {}
    folder = Path(tempfile.mkdtemp(prefix="bench-ground-"))
    try:
        for kind in kinds:
            for variant in (Ours, Naive):
                with fresh_database(kind, args.pg_url, folder) as url:
                    log.info("%s %s: live %d drones at %g Hz", kind, variant.name, args.drones,
                             args.hz)  # fmt: skip
                    live = run_once(broker, url, variant, fleet_live,
                                    (args.drones, args.hz, seconds), live_expected)  # fmt: skip
                p95 = percentile(live["lags"], 0.95)
                figures[f"{kind}_{variant.name}_live"] = {
                    "records_per_s": round(live["records_per_s"], 1),
                    "fleet_publish_s": round(live["published_s"], 2),
                    "lag_ms": summary_ms(live["lags"]),
                    "max_backlog_records": live["max_backlog"],
                    "drained_after_publish_s": round(live["drained_after_publish_s"], 2),
                    "lost_records": live["lost"],
                    "sustained": live["drained_after_publish_s"] <= DRAIN_S
                    and p95 <= SUSTAINED_P95_S
                    and live["lost"] == 0,
                }
            rates: dict[str, list[float]] = {"ours": [], "naive": []}
            lost = {"ours": 0, "naive": 0}
            for rep in range(reps):
                for variant in (Ours, Naive) if rep % 2 == 0 else (Naive, Ours):
                    with fresh_database(kind, args.pg_url, folder) as url:
                        log.info("%s %s: burst %d (rep %d)", kind, variant.name, burst, rep + 1)
                        run = run_once(broker, url, variant, fleet_burst, (args.drones, burst),
                                       burst)  # fmt: skip
                    rates[variant.name].append(run["records_per_s"])
                    lost[variant.name] += run["lost"]
            ours, naive = statistics.median(rates["ours"]), statistics.median(rates["naive"])
            figures[f"{kind}_ours_capacity_records_per_s"] = round(ours, 1)
            figures[f"{kind}_naive_capacity_records_per_s"] = round(naive, 1)
            figures[f"{kind}_capacity_lost_records"] = lost
            ratios[f"vs_naive_per_message_commit_{kind}"] = ours / naive
    finally:
        broker.stop()
        with contextlib.suppress(OSError):
            folder.rmdir()
    if not args.pg_url:
        figures["postgresql"] = "not measured: no --pg-url / SKYCOURIER_TEST_PG_URL"
    baseline = (
        "paho MQTT 5 client on the same shared subscription, each message's records stored "
        "in their own transaction by the same Store.ingest in the callback, same engine and "
        "durability ({}); capacity: records/s draining a {}-record burst, median of {}"
    )
    durability = {
        "sqlite": "SQLite WAL, synchronous=FULL",
        "postgresql": "PostgreSQL defaults, synchronous_commit=on",
    }
    write_results(
        "ground_ingest",
        ratios,
        figures,
        {
            f"vs_naive_per_message_commit_{kind}": baseline.format(durability[kind], burst, reps)
            for kind in kinds
        },
    )


if __name__ == "__main__":
    main()
