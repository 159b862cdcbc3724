"""Fuzzing the AT engine (`companion.modem.at_engine.AtEngine`) with mutated replays of real
A7670 sessions (../shared/reference/a76xx/transcripts) and of the manuals' exchanges.

Each input is a seed session (the commands the host sent, the bytes the module answered)
mutated at the byte level: bits flipped, bytes replaced by ones that matter to the framing
(CR, LF, ">", quotes, commas, digits and digit-like characters such as "²"), spans deleted,
duplicated, repeated many times, spliced with another seed, and lines inserted that steer
the engine into its length-framed states (MQTT receive headers, SMS headers in PDU and text
mode, announced lengths up to the limits and past them). The bytes are fed in random pieces
while the seed's commands are submitted, with time advancing so that commands time out and
unframed SMS windows close, and an occasional `abort_all`. What must hold for every input:

- nothing leaves `receive`, `poll`, `outgoing`, `cancel` or `abort_all` (their documented
  error types: none; `submit` raises ValueError only for a bad command line, and only valid
  ones are submitted);
- what the engine holds stays within its stated bound (`held_bytes` <= `HELD_BOUND`: the
  line buffer, an MQTT message, an answer, an SMS body), and every event it emits is bounded
  (a line by `MAX_LINE`, an MQTT payload by `MAX_RX_PAYLOAD`, an answer by `MAX_RESPONSE`);
- time per byte does not depend on the input's shape: `--timing` feeds inputs of the shapes
  that hurt a line parser (one endless line, only line ends, only prompts, headers announcing
  big lengths, SMS headers full of quotes and commas, long runs of digits) and compares
  their time per byte with a well-formed session's, failing past `TIMING_FACTOR`.

`python tests/fuzz_at.py --runs 100000 --seed 1 --timing` is the long run; the test suite
runs a short one (tests/test_modem_fuzz.py). A failing input is written to
`fuzz-at-failure.bin` (the seed index, the cut points and the bytes) to become a regression
test.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from companion.modem.at_engine import (
    MAX_LINE,
    MAX_RESPONSE,
    MAX_RX_PAYLOAD,
    MAX_RX_TOPIC,
    MAX_UNFRAMED,
    AtCommand,
    AtEngine,
    AtResponse,
    MqttMessage,
    Urc,
)

TRANSCRIPTS = Path(__file__).resolve().parents[2] / "shared" / "reference" / "a76xx" / "transcripts"
#: The most the engine may hold at once: each of its bounded parts full.
HELD_BOUND = MAX_LINE + MAX_RX_TOPIC + MAX_RX_PAYLOAD + MAX_RESPONSE + MAX_UNFRAMED
#: How much slower per byte than a well-formed session any input shape may be.
TIMING_FACTOR = 4.0

CRLF = b"\r\n"


@dataclass(frozen=True)
class Seed:
    name: str
    commands: tuple[AtCommand, ...]
    stream: bytes


def _wire(*lines: str | bytes) -> bytes:
    return b"".join(CRLF + (x.encode() if isinstance(x, str) else x) + CRLF for x in lines)


def transcript_seeds() -> list[Seed]:
    """Each fenced block of each transcript as one session: its `AT...` lines are the host's
    commands (each once; the transcripts print them twice, the host's debug print and the
    module's echo), and every line of it, echoes included, is what the module sent."""
    seeds: list[Seed] = []
    for path in sorted(TRANSCRIPTS.glob("*.md")):
        blocks = path.read_text(encoding="utf-8").split("```")[1::2]
        for n, block in enumerate(blocks):
            lines = [line.rstrip() for line in block.splitlines() if line.strip()]
            lines = [line for line in lines if not line.startswith(("bash", "["))]
            commands: list[AtCommand] = []
            for line in lines:
                is_command = line[:2].upper() == "AT" and " " not in line[:3]
                if is_command and (not commands or commands[-1].line != line):
                    commands.append(_command(line))
            stream = b"".join(line.encode() + CRLF for line in lines)
            seeds.append(Seed(f"{path.stem}#{n}", tuple(commands), stream))
    return seeds


def _command(line: str) -> AtCommand:
    """The command as the driver would send it: prompts carry data, result-URC commands wait."""
    prefix = line[2:].split("=")[0].split("?")[0].upper()
    data = b"devices/MyDevice/messages/devicebound/#" if prefix in ("+CMQTTSUB",) else None
    if prefix in ("+CMQTTTOPIC", "+CMQTTPAYLOAD", "+CCERTDOWN", "+CMGS"):
        data = b"0123456789"
    urc = prefix if prefix in ("+CMQTTSTART", "+CMQTTCONNECT", "+NETOPEN", "+CMQTTSUB") else None
    return AtCommand(line, 9.0, data=data, result_urc=urc, urc_timeout_s=30.0)


ISS7_PDU = "07914346220050F0040B914326764060F60000524072319385800C31D98C062ACFE961F21B04"


def manual_seeds() -> list[Seed]:
    """Exchanges of the manual and application notes the transcripts lack."""
    topic, payload = b"simcommsg", b"0123456789" * 6
    rx = _wire(f"+CMQTTRXSTART: 0,{len(topic)},{len(payload)}", f"+CMQTTRXTOPIC: 0,{len(topic)}")
    rx += topic + CRLF + _wire(f"+CMQTTRXPAYLOAD: 0,{len(payload)}") + payload + CRLF
    rx += _wire("+CMQTTRXEND: 0")
    text = "hi\r\nOK\r\n+CMQTTRXSTART: 0,1,1"
    csdh = (
        f'+CMGR: "REC UNREAD","+447700900123",,"25/04/27,13:44:52+08",145,4,0,0,'
        f'"+447785016005",145,{len(text)}'
    )
    return [
        Seed("mqtt-an rx", (AtCommand("AT+CSQ"),), rx + _wire("+CSQ: 20,99", "OK")),
        Seed(
            "iss7 pdu",
            (AtCommand("AT+CMGRD=1"), AtCommand("AT+CMGL=4")),
            _wire('+CMGRD: 0,"",30', ISS7_PDU, "OK", '+CMGL: 1,0,"",30', ISS7_PDU, "OK"),
        ),
        Seed(
            "csdh text",
            (AtCommand("AT+CMGR=1"),),
            _wire(f"{csdh}\r\n{text}", "OK", '+CMT: "",30', ISS7_PDU),
        ),
        Seed(
            "unframed text",
            (AtCommand("AT+CMGR=2"), AtCommand("AT+CSQ")),
            _wire('+CMGR: "REC READ","+1",,"x"', "OK", "OK", "+CSQ: 1,1", "OK"),
        ),
        Seed(
            "prompt",
            (AtCommand("AT+CMQTTTOPIC=0,9", data=b"simcommsg"),),
            b"AT+CMQTTTOPIC=0,9\r\r\n> simcommsg" + _wire("OK"),
        ),
    ]


TOKENS = [
    b"\r",
    b"\n",
    b"\r\n",
    b">",
    b"> ",
    b'"',
    b",",
    b":",
    b"0",
    b"9",
    "²".encode(),
    "٣".encode(),
    b"\x00",
    b"\xff",
    b"OK\r\n",
    b"\r\nERROR\r\n",
    b"\r\n+CME ERROR: 13\r\n",
    b"\r\n+CMQTTRXSTART: 0,3,1\r\n",
    b"\r\n+CMQTTRXSTART: 0,1024,10240\r\n",
    b"\r\n+CMQTTRXTOPIC: 0,3\r\n",
    b"\r\n+CMQTTRXPAYLOAD: 0,10240\r\n",
    b"\r\n+CMQTTRXPAYLOAD: 0,99999\r\n",
    b"\r\n+CMQTTRXEND: 0\r\n",
    b'\r\n+CMGR: 0,"",30\r\n',
    b'\r\n+CMGR: 0,"",255\r\n',
    b'\r\n+CMGL: 1,0,"",30\r\n',
    b'\r\n+CMGR: "REC UNREAD","+1",,"x",145,4,0,0,"+2",145,160\r\n',
    b'\r\n+CMGR: "REC UNREAD","+1",,"x",145,68,0,8,"+2",145,140\r\n',
    b'\r\n+CMGR: "REC UNREAD","+1",,"x"\r\n',
    b'\r\n+CMT: "",25\r\n',
    b"\r\n+CBM: 88\r\n",
    b"\r\n+CDS: 25\r\n",
    b"\r\n+NETOPEN: \xc2\xb2\r\n",
    ISS7_PDU.encode(),
]


def mutate(rng: random.Random, seeds: list[Seed], seed: Seed) -> bytes:
    data = bytearray(seed.stream)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(9)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:  # flip a bit
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1 and data:  # replace a byte
            data[rng.randrange(len(data))] = rng.choice(b'\r\n>",:09\x00\xff ')
        elif op == 2:  # insert a token
            data[pos:pos] = rng.choice(TOKENS)
        elif op == 3 and data:  # delete a span
            del data[pos : pos + rng.randint(1, 64)]
        elif op == 4 and data:  # duplicate a span
            span = data[pos : pos + rng.randint(1, 256)]
            data[pos:pos] = span
        elif op == 5:  # repeat a span or a token many times (growth)
            span = bytes(data[pos : pos + rng.randint(1, 32)]) or rng.choice(TOKENS)
            data[pos:pos] = span * rng.randint(2, 2000)
        elif op == 6:  # splice another seed in
            other = rng.choice(seeds).stream
            start = rng.randrange(len(other) + 1)
            data[pos:pos] = other[start : start + rng.randint(1, 2048)]
        elif op == 7:  # a run of random bytes
            data[pos:pos] = rng.randbytes(rng.randint(1, 64))
        else:  # a length-framed header, its announced bytes, many times (growth)
            header = rng.choice(_FRAMED)
            filler = rng.choice((b"x", b"OK\r\n", b"\r\n"))
            block = header + (filler * 10240)[: rng.choice((1, 300, 10240))]
            data[pos:pos] = block * rng.randint(1, 40)
    return bytes(data)


#: Headers after which the engine reads by length.
_FRAMED = [t for t in TOKENS if b"+CMQTTRX" in t or b"+CMGR" in t or b"+CMT" in t]


@dataclass
class Failure:
    seed: str
    data: bytes
    cuts: list[int]
    error: str


def run_one(seed: Seed, data: bytes, rng: random.Random) -> tuple[list[int], str | None]:
    """Feed `data` with the seed's commands; the cut points used and what failed, if any."""
    engine = AtEngine(echo_expected=rng.random() < 0.5)
    commands = list(seed.commands)
    now = 0.0
    cuts: list[int] = []
    i = 0
    try:
        while i < len(data):
            # Like a driver: the next command as soon as the last one is answered, now and
            # then one queued behind it.
            if commands and (not engine.busy or rng.random() < 0.05):
                engine.submit(commands.pop(0))
            engine.outgoing(now)
            step = rng.choice((1, 7, 64, 512, 4096))
            events = engine.receive(data[i : i + step], now)
            cuts.append(step)
            i += step
            now += rng.choice((0.0, 0.01, 0.5, 3.0, 12.0))
            events += engine.poll(now)
            if rng.random() < 0.002:
                events += engine.abort_all("fuzz reset")
            if problem := _check(engine, events):
                return cuts, problem
        events = engine.poll(now + 200.0)
        return cuts, _check(engine, events)
    except Exception as exc:  # the point of the harness: nothing may escape
        return cuts, f"{type(exc).__name__}: {exc}"


def _check(engine: AtEngine, events: list[AtResponse | Urc | MqttMessage]) -> str | None:
    if engine.held_bytes > HELD_BOUND:
        return f"engine holds {engine.held_bytes} bytes > {HELD_BOUND}"
    for event in events:
        if isinstance(event, Urc):
            if len(event.line) > MAX_LINE + 128:
                return f"URC line of {len(event.line)} characters"
            if event.data is not None and len(event.data.data) > MAX_UNFRAMED:
                return f"URC SMS body of {len(event.data.data)} bytes"
        elif isinstance(event, MqttMessage):
            if len(event.payload) > MAX_RX_PAYLOAD or len(event.topic) > MAX_RX_TOPIC:
                return f"MQTT message of {len(event.payload)} bytes"
        elif isinstance(event, AtResponse):
            size = sum(map(len, event.lines)) + sum(len(d.data) for d in event.data)
            if size > MAX_RESPONSE + MAX_UNFRAMED:
                return f"answer of {size} bytes"
        else:
            return f"unknown event {event!r}"
    return None


def fuzz(
    runs: int, seed: int, on_progress: Callable[[int], None] | None = None
) -> tuple[int, list[Failure]]:
    """Run `runs` mutated inputs; returns (bytes fed, failures)."""
    rng = random.Random(seed)
    seeds = transcript_seeds() + manual_seeds()
    failures: list[Failure] = []
    fed = 0
    for n in range(runs):
        base = rng.choice(seeds)
        data = mutate(rng, seeds, base)
        fed += len(data)
        cuts, problem = run_one(base, data, random.Random(rng.random()))
        if problem is not None:
            failures.append(Failure(base.name, data, cuts, problem))
        if on_progress is not None and n % 10000 == 0:
            on_progress(n)
    return fed, failures


# -- time per byte ---------------------------------------------------------------------------


def shapes(size: int) -> dict[str, bytes]:
    """Inputs of about `size` bytes, each a shape that hurts some parser."""
    # The transcripts' sessions minus the SMS read (text mode without <length>: after it the
    # engine holds everything as data, which would make the baseline look fast).
    sessions = transcript_seeds() or manual_seeds()  # the manuals' when ../shared is absent
    good = b"".join(s.stream for s in sessions if b"+CMGRD" not in s.stream)
    rng = random.Random(0)
    quoted = b'\r\n+CMGR: "' + b'",,"' * 900 + b'"\r\n'
    return {
        "well-formed session": (good * (size // len(good) + 1))[:size],
        "random bytes": rng.randbytes(size),
        "one endless line": b"x" * size,
        "only line ends": b"\r\n" * (size // 2),
        "only prompts": b">" * size,
        "only spaces after a name": (b"+CMQTTRXSTART: 1" + b" " * 4000 + b"x\r\n") * (size // 4019),
        "MQTT headers, big lengths": (b"\r\n+CMQTTRXPAYLOAD: 0,10240\r\n") * (size // 28),
        "SMS headers, quotes and commas": quoted * (size // len(quoted)),
        "PDU headers, bad PDUs": (b'\r\n+CMT: "",30\r\n' + b"Z" * 200) * (size // 216),
        "digits": b"9" * size,
        "OK lines": b"\r\nOK\r\n" * (size // 6),
    }


def time_per_byte(data: bytes, reps: int = 5) -> float:
    """Median seconds per byte of feeding `data` in 4 KB reads, a command in flight."""
    times = []
    for _ in range(reps):
        engine = AtEngine()
        engine.submit(AtCommand("AT+CSQ", 1e9))
        engine.outgoing(0.0)
        start = time.perf_counter()
        for i in range(0, len(data), 4096):
            engine.receive(data[i : i + 4096], 0.0)
        times.append((time.perf_counter() - start) / len(data))
    return statistics.median(times)


def timing(size: int = 256 * 1024) -> dict[str, float]:
    """Each shape's time per byte as a multiple of the well-formed session's."""
    inputs = shapes(size)
    base = time_per_byte(inputs["well-formed session"])
    return {name: time_per_byte(data) / base for name, data in inputs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timing", action="store_true", help="also compare time per byte")
    args = parser.parse_args(argv)
    started = time.monotonic()
    fed, failures = fuzz(
        args.runs, args.seed, lambda n: print(f"  {n} inputs...", file=sys.stderr, flush=True)
    )
    elapsed = time.monotonic() - started
    print(f"{args.runs} mutated inputs, {fed / 1e6:.1f} MB, {elapsed:.0f} s, "
          f"{len(failures)} failure(s); held bytes bound {HELD_BOUND}")  # fmt: skip
    status = 0
    if failures:
        first = failures[0]
        Path("fuzz-at-failure.bin").write_bytes(
            f"{first.seed}\n{first.cuts}\n{first.error}\n".encode() + first.data
        )
        for failure in failures[:10]:
            print(f"FAIL [{failure.seed}] {failure.error}")
        status = 1
    if args.timing:
        for name, factor in timing().items():
            verdict = "ok" if factor <= TIMING_FACTOR else "TOO SLOW"
            print(f"  {name:34s} {factor:5.2f} x well-formed  {verdict}")
            if factor > TIMING_FACTOR:
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
