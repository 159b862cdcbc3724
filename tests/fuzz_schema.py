"""Fuzzing the telemetry schema decoder (`companion.telemetry.schema`) and the receiver built
on it (`companion.track.Tracker`) with mutated records, batches and statuses.

The seeds are what drones send: telemetry samples (every optional field on and off),
events with nested details, statuses of both versions, batches of one to twenty records,
plus the issue's reproducers (a 309-digit number, a 4,301-digit integer, a 990-deep array, a
lone surrogate, ``"v": true``). Each input is a seed mutated at the byte level (bits
flipped, bytes replaced, ranges cut, duplicated or spliced from another seed, hostile tokens
inserted) or at the JSON level (a value anywhere replaced by a hostile one: huge or long
integers, deep nesting, surrogates, NaN, wrong types, long strings), and is fed to
`decode`, to `decode_message` on a topic of the drone and to a `Tracker`. What must hold
for every input:

- nothing but `SchemaError` leaves the decoder or the tracker;
- whatever is accepted can be written again and reads back equal (no value that decodes
  but cannot be re-encoded: a lone surrogate, a NaN, a key that is not a string);
- the tracker holds at most its stated bounds (its de-duplication window, `MAX_DRONES`);
- the work is bounded: time per byte of the slowest inputs (re-timed, best of five) stays
  within a small factor of well-formed input's, and hostile 64 KiB payloads of every shape
  are timed against a well-formed 64 KiB batch (the script reports both factors).

`python tests/fuzz_schema.py --runs 100000 --seed 1` is the long run; the test suite runs a
short one (tests/test_telemetry_fuzz.py), which checks everything but the timing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from companion.telemetry import schema
from companion.track import MAX_DRONES, Tracker

T0 = "2026-11-27T21:44:44.123Z"
DRONE = "drone-7"
TOPICS = [schema.topic(DRONE, ch) for ch in ("telemetry", "events", "status")]
#: The tracker's de-duplication window in the harness (small, so that it is exercised).
WINDOW = 500
#: Bytes of input below which time per byte is noise (constant costs dominate).
TIMED_MIN_BYTES = 1024
#: How many of the slowest inputs per byte are re-timed at the end.
SLOWEST_KEPT = 20

HOSTILE_TOKENS = [
    b"9" * 309,
    b"1" * 4301,
    b"-" + b"9" * 20,
    b"[" * 990 + b"]" * 990,
    b'{"a":' * 50 + b"1" + b"}" * 50,
    b'"\\ud800"',
    b'"\\udfff\\ud800"',
    b'"\\ud83d\\ude00"',
    b"true",
    b"false",
    b"null",
    b"NaN",
    b"-Infinity",
    b"1e999",
    b"-0.0",
    b"1E-400",
    b"{}",
    b"[]",
    b'""',
    b'"',
    b"\\",
    b",",
    b":",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\x00",
    b'"v":true',
    b'"v":1',
    b'"type":"batch"',
    b'"records":[]',
    b'"ttl_s":0',
    b'"t":"0001-01-01T00:00:00+01:00"',
    b'"t":"9999-12-31T23:59:59-01:00"',
]


def _hostile_value(rng: random.Random) -> Any:
    """A JSON value a hostile sender might put anywhere."""
    choice = rng.randrange(14)
    if choice == 0:
        return 10 ** rng.randrange(15, 400)
    if choice == 1:
        return -(2**63) if rng.random() < 0.5 else 2**63 - 1
    if choice == 2:
        deep: Any = rng.choice([1, "x", {}])
        for _ in range(rng.randrange(10, 40)):
            deep = [deep] if rng.random() < 0.5 else {"k": deep}
        return deep
    if choice == 3:
        return rng.choice(["\ud800", "a\udc00b", "\udfff" * 3])
    if choice == 4:
        return rng.choice([float("nan"), float("inf"), -float("inf")])
    if choice == 5:
        return "s" * rng.randrange(100, 70_000)
    if choice == 6:
        return list(range(rng.randrange(1, 3000)))
    if choice == 7:
        return {str(i): i for i in range(rng.randrange(1, 500))}
    if choice == 8:
        return rng.choice([True, False, None, 0, -1, 1.5, "", "online", "batch", []])
    if choice == 9:
        return rng.choice(["2026-11-27T21:44:44Z", "2026-13-01T00:00:00Z", "now", T0[:-1]])
    if choice == 10:
        return rng.uniform(-1e308, 1e308)
    if choice == 11:
        return {"v": 2, "type": rng.choice(["telemetry", "event", "status", "batch"])}
    if choice == 12:
        return [{"v": 2, "type": "telemetry"}] * rng.randrange(1, 300)
    return rng.choice(["d1", DRONE, "a/b", "+", "#", "é" * 70])


def _id(rng: random.Random) -> str:
    """A record id as `schema.new_id` makes one, from `rng` (a run is replayed by its seed)."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _telemetry(seq: int, rng: random.Random) -> schema.Telemetry:
    full = rng.random() < 0.7
    return schema.Telemetry(
        DRONE,
        seq,
        _id(rng),
        T0,
        phase=rng.choice([None, "cruise", "descend"]),
        armed=rng.random() < 0.5,
        mode=rng.choice(["AUTO", "GUIDED", "LAND"]),
        position=schema.Position(-35.36 + rng.random(), 149.16, 634.2, 30.1) if full else None,
        heading_deg=rng.uniform(0, 359) if full else None,
        ground_speed_mps=rng.uniform(0, 20) if full else None,
        vertical_speed_mps=rng.uniform(-3, 3) if full else None,
        battery=schema.Battery(rng.randrange(101), 22.6) if full else schema.Battery(),
        gps=schema.GpsIntegrity(3, 14, ("jump",) if rng.random() < 0.2 else ()),
        detections={"person": 1} if rng.random() < 0.3 else {},
        link=schema.LinkQuality(-71, -98.0, 12.5) if full else None,
    )


