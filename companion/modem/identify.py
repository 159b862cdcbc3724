"""Which modem is on a port, and what state its SIM and registration are in: `skycourier
check`'s modem probe.

A short, single-threaded conversation through the sans-I/O `AtEngine` (the daemon's own AT
parser, so echo, URCs mixed into answers and error codes are read exactly as the daemon reads
them), bounded by each command's timeout:

1. `AT` until it is answered, for up to `attention_s` (a module just powered up ignores AT
   until it prints `*ATREADY: 1`); no answer at the configured rate: `AT` at each other
   rate, since the A7670 talks 115200 8N1 unless its rate was changed, and has no auto-baud
   by default (A76XX AT Command Manual V1.09 §1.5.1; A76XX UART Application Note);
2. `AT+CMEE=2` (§3.2.11), so that errors come as text (+CME ERROR: SIM not inserted);
3. `ATI` (§2.2.8: manufacturer, model, revision, IMEI), `AT+CPIN?` (§6.2.2) and the
   registration polls `AT+CEREG?` (LTE, §5.2.2) and `AT+CREG?` (circuit-switched, §4.2.1),
   read as the supervisor reads them. A command that times out ends the conversation: the
   module stopped answering, and each further question would only wait its full time.

`identify_modem` raises the port's own error (`serial.SerialException`/`OSError`, with its
errno) when the port cannot be opened.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import serial

from companion.modem.at_engine import AtCommand, AtEngine, AtResponse, ascii_int
from companion.modem.responses import describe, info_value
from companion.modem.supervisor import REGISTRATION

_POLL_S = 0.05
#: How long one `AT` waits for its OK while looking for the module.
ATTENTION_TRY_S = 0.5
#: The manual's maximum response time for CPIN, CREG, CEREG and CMEE (9000 ms); a live
#: module answers them, and ATI, within a second.
COMMAND_S = 9.0
#: (command, response prefix, what it registers for).
REGISTRATION_POLLS = (("AT+CEREG?", "+CEREG", "LTE"), ("AT+CREG?", "+CREG", "CS"))


@dataclass(frozen=True)
class ModemProbe:
    """What answered: `baud`, the rate `AT` was answered at (None: at none); `identity`, the
    information lines of ATI, or `identity_error` saying why there are none; `sim`, the
    `+CPIN:` value ("READY", "SIM PIN", ...), or `sim_error` saying why there is none; and
    `registration`: (what, state) for each poll answered, e.g. ("LTE", "home")."""

    baud: int | None
    identity: tuple[str, ...] = ()
    identity_error: str | None = None
    sim: str | None = None
    sim_error: str | None = None
    registration: tuple[tuple[str, str], ...] = ()


class AtPort:
    """An `AtEngine` on a pyserial port, driven one command at a time by the caller's
    thread (no port thread: a check asks a handful of questions and leaves)."""

    def __init__(
        self, port: str, baud: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.clock = clock
        self.engine = AtEngine()
        self.serial = serial.Serial(port, baud, timeout=0, write_timeout=1.0, exclusive=True)

    def close(self) -> None:
        self.serial.close()

    def __enter__(self) -> AtPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_rate(self, baud: int) -> None:
        """Talk at another rate from now on: a new engine, nothing kept from the old rate."""
        self.serial.baudrate = baud
        self.serial.reset_input_buffer()
        self.engine = AtEngine()

    def call(self, line: str, timeout_s: float = COMMAND_S) -> AtResponse:
        """Send one command and return how it ended (the engine times it out)."""
        command = AtCommand(line, timeout_s=timeout_s)
        self.engine.submit(command)
        while True:
            data = self.engine.outgoing(self.clock())
            if data:
                self.serial.write(data)
            events = []
            readable, _, _ = select.select([self.serial.fileno()], [], [], _POLL_S)
            if readable:
                chunk = self.serial.read(self.serial.in_waiting or 1)
                if not chunk:
                    raise serial.SerialException("device reports readiness but returned no data")
                events += self.engine.receive(chunk, self.clock())
            events += self.engine.poll(self.clock())
            for event in events:
                if isinstance(event, AtResponse) and event.command is command:
                    return event


def _attention(at: AtPort, until: float) -> bool:
    """`AT` until OK or `until` (clock time); True when the module answered."""
    while True:
        if at.call("AT", ATTENTION_TRY_S).ok:
            return True
        if at.clock() >= until:
            return False
        at.set_rate(at.serial.baudrate)  # a fresh engine: forget the unanswered AT


def identify_modem(
    port: str,
    baud: int,
    rates: Sequence[int],
    *,
    attention_s: float = 3.0,
    clock: Callable[[], float] = time.monotonic,
) -> ModemProbe:
    """Ask the modem on `port` who it is (see the module docstring). When it does not answer
    at `baud`, each of `rates` is tried and the probe says where it answered (nothing more is
    asked there: the daemon would talk at `baud`)."""
    with AtPort(port, baud, clock=clock) as at:
        if not _attention(at, clock() + attention_s):
            for rate in rates:
                if rate == baud:
                    continue
                at.set_rate(rate)
                # Two tries: the first ends whatever garbage the module's line buffer
                # took from our tries at the wrong rates (it answers that line ERROR).
                if any(at.call("AT", ATTENTION_TRY_S).ok for _ in range(2)):
                    return ModemProbe(baud=rate)
            return ModemProbe(baud=None)
        probe = ModemProbe(baud=baud)
        cmee = at.call("AT+CMEE=2")
        if _timed_out(cmee):
            return replace(probe, identity_error=describe(cmee))
        ati = at.call("ATI")
        if not ati.ok:
            return replace(probe, identity_error=describe(ati))
        probe = replace(probe, identity=tuple(line.strip() for line in ati.lines if line.strip()))
        cpin = at.call("AT+CPIN?")
        sim = info_value(cpin, "+CPIN") if cpin.ok else None
        if sim is None:
            why = describe(cpin) if not cpin.ok else f"no +CPIN line in {cpin.lines!r}"
            probe = replace(probe, sim_error=why)
        else:
            probe = replace(probe, sim=sim)
        if _timed_out(cpin):
            return probe
        registration = []
        for command, prefix, what in REGISTRATION_POLLS:
            response = at.call(command)
            if _timed_out(response):
                break
            fields = (info_value(response, prefix) or "").split(",")
            stat = ascii_int(fields[1]) if response.ok and len(fields) >= 2 else None
            if stat is not None:
                registration.append((what, REGISTRATION.get(stat, f"unknown ({stat})")))
        return replace(probe, registration=tuple(registration))


def _timed_out(response: AtResponse) -> bool:
    return response.error is not None and response.error.kind == "timeout"
