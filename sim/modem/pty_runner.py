"""Runs an `A7670` on a real pseudo-terminal, in a thread, at wall-clock rate.

The host (the modem driver, a pyserial client, minicom) opens `path`, the pty's slave side,
as it would open /dev/ttyUSB2 or /dev/ttyS1. The runner owns the master side: what the host
writes goes to `A7670.receive`, what `A7670.output` says is written back.

A UART at the wrong rate reads framing garbage, so when the host's termios speed (read back
from the pty, as in `sim.gps.pty_runner`) differs from the module's rate (`baud`, 115200 by
default) every byte in either direction is replaced by noise.

A pty moves bytes as fast as memory; a UART does not. Each direction is a wire that carries
one byte per 10 bit times (8N1: start, 8 data, stop) at `baud`: what the host writes reaches
the module, and what the module says reaches the host, no sooner than the wire would take
(at 115200, 87 µs a byte: a 10 KB MQTT payload takes 0.89 s). The wire runs on the module's
clock, so it scales with the emulator's `time_scale` like its own latencies (0: no wire time).

The emulator is not thread-safe; faults injected from a test or a CLI thread go through the
runner's methods (`set_coverage`, `drop_mqtt`, `hang`, `power_key`, `deliver_sms`, ...),
which take the same lock as the pty loop. `locked()` gives the emulator under that lock for
anything else.
"""

from __future__ import annotations

import contextlib
import os
import pty
import random
import threading
import time
import tty
from collections.abc import Callable, Iterator
from datetime import datetime

from sim.gps.pty_runner import host_speed
from sim.modem.a7670 import A7670, Signal

#: The A7670's factory UART rate (A76XX AT Command Manual V1.09 §1.5.1).
BAUD = 115200

_NOISE = bytes(range(0x80, 0x100))
#: Bytes kept for a host that is not reading (the module's UART transmit buffer).
TX_BACKLOG = 64 * 1024


class A7670Pty:
    """The emulator on a pty; use as a context manager, or `start()` / `stop()`."""

    def __init__(
        self,
        emulator: A7670,
        *,
        simulate_baud_mismatch: bool = True,
        period_s: float = 0.005,
        clock: Callable[[], float] = time.monotonic,
        baud: int = BAUD,
    ) -> None:
        self.emulator = emulator
        self.simulate_baud_mismatch = simulate_baud_mismatch
        self.period_s = period_s
        self.clock = clock
        #: The module's UART rate (AT+IPR; the factory rate unless a test says otherwise).
        self.baud = baud
        byte_s = 10 / baud * emulator.time_scale
        self._to_module = _Wire(byte_s)
        self._to_host = _Wire(byte_s)
        self.path: str | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._noise = random.Random(0)
        self._backlog = bytearray()

    def __enter__(self) -> A7670Pty:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> A7670Pty:
        """Open the pty and run the emulator thread (the module powers on now)."""
        master, slave = pty.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self.path = os.ttyname(slave)
        with self._lock:
            self.emulator.output(self.clock())  # power-on time
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="a7670-pty", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread, drop the module's broker connections, close the pty."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            self.emulator.hang()  # what a power cut does to its connections
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None

    @contextlib.contextmanager
    def locked(self) -> Iterator[A7670]:
        """The emulator, with the pty loop held off."""
        with self._lock:
            yield self.emulator

    # -- faults, thread-safe --

    def set_coverage(self, on: bool) -> None:
        with self._lock:
            self.emulator.set_coverage(on)

    def set_signal(self, signal: Signal) -> None:
        with self._lock:
            self.emulator.set_signal(signal)

    def drop_mqtt(self) -> None:
        with self._lock:
            self.emulator.drop_mqtt()

    def hang(self) -> None:
        with self._lock:
            self.emulator.hang()

    def power_key(self) -> None:
        with self._lock:
            self.emulator.power_key(self.clock())

    def deliver_sms(self, sender: str, text: str, received: datetime | None = None) -> int:
        with self._lock:
            return self.emulator.deliver_sms(sender, text, received)

    def set_garble_probability(self, probability: float) -> None:
        with self._lock:
            self.emulator.garble_probability = probability

    def set_slow_factor(self, factor: float) -> None:
        with self._lock:
            self.emulator.slow_factor = factor

    @property
    def wire_bytes(self) -> tuple[int, int]:
        """Bytes that have crossed the UART so far: (host to module, module to host)."""
        with self._lock:
            return self._to_module.carried, self._to_host.carried

    @property
    def sent_sms(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self.emulator.sent_sms)

    # -- internals --

    def _run(self) -> None:
        while not self._stop.is_set():
            master = self._master
            if master is not None:
                with self._lock:
                    self._step(master)
            time.sleep(self.period_s)

    def _matched(self, master: int) -> bool:
        return not self.simulate_baud_mismatch or host_speed(master) == self.baud

    def _step(self, master: int) -> None:
        now = self.clock()
        matched = self._matched(master)
        try:
            data = os.read(master, 4096)
        except (BlockingIOError, InterruptedError):
            data = b""
        except OSError:
            data = b""  # the host side is closed; the module keeps running
        if data:
            if not matched:
                data = bytes(self._noise.choice(_NOISE) for _ in data)
            self._to_module.send(data, now)
        arrived = self._to_module.arrived(now)
        if arrived:
            self.emulator.receive(arrived, now)
        out = self.emulator.output(now)
        if out and not matched:
            out = bytes(self._noise.choice(_NOISE) for _ in out)
        self._to_host.send(out, now)
        self._backlog += self._to_host.arrived(now)
        if self._backlog:
            # The pty holds only a few KiB; what does not fit waits (the module's UART
            # buffer), up to a bound past which, with nobody reading, bytes are lost.
            with contextlib.suppress(BlockingIOError, OSError):
                written = os.write(master, self._backlog)
                del self._backlog[:written]
            del self._backlog[:-TX_BACKLOG]


class _Wire:
    """One direction of the UART: bytes leave in order, one per `byte_s` seconds. Idle time
    is not banked: a burst after a pause starts when it is sent. Holds at most `TX_BACKLOG`
    bytes in flight (a UART buffer that nobody drains loses the rest)."""

    def __init__(self, byte_s: float) -> None:
        self.byte_s = byte_s
        self.carried = 0  # bytes that have crossed
        self._pending = bytearray()
        self._since = 0.0  # when the first pending byte started on the wire

    def send(self, data: bytes, now: float) -> None:
        if not data:
            return
        if not self._pending:
            self._since = now
        self._pending += data
        del self._pending[:-TX_BACKLOG]

    def arrived(self, now: float) -> bytes:
        """The bytes that have finished crossing the wire by `now`."""
        if not self._pending:
            return b""
        if self.byte_s <= 0:
            count = len(self._pending)
        else:
            count = min(len(self._pending), int((now - self._since) / self.byte_s))
        out = bytes(self._pending[:count])
        del self._pending[:count]
        self._since += count * self.byte_s
        self.carried += count
        return out
