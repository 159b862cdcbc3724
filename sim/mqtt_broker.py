"""An MQTT broker on a free loopback port, for the tests and for `skycourier sim`.

`start_broker()` runs mosquitto when it is installed (the real part, DESIGN.md principle 6)
and otherwise the embedded pure-Python broker of `sim.mqtt_embedded`, so a fresh machine
needs nothing installed by hand. Either way the caller gets a `Broker` with `host`, `port`
and `kind`, usable as a context manager.

mosquitto runs from a generated config in a temporary directory: one listener on 127.0.0.1,
anonymous access, its log in that directory; with `persistent=True` it keeps its sessions
and queued messages in that directory too, so that `Broker.restart()` brings it back as a
fleet's broker comes back from a restart: clients with a persistent session find their
subscriptions, and the QoS 1 messages that arrived while they were away wait for them.
The port is found by binding port 0 and releasing it; another process may take it in
between, so a start that fails with "Address already in use" is retried on a new port. A
port the caller names is checked first: the readiness probe (a TCP connect) cannot tell
mosquitto from another listener.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from sim.mqtt_embedded import EmbeddedBroker

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
KINDS = ("mosquitto", "embedded")
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
PORT_RETRIES = 3
LOG_TAIL_LINES = 20


class BrokerError(RuntimeError):
    """A broker could not be started; the message says why (with mosquitto's log tail)."""


class Broker:
    """A running broker. `stop()` (or leaving the `with` block) ends it; stopping twice is
    harmless."""

    def __init__(
        self,
        host: str,
        port: int,
        kind: str,
        stop: Callable[[], None],
        log_path: Path | None,
        restart: Callable[[float], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.kind = kind
        self.log_path = log_path  # mosquitto's log while it runs; None for the embedded one
        self._stop = stop
        self._restart = restart
        self._stopped = False

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._stop()

    def restart(self, down_s: float = 0.0) -> None:
        """Stop the broker as an administrator restarts it (SIGTERM: a persistent mosquitto
        saves its sessions), keep it down `down_s` seconds, and start it again on the same
        port from the same configuration. BrokerError for a broker that cannot restart (the
        embedded one, a stopped one) or that does not come back."""
        if self._restart is None or self._stopped:
            raise BrokerError(f"{self!r} cannot be restarted")
        self._restart(down_s)

    def __enter__(self) -> Broker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Broker(kind={self.kind!r}, {self.host}:{self.port})"


def find_mosquitto() -> Path | None:
    """The mosquitto binary on PATH or in the usual sbin folders (not on a user's PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return Path(found)
    for candidate in MOSQUITTO_PATHS:
        if os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on right now (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def start_broker(prefer: str = "mosquitto", port: int = 0, *, persistent: bool = False) -> Broker:
    """Start a broker on 127.0.0.1:`port` (0: a free port); `persistent`: mosquitto keeps
    its sessions over `Broker.restart()` (the embedded broker has no persistence).

    prefer="mosquitto": mosquitto if installed, else the embedded broker (logged).
    prefer="embedded": the embedded broker. A mosquitto that is installed but fails to start
    raises BrokerError rather than quietly falling back, so a broken install is seen.
    """
    if prefer not in KINDS:
        raise ValueError(f"unknown broker kind {prefer!r}; choose one of {', '.join(KINDS)}")
    if prefer == "mosquitto":
        binary = find_mosquitto()
        if binary is not None:
            return start_mosquitto(binary, port, persistent=persistent)
        log.info("mosquitto not installed (apt install mosquitto): using the embedded broker")
    return start_embedded(port)


def start_embedded(port: int = 0) -> Broker:
    broker = EmbeddedBroker(HOST, port)
    broker.start()
    return Broker(HOST, broker.port, "embedded", broker.stop, None)


def start_mosquitto(binary: Path, port: int = 0, *, persistent: bool = False) -> Broker:
    """Run `binary` on a generated config and wait until it accepts connections."""
    workdir = Path(tempfile.mkdtemp(prefix="skycourier-mosquitto-"))
    try:
        for attempt in range(1, PORT_RETRIES + 1):
            chosen = port or free_port()
            if port and not _port_free(port):
                # Checked first: the readiness probe would take the other listener for ours.
                raise BrokerError(f"mosquitto could not listen on {HOST}:{port}: address in use")
            process, log_path = _launch(binary, workdir, chosen, persistent)
            try:
                _wait_ready(process, chosen, log_path)
            except _PortTaken:
                if port or attempt == PORT_RETRIES:
                    raise BrokerError(
                        f"mosquitto could not listen on {HOST}:{chosen}: address in use\n"
                        + _tail(log_path)
                    ) from None
                continue
            except BaseException:
                _terminate(process)
                raise
            log.info("mosquitto %s listening on %s:%d (log %s)", binary, HOST, chosen, log_path)
            running = _Mosquitto(binary, workdir, chosen, process, log_path)
            # A caller that dies of an exception before stop() must not leave mosquitto
            # running on its port (a SIGKILLed caller still can: nothing runs then).
            atexit.register(running.stop)
            return Broker(HOST, chosen, "mosquitto", running.stop, log_path, running.restart)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    raise AssertionError("unreachable")  # the loop returns or raises


class _PortTaken(Exception):
    pass


class _Mosquitto:
    """One started mosquitto: stopped for good, or restarted from its own config file."""

    def __init__(
        self,
        binary: Path,
        workdir: Path,
        port: int,
        process: subprocess.Popen[bytes],
        log_path: Path,
    ) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = port
        self.process = process
        self.log_path = log_path

    def stop(self) -> None:
        atexit.unregister(self.stop)
        _terminate(self.process)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def restart(self, down_s: float) -> None:
        _terminate(self.process)
        time.sleep(down_s)
        self.process = _run(self.binary, self.workdir / f"mosquitto-{self.port}.conf",
                            self.log_path, append=True)  # fmt: skip
        try:
            _wait_ready(self.process, self.port, self.log_path)
        except _PortTaken:
            raise BrokerError(
                f"mosquitto could not listen on {HOST}:{self.port} again: address in use"
            ) from None
        log.info("mosquitto restarted on %s:%d", HOST, self.port)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as mosquitto binds
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _launch(
    binary: Path, workdir: Path, port: int, persistent: bool
) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = workdir / f"mosquitto-{port}.log"
    log_path.unlink(missing_ok=True)
    lines = [
        f"listener {port} {HOST}",
        "allow_anonymous true",
        f"persistence {'true' if persistent else 'false'}",
        f"persistence_location {workdir}/",
        f"persistence_file mosquitto-{port}.db",
        f"log_dest file {log_path}",
        "log_type error warning notice information",
        "connection_messages true",
    ]
    if os.geteuid() == 0:
        # Started as root, mosquitto switches to the user "mosquitto", which could not write
        # the log in our private temporary folder; stay the user we are.
        lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
    config = workdir / f"mosquitto-{port}.conf"
    config.write_text("\n".join(lines) + "\n")
    return _run(binary, config, log_path, append=False), log_path


def _run(binary: Path, config: Path, log_path: Path, *, append: bool) -> subprocess.Popen[bytes]:
    with open(log_path.with_suffix(".stderr"), "ab" if append else "wb") as stderr:
        return subprocess.Popen(
            [str(binary), "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def _wait_ready(process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            text = _tail(log_path)
            if "Address already in use" in text:
                raise _PortTaken
            raise BrokerError(
                f"mosquitto exited with status {process.returncode} before listening on "
                f"{HOST}:{port}\n{text}"
            )
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise BrokerError(
        f"mosquitto did not accept connections on {HOST}:{port} within {START_TIMEOUT_S:g} s\n"
        + _tail(log_path)
    )


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("mosquitto (pid %d) ignored SIGTERM; killing it", process.pid)
            process.kill()
            process.wait()


def _tail(log_path: Path) -> str:
    """The last lines of mosquitto's log and stderr, for an error message."""
    parts = []
    stderr = log_path.with_suffix(".stderr")
    for path in (log_path, stderr):
        with contextlib.suppress(OSError):
            lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            if lines:
                parts.append(f"--- {path.name} ---\n" + "\n".join(lines))
    return "\n".join(parts) or "(mosquitto wrote no log)"
