"""Fuzzing the GPS decoder and epoch core: `NmeaUbxStream` and `EpochAssembler`, fed as the
driver feeds them (`EpochAssembler.decode`), with the event path (`feed` + `push`) checked
against it.

Inputs are mutations of seeds: the gpsd regression logs in ../shared/reference/gps (raw
output of four real receivers, when that folder is there) and the u-blox NEO-6 protocol
specification's example sentences (always). Each input applies one to four mutations drawn
from a seeded generator, so a run is reproducible from its seed and any failure from its
index:

- bytes set to framing bytes (NUL, CR, LF, `$`, `*`, `,`, 0xB5, 0x62, digits) or at random,
  bytes inserted, ranges deleted, duplicated many times, or spliced from another seed;
- a field of a sentence replaced by an extreme value (empty, 25 nines, "nan", "1e999", a
  year 9999, 23:59:59, ...) with the checksum recomputed, so that it reaches the epoch
  assembler instead of dying at the checksum, the way the OverflowError reproducers did;
- every time emptied (u-blox before its first fix) or frozen (a stuck receiver);
- UBX frames with a valid checksum and any class, id and payload, and false syncs with
  any length;
- line ends swapped or dropped, the input cut short;

and is fed in chunks of random size. After every chunk:

- nothing raised (the core's contract: it never raises on input; the only exception is
  `UbxParseError`, and only from `UbxFrame.msg`, which is read for every frame);
- the stream holds at most `MAX_PENDING` bytes and its byte counters add up, its reject
  counters equal the counts of the `DecodeError` events;
- the assembler holds at most `MAX_EPOCH_SENTENCES` sentences and positions in its open
  epoch, 8 GSV parts more (a set that began in the epoch before), and at most 9 GSV parts
  per talker pending (`held()`);
- a valid fix has a 2-D or 3-D mode, a position within the Earth's ranges and a measured
  GGA quality; every fix's satellites decode.

`python tests/fuzz_gps.py [--inputs N] [--seed S]` is the long run (100,000 inputs by
default), which also times the decoder per byte on well-formed input and on shapes built
to be expensive, and fails when one costs more than `MAX_SHAPE_FACTOR` times well-formed
input; tests/test_gps_fuzz.py runs a short one (and the reproducers) in the suite.
"""

from __future__ import annotations

import argparse
import random
import statistics
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from companion.gps.epoch import MAX_EPOCH_SENTENCES, EpochAssembler
from companion.gps.fix import QUALITY_INVALID, GpsFix
from companion.gps.stream import (
    ERROR_KINDS,
    MAX_PENDING,
    TALKERS,
    DecodeError,
    NmeaUbxStream,
    Sentence,
    UbxFrame,
    UbxParseError,
    nmea_checksum,
    ubx_checksum,
)

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "gps"

#: The u-blox NEO-6 protocol specification's examples (GPS.G6-SW-10018, "NMEA Messages"),
#: seeds when the gpsd logs are not there.
SPEC_EXAMPLES = (
    b"$GPRMC,083559.00,A,4717.11437,N,00833.91522,E,0.004,77.52,091202,,,A*57\r\n"
    b"$GPVTG,77.52,T,,M,0.004,N,0.008,K,A*06\r\n"
    b"$GPGGA,092725.00,4717.11399,N,00833.91590,E,1,8,1.01,499.6,M,48.0,M,,0*5B\r\n"
    b"$GPGSA,A,3,23,29,07,08,09,18,26,28,,,,,1.94,1.18,1.54*0D\r\n"
    b"$GPGSV,3,1,10,23,38,230,44,29,71,156,47,07,29,116,41,08,09,081,36*7F\r\n"
    b"$GPGLL,4717.11364,N,00833.91565,E,092321.00,A,A*60\r\n"
    b"$GPZDA,082710.00,16,09,2002,00,00*64\r\n"
    b"$GPTXT,01,01,02,u-blox ag - www.u-blox.com*50\r\n"
)

