"""The rig's wire to the A7670's PWRKEY pin.

On a drone the modem's power key hangs off a GPIO, and the daemon pulses it with the command
in `[modem] power_key_command` (for example `gpioset ... 4=1`) as the last rung of its
recovery ladder, the one thing that brings back a module whose firmware has locked up. On
the rig the modem is the emulator in the rig's own process, so the "GPIO" is a Unix datagram
socket in the work folder: `PowerKeyLine` listens on it and presses the emulator's power key
for each datagram, and the daemon's power key command is this module, run as

    python -m sim.harness.hil_pwrkey <socket>

which sends one datagram and exits 0, or exits 1 saying why when the rig is not listening
(the daemon logs the failure as it would a failing gpioset).
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

PULSE = b"pulse"


class PowerKeyLine:
    """Listens on `path` and calls `press()` once per pulse; `pulses` counts them."""

    def __init__(self, path: Path, press: Callable[[], None]) -> None:
        self.path = path
        self.press = press
        self.pulses = 0
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> PowerKeyLine:
        self.path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self.path))
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="hil-pwrkey", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        if self._sock is not None:
            self._sock.close()
        self.path.unlink(missing_ok=True)

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None
        while not self._stop.is_set():
            try:
                data = sock.recv(64)
            except TimeoutError:
                continue
            except OSError:
                return
            if data != PULSE:
                log.warning("power key line: ignored %d unexpected bytes", len(data))
                continue
            self.pulses += 1
            log.info("power key pulse %d: the modem restarts", self.pulses)
            self.press()


def pulse(path: Path) -> None:
    """Send one pulse to the rig listening on `path`; OSError when none listens."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(PULSE, str(path))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m sim.harness.hil_pwrkey SOCKET", file=sys.stderr)
        return 2
    try:
        pulse(Path(args[0]))
    except OSError as exc:
        print(f"no rig listening on {args[0]}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
