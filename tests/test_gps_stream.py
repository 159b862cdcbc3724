"""NmeaUbxStream: framing, checksums, rejects and byte accounting.

The sentence examples are those of the u-blox NEO-6 protocol specification (GPS.G6-SW-10018,
§20 "NMEA Messages"), checksums included.
"""

from __future__ import annotations

from unittest import mock

import pynmea2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyubx2 import GET, POLL, UBXMessage

from companion.gps import stream as stream_module
from companion.gps.epoch import EpochAssembler
from companion.gps.stream import (
    ERROR_KINDS,
    MAX_PENDING,
    MAX_SENTENCE,
    DecodeError,
    NmeaUbxStream,
    Sentence,
    UbxFrame,
    UbxParseError,
    nmea_checksum,
)

# u-blox NEO-6 protocol spec examples. (The GGA example there ends "M,,0*5B": its DGPS
# station field is "0"; without it the checksum would be 6B.)
GGA = b"$GPGGA,092725.00,4717.11399,N,00833.91590,E,1,8,1.01,499.6,M,48.0,M,,0*5B"
RMC = b"$GPRMC,083559.00,A,4717.11437,N,00833.91522,E,0.004,77.52,091202,,,A*57"
GSA = b"$GPGSA,A,3,23,29,07,08,09,18,26,28,,,,,1.94,1.18,1.54*0D"
GSV = b"$GPGSV,3,1,10,23,38,230,44,29,71,156,47,07,29,116,41,08,09,081,36*7F"
VTG = b"$GPVTG,77.52,T,,M,0.004,N,0.008,K,A*06"
GLL = b"$GPGLL,4717.11364,N,00833.91565,E,092321.00,A,A*60"
ZDA = b"$GPZDA,082710.00,16,09,2002,00,00*64"
TXT = b"$GPTXT,01,01,02,u-blox ag - www.u-blox.com*50"
SPEC_EXAMPLES = [GGA, RMC, GSA, GSV, VTG, GLL, ZDA, TXT]

UBX_POLL = UBXMessage("CFG", "CFG-RATE", POLL).serialize()
UBX_ACK = UBXMessage("ACK", "ACK-ACK", GET, clsID=0x06, msgID=0x08).serialize()


def with_talker(sentence: bytes, talker: bytes) -> bytes:
    body = talker + sentence[3 : sentence.rindex(b"*")]
    return b"$" + body + b"*%02X" % nmea_checksum(body)


def feed_all(stream: NmeaUbxStream, chunks: list[bytes]) -> list:
    events = []
    for chunk in chunks:
        new = stream.feed(chunk)
        errors = [e.kind for e in new if isinstance(e, DecodeError)]
        assert len(set(errors)) == len(errors), errors  # one event per kind and feed
        events += new
    return events


def check_accounting(stream: NmeaUbxStream, events: list) -> None:
    assert stream.stats.accounted(stream.pending), stream.stats.as_dict()
    assert stream.pending <= MAX_PENDING
    errors = [e for e in events if isinstance(e, DecodeError)]
    for kind in ERROR_KINDS:
        assert getattr(stream.stats, kind) == sum(e.count for e in errors if e.kind == kind), kind
    assert stream.stats.sentences == sum(isinstance(e, Sentence) for e in events)
    assert stream.stats.ubx_frames == sum(isinstance(e, UbxFrame) for e in events)


@pytest.mark.parametrize("raw", SPEC_EXAMPLES, ids=lambda r: r[3:6].decode())
def test_spec_examples_decode(raw: bytes) -> None:
    stream = NmeaUbxStream()
    events = stream.feed(raw + b"\r\n")
    assert len(events) == 1 and isinstance(events[0], Sentence)
    assert events[0].raw == raw
    assert events[0].sentence_type == raw[3:6].decode()
    assert stream.stats.sentences == 1 and stream.stats.sentence_bytes == len(raw)
    check_accounting(stream, events)


@pytest.mark.parametrize("talker", [b"GP", b"GN", b"GL", b"GA", b"GB"])
def test_talkers_accepted(talker: bytes) -> None:
    stream = NmeaUbxStream()
    events = stream.feed(with_talker(GGA, talker) + b"\r\n")
    assert [e.talker for e in events] == [talker.decode()]


