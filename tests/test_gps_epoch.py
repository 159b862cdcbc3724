"""EpochAssembler: one GpsFix per navigation cycle, never valid without a fix."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.gps.epoch import KNOT_MPS, EpochAssembler, GsvSatellites
from companion.gps.fix import MODE_2D, MODE_3D, MODE_NO_FIX, GpsFix
from companion.gps.stream import NmeaUbxStream, Sentence, nmea_checksum


def nmea(body: str) -> bytes:
    return b"$%s*%02X\r\n" % (body.encode(), nmea_checksum(body.encode()))


def cycle(
    tod: str = "092725.00",
    *,
    rmc: str = "A",
    quality: int = 1,
    gsa_mode: int = 3,
    gll: str = "A",
    talker: str = "GP",
) -> list[bytes]:
    """One u-blox NEO-6 default cycle: RMC, VTG, GGA, GSA, GSV (2 parts), GLL."""
    t = talker
    return [
        nmea(f"{t}RMC,{tod},{rmc},4717.11437,N,00833.91522,E,10.0,77.52,091202,,,A"),
        nmea(f"{t}VTG,77.52,T,,M,10.0,N,18.52,K,A"),
        nmea(f"{t}GGA,{tod},4717.11399,N,00833.91590,E,{quality},8,1.01,499.6,M,48.0,M,,0"),
        nmea(f"{t}GSA,A,{gsa_mode},23,29,07,08,09,18,26,28,,,,,1.94,1.18,1.54"),
        nmea("GPGSV,2,1,5,23,38,230,44,29,71,156,47,07,29,116,41,08,09,081,36"),
        nmea("GPGSV,2,2,5,30,05,010,"),
        nmea(f"{t}GLL,4717.11364,N,00833.91565,E,{tod},{gll},A"),
    ]


def run(
    lines: list[bytes], *, flush: bool = True, received_at: float | None = None
) -> list[GpsFix]:
    stream, assembler, fixes = NmeaUbxStream(), EpochAssembler(), []
    for i, line in enumerate(lines):
        for event in stream.feed(line):
            assert isinstance(event, Sentence), event
            fixes += assembler.push(event, float(i) if received_at is None else received_at)
    if flush:
        fixes += assembler.flush()
    return fixes


def test_full_cycle_gives_one_fix_with_every_field() -> None:
    (fix,) = run(cycle())
    assert fix.time == datetime(2002, 12, 9, 9, 27, 25, tzinfo=timezone.utc)
    assert fix.lat == pytest.approx(47 + 17.11399 / 60, abs=1e-9)  # GGA preferred
    assert fix.lon == pytest.approx(8 + 33.91590 / 60, abs=1e-9)
    assert fix.alt_msl_m == 499.6 and fix.geoid_sep_m == 48.0
    assert fix.speed_mps == pytest.approx(10.0 * KNOT_MPS)
    assert fix.course_deg == 77.52
    assert (fix.mode, fix.quality, fix.sats_used) == (MODE_3D, 1, 8)
    assert (fix.pdop, fix.hdop, fix.vdop) == (1.94, 1.18, 1.54)
    assert [s.prn for s in fix.satellites] == [23, 29, 7, 8, 30]
    assert [s.used for s in fix.satellites] == [True, True, True, True, False]
    assert fix.satellites[0].snr_db == 44 and fix.satellites[-1].snr_db is None
    assert fix.valid and fix.source == "GP"
    assert fix.age_s(10.0) == pytest.approx(10.0 - fix.received_at)


def test_epoch_closes_on_time_change_then_on_learned_cycle_end() -> None:
    lines = [line for n in range(1, 5) for line in cycle(f"00000{n}.00")]
    stream, assembler = NmeaUbxStream(), EpochAssembler()
    closed_at = []
    for i, line in enumerate(lines):
        for event in stream.feed(line):
            for fix in assembler.push(event, float(i)):
                closed_at.append((i, fix.time.second))
    # The first two cycles are closed by the next cycle's RMC (lines 7 and 14). Both ended
    # in GLL, which is then learned as the cycle's end: the next ones close on their own GLL.
    assert closed_at == [(7, 1), (14, 2), (20, 3), (27, 4)]
    assert assembler.flush() == []


def test_a_lost_cycle_end_does_not_teach_a_wrong_one() -> None:
    lines = [line for n in range(1, 7) for line in cycle(f"00000{n}.00")]
    del lines[3 * 7 + 6]  # the GLL of the fourth cycle, lost to a checksum error
    stream, assembler = NmeaUbxStream(), EpochAssembler()
    closed_by = []
    for line in lines:
        for event in stream.feed(line):
            closed_by += [(f.time.second, event.sentence_type) for f in assembler.push(event, 0)]
    assert closed_by == [(1, "RMC"), (2, "RMC"), (3, "GLL"), (4, "RMC"), (5, "GLL"), (6, "GLL")]
    assert assembler.late_sentences == 0


def test_learned_end_is_forgotten_when_the_cycle_grows() -> None:
    zda = nmea("GPZDA,000002.00,09,12,2002,00,00")
    lines = cycle("000001.00") + cycle("000002.00") + [zda] + cycle("000003.00")
    fixes = run(lines)
    assert [f.time.second for f in fixes] == [1, 2, 3]
    assert all(f.valid for f in fixes)


@pytest.mark.parametrize(
    "kwargs",
    [{"rmc": "V"}, {"quality": 0}, {"gsa_mode": 1}, {"gll": "V"}],
    ids=["RMC V", "GGA quality 0", "GSA mode 1", "GLL V"],
)
def test_any_no_fix_indicator_makes_the_fix_invalid(kwargs) -> None:
    (fix,) = run(cycle(**kwargs))
    assert not fix.valid
    assert fix.mode == MODE_NO_FIX
    assert fix.lat is None and fix.lon is None and fix.alt_msl_m is None


def test_mode_without_gsa_follows_gga_then_rmc() -> None:
    no_gsa = [line for line in cycle() if b"GSA" not in line]
    (fix,) = run(no_gsa)
    assert fix.mode == MODE_3D and fix.valid
    (fix,) = run([cycle()[0]])  # RMC only: a position but no altitude
    assert fix.mode == MODE_2D and fix.valid and fix.alt_msl_m is None


def test_gsa_2d_fix_reports_no_altitude() -> None:
    (fix,) = run(cycle(gsa_mode=2))
    assert fix.mode == MODE_2D and fix.valid and fix.alt_msl_m is None


def test_dead_reckoning_quality_is_reported_and_never_valid() -> None:
    (fix,) = run(cycle(quality=6))
    assert fix.quality == 6 and fix.dead_reckoning and not fix.valid
    assert fix.lat is not None  # the estimate is kept for display


def test_gsv_set_with_a_missing_part_gives_no_satellites() -> None:
    lines = [line for line in cycle() if b"GSV,2,1" not in line]
    assembler_lines = lines
    stream, assembler, fixes = NmeaUbxStream(), EpochAssembler(), []
    for line in assembler_lines:
        for event in stream.feed(line):
            fixes += assembler.push(event, 0.0)
    fixes += assembler.flush()
    assert fixes[0].satellites == ()
    assert assembler.gsv_incomplete == 1


def test_multi_constellation_gsv_and_gsa() -> None:
    lines = [
        nmea("GNRMC,181141.00,A,5230.88855,N,01327.85591,E,0.031,,190615,,,A"),
        nmea("GNGGA,181141.00,5230.88855,N,01327.85591,E,1,12,0.93,62.6,M,42.1,M,,"),
        nmea("GNGSA,A,3,21,13,,,,,,,,,,,1.59,0.93,1.29"),
        nmea("GNGSA,A,3,71,85,,,,,,,,,,,1.59,0.93,1.29"),
        nmea("GPGSV,1,1,02,21,36,072,31,13,08,020,37"),
        nmea("GLGSV,1,1,03,71,27,157,25,85,51,083,26,69,22,029,34"),
    ]
    (fix,) = run(lines)
    assert fix.source == "GN" and fix.valid
    assert {s.prn: s.used for s in fix.satellites} == {21: 1, 13: 1, 71: 1, 85: 1, 69: 0}


def test_date_carried_to_gga_only_epochs_and_across_midnight() -> None:
    lines = [
        nmea("GPRMC,235959.00,A,4717.11437,N,00833.91522,E,0.0,,311224,,,A"),
        nmea("GPGGA,000000.00,4717.11399,N,00833.91590,E,1,8,1.01,499.6,M,48.0,M,,"),
        nmea("GPGGA,000001.00,4717.11399,N,00833.91590,E,1,8,1.01,499.6,M,48.0,M,,"),
    ]
    times = [f.time for f in run(lines)]
    assert times == [
        datetime(2024, 12, 31, 23, 59, 59, tzinfo=timezone.utc),
        datetime(2025, 1, 1, 0, 0, 0, tzinfo=timezone.utc),
        datetime(2025, 1, 1, 0, 0, 1, tzinfo=timezone.utc),
    ]


def test_no_date_known_gives_no_time_but_keeps_the_fix() -> None:
    gga = nmea("GPGGA,092725.00,4717.11399,N,00833.91590,E,1,8,1.01,499.6,M,48.0,M,,0")
    (fix,) = run([gga])
    assert fix.time is None and fix.valid


@pytest.mark.parametrize(
    "body",
    [
        "GPGGA,1,2,3",
        "GPGGA,092725.00,47x7.11399,N,00833.91590,E,1,8,1.01,499.6,M,48.0,M,,0",
        "GPGGA,092725.00,9917.11399,N,00833.91590,E,1,8,1.01,499.6,M,48.0,M,,0",
        "GPGGA,092725.00,4717.11399,Q,00833.91590,E,1,8,1.01,499.6,M,48.0,M,,0",
        "GPRMC,250000.00,A,4717.11437,N,00833.91522,E,x,y,321302,,,A",
        "GPGSV,9,12,1",
        "GPZDA,082710.00,32,13,2002,00,00",
        "GPGSA,A,x",
    ],
)
def test_malformed_fields_never_raise_nor_make_a_valid_fix(body: str) -> None:
    fixes = run([nmea(body)])
    assert all(not f.valid for f in fixes)


# -- property: valid exactly when every sentence of the epoch reports a fix ----------------

STATUSES = st.tuples(
    st.sampled_from(["A", "V"]),
    st.sampled_from([0, 1, 2, 6]),
    st.sampled_from([1, 2, 3]),
    st.sampled_from(["A", "V"]),
)
OUTPUT_SETS = st.sets(st.sampled_from(["RMC", "VTG", "GGA", "GSA", "GSV", "GLL"]), min_size=1)


@settings(max_examples=200, deadline=None)
@given(OUTPUT_SETS, st.lists(STATUSES, min_size=1, max_size=6))
def test_fix_is_valid_only_when_no_sentence_says_otherwise(kept, epochs) -> None:
    # The receiver's output set is its configuration (CFG-MSG): the same every cycle.
    lines, expected = [], []
    for n, (rmc, quality, gsa_mode, gll) in enumerate(epochs):
        tod = f"0000{n:02d}.00"
        kwargs = {"rmc": rmc, "quality": quality, "gsa_mode": gsa_mode, "gll": gll}
        lines += [line for line in cycle(tod, **kwargs) if line[3:6].decode() in kept]
        bad = (
            ("RMC" in kept and rmc == "V")
            or ("GGA" in kept and quality in (0, 6))  # 6: dead reckoning, not measured
            or ("GSA" in kept and gsa_mode == 1)
            or ("GLL" in kept and gll == "V")
        )
        expected.append(not bad)
    fixes = run(lines)
    for fix in fixes:
        if fix.valid:
            assert fix.lat is not None and fix.mode in (MODE_2D, MODE_3D)
    if kept & {"RMC", "GGA", "GLL"}:
        assert len(fixes) == len(expected)
        # Never valid when a sentence of the epoch says "no fix".
        assert all(want or not fix.valid for fix, want in zip(fixes, expected, strict=True))
        order = [t for t in ("RMC", "VTG", "GGA", "GSA", "GSV", "GLL") if t in kept]
        timed = ("RMC", "GGA", "GLL")
        if "GSA" not in kept or (order[0] in timed and order[-1] in timed):
            # Cycles start and end with a timed sentence: every sentence is placed exactly.
            assert [f.valid for f in fixes] == expected
        # Otherwise a GSA between cycles is ambiguous (see epoch.py): it may cost a valid fix.
    else:
        assert not any(f.valid for f in fixes)  # no position sentence at all


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(OUTPUT_SETS, STATUSES), min_size=1, max_size=6))
def test_changing_output_sets_never_give_a_valid_fix_without_position(epochs) -> None:
    lines = []
    for n, (kept, (rmc, quality, gsa_mode, gll)) in enumerate(epochs):
        kwargs = {"rmc": rmc, "quality": quality, "gsa_mode": gsa_mode, "gll": gll}
        lines += [line for line in cycle(f"0000{n:02d}.00", **kwargs) if line[3:6].decode() in kept]
    for fix in run(lines):
        if fix.valid:
            assert fix.lat is not None and fix.lon is not None
            assert fix.mode in (MODE_2D, MODE_3D) and fix.quality != 0


def test_repeated_gsv_and_gsa_follow_changes_from_one_epoch_to_the_next() -> None:
    """The last GSA and GSV parts are remembered per talker; a changed one is re-read."""
    first = cycle("092725.00")
    second = [
        line.replace(b"23,38,230,44", b"23,38,230,39").replace(b"1.94,1.18", b"2.50,1.18")
        for line in cycle("092725.20")
    ]
    second = [nmea(line[1 : line.rindex(b"*")].decode()) for line in second]
    third = cycle("092725.40")
    fixes = run(first + second + third)
    snr = [{s.prn: s.snr_db for s in fix.satellites}[23] for fix in fixes]
    assert snr == [44, 39, 44]
    assert [fix.pdop for fix in fixes] == [1.94, 2.50, 1.94]
    assert all(len(fix.satellites) == 5 for fix in fixes)


def test_a_repeated_bad_gsa_mode_is_counted_every_time() -> None:
    lines = [nmea("GPGSA,A,7,23,29,,,,,,,,,,,1.94,1.18,1.54")] * 3
    stream, assembler = NmeaUbxStream(), EpochAssembler()
    for line in lines:
        for event in stream.feed(line):
            assembler.push(event, 0.0)
    assert assembler.field_errors == 3


# -- rules 3 and 4, fixes that are not measured, repeated times ---------------------------


def test_a_timed_sentence_seen_already_starts_the_next_epoch_even_without_a_time() -> None:
    """Rule 3: u-blox's cycles before its first fix carry empty times."""
    empty = [
        nmea("GPRMC,,V,,,,,,,,,,N"),
        nmea("GPGGA,,,,,,0,00,99.99,,,,,,"),
        nmea("GPGSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99"),
    ]
    fixes = run(empty * 4)
    assert len(fixes) == 4 and not any(f.valid for f in fixes)