#: Bounds the core states (stream.py, epoch.py) and the checks hold it to: GSV parts
#: pending, at most a set of 9 per talker; in the open epoch, its sentences' and those of a
#: set that began in the epoch before.
MAX_GSV_PENDING = 9 * len(TALKERS)
MAX_EPOCH_GSV_PARTS = MAX_EPOCH_SENTENCES + 8
#: The most a shape of input may cost per byte, as a multiple of well-formed input.
MAX_SHAPE_FACTOR = 5.0

FRAMING = b"\x00\r\n$*,\xb5\x6209AF"
EXTREMES = (
    b"",
    b"9999999999999999999999999",
    b"-1",
    b"nan",
    b"inf",
    b"1e999",
    b"9999",
    b"235959",
    b"235960.999",
    b"000000",
    b"99",
    b"0",
    b"E",
    b"00.0",
    b"1_0",
)


def seeds() -> list[bytes]:
    """The gpsd logs without their `#` comment lines (when there), and the spec examples."""
    found = [SPEC_EXAMPLES]
    if REFERENCE.is_dir():
        for log in sorted(REFERENCE.glob("*.log")):
            lines = log.read_bytes().splitlines(keepends=True)
            found.append(b"".join(line for line in lines if not line.startswith(b"#")))
    return found


def sentence(body: bytes) -> bytes:
    return b"$%s*%02X\r\n" % (body, nmea_checksum(body))


def ubx(msg_class: int, msg_id: int, payload: bytes) -> bytes:
    head = struct.pack("<BBH", msg_class, msg_id, len(payload)) + payload
    return b"\xb5\x62" + head + ubx_checksum(head)


