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
   dropped, counted in `late_sentences`;
3. when a timed sentence arrives whose talker and type the epoch already holds: each of
   GGA, RMC, GLL and ZDA comes once per cycle and talker, so a second one starts the next
   cycle even when the time does not tell (u-blox sends empty times before its first fix,
   and a stuck receiver repeats one). Such a sentence with the time of an epoch that rule 2
   closed is the next cycle too, not a straggler;
4. and, whatever else, once it holds `MAX_EPOCH_SENTENCES` sentences (counted in
   `overfull_epochs`): a flood of untimed ones can never grow it further.

What the assembler holds is bounded (`held()`): at most `MAX_EPOCH_SENTENCES` sentences in
the open epoch, so as many positions, and as many GSV parts plus the 8 of a set that began
in the epoch before (each a sentence's text, decoded into at most 4 satellites: NMEA 0183
GSV carries up to four; more are counted as field errors and left out); and at most one
pending GSV set per talker, of at most 9 parts.

Satellites are decoded from the GSV text when a consumer first reads `GpsFix.satellites`
(`GsvSatellites`), as pynmea2 converts a field when its attribute is read: most consumers
(the integrity monitor, telemetry) never do, and at 5 Hz the decoding would otherwise be a
quarter of the decoder's time.

Until a cycle end is learned, untimed sentences that follow an epoch's last timed sentence
are ambiguous: they may open the next cycle (as GSA does when only GSA and GLL are enabled).
They are merged into the open epoch, and a "no fix" among them (GSA mode 1) also marks the
next epoch, so the ambiguity can only ever cost a valid fix, never make an invalid one: with
an output set that ends in an untimed sentence (e.g. RMC, GGA, GSA, GSV without GLL), the
first epoch with a fix after one without is reported invalid too. With u-blox's default set,
which ends in GLL, nothing is ambiguous: each cycle's last sentence is timed.

A timed sentence whose time field is malformed is dropped (counted in `field_errors`); one
whose time is empty (u-blox before its first fix) joins the epoch in progress, unless rule 3
says it starts the next.

