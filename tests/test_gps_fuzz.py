"""The GPS decoder and epoch core under fuzzing: a short run of the harness in
tests/fuzz_gps.py (the long one is `python tests/fuzz_gps.py`), and the inputs that broke it
before, as regression tests: each is a byte stream written by hand from the issue's report.
"""

from __future__ import annotations

import pytest

from companion.gps.epoch import MAX_EPOCH_SENTENCES, EpochAssembler
from companion.gps.fix import GpsFix
from companion.gps.stream import DecodeError, NmeaUbxStream, nmea_checksum
from tests.fuzz_gps import MAX_GSV_PENDING, fuzz, seeds


def nmea(body: str) -> bytes:
    return b"$%s*%02X\r\n" % (body.encode(), nmea_checksum(body.encode()))


def decode(data: bytes, chunk: int = 4096) -> tuple[list[GpsFix], NmeaUbxStream, EpochAssembler]:
    """As the driver decodes; checks the bounds after every chunk."""
    stream, assembler = NmeaUbxStream(), EpochAssembler()
    fixes: list[GpsFix] = []
    for start in range(0, len(data), chunk):
        fixes += assembler.decode(stream, data[start : start + chunk], float(start))[0]
        held = assembler.held()
        assert held["sentences"] <= MAX_EPOCH_SENTENCES
        assert held["positions"] <= MAX_EPOCH_SENTENCES
        assert held["gsv_parts"] <= MAX_EPOCH_SENTENCES + 8
        assert held["gsv_pending"] <= MAX_GSV_PENDING
    return fixes + assembler.flush(), stream, assembler


def test_a_short_fuzz_run_finds_nothing() -> None:
    """1,500 mutated inputs (about 15 MB) from the gpsd logs and the spec's examples."""
    report = fuzz(1500, seed=20260601)
    assert report.failures == []
    assert report.inputs == 1500 and report.fixes > 0 and report.valid_fixes > 0
    assert report.largest["sentences"] <= MAX_EPOCH_SENTENCES


def test_the_seeds_include_the_gpsd_logs_when_they_are_there() -> None:
    pool = seeds()
    assert pool[0].startswith(b"$GPRMC")  # the spec's examples, always
    assert all(not line.startswith(b"#") for seed in pool for line in seed.splitlines())


# -- the reproducers ----------------------------------------------------------------------


def test_a_day_beyond_any_date_is_a_field_error_not_an_overflow() -> None:
    fixes, _, assembler = decode(b"$GPZDA,120000,9999999999999999999,1,1*72\n")
    assert len(fixes) == 1 and fixes[0].time is None and not fixes[0].valid
    assert assembler.field_errors == 1


def test_midnight_after_31_december_9999_is_a_field_error_not_an_overflow() -> None:
    gga = "GPGGA,{},4717.11399,N,00833.91590,E,1,08,1.01,499.6,M,48.0,M,,"
    data = nmea("GPZDA,235959,31,12,9999,00,00") + nmea(gga.format("000000"))
    data += nmea(gga.format("000001"))
    fixes, _, assembler = decode(data)
    assert [f.time.year if f.time else None for f in fixes] == [9999, None, None]
    assert assembler.field_errors >= 1


def test_empty_times_before_the_first_fix_close_an_epoch_a_cycle() -> None:
    """u-blox prints its cycles with empty times until its first fix: 1 MB of them held
    31,760 satellite entries in one epoch that never closed."""
    cycle = b"".join(
        nmea(body)
        for body in (
            "GPRMC,,V,,,,,,,,,,N",
            "GPVTG,,,,,,,,,N",
            "GPGGA,,,,,,0,00,99.99,,,,,,",
            "GPGSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99",
            "GPGSV,2,1,05,02,,,23,05,,,18,12,,,31,13,,,20",
            "GPGSV,2,2,05,21,,,27",
            "GPGLL,,,,,,V,N",
        )
    )
    data = cycle * (1_000_000 // len(cycle))
    fixes, _, assembler = decode(data)
    cycles = data.count(b"$GPRMC")
    assert len(fixes) == cycles  # one no-fix per cycle: the RMC of the next one closes it
    assert all(not f.valid and f.time is None for f in fixes)
    assert all(len(f.satellites) == 5 for f in fixes)
    assert assembler.overfull_epochs == 0


def test_a_frozen_time_is_one_stale_epoch_per_sentence() -> None:
    """A stuck receiver repeating one GGA: 100,000 of them held 100,000 positions."""
    data = nmea("GPGGA,120000.00,4717.11399,N,00833.91590,E,1,08,1.01,499.6,M,48.0,M,,")
    fixes, _, _ = decode(data * 100_000, chunk=65536)
    assert len(fixes) == 100_000
    assert fixes[0].valid and not any(f.valid for f in fixes[1:])  # the same time again


def test_untimed_sentences_alone_are_cut_at_the_bound() -> None:
    data = nmea("GPGSV,1,1,04,01,40,083,46,02,17,308,41,12,07,344,39,14,22,228,45") * 10_000
    fixes, _, assembler = decode(data)
    assert assembler.overfull_epochs == len(fixes) - 1 == 10_000 // MAX_EPOCH_SENTENCES


@pytest.mark.parametrize(
    ("data", "kind", "count"),
    [
        (b"$GPGGA,*00\n" * 1490, "checksum", 1490),  # 16 KB in one feed: 1.2 s before
        (b"$" * 65536, "truncated", 65535),  # 64 KB of `$`: 3.5 s before; the last waits
    ],
    ids=["bad-checksum GGA lines", "dollars"],
)
def test_a_flood_of_one_reject_is_one_event_with_its_count(
    data: bytes, kind: str, count: int
) -> None:
    stream = NmeaUbxStream()
    events = stream.feed(data)
    assert [(e.kind, e.count) for e in events if isinstance(e, DecodeError)] == [(kind, count)]
    assert getattr(stream.stats, kind) == count
    assert stream.stats.accounted(stream.pending) and stream.pending <= 1
