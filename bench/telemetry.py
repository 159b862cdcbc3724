"""Telemetry link: publish->receive latency through the modem path vs paho direct, and the
throughput of the durable queue vs a naive SQLite queue.

Latency. One broker (`start_broker()`: mosquitto when installed, else the embedded one) and
one paho subscriber on `bench/#`. The same telemetry records (the schema's JSON, QoS 1) are
published, one at a time, by:

- "modem": `AtMqttTransport` under a `ModemSupervisor` on an `AtChannel`, through a real pty
  to the A7670 emulator, whose MQTT stack is bridged (paho) to the broker. The emulator runs
  at time_scale=1.0: the real module's documented latencies (20-60 ms per AT answer and
  `>` prompt, +CMQTTPUB 0.1-0.3 s after PUB). A second modem path at time_scale=0 has every
  module latency removed, so what is left is our AT path's own overhead (channel thread,
  engine, the pty and the emulator's 5 ms poll, the bridge's paho hop).
- "paho": `PahoTransport` publishing directly to the same broker.

Per message: from just before `publish()` is called to the subscriber's on_message, on one
`perf_counter` clock. Each `publish()` returns at the broker's acknowledgement (PUBACK, or
`+CMQTTPUB: 0,0` for the modem), which is timed too. Paths alternate message by message, so
machine noise falls on all alike; medians and p95. The modem is brought up (supervisor stage
"up", MQTT connected) before anything is timed.

Queue. The `Store` (SQLite WAL; telemetry commits synchronous=NORMAL, events FULL) against
what a plain implementation does: one INSERT + COMMIT per record in SQLite's defaults
(rollback journal, synchronous=FULL), and replay as SELECT oldest, DELETE it, COMMIT. Ours is
timed as the publisher uses it (`append` per sample; replay `peek(64)` then `ack` per record)
and batched (`append_many`; `peek(64)` + `ack_through`). Fresh files per repetition in the
system temporary folder, naive and ours alternating.

    python bench/telemetry.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import write_results
from companion.modem.channel import AtChannel
from companion.modem.mqtt_at import AtMqttTransport
from companion.modem.supervisor import ModemSupervisor
from companion.telemetry.schema import (
    Battery,
    GpsIntegrity,
    Position,
    Telemetry,
    encode,
    new_id,
    utc_iso,
)
from companion.telemetry.store import Store
from companion.telemetry.transport import PahoTransport
from sim.modem.a7670 import A7670
from sim.modem.mqtt_bridge import PahoBridge
from sim.modem.pty_runner import A7670Pty
from sim.mqtt_broker import Broker, start_broker

TOPIC = "skycourier/v1/bench-{}/telemetry"
RECEIVE_TIMEOUT_S = 30.0
UP_TIMEOUT_S = 120.0
REPLAY_BATCH = 64  # the publisher's peek size
OVERHEAD_POLL_S = 0.001  # the time_scale=0 emulator's pty poll (the default is 5 ms)

log = logging.getLogger("bench.telemetry")


def record(seq: int, drone_id: str = "drone-7") -> bytes:
    """One telemetry record as the publisher encodes it (cruise, position, battery, GPS)."""
    return encode(
        Telemetry(
            drone_id=drone_id,
            seq=seq,
            id=new_id(),
            t=utc_iso(time.time()),
            phase="cruise",
            armed=True,
            mode="AUTO",
            position=Position(-35.363261, 149.165230 + seq * 1e-6, 634.2, 30.1),
            heading_deg=87.3,
            ground_speed_mps=12.4,
            vertical_speed_mps=-0.2,
            battery=Battery(78, 22.61),
            gps=GpsIntegrity(3, 14),
        )
    )


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(samples: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(samples) * 1000, 2),
        "p95": round(percentile(samples, 0.95) * 1000, 2),
        "min": round(min(samples) * 1000, 2),
        "max": round(max(samples) * 1000, 2),
    }


# -- latency ---------------------------------------------------------------------------------


class Subscriber:
    """A paho client on the broker noting when each (drone, seq) arrives."""

    def __init__(self, broker: Broker) -> None:
        self._cond = threading.Condition()
        self._arrived: dict[tuple[str, int], float] = {}
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-watcher")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.on_connect = lambda c, *_a: c.subscribe("skycourier/v1/#", qos=1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if not self._subscribed.wait(10.0):
            raise RuntimeError(f"subscriber could not subscribe on {broker}")

    def _on_message(self, _c: object, _u: object, msg: paho.MQTTMessage) -> None:
        now = time.perf_counter()
        body = json.loads(msg.payload)
        with self._cond:
            self._arrived[(body["drone_id"], body["seq"])] = now
            self._cond.notify_all()

    def wait(self, key: tuple[str, int], timeout_s: float) -> float:
        with self._cond:
            if not self._cond.wait_for(lambda: key in self._arrived, timeout_s):
                raise RuntimeError(f"message {key} not received within {timeout_s:g} s")
            return self._arrived.pop(key)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def modem_path(
    stack: contextlib.ExitStack,
    broker: Broker,
    time_scale: float,
    client_id: str,
    period_s: float = 0.005,
) -> AtMqttTransport:
    """The A7670 emulator on a pty (polled every `period_s`), bridged to `broker`, with the
    driver on top; returned once the supervisor reports the modem up and MQTT connected."""
    began = time.monotonic()
    bridge = PahoBridge(broker.host, broker.port)
    stack.callback(bridge.close)
    # Boot and registration shortened: bring-up is not what is measured; command and MQTT
    # latencies keep `time_scale`.
    emulator = A7670(bridge=bridge, time_scale=time_scale, boot_s=0.5, register_s=0.5)
    runner = A7670Pty(emulator, period_s=period_s).start()
    stack.callback(runner.stop)
    assert runner.path is not None
    channel = AtChannel(runner.path).start()
    stack.callback(channel.stop)
    if not channel.wait_open(5.0):
        raise RuntimeError(f"cannot open the emulator's pty: {channel.error}")
    supervisor = ModemSupervisor(channel, lambda _state: None, apn="internet")
    transport = AtMqttTransport(
        supervisor, client_id=client_id, broker=f"tcp://{broker.host}:{broker.port}"
    )
    stack.callback(supervisor.stop)
    stack.callback(transport.close)  # runs before supervisor.stop (ExitStack is LIFO)
    supervisor.start()
    deadline = time.monotonic() + UP_TIMEOUT_S
    while not (supervisor.state.stage == "up" and transport.connected):
        if time.monotonic() > deadline:
            raise RuntimeError(f"modem (time_scale {time_scale}) not up: {supervisor.state}")
        time.sleep(0.05)
    log.info("modem (time_scale %g) up in %.1f s", time_scale, time.monotonic() - began)
    return transport


def measure_latency(broker: Broker, messages: int) -> dict[str, dict[str, list[float]]]:
    """Per path: 'receive' (publish start -> subscriber) and 'call' (publish start -> ack)."""
    with contextlib.ExitStack() as stack:
        subscriber = Subscriber(broker)
        stack.callback(subscriber.close)
        paho_direct = PahoTransport(broker.host, broker.port, "bench-paho")
        stack.callback(paho_direct.close)
        if not paho_direct.wait_connected(10.0):
            raise RuntimeError(f"paho cannot connect: {paho_direct.last_error}")
        paths: dict[str, AtMqttTransport | PahoTransport] = {
            "modem": modem_path(stack, broker, 1.0, "bench-modem"),
            "modem_at_overhead": modem_path(stack, broker, 0.0, "bench-modem0", OVERHEAD_POLL_S),
            "paho": paho_direct,
        }
        times: dict[str, dict[str, list[float]]] = {
            name: {"receive": [], "call": []} for name in paths
        }
        for seq in range(1, messages + 3):  # two warm-up messages per path, not counted
            for name, transport in paths.items():
                payload = record(seq, f"bench-{name}")
                start = time.perf_counter()
                transport.publish(TOPIC.format(name), payload, qos=1)
                acked = time.perf_counter()
                arrived = subscriber.wait((f"bench-{name}", seq), RECEIVE_TIMEOUT_S)
                if seq > 2:
                    times[name]["receive"].append(arrived - start)
                    times[name]["call"].append(acked - start)
    return times


# -- queue -----------------------------------------------------------------------------------


class NaiveQueue:
    """A plain SQLite queue: SQLite's defaults (rollback journal, synchronous=FULL), one
    transaction per record."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS queue (id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " topic TEXT NOT NULL, payload BLOB NOT NULL)"
        )
        self.db.commit()

    def put(self, topic: str, payload: bytes) -> None:
        self.db.execute("INSERT INTO queue (topic, payload) VALUES (?, ?)", (topic, payload))
        self.db.commit()

    def take(self) -> tuple[str, bytes] | None:
        row = self.db.execute("SELECT id, topic, payload FROM queue ORDER BY id LIMIT 1").fetchone()
        if row is None:
            return None
        self.db.execute("DELETE FROM queue WHERE id = ?", (row[0],))
        self.db.commit()
        return row[1], row[2]

    def close(self) -> None:
        self.db.close()