@pytest.mark.parametrize("eol", [b"\r\n", b"\n", b"\r", b"\n\r", b"\r\r\n"])
def test_line_end_variants(eol: bytes) -> None:
    stream = NmeaUbxStream()
    events = stream.feed(eol.join(SPEC_EXAMPLES) + eol)
    assert [e.raw for e in events] == SPEC_EXAMPLES
    assert stream.stats.line_end_bytes == len(eol) * len(SPEC_EXAMPLES)
    check_accounting(stream, events)


def test_partial_feeds_byte_by_byte_give_the_same_events() -> None:
    data = b"\r\n".join(SPEC_EXAMPLES) + b"\r\n" + UBX_ACK + GGA + b"\r\n"
    whole = NmeaUbxStream().feed(data)
    stream = NmeaUbxStream()
    split = feed_all(stream, [data[i : i + 1] for i in range(len(data))])
    assert [e.raw for e in split] == [e.raw for e in whole]
    assert len(split) == len(SPEC_EXAMPLES) + 2
    check_accounting(stream, split)


def test_partial_line_is_held_until_its_end() -> None:
    stream = NmeaUbxStream()
    assert stream.feed(GGA[:30]) == []
    assert stream.pending == 30
    assert stream.stats.accounted(stream.pending)
    events = stream.feed(GGA[30:] + b"\r\n")
    assert [e.raw for e in events] == [GGA]


def test_ubx_interleaved_with_nmea() -> None:
    stream = NmeaUbxStream()
    events = stream.feed(UBX_ACK + RMC + b"\r\n" + UBX_POLL + GGA + b"\r\n" + UBX_ACK)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["UbxFrame", "Sentence", "UbxFrame", "Sentence", "UbxFrame"]
    assert events[0].msg.identity == "ACK-ACK"
    assert stream.stats.ubx_frames == 3
    check_accounting(stream, events)


def test_ubx_checksum_error_is_counted_and_following_nmea_survives() -> None:
    bad = bytearray(UBX_ACK)
    bad[-1] ^= 0xFF
    stream = NmeaUbxStream()
    events = stream.feed(bytes(bad) + GGA + b"\r\n")
    assert isinstance(events[0], DecodeError) and events[0].kind == "ubx_checksum"
    assert "class 0x05 id 0x01" in events[0].detail  # names the frame (ACK-ACK)
    assert isinstance(events[-1], Sentence) and events[-1].raw == GGA
    assert stream.stats.ubx_checksum == 1
    check_accounting(stream, events)


def test_false_ubx_sync_with_huge_length_does_not_swallow_nmea() -> None:
    stream = NmeaUbxStream()
    events = stream.feed(b"\xb5\x62\x01\x02\xff\xff" + GGA + b"\r\n")
    assert events[0].kind == "ubx_length"
    assert isinstance(events[-1], Sentence)
    check_accounting(stream, events)


def test_nmea_checksum_error_rejected_and_named() -> None:
    bad = GGA.replace(b"499.6", b"499.7")
    stream = NmeaUbxStream()
    events = stream.feed(bad + b"\r\n" + RMC + b"\r\n")
    assert events[0].kind == "checksum"
    assert "5B" in events[0].detail
    assert events[1].raw == RMC
    assert stream.stats.checksum == 1 and stream.stats.sentences == 1
    check_accounting(stream, events)


def test_lowercase_checksum_digits_are_accepted() -> None:
    line = GSA[:-2] + GSA[-2:].lower()
    assert isinstance(NmeaUbxStream().feed(line + b"\r\n")[0], Sentence)


def test_missing_checksum_rejected() -> None:
    stream = NmeaUbxStream()
    events = stream.feed(GGA[: GGA.rindex(b"*")] + b"\r\n")
    assert [e.kind for e in events] == ["no_checksum"]


def test_overlong_line_dropped_to_its_end_then_decoding_resumes() -> None:
    long_line = b"$GPTXT,01,01,02," + b"A" * 300 + b"*00"
    stream = NmeaUbxStream()
    events = feed_all(stream, [long_line[:100], long_line[100:], b"\r\n" + GGA + b"\r\n"])
    assert [getattr(e, "kind", "ok") for e in events] == ["overlong", "ok"]
    assert str(MAX_SENTENCE) in events[0].detail
    assert stream.stats.rejected_bytes == len(long_line)
    check_accounting(stream, events)


