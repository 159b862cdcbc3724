"""Epoch assembly: the NMEA sentences of one navigation cycle become one `GpsFix`.

A receiver reports each navigation solution as a burst of sentences (u-blox NEO-6 default:
RMC, VTG, GGA, GSA, GSV..., GLL; ZDA when enabled). Only some carry the UTC time of the
solution (GGA, RMC, GLL, ZDA); GSA, GSV and VTG carry none and belong to the cycle in
progress. Like gpsd (gpsd/driver_nmea0183.c, "cycle end" detection), an epoch ends:

1. when a timed sentence carries a different time of day than the epoch's (always works,
   but the fix then comes out one sentence late: at the start of the next cycle); or
2. at once, on the sentence learned to end the cycle: when rule 1 closes two epochs in a
   row whose last sentence was the same timed one (e.g. GLL or ZDA, which u-blox sends once
   per cycle, last), that talker and type is remembered, and from then on the epoch is
   closed as soon as it arrives. Two in a row, so that one cycle whose last sentence was
   lost to a checksum error does not teach a wrong end. Untimed types (GSA, GSV, VTG) are
   never learned, because they repeat within a cycle (one GSA per constellation, several
   GSV parts). If a timed sentence with the time of the epoch just closed arrives after all
   (the receiver's output set changed), the learned end is forgotten and that sentence is
   dropped, counted in `late_sentences`.

Until a cycle end is learned, untimed sentences that follow an epoch's last timed sentence
are ambiguous: they may open the next cycle (as GSA does when only GSA and GLL are enabled).
They are merged into the open epoch, and a "no fix" among them (GSA mode 1) also marks the
next epoch, so the ambiguity can only ever cost a valid fix, never make an invalid one: with
an output set that ends in an untimed sentence (e.g. RMC, GGA, GSA, GSV without GLL), the
first epoch with a fix after one without is reported invalid too. With u-blox's default set,
which ends in GLL, nothing is ambiguous: each cycle's last sentence is timed.

A timed sentence whose time field is malformed is dropped (counted in `field_errors`); one
whose time is empty (u-blox before its first fix) joins the epoch in progress.

`flush()` closes the open epoch (end of a log, or silence detected by the serial adapter).

The date comes from RMC or ZDA; an epoch without one (GGA-only output) takes the last date
seen, moved on a day when the time of day wraps past midnight (a time before 01:00 after
one after 23:00). Until any date is known, `GpsFix.time` is None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone

from companion.gps.fix import (
    MODE_2D,
    MODE_3D,
    MODE_NO_FIX,
    MODE_UNKNOWN,
    QUALITY_INVALID,
    GpsFix,
    Satellite,
)
from companion.gps.stream import Sentence

KNOT_MPS = 1852.0 / 3600.0
_TIMED = frozenset({"GGA", "RMC", "GLL", "ZDA"})
# Fields each handler reads by index (one past the highest); shorter sentences are padded.
# Distinct GSV satellite records remembered (a sky has at most a few dozen satellites).
_SATELLITE_CACHE_SIZE = 512
_WIDTH = {"GGA": 11, "RMC": 12, "GLL": 7, "ZDA": 4, "GSA": 17, "GSV": 3, "VTG": 9}


def _float(value: str) -> float | None:
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if result == result and abs(result) != float("inf") else None


def _int(value: str) -> int | None:
    """An unsigned integer field (NMEA 0183 has no signed ones among those we read)."""
    return int(value) if value.isdigit() else None


def _tod(value: str) -> time | None:
    """hhmmss[.ss] (NMEA 0183 §6.3, time field) as a UTC time of day; None if malformed."""
    if len(value) < 6 or not value[:6].isdigit():
        return None
    hh, mm, ss = int(value[0:2]), int(value[2:4]), int(value[4:6])
    frac = value[6:]
    micro = 0
    if frac:
        if frac[0] != "." or not frac[1:].isdigit():
            return None
        micro = round(float("0" + frac) * 1e6)
    if hh > 23 or mm > 59 or ss > 60 or micro >= 1_000_000:
        return None
    ss = min(ss, 59)  # a leap second is folded onto :59, datetime has no :60
    return time(hh, mm, ss, micro, tzinfo=timezone.utc)


def _coord(value: str, hemi: str, pos: str, neg: str, limit: float) -> float | None:
    """(d)ddmm.mmmm plus hemisphere letter (NMEA 0183 §6.3) as signed degrees."""
    dot = value.find(".")
    head = value if dot < 0 else value[:dot]
    if len(head) < 3 or not head.isdigit() or hemi not in (pos, neg):
        return None
    minutes = _float(value[len(head) - 2 :])
    if minutes is None or not 0 <= minutes < 60:
        return None
    degrees = int(head[:-2]) + minutes / 60.0
    if degrees > limit:
        return None
    return -degrees if hemi == neg else degrees


@dataclass(slots=True)
class _Epoch:
    tod: time | None = None
    date: date | None = None
    talker: str = ""
    lat: float | None = None
    lon: float | None = None
    alt: float | None = None
    geoid: float | None = None
    speed: float | None = None
    course: float | None = None
    rmc_speed: bool = False
    quality: int | None = None
    sats_used: int | None = None
    gsa_mode: int | None = None
    pdop: float | None = None
    hdop: float | None = None
    vdop: float | None = None
    used_prns: set[int] = field(default_factory=set)
    satellites: list[tuple[Satellite, Satellite]] = field(default_factory=list)  # unused, used
    rmc_status: str | None = None
    gll_status: str | None = None
    no_fix: bool = False  # some sentence said "no fix" (RMC V, GGA 0, GSA 1, GLL V, mode N)
    trailing_no_fix: bool = False  # an untimed "no fix" (GSA 1) after the last timed sentence
    # Position sources as (talker, lat, N/S, lon, E/W) text, best first; see `_position`.
    positions: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    count: int = 0
    received_at: float = 0.0


class EpochAssembler:
    """Sentence events in, one `GpsFix` per navigation epoch out (see the module doc)."""

    def __init__(self) -> None:
        self._epoch = _Epoch()
        self._last_key: str | None = None  # talker+type of the epoch's last sentence
        self._cycle_end: str | None = None  # learned end-of-cycle talker+type
        self._end_candidate: str | None = None  # last timed key of the last rule-1 close
        self._closed_tod: time | None = None  # time of the epoch closed by rule 2
        self._date: date | None = None
        self._prev_tod: time | None = None
        # talker -> (parts in the set, last part seen, satellites so far)
        self._gsv_sets: dict[str, tuple[int, int, list[tuple[Satellite, Satellite]]]] = {}
        # GSV record (PRN, elevation, azimuth, SNR as text) -> the Satellite, unused and used.
        # A tracked satellite's record repeats for many epochs (elevation and azimuth move a
        # degree in minutes, SNR a dB in seconds), so at 5 Hz most are parsed once.
        self._satellite_cache: dict[tuple[str, ...], tuple[Satellite, Satellite]] = {}
        # The last GSA per talker and GSV part per (talker, part number), as (fields,
        # parsed): at 5 Hz most repeat the previous epoch's text exactly.
        self._last_gsa: dict[
            str,
            tuple[
                list[str],
                tuple[int | None, bool, frozenset[int], float | None, float | None, float | None],
            ],
        ] = {}
        self._last_gsv: dict[
            tuple[str, int], tuple[list[str], list[tuple[Satellite, Satellite]]]
        ] = {}
        self._date_text = ""  # last RMC date field parsed, and its value
        self._date_value: date | None = None
        self.late_sentences = 0
        self.gsv_incomplete = 0
        self.field_errors = 0
        self._tod_text = ""  # last time field parsed, and its value: parsed once per epoch
        self._tod_value: time | None = None
        self._handlers = {
            "GGA": self._gga,
            "RMC": self._rmc,
            "GLL": self._gll,
            "ZDA": self._zda,
            "GSA": self._gsa,
            "GSV": self._gsv,
            "VTG": self._vtg,
        }

    def push(self, event: Sentence, now: float) -> list[GpsFix]:
        """Add one decoded sentence received at monotonic time `now`; return closed epochs."""
        kind = event.sentence_type
        handler = self._handlers.get(kind)
        if handler is None:
            return []  # TXT carries receiver notices, not navigation data
        talker, data = event.talker, event.fields
        width = _WIDTH[kind]
        if len(data) < width:
            data = data + [""] * (width - len(data))  # missing trailing fields read as empty
        key = talker + kind
        out: list[GpsFix] = []
        if kind in _TIMED:
            raw_tod = data[4 if kind == "GLL" else 0]
            if raw_tod == self._tod_text:
                tod = self._tod_value  # the other timed sentences of the same epoch
            else:
                tod = _tod(raw_tod)
                self._tod_text, self._tod_value = raw_tod, tod
            if tod is None and raw_tod:
                # A time that does not parse cannot be placed in any epoch: drop it whole.
                self.field_errors += 1
                return []
            if tod is not None:
                if self._closed_tod is not None and tod == self._closed_tod:
                    # Rule 2 closed this epoch too early: unlearn and drop the straggler.
                    self._cycle_end = None
                    self.late_sentences += 1
                    return []
                if self._epoch.tod is not None and tod != self._epoch.tod:
                    last = self._last_key
                    if last is not None and last[2:] in _TIMED:
                        if last == self._end_candidate:
                            self._cycle_end = last
                        self._end_candidate = last
                    else:
                        self._end_candidate = None
                    # Untimed sentences since the old epoch's last timed one may belong to
                    # this new epoch instead: a "no fix" among them counts for both.
                    inherit = self._epoch.trailing_no_fix
                    out += self._close()
                    self._epoch.no_fix = inherit
                self._closed_tod = None
                self._epoch.tod = tod
            self._epoch.trailing_no_fix = False
        e = self._epoch
        e.count += 1
        e.received_at = now
        handler(e, talker, data)
        self._last_key = key
        if key == self._cycle_end and e.tod is not None:
            self._closed_tod = e.tod
            out += self._close()
        return out

    def flush(self) -> list[GpsFix]:
        """Close the epoch in progress, if it has any sentence in it."""
        return self._close()

    # -- sentences (field numbers per NMEA 0183 v4.10 and the u-blox NEO-6 spec, §20) ----

    def _position(
        self, e: _Epoch, talker: str, lat: str, ns: str, lon: str, ew: str, best: bool = False
    ) -> None:
        """Note a position source; `best` (GGA, the most precise) goes ahead of the others.

        Parsed once, at the close of the epoch (`_located`), not for each of the two or
        three sentences that repeat it.
        """
        if not lat and not lon:
            return
        if best:
            e.positions.insert(0, (talker, lat, ns, lon, ew))
        else:
            e.positions.append((talker, lat, ns, lon, ew))

    def _located(self, e: _Epoch) -> None:
        """Set the epoch's position from the first source that parses; count the others."""
        for talker, lat, ns, lon, ew in e.positions:
            la = _coord(lat, ns, "N", "S", 90.0)
            lo = _coord(lon, ew, "E", "W", 180.0)
            if la is None or lo is None:
                self.field_errors += 1
                continue
            e.lat, e.lon, e.talker = la, lo, talker
            return

    def _gga(self, e: _Epoch, talker: str, d: list[str]) -> None:
        # 0 time, 1-4 lat/N/lon/E, 5 quality, 6 sats used, 7 HDOP, 8 alt MSL, 9 M,
        # 10 geoid separation, 11 M, 12 DGPS age, 13 station id
        quality = _int(d[5])
        e.quality = quality
        if quality is None or quality == QUALITY_INVALID:
            e.no_fix = True  # quality 0 "fix not available or invalid"
        else:
            # GGA is the most precise position source; it overrides RMC/GLL.
            self._position(e, talker, d[1], d[2], d[3], d[4], best=True)
            e.alt = _float(d[8])
            e.geoid = _float(d[10])
        e.sats_used = _int(d[6])
        if e.hdop is None:
            e.hdop = _float(d[7])

    def _rmc(self, e: _Epoch, talker: str, d: list[str]) -> None:
        # 0 time, 1 status A/V, 2-5 lat/N/lon/E, 6 speed kn, 7 course true, 8 ddmmyy,
        # 9-10 magnetic variation, 11 mode indicator (NMEA 2.3+), 12 nav status (4.1)
        e.rmc_status = d[1]
        if e.rmc_status != "A" or d[11] == "N":
            e.no_fix = True  # status V "navigation receiver warning", mode N "not valid"
        else:
            self._position(e, talker, d[2], d[3], d[4], d[5])
            speed = _float(d[6])
            if speed is not None:
                e.speed, e.rmc_speed = speed * KNOT_MPS, True
            e.course = _float(d[7]) if d[7] else e.course
        ddmmyy = d[8]
        if ddmmyy == self._date_text:
            e.date = self._date_value
        elif len(ddmmyy) == 6 and ddmmyy.isdigit():
            try:
                # Two-digit year: NMEA has no century; u-blox receivers are post-2000.
                e.date = date(2000 + int(ddmmyy[4:6]), int(ddmmyy[2:4]), int(ddmmyy[0:2]))
                self._date_text, self._date_value = ddmmyy, e.date
            except ValueError:
                self.field_errors += 1
        elif ddmmyy:
            self.field_errors += 1

    def _gll(self, e: _Epoch, talker: str, d: list[str]) -> None:
        # 0-3 lat/N/lon/E, 4 time, 5 status A/V, 6 mode indicator
        e.gll_status = d[5]
        if e.gll_status != "A" or d[6] == "N":
            e.no_fix = True
        else:
            self._position(e, talker, d[0], d[1], d[2], d[3])

    def _zda(self, e: _Epoch, talker: str, d: list[str]) -> None:
        # 0 time, 1 day, 2 month, 3 year (four digits), 4-5 local zone
        day, month, year = _int(d[1]), _int(d[2]), _int(d[3])
        if day is None or month is None or year is None:
            return  # empty before the receiver knows the date
        try:
            e.date = date(year, month, day)
        except ValueError:
            self.field_errors += 1

    def _gsa(self, e: _Epoch, talker: str, d: list[str]) -> None:
        # 0 M/A, 1 mode 1/2/3, 2-13 PRNs used, 14 PDOP, 15 HDOP, 16 VDOP, 17 system (4.1)
        last = self._last_gsa.get(talker)
        if last is not None and last[0] == d:
            parsed = last[1]  # the same as the last epoch's: geometry changes in seconds
        else:
            mode = _int(d[1])
            parsed = (
                mode if mode in (MODE_NO_FIX, MODE_2D, MODE_3D) else None,
                bool(d[1]) and mode not in (MODE_NO_FIX, MODE_2D, MODE_3D),
                frozenset(map(int, filter(str.isdigit, d[2:14]))),
                _float(d[14]),
                _float(d[15]),
                _float(d[16]),
            )
            self._last_gsa[talker] = (d, parsed)
        mode, bad_mode, prns, e.pdop, e.hdop, e.vdop = parsed
        if mode is not None:
            # One GSA per constellation on multi-GNSS receivers: keep the best.
            e.gsa_mode = mode if e.gsa_mode is None else max(e.gsa_mode, mode)
            if mode == MODE_NO_FIX:
                e.no_fix = e.trailing_no_fix = True
        elif bad_mode:
            self.field_errors += 1
        e.used_prns |= prns

    def _gsv(self, e: _Epoch, talker: str, d: list[str]) -> None:
        # 0 messages in this set, 1 message number, 2 satellites in view, then up to four
        # (PRN, elevation, azimuth, SNR) groups, then a signal id (NMEA 4.1) if any.
        total, number = _int(d[0]), _int(d[1])
        if total is None or number is None or not 1 <= number <= total <= 9:
            self.field_errors += 1
            return
        last = self._last_gsv.get((talker, number))
        if last is not None and last[0] == d:
            sats = last[1]  # the same part as the last epoch's (never mutated below)
        else:
            sats = self._gsv_satellites(d)
            self._last_gsv[(talker, number)] = (d, sats)
        if number == 1:
            if talker in self._gsv_sets:
                self.gsv_incomplete += 1  # a set that never got its last part
            self._gsv_sets[talker] = (total, 1, sats)
        else:
            pending = self._gsv_sets.get(talker)
            if pending is None or pending[0] != total or pending[1] + 1 != number:
                self.gsv_incomplete += 1  # a part missed (checksum error) or out of order
                self._gsv_sets.pop(talker, None)
                return
            self._gsv_sets[talker] = (total, number, pending[2] + sats)
        if number == total:
            e.satellites.extend(self._gsv_sets.pop(talker)[2])

    def _gsv_satellites(self, d: list[str]) -> list[tuple[Satellite, Satellite]]:
        """The (unused, used) Satellite pairs of one GSV part's records."""
        groups = d[3:]
        if len(groups) % 4 == 1:
            groups = groups[:-1]  # NMEA 4.1 signal id
        cache = self._satellite_cache
        sats = []
        # Four at a time from one iterator; zip stops before an incomplete trailing group.
        fields = iter(groups)
        for record in zip(fields, fields, fields, fields, strict=False):
            pair = cache.get(record)
            if pair is None:
                prn = _int(record[0])
                if prn is None:
                    continue
                elevation, azimuth, snr = _int(record[1]), _int(record[2]), _int(record[3])
                pair = (
                    Satellite(prn, elevation, azimuth, snr, False),
                    Satellite(prn, elevation, azimuth, snr, True),
                )
                if len(cache) >= _SATELLITE_CACHE_SIZE:
                    cache.clear()
                cache[record] = pair
            sats.append(pair)
        return sats

    def _vtg(self, e: _Epoch, talker: str, d: list[str]) -> None:
        # 0 course true, 1 T, 2 course magnetic, 3 M, 4 speed kn, 5 N, 6 speed km/h, 7 K,
        # 8 mode indicator. RMC's speed and course are preferred when both are sent.
        if d[8] == "N":
            return
        if not e.rmc_speed:
            kn, kmh = _float(d[4]), _float(d[6])
            if kn is not None:
                e.speed = kn * KNOT_MPS
            elif kmh is not None:
                e.speed = kmh / 3.6
        if e.course is None:
            e.course = _float(d[0])

    # -- closing -------------------------------------------------------------------------

    def _utc(self, e: _Epoch) -> datetime | None:
        if e.tod is None:
            return None
        day = e.date
        if day is None and self._date is not None:
            day = self._date
            prev = self._prev_tod
            if prev is not None and prev.hour == 23 and e.tod.hour == 0:
                day = day + timedelta(days=1)  # midnight passed since the last date
        if day is None:
            return None
        self._date, self._prev_tod = day, e.tod
        return datetime.combine(day, e.tod)

    def _close(self) -> list[GpsFix]:
        e, self._epoch = self._epoch, _Epoch()
        self._last_key = None
        if e.count == 0:
            return []
        if e.no_fix:
            mode = MODE_NO_FIX
        elif e.gsa_mode is not None:
            mode = e.gsa_mode  # gpsd takes the mode from GSA when the receiver sends it
        elif e.quality is not None:
            mode = MODE_3D if e.alt is not None else MODE_2D
        elif e.rmc_status == "A" or e.gll_status == "A":
            mode = MODE_2D
        else:
            mode = MODE_UNKNOWN
        if mode > MODE_NO_FIX:
            self._located(e)
        has_position = e.lat is not None and e.lon is not None
        if mode <= MODE_NO_FIX:
            # A no-fix epoch carries no position, whatever stale digits a receiver left in.
            e.lat = e.lon = e.alt = e.geoid = e.speed = e.course = None
            has_position = False
        used = e.used_prns
        satellites = tuple(pair[pair[0].prn in used] for pair in e.satellites)
        sats_used = e.sats_used if e.sats_used is not None else (len(used) if used else None)
        return [
            GpsFix(
                time=self._utc(e),
                lat=e.lat,
                lon=e.lon,
                alt_msl_m=e.alt if mode == MODE_3D else None,
                geoid_sep_m=e.geoid,
                speed_mps=e.speed,
                course_deg=e.course,
                mode=mode,
                quality=e.quality,
                sats_used=sats_used,
                pdop=e.pdop,
                hdop=e.hdop,
                vdop=e.vdop,
                satellites=satellites,
                valid=mode in (MODE_2D, MODE_3D) and has_position,
                source=e.talker,
                received_at=e.received_at,
            )
        ]
