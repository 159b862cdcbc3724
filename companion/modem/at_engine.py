"""Sans-I/O AT-command engine for the SIMCom A7670 (A76xx) modem.

The engine owns no port, thread or clock: the caller writes what `outgoing(now)` returns,
feeds what it read to `receive(data, now)` and calls `poll(now)` for timeouts. That keeps
every exchange testable byte by byte, with the exchanges of the manual and of real logs.

What it does, after the A76XX AT Command Manual V1.09 (§1.4, §1.5.2) and real sessions:
- One command in flight, the rest queued: the host "must wait for the final result code
  before sending the next command" (§1.5.2). A queued command can be withdrawn (`cancel`)
  until it is sent, so a caller that gave up never leaves an orphan behind.
- Lines are framed by CR LF, LF or CR; a CR LF pair is one line end, so a line may be empty
  where that means something (an empty SMS body).
- Echo (ATE1, the default after power-up, §2.2.8) of the in-flight line is recognised and
  skipped, whether or not `echo_expected` says so.
- A line whose prefix is the in-flight command's own (`AT+CPIN?` -> `+CPIN: READY`) belongs
  to it; any other known URC prefix is a `Urc` wherever it arrives, even between echo and
  OK (real logs show `+CGEV: EPS PDN ACT 1` and `SMS DONE` inside `AT+CGDCONT`, `PB DONE`
  and `SMS DONE` inside `AT+CMQTTCONNECT`). Set commands of the registration/SIM family
  (`AT+CEREG=2`, `AT+CPIN="1234"`) answer only OK, so their prefix lines stay URCs.
- Unknown lines during a command are its information lines (`Manufacturer: ...`); with no
  command in flight they come out as `Urc(name="")`, counted as garbage, never dropped. An
  answer keeps at most `MAX_RESPONSE` bytes; past that it ends in error kind "overflow".
- Final result codes: OK, ERROR, `+CME ERROR: <n|text>`, `+CMS ERROR: <n|text>`,
  NO CARRIER (§28.3, §28.4); errors carry the manual's text (`at_errors`).
- The `> ` data prompt (no line end; TOPIC/PAYLOAD/WILLTOPIC/WILLMSG/SUB/CMGS) releases the
  command's `data` through `outgoing()` exactly once. If the module echoes that data, the
  echo is skipped too (only when it echoed the command line itself).
- Result-URC commands (`result_urc`, §18.2: `OK` then `+CMQTTCONNECT: 0,<err>`): after OK
  the command waits for the result line; the reverse order (`+CMQTTDISC: 0,0` before OK,
  §18.2.3) and `+CMQTTPUB: 0,11` / ERROR are handled; `<err>` != 0 is an error of kind
  "result" with the MQTT (§18.3.1) or socket (§15.3.2) meaning. `+CMQTTREL: 0,20` / ERROR
  (no `result_urc`) also reports "client not acquired".
- `+CMQTTRXSTART` .. `+CMQTTRXEND` (§18.4): topic and payload chunks are read by length as
  raw bytes (they may hold CR, LF, NUL, "OK"), checked against the totals RXSTART announced
  (a chunk past them is an error, and its bytes are still read, never parsed), joined, and
  emitted as one `MqttMessage`.
- SMS bodies are data, never lines (§9.2.11 CMGL, §9.2.12 CMGR, §9.2.19 CMGRD, §9.2.9 CMT,
  CBM, CDS): after such a header, wherever it arrives (even late, after its command timed
  out), the body is read by the manual's framing and handed over as `SmsData`. PDU mode:
  one line of hex, checked against the header's `<length>` (TPDU octets plus the SMSC
  octets the PDU starts with). Text mode with AT+CSDH=1: exactly `<length>` characters, or
  2 x `<length>` hex digits when `<dcs>` says 8-bit/UCS2 or `<fo>` has a user-data header,
  then a line end. Text mode without `<length>` (AT+CSDH=0, or a framing that did not
  hold) cannot be framed: the body may hold "OK" or anything else on lines of its own, so
  every byte until the command's deadline (`UNFRAMED_URC_S` for a URC) is held as data,
  none of it parsed; the command then ends in error kind "unframed".
- A line without an end is held up to `MAX_LINE` bytes; longer ones are cut and counted.
- After a timeout the late answer of the timed-out command may still come. While the module
  is known to echo, an answer that arrives for the next command before that command's echo
  is that late answer, and is reported as stale instead of being matched to the wrong
  command. Without echo (after ATE0), a line with the timed-out command's prefix that
  arrives while another command is in flight, within that command's timeout again, starts
  the late answer: it and every line up to its final result code are stale. (A late answer
  with no information line, a bare OK, cannot be told from the current one without echo.)
  If the module turns out not to echo, the engine stops relying on echo.

Nothing in `receive`, `poll` or `outgoing` raises on any input bytes; `submit` raises
ValueError only for a command line that is not one AT command (a caller bug). Held state is
bounded: the line buffer by `MAX_LINE`, an MQTT message by `MAX_RX_TOPIC` and
`MAX_RX_PAYLOAD`, an answer by `MAX_RESPONSE`, an unframed SMS body by `MAX_UNFRAMED`.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field, fields

from companion.modem.at_errors import AtError, final_error, is_cme_or_cms, result_error

__all__ = [
    "MAX_LINE",
    "MAX_RESPONSE",
    "MAX_RX_CHUNK",
    "MAX_RX_PAYLOAD",
    "MAX_RX_TOPIC",
    "MAX_UNFRAMED",
    "UNFRAMED_URC_S",
    "URC_NAMES",
    "AtCommand",
    "AtEngine",
    "AtError",
    "AtResponse",
    "AtStats",
    "MqttMessage",
    "SmsData",
    "Urc",
    "ascii_int",
    "command_label",
    "redact",
    "sms_framing",
]

# Longest line we hold. The module accepts command lines up to 3071 characters (§1.5.2) and
# its longest answers (AT+SIMCOMATI, AT+COPS=?) stay well under this; more is garbage.
MAX_LINE = 4096

# Largest `+CMQTTRXTOPIC`/`+CMQTTRXPAYLOAD` chunk we read by length: payloads total at most
# 10240 bytes (§18.4). A header announcing more is garbage, and reading it by length would
# swallow the good lines that follow.
MAX_RX_CHUNK = 10240
# What RXSTART may announce (§18.4: topic 1-1024, payload 0-10240 bytes).
MAX_RX_TOPIC = 1024
MAX_RX_PAYLOAD = 10240

# Most bytes of information lines and SMS bodies one answer keeps. The largest answer the
# driver asks for is an AT+CMGL listing of a full 180-message store in PDU mode (each at
# most ~370 characters with its header): about 67 KB.
MAX_RESPONSE = 128 * 1024

# An unframed SMS body is held as data until the command's deadline; this much is kept
# (a module at 115200 baud sends ~100 KB in 9 s), the rest counted as dropped.
MAX_UNFRAMED = 16 * 1024
# How long the bytes after an unframed `+CMT`/`+CBM` URC are held as its data: the module
# sends the URC and its body in one burst.
UNFRAMED_URC_S = 2.0

# The TPDU of one SMS is at most 164 octets (3GPP TS 23.040 §9.2.2: SMS-SUBMIT with a 12-octet
# address and 140 octets of user data); a CBM page is 88. A header that announces more than a
# length octet can say cannot be framed.
_MAX_SMS_LENGTH = 255

URC_NAMES: frozenset[str] = frozenset(
    {
        # boot and SIM (§6.2, real logs)
        "*ATREADY",
        "RDY",
        "+CPIN",
        "SMS DONE",
        "PB DONE",
        "*ISIMAID",
        "+MSTK",
        # network registration and bearer (§4.2.1, §5.2.1, §5.2.2, §5.2.x CGEV)
        "+CEREG",
        "+CREG",
        "+CGREG",
        "+CGEV",
        "+CSQ",
        "+CTZV",
        "+CTZE",
        # SMS (§9.2.9): stored-message indications and messages routed to the host
        "+CMTI",
        "+CDSI",
        "+CMT",
        "+CBM",
        "+CDS",
        # MQTT (§18.4) and late result lines of MQTT commands
        "+CMQTTCONNLOST",
        "+CMQTTNONET",
        "+CMQTTSTART",
        "+CMQTTSTOP",
        "+CMQTTCONNECT",
        "+CMQTTDISC",
        "+CMQTTPUB",
        "+CMQTTSUB",
        "+CMQTTUNSUB",
        "+CMQTTPING",
        # sockets (§15.4) and late result lines of socket commands
        "+CIPEVENT",
        "+IPCLOSE",
        "+CLIENT",
        "+NETOPEN",
        "+NETCLOSE",
        "+CIPOPEN",
        "+CIPCLOSE",
    }
)

# Write forms of these answer only OK (§4.2.1, §5.2.2, §6.2.2); a `+CPIN:`/`+CEREG:` line
# during them is the unsolicited state change the write caused, not an information line.
_URC_ONLY_WHEN_WRITTEN = frozenset({"+CPIN", "+CEREG", "+CREG", "+CGREG"})

# Header lines followed by an SMS body (§9.2.9, §9.2.11, §9.2.12, §9.2.19).
_SMS_HEADERS = frozenset({"+CMGR", "+CMGRD", "+CMGL", "+CMT", "+CBM", "+CDS"})

# Prefixes whose `<idx>,<err>` line before ERROR names the failure (§18.2, §15.2).
_SOCKET_RESULT_PREFIXES = frozenset({"+NETOPEN", "+NETCLOSE", "+CIPOPEN", "+CIPCLOSE"})

_COMMAND_PREFIX_RE = re.compile(r"^AT([+*][A-Z0-9]+)", re.IGNORECASE)
_LINE_PREFIX_RE = re.compile(r"^([+*][A-Za-z0-9]+)\s*:")
_RX_HEAD_RE = re.compile(r"^\+CMQTTRX(START|TOPIC|PAYLOAD|END)\s*:(.*)$")
_ECHO_SWITCH_RE = re.compile(r"^ATE([01]?)$", re.IGNORECASE)
_IPERROR_RE = re.compile(r"^\+IP ?ERROR\s*:\s*(.+)$")
_ASCII_INT_RE = re.compile(r"[0-9]{1,6}")
_QUOTED_RE = re.compile(r'"[^"]*"')
_HEX = frozenset(b"0123456789ABCDEFabcdef")
_CR = 0x0D
_LF = 0x0A
_PROMPT = 0x3E  # ">"
_SPACE = 0x20


def ascii_int(text: str) -> int | None:
    """`text` as a number if it is 1-6 ASCII digits, else None.

    `str.isdigit()` is true for "²" and "٣", which `int()` refuses or reads; module output
    is ASCII, so anything else is not a number.
    """
    text = text.strip()
    return int(text) if _ASCII_INT_RE.fullmatch(text) else None


def redact(line: str) -> str:
    """A command line fit for a log or an error: quoted parameters (passwords, PINs, phone
    numbers) replaced by "…", numbers kept."""
    return _QUOTED_RE.sub('"…"', line)


def command_label(line: str) -> str:
    """The command without its parameters: `AT+CMQTTCONNECT=0,"tcp://…","pw"` ->
    "AT+CMQTTCONNECT"."""
    return line.split("=", 1)[0]


@dataclass(frozen=True)
class AtCommand:
    """One AT command line and how to wait for its answer.

    `timeout_s` is the manual's Max Response Time for the final result code (counted again
    from the moment `data` is handed out, since the module answers after the data);
    `result_urc` names the result line that completes the command after OK (for example
    "+CMQTTCONNECT"), waited for up to `urc_timeout_s`. Its repr is redacted (`redact`):
    command lines carry passwords and PINs, and reprs end up in logs and errors.
    """

    line: str
    timeout_s: float = 9.0
    data: bytes | None = None
    result_urc: str | None = None
    urc_timeout_s: float = 30.0

    def __repr__(self) -> str:
        data = "" if self.data is None else f", data=<{len(self.data)} bytes>"
        urc = "" if self.result_urc is None else f", result_urc={self.result_urc!r}"
        return f"AtCommand({redact(self.line)!r}, timeout_s={self.timeout_s:g}{data}{urc})"


@dataclass(frozen=True)
class SmsData:
    """The body after an SMS header line, read by the manual's framing, never as lines.

    `framing`: "pdu" (one hex line checked against the header's `<length>`), "length" (text
    mode with `<length>`: that many characters, or twice as many hex digits), or "unframed"
    (text mode without `<length>`, or a framing that did not hold: every byte until the
    deadline, held as data). `problem` says why the framing did not hold; None when it did.
    """

    header: str
    data: bytes
    framing: str
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass(frozen=True)
class AtResponse:
    """How a command ended: its information lines, final code, result line and error, and
    the SMS bodies that followed its header lines (`data`, in order)."""

    command: AtCommand
    lines: tuple[str, ...]
    final: str
    result_line: str | None = None
    error: AtError | None = None
    data: tuple[SmsData, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Urc:
    """An unsolicited line. `name` is its prefix ("+CMTI", "SMS DONE"), "" for garbage;
    `data` is the SMS body of a `+CMT`/`+CBM`/`+CDS` (or of a late `+CMGR` header)."""

    name: str
    line: str
    data: SmsData | None = None


@dataclass(frozen=True)
class MqttMessage:
    """A message the broker delivered, assembled from `+CMQTTRXSTART` .. `+CMQTTRXEND`."""

    client: int
    topic: str
    payload: bytes


@dataclass
class AtStats:
    """Counters for the log and for tests: what the engine saw and decided."""

    bytes_in: int = 0
    lines: int = 0
    urcs: int = 0
    garbage_lines: int = 0
    overlong_lines: int = 0
    overflow_lines: int = 0
    stale_lines: int = 0
    echoes: int = 0
    data_echoes: int = 0
    prompts: int = 0
    commands_sent: int = 0
    cancelled: int = 0
    responses: int = 0
    timeouts: int = 0
    aborted: int = 0
    mqtt_messages: int = 0
    mqtt_rx_errors: int = 0
    sms_bodies: int = 0
    sms_framing_errors: int = 0
    unframed_bytes_dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


Event = AtResponse | Urc | MqttMessage


def command_prefix(line: str) -> str | None:
    """The response prefix of a command line: `AT+CPIN?` -> "+CPIN"; None for `ATE0`, `AT`."""
    match = _COMMAND_PREFIX_RE.match(line.strip())
    return match.group(1).upper() if match else None


def line_name(line: str) -> str | None:
    """The name a response line goes by: its `+X`/`*X` prefix, or the whole line if it is a
    known bare URC ("SMS DONE", "+CMQTTNONET"); None for anything else."""
    match = _LINE_PREFIX_RE.match(line)
    if match:
        return match.group(1).upper()
    return line if line in URC_NAMES else None


def _result_code(line: str) -> int | None:
    """The `<err>` of a result line: `+NETOPEN: 0` -> 0, `+CMQTTCONNECT: 0,32` -> 32.

    Only the one- and two-field integer forms are result lines; anything else (a query
    answer such as `+CMQTTCONNECT: 0,"tcp://...",20,1`) has no `<err>`.
    """
    _, _, rest = line.partition(":")
    parts = rest.split(",")
    if len(parts) > 2:
        return None
    numbers = [ascii_int(p) for p in parts]
    if any(n is None for n in numbers):
        return None
    return numbers[-1]


def _csv(text: str) -> list[tuple[str, bool]]:
    """Comma-separated fields of an answer line, double-quoted strings kept whole (an scts
    "08/01/30,20:40:31+00" holds a comma): (text, quoted) pairs."""
    out: list[tuple[str, bool]] = []
    current: list[str] = []
    quoted = in_quotes = False
    for ch in text:
        if ch == '"':
            in_quotes = not in_quotes
            quoted = True
        elif ch == "," and not in_quotes:
            out.append(("".join(current).strip(), quoted))
            current, quoted = [], False
        else:
            current.append(ch)
    out.append(("".join(current).strip(), quoted))
    return out


def _dcs_is_octets(dcs: int) -> bool:
    """Whether a data coding scheme carries 8-bit or UCS2 data, which text mode shows as hex
    (3GPP TS 23.038 §4: general coding groups 00xx/01xx bits 3..2, 1110 UCS2, 1111 bit 2)."""
    group = dcs >> 4
    if group <= 0b0111:
        return (dcs >> 2) & 0b11 in (0b01, 0b10)
    if group == 0b1110:
        return True
    if group == 0b1111:
        return bool(dcs & 0b100)
    return False


def _text_length(fo: tuple[str, bool], dcs: tuple[str, bool], length: tuple[str, bool]) -> int:
    """Wire bytes of a text-mode body: `<length>` characters, or 2 x `<length>` hex digits
    for 8-bit/UCS2 data or a user-data header (§9.2.12 `<data>` 1-4); -1 if unreadable."""
    values = [ascii_int(f[0]) for f in (fo, dcs, length)]
    if any(v is None or f[1] for v, f in zip(values, (fo, dcs, length), strict=True)):
        return -1
    first, scheme, count = values
    assert first is not None and scheme is not None and count is not None
    if count > _MAX_SMS_LENGTH or first > 255 or scheme > 255:
        return -1
    return 2 * count if first & 0x40 or _dcs_is_octets(scheme) else count


def _text_framing(f: list[tuple[str, bool]]) -> tuple[str, int]:
    """Framing of a text-mode CMGR/CMGL body from the fields after `<stat>` (§9.2.12 forms
    1-4): SMS-DELIVER `<oa>,[<alpha>],<scts>[,<tooa>,<fo>,<pid>,<dcs>,<sca>,<tosca>,<length>]`,
    SMS-SUBMIT `<da>,[<alpha>][,<toda>,<fo>,<pid>,<dcs>,[<vp>],<sca>,<tosca>,<length>]`,
    STATUS-REPORT `<fo>,<mr>,[<ra>],[<tora>],<scts>,<dt>,<st>` (no body), SMS-COMMAND
    `<fo>,<ct>[,<pid>,[<mn>],[<da>],[<toda>],<length>]`, CBM `<sn>,<mid>,<dcs>,<page>,<pages>`.
    """
    if not f:
        return "unframed", 0
    first_text, first_quoted = f[0]
    if first_quoted or not first_text:  # an address: SMS-DELIVER or SMS-SUBMIT
        if len(f) == 10:
            deliver = f[2][1]  # the quoted <scts> of a DELIVER; an integer <toda> of a SUBMIT
            fo, dcs = (f[4], f[6]) if deliver else (f[3], f[5])
            count = _text_length(fo, dcs, f[9])
            return ("length", count) if count >= 0 else ("unframed", 0)
        return "unframed", 0
    if len(f) == 2 or (len(f) == 7 and f[5][1]):  # SMS-COMMAND without CSDH, STATUS-REPORT
        return "none", 0
    if len(f) == 7:  # SMS-COMMAND with CSDH: the command data is 8-bit, shown as hex
        count = ascii_int(f[6][0])
        if count is None or f[6][1] or count > _MAX_SMS_LENGTH:
            return "unframed", 0
        return "length", 2 * count
    return "unframed", 0  # CBM and anything else: no <length>


def sms_framing(name: str, line: str) -> tuple[str, int]:
    """How the body after SMS header `line` (prefix `name`, one of +CMGR, +CMGRD, +CMGL,
    +CMT, +CBM, +CDS) is framed: ("pdu", <length> octets), ("length", wire bytes),
    ("unframed", 0) or ("none", 0) when no body follows (a status report, a test answer).
    """
    _, _, rest = line.partition(":")
    f = _csv(rest)
    if f[0][0].startswith("("):  # the test form's list of values (`AT+CMGL=?`)
        return "none", 0
    if name == "+CMGL":  # <index> first, then the +CMGR forms
        if ascii_int(f[0][0]) is None or f[0][1]:
            return "unframed", 0
        f = f[1:]
        name = "+CMGR"
    if name in ("+CMGR", "+CMGRD"):
        if not f or not f[0][0]:
            return "unframed", 0
        stat, stat_quoted = f[0]
        if not stat_quoted:  # PDU mode: <stat>,[<alpha>],<length>
            count = ascii_int(f[-1][0])
            valid = len(f) in (2, 3) and ascii_int(stat) is not None and not f[-1][1]
            if not valid or count is None or count > _MAX_SMS_LENGTH:
                return "unframed", 0
            return "pdu", count
        return _text_framing(f[1:])
    if name == "+CMT":  # PDU: [<alpha>],<length>; text: the SMS-DELIVER fields
        if len(f) == 2 and not f[1][1] and (count := ascii_int(f[1][0])) is not None:
            return ("pdu", count) if count <= _MAX_SMS_LENGTH else ("unframed", 0)
        return _text_framing(f)
    # +CDS / +CBM: PDU mode is `<length>` alone; text-mode +CDS has no body, +CBM's is unframed
    if len(f) == 1 and not f[0][1] and (count := ascii_int(f[0][0])) is not None:
        return ("pdu", count) if count <= _MAX_SMS_LENGTH else ("unframed", 0)
    return ("none", 0) if name == "+CDS" else ("unframed", 0)


def _pdu_problem(name: str, line: bytes, length: int) -> str | None:
    """Why `line` is not the PDU its header announced, or None: hex digits only, and the
    SMSC address octets (their count is the first octet) plus `length` TPDU octets (§9.2.12
    `<length>`, `<pdu>`); a CBM PDU has no SMSC part."""
    if not line or any(b not in _HEX for b in line) or len(line) % 2:
        return "the PDU line is not hexadecimal octets"
    sca = 0 if name == "+CBM" else 1 + int(line[:2], 16)
    expected = 2 * (sca + length)
    if len(line) != expected:
        return f"a PDU of {len(line) // 2} octets where the header announced {expected // 2}"
    return None


@dataclass
class _InFlight:
    command: AtCommand
    prefix: str | None
    urc_own_prefix: bool
    deadline: float
    lines: list[str] = field(default_factory=list)
    data: list[SmsData] = field(default_factory=list)
    size: int = 0
    overflow: int = 0
    echo_seen: bool = False
    prompted: bool = False
    data_sent: bool = False
    ok_seen: bool = False  # OK arrived, waiting for the result line
    result_line: str | None = None
    echo_data: list[str] | None = None
    stale_rejected: int = 0
    unframed: str | None = None  # why its SMS body could not be framed


@dataclass
class _PendingUrc:
    """An unsolicited SMS header whose body is still being read."""

    name: str
    line: str
    stale: bool


@dataclass
class _SmsRead:
    """An SMS body being read after `header`, for `target`."""

    name: str
    header: str
    target: _InFlight | _PendingUrc
    mode: str  # "pdu" | "length"
    count: int
    data: bytearray = field(default_factory=bytearray)


@dataclass
class _Quarantine:
    """Every byte until `until` held as the unframed body of `header`."""

    name: str
    header: str
    target: _InFlight | _PendingUrc
    until: float
    problem: str
    data: bytearray = field(default_factory=bytearray)


@dataclass
class _RxMessage:
    client: int
    topic_total: int
    payload_total: int
    topic: bytearray = field(default_factory=bytearray)
    payload: bytearray = field(default_factory=bytearray)


class AtEngine:
    """The AT command/response/URC state machine; see the module docstring."""

    def __init__(self, *, echo_expected: bool = True) -> None:
        self.stats = AtStats()
        self._queue: deque[AtCommand] = deque()
        self._cur: _InFlight | None = None
        self._now = 0.0
        # Belief about the module's echo: set from evidence (did the last answered command
        # echo? ATE0/ATE1 OK), used only to tell a late answer from the current one.
        self._echo_on: bool = echo_expected
        self._maybe_stale = False
        # Prefixes of timed-out commands whose late answer may still come, until when.
        self._late: dict[str, float] = {}
        self._stale_answer = False  # in a late answer: stale up to its final result code
        # framing
        self._buf = bytearray()
        self._discarding = False
        self._after_cr = False
        self._skip_space = False
        self._raw_need = 0
        self._raw_sink: bytearray | None = None
        self._rx: _RxMessage | None = None
        self._sms: _SmsRead | None = None
        self._quarantine: _Quarantine | None = None

    # ----------------------------------------------------------------- queue side

    @property
    def busy(self) -> bool:
        """A command is in flight (sent, not yet answered)."""
        return self._cur is not None

    @property
    def pending(self) -> int:
        """Commands queued behind the one in flight (not yet sent)."""
        return len(self._queue)

    @property
    def in_flight(self) -> AtCommand | None:
        return self._cur.command if self._cur else None

    @property
    def echo_expected(self) -> bool:
        """Whether the engine currently believes the module echoes (updated by ATE0/ATE1)."""
        return self._echo_on

    @property
    def held_bytes(self) -> int:
        """Bytes the engine holds now (line buffer, MQTT message, answer, SMS body): each part
        is bounded, see the module docstring. For tests and the fuzz harness."""
        held = len(self._buf)
        if self._rx is not None:
            held += len(self._rx.topic) + len(self._rx.payload)
        if self._cur is not None:
            held += self._cur.size
        if self._sms is not None:
            held += len(self._sms.data)
        if self._quarantine is not None:
            held += len(self._quarantine.data)
        return held

    def submit(self, command: AtCommand) -> None:
        """Queue a command. A line that is not one AT command line is a caller bug."""
        line = command.line
        if "\r" in line or "\n" in line:
            raise ValueError(f"AT command line must not contain CR or LF: {redact(line)!r}")
        if not line.strip().upper().startswith("AT"):
            raise ValueError(f"AT command line must start with 'AT': {redact(line)!r}")
        if command.data is not None and not command.data:
            raise ValueError(
                f"empty data for {command_label(line)}: the module wants 1 or more bytes"
            )
        self._queue.append(command)

    def cancel(self, command: AtCommand) -> bool:
        """Withdraw `command` (this very object) if it is still queued; True if it was. A
        command already sent cannot be withdrawn: its answer will come, or its timeout."""
        for queued in self._queue:
            if queued is command:
                self._queue.remove(queued)
                self.stats.cancelled += 1
                return True
        return False

    def outgoing(self, now: float) -> bytes:
        """Bytes to write now: the next command line + CR, or the data after a prompt."""
        self._now = now
        cur = self._cur
        if cur is not None:
            if cur.prompted and not cur.data_sent and cur.command.data is not None:
                cur.data_sent = True
                cur.deadline = now + cur.command.timeout_s
                if cur.echo_seen:
                    cur.echo_data = _echo_lines(cur.command.data)
                return cur.command.data
            return b""
        if not self._queue:
            return b""
        command = self._queue.popleft()
        prefix = command_prefix(command.line)
        written = "=" in command.line and "=?" not in command.line
        self._cur = _InFlight(
            command=command,
            prefix=prefix,
            urc_own_prefix=written and prefix in _URC_ONLY_WHEN_WRITTEN,
            deadline=now + command.timeout_s,
        )
        self.stats.commands_sent += 1
        return command.line.encode("utf-8") + b"\r"

    def poll(self, now: float) -> list[Event]:
        """End what has run out of time: an unframed SMS body held as data (its window is
        over), and the in-flight command if its deadline has passed (final "TIMEOUT")."""
        self._now = now
        out: list[Event] = []
        quarantine = self._quarantine
        if quarantine is not None and now >= quarantine.until:
            self._end_quarantine(out)
        self._late = {p: t for p, t in self._late.items() if t > now}
        cur = self._cur
        if cur is None or now < cur.deadline:
            return out
        command = cur.command
        label = command_label(command.line)  # not the parameters: they may hold a password
        if cur.unframed is not None:
            self.stats.timeouts += 1
            error = AtError("unframed", None, f"{label}: {cur.unframed}")
            out.append(self._complete(cur, "TIMEOUT", error))
            return out
        if cur.ok_seen:
            text = f"OK, but no {command.result_urc} result within {command.urc_timeout_s:g} s"
        elif command.data is not None and not cur.prompted:
            text = f"no '>' prompt or final result code within {command.timeout_s:g} s"
        else:
            text = f"no final result code within {command.timeout_s:g} s"
        self.stats.timeouts += 1
        self._maybe_stale = True
        self._stale_answer = False
        if cur.prefix is not None and not cur.urc_own_prefix and command.result_urc is None:
            self._late[cur.prefix] = now + command.timeout_s
        if cur.stale_rejected:
            # Answers came but never the echo: the module is not echoing after all.
            self._echo_on = False
        sms = self._sms
        if sms is not None and sms.target is cur:
            # The body of its SMS header never finished: what still comes of it is data.
            self._sms = None
            self._raw_need, self._raw_sink = 0, None
            pending = _PendingUrc(sms.name, sms.header, stale=True)
            self._start_quarantine(sms.name, sms.header, pending, "body cut by a timeout", now)
            assert self._quarantine is not None
            self._quarantine.data += sms.data
        out.append(self._complete(cur, "TIMEOUT", AtError("timeout", None, f"{label}: {text}")))
        return out

    def abort_all(self, reason: str) -> list[AtResponse]:
        """Module reset: the in-flight and queued commands all end with error kind "reset"."""
        ended: list[AtResponse] = []
        error = AtError("reset", None, reason)
        if self._cur is not None:
            ended.append(self._complete(self._cur, "ABORTED", error))
        while self._queue:
            ended.append(AtResponse(self._queue.popleft(), (), "ABORTED", None, error))
            self.stats.responses += 1
        self.stats.aborted += len(ended)
        if self._buf or self._raw_need or self._sms is not None or self._quarantine is not None:
            self.stats.garbage_lines += 1
        self._buf.clear()
        self._discarding = self._after_cr = self._skip_space = self._stale_answer = False
        self._raw_need = 0
        self._raw_sink = None
        self._sms = None
        self._quarantine = None
        if self._rx is not None:
            self.stats.mqtt_rx_errors += 1
        self._rx = None
        # The old module's last words may still be on the wire. The echo belief stays: a
        # closed port need not mean a reset module, and the next answer corrects it anyway.
        self._maybe_stale = True
        return ended

    # ----------------------------------------------------------------- receive side

    def receive(self, data: bytes, now: float) -> list[Event]:
        """Process bytes read from the module; return the events they complete, in order."""
        self._now = now
        self.stats.bytes_in += len(data)
        out: list[Event] = []
        quarantine = self._quarantine
        if quarantine is not None and now >= quarantine.until:
            self._end_quarantine(out)
        i, n = 0, len(data)
        while i < n:
            if self._quarantine is not None:
                if self._after_cr and data[i] == _LF:  # the header's line end, not data
                    self._after_cr = False
                    i += 1
                    continue
                self._hold_unframed(data[i:])
                break
            if self._raw_need:
                if self._after_cr:
                    self._after_cr = False
                    if data[i] == _LF:
                        i += 1
                        continue
                take = min(self._raw_need, n - i)
                if self._raw_sink is not None:
                    self._raw_sink += data[i : i + take]
                self._raw_need -= take
                i += take
                continue
            byte = data[i]
            if self._skip_space:
                self._skip_space = False
                if byte == _SPACE:
                    i += 1
                    continue
            if byte == _LF and self._after_cr:
                self._after_cr = False
                i += 1
                continue
            self._after_cr = False
            sms = self._sms
            if sms is not None and sms.mode == "length":
                # The counted text-mode body is complete: its line must end here.
                if byte in (_CR, _LF):
                    self._after_cr = byte == _CR
                    i += 1
                    self._sms = None
                    self._sms_done(sms, bytes(sms.data), "length", None, out)
                    continue
                self._sms_failed(sms, f"no line end after the {sms.count} bytes <length> gave")
                continue
            if byte in (_CR, _LF):
                self._after_cr = byte == _CR
                i += 1
                if self._buf or self._discarding or self._sms is not None:
                    self._end_line(out)
                continue
            if byte == _PROMPT and not self._buf and self._awaiting_prompt():
                self._cur.prompted = True  # type: ignore[union-attr]
                self.stats.prompts += 1
                self._skip_space = True
                i += 1
                continue
            # Bulk: the run of bytes up to the next line end (found in C, not byte by byte).
            cr, lf = data.find(b"\r", i + 1), data.find(b"\n", i + 1)
            j = min(cr if cr >= 0 else n, lf if lf >= 0 else n)
            if not self._discarding:
                if len(self._buf) + (j - i) > MAX_LINE:
                    self._discarding = True
                    self._buf.clear()
                    self.stats.overlong_lines += 1
                else:
                    self._buf += data[i:j]
            i = j
        return out

    def _awaiting_prompt(self) -> bool:
        cur = self._cur
        if cur is None or cur.command.data is None:
            return False
        return not cur.prompted and not cur.ok_seen

    def _end_line(self, out: list[Event]) -> None:
        raw = bytes(self._buf)
        self._buf.clear()
        sms = self._sms
        if self._discarding:
            self._discarding = False
            if sms is not None:  # an overlong line where the PDU should be
                self._sms_failed(sms, f"a line over {MAX_LINE} bytes where the PDU should be")
            return
        if sms is not None and sms.mode == "pdu":  # the next non-empty line is the PDU
            pdu = raw.strip()
            if not pdu:
                return
            problem = _pdu_problem(sms.name, pdu, sms.count)
            if problem is not None:
                sms.data += raw
                self._sms_failed(sms, problem)
                return
            self._sms = None
            self._sms_done(sms, pdu, "pdu", None, out)
            return
        self._on_line(raw, out)

    def _on_line(self, raw: bytes, out: list[Event]) -> None:
        line = raw.decode("utf-8", "replace").strip()
        if not line:
            return
        self.stats.lines += 1
        if line.startswith("+CMQTTRX"):
            self._on_rx_line(line, out)
            return
        cur = self._cur
        if cur is not None:
            if cur.echo_data:
                if line.rstrip("\x1a\x1b") == cur.echo_data[0]:
                    cur.echo_data.pop(0)
                    self.stats.data_echoes += 1
                    return
                cur.echo_data = None
            if not cur.echo_seen and not cur.ok_seen and line == cur.command.line.strip():
                cur.echo_seen = True
                self._maybe_stale = False
                self._stale_answer = False
                self.stats.echoes += 1
                return
        if line in ("OK", "ERROR", "NO CARRIER") or is_cme_or_cms(line):
            stale = self._stale_answer
            self._stale_answer = False
            if cur is None or cur.ok_seen or stale or self._stale(cur):
                self._unsolicited("", line, out, stale=cur is not None or stale)
            else:
                self._on_final(cur, line, out)
            return
        name = line_name(line)
        if self._stale_answer:
            self._unsolicited(name or "", line, out, stale=True)
            return
        if cur is not None and name is not None:
            if name != cur.prefix and name in self._late and not cur.lines:
                # A timed-out command's prefix: its late answer begins (module without echo).
                del self._late[name]
                self._stale_answer = True
                self._unsolicited(name, line, out, stale=True)
                return
            result_urc = (cur.command.result_urc or "").upper()
            if name == result_urc and cur.result_line is None and _result_code(line) is not None:
                if self._stale(cur):
                    self._unsolicited(name, line, out, stale=True)
                    return
                cur.result_line = line
                if cur.ok_seen:
                    out.append(self._finish(cur, "OK"))
                return
            if name == cur.prefix and not cur.urc_own_prefix:
                if self._stale(cur):
                    self._unsolicited(name, line, out, stale=True)
                    return
                self._own_line(cur, name, line, out)
                return
        if name in URC_NAMES:
            self._unsolicited(name, line, out, stale=False)
            return
        if cur is not None:
            self._own_line(cur, name, line, out)
            return
        self._unsolicited("", line, out, stale=False)

    def _own_line(self, cur: _InFlight, name: str | None, line: str, out: list[Event]) -> None:
        """An information line of `cur`, kept within `MAX_RESPONSE`; an SMS header's body
        is read next."""
        if cur.size + len(line) > MAX_RESPONSE:
            cur.overflow += 1
            self.stats.overflow_lines += 1
        else:
            cur.size += len(line)
            cur.lines.append(line)
        if name in _SMS_HEADERS:
            self._start_sms(name, line, cur, out)

    def _stale(self, cur: _InFlight) -> bool:
        """Is an answer arriving now the late answer of an earlier, timed-out command?"""
        if self._maybe_stale and self._echo_on and not cur.echo_seen:
            cur.stale_rejected += 1
            return True
        return False

    def _unsolicited(self, name: str, line: str, out: list[Event], *, stale: bool) -> None:
        header = line_name(line)
        if header in _SMS_HEADERS:
            # Its body follows wherever the header arrives: read it, the Urc comes after it.
            self._start_sms(header, line, _PendingUrc(name, line, stale), out)
            return
        self._emit_urc(name, line, stale, None, out)

    def _emit_urc(
        self, name: str, line: str, stale: bool, data: SmsData | None, out: list[Event]
    ) -> None:
        if stale:
            self.stats.stale_lines += 1
        if name:
            self.stats.urcs += 1
        else:
            self.stats.garbage_lines += 1
        out.append(Urc(name, line, data))

    # ----------------------------------------------------------------- SMS bodies

    def _start_sms(
        self, name: str, header: str, target: _InFlight | _PendingUrc, out: list[Event]
    ) -> None:
        mode, count = sms_framing(name, header)
        if mode == "none":
            if isinstance(target, _PendingUrc):
                self._emit_urc(target.name, target.line, target.stale, None, out)
            return
        if mode == "unframed":
            why = "text-mode SMS header without <length> (AT+CSDH=0): the body has no frame"
            self._start_quarantine(name, header, target, why, self._now)
            return
        sms = _SmsRead(name, header, target, mode, count)
        self._sms = sms
        if mode == "length" and count:
            self._raw_need = count
            self._raw_sink = sms.data

    def _sms_done(
        self,
        sms: _SmsRead | _Quarantine,
        data: bytes,
        framing: str,
        problem: str | None,
        out: list[Event],
    ) -> None:
        body = SmsData(sms.header, data, framing, problem)
        self.stats.sms_bodies += 1
        if problem is not None:
            self.stats.sms_framing_errors += 1
        target = sms.target
        if isinstance(target, _PendingUrc):
            self._emit_urc(target.name, target.line, target.stale, body, out)
            return
        if target.size + len(data) > MAX_RESPONSE:
            target.overflow += 1
            self.stats.overflow_lines += 1
            return
        target.size += len(data)
        target.data.append(body)

    def _sms_failed(self, sms: _SmsRead, problem: str) -> None:
        """The framing did not hold: what was read and everything after it is held as data
        until the deadline, never parsed."""
        self._sms = None
        self._raw_need, self._raw_sink = 0, None
        self._start_quarantine(sms.name, sms.header, sms.target, problem, self._now)
        assert self._quarantine is not None
        self._quarantine.data += sms.data

    def _start_quarantine(
        self, name: str, header: str, target: _InFlight | _PendingUrc, problem: str, now: float
    ) -> None:
        until = target.deadline if isinstance(target, _InFlight) else now + UNFRAMED_URC_S
        if isinstance(target, _InFlight):
            target.unframed = problem
        self._quarantine = _Quarantine(name, header, target, until, problem)
        self._buf.clear()
        self._discarding = False

    def _hold_unframed(self, data: bytes) -> None:
        quarantine = self._quarantine
        assert quarantine is not None
        room = MAX_UNFRAMED - len(quarantine.data)
        quarantine.data += data[: max(0, room)]
        if len(data) > room:
            self.stats.unframed_bytes_dropped += len(data) - max(0, room)
        # A line cut by the end of the window is not parsed from its middle.
        self._after_cr = False
        self._discarding = data[-1:] not in (b"\r", b"\n")

    def _end_quarantine(self, out: list[Event]) -> None:
        quarantine = self._quarantine
        assert quarantine is not None
        self._quarantine = None
        self._sms_done(quarantine, bytes(quarantine.data), "unframed", quarantine.problem, out)

    # ----------------------------------------------------------------- finishing

    def _on_final(self, cur: _InFlight, line: str, out: list[Event]) -> None:
        if line == "OK" and cur.command.result_urc and cur.result_line is None:
            cur.ok_seen = True
            cur.deadline = self._now + cur.command.urc_timeout_s
            return
        out.append(self._finish(cur, line))

    def _finish(self, cur: _InFlight, final: str) -> AtResponse:
        error = final_error(final)
        detail = self._detail_error(cur)
        # A result line's <err> names the failure; it overrides a bare ERROR, not a +CME one.
        answered = error is not None or cur.result_line is not None
        if detail is not None and answered and (error is None or error.kind == "error"):
            error = detail
        if cur.overflow and error is None:
            error = AtError(
                "overflow",
                None,
                f"{command_label(cur.command.line)}: answer longer than {MAX_RESPONSE} bytes, "
                f"{cur.overflow} line(s) not kept",
            )
        match = _ECHO_SWITCH_RE.match(cur.command.line.strip())
        if match is None:
            self._echo_on = cur.echo_seen
        elif error is None:
            self._echo_on = match.group(1) == "1"
        self._maybe_stale = False
        return self._complete(cur, final, error)

    def _detail_error(self, cur: _InFlight) -> AtError | None:
        """The specific failure behind OK/ERROR: a result line `<err>` != 0, an own-prefix
        `+CMQTTREL: 0,20` before ERROR, or a socket `+IPERROR: <text>`."""
        if cur.result_line is not None:
            name = line_name(cur.result_line) or ""
            code = _result_code(cur.result_line)
            if code:
                return result_error(name, code, cur.result_line)
            return None
        for line in cur.lines:
            name = line_name(line)
            if (
                name is not None
                and name == cur.prefix
                and (name.startswith("+CMQTT") or name in _SOCKET_RESULT_PREFIXES)
            ):
                code = _result_code(line)
                if code:
                    return result_error(name, code, line)
            match = _IPERROR_RE.match(line)
            if match:
                return AtError("error", None, match.group(1).strip(), line)
        return None

    def _complete(self, cur: _InFlight, final: str, error: AtError | None) -> AtResponse:
        self._cur = None
        self.stats.responses += 1
        quarantine = self._quarantine
        if quarantine is not None and quarantine.target is cur:
            # Its window ended with it: the data held so far belongs to this answer.
            self._quarantine = None
            body = SmsData(quarantine.header, bytes(quarantine.data), "unframed",
                           quarantine.problem)  # fmt: skip
            self.stats.sms_bodies += 1
            self.stats.sms_framing_errors += 1
            cur.data.append(body)
        return AtResponse(
            cur.command, tuple(cur.lines), final, cur.result_line, error, tuple(cur.data)
        )

    # ----------------------------------------------------------------- MQTT receive

    def _on_rx_line(self, line: str, out: list[Event]) -> None:
        match = _RX_HEAD_RE.match(line)
        numbers = None if match is None else [ascii_int(p) for p in match.group(2).split(",")]
        if match is None or numbers is None or any(v is None for v in numbers):
            self._rx_error(line, "malformed header", out)
            return
        kind = match.group(1)
        wanted = {"START": 3, "TOPIC": 2, "PAYLOAD": 2, "END": 1}[kind]
        if len(numbers) != wanted:
            self._rx_error(line, f"expected {wanted} numbers", out)
            return
        values: list[int] = [v for v in numbers if v is not None]
        client = values[0]
        rx = self._rx
        if kind == "START":
            if rx is not None:
                self._rx_error(line, f"message on client {rx.client} ended without RXEND", out)
                self._rx = None
            topic_total, payload_total = values[1], values[2]
            if not 1 <= topic_total <= MAX_RX_TOPIC or payload_total > MAX_RX_PAYLOAD:
                self._rx_error(
                    line,
                    f"totals outside topic 1-{MAX_RX_TOPIC}, payload 0-{MAX_RX_PAYLOAD} bytes",
                    out,
                )
                return
            self._rx = _RxMessage(client, topic_total, payload_total)
            return
        if kind in ("TOPIC", "PAYLOAD"):
            length = values[1]
            if length > MAX_RX_CHUNK:
                self._rx_error(line, f"chunk of {length} bytes exceeds {MAX_RX_CHUNK}", out)
                return
            sink: bytearray | None = None
            if rx is None or rx.client != client:
                self._rx_error(line, "chunk outside +CMQTTRXSTART..RXEND", out)
            else:
                if kind == "TOPIC":
                    held, total = rx.topic, rx.topic_total
                else:
                    held, total = rx.payload, rx.payload_total
                if len(held) + length > total:
                    self._rx_error(
                        line, f"{len(held) + length} {kind.lower()} bytes of {total} announced", out
                    )
                    self._rx = None
                else:
                    sink = held
            # The chunk's bytes come whatever we think of them: read them, never parse them.
            self._raw_need = length
            self._raw_sink = sink
            return
        # END
        if rx is None or rx.client != client:
            self._rx_error(line, "RXEND without +CMQTTRXSTART", out)
            return
        self._rx = None
        if len(rx.topic) != rx.topic_total or len(rx.payload) != rx.payload_total:
            why = (
                f"got topic {len(rx.topic)}/{rx.topic_total} and payload "
                f"{len(rx.payload)}/{rx.payload_total} bytes"
            )
            self._rx_error(line, why, out)
            return
        self.stats.mqtt_messages += 1
        out.append(
            MqttMessage(client, bytes(rx.topic).decode("utf-8", "replace"), bytes(rx.payload))
        )

    def _rx_error(self, line: str, why: str, out: list[Event]) -> None:
        self.stats.mqtt_rx_errors += 1
        self.stats.garbage_lines += 1
        out.append(Urc("", f"{line}  [MQTT receive error: {why}]"))


def _echo_lines(data: bytes) -> list[str]:
    """The lines a module echoing `data` after the prompt would send, for skipping them."""
    text = data.rstrip(b"\x1a\x1b").decode("utf-8", "replace")
    return [part.strip() for part in re.split(r"[\r\n]+", text) if part.strip()]