A fix is valid only when it is a measured one (fail safe): a dead-reckoning estimate (GGA
quality 6, RMC/GLL mode indicator E), manual input (quality 7, mode M) or a simulator
(quality 8, mode S) keeps its position for display but is never valid, and neither is an
epoch that repeats the time of the one before it (a stuck receiver's stale solution).
Fields that would overflow (a year past 9999, a midnight rollover past 9999-12-31) are
field errors, never exceptions: `push` and `decode` raise nothing on any input the stream
passes on (tests/fuzz_gps.py holds them to it).

`flush()` closes the open epoch (end of a log, or silence detected by the serial adapter).

The date comes from RMC or ZDA; an epoch without one (GGA-only output) takes the last date
seen, moved on a day when the time of day wraps past midnight (a time before 01:00 after
one after 23:00). Until any date is known, `GpsFix.time` is None.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import overload

from companion.gps.fix import (
    MODE_2D,
    MODE_3D,
    MODE_NO_FIX,
    MODE_UNKNOWN,
    QUALITY_DEAD_RECKONING,
    QUALITY_INVALID,
    GpsFix,
    Satellite,
)
from companion.gps.stream import Event, NmeaUbxStream, Sentence

KNOT_MPS = 1852.0 / 3600.0
#: Most sentences one epoch holds (rule 4 in the module docstring). A multi-GNSS cycle with
#: every sentence type and full GSV sets of five constellations stays under 60.
MAX_EPOCH_SENTENCES = 128
#: Satellite records one GSV part carries at most (NMEA 0183 GSV: up to four): with the
#: three count fields and an NMEA 4.1 signal id, at most 19 commas.
_GSV_RECORDS = 4
_GSV_MAX_COMMAS = 3 + 4 * _GSV_RECORDS
#: GGA quality values of a measured fix (NMEA 0183 v4.10 GGA; u-blox NEO-6 spec): GPS,
#: DGPS, PPS, RTK, float RTK. 0 is no fix; 6 dead reckoning, 7 manual input, 8 simulator.
_MEASURED_QUALITY = frozenset({1, 2, 3, 4, 5})
#: NMEA 2.3+ mode indicators (RMC field 12, GLL field 7, VTG field 9) that are not a
#: measured fix: N not valid, E estimated (dead reckoning), M manual input, S simulator.
_UNMEASURED_MODES = frozenset({"N", "E", "M", "S"})


def _float(value: str) -> float | None:
    """A number field; None when empty or not a finite number ("nan" and "inf" parse, and
    are no measurement: x - x is 0 only for a finite x)."""
    try:
        result = float(value)
    except ValueError:
        return None
    return result if result - result == 0.0 else None


def _int(value: str) -> int | None:
    """An unsigned integer field (NMEA 0183 has no signed ones among those we read); None
    when empty or not decimal digits. `isdecimal()` admits exactly what `int()` takes, and a
    field is at most MAX_SENTENCE characters, far inside `int()`'s digit limit; where a value
    meets a range (a date, a time), the range is checked there."""
    return int(value) if value.isdecimal() else None


#: The start of a GSV part as receivers print it, "total,number," one digit each, to the
#: pair: a dict lookup instead of a split and two conversions on every part.
_GSV_HEADS = {f"{t},{n},": (t, n) for t in range(1, 10) for n in range(1, t + 1)}


#: A UTC time of day as (hours, minutes, seconds, microseconds): compared and ordered as
#: a time, made without building a `datetime.time` for every epoch.
TimeOfDay = tuple[int, int, int, int]
#: Microseconds per unit of the n-th fractional digit of a time field, for up to 6 digits.
_FRACTION_SCALE = (0, 100_000, 10_000, 1_000, 100, 10, 1)


def _tod(value: str) -> TimeOfDay | None:
    """hhmmss[.ss] (NMEA 0183 §6.3, time field) as a UTC time of day; None if malformed."""
    head = value[:6]
    if len(head) < 6 or not head.isdecimal():
        return None
    hhmmss = int(head)
    hh, mmss = divmod(hhmmss, 10000)
    mm, ss = divmod(mmss, 100)
    micro = 0
    if len(value) > 6:
        digits = value[7:]
        if value[6] != "." or not (digits.isdecimal() or not digits):
            return None
        if digits:
            # Beyond microseconds only rounding is left: keep six digits.
            micro = int(digits[:6]) * _FRACTION_SCALE[min(len(digits), 6)]
    if hh > 23 or mm > 59 or ss > 60:
        return None
    return (hh, mm, min(ss, 59), micro)  # a leap second is folded onto :59 (no :60 in UTC)


def _coord(value: str, hemi: str, pos: str, neg: str, limit: float) -> float | None:
    """(d)ddmm.mmmm plus hemisphere letter (NMEA 0183 §6.3) as signed degrees."""
    dot = value.find(".")
    head = value if dot < 0 else value[:dot]
    if len(head) < 3 or not head.isdecimal() or hemi not in (pos, neg):
        return None
    try:
        # Starts with the two minute digits: never "nan" or "inf".
        minutes = float(value[len(head) - 2 :])
    except ValueError:
        return None
    if not minutes < 60:
        return None
    degrees = int(head[:-2]) + minutes / 60.0
    if degrees > limit:
        return None
    return -degrees if hemi == neg else degrees


class GsvSatellites(Sequence[Satellite]):
    """The satellites of one epoch, in the order its GSV sets listed them, each `used` when
    the epoch's GSA listed its PRN; decoded from the GSV sentences' text on first use.

    Immutable like the `GpsFix` that holds it: equal to any sequence of the same
    satellites (a tuple included), and hashable. A record without a PRN is skipped; a
    field that is not a number reads as None (SNR is empty for a satellite not tracked).
    """

    __slots__ = ("_decoded", "_parts", "_used")

    def __init__(self, parts: tuple[str, ...], used: frozenset[int]) -> None:
        self._parts = parts  # the fields text of each GSV part, in order
        self._used = used
        self._decoded: tuple[Satellite, ...] | None = None

    def _satellites(self) -> tuple[Satellite, ...]:
        if self._decoded is None:
            sats = []
            for text in self._parts:
                groups = text.split(",")[3 : 3 + 4 * _GSV_RECORDS]
                for i in range(0, len(groups) - 3, 4):
                    prn, elevation, azimuth, snr = groups[i : i + 4]
                    if prn.isdecimal():
                        number = int(prn)
                        sats.append(
                            Satellite(
                                number,
                                int(elevation) if elevation.isdecimal() else None,
                                int(azimuth) if azimuth.isdecimal() else None,
                                int(snr) if snr.isdecimal() else None,
                                number in self._used,
                            )
                        )
            self._decoded = tuple(sats)  # the same every time: a race costs a second decode
        return self._decoded

    def __len__(self) -> int:
        return len(self._satellites())

    @overload
    def __getitem__(self, index: int) -> Satellite: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[Satellite, ...]: ...

    def __getitem__(self, index: int | slice) -> Satellite | tuple[Satellite, ...]:
        return self._satellites()[index]

    def __iter__(self) -> Iterator[Satellite]:
        return iter(self._satellites())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, GsvSatellites):
            return self._satellites() == other._satellites()
        if isinstance(other, Sequence) and not isinstance(other, str):
            return self._satellites() == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._satellites())

    def __repr__(self) -> str:
        return f"GsvSatellites({self._satellites()!r})"


