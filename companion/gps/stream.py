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
regular expression over the run and one vectorised XOR per line for the checksums (numpy),
so the per-sentence Python work is splitting the fields. A line that is anything but
well-formed (bad checksum, lower-case digits, reserved characters, unknown type, no line
end yet) ends the run and goes through the byte-level path above, which names the fault.
`Sentence.fields` are the raw text fields; `Sentence.msg`, pynmea2's object for them, is
built only when asked for.

Every byte fed is accounted for in exactly one byte counter of `StreamStats` once it has
been decided on, and the ones not yet decided on are `pending`; `StreamStats.accounted()`
checks that the buckets add up to `bytes_in`.
"""

from __future__ import annotations

import re
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

_SYNC1 = 0xB5
_SYNC2 = 0x62
_CR = 0x0D
_LF = 0x0A
_DOLLAR = 0x24
_HEX = frozenset(b"0123456789ABCDEFabcdef")
_EXCERPT = 40


class Sentence:
    """A checksum-verified NMEA sentence of a supported talker and type.

    `fields` are the comma-separated fields after the address field, as text; `raw` is the
    sentence from `$` to the checksum digits, without the line end. `msg` is the pynmea2
    sentence object for the same fields (`msg.lat`, `msg.timestamp`, ...), built on first
    use: the epoch assembler reads `fields` directly, so the hot path does not pay for
    pynmea2's attribute machinery on every sentence of a 5 Hz stream.
    """

    __slots__ = ("_msg", "fields", "raw", "sentence_type", "talker")

    def __init__(self, talker: str, sentence_type: str, fields: list[str], raw: bytes) -> None:
        self.talker = talker
        self.sentence_type = sentence_type
        self.fields = fields
        self.raw = raw
        self._msg: pynmea2.NMEASentence | None = None

    @property
    def msg(self) -> pynmea2.NMEASentence:
        if self._msg is None:
            cls = pynmea2.TalkerSentence.sentence_types[self.sentence_type]
            self._msg = cls(self.talker, self.sentence_type, list(self.fields))
        return self._msg

    def __repr__(self) -> str:
        return f"Sentence({self.raw!r})"


@dataclass(frozen=True)
class UbxFrame:
    """A UBX frame whose Fletcher checksum matched, decoded by pyubx2; `raw` is the frame."""

    msg: UBXMessage
    raw: bytes


@dataclass(frozen=True)
class DecodeError:
    """Input that was rejected. `kind` is one of `ERROR_KINDS`; `raw_excerpt` its first bytes."""

    kind: str
    detail: str
    raw_excerpt: bytes


ERROR_KINDS = (
    "garbage",  # bytes outside any frame
    "truncated",  # an NMEA line cut short by a new `$` or a non-printable byte
    "overlong",  # an NMEA line longer than MAX_SENTENCE
    "no_checksum",  # an NMEA line without a `*hh` checksum field
    "checksum",  # an NMEA checksum mismatch
    "parse",  # checksum fine, but a field holds the reserved '*' (NMEA 0183 §6.1.4)
    "ubx_length",  # a UBX length field above MAX_UBX_PAYLOAD (taken as a false sync)
    "ubx_checksum",  # a UBX Fletcher checksum mismatch
    "ubx_parse",  # checksum fine, but pyubx2 cannot decode the frame
)


@dataclass
class StreamStats:
    """Counters. Event counters count items; `*_bytes` counters count bytes.

    Invariant (tested): bytes_in == sentence_bytes + unsupported_bytes + ubx_bytes
    + rejected_bytes + garbage_bytes + line_end_bytes + pending, where `pending` is what
    `NmeaUbxStream` still holds undecided. For each kind in ERROR_KINDS other than
    "garbage", the counter of that name (e.g. `checksum`, `ubx_checksum`) equals the number
    of DecodeError events of that kind emitted; `garbage` counts the garbage runs reported.
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
    ubx_parse: int = 0
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


def _run_end(buf: bytearray, start: int, limit: int) -> int:
    """Where the run of sentence-body bytes from `start` ends (at most `limit`)."""
    match = _SENTENCE_RUN.match(buf, start, limit)
    return match.end() if match is not None else start


def ubx_checksum(body: bytes) -> bytes:
    """The 8-bit Fletcher CK_A, CK_B over class, id, length and payload (NEO-6 spec §31)."""
    ck_a = ck_b = 0
    for b in body:
        ck_a = (ck_a + b) & 0xFF
        ck_b = (ck_b + ck_a) & 0xFF
    return bytes((ck_a, ck_b))


