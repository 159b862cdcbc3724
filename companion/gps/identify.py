"""Which u-blox receiver is on a port, and at what rate: `skycourier check`'s GPS probe.

`ReceiverProbe` is a sans-I/O core in the shape of `UbxConfigurator`: the transport opens the
port at `rate`, feeds what it reads to `receive(data, now)`, calls `tick(now)` once
`deadline` passes, writes whatever either returns, and switches the port to `rate` (dropping
what it holds) whenever that changes. Once `finished`, `result()` says what answered.

For each candidate rate in turn (the configured one first), it samples the port until the
bytes hold checksummed NMEA or UBX (`detect_baud`, the driver's own test) or `sample_s`
passes; at the wrong rate a UART reads framing garbage, which never passes a checksum. At
the first rate that holds receiver output it polls UBX MON-VER (GPS.G6-SW-10018, MON-VER:
software and hardware version) `polls` times, `answer_s` apart, and stops at the answer: a
receiver that prints NMEA but never answers the poll is not a u-blox part, or has its UBX
input turned off, and the daemon could not configure it either.

`identify_receiver` is the thin pyserial adapter; it raises the port's own error
(`serial.SerialException`/`OSError`, with its errno) when the port cannot be opened.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import serial
from pyubx2 import POLL, UBXMessage

from companion.gps.stream import NmeaUbxStream, UbxFrame, UbxParseError
from companion.gps.ubx_config import ReceiverVersion, detect_baud, parse_mon_ver

#: UBX class and id of MON-VER (GPS.G6-SW-10018, "UBX-MON").
MON_VER = (0x0A, 0x04)
#: Bytes of a rate's sample kept: over a second of output at 115200 baud.
MAX_SAMPLE = 16 * 1024
_READ_TIMEOUT_S = 0.05
_WRITE_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class ProbeResult:
    """What the probe found: `baud`, the rate that carried receiver output (None: none did),
    `version`, its MON-VER answer (None: no answer or no receiver), `heard_bytes`, every
    byte read at any rate (bytes but no `baud`: something that is not a GPS talks there),
    and `rates_tried`, in order."""

    baud: int | None
    version: ReceiverVersion | None
    heard_bytes: int
    rates_tried: tuple[int, ...]


class ReceiverProbe:
    """Find the rate a u-blox receiver talks at and ask it MON-VER; see the module."""

    def __init__(
        self,
        rates: Sequence[int],
        *,
        sample_s: float = 1.2,
        answer_s: float = 1.0,
        polls: int = 2,
    ) -> None:
        rates = list(dict.fromkeys(rates))
        if not rates:
            raise ValueError("no rate to try")
        if sample_s <= 0 or answer_s <= 0 or polls < 1:
            raise ValueError("sample_s and answer_s must be > 0, polls >= 1")
        self.sample_s = sample_s
        self.answer_s = answer_s
        self.polls = polls
        self._rates = rates
        self._index = 0
        self._sample = bytearray()
        self._heard = 0
        self._found: int | None = None
        self._stream: NmeaUbxStream | None = None  # decodes the answer once found
        self._sent = 0
        self._version: ReceiverVersion | None = None
        self._deadline: float | None = None
        self._finished = False

    @property
    def rate(self) -> int:
        """The rate the transport must talk at now."""
        return self._found if self._found is not None else self._rates[self._index]

    @property
    def deadline(self) -> float | None:
        """When `tick` is next due; None once finished."""
        return self._deadline

    @property
    def finished(self) -> bool:
        return self._finished

    def start(self, now: float) -> bytes:
        """Start sampling at the first rate; nothing to send yet."""
        self._deadline = now + self.sample_s
        return b""

    def receive(self, data: bytes, now: float) -> bytes:
        """Bytes read at `rate`; returns what to send (the MON-VER poll once the rate is
        found). Never raises."""
        if self._finished or not data:
            return b""
        self._heard += len(data)
        if self._stream is not None:
            self._take_answer(data)
            return b""
        room = MAX_SAMPLE - len(self._sample)
        if room > 0:
            self._sample += data[:room]
        if detect_baud({self.rate: bytes(self._sample)}) is None:
            return b""
        self._found = self.rate
        self._stream = NmeaUbxStream()
        return self._poll(now)

    def tick(self, now: float) -> bytes:
        """Let time pass: next rate, poll again, or give up, once `deadline` passes."""
        if self._finished or self._deadline is None or now < self._deadline:
            return b""
        if self._stream is not None:
            if self._sent < self.polls:
                return self._poll(now)
            return self._finish()
        self._index += 1
        self._sample.clear()
        if self._index >= len(self._rates):
            self._index = len(self._rates) - 1
            return self._finish()
        self._deadline = now + self.sample_s
        return b""

    def result(self) -> ProbeResult:
        if not self._finished:
            raise RuntimeError("ReceiverProbe has not finished")
        return ProbeResult(
            self._found, self._version, self._heard, tuple(self._rates[: self._index + 1])
        )

    def _poll(self, now: float) -> bytes:
        self._sent += 1
        self._deadline = now + self.answer_s
        return UBXMessage("MON", "MON-VER", POLL).serialize()

    def _take_answer(self, data: bytes) -> None:
        assert self._stream is not None
        for event in self._stream.feed(data):
            if not isinstance(event, UbxFrame) or (event.msg_class, event.msg_id) != MON_VER:
                continue
            try:
                self._version = parse_mon_ver(event.msg)
            except UbxParseError:
                continue  # a forged or truncated answer: keep waiting for a good one
            self._finish()
            return

    def _finish(self) -> bytes:
        self._finished = True
        self._deadline = None
        return b""


def identify_receiver(
    port: str,
    rates: Sequence[int],
    *,
    sample_s: float = 1.2,
    clock: Callable[[], float] = time.monotonic,
) -> ProbeResult:
    """Run a `ReceiverProbe` on `port` (opened exclusively, as the daemon opens it); raises
    the port's error when it cannot be opened. Bounded: at most `sample_s` a rate plus the
    polls' waits."""
    probe = ReceiverProbe(rates, sample_s=sample_s)
    with serial.Serial(
        port, probe.rate, timeout=_READ_TIMEOUT_S, write_timeout=_WRITE_TIMEOUT_S, exclusive=True
    ) as link:
        link.reset_input_buffer()
        outgoing = probe.start(clock())
        while not probe.finished:
            if link.baudrate != probe.rate:
                link.baudrate = probe.rate
                link.reset_input_buffer()
            if outgoing:
                link.write(outgoing)
            data = link.read(4096)
            outgoing = probe.receive(data, clock()) + probe.tick(clock())
    return probe.result()
