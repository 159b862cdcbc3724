"""The companion's own GPS fix, as published on the bus (DESIGN.md, "One bus, typed messages").

One `GpsFix` is one navigation epoch of the receiver: the RMC, GGA, GSA, GSV, VTG, GLL and
ZDA sentences it emits for the same UTC time, merged by `epoch.EpochAssembler`. Fields a
receiver did not send in that epoch are None rather than a stale value from an earlier one,
so a consumer can never mistake an old altitude for a current one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

# Fix mode, numbered as gpsd's TPV "mode" (gpsd_json(5)); for NMEA it comes from GSA field 2
# (NMEA 0183 v4.10, GSA: 1 = fix not available, 2 = 2-D, 3 = 3-D).
MODE_UNKNOWN = 0
MODE_NO_FIX = 1
MODE_2D = 2
MODE_3D = 3

# GGA field 6, "GPS quality indicator" (NMEA 0183 v4.10, GGA; u-blox NEO-6 protocol spec,
# "NMEA Protocol Configuration", fix flags table).
QUALITY_INVALID = 0
QUALITY_GPS = 1
QUALITY_DGPS = 2
QUALITY_PPS = 3
QUALITY_RTK = 4
QUALITY_FLOAT_RTK = 5
QUALITY_DEAD_RECKONING = 6
QUALITY_MANUAL = 7
QUALITY_SIMULATOR = 8


class Satellite(NamedTuple):
    """One satellite in view (GSV), `used` when a GSA of the same epoch lists its PRN.

    `snr_db` is None when the receiver is not tracking it (empty SNR field, NMEA 0183 GSV).
    A named tuple rather than a dataclass: as immutable, and a dozen are built per epoch, at
    a third of a frozen dataclass's cost.
    """

    prn: int
    elevation_deg: int | None
    azimuth_deg: int | None
    snr_db: int | None
    used: bool


@dataclass(frozen=True)
class GpsFix:
    """One epoch of the receiver's output.

    `valid` is True only for a real position fix: RMC status A (if RMC was sent), GGA
    quality > 0 (if GGA was sent), GSA mode 2 or 3 (if GSA was sent), and a latitude and
    longitude present. An RMC status V, GGA quality 0 or GSA mode 1 makes it False whatever
    the other sentences say, as does a GLL status V.

    Only a measured fix is valid: a dead-reckoning estimate (GGA quality 6, mode indicator
    E; `dead_reckoning` says so), manual input or simulator output keeps its position but is
    never valid, nor is an epoch that repeats the time of the one before it.

    `received_at` is the monotonic clock reading (`time.monotonic()` in the daemon) of the
    sentence that completed the epoch; `age_s(now)` measures from it, never from the
    receiver's UTC time, so a receiver clock error cannot make a fix look fresh.
    """

    time: datetime | None
    lat: float | None
    lon: float | None
    alt_msl_m: float | None
    geoid_sep_m: float | None
    speed_mps: float | None
    course_deg: float | None
    mode: int
    quality: int | None
    sats_used: int | None
    pdop: float | None
    hdop: float | None
    vdop: float | None
    satellites: Sequence[Satellite]  # `epoch.GsvSatellites`: decoded on first use
    valid: bool
    source: str
    received_at: float
    dead_reckoning: bool = False

    def age_s(self, now: float) -> float:
        """Seconds since the epoch was received, on the same monotonic clock as `now`."""
        return now - self.received_at