def test_vendor_line_between_82_and_max_is_accepted() -> None:
    body = b"GPTXT,01,01,02," + b"B" * 90
    line = b"$" + body + b"*%02X" % nmea_checksum(body)
    assert 82 < len(line) <= MAX_SENTENCE
    assert isinstance(NmeaUbxStream().feed(line + b"\r\n")[0], Sentence)


def test_line_cut_by_new_dollar_keeps_the_next_sentence() -> None:
    stream = NmeaUbxStream()
    events = stream.feed(GGA[:40] + RMC + b"\r\n")
    assert events[0].kind == "truncated"
    assert events[1].raw == RMC
    check_accounting(stream, events)


def test_garbage_between_sentences() -> None:
    stream = NmeaUbxStream()
    events = stream.feed(b"\x00\xff noise" + GGA + b"\r\n\xb5\x00junk" + RMC + b"\r\n")
    # One event per kind and feed, at the first one, with the count of them all.
    assert [getattr(e, "kind", "ok") for e in events] == ["garbage", "ok", "ok"]
    assert (events[0].count, events[0].raw_excerpt) == (2, b"\x00\xff noise")
    assert stream.stats.garbage == 2 and stream.stats.garbage_bytes == 8 + 6
    check_accounting(stream, events)
    events = stream.feed(b"\xb5\x00junk" + RMC + b"\r\n")
    assert [getattr(e, "kind", "ok") for e in events] == ["garbage", "ok"]
    assert events[0].raw_excerpt == b"\xb5\x00junk"


def test_unsupported_sentences_counted_not_errors() -> None:
    gst = b"$GPGST,001901.00,0.0000,,,,304885,304880,62123*5F"
    pubx = (  # u-blox proprietary PUBX,00 example (NEO-6 spec, §21)
        b"$PUBX,00,081350.00,4717.113210,N,00833.915187,E,546.589,G3,2.1,2.0,0.007,77.52,"
        b"0.007,,0.92,1.19,0.77,9,0,0*5F"
    )
    stream = NmeaUbxStream()
    events = stream.feed(gst + b"\r\n" + pubx + b"\r\n")
    assert events == []
    assert stream.stats.unsupported == 2
    check_accounting(stream, events)


def test_address_field_not_followed_by_comma_is_unsupported() -> None:
    body = b"GPGSVX,1"  # a six-letter address is not GSV
    line = b"$" + body + b"*%02X" % nmea_checksum(body)
    stream = NmeaUbxStream()
    assert stream.feed(line + b"\r\n") == []
    assert stream.stats.unsupported == 1


# -- property tests -------------------------------------------------------------------------

GOOD_STREAM = b"\r\n".join([RMC, VTG, GGA, GSA, GSV, GLL, ZDA, TXT]) + b"\r\n" + UBX_ACK


def _decode(chunks: list[bytes]) -> tuple[NmeaUbxStream, list]:
    stream = NmeaUbxStream()
    events = feed_all(stream, chunks)
    check_accounting(stream, events)
    assembler = EpochAssembler()
    for event in events:
        if isinstance(event, Sentence):
            for fix in assembler.push(event, 0.0):
                _check_fix(fix)
    for fix in assembler.flush():
        _check_fix(fix)
    return stream, events


def _check_fix(fix) -> None:
    if fix.valid:
        assert fix.mode in (2, 3)
        assert fix.lat is not None and fix.lon is not None
        assert fix.quality != 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=20))
def test_arbitrary_bytes_never_raise_and_add_up(chunks: list[bytes]) -> None:
    _decode(chunks)


# Bytes that matter to the framing and the fix rules: NUL, CR, LF, '$', '*', UBX sync, 'V'
# (status void), '0' (quality invalid), ','.
MUTATION_BYTES = [0x00, 0x0D, 0x0A, 0x24, 0x2A, 0xB5, 0x62, 0x56, 0x30, 0x2C]


