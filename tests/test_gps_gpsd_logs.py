"""Recorded receiver output from gpsd's regression suite, decoded by us and compared with gpsd.

Each `X.log` in ../shared/reference/gps is raw receiver output (with `#` comment lines at the
top, and in places in between, which gpsd's test harness skips too); `X.log.chk` is gpsd's
JSON output for it. gpsd emits a TPV after every sentence that adds to the fix, so one epoch
gives several TPVs with the same time, each a little more complete; the last TPV of a time
is gpsd's view of the whole epoch, and that is what our one `GpsFix` per epoch is compared
with (time, mode, lat/lon to 1e-6 degree, altitude MSL to 0.1 m; speed and track too).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from companion.gps.epoch import EpochAssembler
from companion.gps.fix import MODE_2D, MODE_3D, MODE_NO_FIX, GpsFix
from companion.gps.stream import NmeaUbxStream, Sentence

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "gps"
LOGS = sorted(REFERENCE.glob("*.log")) if REFERENCE.is_dir() else []
SKIP = f"gpsd reference logs not found at {REFERENCE} (the ../shared checkout is absent)"


def decode(log: Path) -> tuple[list[GpsFix], NmeaUbxStream]:
    stream, assembler = NmeaUbxStream(), EpochAssembler()
    fixes = []
    for number, line in enumerate(log.read_bytes().splitlines(keepends=True)):
        if line.startswith(b"#"):
            continue
        for event in stream.feed(line):
            assert isinstance(event, Sentence), f"{log.name} line {number + 1}: {event}"
            fixes += assembler.push(event, float(number))
    return fixes + assembler.flush(), stream


def gpsd_tpvs(chk: Path) -> list[dict]:
    records = []
    for line in chk.read_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("class") == "TPV":
                records.append(record)
    return records


def last_tpv_per_time(tpvs: list[dict]) -> dict[datetime, dict]:
    by_time: dict[datetime, dict] = {}
    for tpv in tpvs:
        if "time" in tpv:
            by_time[datetime.fromisoformat(tpv["time"].replace("Z", "+00:00"))] = tpv
    return by_time


def gpsd_alt_msl(tpv: dict) -> float | None:
    # gpsd >= 3.20 writes altMSL (and altHAE); older .chk files have only "alt", which was
    # MSL altitude then. altHAE alone would need the geoid separation taken off.
    if "altMSL" in tpv:
        return tpv["altMSL"]
    if "alt" in tpv:
        return tpv["alt"]
    if "altHAE" in tpv and "geoidSep" in tpv:
        return tpv["altHAE"] - tpv["geoidSep"]
    return None


def compare(log: Path) -> tuple[int, int, list[str]]:
    """Returns (gpsd epochs with a time, how many we matched, disagreements)."""
    fixes, stream = decode(log)
    assert stream.stats.accounted(stream.pending)
    tpvs = gpsd_tpvs(log.with_name(log.name + ".chk"))
    expected = last_tpv_per_time(tpvs)
    ours = {fix.time: fix for fix in fixes if fix.time is not None}
    problems: list[str] = []
    matched = 0
    for when, tpv in expected.items():
        fix = ours.get(when)
        if fix is None:
            problems.append(f"{when}: gpsd has a fix, we have none")
            continue
        mode = tpv["mode"]
        alt = gpsd_alt_msl(tpv)
        if mode == MODE_3D and fix.mode == MODE_2D and alt is None:
            # An epoch with RMC only (the log stops, or starts, mid-cycle): gpsd keeps the
            # 3-D mode of the previous epoch's GSA, with no altitude in this TPV; we do not
            # carry modes across epochs, and without an altitude report 2-D.
            mode = MODE_2D
        errors = []
        if fix.mode != mode:
            errors.append(f"mode {fix.mode} != {mode}")
        if fix.valid != (mode in (MODE_2D, MODE_3D)):
            errors.append(f"valid {fix.valid} with mode {mode}")
        for name, ours_value in (("lat", fix.lat), ("lon", fix.lon)):
            if name in tpv and (ours_value is None or abs(ours_value - tpv[name]) > 1e-6):
                errors.append(f"{name} {ours_value} != {tpv[name]}")
        if alt is not None and (fix.alt_msl_m is None or abs(fix.alt_msl_m - alt) > 0.1):
            errors.append(f"altMSL {fix.alt_msl_m} != {alt}")
        # gpsd prints speed in m/s rounded to 3 decimals. Where the epoch has no RMC or VTG
        # of its own (ublox-lea-5h at 08:55:15, where two captures were spliced), gpsd fills
        # in a speed from elsewhere (carried over or from the position change); we report
        # None rather than a speed this epoch did not measure.
        speed = fix.speed_mps
        if "speed" in tpv and speed is not None and abs(speed - tpv["speed"]) > 6e-4:
            errors.append(f"speed {speed} != {tpv['speed']}")
        if "track" in tpv and (fix.course_deg is None or abs(fix.course_deg - tpv["track"]) > 1e-3):
            errors.append(f"track {fix.course_deg} != {tpv['track']}")
        if errors:
            problems.append(f"{when}: " + ", ".join(errors))
        else:
            matched += 1
    untimed = [tpv for tpv in tpvs if "time" not in tpv]
    if untimed:
        # gpsd (this version) leaves the time out of a TPV without a fix, so those cannot be
        # matched by time: all of them say "no fix", and so must every fix of ours then.
        assert all(tpv["mode"] <= MODE_NO_FIX for tpv in untimed)
        if not expected:
            bad = [f for f in fixes if f.valid or f.mode > MODE_NO_FIX]
            problems += [f"{f.time}: mode {f.mode} valid {f.valid}, gpsd no fix" for f in bad]
    return len(expected), matched, problems


@pytest.mark.skipif(not LOGS, reason=SKIP)
@pytest.mark.parametrize("log", LOGS or [None], ids=lambda p: getattr(p, "name", "none"))
def test_log_agrees_with_gpsd(log: Path) -> None:
    epochs, matched, problems = compare(log)
    assert not problems, "\n".join(problems)
    assert matched == epochs


@pytest.mark.skipif(not LOGS, reason=SKIP)
def test_no_fix_log_never_reports_a_valid_fix() -> None:
    log = REFERENCE / "ublox-lea-5q.log"
    if not log.exists():
        pytest.skip(f"{log} not found")
    fixes, _ = decode(log)
    assert fixes and all(not f.valid and f.mode == MODE_NO_FIX for f in fixes)
