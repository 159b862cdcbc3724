"""Sans-I/O AT-command engine for the SIMCom A7670 (A76xx) modem.

The engine owns no port, thread or clock: the caller writes what `outgoing(now)` returns,
feeds what it read to `receive(data, now)` and calls `poll(now)` for timeouts. That keeps
every exchange testable byte by byte, with the exchanges of the manual and of real logs.

What it does, after the A76XX AT Command Manual V1.09 (§1.4, §1.5.2) and real sessions:
- One command in flight, the rest queued: the host "must wait for the final result code
  before sending the next command" (§1.5.2).
- Lines are framed by CR LF, LF or CR; a CR LF pair is one line end, so a line may be empty
  where that means something (an empty SMS body after `+CMGR:`).
- Echo (ATE1, the default after power-up, §2.2.8) of the in-flight line is recognised and
  skipped, whether or not `echo_expected` says so.
- A line whose prefix is the in-flight command's own (`AT+CPIN?` -> `+CPIN: READY`) belongs
  to it; any other known URC prefix is a `Urc` wherever it arrives, even between echo and
  OK (real logs show `+CGEV: EPS PDN ACT 1` and `SMS DONE` inside `AT+CGDCONT`, `PB DONE`
  and `SMS DONE` inside `AT+CMQTTCONNECT`). Set commands of the registration/SIM family
  (`AT+CEREG=2`, `AT+CPIN="1234"`) answer only OK, so their prefix lines stay URCs.
- Unknown lines during a command are its information lines (`Manufacturer: ...`); with no
  command in flight they come out as `Urc(name="")`, counted as garbage, never dropped.
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
  raw bytes (they may hold CR, LF, NUL, "OK"), joined, and emitted as one `MqttMessage`.
- A line without an end is held up to `MAX_LINE` bytes; longer ones are cut and counted.
- After a timeout the late answer of the timed-out command may still come. While the module
  is known to echo, an answer that arrives for the next command before that command's echo
  is that late answer, and is reported as a stale line instead of being matched to the
  wrong command. If the module turns out not to echo, the engine stops relying on echo.

Nothing in `receive` raises on any input bytes.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field, fields

from companion.modem.at_errors import AtError, final_error, is_cme_or_cms, result_error

__all__ = [
    "MAX_LINE",
    "MAX_RX_CHUNK",
    "URC_NAMES",
    "AtCommand",
    "AtEngine",
    "AtError",
    "AtResponse",
    "AtStats",
    "MqttMessage",
    "Urc",
]

# Longest line we hold. The module accepts command lines up to 3071 characters (§1.5.2) and
# its longest answers (AT+SIMCOMATI, AT+COPS=?) stay well under this; more is garbage.
MAX_LINE = 4096

# Largest `+CMQTTRXTOPIC`/`+CMQTTRXPAYLOAD` chunk we read by length: payloads total at most
# 10240 bytes (§18.4). A header announcing more is garbage, and reading it by length would
# swallow the good lines that follow.
MAX_RX_CHUNK = 10240

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
        # SMS (§9.2.9)
        "+CMTI",
        "+CDSI",
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

# Text-mode SMS listings: the header line is followed by the message text on its own line
# (§9.2.12, §9.2.10), which is data and must not be taken for a result code or a URC.
_DATA_LINE_PREFIXES = frozenset({"+CMGR", "+CMGL", "+CMGRD"})

# Prefixes whose `<idx>,<err>` line before ERROR names the failure (§18.2, §15.2).
_SOCKET_RESULT_PREFIXES = frozenset({"+NETOPEN", "+NETCLOSE", "+CIPOPEN", "+CIPCLOSE"})

_COMMAND_PREFIX_RE = re.compile(r"^AT([+*][A-Z0-9]+)", re.IGNORECASE)
_LINE_PREFIX_RE = re.compile(r"^([+*][A-Za-z0-9]+)\s*:")
_RX_RE = re.compile(
    r"^\+CMQTTRX(START|TOPIC|PAYLOAD|END)\s*:\s*(\d{1,6})"
    r"(?:\s*,\s*(\d{1,6}))?(?:\s*,\s*(\d{1,6}))?\s*$"
)
_ECHO_SWITCH_RE = re.compile(r"^ATE([01]?)$", re.IGNORECASE)
_IPERROR_RE = re.compile(r"^\+IP ?ERROR\s*:\s*(.+)$")
_CR = 0x0D
_LF = 0x0A
_PROMPT = 0x3E  # ">"
_SPACE = 0x20


@dataclass(frozen=True)
class AtCommand:
    """One AT command line and how to wait for its answer.

    `timeout_s` is the manual's Max Response Time for the final result code (counted again
    from the moment `data` is handed out, since the module answers after the data);
    `result_urc` names the result line that completes the command after OK (for example
    "+CMQTTCONNECT"), waited for up to `urc_timeout_s`.
    """

    line: str
    timeout_s: float = 9.0
    data: bytes | None = None
    result_urc: str | None = None
    urc_timeout_s: float = 30.0


@dataclass(frozen=True)
class AtResponse:
    """How a command ended: its information lines, final code, result line and error."""

    command: AtCommand
    lines: tuple[str, ...]
    final: str
    result_line: str | None = None
    error: AtError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Urc:
    """An unsolicited line. `name` is its prefix ("+CMTI", "SMS DONE"), "" for garbage."""

    name: str
    line: str


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
    stale_lines: int = 0
    echoes: int = 0
    data_echoes: int = 0
    prompts: int = 0
    commands_sent: int = 0
    responses: int = 0
    timeouts: int = 0
    aborted: int = 0
    mqtt_messages: int = 0
    mqtt_rx_errors: int = 0

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
    parts = [p.strip() for p in rest.split(",")]
    if not all(p.isdigit() and len(p) <= 6 for p in parts) or len(parts) > 2:
        return None
    return int(parts[-1])


@dataclass
class _InFlight:
    command: AtCommand
    prefix: str | None
    urc_own_prefix: bool
    deadline: float
    lines: list[str] = field(default_factory=list)
    echo_seen: bool = False
    prompted: bool = False
    data_sent: bool = False
    ok_seen: bool = False  # OK arrived, waiting for the result line
    result_line: str | None = None
    echo_data: list[str] | None = None
    stale_rejected: int = 0


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
        # framing
        self._buf = bytearray()
        self._discarding = False
        self._after_cr = False
        self._skip_space = False
        self._data_line_next = False
        self._raw_need = 0
        self._raw_sink: bytearray | None = None
        self._rx: _RxMessage | None = None

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

    def submit(self, command: AtCommand) -> None:
        """Queue a command. A line that is not one AT command line is a caller bug."""
        line = command.line
        if "\r" in line or "\n" in line:
            raise ValueError(f"AT command line must not contain CR or LF: {line!r}")
        if not line.strip().upper().startswith("AT"):
            raise ValueError(f"AT command line must start with 'AT': {line!r}")
        if command.data is not None and not command.data:
            raise ValueError(f"empty data for {line!r}: the module wants 1 or more bytes")
        self._queue.append(command)

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

    def poll(self, now: float) -> list[AtResponse]:
        """End the in-flight command if its deadline has passed (final "TIMEOUT")."""
        self._now = now
        cur = self._cur
        if cur is None or now < cur.deadline:
            return []
        command = cur.command
        if cur.ok_seen:
            text = f"OK, but no {command.result_urc} result within {command.urc_timeout_s:g} s"
        elif command.data is not None and not cur.prompted:
            text = f"no '>' prompt or final result code within {command.timeout_s:g} s"
        else:
            text = f"no final result code within {command.timeout_s:g} s"
        self.stats.timeouts += 1
        self._maybe_stale = True
        if cur.stale_rejected:
            # Answers came but never the echo: the module is not echoing after all.
            self._echo_on = False
        label = command.line.split("=", 1)[0]  # not the parameters: they may hold a password
        return [self._complete(cur, "TIMEOUT", AtError("timeout", None, f"{label}: {text}"))]

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
        if self._buf or self._raw_need:
            self.stats.garbage_lines += 1
        self._buf.clear()
        self._discarding = self._after_cr = self._skip_space = self._data_line_next = False
        self._raw_need = 0
        self._raw_sink = None
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
        i, n = 0, len(data)
        while i < n:
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
            if byte in (_CR, _LF):
                self._after_cr = byte == _CR
                i += 1
                self._end_line(out)
                continue
            if byte == _PROMPT and not self._buf and self._awaiting_prompt():
                self._cur.prompted = True  # type: ignore[union-attr]
                self.stats.prompts += 1
                self._skip_space = True
                i += 1
                continue
            # Bulk: the run of bytes up to the next line end.
            j = i + 1
            while j < n and data[j] not in (_CR, _LF):
                j += 1
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
        if self._discarding:
            self._discarding = False
            self._data_line_next = False
            return
        self._on_line(raw, out)

    def _on_line(self, raw: bytes, out: list[Event]) -> None:
        text = raw.decode("utf-8", "replace")
        cur = self._cur
        if self._data_line_next:
            self._data_line_next = False
            if cur is not None:
                self.stats.lines += 1
                cur.lines.append(text)
                return
        line = text.strip()
        if not line:
            return
        self.stats.lines += 1
        if line.startswith("+CMQTTRX"):
            self._on_rx_line(line, out)
            return
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
                self.stats.echoes += 1
                return
        if line in ("OK", "ERROR", "NO CARRIER") or is_cme_or_cms(line):
            if cur is None or cur.ok_seen or self._stale(cur):
                self._unsolicited("", line, out, stale=cur is not None)
            else:
                self._on_final(cur, line, out)
            return
        name = line_name(line)
        if cur is not None and name is not None:
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
                cur.lines.append(line)
                if name in _DATA_LINE_PREFIXES:
                    self._data_line_next = True
                return
        if name in URC_NAMES:
            self.stats.urcs += 1
            out.append(Urc(name, line))
            return
        if cur is not None:
            cur.lines.append(line)
            return
        self._unsolicited("", line, out, stale=False)

    def _stale(self, cur: _InFlight) -> bool:
        """Is an answer arriving now the late answer of an earlier, timed-out command?"""
        if self._maybe_stale and self._echo_on and not cur.echo_seen:
            cur.stale_rejected += 1
            return True
        return False

    def _unsolicited(self, name: str, line: str, out: list[Event], *, stale: bool) -> None:
        if stale:
            self.stats.stale_lines += 1
        if name:
            self.stats.urcs += 1
        else:
            self.stats.garbage_lines += 1
        out.append(Urc(name, line))

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
        return AtResponse(cur.command, tuple(cur.lines), final, cur.result_line, error)

    # ----------------------------------------------------------------- MQTT receive

    def _on_rx_line(self, line: str, out: list[Event]) -> None:
        match = _RX_RE.match(line)
        if match is None:
            self._rx_error(line, "malformed header", out)
            return
        kind = match.group(1)
        numbers = [int(g) for g in match.groups()[1:] if g is not None]
        wanted = {"START": 3, "TOPIC": 2, "PAYLOAD": 2, "END": 1}[kind]
        if len(numbers) != wanted:
            self._rx_error(line, f"expected {wanted} numbers", out)
            return
        client = numbers[0]
        rx = self._rx
        if kind == "START":
            if rx is not None:
                self._rx_error(line, f"message on client {rx.client} ended without RXEND", out)
            self._rx = _RxMessage(client, numbers[1], numbers[2])
            return
        if kind in ("TOPIC", "PAYLOAD"):
            length = numbers[1]
            if length > MAX_RX_CHUNK:
                self._rx_error(line, f"chunk of {length} bytes exceeds {MAX_RX_CHUNK}", out)
                return
            sink: bytearray | None = None
            if rx is None or rx.client != client:
                self._rx_error(line, "chunk outside +CMQTTRXSTART..RXEND", out)
            else:
                sink = rx.topic if kind == "TOPIC" else rx.payload
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
