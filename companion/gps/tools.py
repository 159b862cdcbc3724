"""`skycourier gps replay` and `skycourier gps monitor`: the driver's decode, for people.

`replay` decodes a recorded receiver log (raw NMEA/UBX bytes; gpsd-style `#` comment lines
at the top are skipped) and prints one JSON object per epoch, with gpsd's TPV field meanings
(`mode` 0 none/unknown, 2 2-D, 3 3-D). `monitor` runs the driver on a live port and prints a
line a second with the fix, the satellites and the error counters, like a small gpsmon.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from companion.gps.driver import GpsDriver, GpsStatus
from companion.gps.epoch import EpochAssembler
from companion.gps.fix import MODE_NO_FIX, GpsFix
from companion.gps.stream import NmeaUbxStream
from companion.gps.ubx_config import UbxConfigurator

_CHUNK = 4096


def fix_record(fix: GpsFix) -> dict:
    """The JSON object `replay` prints for one epoch."""
    return {
        "time": None if fix.time is None else fix.time.isoformat().replace("+00:00", "Z"),
        # gpsd counts "no fix" as mode 1 and unknown as 0; "none" here means either.
        "mode": 0 if fix.mode <= MODE_NO_FIX else fix.mode,
        "lat": fix.lat,
        "lon": fix.lon,
        "alt_msl": fix.alt_msl_m,
        "geoid_sep": fix.geoid_sep_m,
        "speed_mps": fix.speed_mps,
        "course_deg": fix.course_deg,
        "sats_used": fix.sats_used,
        "hdop": fix.hdop,
        "valid": fix.valid,
    }


def _without_header(data: bytes) -> bytes:
    """Drop the `#` comment lines that open gpsd's regression logs."""
    while data.startswith(b"#"):
        end = data.find(b"\n")
        data = b"" if end < 0 else data[end + 1 :]
    return data


def decode_log(data: bytes) -> Iterator[GpsFix]:
    """Every epoch in a recorded log, decoded as the driver decodes a live port."""
    stream, assembler = NmeaUbxStream(), EpochAssembler()
    data = _without_header(data)
    for start in range(0, len(data), _CHUNK):
        yield from assembler.decode(stream, data[start : start + _CHUNK], 0.0)[0]
    yield from assembler.flush()


def replay(path: Path, out: TextIO = sys.stdout) -> int:
    """Print one JSON line per epoch of the log at `path`; returns the exit status."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        print(f"skycourier gps replay: {path}: {exc.strerror}", file=sys.stderr)
        return 2
    for fix in decode_log(data):
        out.write(json.dumps(fix_record(fix)) + "\n")
    return 0


def monitor(
    port: str,
    baud: int,
    configure: bool,
    seconds: float | None = None,
    *,
    save: bool = False,
    eeprom: bool = False,
    out: TextIO = sys.stdout,
) -> int:
    """Show the live fix on `port` once a second until interrupted (or `seconds` pass).

    Every status change is printed as it comes; with `configure`, the `configured` one says
    on which port and at what rate the receiver was set up, and whether the configuration
    was saved, and where (`save`: battery-backed RAM, and the board's EEPROM with `eeprom`),
    or lasts only until the receiver loses power.
    """
    latest: dict[str, object] = {}
    lock = threading.Lock()

    def publish(item: object) -> None:
        with lock:
            if isinstance(item, GpsFix):
                latest["fix"] = item
            elif isinstance(item, GpsStatus):
                print(f"[{item.state}] {item.detail}", file=out, flush=True)

    def make(current: int) -> UbxConfigurator:
        return UbxConfigurator(current_baud=current, save=save, eeprom=eeprom)

    end = None if seconds is None else time.monotonic() + seconds
    with GpsDriver(port, publish, baud=baud, configurator=make if configure else None) as driver:
        try:
            while end is None or time.monotonic() < end:
                time.sleep(1.0)
                with lock:
                    fix = latest.get("fix")
                print(_status_line(fix, driver), file=out, flush=True)
        except KeyboardInterrupt:
            pass
    return 0


def _status_line(fix: object, driver: GpsDriver) -> str:
    s = driver.stats
    counters = (
        f"sentences {s.sentences} ubx {s.ubx_frames} checksum-errors {s.checksum} "
        f"garbage {s.garbage} overlong {s.overlong}"
    )
    result = driver.config_result
    if result is not None:
        saved = " and ".join(result.saved_to) if result.saved_to else "nowhere (until power-off)"
        counters += f" | config saved to {saved}"
    if not isinstance(fix, GpsFix):
        return f"no epoch yet | {counters}"
    used = sum(1 for sat in fix.satellites if sat.used)
    where = "no position" if fix.lat is None else f"{fix.lat:.7f} {fix.lon:.7f}"
    # u-blox prints empty times before its first fix: no time is not an error here.
    when = "--:--:--" if fix.time is None else f"{fix.time:%H:%M:%S}"
    validity = "valid" if fix.valid else "DEAD-RECKONING" if fix.dead_reckoning else "INVALID"
    return (
        f"{when} mode {fix.mode} {validity} {where} "
        f"alt {fix.alt_msl_m} m hdop {fix.hdop} sats {used}/{len(fix.satellites)} | {counters}"
    )