def _time(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure_queue(records: int, batch: int, reps: int) -> tuple[dict[str, list[float]], int]:
    """Seconds per run of `records` records, by variant; and the payload size."""
    topic = TOPIC.format("drone-7")
    payloads = [record(i) for i in range(1, records + 1)]
    times: dict[str, list[float]] = {
        k: []
        for k in (
            "naive_persist",
            "naive_replay",
            "ours_persist",
            "ours_replay",
            "ours_persist_batched",
            "ours_replay_batched",
            "ours_persist_events",
        )
    }

    def naive(folder: Path) -> None:
        queue = NaiveQueue(folder / "naive.db")
        try:

            def persist() -> None:
                for p in payloads:
                    queue.put(topic, p)

            def replay() -> None:
                while queue.take() is not None:
                    pass

            times["naive_persist"].append(_time(persist))
            times["naive_replay"].append(_time(replay))
        finally:
            queue.close()

    def ours(folder: Path) -> None:
        store = Store(folder / "ours.db")
        try:

            def persist() -> None:
                for p in payloads:
                    store.append("telemetry", topic, p)

            def replay() -> None:  # as the publisher drains: peek a batch, ack each record
                while records_ := store.peek(REPLAY_BATCH):
                    for r in records_:
                        store.ack(r.seq)

            times["ours_persist"].append(_time(persist))
            times["ours_replay"].append(_time(replay))
        finally:
            store.close()

    def ours_batched(folder: Path) -> None:
        store = Store(folder / "batched.db")
        try:

            def persist() -> None:
                for i in range(0, records, batch):
                    store.append_many(
                        ("telemetry", topic, p, False) for p in payloads[i : i + batch]
                    )

            def replay() -> None:
                while records_ := store.peek(REPLAY_BATCH):
                    store.ack_through(records_[-1].seq)

            times["ours_persist_batched"].append(_time(persist))
            times["ours_replay_batched"].append(_time(replay))
        finally:
            store.close()

    def ours_events(folder: Path) -> None:
        store = Store(folder / "events.db")
        try:

            def persist() -> None:
                for p in payloads:
                    store.append("event", topic, p)

            times["ours_persist_events"].append(_time(persist))
        finally:
            store.close()

    runs = (naive, ours, ours_batched, ours_events)
    for rep in range(reps + 1):  # the first round is a warm-up
        for run in runs:
            with tempfile.TemporaryDirectory(prefix="skycourier-bench-") as folder:
                run(Path(folder))
        if rep == 0:
            for samples in times.values():
                samples.clear()
    return times, round(statistics.mean(len(p) for p in payloads))


def uart_wire_ms(topic: str = TOPIC.format("modem")) -> float:
    """What the pty leaves out: the bytes of one publish (host's commands, topic, payload;
    module's prompts, OKs and URC) on a 115200 8N1 UART, 10 bits a byte."""
    payload = record(1, "bench-modem")
    host = (
        f"AT+CMQTTTOPIC=0,{len(topic)}\r{topic}AT+CMQTTPAYLOAD=0,{len(payload)}\r".encode()
        + payload
        + b"AT+CMQTTPUB=0,1,30,0\r"
    )
    module = b"\r\n>" * 2 + b"\r\nOK\r\n" * 3 + b"\r\n+CMQTTPUB: 0,0\r\n"
    return (len(host) + len(module)) * 10 / 115200 * 1000


def filesystem(path: str) -> str:
    """The file system type under `path` (fsync costs differ: tmpfs does none)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["df", "--output=fstype", path], capture_output=True, text=True, timeout=5, check=True
        )
        return done.stdout.split()[-1]
    return "unknown"


# -- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")
    log.setLevel(logging.INFO)
    messages = 10 if args.quick else 120
    records, batch, reps = (300, 10, 2) if args.quick else (2000, 10, 5)

    broker = start_broker()
    try:
        lat = measure_latency(broker, messages)
    finally:
        broker.stop()
    queue_times, payload_bytes = measure_queue(records, batch, reps)

    def med(name: str, what: str = "receive") -> float:
        return statistics.median(lat[name][what])

    def rate(name: str) -> float:
        return records / statistics.median(queue_times[name])

    ratios = {
        "vs_paho_direct": med("paho") / med("modem"),
        "vs_paho_direct_at_overhead_only": med("paho") / med("modem_at_overhead"),
        "vs_naive_sqlite_persist": rate("ours_persist") / rate("naive_persist"),
        "vs_naive_sqlite_persist_batched": rate("ours_persist_batched") / rate("naive_persist"),
        "vs_naive_sqlite_persist_events": rate("ours_persist_events") / rate("naive_persist"),
        "vs_naive_sqlite_replay": rate("ours_replay") / rate("naive_replay"),
        "vs_naive_sqlite_replay_batched": rate("ours_replay_batched") / rate("naive_replay"),
    }
    figures = {
        "broker": broker.kind,
        "messages_per_path": messages,
        "modem_latency_times_paho": round(med("modem") / med("paho"), 1),
        "modem_at_overhead_latency_times_paho": round(med("modem_at_overhead") / med("paho"), 1),
        "uart_wire_ms_per_message_at_115200_not_in_pty": round(uart_wire_ms(), 1),
        "latency_ms_modem_time_scale_1": summary_ms(lat["modem"]["receive"]),
        "latency_ms_modem_time_scale_0": summary_ms(lat["modem_at_overhead"]["receive"]),
        "latency_ms_paho_direct": summary_ms(lat["paho"]["receive"]),
        "publish_call_ms_modem_time_scale_1": summary_ms(lat["modem"]["call"]),
        "publish_call_ms_modem_time_scale_0": summary_ms(lat["modem_at_overhead"]["call"]),
        "publish_call_ms_paho_direct": summary_ms(lat["paho"]["call"]),
        "queue_records_per_run": records,
        "queue_repetitions": reps,
        "queue_payload_bytes": payload_bytes,
        "queue_append_many_batch": batch,
        "queue_filesystem": filesystem(tempfile.gettempdir()),
        "ours_persist_records_per_s": round(rate("ours_persist")),
        "ours_persist_batched_records_per_s": round(rate("ours_persist_batched")),
        "ours_persist_events_records_per_s": round(rate("ours_persist_events")),
        "ours_replay_records_per_s": round(rate("ours_replay")),
        "ours_replay_batched_records_per_s": round(rate("ours_replay_batched")),
        "naive_persist_records_per_s": round(rate("naive_persist")),
        "naive_replay_records_per_s": round(rate("naive_replay")),
    }
    baselines = {
        "vs_paho_direct": "median publish-start -> subscriber-receive, PahoTransport straight to "
        "the broker over the median through AtMqttTransport -> pty -> A7670 emulator at "
        "time_scale=1.0 (the module's documented latencies) -> broker; below 1 means the "
        "modem path is slower, as expected: TOPIC, PAYLOAD and PUB (five AT exchanges with "
        "the prompts) before the module publishes",
        "vs_paho_direct_at_overhead_only": "same, emulator at time_scale=0 polled every 1 ms: "
        "module latencies removed, what remains is the AT path's own cost (channel thread, "
        "engine, pty, emulator poll, bridge hop); the pty has no baud rate, so UART wire time "
        "is in neither",
        "vs_naive_sqlite_persist": "records/s: Store.append per telemetry record (WAL, "
        "synchronous=NORMAL) over one INSERT+COMMIT per record in SQLite defaults (rollback "
        "journal, synchronous=FULL)",
        "vs_naive_sqlite_persist_batched": "records/s: Store.append_many in batches over the "
        "same naive per-record INSERT+COMMIT",
        "vs_naive_sqlite_persist_events": "records/s: Store.append of events (WAL, "
        "synchronous=FULL: fsync per record, the same durability as the baseline) over the "
        "naive per-record INSERT+COMMIT",
        "vs_naive_sqlite_replay": "records/s: peek(64) then ack per record (the publisher's "
        "drain) over SELECT oldest + DELETE + COMMIT per record",
        "vs_naive_sqlite_replay_batched": "records/s: peek(64) + ack_through per batch over the "
        "same naive per-record replay",
    }
    write_results("telemetry", ratios, figures, baselines)


if __name__ == "__main__":
    main()
