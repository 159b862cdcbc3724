"""Runs an `A7670` on a real pseudo-terminal, in a thread, at wall-clock rate.

The host (the modem driver, a pyserial client, minicom) opens `path`, the pty's slave side,
as it would open /dev/ttyUSB2 or /dev/ttyS1. The runner owns the master side: what the host
writes goes to `A7670.receive`, what `A7670.output` says is written back.

A UART at the wrong rate reads framing garbage, so when the host's termios speed (read back
from the pty, as in `sim.gps.pty_runner`) differs from 115200 every byte in either
direction is replaced by noise.

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
    ) -> None:
        self.emulator = emulator
        self.simulate_baud_mismatch = simulate_baud_mismatch
        self.period_s = period_s
        self.clock = clock
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
        return not self.simulate_baud_mismatch or host_speed(master) == BAUD

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
            self.emulator.receive(data, now)
        out = self.emulator.output(now)
        if out and not matched:
            out = bytes(self._noise.choice(_NOISE) for _ in out)
        self._backlog += out
        if self._backlog:
            # The pty holds only a few KiB; what does not fit waits (the module's UART
            # buffer), up to a bound past which, with nobody reading, bytes are lost.
            with contextlib.suppress(BlockingIOError, OSError):
                written = os.write(master, self._backlog)
                del self._backlog[:written]
            del self._backlog[:-TX_BACKLOG]