@st.composite
def mutated_streams(draw) -> list[bytes]:
    data = bytearray(GOOD_STREAM * 2)
    for _ in range(draw(st.integers(0, 12))):
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] = draw(
                st.sampled_from([0x00, 0x0D, 0x0A, 0x24, 0x2A, 0xB5, 0x62, 0x56, 0x30, 0x2C])
            )
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=10))
        else:
            del data[i : i + draw(st.integers(1, 10))]
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    return [bytes(data[a:b]) for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


@settings(max_examples=300, deadline=None)
@given(mutated_streams())
def test_mutated_streams_never_raise_never_report_invalid_fix_valid(chunks: list[bytes]) -> None:
    _decode(chunks)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=30))
def test_any_split_of_a_good_stream_gives_the_same_events(sizes: list[int]) -> None:
    chunks, pos = [], 0
    for size in sizes * 20:
        chunks.append(GOOD_STREAM[pos : pos + size])
        pos += size
    chunks.append(GOOD_STREAM[pos:])
    stream, events = _decode(chunks)
    assert [e.raw for e in events] == [e.raw for e in NmeaUbxStream().feed(GOOD_STREAM)]
    assert stream.pending == 0


@pytest.mark.parametrize("raw", SPEC_EXAMPLES, ids=lambda r: r[3:6].decode())
def test_sentence_fields_and_its_pynmea2_message_agree_with_pynmea2_parse(raw: bytes) -> None:
    (event,) = NmeaUbxStream().feed(raw + b"\r\n")
    reference = pynmea2.parse(raw.decode(), check=True)
    assert event.fields == reference.data
    assert type(event.msg) is type(reference) and event.msg.data == reference.data
    assert event.msg is event.msg  # built once


@pytest.mark.parametrize("raw", SPEC_EXAMPLES, ids=lambda r: r[3:6].decode())
def test_fast_run_and_byte_path_give_the_same_sentence(raw: bytes) -> None:
    """Upper-case digits take the vectorised run, lower-case ones the byte-by-byte path."""
    fast = NmeaUbxStream().feed(raw + b"\r\n")[0]
    slow = NmeaUbxStream().feed(raw[:-2] + raw[-2:].lower() + b"\r\n")[0]
    assert (fast.talker, fast.sentence_type, fast.fields) == (
        slow.talker,
        slow.sentence_type,
        slow.fields,
    )


def test_checksum_error_inside_a_run_stops_the_run_and_is_named() -> None:
    bad = GSA.replace(b"1.94", b"1.95")
    stream = NmeaUbxStream()
    events = stream.feed(b"\r\n".join([GGA, RMC, bad, VTG, GLL]) + b"\r\n")
    assert [getattr(e, "kind", None) or e.sentence_type for e in events] == [
        "GGA",
        "RMC",
        "checksum",
        "VTG",
        "GLL",
    ]
    check_accounting(stream, events)


def test_reserved_star_inside_a_field_is_a_parse_error() -> None:
    body = b"GPTXT,01,01,02,a*b"
    line = b"$" + body + b"*%02X" % nmea_checksum(body)
    stream = NmeaUbxStream()
    events = stream.feed(line + b"\r\n")
    assert [e.kind for e in events] == ["parse"] and "'*'" in events[0].detail
    check_accounting(stream, events)


@given(st.lists(st.sampled_from(SPEC_EXAMPLES), max_size=30), st.lists(st.booleans(), max_size=30))
def test_runs_of_any_mix_of_fast_and_slow_lines_keep_order(picks, lower) -> None:
    lines = [
        raw[:-2] + raw[-2:].lower() if i < len(lower) and lower[i] else raw
        for i, raw in enumerate(picks)
    ]
    stream = NmeaUbxStream()
    events = stream.feed(b"".join(line + b"\r\n" for line in lines))
    assert [e.fields for e in events] == [
        line[7 : line.rindex(b"*")].decode().split(",") for line in lines
    ]
    check_accounting(stream, events)


# -- the paths a run of lines can take ---------------------------------------------------


