"""Runs a `Neo6m` on a real pseudo-terminal, in a thread, at wall-clock rate.

The host (the GPS driver, a pyserial client, gpsmon) opens `path`, the pty's slave side,
exactly as it would open /dev/ttyUSB0 or /dev/serial0. The runner owns the master side:
it feeds what the host writes to `Neo6m.receive` and writes back the answers and the NMEA
that `Neo6m.tick` produces.

Baud rate: a pty moves bytes at any speed, so a rate mismatch has to be simulated. The
speed the host asked for (pyserial's `tcsetattr`) is part of the pty's termios, which the
master side reads back with `termios.tcgetattr`. When it differs from the emulator's
`baud`, every byte in either direction is replaced by a byte with the top bit set (never
"$" nor the UBX sync 0xB5), as a UART at the wrong rate reads framing garbage: no valid
sentence or frame gets through, and a host that has not switched after a CFG-PRT sees
only noise, as with the real part.

A receiver on its own USB port (`Neo6m(wiring="USB")`, a CDC-ACM device) has no line
rate: the mismatch is then not simulated unless asked for.

Unplug/replug: `unplug()` closes both sides (the host's reads fail, as when a USB adapter
vanishes) and removes the by-id link; `replug()` opens a new pty (its path usually
differs, as /dev/ttyUSB0 may come back as /dev/ttyUSB1), power-cycles the receiver (only
what CFG-CFG saved, and the backup supply kept, survives) and points the by-id link at the
new path, like udev's /dev/serial/by-id/ names. `power_cycle()` is the receiver losing
power while the port stays open, as a UART-wired module on its own supply does.
"""

from __future__ import annotations

import contextlib
import os
import pty
import random
import termios
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path

from sim.gps.neo6m import Neo6m, PositionProvider

#: What udev names a u-blox 6 on USB under /dev/serial/by-id/.
DEFAULT_BY_ID = "usb-u-blox_AG_-_www.u-blox.com_u-blox_6_-_GPS_Receiver-if00"

RECEIVED_KEEP = 65536

_SPEEDS = {
    getattr(termios, f"B{rate}"): rate
    for rate in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400)
}


def host_speed(fd: int) -> int | None:
    """The baud rate the host set on the pty (read from either side), None if unknown."""
    try:
        attrs = termios.tcgetattr(fd)
    except termios.error:
        return None
    return _SPEEDS.get(attrs[5])  # ospeed


def point_link(link: Path, target: str) -> None:
    """Make `link` a symlink to `target`, replacing any old one atomically."""
    tmp = link.with_name(link.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link)


class Neo6mPty:
    """The emulator on a pty; use as a context manager, or `start()` / `stop()`.

    `link_dir`, if given, gets a by-id style symlink `link_name` to the current slave path
    (`link`). `period_s` is the loop period; NMEA timing is the emulator's own.
    """

    def __init__(
        self,
        emulator: Neo6m,
        position_provider: PositionProvider,
        *,
        link_dir: Path | None = None,
        link_name: str = DEFAULT_BY_ID,
        simulate_baud_mismatch: bool | None = None,
        period_s: float = 0.005,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.emulator = emulator
        self.position_provider = position_provider
        self.link = link_dir / link_name if link_dir is not None else None
        self.simulate_baud_mismatch = (
            emulator.wiring == "UART1" if simulate_baud_mismatch is None else simulate_baud_mismatch
        )
        self.period_s = period_s
        self.clock = clock
        self.path: str | None = None
        #: The last `RECEIVED_KEEP` bytes the host sent, as the receiver saw them.
        self.received = bytearray()
        self.garbled_bytes = 0
        self._master: int | None = None
        self._slave: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._garble = random.Random(0)

    def __enter__(self) -> Neo6mPty:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def plugged(self) -> bool:
        return self._master is not None

    def start(self) -> Neo6mPty:
        """Plug in and run the emulator thread."""
        self._plug()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="neo6m-pty", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and unplug."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.unplug()

    def unplug(self) -> None:
        """The device vanishes: both pty sides close, the by-id link goes."""
        with self._lock:
            for fd in (self._master, self._slave):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._master = self._slave = None
            if self.link is not None:
                with contextlib.suppress(FileNotFoundError):
                    self.link.unlink()

    def replug(self, *, backup: bool | None = None) -> str:
        """The device comes back after a power cycle, on a new pty; returns its path.

        `backup`: whether the board's backup supply kept BBR over the outage (default: it
        did if the board has one, `Neo6m.backup_battery`)."""
        self.unplug()
        with self._lock:
            self.emulator.power_cycle(backup=backup)
        self._plug()
        assert self.path is not None
        return self.path

    def power_cycle(self, *, backup: bool | None = None) -> None:
        """The receiver loses power and comes back while the port stays open."""
        with self._lock:
            self.emulator.power_cycle(backup=backup)

    def host_baud(self) -> int | None:
        """The rate the host's termios asks for, None when unplugged or not a known rate."""
        master = self._master
        return None if master is None else host_speed(master)

    # -- internals --

    def _plug(self) -> None:
        with self._lock:
            master, slave = pty.openpty()
            tty.setraw(slave)
            os.set_blocking(master, False)
            self._master, self._slave = master, slave
            self.path = os.ttyname(slave)
            if self.link is not None:
                point_link(self.link, self.path)

    def _matched(self, master: int) -> bool:
        return not self.simulate_baud_mismatch or host_speed(master) == self.emulator.baud

    def _garbled(self, data: bytes) -> bytes:
        self.garbled_bytes += len(data)
        return bytes(self._garble.choice(_GARBAGE) for _ in data)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if self._master is not None:
                    self._step(self._master)
            time.sleep(self.period_s)

    def _step(self, master: int) -> None:
        now = self.clock()
        matched = self._matched(master)  # at the rate in force before any CFG-PRT below
        try:
            data = os.read(master, 4096)
        except (BlockingIOError, InterruptedError):
            data = b""
        except OSError:
            return  # the host side hung up; the next open brings it back
        if data:
            if not matched:
                data = self._garbled(data)
            self.received += data
            del self.received[:-RECEIVED_KEEP]
            answers = self.emulator.receive(data, now)
            # At the rate in force once the receiver has taken them (see Neo6m: a CFG-PRT
            # may switch it before its ACK goes out).
            self._write(master, answers, self._matched(master))
        self._write(master, self.emulator.tick(now, self.position_provider), self._matched(master))

    def _write(self, master: int, data: bytes, matched: bool) -> None:
        if not data:
            return
        if not matched:
            data = self._garbled(data)
        # A UART with nobody reading loses bytes; so does this one when the pty is full.
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(master, data)


_GARBAGE = bytes(b for b in range(0x80, 0x100) if b != 0xB5)
