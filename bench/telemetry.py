"""Telemetry link: records per second through the modem path, publish->receive latency
against paho direct, and the durable queue against a naive SQLite queue at equal durability.

Modem throughput (the headline). The A7670 emulator at time_scale=1.0 (the module's
documented latencies: 20-60 ms per AT answer and `>` prompt, +CMQTTPUB 0.1-0.3 s after PUB)
on a real pty whose runner also charges the UART's wire time at the configured baud (115200
8N1: 87 µs a byte each way), its MQTT stack bridged to a broker. The daemon's chain on top:
`Store` -> `TelemetryPublisher` -> `AtMqttTransport` under a `ModemSupervisor`. A backlog
(an outage's worth of 5 Hz hand-over samples with an event every 50) is queued, the
publisher started, and the time until a subscriber has every record gives records/s.
Ours batches (schema version 2); the baseline is the same chain, same module, publishing one
record per message (`max_batch=1`, what the uplink did before), on a shorter backlog of the
same records; the two alternate on one modem. Also counted: AT commands per record, and
in a live run (samples made at 5 Hz as they would be in flight, `batch_linger_s` of 1 s) the
AT commands per second and the sample-to-subscriber latency.

Latency. One paho subscriber; the same records published one at a time by the modem path
at time_scale=1.0 (with wire time), the modem path at time_scale=0 (no module latency, no
wire time: the AT path's own overhead) and `PahoTransport` straight to the broker; from just
before `publish()` to the subscriber's on_message, paths alternating message by message.

Queue, at equal durability. The `Store` against the plain queue anyone would write: one
INSERT + COMMIT per record, replay as SELECT oldest + DELETE + COMMIT per record, in the
same journal mode (WAL) and the same synchronous level as the store uses for that kind
(telemetry NORMAL: survives a crash; events FULL: fsynced, survives power loss). Persist: one
append per record, as the sampler does. Replay: ours as the uplink drains (peek a window, ack
through as many records as one batch message carries, about 23), the naive queue one per commit.
Fresh files per repetition in the system temporary folder, variants interleaved, medians.

    python bench/telemetry.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
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
from companion.bus import Bus
from companion.config import Config
from companion.mission.events import MissionEvent, Phase
from companion.modem.at_engine import AtCommand, AtResponse
from companion.modem.channel import AtChannel
from companion.modem.mqtt_at import AtMqttTransport
from companion.modem.supervisor import ModemSupervisor
from companion.telemetry import schema
from companion.telemetry.publisher import DEFAULT_MAX_BATCH, TelemetryPublisher
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
from firmware_bridge.state import Battery as VehicleBattery
from firmware_bridge.state import GpsInfo, VehicleState
from firmware_bridge.state import Position as VehiclePosition
from sim.modem.a7670 import A7670
from sim.modem.mqtt_bridge import PahoBridge
from sim.modem.pty_runner import A7670Pty
from sim.mqtt_broker import Broker, start_broker

TOPIC = "skycourier/v1/bench-{}/telemetry"
RECEIVE_TIMEOUT_S = 30.0
UP_TIMEOUT_S = 120.0
OVERHEAD_POLL_S = 0.001  # the time_scale=0 emulator's pty poll (the default is 5 ms)
HANDOVER_HZ = 5.0
EVENT_EVERY = 50  # one mission event per this many samples in the backlog
REPLAY_WINDOW = DEFAULT_MAX_BATCH + 1  # what the uplink peeks for each message

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


# -- the broker side -------------------------------------------------------------------------


class Subscriber:
    """A paho client on the broker noting when each record (drone, seq) first arrives, from
    single records and batches alike."""

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
        records = body["records"] if body.get("type") == "batch" else [body]
        with self._cond:
            for r in records:
                if r["type"] != "status":
                    self._arrived.setdefault((r["drone_id"], r["seq"]), now)
            self._cond.notify_all()

    def wait(self, key: tuple[str, int], timeout_s: float) -> float:
        with self._cond:
            if not self._cond.wait_for(lambda: key in self._arrived, timeout_s):
                raise RuntimeError(f"message {key} not received within {timeout_s:g} s")
            return self._arrived.pop(key)

    def wait_all(self, keys: list[tuple[str, int]], timeout_s: float) -> dict[tuple, float]:
        """Arrival times of every key (each forgotten once returned)."""
        with self._cond:
            if not self._cond.wait_for(lambda: all(k in self._arrived for k in keys), timeout_s):
                missing = sum(k not in self._arrived for k in keys)
                raise RuntimeError(f"{missing} of {len(keys)} records not received")
            return {k: self._arrived.pop(k) for k in keys}

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# -- the modem path --------------------------------------------------------------------------


class ModemPath:
    """The A7670 emulator on a pty (polled every `period_s`, wire time at the configured
    baud unless time_scale is 0), bridged to `broker`, with the driver and its AT MQTT
    transport on top; ready once the supervisor reports the modem up and MQTT connected."""

    def __init__(
        self,
        stack: contextlib.ExitStack,
        broker: Broker,
        time_scale: float,
        client_id: str,
        period_s: float = 0.005,
    ) -> None:
        began = time.monotonic()
        baud = Config().modem.baud  # the configured rate: the driver opens the port at it
        bridge = PahoBridge(broker.host, broker.port)
        stack.callback(bridge.close)
        # Boot and registration shortened: bring-up is not what is measured; command and
        # MQTT latencies keep `time_scale`.
        emulator = A7670(bridge=bridge, time_scale=time_scale, boot_s=0.5, register_s=0.5)
        self.runner = A7670Pty(emulator, period_s=period_s, baud=baud).start()
        stack.callback(self.runner.stop)
        assert self.runner.path is not None
        self.channel = AtChannel(self.runner.path, baud=baud).start()
        stack.callback(self.channel.stop)
        if not self.channel.wait_open(5.0):
            raise RuntimeError(f"cannot open the emulator's pty: {self.channel.error}")
        self.baud = baud
        self.commands: list[str] = []
        call = self.channel.call

        def counted(command: AtCommand) -> AtResponse:
            self.commands.append(command.line)
            return call(command)

        self.channel.call = counted  # type: ignore[method-assign]
        supervisor = ModemSupervisor(self.channel, lambda _state: None, apn="internet")
        self.transport = AtMqttTransport(
            supervisor, client_id=client_id, broker=f"tcp://{broker.host}:{broker.port}"
        )
        stack.callback(supervisor.stop)
        stack.callback(self.transport.close)  # runs before supervisor.stop (LIFO)
        supervisor.start()
        deadline = time.monotonic() + UP_TIMEOUT_S
        while not (supervisor.state.stage == "up" and self.transport.connected):
            if time.monotonic() > deadline:
                raise RuntimeError(f"modem (time_scale {time_scale}) not up: {supervisor.state}")
            time.sleep(0.05)
        log.info("modem (time_scale %g) up in %.1f s", time_scale, time.monotonic() - began)


def _vehicle(seq: int) -> VehicleState:
    return VehicleState(
        wall_time=time.time(),
        armed=True,
        mode="GUIDED",
        position=VehiclePosition(-35.363261, 149.16523 + seq * 1e-6, 634.2, 12.5),
        velocity_ned_mps=(0.3, 0.2, 0.8),
        heading_deg=271.6,
        battery=VehicleBattery(voltage_v=22.4, remaining_pct=61),
        gps=GpsInfo(fix_type=3, satellites=14),
    )


def _publisher(
    path: ModemPath, store: Store, drone: str, max_batch: int, clock: Callable[[], float]
) -> tuple[Bus, TelemetryPublisher]:
    bus = Bus()
    config = Config().telemetry
    publisher = TelemetryPublisher(
        bus,
        store,
        path.transport,
        drone,
        clock,
        max_batch=max_batch,
        linger_s=config.batch_linger_s,
        status_period_s=config.status_period_s,
        tick_s=3600.0,  # samples are made by the bench's own ticks
    )
    publisher.attach()
    bus.publish(MissionEvent("bench", Phase.DESCEND, "enter"))
    return bus, publisher


def backlog_rate(
    path: ModemPath, subscriber: Subscriber, folder: Path, drone: str, records: int, batch: int
) -> dict[str, float]:
    """Queue `records` hand-over records (and an event every EVENT_EVERY), start the
    publisher, and time until the subscriber has them all: records/s, AT commands and wire
    bytes per record."""
    store = Store(folder / f"{drone}.db")
    fake_now = [0.0]
    bus, publisher = _publisher(path, store, drone, batch, lambda: fake_now[0])
    while store.pending() < records:
        i = store.pending()
        bus.publish(_vehicle(i))
        fake_now[0] = i * 1.001 / HANDOVER_HZ
        publisher.tick()
        if i % EVENT_EVERY == EVENT_EVERY - 1:
            bus.publish(MissionEvent("bench", Phase.DESCEND, f"checkpoint-{i}"))
    keys = [(drone, r.seq) for r in store.peek(records + 10)]
    records = len(keys)
    commands, wire = len(path.commands), sum(path.runner.wire_bytes)
    start = time.perf_counter()
    publisher.start()
    try:
        arrived = subscriber.wait_all(keys, timeout_s=records * 2.0 + 60)
    finally:
        publisher.stop()
        store.close()
    spent = max(arrived.values()) - start
    mqtt = sum(1 for c in path.commands[commands:] if c.startswith("AT+CMQTT"))
    return {
        "records_per_s": records / spent,
        "at_commands_per_record": mqtt / records,
        "wire_bytes_per_record": (sum(path.runner.wire_bytes) - wire) / records,
        "messages": publisher.stats().messages,
    }


def live_run(
    path: ModemPath, subscriber: Subscriber, folder: Path, seconds: float
) -> dict[str, float | dict[str, float]]:
    """Samples made at 5 Hz in real time for `seconds` (as at hand-over), published as they
    come: AT commands per second and sample-to-subscriber latency."""
    drone = "bench-live"
    store = Store(folder / "live.db")
    bus, publisher = _publisher(path, store, drone, DEFAULT_MAX_BATCH, time.monotonic)
    made: dict[int, float] = {}
    publisher.start()
    commands = len(path.commands)
    began = time.monotonic()
    try:
        i = 0
        while time.monotonic() - began < seconds:
            bus.publish(_vehicle(i))
            if publisher.tick():
                made[store.last_seq] = time.perf_counter()
            i += 1
            time.sleep(0.01)
        elapsed = time.monotonic() - began
        mqtt = sum(1 for c in path.commands[commands:] if c.startswith("AT+CMQTT"))
        arrived = subscriber.wait_all([(drone, s) for s in made], timeout_s=60.0)
    finally:
        publisher.stop()
        store.close()
    latency = [arrived[(drone, s)] - t for s, t in made.items()]
    return {
        "samples_per_s": len(made) / elapsed,
        "at_commands_per_s": mqtt / elapsed,
        "latency_ms": summary_ms(latency),
    }


def measure_modem(
    broker: Broker, backlog: int, baseline_backlog: int, reps: int, live_s: float
) -> dict[str, object]:
    """Ours (batches) and one record per message alternating on one modem at time_scale 1."""
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as folder:
        subscriber = Subscriber(broker)
        stack.callback(subscriber.close)
        path = ModemPath(stack, broker, 1.0, "bench-rate")
        runs: dict[str, list[dict[str, float]]] = {"ours": [], "one_per_message": []}
        for rep in range(reps):
            for name, records, batch in (
                ("ours", backlog, DEFAULT_MAX_BATCH),
                ("one_per_message", baseline_backlog, 1),
            ):
                drone = f"bench-{name.replace('_', '-')}-{rep}"
                result = backlog_rate(path, subscriber, Path(folder), drone, records, batch)
                log.info("%s rep %d: %.2f records/s", name, rep, result["records_per_s"])
                runs[name].append(result)
        live = live_run(path, subscriber, Path(folder), live_s)
        return {"runs": runs, "live": live, "baud": path.baud}


# -- latency -----------------------------------------------------------------------------------


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
            "modem": ModemPath(stack, broker, 1.0, "bench-modem").transport,
            "modem_at_overhead": ModemPath(
                stack, broker, 0.0, "bench-modem0", OVERHEAD_POLL_S
            ).transport,
            "paho": paho_direct,
        }
        times: dict[str, dict[str, list[float]]] = {
            name: {"receive": [], "call": []} for name in paths
        }
        for seq in range(1, messages + 3):  # two warm-up messages per path, not counted
            for name, transport in paths.items():
                payload = record(seq, f"bench-{name.replace('_', '-')}")
                start = time.perf_counter()
                transport.publish(TOPIC.format(name.replace("_", "-")), payload, qos=1)
                acked = time.perf_counter()
                key = (f"bench-{name.replace('_', '-')}", seq)
                arrived = subscriber.wait(key, RECEIVE_TIMEOUT_S)
                if seq > 2:
                    times[name]["receive"].append(arrived - start)
                    times[name]["call"].append(acked - start)
    return times


# -- queue -----------------------------------------------------------------------------------


class NaiveQueue:
    """The plain SQLite queue: one transaction per record, at the durability it is given
    (journal mode and synchronous level), so that it is compared like with like."""

    def __init__(self, path: Path, synchronous: str) -> None:
        self.db = sqlite3.connect(path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
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


def _message_records(window: list) -> int:
    """How many of the window's records one batch message carries (the uplink's rule)."""
    count = 1
    while (
        count < len(window)
        and schema.batch_size("drone-7", [r.payload for r in window[: count + 1]])
        <= schema.MAX_MESSAGE_BYTES
    ):
        count += 1
    return count


def _time(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure_queue(
    records: int, event_records: int, reps: int
) -> tuple[dict[str, list[float]], int]:
    """Seconds per run, by variant (telemetry runs of `records`, event runs of
    `event_records`: each of those is an fsync); and the payload size."""
    topic = TOPIC.format("drone-7")
    payloads = [record(i) for i in range(1, records + 1)]
    times: dict[str, list[float]] = {
        k: []
        for k in (
            "naive_persist",
            "naive_replay",
            "ours_persist",
            "ours_replay",
            "naive_persist_events",
            "ours_persist_events",
        )
    }

    def naive(folder: Path) -> None:
        queue = NaiveQueue(folder / "naive.db", "NORMAL")  # the store's telemetry setting
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

            def replay() -> None:  # as the uplink drains: peek a window, ack per message
                while window := store.peek(REPLAY_WINDOW):
                    store.ack_through(window[_message_records(window) - 1].seq)

            times["ours_persist"].append(_time(persist))
            times["ours_replay"].append(_time(replay))
        finally:
            store.close()

    def naive_events(folder: Path) -> None:
        queue = NaiveQueue(folder / "naive-events.db", "FULL")  # the store's event setting
        try:
            times["naive_persist_events"].append(
                _time(lambda: [queue.put(topic, p) for p in payloads[:event_records]])
            )
        finally:
            queue.close()

    def ours_events(folder: Path) -> None:
        store = Store(folder / "events.db")
        try:
            times["ours_persist_events"].append(
                _time(lambda: [store.append("event", topic, p) for p in payloads[:event_records]])
            )
        finally:
            store.close()

    runs = (naive, ours, naive_events, ours_events)
    for rep in range(reps + 1):  # the first round is a warm-up
        for run in runs:
            with tempfile.TemporaryDirectory(prefix="skycourier-bench-") as folder:
                run(Path(folder))
        if rep == 0:
            for samples in times.values():
                samples.clear()
    return times, round(statistics.mean(len(p) for p in payloads))


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
    load_before = os.getloadavg()[0]
    if args.quick:
        backlog, baseline_backlog, modem_reps, live_s, messages = 100, 20, 1, 6.0, 10
        records, event_records, reps = 300, 30, 2
    else:
        backlog, baseline_backlog, modem_reps, live_s, messages = 300, 50, 3, 20.0, 60
        records, event_records, reps = 2000, 200, 11

    broker = start_broker()
    try:
        modem = measure_modem(broker, backlog, baseline_backlog, modem_reps, live_s)
        lat = measure_latency(broker, messages)
    finally:
        broker.stop()
    queue_times, payload_bytes = measure_queue(records, event_records, reps)
    load_after = os.getloadavg()[0]

    runs = modem["runs"]
    live = modem["live"]

    def modem_med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])  # type: ignore[index]

    def med(name: str, what: str = "receive") -> float:
        return statistics.median(lat[name][what])

    def rate(name: str, count: int = records) -> float:
        return count / statistics.median(queue_times[name])

    ratios = {
        "vs_naive_queue_equal_durability": rate("ours_persist") / rate("naive_persist"),
        "vs_naive_queue_equal_durability_events": rate("ours_persist_events", event_records)
        / rate("naive_persist_events", event_records),
        "vs_naive_queue_equal_durability_replay": rate("ours_replay") / rate("naive_replay"),
        "vs_one_record_per_message_modem": modem_med("ours", "records_per_s")
        / modem_med("one_per_message", "records_per_s"),
        "vs_paho_direct": med("paho") / med("modem"),
        "vs_paho_direct_at_overhead_only": med("paho") / med("modem_at_overhead"),
    }
    figures = {
        "modem_records_per_s": round(modem_med("ours", "records_per_s"), 2),
        "modem_records_per_s_one_record_per_message": round(
            modem_med("one_per_message", "records_per_s"), 2
        ),
        "modem_baud": modem["baud"],
        "modem_backlog_records": backlog,
        "modem_backlog_records_one_per_message": baseline_backlog,
        "modem_repetitions": modem_reps,
        "modem_records_per_message": round(
            backlog / statistics.median(r["messages"] for r in runs["ours"]), 1
        ),
        "modem_at_commands_per_record": round(modem_med("ours", "at_commands_per_record"), 3),
        "modem_at_commands_per_record_one_per_message": round(
            modem_med("one_per_message", "at_commands_per_record"), 3
        ),
        "modem_wire_bytes_per_record": round(modem_med("ours", "wire_bytes_per_record")),
        "modem_live_5hz_samples_per_s": round(live["samples_per_s"], 2),  # type: ignore[index]
        "modem_live_5hz_at_commands_per_s": round(live["at_commands_per_s"], 2),  # type: ignore[index]
        "modem_live_5hz_latency_ms": live["latency_ms"],  # type: ignore[index]
        "modem_live_seconds": live_s,
        "broker": broker.kind,
        "latency_messages_per_path": messages,
        "latency_ms_modem_time_scale_1": summary_ms(lat["modem"]["receive"]),
        "latency_ms_modem_time_scale_0": summary_ms(lat["modem_at_overhead"]["receive"]),
        "latency_ms_paho_direct": summary_ms(lat["paho"]["receive"]),
        "publish_call_ms_modem_time_scale_1": summary_ms(lat["modem"]["call"]),
        "publish_call_ms_modem_time_scale_0": summary_ms(lat["modem_at_overhead"]["call"]),
        "publish_call_ms_paho_direct": summary_ms(lat["paho"]["call"]),
        "queue_records_per_run": records,
        "queue_event_records_per_run": event_records,
        "queue_repetitions": reps,
        "queue_payload_bytes": payload_bytes,
        "queue_filesystem": filesystem(tempfile.gettempdir()),
        "ours_persist_records_per_s": round(rate("ours_persist")),
        "naive_persist_records_per_s": round(rate("naive_persist")),
        "ours_persist_events_records_per_s": round(rate("ours_persist_events", event_records)),
        "naive_persist_events_records_per_s": round(rate("naive_persist_events", event_records)),
        "ours_replay_records_per_s": round(rate("ours_replay")),
        "naive_replay_records_per_s": round(rate("naive_replay")),
        "machine_load_1min_before_after": [round(load_before, 2), round(load_after, 2)],
    }
    baselines = {
        "vs_naive_queue_equal_durability": "records/s persisting telemetry one record at a "
        "time: Store.append over a naive INSERT+COMMIT per record, both WAL with "
        "synchronous=NORMAL (the store's telemetry durability: survives a process crash)",
        "vs_naive_queue_equal_durability_events": "same for events: both WAL with "
        "synchronous=FULL (an fsync per record: survives power loss)",
        "vs_naive_queue_equal_durability_replay": "records/s replaying a backlog: the uplink's "
        "drain (peek 65, ack_through as many as one batch message carries, ~23) over the naive "
        "SELECT oldest + DELETE + COMMIT per record, both WAL synchronous=NORMAL",
        "vs_one_record_per_message_modem": "records/s draining a queued backlog of hand-over "
        "telemetry through the A7670 emulator (manual's latencies, time_scale=1) and the "
        "UART wire time at the configured baud: batch messages (schema v2) over the same "
        "chain publishing one record per message (max_batch=1, the uplink before batching)",
        "vs_paho_direct": "median publish-start -> subscriber-receive of one record, "
        "PahoTransport straight to the broker over AtMqttTransport -> pty (wire time at the "
        "configured baud) -> A7670 emulator at time_scale=1.0 -> broker; below 1 means the "
        "modem path is slower, as expected: TOPIC, PAYLOAD and PUB (five AT exchanges with "
        "the prompts) before the module publishes",
        "vs_paho_direct_at_overhead_only": "same, emulator at time_scale=0 (no module "
        "latency, no wire time) polled every 1 ms: what remains is the AT path's own cost "
        "(channel thread, engine, pty, emulator poll, bridge hop)",
    }
    write_results("telemetry", ratios, figures, baselines)


if __name__ == "__main__":
    main()
