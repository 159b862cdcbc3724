"""The daemon under test in the hardware-in-the-loop rig: `skycourier run` in its own process.

`DaemonProcess` starts ``python -m companion.cli run --config FILE`` as the systemd unit
starts the daemon on the drone (the environment of a service manager removed, so that it does
not notify the rig's own), keeps its log (what it writes on stderr) in a file and in memory
line by line, and stops it as systemd does (SIGTERM) or kills it where it stands (SIGKILL).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: Lines of the daemon's log quoted when it fails.
LOG_TAIL_LINES = 25
#: Environment variables of a service manager that must not reach the daemon: it would
#: notify the rig's own systemd (or a CI runner's) instead of nobody.
_SERVICE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class HilError(RuntimeError):
    """The rig cannot start, or the daemon did something it should not (died, never got
    ready); the message says what, with the tail of the daemon's log."""


class DaemonProcess:
    """`skycourier run --config CONFIG` in its own process, started as the systemd unit
    starts it. Its output (the daemon's log on stderr) is appended to `log_path` and kept
    line by line for `wait_line`; it runs in `cwd`."""

    def __init__(self, config_path: Path, log_path: Path, cwd: Path) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.cwd = cwd
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._stopping = False

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "companion.cli", "run", "--config", str(self.config_path)]

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once it has exited, else None."""
        return None if self._proc is None else self._proc.poll()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            raise HilError(f"the daemon is already running (pid {self.pid})")
        env = {k: v for k, v in os.environ.items() if k not in _SERVICE_ENV}
        env["PYTHONUNBUFFERED"] = "1"
        self._proc = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.starts += 1
        self._stopping = False
        with self._cond:
            self._lines = []
        self._reader = threading.Thread(
            target=self._follow, args=(self._proc,), name="hil-daemon-log", daemon=True
        )
        self._reader.start()
        log.info("daemon started (pid %d): %s", self._proc.pid, " ".join(self.command))

    def _follow(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        with open(self.log_path, "ab") as out:
            out.write(f"--- start {self.starts}: pid {proc.pid} ---\n".encode())
            for raw in proc.stdout:
                out.write(raw)
                out.flush()
                with self._cond:
                    self._lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, as systemd stops the unit; SIGKILL if it is not gone in `timeout_s`.
        The exit status (None if it was not running)."""
        if self._proc is None:
            return None
        self._stopping = True
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.error("the daemon ignored SIGTERM for %g s: killing it", timeout_s)
                self._proc.kill()
                self._proc.wait()
        self._join_reader()
        return self._proc.returncode

    def kill(self) -> int:
        """SIGKILL: the daemon dies where it stands (nothing flushed, nothing said)."""
        if self._proc is None or self._proc.poll() is not None:
            raise HilError("the daemon is not running: nothing to kill")
        self._stopping = True
        self._proc.kill()
        code = self._proc.wait()
        self._join_reader()
        return code

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(10.0)

    def problem(self) -> str | None:
        """Why the daemon is not running when it should be, or None while it runs (or was
        stopped on purpose)."""
        if self._proc is None or self._stopping:
            return None
        code = self._proc.poll()
        if code is None:
            return None
        return f"the daemon exited with status {code}; its log ends:\n{self.tail()}"

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        with self._cond:
            return "\n".join(self._lines[-lines:])

    def wait_line(self, needle: str, timeout_s: float) -> str:
        """The first line of this run's log containing `needle`, waiting up to `timeout_s`;
        HilError if the daemon dies or the time runs out first."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        with self._cond:
            while True:
                for line in self._lines[seen:]:
                    if needle in line:
                        return line
                seen = len(self._lines)
                problem = self.problem()
                left = deadline - time.monotonic()
                if problem is not None or left <= 0:
                    break
                self._cond.wait(min(left, 1.0))
        raise HilError(
            f"the daemon's log did not say {needle!r}: "
            + (problem or f"not within {timeout_s:g} s; its log ends:\n{self.tail()}")
        )