def _event(seq: int, rng: random.Random) -> schema.Event:
    detail = {"reason": "wind", "leg": [1, 2], "nested": {"a": [{"b": 1.5}], "c": None}}
    return schema.Event(DRONE, seq, _id(rng), T0, "enter", "m-1", "cruise", detail)


def seeds(rng: random.Random) -> list[tuple[str, bytes]]:
    """(topic, payload) of what a drone sends, and the reproducers the issue lists."""
    tel, evt, sta = TOPICS
    out: list[tuple[str, bytes]] = []
    for seq in range(1, 6):
        out.append((tel, schema.encode(_telemetry(seq, rng))))
        out.append((evt, schema.encode(_event(seq, rng))))
    out.append((sta, schema.encode(schema.Status(DRONE, 9, "s", T0, "online", 90.0))))
    out.append((sta, schema.encode(schema.Status(DRONE, 9, "s", T0, "offline"))))
    v1 = json.loads(schema.encode(schema.Status(DRONE, 9, "s", T0, "offline")))
    out.append((sta, json.dumps({**v1, "v": 1, "state": "online"}).encode()))
    for size in (1, 2, 5, 20):
        out.append((tel, _batch([_telemetry(i + 1, rng) for i in range(size)])))
        out.append((evt, _batch([_event(i + 1, rng) for i in range(min(size, 8))])))
    head = f'{{"v":2,"type":"telemetry","drone_id":"{DRONE}","seq":1,"id":"x","t":"{T0}"'
    for tail in (
        ',"ground_speed_mps":' + "9" * 309,
        ',"mode":' + "1" * 4301,
        ',"gps":{"alarms":' + "[" * 990 + "]" * 990 + "}",
        ',"mode":"\\ud800"',
    ):
        out.append((tel, (head + tail + "}").encode()))
    out.append((sta, head.replace('"v":2', '"v":true').encode() + b',"state":"offline"}'))
    return out