def test_lines_other_than_supported_ones_go_together_and_are_sorted_line_by_line() -> None:
    gst = b"$GPGST,001901.00,0.0000,,,,304885,304880,62123*5F"
    bad = GGA.replace(b"499.6", b"499.7")
    lines = [gst, RMC[:-2] + RMC[-2:].lower(), bad, GSA, b"$PUBX,41,1,0007,0003,19200,0*25"]
    stream = NmeaUbxStream()
    events = stream.feed(b"\r\n".join(lines) + b"\r\n")
    assert [getattr(e, "kind", None) or e.sentence_type for e in events] == [
        "RMC",
        "checksum",
        "GSA",
    ]
    assert stream.stats.unsupported == 2
    check_accounting(stream, events)


def test_a_sentence_splits_its_fields_on_first_use() -> None:
    (event,) = NmeaUbxStream().feed(GGA + b"\r\n")
    assert event._fields is None
    assert event.fields == event.fields_text.split(",") and event.fields is event.fields


def test_ubx_frames_are_decoded_on_first_use() -> None:
    # CFG-DAT with 8 bytes of payload: a right checksum, a layout pyubx2 refuses.
    frame = bytes.fromhex("b56206060800ea18a0ab916db9031be9")
    stream = NmeaUbxStream()
    (ack, unknown) = stream.feed(UBX_ACK + frame)
    assert (ack.msg_class, ack.msg_id, ack._msg) == (0x05, 0x01, None)
    assert ack.msg.identity == "ACK-ACK" and ack.msg is ack.msg
    with pytest.raises(UbxParseError, match="class 0x06 id 0x06"):
        _ = unknown.msg
    assert stream.stats.ubx_frames == 2


def test_a_sink_gets_the_same_sentences_as_the_events() -> None:
    data = GOOD_STREAM + b"junk\x00$GP" + GOOD_STREAM.replace(b"*57", b"*58")
    lines: list[str] = []
    sunk = NmeaUbxStream()
    sunk_events = sunk.feed(data, lines.extend)
    evented = NmeaUbxStream()
    events = evented.feed(data)

    def others(items: list) -> list:
        return [
            (e.kind, e.count) if isinstance(e, DecodeError) else e.raw
            for e in items
            if not isinstance(e, Sentence)
        ]

    assert lines == [e.raw.decode() for e in events if isinstance(e, Sentence)]
    assert others(sunk_events) == others(events) and not any(
        isinstance(e, Sentence) for e in sunk_events
    )
    assert sunk.stats == evented.stats


# Units of input that are decided on a look (stream._JUNK): a run of them longer than
# _BULK_JUNK is counted in bulk, a shorter one unit by unit; both must agree.
JUNK_UNITS = [b"$", b"$x", b"$GPGGA,1,2", b"\x00", b"noise", b"\xb5x", b"\r\n", b"\n", b"$*1"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(JUNK_UNITS), min_size=1, max_size=200))
def test_junk_counted_in_bulk_is_counted_as_unit_by_unit(units: list[bytes]) -> None:
    data = b"".join(units) + b"\r\n" + GGA + b"\r\n"
    bulk = NmeaUbxStream()
    bulk_events = bulk.feed(data)
    with mock.patch.object(stream_module, "_BULK_JUNK", 10**9):
        unit = NmeaUbxStream()
        unit_events = unit.feed(data)
    assert bulk.stats == unit.stats
    assert {e.kind: e.count for e in bulk_events if isinstance(e, DecodeError)} == {
        e.kind: e.count for e in unit_events if isinstance(e, DecodeError)
    }
    assert bulk_events[-1].raw == GGA
    check_accounting(bulk, bulk_events)


def test_ubx_false_syncs_and_garbage_between_them_are_taken_together() -> None:
    # Syncs claiming nothing or a kilobyte, and garbage (the kilobyte's window must be there
    # for its checksum to be tested: the x's).
    data = b"\xb5\x62\xb5\x62\x00\x00" * 50 + b"\xb5\x62\x01\x01\x00\x04junk" * 50
    data += b"x" * 1100 + RMC
    stream = NmeaUbxStream()
    events = stream.feed(data + b"\r\n")
    kinds = {e.kind: e.count for e in events if isinstance(e, DecodeError)}
    assert kinds["ubx_length"] == 50 and kinds["ubx_checksum"] == 100
    assert kinds["garbage"] == 100  # the last "junk" runs on into the x's
    assert isinstance(events[-1], Sentence) and events[-1].raw == RMC
    check_accounting(stream, events)