@dataclass(slots=True)
class _Epoch:
    tod: TimeOfDay | None = None
    tod_text: str = ""  # the time field it was set from
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
    used_prns: frozenset[int] = frozenset()
    gsv_parts: list[str] = field(default_factory=list)  # fields text of its complete GSV sets
    rmc_status: str | None = None
    gll_status: str | None = None
    no_fix: bool = False  # some sentence said "no fix" (RMC V, GGA 0, GSA 1, GLL V, mode N)
    trailing_no_fix: bool = False  # an untimed "no fix" (GSA 1) after the last timed sentence
    # Position sources as (talker, lat, N/S, lon, E/W) text, best (GGA) first: parsed once,
    # at the close of the epoch (`_located`), not for each of the sentences that repeat it.
    positions: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    timed: set[str] = field(default_factory=set)  # talker+type of its timed sentences
    unmeasured: bool = False  # some sentence said dead reckoning, manual input or simulator
    dead_reckoning: bool = False
    count: int = 0
    received_at: float = 0.0


def _new_fix(**values: object) -> GpsFix:
    """A `GpsFix` from its field values, as its __init__ would make it, at a tenth of the
    cost: a frozen dataclass's __init__ sets each of its 18 fields through
    object.__setattr__ (2 µs an epoch, a fifth of the decoder's whole budget per epoch at 5 Hz
    on a Pi). GpsFix has no __post_init__, so nothing is skipped; tests compare the two."""
    fix = object.__new__(GpsFix)
    fix.__dict__.update(values)
    return fix