def _batch(records: list[schema.Telemetry] | list[schema.Event]) -> bytes:
    return schema.encode_batch(DRONE, [schema.encode(r) for r in records])


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value in `obj` (keys and indexes), shallow first."""
    found = [prefix]
    if isinstance(obj, dict):
        for key, value in obj.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for index, value in enumerate(obj[:30]):
            found += _paths(value, (*prefix, index))
    return found


def _replace(obj: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(obj, dict):
        return {**obj, head: _replace(obj[head], rest, value)}
    copy = list(obj)
    copy[head] = _replace(obj[head], rest, value)
    return copy


def mutate(payload: bytes, corpus: list[tuple[str, bytes]], rng: random.Random) -> bytes:
    """One mutation (sometimes two) of `payload`."""
    for _ in range(1 + (rng.random() < 0.3)):
        payload = _mutate_once(payload, corpus, rng)
    return payload[: schema.MAX_PAYLOAD_BYTES + 16]


def _mutate_once(payload: bytes, corpus: list[tuple[str, bytes]], rng: random.Random) -> bytes:
    kind = rng.randrange(9)
    data = bytearray(payload)
    if kind == 0 and data:  # structural: a hostile value somewhere in the JSON
        try:
            obj = json.loads(payload)
        except (ValueError, RecursionError):
            return payload
        path = rng.choice(_paths(obj))
        mutated = _replace(obj, path, _hostile_value(rng))
        try:
            return json.dumps(mutated, ensure_ascii=rng.random() < 0.5).encode("utf-8", "replace")
        except (ValueError, RecursionError):
            return payload
    if kind == 1 and data:  # bit flips
        for _ in range(rng.randrange(1, 6)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == 2 and data:  # bytes replaced by JSON punctuation or high bytes
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.choice(b'{}[]":,\\0-9eE+.\xff\x00 ')
        return bytes(data)
    if kind == 3:  # a hostile token inserted
        i = rng.randrange(len(data) + 1)
        return bytes(data[:i]) + rng.choice(HOSTILE_TOKENS) + bytes(data[i:])
    if kind == 4 and data:  # a range cut
        i = rng.randrange(len(data))
        return bytes(data[:i] + data[i + rng.randrange(1, 64) :])
    if kind == 5 and data:  # a range duplicated
        i = rng.randrange(len(data))
        j = min(len(data), i + rng.randrange(1, 256))
        return bytes(data[:j] + data[i:j] + data[j:])
    if kind == 6:  # spliced with another seed
        other = rng.choice(corpus)[1]
        i, j = rng.randrange(len(data) + 1), rng.randrange(len(other) + 1)
        return bytes(data[:i]) + other[j:]
    if kind == 7 and data:  # truncated
        return bytes(data[: rng.randrange(len(data))])
    # a value swapped for one of another type, by text
    return bytes(data).replace(b"true", b"1", 1).replace(b'"AUTO"', b"[]", 1)


def check_input(topic: str, payload: bytes, tracker: Tracker) -> str | None:
    """A finding for one input, or None. Runs decode, decode_message and the tracker."""
    accepted: list[schema.Record] = []
    for name, call in (
        ("decode", lambda: [schema.decode(payload)]),
        ("decode_message", lambda: schema.decode_message(topic, payload)),
        ("Tracker.receive", lambda: tracker.receive(topic, payload)),
    ):
        try:
            accepted += call()
        except schema.SchemaError as exc:
            if not str(exc):
                return f"{name}: SchemaError without a message"
        except Exception as exc:  # the finding: any other exception
            return f"{name}: {type(exc).__name__}: {str(exc)[:120]}"
    for record in accepted:
        try:
            text = json.dumps(schema.to_dict(record), allow_nan=False, ensure_ascii=False)
            again = schema.decode(text.encode())
        except Exception as exc:
            return f"accepted {record.type} cannot be written again: {type(exc).__name__}: {exc}"
        if again != record:
            return f"accepted {record.type} reads back different"
    if len(tracker._seen) > WINDOW or len(tracker._status) > MAX_DRONES:
        return f"tracker over its bounds: {len(tracker._seen)} ids, {len(tracker._status)} drones"
    return None


def _time_one(fn: Callable[[], object], repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        with contextlib.suppress(schema.SchemaError):
            fn()
        best = min(best, time.perf_counter() - start)
    return best


def _decode_all(topic: str, payload: bytes) -> Callable[[], object]:
    def run() -> object:
        with contextlib.suppress(schema.SchemaError):
            schema.decode(payload)
        return schema.decode_message(topic, payload)

    return run


def hostile_64k() -> dict[str, bytes]:
    """64 KiB (or just under) payloads of the shapes that cost most per byte, and a
    well-formed batch of the same size as their yardstick."""
    limit = schema.MAX_PAYLOAD_BYTES
    rng = random.Random(0)
    records = [schema.encode(_telemetry(i + 1, rng)) for i in range(400)]
    batch = schema._batch_prefix(DRONE)
    count = 0
    while schema.batch_size(DRONE, records[: count + 1]) <= limit and count < len(records):
        count += 1
    shapes = {
        "well-formed batch": batch + b",".join(records[:count]) + b"]}",
        "deep nesting": b"[" * (limit // 2) + b"]" * (limit // 2),
        "many small objects": b"[" + b",".join([b'{"a":1}'] * (limit // 8 - 1)) + b"]",
        "long integers": b"[" + b",".join([b"9" * 4000] * (limit // 4001 - 1)) + b"]",
        "unicode escapes": b'["' + b"\\u0041" * (limit // 6 - 1) + b'"]',
        "lone surrogates at the end": b'["' + b"a" * (limit - 12) + b'\\ud800"]',
        "many keys": b"{" + b",".join(b'"k%d":0' % i for i in range(limit // 10)) + b"}",
        "long floats": b"[" + b",".join([b"0." + b"1" * 1000] * (limit // 1003 - 1)) + b"]",
    }
    return {name: data[:limit] for name, data in shapes.items()}


def run(runs: int, seed: int, timing: bool = False) -> dict[str, Any]:
    """Feed `runs` mutated inputs; with `timing`, also time the slowest and the hostile
    shapes. Returns the counts, the findings (each with the input's start) and the factors."""
    rng = random.Random(seed)
    corpus = seeds(rng)
    tracker = Tracker(window=WINDOW, clock=lambda: 1_795_000_000.0)
    findings: list[str] = []
    accepted = rejected = 0
    well_formed: list[float] = []  # seconds per byte of the seeds that decode
    slowest: list[tuple[float, str, bytes]] = []
    started = time.perf_counter()
    for topic, payload in corpus:
        if timing and len(payload) >= TIMED_MIN_BYTES:
            try:
                schema.decode_message(topic, payload)
            except schema.SchemaError:
                continue
            well_formed.append(_time_one(_decode_all(topic, payload)) / len(payload))
    for i in range(runs):
        topic, payload = rng.choice(corpus)
        if rng.random() < 0.1:
            topic = rng.choice(TOPICS)  # a record on the wrong topic
        data = mutate(payload, corpus, rng)
        start = time.perf_counter()
        finding = check_input(topic, data, tracker)
        spent = time.perf_counter() - start
        if finding is not None:
            findings.append(f"input {i}: {finding} (payload starts {data[:80]!r})")
        try:
            schema.decode_message(topic, data)
            accepted += 1
        except schema.SchemaError:
            rejected += 1
        if timing and len(data) >= TIMED_MIN_BYTES:
            slowest.append((spent / len(data), topic, data))
            slowest.sort(key=lambda item: -item[0])
            del slowest[SLOWEST_KEPT:]
    result: dict[str, Any] = {
        "inputs": runs,
        "seed": seed,
        "accepted": accepted,
        "rejected": rejected,
        "findings": findings,
        "seconds": round(time.perf_counter() - started, 1),
        "bounds": {
            "payload_bytes": schema.MAX_PAYLOAD_BYTES,
            "depth": schema.MAX_DEPTH,
            "batch_records": schema.MAX_BATCH_RECORDS,
            "tracker_ids": WINDOW,
            "tracker_drones": MAX_DRONES,
        },
    }
    if timing and well_formed:
        per_byte = statistics.median(well_formed)
        retimed = [_time_one(_decode_all(t, d)) / len(d) for _, t, d in slowest]
        shapes = hostile_64k()
        yardstick = shapes.pop("well-formed batch")
        best = _time_one(_decode_all(TOPICS[0], yardstick), repeat=9)
        result["timing"] = {
            "well_formed_us_per_kib": round(per_byte * 1024 * 1e6, 1),
            "slowest_mutated_times_well_formed": round(max(retimed, default=0) / per_byte, 2),
            "well_formed_64k_batch_ms": round(best * 1000, 2),
            "hostile_64k_times_well_formed_64k": {
                name: round(_time_one(_decode_all(TOPICS[0], data), repeat=9) / best, 2)
                for name, data in shapes.items()
            },
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000, help="mutated inputs to feed")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    result = run(args.runs, args.seed, timing=True)
    print(json.dumps(result, indent=2))
    sys.exit(1 if result["findings"] else 0)


if __name__ == "__main__":
    main()