def test_a_frozen_time_after_a_learned_cycle_end_is_the_next_cycle_not_a_straggler() -> None:
    lines = cycle("000001.00") + cycle("000002.00") + cycle("000003.00")
    frozen = cycle("000003.00")  # the receiver's clock stopped: the same time again
    fixes = run(lines + frozen + frozen)
    assert [f.time.second for f in fixes] == [1, 2, 3, 3, 3]
    assert [f.valid for f in fixes] == [True, True, True, False, False]  # stale repeats


def test_a_straggler_after_a_learned_end_is_still_dropped() -> None:
    zda = nmea("GPZDA,000003.00,09,12,2002,00,00")  # new in the output set, after GLL
    stream, assembler = NmeaUbxStream(), EpochAssembler()
    for line in cycle("000001.00") + cycle("000002.00") + cycle("000003.00") + [zda]:
        for event in stream.feed(line):
            assembler.push(event, 0.0)
    assert assembler.late_sentences == 1


@pytest.mark.parametrize(
    ("change", "dead_reckoning"),
    [
        ((b",1,8,1.01", b",6,8,1.01"), True),  # GGA quality 6: estimated (dead reckoning)
        ((b",1,8,1.01", b",7,8,1.01"), False),  # 7: manual input
        ((b",1,8,1.01", b",8,8,1.01"), False),  # 8: simulator
        ((b"091202,,,A", b"091202,,,E"), True),  # RMC mode indicator E
        ((b"091202,,,A", b"091202,,,M"), False),  # RMC mode M: manual input
        ((b"091202,,,A", b"091202,,,S"), False),  # RMC mode S: simulator
        ((b",A,A*", b",A,E*"), True),  # GLL mode E
        ((b"18.52,K,A", b"18.52,K,E"), True),  # VTG mode E
    ],
)
def test_a_fix_that_was_not_measured_is_never_valid(change, dead_reckoning: bool) -> None:
    old, new = change
    lines = []
    for line in cycle():
        body = line[1 : line.rindex(b"*") + 1].replace(old, new).rstrip(b"*")
        lines.append(nmea(body.decode()))
    assert lines != cycle()
    (fix,) = run(lines)
    assert not fix.valid and fix.dead_reckoning == dead_reckoning
    assert fix.lat is not None  # the estimate is kept for display


