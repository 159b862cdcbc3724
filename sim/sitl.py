"""Runs a user-provided ArduPilot `arducopter` SITL binary for missions and tests.

SITL is not installable from a package registry, so the project never builds or ships it:
the user names a binary (`skycourier sim --sitl PATH`, or SKYCOURIER_SITL for the tests).
This module starts it with a home, speed-up, defaults files and an instance number in its
own working directory (parameters persist there in eeprom.bin; `wipe` starts clean), waits
until its MAVLink TCP port listens, and shuts it down cleanly. SITL binds 0.0.0.0, but every
client here connects on loopback.

By default SITL is set up as a SkyCourier flight controller is: ArduPilot's own copter
defaults, then the shipped delivery-copter.parm and airframes/sitl-copter.parm (fence,
failsafes, gripper with SITL's simulated one, scripting on), and the companion watchdog script
installed in `<workdir>/scripts/`, where SITL's scripting looks for scripts.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sim.vehicle.parm_file import PARAMS_DIR, SHIPPED_PARAM_FILES

log = logging.getLogger(__name__)

#: The Lua companion watchdog a SkyCourier flight controller runs (see firmware_bridge/autopilot).
COMPANION_WATCHDOG = PARAMS_DIR.parent / "scripts" / "companion_watchdog.lua"


class SitlError(RuntimeError):
    """SITL could not be started or did not come up; the message says why."""


@dataclass
class SitlProcess:
    """One ArduCopter SITL instance (TCP port 5760 + 10 * instance)."""

    binary: Path
    home: tuple[float, float, float, float] = (-35.363261, 149.165230, 584.0, 0.0)
    speedup: float = 1.0
    defaults: Sequence[Path] | None = None
    instance: int = 0
    workdir: Path | None = None
    model: str = "+"
    wipe: bool = True
    extra_args: Sequence[str] = ()
    scripts: Sequence[Path] = (COMPANION_WATCHDOG,)
    #: Parameters set over the defaults files (written to a last defaults file in workdir).
    params: Mapping[str, float] = field(default_factory=dict)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _tmpdir: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False, repr=False)

    @property
    def port(self) -> int:
        """The TCP port SITL's first MAVLink channel (SERIAL0) listens on."""
        return 5760 + 10 * self.instance

    @property
    def connection(self) -> str:
        """Connection string for the bridge."""
        return f"tcp:127.0.0.1:{self.port}"

    def defaults_files(self) -> list[Path]:
        """The parameter defaults SITL starts with: the given ones, or else ArduPilot's own
        copter defaults from the source tree the binary was built in, then the parameter
        files SkyCourier ships (SHIPPED_PARAM_FILES)."""
        if self.defaults is not None:
            return [Path(p) for p in self.defaults]
        return [copter_defaults_beside(Path(self.binary)), *SHIPPED_PARAM_FILES]

    def _overrides_file(self) -> Path:
        assert self.workdir is not None, "the overrides are written when SITL starts"
        return self.workdir / "skycourier-overrides.parm"

    def command_line(self) -> list[str]:
        """The arducopter arguments this instance runs with."""
        lat, lon, alt, heading = self.home
        args = [
            str(Path(self.binary).resolve()),
            "--model", self.model,
            "--speedup", f"{self.speedup:g}",
            "--home", f"{lat},{lon},{alt},{heading}",
            "-I", str(self.instance),
        ]  # fmt: skip
        defaults = self.defaults_files()
        if self.params:
            defaults.append(self._overrides_file())
        if defaults:
            args += ["--defaults", ",".join(str(p.resolve()) for p in defaults)]
        if self.wipe:
            args.append("-w")
        return args + list(self.extra_args)

    def start(self, timeout: float = 30.0) -> None:
        """Start SITL and wait until its TCP port listens; SitlError says what went wrong."""
        binary = Path(self.binary)
        if not binary.is_file():
            raise SitlError(f"SITL binary {binary} does not exist")
        if not os.access(binary, os.X_OK):
            raise SitlError(f"SITL binary {binary} is not executable")
        for path in self.defaults_files():
            if not path.is_file():
                raise SitlError(f"SITL defaults file {path} does not exist")
        for path in self.scripts:
            if not Path(path).is_file():
                raise SitlError(f"SITL script {path} does not exist")
        if _listening(self.port):
            raise SitlError(f"TCP port {self.port} is already in use: is another SITL running?")
        if self.workdir is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="skycourier-sitl-")
            self.workdir = Path(self._tmpdir.name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._install_scripts()
        if self.params:
            lines = [f"{name} {value:g}" for name, value in self.params.items()]
            self._overrides_file().write_text("\n".join(lines) + "\n")
        log_path = self.workdir / "sitl.log"
        log.info("starting SITL: %s (log %s)", " ".join(self.command_line()), log_path)
        with open(log_path, "wb") as out:
            self._proc = subprocess.Popen(
                self.command_line(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not _listening(self.port):
            if self._proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-800:]
                raise SitlError(f"SITL exited with status {self._proc.returncode}:\n{tail}")
            if time.monotonic() > deadline:
                self.stop()
                raise SitlError(f"SITL did not listen on TCP {self.port} within {timeout:g} s")
            time.sleep(0.1)

    def _install_scripts(self) -> None:
        """Copy the Lua scripts where SITL's scripting loads them: `scripts/` in its working
        directory, as APM/scripts/ on a flight controller's SD card."""
        assert self.workdir is not None
        if not self.scripts:
            return
        target = self.workdir / "scripts"
        target.mkdir(exist_ok=True)
        for path in self.scripts:
            shutil.copy(path, target / Path(path).name)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop SITL: SIGTERM, then SIGKILL after `timeout` seconds."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
            self.workdir = None

    def __enter__(self) -> SitlProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def copter_defaults_beside(binary: Path) -> Path:
    """ArduPilot's SITL copter defaults (`Tools/autotest/default_params/copter.parm`) in the
    source tree that `binary` was built in (`build/sitl/bin/arducopter`), as sim_vehicle.py
    uses them; SitlError says how to name them when the binary lives elsewhere."""
    for parent in Path(binary).resolve().parents:
        candidate = parent / "Tools" / "autotest" / "default_params" / "copter.parm"
        if candidate.is_file():
            return candidate
    raise SitlError(
        f"cannot find ArduPilot's Tools/autotest/default_params/copter.parm above {binary}; "
        "pass the defaults files explicitly (skycourier sim --sitl-defaults FILE[,FILE])"
    )


def _listening(port: int) -> bool:
    """Whether some socket listens on TCP `port`, read from /proc (connecting would count as
    SITL's first client and start its clock)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if (
                len(fields) > 3
                and fields[3] == "0A"
                and int(fields[1].rsplit(":", 1)[1], 16) == port
            ):
                return True
    return False
