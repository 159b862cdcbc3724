"""The TCP face of the built-in vehicle, like ArduPilot SITL's serial0 on port 5760.

One thread does everything: it waits in select() on the listening socket and the clients
until the next control step is due, reads and decodes what arrived, hands it to the vehicle,
steps the vehicle at PHYSICS_HZ of simulated time, and writes out telemetry and replies.
Simulated time starts when the first client connects (as SITL's does) and runs `speedup`
times faster than the wall clock. When the machine cannot keep up, the simulation runs as
fast as it can: simulated time never jumps, it only falls behind the requested speed-up.

Several clients may connect at once; each is a separate MAVLink link with its own sequence
numbers and stream rates, and, once a SETUP_SIGNING has stored a key, its own signing link id
and timestamp (`signing`: frames that fail the check are dropped and counted in
`signing_rejected`). `set_link_blocked(True)` cuts every link like a pulled cable: the
sockets stay open but nothing goes either way. `set_faults` injects the faults of
`faults.Faults` (lost commands and setpoints, refused or ignored targets).

Lockstep: a step gate, `gate(t_next) -> bool`, is asked before each control step (in this
thread, outside the lock) whether simulated time may advance to `t_next`. While it says no,
no step is taken but the links are still served: messages are read and handled (commands
ACKed, parameters answered) and the replies sent, and the gate is asked again every
GATE_POLL_S. When it opens, the step is taken at once and the wall-clock schedule restarts
from then, so simulated time never races ahead to make up for the hold.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from . import telemetry
from .copter import Copter, VehicleSnapshot
from .dialect import MAVLinkMessage, mavlink
from .faults import Faults, FaultState
from .params import ParamTable
from .parm_file import SHIPPED_PARAM_FILES
from .signing import LinkSigning

log = logging.getLogger(__name__)

DEFAULT_HOME = (-35.363261, 149.165230, 584.0)  # ArduPilot SITL's default (CMAC)
PHYSICS_HZ = 50.0
COMPONENT_ID = 1
MAX_LAG_S = 0.25  # wall seconds of backlog caught up before giving up on the speed-up
MAX_OUTPUT_BYTES = 8 << 20  # a client that stops reading this much is dropped
IDLE_WAIT_S = 0.2
GATE_POLL_S = 0.001  # how often a closed step gate is asked again

#: Asked before each control step with the simulated time after it; False holds time there.
StepGate = Callable[[float], bool]


class _Client:
    """One connected socket: its parser, encoder and unsent bytes."""

    def __init__(self, cid: int, sock: socket.socket, sysid: int) -> None:
        self.id = cid
        self.sock = sock
        self.parser = mavlink.MAVLink(None, srcSystem=sysid, srcComponent=COMPONENT_ID)
        self.parser.robust_parsing = True
        self.encoder = mavlink.MAVLink(None, srcSystem=sysid, srcComponent=COMPONENT_ID)
        self.output = bytearray()

    def queue(self, msg: MAVLinkMessage, signing: LinkSigning | None) -> None:
        """Encode `msg` for this link, signed as `signing` says (its timestamp advances by
        one per frame, as in mavlink_sign_packet)."""
        enc = self.encoder
        enc.signing.sign_outgoing = signing is not None
        if signing is not None:
            enc.signing.secret_key = signing.secret
            enc.signing.link_id = signing.link_id
            enc.signing.timestamp = signing.timestamp
        self.output += msg.pack(enc)
        enc.seq = (enc.seq + 1) % 256
        if signing is not None:
            signing.timestamp = enc.signing.timestamp


#: Wall-clock seconds of companion silence the watchdog tolerates at any speed-up.
WATCHDOG_WALL_S = 2.0


class VehicleServer:
    """The built-in ArduCopter-like vehicle listening for MAVLink over TCP.

    Parameters are ArduCopter's defaults, then the `param_files` in order (default: the files
    SkyCourier ships for its flight controller on SITL's quad, `SHIPPED_PARAM_FILES`: fence
    on, capacity failsafes, gripper configured; [] flies stock ArduCopter's defaults), then
    `params` (unknown names raise ValueError, in a file ParmFileError); `wind` is
    (speed m/s, direction it blows from in degrees) and sets SIM_WIND_SPD/SIM_WIND_DIR;
    `ready_delay_s` is the simulated time from first connection until the vehicle can arm in
    GUIDED (default 5 s; SITL takes ~42 s).

    Faster than real time, a few hundred milliseconds of wall-clock stall in the companion
    (a loaded machine, a garbage collection) would look to the companion watchdog like a
    dead companion, so unless `params` sets SCW_TIMEOUT it is stretched to at least
    `WATCHDOG_WALL_S` of wall time (5 s simulated at speed-up 1, 20 s at 10)."""

    def __init__(
        self,
        home: tuple[float, float, float] = DEFAULT_HOME,
        *,
        speedup: float = 1.0,
        host: str = "127.0.0.1",
        port: int = 5760,
        params: dict[str, float] | None = None,
        wind: tuple[float, float] | None = None,
        system_id: int = 1,
        ready_delay_s: float | None = None,
        param_files: Sequence[Path | str] | None = None,
        faults: Faults | None = None,
        step_gate: StepGate | None = None,
    ) -> None:
        if not speedup > 0:
            raise ValueError(f"speedup must be positive, got {speedup}")
        overrides: dict[str, float] = {
            "SYSID_THISMAV": system_id,
            "SCW_TIMEOUT": max(5.0, WATCHDOG_WALL_S * speedup),
        }
        if wind is not None:
            overrides["SIM_WIND_SPD"], overrides["SIM_WIND_DIR"] = wind
        overrides.update(params or {})
        files = SHIPPED_PARAM_FILES if param_files is None else param_files
        self._copter = Copter(home, ParamTable(overrides, files), ready_delay_s)
        self._copter.faults = FaultState(faults or Faults())
        self._step_gate = step_gate
        self._speedup = float(speedup)
        self._address = (host, port)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self._clients: dict[socket.socket, _Client] = {}
        self._next_id = 0
        self._blocked = False
        self._port = port

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> VehicleServer:
        """Bind, listen and start the simulation thread."""
        if self._thread is not None:
            raise RuntimeError("vehicle server already started")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(self._address)
        except OSError as exc:
            listener.close()
            raise OSError(f"cannot listen on {self._address[0]}:{self._address[1]}: {exc}") from exc
        listener.listen(8)
        listener.setblocking(False)
        self._listener = listener
        self._port = listener.getsockname()[1]
        self._thread = threading.Thread(target=self._run, name="sim-vehicle", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and close every socket."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        for client in list(self._clients.values()):
            client.sock.close()
        self._clients.clear()
        if self._listener is not None:
            self._listener.close()

    def __enter__(self) -> VehicleServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- what tests and the CLI see -------------------------------------------------------
    @property
    def port(self) -> int:
        """The TCP port actually listened on (useful with port=0)."""
        return self._port

    @property
    def sim_time(self) -> float:
        """Simulated seconds since the first client connected (time_boot_ms / 1000)."""
        with self._lock:
            return self._copter.time

    @property
    def utc_at_boot(self) -> float:
        """UTC (Unix seconds) at simulated time 0; SYSTEM_TIME is this plus `sim_time`."""
        return self._copter.utc_at_boot

    def param(self, name: str) -> float:
        """A parameter's current value, as PARAM_VALUE would carry it (KeyError if unknown)."""
        with self._lock:
            return self._copter.params[name]

    @property
    def state(self) -> VehicleSnapshot:
        """A consistent copy of the vehicle state."""
        with self._lock:
            return self._copter.snapshot()

    @property
    def link_blocked(self) -> bool:
        """True while `set_link_blocked` has cut the links."""
        with self._lock:
            return self._blocked

    def set_link_blocked(self, blocked: bool) -> None:
        """Cut (True) or restore (False) all traffic both ways, sockets left open."""
        with self._lock:
            self._blocked = blocked

    def set_faults(self, faults: Faults) -> None:
        """Replace the injected faults (Faults() for none); losses restart from its seed."""
        with self._lock:
            self._copter.faults = FaultState(faults)

    @property
    def signing_enabled(self) -> bool:
        """True once a SETUP_SIGNING stored a key that turns signing on."""
        with self._lock:
            key = self._copter.signing.key
            return key is not None and (key.timestamp != 0 or any(key.secret))

    @property
    def signing_rejected(self) -> dict[str, int]:
        """Frames dropped by the signature check so far, by reason (see `signing`)."""
        with self._lock:
            return dict(self._copter.signing.rejected)

    def set_step_gate(self, gate: StepGate | None) -> None:
        """Install (or with None remove) the lockstep gate; see the module docstring."""
        self._step_gate = gate

    # ---- the thread -----------------------------------------------------------------------
    def _run(self) -> None:
        dt = 1.0 / PHYSICS_HZ
        wall_step = dt / self._speedup
        due: float | None = None  # wall time of the next control step once time runs
        while not self._stop.is_set():
            now = time.monotonic()
            timeout = IDLE_WAIT_S if due is None else max(0.0, due - now)
            self._io(min(timeout, IDLE_WAIT_S))
            if due is None:
                if self._clients:
                    due = time.monotonic()
                    with self._lock:
                        self._copter.start_clock(time.time())
                continue
            now = time.monotonic()
            if now - due > MAX_LAG_S:
                due = now - MAX_LAG_S
            steps = 0
            held = False
            while due <= now and steps < 50:
                if not self._gate_open(dt):
                    held = True
                    break
                self._step(dt)
                due += wall_step
                steps += 1
            if steps:
                self._flush()
            if held and self._hold_until_gate_opens(dt):
                self._step(dt)
                self._flush()
                due = time.monotonic() + wall_step

    def _gate_open(self, dt: float) -> bool:
        """Whether the step gate lets the next step (to time + dt) happen. Only this thread
        changes the time, so it is read without the lock, and the gate is called outside it."""
        gate = self._step_gate
        return gate is None or gate(self._copter.time + dt)

    def _hold_until_gate_opens(self, dt: float) -> bool:
        """Serve the links while the gate is closed; True once it opens, False on stop."""
        while not self._stop.is_set():
            self._io(GATE_POLL_S)
            if self._gate_open(dt):
                return True
        return False

    def _io(self, timeout: float) -> None:
        assert self._listener is not None
        readers = [self._listener, *self._clients]
        writers = [s for s, c in self._clients.items() if c.output]
        try:
            readable, writable, _ = select.select(readers, writers, [], timeout)
        except (OSError, ValueError):
            self._drop_closed()
            return
        for sock in readable:
            if sock is self._listener:
                self._accept()
            else:
                self._read(sock)
        for sock in writable:
            if sock in self._clients:
                self._write(self._clients[sock])

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except OSError:
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = _Client(self._next_id, sock, self._copter.sysid)
        self._next_id += 1
        self._clients[sock] = client
        with self._lock:
            self._copter.client_connected(client.id)

    def _read(self, sock: socket.socket) -> None:
        client = self._clients.get(sock)
        if client is None:
            return
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close(client)
            return
        with self._lock:
            if self._blocked:
                return
            try:
                messages = client.parser.parse_buffer(data) or []
            except Exception:  # pymavlink raises plain Exceptions on garbage
                log.debug("undecodable data from client %d", client.id)
                return
            for msg in messages:
                self._copter.handle(msg, client.id)
            self._dispatch()
        self._flush()

    def _step(self, dt: float) -> None:
        with self._lock:
            copter = self._copter
            copter.step(dt)
            self._dispatch()
            if self._blocked:
                return
            built: dict[int, MAVLinkMessage | None] = {}
            for client in self._clients.values():
                schedule = copter.streams.get(client.id)
                if schedule is None:
                    continue
                for msg_id in schedule.due(copter.time):
                    if msg_id not in built:
                        built[msg_id] = telemetry.BUILDERS[msg_id](copter)
                    msg = built[msg_id]
                    if msg is not None:
                        client.queue(msg, copter.signing.outgoing(client.id))

    def _dispatch(self) -> None:
        """Queue what the vehicle wants sent (dropped while the link is blocked)."""
        outgoing = self._copter.out.drain()
        if self._blocked:
            return
        by_id = {c.id: c for c in self._clients.values()}
        signing = self._copter.signing
        for msg, to in outgoing:
            if to is None:
                for client in by_id.values():
                    client.queue(msg, signing.outgoing(client.id))
            elif to in by_id:
                by_id[to].queue(msg, signing.outgoing(to))

    def _flush(self) -> None:
        for client in list(self._clients.values()):
            if client.output:
                self._write(client)

    def _write(self, client: _Client) -> None:
        try:
            sent = client.sock.send(client.output)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._close(client)
            return
        del client.output[:sent]
        if len(client.output) > MAX_OUTPUT_BYTES:
            log.warning("client %d is not reading; dropping it", client.id)
            self._close(client)

    def _close(self, client: _Client) -> None:
        self._clients.pop(client.sock, None)
        client.sock.close()
        with self._lock:
            self._copter.client_disconnected(client.id)

    def _drop_closed(self) -> None:
        for client in list(self._clients.values()):
            if client.sock.fileno() < 0:
                self._close(client)