def _bodies(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each `$...*hh` sentence body in `data` (between `$` and `*`)."""
    spans = []
    start = data.find(b"$")
    while start >= 0:
        star = data.find(b"*", start)
        stop = data.find(b"$", start + 1)
        if star < 0:
            break
        if stop < 0 or star < stop:
            spans.append((start + 1, star))
        start = stop
    return spans


def _resum(data: bytes, start: int, end: int, body: bytes) -> bytes:
    """`data` with the body at start:end replaced and its checksum made right again."""
    digits = b"%02X" % nmea_checksum(body)
    return data[:start] + body + b"*" + digits + data[end + 3 :]


# -- mutations --------------------------------------------------------------------------


def flip(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if out:
            value = rng.choice(FRAMING) if rng.random() < 0.7 else rng.randrange(256)
            out[rng.randrange(len(out))] = value
    return bytes(out)


def insert(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    at = rng.randint(0, len(data))
    if rng.random() < 0.5:
        extra = bytes(rng.choice(FRAMING) for _ in range(rng.randint(1, 64)))
    else:
        extra = rng.randbytes(rng.randint(1, 256))
    return data[:at] + extra + data[at:]


def delete(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    if not data:
        return data
    at = rng.randrange(len(data))
    return data[:at] + data[at + rng.randint(1, 200) :]


def duplicate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    if not data:
        return data
    at = rng.randrange(len(data))
    piece = data[at : at + rng.randint(1, 300)]
    return data[:at] + piece * rng.randint(2, 400) + data[at:]


def splice(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    other = rng.choice(pool)
    cut = rng.randint(0, len(data))
    start = rng.randint(0, len(other))
    return data[:cut] + other[start : start + rng.randint(0, 4000)]


def extreme_field(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    """A field set to an extreme value, the checksum made right: reaches the assembler."""
    spans = _bodies(data)
    for _ in range(rng.randint(1, 6)):
        if not spans:
            break
        start, end = rng.choice(spans)
        fields = data[start:end].split(b",")
        fields[rng.randrange(len(fields))] = rng.choice(EXTREMES)
        body = b",".join(fields)
        data = _resum(data, start, end, body)
        spans = _bodies(data)
    return data


def times(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    """Every time field emptied, frozen, or set to one before midnight of 31 Dec 9999, with
    a ZDA of that date in front: the rollover that overflowed."""
    choice = rng.choice((b"", b"120000.00", b"235959", b"000000"))
    out = data
    for start, end in reversed(_bodies(data)):
        fields = out[start:end].split(b",")
        kind = fields[0][2:]
        index = {b"GGA": 1, b"RMC": 1, b"ZDA": 1, b"GLL": 5}.get(kind)
        if index is not None and index < len(fields):
            fields[index] = choice
            out = _resum(out, start, end, b",".join(fields))
    if choice == b"235959":
        out = sentence(b"GPZDA,235959,31,12,9999,00,00") + out
    return out


def ubx_frames(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    at = rng.randint(0, len(data))
    if rng.random() < 0.6:
        frame = ubx(
            rng.choice((0x05, 0x0A, 0x06, 0x01, rng.randrange(256))),
            rng.randrange(256),
            rng.randbytes(rng.choice((0, 2, 8, 20, 40, rng.randint(0, 300)))),
        )
    else:  # a false sync claiming any length
        frame = b"\xb5\x62" + rng.randbytes(2) + struct.pack("<H", rng.randrange(65536))
    return data[:at] + frame * rng.randint(1, 20) + data[at:]


def line_ends(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    return data.replace(b"\r\n", rng.choice((b"\r", b"\n", b"", b"\n\r", b"\r\r\n")))


def truncate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    return data[: rng.randint(0, len(data))]


MUTATIONS: dict[str, Callable[[random.Random, bytes, list[bytes]], bytes]] = {
    "flip": flip,
    "insert": insert,
    "delete": delete,
    "duplicate": duplicate,
    "splice": splice,
    "extreme_field": extreme_field,
    "times": times,
    "ubx_frames": ubx_frames,
    "line_ends": line_ends,
    "truncate": truncate,
}


def mutated(rng: random.Random, pool: list[bytes]) -> tuple[bytes, list[str]]:
    """One input: a seed with one to four mutations; and their names."""
    data = rng.choice(pool)
    names = rng.choices(list(MUTATIONS), k=rng.randint(1, 4))
    for name in names:
        data = MUTATIONS[name](rng, data, pool)
    return data, names


def chunks(rng: random.Random, data: bytes) -> Iterator[bytes]:
    """`data` in pieces of random size, or whole."""
    if rng.random() < 0.2:
        yield data
        return
    pos = 0
    while pos < len(data):
        size = rng.choice((1, 2, 7, 64, 96, 512, 4096, rng.randint(1, 2000)))
        yield data[pos : pos + size]
        pos += size


# -- checks -----------------------------------------------------------------------------


@dataclass
class Report:
    """What a run saw: inputs, bytes, the largest of each bounded quantity, failures."""

    inputs: int = 0
    bytes: int = 0
    fixes: int = 0
    valid_fixes: int = 0
    ubx_frames: int = 0
    ubx_parse_errors: int = 0
    rejects: Counter[str] = field(default_factory=Counter)
    largest: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def note(self, name: str, value: int) -> None:
        if value > self.largest[name]:
            self.largest[name] = value


class CheckFailed(AssertionError):
    """A broken promise of the core; the message says which."""


def check_fix(fix: GpsFix) -> None:
    list(fix.satellites)  # decodes; must not raise
    if fix.valid:
        if fix.mode not in (2, 3) or fix.lat is None or fix.lon is None:
            raise CheckFailed(f"valid fix without a 2-D/3-D position: {fix}")
        if not (-90.0 <= fix.lat <= 90.0 and -180.0 <= fix.lon <= 180.0):
            raise CheckFailed(f"valid fix off the Earth: {fix.lat}, {fix.lon}")
        if fix.quality is not None and fix.quality not in (1, 2, 3, 4, 5):
            raise CheckFailed(f"valid fix with GGA quality {fix.quality}")
        if fix.dead_reckoning:
            raise CheckFailed("a dead-reckoning fix counted valid")
    elif fix.quality == QUALITY_INVALID and fix.lat is not None:
        raise CheckFailed("a quality-0 fix with a position")


def check_stream(stream: NmeaUbxStream, errors: Counter[str]) -> None:
    if stream.pending > MAX_PENDING:
        raise CheckFailed(f"stream holds {stream.pending} bytes, above {MAX_PENDING}")
    if not stream.stats.accounted(stream.pending):
        raise CheckFailed(f"byte counters do not add up: {stream.stats.as_dict()}")
    for kind in ERROR_KINDS:
        if getattr(stream.stats, kind) != errors[kind]:
            raise CheckFailed(
                f"{kind}: counter {getattr(stream.stats, kind)}, events {errors[kind]}"
            )


def check_assembler(assembler: EpochAssembler, report: Report) -> None:
    held = assembler.held()
    for name, value in held.items():
        report.note(name, value)
    for name, bound in (
        ("sentences", MAX_EPOCH_SENTENCES),
        ("positions", MAX_EPOCH_SENTENCES),
        ("gsv_parts", MAX_EPOCH_GSV_PARTS),
    ):
        if held[name] > bound:
            raise CheckFailed(f"open epoch holds {held[name]} {name} (> {bound})")
    if held["gsv_pending"] > MAX_GSV_PENDING:
        raise CheckFailed(f"{held['gsv_pending']} GSV parts pending (> {MAX_GSV_PENDING})")


def run_one(data: bytes, rng: random.Random, report: Report, compare: bool) -> None:
    """Decode one input as the driver does; with `compare`, by the event path too, and the
    two must give the same fixes. Raises CheckFailed, or whatever the core let escape."""
    stream, assembler = NmeaUbxStream(), EpochAssembler()
    errors: Counter[str] = Counter()
    fixes: list[GpsFix] = []
    now = 0.0
    pieces = list(chunks(rng, data))
    for piece in pieces:
        now += 0.01
        got, events = assembler.decode(stream, piece, now)
        fixes += got
        for event in events:
            if isinstance(event, DecodeError):
                errors[event.kind] += event.count
            elif isinstance(event, UbxFrame):
                report.ubx_frames += 1
                try:
                    _ = event.msg
                except UbxParseError:
                    report.ubx_parse_errors += 1
        check_stream(stream, errors)
        check_assembler(assembler, report)
        report.note("pending", stream.pending)
    fixes += assembler.flush()
    for fix in fixes:
        check_fix(fix)
    report.fixes += len(fixes)
    report.valid_fixes += sum(fix.valid for fix in fixes)
    report.rejects.update(errors)
    if compare:
        stream2, assembler2 = NmeaUbxStream(), EpochAssembler()
        now, others = 0.0, []
        for piece in pieces:
            now += 0.01
            for event in stream2.feed(piece):
                if isinstance(event, Sentence):
                    others += assembler2.push(event, now)
        others += assembler2.flush()
        if others != fixes:
            raise CheckFailed("the event path (feed + push) and decode disagree")


def fuzz(inputs: int, seed: int = 0, pool: list[bytes] | None = None) -> Report:
    """Run `inputs` mutated inputs; failures are collected in the report, not raised."""
    pool = pool if pool is not None else seeds()
    report = Report()
    for index in range(inputs):
        rng = random.Random(f"{seed}:{index}")
        data, names = mutated(rng, pool)
        report.inputs += 1
        report.bytes += len(data)
        try:
            run_one(data, rng, report, compare=index % 10 == 0)
        except Exception as exc:  # collect every failure: the report names them
            report.failures.append(
                f"input {seed}:{index} ({', '.join(names)}): {type(exc).__name__}: {exc}"
            )
    return report


# -- time per byte ----------------------------------------------------------------------


def decode_all(data: bytes, chunk: int = 4096) -> None:
    stream, assembler = NmeaUbxStream(), EpochAssembler()
    for start in range(0, len(data), chunk):
        assembler.decode(stream, data[start : start + chunk], 0.0)
    assembler.flush()


def shapes(pool: list[bytes], size: int) -> dict[str, bytes]:
    """Inputs of about `size` bytes: well-formed (the seeds), mutated ones, and shapes built
    to cost the most per byte (the issue's reproducers among them)."""
    rng = random.Random(1)

    def fill(unit: bytes) -> bytes:
        return unit * (size // max(1, len(unit)) + 1)

    well_formed = fill(b"".join(pool))[:size]
    built = {
        "well-formed": well_formed,
        "random bytes": rng.randbytes(size),
        "bad-checksum GGA ($GPGGA,*00)": fill(b"$GPGGA,*00\n")[:size],
        "dollars": b"$" * size,
        "dollar, byte": fill(b"$x")[:size],
        "NUL, dollar": fill(b"\x00$")[:size],
        "dollar, line end": fill(b"$\n")[:size],
        "byte, line end": fill(b"x\n")[:size],
        "no checksum": fill(b"$GPGGA,1\n")[:size],
        "unsupported type": fill(sentence(b"GPXXX,1"))[:size],
        "UBX syncs": fill(b"\xb5b")[:size],
        "UBX syncs, zero length": fill(b"\xb5b\xb5b\x00\x00")[:size],
        "UBX syncs, 1 KiB length": fill(b"\xb5b\x01\x01\x00\x04")[:size],
        "0xB5, byte": fill(b"\xb5x")[:size],
        "UBX frames, bad parse": fill(ubx(0, 0, b""))[:size],
        "empty times": fill(sentence(b"GPRMC,,V,,,,,,,,,,N") + sentence(b"GPGSV,1,1,00"))[:size],
        "frozen GGA": fill(
            sentence(b"GPGGA,120000.00,4717.11399,N,00833.91590,E,1,8,1.01,499.6,M,48.0,M,,")
        )[:size],
    }
    for name in MUTATIONS:
        data = bytearray()
        while len(data) < size:
            data += MUTATIONS[name](rng, rng.choice(pool), pool)
        built[f"mutated: {name}"] = bytes(data[:size])
    return built


def time_per_byte(data: bytes, repeats: int) -> float:
    """Median CPU seconds per byte of `decode_all(data)` over `repeats` runs."""
    runs = []
    for _ in range(repeats):
        start = time.process_time()
        decode_all(data)
        runs.append(time.process_time() - start)
    return statistics.median(runs) / len(data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=200_000, help="bytes per timed shape")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per shape")
    args = parser.parse_args()
    pool = seeds()
    print(f"seeds: {len(pool)} ({sum(map(len, pool))} bytes); gpsd logs: {REFERENCE.is_dir()}")
    start = time.monotonic()
    report = fuzz(args.inputs, args.seed, pool)
    print(
        f"{report.inputs} inputs, {report.bytes} bytes in {time.monotonic() - start:.0f} s: "
        f"{report.fixes} fixes ({report.valid_fixes} valid), {report.ubx_frames} UBX frames "
        f"({report.ubx_parse_errors} pyubx2 cannot decode), rejects {dict(report.rejects)}"
    )
    print(
        f"largest held: {dict(report.largest)}; bounds: pending {MAX_PENDING}, open epoch "
        f"{MAX_EPOCH_SENTENCES} sentences and positions, {MAX_EPOCH_GSV_PARTS} GSV parts, "
        f"{MAX_GSV_PENDING} GSV parts pending"
    )
    for failure in report.failures[:20]:
        print("FAILED", failure)
    print(f"failures: {len(report.failures)}")
    built = shapes(pool, args.size)
    base = time_per_byte(built["well-formed"], args.repeats)
    worst = 0.0
    print(f"time per byte, median of {args.repeats} runs, {args.size} bytes each:")
    for name, data in built.items():
        cost = time_per_byte(data, args.repeats)
        factor = cost / base
        worst = max(worst, factor)
        print(f"  {name:36s} {cost * 1e9:7.1f} ns/byte  x{factor:.2f}")
    print(f"worst shape: x{worst:.2f} of well-formed input (bound x{MAX_SHAPE_FACTOR:g})")
    return 1 if report.failures or worst > MAX_SHAPE_FACTOR else 0


if __name__ == "__main__":
    sys.exit(main())
