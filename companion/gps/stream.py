"""Sans-I/O decoder for a u-blox receiver's serial output: NMEA 0183 sentences and UBX frames.

`NmeaUbxStream.feed(data)` takes whatever bytes a read returned (any split, any junk) and
returns the events they complete: `Sentence`, `UbxFrame` or `DecodeError`. It never raises
on input and holds at most `MAX_PENDING` bytes between calls, so a receiver at the wrong
baud rate or a device that is not a GPS costs counters, not memory or a crash.

Framing, as gpsd's packet sniffer does it (gpsd/packet.c): at each position the first byte
decides what follows.
- `$`: an NMEA sentence, up to the first CR or LF (NMEA 0183 v4.10 §5.3: sentences end in
  CR LF; we accept CR LF, LF or CR alone, as receivers and log files vary). Only printable
  ASCII may appear inside (§6.1); any other byte, or a new `$`, cuts the line short and the
  scan restarts at that byte, so a sentence that lost its end to noise does not take the
  next, good one with it.
- `0xB5 0x62`: a UBX frame (u-blox NEO-6 Receiver Description incl. Protocol Specification,
  GPS.G6-SW-10018, §31 "UBX Protocol", "UBX Packet Structure"): class, id, little-endian
  payload length, payload, and an 8-bit Fletcher checksum over class..payload.
- CR or LF between sentences: line ends, counted in `line_end_bytes`.
- anything else: garbage, skipped up to the next byte that can start one of the above.

The common case, a run of well-formed lines of supported sentences, is taken in bulk: one
regular expression over the run, split into lines in C, and one vectorised XOR reduction
for the checksums of the whole run (numpy); a line whose checksum fails is rejected there.
Runs of other lines with a checksum field (other talkers and types, lower-case digits) are
taken the same way and sorted line by line; what no run takes (no line end yet, a reserved
`*` in a field, an overlong line, noise) goes through the byte-level path above, which
names the fault. `Sentence.fields` are the raw text fields, split on first use;
`Sentence.msg`, pynmea2's object for them, and `UbxFrame.msg`, pyubx2's, are built only
when asked for.

Every byte fed is accounted for in exactly one byte counter of `StreamStats` once it has
been decided on, and the ones not yet decided on are `pending`; `StreamStats.accounted()`
checks that the buckets add up to `bytes_in`.

Cost is linear in the bytes fed whatever their shape, so that noise, a receiver at the wrong
rate or a hostile device costs about what good data does (tests/fuzz_gps.py measures it):
each byte is examined a bounded number of times (a `$` that is not the start of a good line
costs one anchored match of that line; a UBX sync costs a constant-time checksum test from
per-feed prefix sums, not a pass over the length it claims), and rejects are reported as one
`DecodeError` per kind per `feed()` with a `count`, so a flood of bad lines costs a counter
each rather than an object each. Nothing is lost: every reject is in the counters.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy
import pynmea2
from pyubx2 import UBXMessage, UBXReader

# NMEA 0183 §5.3 limits a sentence to 82 characters including `$` and CR LF. u-blox and
# others exceed it with NMEA 4.1 extra fields (e.g. GSV signal id, GSA system id) and long
# TXT lines, so we allow up to 120 bytes from `$` to the checksum before calling it
# overlong and dropping the line.
MAX_SENTENCE = 120

# Longest UBX payload we wait for. The largest NEO-6 outputs (MON-VER with extensions,
# NAV-SVINFO with 16 channels, RXM-RAW/SFRB, AID-ALM/EPH) stay well under 1 KiB; a longer
# length field is taken as a false sync (0xB5 0x62 inside noise or binary data), so a bad
# length cannot make the decoder swallow kilobytes of good NMEA while it waits.
MAX_UBX_PAYLOAD = 1024
_UBX_OVERHEAD = 8  # sync (2) + class, id (2) + length (2) + checksum (2)

# Bound on bytes held between feeds: the longest thing we may still be assembling.
MAX_PENDING = max(MAX_SENTENCE + 1, MAX_UBX_PAYLOAD + _UBX_OVERHEAD)

TALKERS = frozenset({"GP", "GN", "GL", "GA", "GB"})
SENTENCE_TYPES = frozenset({"GGA", "RMC", "GSA", "GSV", "VTG", "GLL", "ZDA", "TXT"})

_HEX_PAIRS = frozenset(a + b for a in "0123456789ABCDEFabcdef" for b in "0123456789ABCDEFabcdef")
_EXCERPT = 40


class Sentence:
    """A checksum-verified NMEA sentence of a supported talker and type.

    `fields_text` is what follows the address field, up to the `*`; `fields` the same split
    at the commas, on first use; `raw` is the sentence from `$` to the checksum digits,
    without the line end. `msg` is the pynmea2 sentence object for the same fields
    (`msg.lat`, `msg.timestamp`, ...), built on first use: the epoch assembler reads the
    text directly, so the hot path pays neither for splitting a sentence it has seen before
    nor for pynmea2's attribute machinery on every sentence of a 5 Hz stream.
    """

    __slots__ = ("_fields", "_msg", "fields_text", "raw", "sentence_type", "talker")

    def __init__(self, talker: str, sentence_type: str, fields_text: str, raw: bytes) -> None:
        self.talker = talker
        self.sentence_type = sentence_type
        self.fields_text = fields_text
        self.raw = raw
        self._fields: list[str] | None = None
        self._msg: pynmea2.NMEASentence | None = None

    @property
    def fields(self) -> list[str]:
        """The comma-separated fields after the address field, as text."""
        if self._fields is None:
            self._fields = self.fields_text.split(",")
        return self._fields

    @property
    def msg(self) -> pynmea2.NMEASentence:
        if self._msg is None:
            cls = pynmea2.TalkerSentence.sentence_types[self.sentence_type]
            self._msg = cls(self.talker, self.sentence_type, list(self.fields))
        return self._msg

    def __repr__(self) -> str:
        return f"Sentence({self.raw!r})"


class UbxParseError(ValueError):
    """A UBX frame whose checksum matched but which pyubx2 cannot decode (`UbxFrame.msg`)."""


class UbxFrame:
    """A UBX frame whose Fletcher checksum matched; `raw` is the frame, sync to checksum.

    `msg`, pyubx2's decode, is built on first use and raises `UbxParseError` when pyubx2
    refuses the frame. Decoding costs 5-70 µs a frame, as much as a hundred NMEA sentences,
    so it is left to the consumer that needs it (the driver, only while it configures the
    receiver): a stream of UBX output, or of frames forged to pass the checksum, then costs
    the framing alone.
    """

    __slots__ = ("_msg", "msg_class", "msg_id", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.msg_class = raw[2]
        self.msg_id = raw[3]
        self._msg: UBXMessage | None = None

    @property
    def msg(self) -> UBXMessage:
        if self._msg is None:
            try:
                self._msg = UBXReader.parse(self.raw)
            except Exception as exc:  # pyubx2 raises several types; callers get one
                raise UbxParseError(
                    f"UBX class 0x{self.msg_class:02X} id 0x{self.msg_id:02X}: {exc}"
                ) from exc
        return self._msg

    def __repr__(self) -> str:
        return f"UbxFrame({self.raw!r})"


@dataclass(frozen=True)
class DecodeError:
    """Input that was rejected. `kind` is one of `ERROR_KINDS`; `detail` and `raw_excerpt`
    (its first bytes) describe the first reject of that kind in one `feed()`, and `count` is
    how many rejects of that kind the feed held (see the module docstring: bounded cost)."""

    kind: str
    detail: str
    raw_excerpt: bytes
    count: int = 1


ERROR_KINDS = (
    "garbage",  # bytes outside any frame
    "truncated",  # an NMEA line cut short by a new `$` or a non-printable byte
    "overlong",  # an NMEA line longer than MAX_SENTENCE
    "no_checksum",  # an NMEA line without a `*hh` checksum field
    "checksum",  # an NMEA checksum mismatch
    "parse",  # checksum fine, but a field holds the reserved '*' (NMEA 0183 §6.1.4)
    "ubx_length",  # a UBX length field above MAX_UBX_PAYLOAD (taken as a false sync)
    "ubx_checksum",  # a UBX Fletcher checksum mismatch
)


@dataclass
class StreamStats:
    """Counters. Event counters count items; `*_bytes` counters count bytes.

    Invariant (tested): bytes_in == sentence_bytes + unsupported_bytes + ubx_bytes
    + rejected_bytes + garbage_bytes + line_end_bytes + pending, where `pending` is what
    `NmeaUbxStream` still holds undecided. For each kind in ERROR_KINDS the counter of that
    name (e.g. `checksum`, `ubx_checksum`; `garbage` counts garbage runs) equals the sum of
    `count` over the DecodeError events of that kind emitted.
    """

    bytes_in: int = 0
    sentences: int = 0
    unsupported: int = 0
    ubx_frames: int = 0
    garbage: int = 0
    truncated: int = 0
    overlong: int = 0
    no_checksum: int = 0
    checksum: int = 0
    parse: int = 0
    ubx_length: int = 0
    ubx_checksum: int = 0
    sentence_bytes: int = 0
    unsupported_bytes: int = 0
    ubx_bytes: int = 0
    rejected_bytes: int = 0
    garbage_bytes: int = 0
    line_end_bytes: int = 0

    def accounted(self, pending: int) -> bool:
        """Whether every byte fed is in exactly one byte bucket or still `pending`."""
        return self.bytes_in == (
            self.sentence_bytes
            + self.unsupported_bytes
            + self.ubx_bytes
            + self.rejected_bytes
            + self.garbage_bytes
            + self.line_end_bytes
            + pending
        )

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


Event = Sentence | UbxFrame | DecodeError
#: Where `NmeaUbxStream.feed` can hand sentences instead: lists of whole sentences as text,
#: "$" to the checksum digits, checksums verified.
SentenceSink = Callable[[list[str]], object]


def _sentence_of(line: str) -> Sentence:
    """The `Sentence` of a verified line, "$" to the checksum digits."""
    return Sentence(line[1:3], line[3:6], line[7:-3], line.encode("latin-1"))


def nmea_checksum(body: bytes) -> int:
    """XOR of the characters between `$` and `*` (NMEA 0183 §6.2 "checksum field").

    Computed by folding the body as one integer onto itself (halves XORed together until
    one byte is left): a handful of C-level big-integer operations instead of a Python-level
    step per character, which made the checksum the decoder's largest single cost.
    """
    x = int.from_bytes(body, "little")
    shift = 4 << (len(body) - 1).bit_length()  # half the body, rounded up to a power of 2
    while shift >= 8:
        x ^= x >> shift
        shift >>= 1
    return x & 0xFF


_WEIGHTS = numpy.arange(MAX_UBX_PAYLOAD + 4, 0, -1, dtype=numpy.int64)


def ubx_checksum(body: bytes) -> bytes:
    """The 8-bit Fletcher CK_A, CK_B over class, id, length and payload (NEO-6 spec §31).

    CK_A is the byte sum and CK_B the sum of the running CK_A, that is each byte weighted by
    how many bytes follow it plus one: two vectorised reductions for a long body instead of
    a Python step per byte (a false sync may claim a kilobyte of payload).
    """
    n = len(body)
    if n < 32 or n > len(_WEIGHTS):
        ck_a = ck_b = 0
        for b in body:
            ck_a = (ck_a + b) & 0xFF
            ck_b = (ck_b + ck_a) & 0xFF
        return bytes((ck_a, ck_b))
    data = numpy.frombuffer(body, dtype=numpy.uint8)
    return bytes((int(data.sum()) & 0xFF, int(numpy.dot(data, _WEIGHTS[-n:])) & 0xFF))


# Inside a sentence only printable ASCII 0x20..0x7E is allowed (NMEA 0183 §6.1), and `$`
# only as the first character: a run of these is a sentence body, anything else ends it.
# Compiled patterns find the ends of runs in C instead of a Python loop per byte. The
# decoder matches them against the buffer decoded as latin-1, one character per byte.
_BODY = r"[\x20-\x23\x25-\x7e]"
_SENTENCE_RUN = re.compile(_BODY + "*")

# The common case, matched whole in C: a supported talker and type, fields without `$` or
# `*`, upper-case checksum digits, within MAX_SENTENCE, and its line end already received.
# A run of them is matched in one call, and split into lines in C: no `$` or `*` can appear
# inside one, so in a run the `$` are exactly the line starts and the `*` exactly the
# checksum stars, which is what lets the checksums be computed for the whole run at once.
_GOOD_RUN = re.compile(
    r"(?:\$(?:%s)(?:%s),[\x20-\x23\x25-\x29\x2b-\x7e]{0,%d}\*[0-9A-F]{2}(?:\r\n|\r|\n))+"  # noqa: UP031
    % (
        "|".join(sorted(TALKERS)),
        "|".join(sorted(SENTENCE_TYPES)),
        MAX_SENTENCE - len("$GPGGA,*hh"),
    )
)
# Any run of lines that end in a checksum field: other talkers and types ($PUBX, GST, ...),
# lower-case digits; taken together too, and sorted line by line (`_checked_lines`).
_CHECKED_RUN = re.compile(
    r"(?:\$[\x20-\x23\x25-\x29\x2b-\x7e]{0,%d}\*[0-9A-Fa-f]{2}(?:\r\n|\r|\n))+"  # noqa: UP031
    % (MAX_SENTENCE - len("$*hh"))
)
#: The value of each hex digit's byte (the run patterns admit no other).
_HEX_VALUE = numpy.zeros(256, dtype=numpy.uint8)
_HEX_VALUE[numpy.frombuffer(b"0123456789ABCDEF", dtype=numpy.uint8)] = numpy.arange(16)
_HEX_VALUE[numpy.frombuffer(b"abcdef", dtype=numpy.uint8)] = numpy.arange(10, 16)

# The units that need no more than a look to be decided, taken one match each whatever
# their size, so that noise costs a step per unit instead of a step per byte. The groups
# number the unit kinds (`Match.lastindex`):
_LINE = _BODY + "{0,%d}" % (MAX_SENTENCE - 1)  # noqa: UP031 (regex braces)
_NOT_STAR = r"[\x20-\x23\x25-\x29\x2b-\x7e]"
_JUNK_UNITS = (
    # 1: a run of `$`, each one a line cut short by the next;
    r"(\$+(?=\$))",
    # 2: a line cut short by a `$` or a byte that may not appear in a sentence (NMEA 0183
    # §6.1), within MAX_SENTENCE (a longer one is overlong, which `_nmea` decides);
    r"(\$" + _LINE + r"(?=[^\r\n\x20-\x23\x25-\x7e]))",
    # 3: a whole line whose end is not `*hh` (no checksum field, NMEA 0183 §6.2);
    r"(\$(?!" + _BODY + r"*\*" + _NOT_STAR + r"{2}[\r\n])" + _LINE + r"(?=[\r\n]))",
    # 4: garbage: bytes that start nothing, or a 0xB5 not followed by the UBX 0x62;
    r"([^$\xb5\r\n]+|\xb5(?=[^b])[^$\xb5\r\n]*)",
    # 5: line ends between sentences.
    r"([\r\n]+)",
)
_JUNK = re.compile("|".join(_JUNK_UNITS))
_GARBAGE_RUN = re.compile(_JUNK_UNITS[3][1:-1])
# A whole run of them, in one match: the same units, as the repetition takes the first
# alternative that matches each time and nothing follows it to backtrack for.
_JUNK_RUN = re.compile("(?:%s)+" % "|".join(unit[1:-1] for unit in _JUNK_UNITS))  # noqa: UP031
# A longer run is counted in bulk (`_junk_bulk`), with C-level searches over it whose cost
# does not depend on how many units it holds; a shorter one unit by unit, cheaper there.
_BULK_JUNK = 64
# Inside a run: every `$` starts a line (units 1-3), that line followed by a line end is a
# unit 3, by anything else a unit 1 or 2; the rest, line ends aside, is garbage, whose units
# start after a line or a line end, and at each 0xB5.
_RUN_LINE = re.compile(r"\$" + _BODY + "*")
_OPEN_LINE = re.compile(r"\$" + _BODY + r"*(?=[\r\n])")
_CUT_LINE = re.compile(r"\$" + _BODY + r"*(?=[^\r\n\x20-\x23\x25-\x7e])")
_GARBAGE_UNIT = re.compile(r"\xb5[^\r\n\xb5]*|[^\r\n\xb5]+")
_TRUNCATED_RUN, _TRUNCATED, _NO_CHECKSUM, _GARBAGE, _LINE_END = 1, 2, 3, 4, 5
_UNIT_KINDS = (None, "truncated", "truncated", "no_checksum", "garbage", None)


def _prefix_sums(raw: bytes) -> tuple[bytes, bytes]:
    """Prefix sums modulo 256 of `raw` (S) and of each byte times its position (W), as bytes.

    The Fletcher checksum of `raw[a:e]` is then CK_A = S[e] - S[a] and CK_B = e·CK_A -
    (W[e] - W[a]), modulo 256: CK_B adds each byte once for every byte from it to the end
    of the window (see `ubx_checksum`), that is (e - i) times the byte at i.
    """
    data = numpy.frombuffer(raw, dtype=numpy.uint8)
    sums = numpy.zeros(len(data) + 1, dtype=numpy.uint8)
    weighted = numpy.zeros(len(data) + 1, dtype=numpy.uint8)
    numpy.cumsum(data, dtype=numpy.uint8, out=sums[1:])
    index = numpy.arange(len(data), dtype=numpy.uint8)  # the position modulo 256
    numpy.cumsum(index * data, dtype=numpy.uint8, out=weighted[1:])
    return sums.tobytes(), weighted.tobytes()


# Runs shorter than this get their checksums one by one: numpy's fixed cost per call is
# worth paying only over several lines.
_VECTOR_RUN = 4


class NmeaUbxStream:
    """Byte stream in, events out. One instance per serial port; keep it across reopens."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._discarding = False  # inside an overlong line, dropping until its end
        self.stats = StreamStats()
        # Per feed: the buffer as bytes, the rejects by kind ([index of its event, count,
        # bytes]; the counters are updated from it when the feed ends), and the UBX
        # checksum prefix sums once a frame is checked.
        self._raw = b""
        self._errors: dict[str, list[int]] = {}
        self._prefix: tuple[bytes, bytes] | None = None
        self._on_sentence: SentenceSink | None = None

    @property
    def pending(self) -> int:
        """Bytes held, not yet decided on (at most MAX_PENDING)."""
        return len(self._buf)

    def feed(self, data: bytes, on_sentence: SentenceSink | None = None) -> list[Event]:
        """Add bytes read from the receiver; return the events they complete, in order.

        With `on_sentence`, sentences are handed to it as they are decoded, a run of lines
        at a time ("$" to the checksum digits, `SentenceSink`), instead of being returned as
        `Sentence` events: the consumer that only wants the text (`EpochAssembler.decode`)
        then costs neither an object nor a call per sentence.
        """
        self._on_sentence = on_sentence
        stats = self.stats
        stats.bytes_in += len(data)
        buf = self._buf
        buf += data
        self._raw = bytes(buf)
        text = self._raw.decode("latin-1")
        self._errors = {}
        self._prefix = None
        events: list[Event] = []
        pos = 0
        n = len(text)
        last_end = max(text.rfind("\n"), text.rfind("\r"))  # a line after it is not complete
        while pos < n:
            if self._discarding:
                end = _SENTENCE_RUN.match(text, pos).end()
                stats.rejected_bytes += end - pos
                pos = end
                if end < n:
                    self._discarding = False
                continue
            c = text[pos]
            if c == "$":
                if pos > last_end and _SENTENCE_RUN.match(text, pos + 1).end() == n:
                    if n - pos > MAX_SENTENCE:
                        pos += self._nmea(text, pos, n, events)  # overlong
                        continue
                    break  # the line's end has not come yet: wait for it, at no cost
                used = self._good_lines(text, pos, events) or self._checked_lines(text, pos, events)
                if used:
                    pos += used
                    continue
            elif c == "\xb5" and text.startswith("b", pos + 1):
                end = self._ubx(text, pos, n, events)
                if end == pos:
                    break  # frame not complete yet
                pos = end
                continue
            junk = _JUNK_RUN.match(text, pos)
            if junk is not None:
                end = junk.end()
                if end - pos < _BULK_JUNK:
                    pos = self._junk(text, _JUNK.match(text, pos), events)
                else:
                    pos = self._junk_bulk(text, pos, end, events)
                continue
            if c != "$":
                break  # a 0xB5 at the very end: whether a UBX frame follows is not known yet
            used = self._nmea(text, pos, n, events)
            if used == 0:
                break  # line not complete yet
            pos += used
        del buf[:pos]
        for kind, (index, count, consumed) in self._errors.items():
            setattr(stats, kind, getattr(stats, kind) + count)
            stats.rejected_bytes += consumed
            if count > 1:
                event = events[index]
                assert isinstance(event, DecodeError) and event.kind == kind
                events[index] = DecodeError(kind, event.detail, event.raw_excerpt, count)
        self._raw = b""
        self._prefix = None
        return events

    # -- NMEA ---------------------------------------------------------------------------

    def _good_lines(self, text: str, pos: int, events: list[Event]) -> int:
        """Take the run of well-formed lines starting at `pos`; return the bytes consumed.

        The run is one anchored C-level match (a `$` that starts no good line costs that one
        line), split into lines in C; its checksums are computed together (`_run_sums`),
        which is what lets the decoder outrun a plain pynmea2 loop while doing more. A line
        whose checksum fails is rejected here, naming both sums.
        """
        match = _GOOD_RUN.match(text, pos)
        if match is None:
            return 0
        end = match.end()
        lines = text[pos:end].splitlines()
        body_bytes = sum(map(len, lines))
        sums = self._run_sums(lines, pos, end)
        good = lines
        if sums is not None:
            good = []
            for line, got in zip(lines, sums, strict=True):
                if got is True:
                    good.append(line)
                    if self._on_sentence is None:
                        events.append(_sentence_of(line))
                    continue
                self._reject(
                    events,
                    "checksum",
                    line.encode("latin-1"),
                    len(line),
                    "checksum is %s, the sentence sums to %02X",
                    line[-2:],
                    got,
                )
        elif self._on_sentence is None:
            events += map(_sentence_of, lines)
        if self._on_sentence is not None and good:
            self._on_sentence(good)
        stats = self.stats
        stats.sentences += len(good)
        stats.sentence_bytes += body_bytes if good is lines else sum(map(len, good))
        stats.line_end_bytes += end - pos - body_bytes
        return end - pos

    def _checked_lines(self, text: str, pos: int, events: list[Event]) -> int:
        """Take the run of lines with a checksum field at `pos` that `_good_lines` left (an
        unsupported talker or type, lower-case digits, and whatever follows them); return
        the bytes consumed. Checksums as in `_good_lines`; then each line is a supported
        sentence, counted as unsupported, or rejected."""
        match = _CHECKED_RUN.match(text, pos)
        if match is None:
            return 0
        end = match.end()
        lines = text[pos:end].splitlines()
        body_bytes = sum(map(len, lines))
        sums = self._run_sums(lines, pos, end) or [True] * len(lines)
        good = []
        unsupported = unsupported_bytes = 0
        for line, got in zip(lines, sums, strict=True):
            if got is not True:
                self._reject(
                    events,
                    "checksum",
                    line.encode("latin-1"),
                    len(line),
                    "checksum is %s, the sentence sums to %02X",
                    line[-2:],
                    got,
                )
            elif line[1:3] in TALKERS and line[3:6] in SENTENCE_TYPES and line[6:7] == ",":
                good.append(line)
                if self._on_sentence is None:
                    events.append(_sentence_of(line))
            else:
                # Proprietary ($PUBX), other talkers, or types we do not use (GST, GBS, ...).
                unsupported += 1
                unsupported_bytes += len(line)
        if self._on_sentence is not None and good:
            self._on_sentence(good)
        stats = self.stats
        stats.sentences += len(good)
        stats.sentence_bytes += sum(map(len, good))
        stats.unsupported += unsupported
        stats.unsupported_bytes += unsupported_bytes
        stats.line_end_bytes += end - pos - body_bytes
        return end - pos

    def _run_sums(self, lines: list[str], pos: int, end: int) -> list[bool | int] | None:
        """None when the checksums of all lines of the run at `pos:end` are right; else,
        for each line, True if its checksum is right, else the sum its body has (NMEA 0183
        §6.2: XOR of the characters between `$` and `*`).

        Short runs are summed line by line; longer ones in one pass: an XOR reduction
        between each `$` and the next `*`, against the digits after each `*`.
        """
        if len(lines) < _VECTOR_RUN:
            result: list[bool | int] | None = None
            for i, line in enumerate(lines):
                got = nmea_checksum(line[1:-3].encode("latin-1"))
                if got != int(line[-2:], 16):
                    if result is None:
                        result = [True] * len(lines)
                    result[i] = got
            return result
        run = numpy.frombuffer(self._raw, dtype=numpy.uint8, count=end - pos, offset=pos)
        stars = numpy.flatnonzero(run == 0x2A)
        bounds = numpy.empty(2 * len(stars), dtype=numpy.intp)
        bounds[0::2] = numpy.flatnonzero(run == 0x24) + 1
        bounds[1::2] = stars
        sums = numpy.bitwise_xor.reduceat(run, bounds)[0::2]
        good = sums == _HEX_VALUE[run[stars + 1]] * 16 + _HEX_VALUE[run[stars + 2]]
        if good.all():
            return None
        return [True if g else s for g, s in zip(good.tolist(), sums.tolist(), strict=True)]

    def _junk(self, text: str, match: re.Match[str], events: list[Event]) -> int:
        """Take the run of `_JUNK` units that starts with `match`; return where it ends.

        Each unit is one anchored C-level match and a few counter updates: the first of
        each kind in the feed becomes its event (`_reject`), later ones add to its count.
        """
        errors = self._errors
        raw = self._raw
        line_end_bytes = garbage_bytes = 0
        pos = match.start()
        while match is not None:
            unit = match.lastindex
            end = match.end()
            size = end - pos
            if unit == _LINE_END:
                line_end_bytes += size
            else:
                kind = _UNIT_KINDS[unit]
                seen = errors.get(kind)
                if unit == _GARBAGE:
                    garbage_bytes += size
                    if seen is None:
                        detail = "%d bytes outside any NMEA/UBX frame"
                        self._reject(events, kind, raw[pos:end], 0, detail, size)
                    else:
                        seen[1] += 1
                elif seen is not None:
                    seen[1] += size if unit == _TRUNCATED_RUN else 1
                    seen[2] += size
                elif unit == _NO_CHECKSUM:
                    detail = "NMEA sentence without a '*hh' checksum"
                    self._reject(events, kind, raw[pos:end], size, detail)
                else:
                    # A run of `$` is that many lines, each cut short by the next `$`.
                    self._reject(
                        events,
                        kind,
                        raw[pos:end],
                        size,
                        "NMEA line cut short by byte 0x%02X before its line end",
                        0x24 if unit == _TRUNCATED_RUN else ord(text[end]),
                        count=size if unit == _TRUNCATED_RUN else 1,
                    )
            pos = end
            match = _JUNK.match(text, pos)
        stats = self.stats
        stats.line_end_bytes += line_end_bytes
        stats.garbage_bytes += garbage_bytes
        return pos

    def _junk_bulk(self, text: str, pos: int, end: int, events: list[Event]) -> int:
        """Count the run of `_JUNK` units at `pos:end` with a few C-level passes that count
        matches without making an object for each (see the patterns above `_BULK_JUNK`), and
        report each kind once, from its first unit."""
        seg = text[pos:end]
        stats = self.stats
        line_end = seg.count("\r") + seg.count("\n")
        rest, lines = _RUN_LINE.subn("\n", seg)  # each line becomes one separator
        line_bytes = len(seg) - len(rest) + lines
        garbage_bytes = len(seg) - line_end - line_bytes
        stats.line_end_bytes += line_end
        stats.garbage_bytes += garbage_bytes
        if garbage_bytes:
            first = _GARBAGE_UNIT.search(rest)
            assert first is not None
            self._reject(
                events,
                "garbage",
                first.group()[:_EXCERPT].encode("latin-1"),
                0,
                "%d bytes outside any NMEA/UBX frame",
                len(first.group()),
                count=_GARBAGE_UNIT.subn("", rest)[1],
            )
        closed, open_lines = _OPEN_LINE.subn("", seg)
        open_bytes = len(seg) - len(closed)
        if open_lines:
            first = _OPEN_LINE.search(seg)
            assert first is not None
            self._reject(
                events,
                "no_checksum",
                first.group()[:_EXCERPT].encode("latin-1"),
                open_bytes,
                "NMEA sentence without a '*hh' checksum",
                count=open_lines,
            )
        if lines > open_lines:
            cut = _CUT_LINE.search(text, pos, end + 1)
            assert cut is not None
            self._reject(
                events,
                "truncated",
                cut.group()[:_EXCERPT].encode("latin-1"),
                line_bytes - open_bytes,
                "NMEA line cut short by byte 0x%02X before its line end",
                ord(text[cut.end()]),
                count=lines - open_lines,
            )
        return end

    def _nmea(self, text: str, pos: int, n: int, events: list[Event]) -> int:
        """Decide on a line at `pos` that `_JUNK` left: one that ends in `*hh` and a line
        end, an overlong one, or one not complete yet; return bytes consumed, 0 to wait."""
        end = _SENTENCE_RUN.match(text, pos + 1, min(n, pos + MAX_SENTENCE + 1)).end()
        if end - pos > MAX_SENTENCE:
            self._reject(
                events,
                "overlong",
                self._raw[pos:end],
                end - pos,
                "NMEA line longer than %d bytes (NMEA 0183 allows 82); dropped up to its end",
                MAX_SENTENCE,
            )
            self._discarding = True
            return end - pos
        if end == n:
            return 0
        self._line(text[pos:end], self._raw[pos:end], events)
        return end - pos

    def _line(self, line: str, raw: bytes, events: list[Event]) -> None:
        """A whole line ending in `*hh` (`line` is `raw` as text): check it, then emit it,
        count it as unsupported, or reject it."""
        n = len(raw)
        digits = line[-2:]
        if digits not in _HEX_PAIRS:
            self._reject(events, "checksum", raw, n, "checksum field %r is not hex", digits)
            return
        want = int(digits, 16)
        got = nmea_checksum(raw[1:-3])
        if want != got:
            self._reject(
                events, "checksum", raw, n, "checksum is %02X, the sentence sums to %02X", want, got
            )
            return
        talker, kind = line[1:3], line[3:6]
        if talker not in TALKERS or kind not in SENTENCE_TYPES or line[6:7] != ",":
            # Proprietary ($PUBX), other talkers, or types we do not use (GST, GBS, ...).
            self.stats.unsupported += 1
            self.stats.unsupported_bytes += n
            return
        fields_text = line[7:-3]
        if "*" in fields_text:
            self._reject(
                events, "parse", raw, n, "%s%s: a field holds the reserved '*'", talker, kind
            )
            return
        self.stats.sentences += 1
        self.stats.sentence_bytes += n
        if self._on_sentence is None:
            events.append(Sentence(talker, kind, fields_text, raw))
        else:
            self._on_sentence([line])

    # -- UBX ----------------------------------------------------------------------------

    def _ubx(self, text: str, pos: int, n: int, events: list[Event]) -> int:
        """Decide on the frame at `pos` (sync seen), and on any that follows at once, with
        garbage between them; return where they end, `pos` to wait for the rest of a frame.

        A false sync drops the two sync bytes only and the scan goes on after them, as gpsd
        does: if it was noise that looked like a header, the sentences behind it are still
        found. Its checksum test is constant-time (prefix sums over this feed, see
        `_prefix_sums`) however long a payload it claims, and the runs of syncs and garbage
        that noise or a hostile device can pack are taken in this loop, a few operations
        each.
        """
        raw = self._raw
        garbage = garbage_bytes = 0
        first_garbage: re.Match[str] | None = None
        if self._prefix is None:
            self._prefix = _prefix_sums(raw)
        sums, weighted = self._prefix
        long_sync = bad_sync = -1  # where the first false sync of each kind was
        long_count = bad_count = 0
        while True:
            if n - pos < 6:
                break
            length = raw[pos + 4] | (raw[pos + 5] << 8)
            if length > MAX_UBX_PAYLOAD:
                # Longer than any NEO-6 output: taken as a false sync.
                long_count += 1
                if long_sync < 0:
                    long_sync = pos
                pos += 2
            else:
                end = pos + 6 + length  # the checksum's position
                if end + 2 > n:
                    break  # frame not complete yet
                total = sums[end] - sums[pos + 2]
                if (
                    raw[end] == total & 0xFF
                    and raw[end + 1] == (end * total - weighted[end] + weighted[pos + 2]) & 0xFF
                ):
                    self.stats.ubx_frames += 1
                    self.stats.ubx_bytes += end + 2 - pos
                    events.append(UbxFrame(raw[pos : end + 2]))
                    pos = end + 2
                else:
                    bad_count += 1
                    if bad_sync < 0:
                        bad_sync = pos
                    pos += 2
            if text.startswith("\xb5b", pos):
                continue
            unit = _GARBAGE_RUN.match(text, pos)
            while unit is not None:
                garbage += 1
                garbage_bytes += unit.end() - pos
                if first_garbage is None:
                    first_garbage = unit
                pos = unit.end()
                unit = _GARBAGE_RUN.match(text, pos)
            if not text.startswith("\xb5b", pos):
                break
        if long_count:
            self._reject(
                events,
                "ubx_length",
                raw[long_sync : long_sync + 6],
                2 * long_count,
                "UBX length %d above %d; taken as a false sync",
                raw[long_sync + 4] | (raw[long_sync + 5] << 8),
                MAX_UBX_PAYLOAD,
                count=long_count,
            )
        if bad_count:
            self._reject(
                events,
                "ubx_checksum",
                raw[bad_sync : bad_sync + _EXCERPT],
                2 * bad_count,
                "UBX class 0x%02X id 0x%02X: Fletcher checksum mismatch",
                raw[bad_sync + 2],
                raw[bad_sync + 3],
                count=bad_count,
            )
        if first_garbage is not None:
            self.stats.garbage_bytes += garbage_bytes
            self._reject(
                events,
                "garbage",
                raw[first_garbage.start() : first_garbage.end()],
                0,
                "%d bytes outside any NMEA/UBX frame",
                first_garbage.end() - first_garbage.start(),
                count=garbage,
            )
        return pos

    # -- rejects ------------------------------------------------------------------------

    def _reject(
        self,
        events: list[Event],
        kind: str,
        raw: bytes,
        consumed: int,
        detail: str,
        *args: object,
        count: int = 1,
    ) -> None:
        """Note `count` rejects of `kind` that used `consumed` bytes (for rejected_bytes).

        The first of its kind in this feed becomes an event, with `detail % args` formatted
        only then; the counters, and the event's count, are brought up to date when the feed
        ends.
        """
        seen = self._errors.get(kind)
        if seen is not None:
            seen[1] += count
            seen[2] += consumed
            return
        self._errors[kind] = [len(events), count, consumed]
        events.append(DecodeError(kind, detail % args, raw[:_EXCERPT]))