# Inside a sentence only printable ASCII 0x20..0x7E is allowed (NMEA 0183 §6.1), and `$`
# only as the first character: a run of these is a sentence body, anything else ends it.
# A compiled pattern finds the end of the run in C instead of a Python loop per byte.
_SENTENCE_RUN = re.compile(rb"[\x20-\x23\x25-\x7e]*")

# The common case, matched whole in C: a supported talker and type, fields without `$` or
# `*`, upper-case checksum digits, within MAX_SENTENCE, and its line end already received.
# Anything else, and a line whose checksum does not add up, takes the byte-by-byte path
# that says what is wrong.
_GOOD_LINE = re.compile(
    r"\$(%s)(%s),([\x20-\x23\x25-\x29\x2b-\x7e]{0,%d})\*([0-9A-F]{2})(\r\n|\r|\n)"  # noqa: UP031
    % (
        "|".join(sorted(TALKERS)),
        "|".join(sorted(SENTENCE_TYPES)),
        MAX_SENTENCE - len("$GPGGA,*hh"),
    )
)
_UPPER_HEX = [f"{value:02X}" for value in range(256)]

# Most bytes one `_good_lines` call looks at: bounds the text decoded per call.
_RUN_WINDOW = 16384


class NmeaUbxStream:
    """Byte stream in, events out. One instance per serial port; keep it across reopens."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._discarding = False  # inside an overlong line, dropping until its end
        self.stats = StreamStats()

    @property
    def pending(self) -> int:
        """Bytes held, not yet decided on (at most MAX_PENDING)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Event]:
        """Add bytes read from the receiver; return the events they complete, in order."""
        self.stats.bytes_in += len(data)
        self._buf += data
        events: list[Event] = []
        buf = self._buf
        pos = 0
        n = len(buf)
        while pos < n:
            if self._discarding:
                end = _run_end(buf, pos, n)
                self.stats.rejected_bytes += end - pos
                pos = end
                if end < n:
                    self._discarding = False
                continue
            b = buf[pos]
            if b in (_CR, _LF):
                self.stats.line_end_bytes += 1
                pos += 1
            elif b == _DOLLAR:
                used = self._good_lines(buf, pos, events)
                if used:
                    pos += used
                    continue
                used = self._nmea(buf, pos, n, events)
                if used == 0:
                    break
                pos += used
            elif b == _SYNC1:
                if pos + 1 >= n:
                    break
                if buf[pos + 1] != _SYNC2:
                    pos += self._garbage(buf, pos, n, events)
                    continue
                used = self._ubx(buf, pos, n, events)
                if used == 0:
                    break
                pos += used
            else:
                pos += self._garbage(buf, pos, n, events)
        del buf[:pos]
        return events

    # -- NMEA ---------------------------------------------------------------------------

    def _good_lines(self, buf: bytearray, pos: int, events: list[Event]) -> int:
        """Take the run of well-formed lines starting at `pos`; return the bytes consumed.

        The run is matched as text in C and its checksums computed in one vectorised pass
        (an XOR reduction per line), which is what lets the decoder outrun a plain pynmea2
        loop while doing more. The run stops at the first line whose checksum fails,
        leaving it to `_nmea` to reject with a reason, and at `_RUN_WINDOW` bytes, so a long
        feed broken up by noise costs linear time.
        """
        chunk = bytes(buf[pos : pos + _RUN_WINDOW])
        text = chunk.decode("latin-1")
        run = []
        end = 0
        for match in _GOOD_LINE.finditer(text):
            if match.start() != end:
                break
            run.append(match)
            end = match.end()
        if not run:
            return 0
        bounds = []
        for match in run:
            bounds += (match.start() + 1, match.start(4) - 1)
        sums = numpy.bitwise_xor.reduceat(
            numpy.frombuffer(chunk, dtype=numpy.uint8, count=end), bounds
        )[0::2].tolist()
        consumed = sentence_bytes = accepted = 0
        for match, got in zip(run, sums, strict=True):
            talker, kind, fields_text, digits, line_end = match.groups()
            if digits != _UPPER_HEX[got]:
                break
            start, consumed = match.span()
            raw = chunk[start : consumed - len(line_end)]
            sentence_bytes += len(raw)
            accepted += 1
            events.append(Sentence(talker, kind, fields_text.split(","), raw))
        stats = self.stats
        stats.sentences += accepted
        stats.sentence_bytes += sentence_bytes
        stats.line_end_bytes += consumed - sentence_bytes
        return consumed

    def _nmea(self, buf: bytearray, pos: int, n: int, events: list[Event]) -> int:
        """Decide on the line at `pos`; return bytes consumed, 0 to wait for more."""
        end = _run_end(buf, pos + 1, min(n, pos + MAX_SENTENCE + 1))
        if end - pos > MAX_SENTENCE:
            raw = bytes(buf[pos:end])
            self._reject(
                events,
                "overlong",
                f"NMEA line longer than {MAX_SENTENCE} bytes (NMEA 0183 allows 82); dropped "
                "up to its end",
                raw,
            )
            self._discarding = True
            return end - pos
        if end == n:
            return 0  # line not complete yet
        raw = bytes(buf[pos:end])
        if buf[end] not in (_CR, _LF):
            self._reject(
                events,
                "truncated",
                f"NMEA line cut short by byte 0x{buf[end]:02X} before its line end",
                raw,
            )
            return end - pos
        self._line(raw, events)
        return end - pos

    def _line(self, raw: bytes, events: list[Event]) -> None:
        star = raw.rfind(b"*")
        if star < 0 or len(raw) - star != 3:
            self._reject(events, "no_checksum", "NMEA sentence without a '*hh' checksum", raw)
            return
        digits = raw[star + 1 :]
        if not all(c in _HEX for c in digits):
            self._reject(events, "checksum", f"checksum field {digits!r} is not hex", raw)
            return
        want = int(digits, 16)
        got = nmea_checksum(raw[1:star])
        if want != got:
            self._reject(
                events, "checksum", f"checksum is {want:02X}, the sentence sums to {got:02X}", raw
            )
            return
        talker, kind = raw[1:3].decode("ascii"), raw[3:6].decode("ascii")
        if talker not in TALKERS or kind not in SENTENCE_TYPES or raw[6:7] != b",":
            # Proprietary ($PUBX), other talkers, or types we do not use (GST, GBS, ...).
            self.stats.unsupported += 1
            self.stats.unsupported_bytes += len(raw)
            return
        fields_text = raw[7:star]
        if b"*" in fields_text:
            self._reject(events, "parse", f"{talker}{kind}: a field holds the reserved '*'", raw)
            return
        self.stats.sentences += 1
        self.stats.sentence_bytes += len(raw)
        events.append(Sentence(talker, kind, fields_text.decode("ascii").split(","), raw))

    # -- UBX ----------------------------------------------------------------------------

    def _ubx(self, buf: bytearray, pos: int, n: int, events: list[Event]) -> int:
        """Decide on the frame at `pos` (sync seen); return bytes consumed, 0 to wait."""
        if n - pos < 6:
            return 0
        length = buf[pos + 4] | (buf[pos + 5] << 8)
        if length > MAX_UBX_PAYLOAD:
            # Treated as a false sync: drop the two sync bytes only and rescan what follows.
            self._reject(
                events,
                "ubx_length",
                f"UBX length {length} above {MAX_UBX_PAYLOAD}; taken as a false sync",
                bytes(buf[pos : pos + 6]),
                consumed=2,
            )
            return 2
        total = length + _UBX_OVERHEAD
        if n - pos < total:
            return 0
        raw = bytes(buf[pos : pos + total])
        if ubx_checksum(raw[2:-2]) != raw[-2:]:
            # As gpsd does, only the sync bytes are dropped: if this was noise that looked
            # like a header, the sentences behind it are still found.
            self._reject(
                events,
                "ubx_checksum",
                f"UBX class 0x{raw[2]:02X} id 0x{raw[3]:02X}: Fletcher checksum mismatch",
                raw,
                consumed=2,
            )
            return 2
        try:
            msg = UBXReader.parse(raw)
        except Exception as exc:  # pyubx2 raises several types; none may escape
            self._reject(
                events, "ubx_parse", f"UBX class 0x{raw[2]:02X} id 0x{raw[3]:02X}: {exc}", raw
            )
            return total
        self.stats.ubx_frames += 1
        self.stats.ubx_bytes += total
        events.append(UbxFrame(msg, raw))
        return total

    # -- rejects ------------------------------------------------------------------------

    def _garbage(self, buf: bytearray, pos: int, n: int, events: list[Event]) -> int:
        end = pos + 1
        while end < n and buf[end] not in (_DOLLAR, _SYNC1, _CR, _LF):
            end += 1
        raw = bytes(buf[pos:end])
        self.stats.garbage += 1
        self.stats.garbage_bytes += len(raw)
        events.append(
            DecodeError("garbage", f"{len(raw)} bytes outside any NMEA/UBX frame", raw[:_EXCERPT])
        )
        return end - pos

    def _reject(
        self,
        events: list[Event],
        kind: str,
        detail: str,
        raw: bytes,
        consumed: int | None = None,
    ) -> None:
        setattr(self.stats, kind, getattr(self.stats, kind) + 1)
        self.stats.rejected_bytes += len(raw) if consumed is None else consumed
        events.append(DecodeError(kind, detail, raw[:_EXCERPT]))
