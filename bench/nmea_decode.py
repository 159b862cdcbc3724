"""NMEA decoding: the driver's decoder vs a plain pynmea2 line loop, on the same bytes.

The stream is the NEO-6M emulator's output at 5 Hz (RMC, VTG, GGA, GSA, GSV x2-4, GLL per
epoch) for a vehicle that moves and a sky that changes, so that consecutive epochs are not
alike (a decoder that caches repeated text gets no free ride): speed, course and altitude
change every epoch; satellites rise and set, and their elevation, azimuth and SNR move, so
the satellites in view, the ones used, and the GSV parts change; the fix goes through
no-fix, 2-D and 3-D spells; one sentence in a thousand has a bad checksum. It is made once
and fed to both in the same run, interleaved, several times; the ratio reported is the
median of the runs' ratios (each run times both once, back to back).

The baseline is what most scripts do: split lines, `pynmea2.parse(line, check=True)`,
catch errors. Ours does more: byte-level framing with UBX interleaving, bounded lines,
counters that add up, and epoch assembly into `GpsFix` (the baseline assembles nothing).
Also measured: ours fed in small reads (what a 115200 baud port gives a reader that takes
what has arrived), and the CPU share of the driver thread reading a 5 Hz receiver on a pty,
from /proc (the thread's own user+system time over wall time).

    python bench/nmea_decode.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import pynmea2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import interleaved, median_ms, write_results
from companion.gps.driver import GpsDriver
from companion.gps.epoch import EpochAssembler
from companion.gps.stream import NmeaUbxStream
from sim.gps.neo6m import Faults, Neo6m, Satellite
from sim.gps.pty_runner import Neo6mPty

HOME = (-35.363261, 149.165230, 604.0)
RATE_S = 0.2
CHUNK = 4096
SMALL_READ = 96  # about what 8 ms of 115200 baud bring


def moving(t: float) -> tuple[float, float, float, float, float]:
    """A vehicle flying loops: speed 0-15 m/s, course turning, altitude up and down."""
    speed = 7.5 + 7.5 * math.sin(t / 23.0)
    course = (t * 7.0 + 40.0 * math.sin(t / 5.0)) % 360.0
    north = 300.0 * math.sin(t / 60.0)
    east = 300.0 * math.cos(t / 47.0)
    lat = HOME[0] + north / 111_320.0
    lon = HOME[1] + east / (111_320.0 * math.cos(math.radians(HOME[0])))
    return (lat, lon, HOME[2] + 40.0 * math.sin(t / 31.0), speed, course)


def changing_sky(t: float) -> tuple[Satellite, ...]:
    """24 satellites on orbits sped up tenfold: over the stream's hour about half of them
    rise or set, so the set in view and the set used change; elevations and azimuths move
    a degree every few seconds to a minute, and SNRs a dB every second or so (on top of the
    emulator's own once-a-second wander), as a receiver at 5 Hz reports them."""
    sky = []
    for prn in range(1, 25):
        elevation = round(90.0 * math.sin(t / (900.0 + 30.0 * prn) + prn * 0.7))
        if elevation <= 0:
            continue
        azimuth = round((prn * 15.0 + t * 0.02 * (1.0 + prn / 10.0)) % 360.0)
        snr = round(15.0 + 35.0 * elevation / 90.0 + 2.0 * math.sin(t / 7.0 + prn))
        sky.append(Satellite(prn, elevation, azimuth, snr, elevation > 15 and snr > 30))
    return tuple(sky[:12])


def varied_stream(epochs: int) -> bytes:
    """`epochs` epochs of the emulator's 5 Hz output for a moving vehicle and changing sky."""
    span = epochs * RATE_S
    faults = Faults(
        checksum_probability=0.001,
        cold_start_s=3.0,
        no_fix=tuple((s, s + 6.0) for s in (span * 0.2, span * 0.6)),
        two_d=tuple((s, s + 8.0) for s in (span * 0.35, span * 0.8)),
    )
    receiver = Neo6m(seed=1, meas_rate_ms=200, faults=faults, sky=changing_sky)
    return b"".join(receiver.tick(i * RATE_S, moving) for i in range(epochs))


def ours(data: bytes, chunk: int = CHUNK) -> int:
    """Decode as the driver does (`EpochAssembler.decode` over `NmeaUbxStream`); returns the
    number of epochs assembled."""
    stream, assembler = NmeaUbxStream(), EpochAssembler()
    fixes = 0
    for start in range(0, len(data), chunk):
        fixes += len(assembler.decode(stream, data[start : start + chunk], 0.0)[0])
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
    with Neo6mPty(Neo6m(meas_rate_ms=200, sky=changing_sky), moving) as runner:
        assert runner.path is not None
        with GpsDriver(runner.path, lambda _item: None) as driver:
            time.sleep(2.0)  # past the rate detection
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
    data = varied_stream(epochs)
    sentences = plain_pynmea2(data)
    assert ours(data) == ours(data, SMALL_READ) == epochs
    load_before = os.getloadavg()[0]
    reps = 3 if args.quick else 15
    times = interleaved(
        {
            "ours": lambda: ours(data),
            "plain": lambda: plain_pynmea2(data),
            "ours_small_reads": lambda: ours(data, SMALL_READ),
        },
        reps,
    )
    load_after = os.getloadavg()[0]
    ratios = [p / o for p, o in zip(times["plain"], times["ours"], strict=True)]
    small = [p / o for p, o in zip(times["plain"], times["ours_small_reads"], strict=True)]
    ours_ms, plain_ms = median_ms(times["ours"]), median_ms(times["plain"])
    share = driver_cpu_share(3.0 if args.quick else 10.0)
    write_results(
        "nmea_decode",
        {"vs_plain_pynmea2": statistics.median(ratios)},
        {
            "runs": reps,
            "run_ratios": [round(r, 3) for r in ratios],
            # Informational: in small reads the per-read cost dominates (a driver at 5 Hz
            # reads a few hundred times a second; see driver_cpu_share_at_5hz).
            "small_reads_vs_plain_pynmea2": round(statistics.median(small), 3),
            "small_reads_run_ratios": [round(r, 3) for r in small],
            "sentences": sentences,
            "epochs": epochs,
            "bytes": len(data),
            "ours_sentences_per_s": round(sentences / (ours_ms / 1000)),
            "plain_sentences_per_s": round(sentences / (plain_ms / 1000)),
            "ours_ms_median": round(ours_ms, 1),
            "ours_small_reads_ms_median": round(median_ms(times["ours_small_reads"]), 1),
            "plain_pynmea2_ms_median": round(plain_ms, 1),
            "driver_cpu_share_at_5hz": round(share, 4),
            "load_average_1min": [round(load_before, 2), round(load_after, 2)],
        },
        {
            "vs_plain_pynmea2": "splitlines + pynmea2.parse(check=True) per line, same bytes "
            f"(a moving, varied 5 Hz stream), median of {reps} interleaved runs' ratios; ours "
            f"reads {CHUNK}-byte chunks (small_reads: {SMALL_READ}), frames bytes, counts, "
            "and assembles epochs (satellites decoded on first use, as pynmea2 converts "
            "fields on attribute access)",
        },
    )


if __name__ == "__main__":
    main()
