"""NMEA decoding: the driver's decoder vs a plain pynmea2 line loop, on the same bytes.

The stream is the NEO-6M emulator's output at 5 Hz (RMC, VTG, GGA, GSA, GSV x3, GLL per
epoch; satellite SNRs wander once a second as on a real receiver),
made once and fed to both in the same run, interleaved. The baseline is what most scripts
do: split lines, `pynmea2.parse(line, check=True)`, catch errors. Ours does more: byte-level
framing with UBX interleaving, bounded lines, counters that add up, and epoch assembly into
`GpsFix`. Also measured: the CPU share of the driver thread reading a 5 Hz receiver on a
pty, from /proc (the thread's own user+system time over wall time).

    python bench/nmea_decode.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pynmea2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import interleaved, median_ms, write_results
from companion.gps.driver import GpsDriver
from companion.gps.epoch import EpochAssembler
from companion.gps.stream import NmeaUbxStream, Sentence
from sim.gps.neo6m import Neo6m
from sim.gps.pty_runner import Neo6mPty

HOME = (-35.363261, 149.165230, 604.0, 8.0, 45.0)


def recorded_stream(epochs: int) -> bytes:
    """`epochs` epochs of the emulator's 5 Hz output."""
    receiver = Neo6m(meas_rate_ms=200)
    return b"".join(receiver.tick(i * 0.2, lambda _t: HOME) for i in range(epochs))


def ours(data: bytes) -> int:
    """Decode with the driver's cores; returns the number of epochs assembled."""
    stream, assembler = NmeaUbxStream(), EpochAssembler()
    fixes = 0
    for start in range(0, len(data), 4096):
        for event in stream.feed(data[start : start + 4096]):
            if isinstance(event, Sentence):
                fixes += len(assembler.push(event, 0.0))
    return fixes + len(assembler.flush())


def plain_pynmea2(data: bytes) -> int:
    """The baseline loop; returns the number of sentences parsed."""
    parsed = 0
    for line in data.splitlines():
        try:
            pynmea2.parse(line.decode("ascii"), check=True)
        except (pynmea2.ParseError, UnicodeDecodeError):
            continue
        parsed += 1
    return parsed


def _thread_cpu_s(native_id: int) -> float:
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def driver_cpu_share(seconds: float) -> float:
    """CPU seconds per wall second of the driver thread at 5 Hz."""
    with Neo6mPty(Neo6m(meas_rate_ms=200), lambda _t: HOME) as runner:
        assert runner.path is not None
        with GpsDriver(runner.path, lambda _item: None) as driver:
            time.sleep(1.0)
            thread = driver._thread
            assert thread is not None and thread.native_id is not None
            cpu0, wall0 = _thread_cpu_s(thread.native_id), time.monotonic()
            time.sleep(seconds)
            cpu1, wall1 = _thread_cpu_s(thread.native_id), time.monotonic()
    return (cpu1 - cpu0) / (wall1 - wall0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run")
    args = parser.parse_args()
    epochs = 2000 if args.quick else 20000
    data = recorded_stream(epochs)
    sentences = plain_pynmea2(data)
    assert ours(data) == epochs
    reps = 3 if args.quick else 7
    times = interleaved({"ours": lambda: ours(data), "plain": lambda: plain_pynmea2(data)}, reps)
    ours_ms, plain_ms = median_ms(times["ours"]), median_ms(times["plain"])
    share = driver_cpu_share(3.0 if args.quick else 10.0)
    write_results(
        "nmea_decode",
        {"vs_plain_pynmea2": plain_ms / ours_ms},
        {
            "sentences": sentences,
            "epochs": epochs,
            "ours_sentences_per_s": round(sentences / (ours_ms / 1000)),
            "plain_sentences_per_s": round(sentences / (plain_ms / 1000)),
            "ours_ms_median": round(ours_ms, 1),
            "plain_pynmea2_ms_median": round(plain_ms, 1),
            "driver_cpu_share_at_5hz": round(share, 4),
        },
        {
            "vs_plain_pynmea2": "splitlines + pynmea2.parse(check=True) per line, same bytes, "
            "interleaved repetitions (ours also frames bytes, counts, and assembles epochs)"
        },
    )


if __name__ == "__main__":
    main()