class EpochAssembler:
    """Sentence events in, one `GpsFix` per navigation epoch out (see the module doc)."""

    def __init__(self) -> None:
        self._epoch = _Epoch()
        self._last_key: str | None = None  # talker+type of the epoch's last sentence if timed
        self._cycle_end: str | None = None  # learned end-of-cycle talker+type
        self._end_candidate: str | None = None  # last timed key of the last rule-1 close
        self._closed_tod: TimeOfDay | None = None  # time of the epoch closed by rule 2
        self._closed_keys: set[str] = set()  # and its timed sentences
        self._last_time: tuple[date | None, TimeOfDay | None] = (None, None)  # the last epoch's
        self._date: date | None = None
        self._prev_tod: TimeOfDay | None = None
        # talker -> (parts in the set, the text of those received so far)
        self._gsv_sets: dict[str, tuple[int, list[str]]] = {}
        # The last GSA per talker, as (fields text, parsed): at 5 Hz most repeat the
        # previous epoch's text exactly.
        self._last_gsa: dict[
            str,
            tuple[
                str,
                tuple[int | None, bool, frozenset[int], float | None, float | None, float | None],
            ],
        ] = {}
        self._date_text = ""  # last RMC date field parsed, and its value
        self._date_value: date | None = None
        self.late_sentences = 0
        self.overfull_epochs = 0
        self.gsv_incomplete = 0
        self.field_errors = 0
        self._tod_text = ""  # last time field parsed, and its value: parsed once per epoch
        self._tod_value: TimeOfDay | None = None
        self._now = 0.0  # when the sentences being taken were received
        self._out: list[GpsFix] = []  # where the epochs they close go
        # Timed types -> (handler of the split fields, how many fields it reads by index
        # (shorter sentences are padded), index of the time field). Untimed types ->
        # handler of the fields text, which splits it only when it is not a repeat.
        self._timed: dict[str, tuple[Callable[[_Epoch, str, list[str]], None], int, int]] = {
            "GGA": (self._gga, 11, 0),
            "RMC": (self._rmc, 12, 0),
            "GLL": (self._gll, 7, 4),
            "ZDA": (self._zda, 4, 0),
        }
        self._untimed: dict[str, Callable[[_Epoch, str, str], None]] = {
            "GSA": self._gsa,
            "GSV": self._gsv,
            "VTG": self._vtg,
        }

    def push(self, event: Sentence, now: float) -> list[GpsFix]:
        """Add one sentence from `NmeaUbxStream` (printable ASCII fields, each shorter than
        MAX_SENTENCE) received at monotonic time `now`; return the epochs it closed."""
        self._now = now
        self._out = out = []
        self._take([event.raw.decode("latin-1")])
        return out

    def decode(
        self, stream: NmeaUbxStream, data: bytes, now: float
    ) -> tuple[list[GpsFix], list[Event]]:
        """Feed `data`, received at `now`, through `stream` into this assembler: the epochs
        it closed, and the stream's other events (UBX frames, rejects). The same as `push`
        for each `Sentence` of `stream.feed(data)`, without building them (see
        `NmeaUbxStream.feed`): the driver's path."""
        self._now = now
        self._out = out = []
        events = stream.feed(data, self._take)
        return out, events

    def _take(self, lines: list[str]) -> None:
        """Verified sentences as whole lines, "$" to the checksum digits: for each, the
        epoch rules, then its handler. Closed epochs go to `self._out`; each sentence is
        stamped `self._now`. One loop over a run of lines, the untimed types handled inline:
        at 5 Hz this is the decoder's innermost loop."""
        timed = self._timed
        untimed = self._untimed
        now = self._now
        for line in lines:
            kind = line[3:6]
            spec = timed.get(kind)
            if spec is not None:
                self._timed_line(spec, line)
                continue
            handler = untimed.get(kind)
            if handler is None:
                continue  # TXT carries receiver notices, not navigation data
            e = self._epoch
            if e.count >= MAX_EPOCH_SENTENCES:
                e = self._overfull()
            e.count += 1
            e.received_at = now
            handler(e, line[1:3], line[7:-3])
            self._last_key = None  # an untimed sentence: no cycle end to learn from it

    def _timed_line(
        self, spec: tuple[Callable[[_Epoch, str, list[str]], None], int, int], line: str
    ) -> None:
        handler, width, tod_at = spec
        key = line[1:6]
        e = self._epoch
        data = line[7:-3].split(",")
        if len(data) < width:
            data += [""] * (width - len(data))  # missing trailing fields read as empty
        raw_tod = data[tod_at]
        if raw_tod == e.tod_text and raw_tod and key not in e.timed:
            # The common case, decided on the text: the epoch's own time, and a timed type
            # it has not had yet. (An epoch's time is only set with _closed_tod cleared, so
            # no straggler rule applies.)
            e.timed.add(key)
            e.trailing_no_fix = False
        else:
            if raw_tod == self._tod_text:
                tod = self._tod_value  # the other timed sentences of the same epoch
            else:
                tod = _tod(raw_tod)
                self._tod_text, self._tod_value = raw_tod, tod
            if tod is None and raw_tod:
                # A time that does not parse cannot be placed in any epoch: drop it whole.
                self.field_errors += 1
                return
            if tod is not None and tod == self._closed_tod:
                if key not in self._closed_keys:
                    # Rule 2 closed this epoch too early: unlearn and drop the straggler.
                    self._cycle_end = None
                    self.late_sentences += 1
                    return
                # Rule 3: the same sentence again with the same time is the next cycle.
                self._closed_tod = None
            if e.count and (key in e.timed or (tod is not None and e.tod not in (None, tod))):
                # Rule 1 (a new time) or rule 3 (a timed sentence seen already this epoch).
                last = self._last_key
                if last is not None:
                    if last == self._end_candidate:
                        self._cycle_end = last
                    self._end_candidate = last
                else:
                    self._end_candidate = None
                # Untimed sentences since the old epoch's last timed one may belong to
                # this new epoch instead: a "no fix" among them counts for both.
                inherit = e.trailing_no_fix
                self._out += self._close()
                e = self._epoch
                e.no_fix = inherit
            if tod is not None:
                self._closed_tod = None
                e.tod, e.tod_text = tod, raw_tod
            e.timed.add(key)
            e.trailing_no_fix = False
        if e.count >= MAX_EPOCH_SENTENCES:
            e = self._overfull()
        e.count += 1
        e.received_at = self._now
        handler(e, key[:2], data)
        self._last_key = key
        if key == self._cycle_end and e.tod is not None:
            self._closed_tod = e.tod
            self._closed_keys = e.timed
            self._out += self._close()

    def _overfull(self) -> _Epoch:
        """Rule 4: an epoch the other rules never closed (a flood of untimed sentences) is
        cut here; returns the new one."""
        self.overfull_epochs += 1
        self._out += self._close()
        return self._epoch

    def flush(self) -> list[GpsFix]:
        """Close the epoch in progress, if it has any sentence in it (end of a log, or a
        receiver gone silent: its last epoch is not held back until it speaks again)."""
        return self._close()

    def held(self) -> dict[str, int]:
        """What the assembler holds now, for the bounds in the module docstring."""
        e = self._epoch
        return {
            "sentences": e.count,
            "positions": len(e.positions),
            "gsv_parts": len(e.gsv_parts),
            "gsv_pending": sum(len(pending[1]) for pending in self._gsv_sets.values()),
        }

    # -- sentences (field numbers per NMEA 0183 v4.10 and the u-blox NEO-6 spec, §20) ----

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
            if quality not in _MEASURED_QUALITY:
                e.unmeasured = True  # 6 dead reckoning, 7 manual input, 8 simulator (or worse)
                e.dead_reckoning |= quality == QUALITY_DEAD_RECKONING
            # GGA is the most precise position source; it overrides RMC/GLL.
            if d[1] or d[3]:
                e.positions.insert(0, (talker, d[1], d[2], d[3], d[4]))
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
            if d[11] in _UNMEASURED_MODES:
                self._unmeasured(e, d[11])
            if d[2] or d[4]:
                e.positions.append((talker, d[2], d[3], d[4], d[5]))
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
            if d[6] in _UNMEASURED_MODES:
                self._unmeasured(e, d[6])
            if d[0] or d[2]:
                e.positions.append((talker, d[0], d[1], d[2], d[3]))

    def _unmeasured(self, e: _Epoch, mode: str) -> None:
        """Note an NMEA 2.3+ mode indicator that is not a measured fix (see module doc)."""
        e.unmeasured = True
        e.dead_reckoning |= mode == "E"

    def _zda(self, e: _Epoch, talker: str, d: list[str]) -> None:
        # 0 time, 1 day, 2 month, 3 year (four digits), 4-5 local zone
        day, month, year = _int(d[1]), _int(d[2]), _int(d[3])
        if day is None or month is None or year is None:
            if d[1] or d[2] or d[3]:
                self.field_errors += 1  # not empty (before the receiver knows the date): bad
            return
        try:
            e.date = date(year, month, day)
        except (ValueError, OverflowError):
            self.field_errors += 1

    def _gsa(self, e: _Epoch, talker: str, text: str) -> None:
        # 0 M/A, 1 mode 1/2/3, 2-13 PRNs used, 14 PDOP, 15 HDOP, 16 VDOP, 17 system (4.1)
        last = self._last_gsa.get(talker)
        if last is not None and last[0] == text:
            parsed = last[1]  # the same as the last epoch's: geometry changes in seconds
        else:
            d = text.split(",")
            if len(d) < 17:
                d += [""] * (17 - len(d))
            mode = _int(d[1])
            parsed = (
                mode if mode in (MODE_NO_FIX, MODE_2D, MODE_3D) else None,
                bool(d[1]) and mode not in (MODE_NO_FIX, MODE_2D, MODE_3D),
                frozenset(map(int, filter(str.isdigit, d[2:14]))),
                _float(d[14]),
                _float(d[15]),
                _float(d[16]),
            )
            self._last_gsa[talker] = (text, parsed)
        mode, bad_mode, prns, e.pdop, e.hdop, e.vdop = parsed
        if mode is not None:
            # One GSA per constellation on multi-GNSS receivers: keep the best.
            e.gsa_mode = mode if e.gsa_mode is None else max(e.gsa_mode, mode)
            if mode == MODE_NO_FIX:
                e.no_fix = e.trailing_no_fix = True
        elif bad_mode:
            self.field_errors += 1
        e.used_prns = e.used_prns | prns if e.used_prns else prns

    def _gsv(self, e: _Epoch, talker: str, text: str) -> None:
        # 0 messages in this set, 1 message number, 2 satellites in view, then up to four
        # (PRN, elevation, azimuth, SNR) groups, then a signal id (NMEA 4.1) if any.
        if text.count(",") > _GSV_MAX_COMMAS:
            self.field_errors += 1  # more records than a GSV part carries: the four are kept
        part = _GSV_HEADS.get(text[:4])
        if part is None:
            d = text.split(",")  # zero-padded counts, or malformed
            total = _int(d[0])
            number = _int(d[1]) if len(d) > 1 else None
            if total is None or number is None or not 1 <= number <= total <= 9:
                self.field_errors += 1
                return
        else:
            total, number = part
        sets = self._gsv_sets
        if number == 1:
            if talker in sets:
                self.gsv_incomplete += 1  # a set that never got its last part
            pending = sets[talker] = (total, [text])
        else:
            pending = sets.get(talker)
            if pending is None or pending[0] != total or len(pending[1]) + 1 != number:
                self.gsv_incomplete += 1  # a part missed (checksum error) or out of order
                sets.pop(talker, None)
                return
            pending[1].append(text)
        if number == total:
            del sets[talker]
            e.gsv_parts += pending[1]

    def _vtg(self, e: _Epoch, talker: str, text: str) -> None:
        # 0 course true, 1 T, 2 course magnetic, 3 M, 4 speed kn, 5 N, 6 speed km/h, 7 K,
        # 8 mode indicator. RMC's speed and course are preferred when both are sent.
        d = text.split(",")
        if len(d) < 9:
            d += [""] * (9 - len(d))
        if d[8] == "N":
            return
        if d[8] in _UNMEASURED_MODES:
            self._unmeasured(e, d[8])
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
        tod = e.tod
        if tod is None:
            return None
        day = e.date
        if day is None and self._date is not None:
            day = self._date
            prev = self._prev_tod
            if prev is not None and prev[0] == 23 and tod[0] == 0:
                try:
                    day = day + timedelta(days=1)  # midnight passed since the last date
                except OverflowError:  # past 9999-12-31: no date to give
                    self.field_errors += 1
                    return None
        if day is None:
            return None
        self._date, self._prev_tod = day, tod
        hh, mm, ss, micro = tod
        return datetime(day.year, day.month, day.day, hh, mm, ss, micro, timezone.utc)

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
        sats_used = e.sats_used if e.sats_used is not None else (len(used) if used else None)
        # The same time as the epoch before: a repeated (stale) solution, not a new one.
        stamp = (e.date, e.tod)
        repeated = e.tod is not None and stamp == self._last_time
        self._last_time = stamp
        return [
            _new_fix(
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
                satellites=GsvSatellites(tuple(e.gsv_parts), used),
                valid=mode in (MODE_2D, MODE_3D)
                and has_position
                and not e.unmeasured
                and not repeated,
                source=e.talker,
                received_at=e.received_at,
                dead_reckoning=e.dead_reckoning,
            )
        ]