def test_nan_and_infinity_are_no_measurement() -> None:
    gga = "GPGGA,092725.00,4717.11399,N,00833.91590,E,1,8,nan,inf,M,-inf,M,,0"
    (fix,) = run([nmea(gga)])
    assert (fix.hdop, fix.alt_msl_m, fix.geoid_sep_m) == (None, None, None)


def test_more_than_four_records_in_a_gsv_part_is_a_field_error() -> None:
    records = ",".join(f"{prn:02d},10,100,30" for prn in range(1, 7))
    stream, assembler = NmeaUbxStream(), EpochAssembler()
    line = nmea(f"GPGSV,1,1,06,{records}")
    gga = nmea("GPGGA,092725.00,4717.11399,N,00833.91590,E,1,8,1.01,499.6,M,48.0,M,,0")
    fixes = []
    for data in (gga, line):
        for event in stream.feed(data):
            fixes += assembler.push(event, 0.0)
    (fix,) = fixes + assembler.flush()
    assert [s.prn for s in fix.satellites] == [1, 2, 3, 4]
    assert assembler.field_errors == 1


def test_satellites_are_decoded_on_first_use_and_compare_as_a_tuple() -> None:
    (fix,) = run(cycle())
    sats = fix.satellites
    assert isinstance(sats, GsvSatellites) and sats._decoded is None
    assert sats == tuple(sats) and tuple(sats) == sats
    assert sats[1:3] == tuple(sats)[1:3] and sats[-1].prn == 30
    assert hash(sats) == hash(tuple(sats))
    assert repr(sats).startswith("GsvSatellites((Satellite(prn=23")
    assert sats != "not satellites"
    (again,) = run(cycle())
    assert again == fix and hash(again) == hash(fix)


def test_a_fix_made_by_the_assembler_equals_one_made_by_its_constructor() -> None:
    """The assembler builds GpsFix without its __init__ (`epoch._new_fix`): the same thing."""
    (fix,) = run(cycle())
    values = {f.name: getattr(fix, f.name) for f in dataclasses.fields(GpsFix)}
    made = GpsFix(**values)
    assert made == fix and hash(made) == hash(fix) and repr(made) == repr(fix)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fix.lat = 0.0  # type: ignore[misc]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(OUTPUT_SETS, STATUSES), min_size=1, max_size=6), st.integers(1, 300))
def test_decode_gives_the_same_fixes_as_feed_and_push(epochs, chunk: int) -> None:
    """The driver's path (`decode`, sentences as text) and the event path agree."""
    data = b""
    for n, (kept, (rmc, quality, gsa_mode, gll)) in enumerate(epochs):
        kwargs = {"rmc": rmc, "quality": quality, "gsa_mode": gsa_mode, "gll": gll}
        data += b"".join(
            line for line in cycle(f"0000{n:02d}.00", **kwargs) if line[3:6].decode() in kept
        )
    stream, assembler = NmeaUbxStream(), EpochAssembler()
    decoded = []
    for start in range(0, len(data), chunk):
        decoded += assembler.decode(stream, data[start : start + chunk], 1.0)[0]
    decoded += assembler.flush()
    pushed = run([data[i : i + chunk] for i in range(0, len(data), chunk)], received_at=1.0)
    assert decoded == pushed


def test_held_names_what_is_bounded() -> None:
    assembler = EpochAssembler()
    assert set(assembler.held()) == {
        "sentences",
        "positions",
        "gsv_parts",
        "gsv_pending",
    }
