"""The hardware-in-the-loop rig (`skycourier hil`): `skycourier run`, unchanged and in its own
process, against emulated hardware wired up as on the drone.

`HilRig` starts, in the calling process, everything the daemon would find on a real drone:

- the flight controller: the built-in vehicle (`sim.vehicle.VehicleServer`) on TCP, or
  ArduPilot SITL (`sitl=PATH`); either flies SkyCourier's shipped parameters;
- the NEO-6M emulator on a pty, reporting where the vehicle is, behind a udev-style link
  ``<work>/dev/skycourier-gps``;
- the A7670 emulator on a pty behind ``<work>/dev/skycourier-modem``, its MQTT stack bridged
  to a real mosquitto (`sim.mqtt_broker`, persistent so that it can be restarted as a
  fleet's broker is; the embedded broker only where mosquitto is not installed), its SMS
  inbox open to `send_sms`, and its PWRKEY wired to the daemon's `[modem] power_key_command`
  (`sim.harness.hil_pwrkey`);
- optionally a camera: an MJPEG-over-HTTP feed of the simulated downward camera
  (`sim.harness.hil_camera`), which the daemon opens like an IP camera;
- optionally a door camera (`door_camera`): an MJPEG feed of the person at the drop
  (`sim.harness.hil_door`), the daemon's `[identity] camera`; the orders then seal the
  recipient's template enrolled from a photo of that person;
- the keys: the drone's key store, the dispatcher's, and the operators' SMS key;
- a configuration, ``<work>/skycourier.toml``, pointing the daemon at all of them;

then runs ``python -m companion.cli run --config <work>/skycourier.toml`` as a child process,
exactly as the systemd unit starts it, its log in ``<work>/daemon.log``. The test (or
`skycourier hil order`) acts as the dispatcher and operator through `GroundStation`: signed
orders over MQTT, events read back from the broker, operator commands by SMS.

Faults, injected while the daemon runs: `unplug_gps`/`replug_gps` (the receiver's USB lead),
`hang_modem` (the A7670's firmware locks up until its power key is pulsed),
`cut_autopilot_link` (the flight controller's serial link goes silent both ways, the
autopilot flying on), `restart_broker`, and `kill_daemon`/`restart_daemon`.

Timing. The vehicle and the daemon live in different processes, so the lockstep of
`skycourier sim` (`sim.harness.lockstep`), which holds the vehicle's clock until the
companion has caught up, cannot hold here: the daemon is free-running, as on the drone. The
built-in vehicle therefore runs in real time (speed-up 1) by default, where every timeout of
the daemon (heartbeats, the GPS fix age, the modem's AT timeouts, all in wall time) means
what it means in the air. A faster vehicle would squeeze those wall-clock margins by the
speed-up on a loaded machine: `speedup` is there for experiments, not for the tests. The
NEO-6M follows the vehicle's own clock and UTC, so the daemon's GPS time cross-check sees
two receivers that agree even when a busy machine makes the vehicle fall behind real time.
A delivery is kept short instead (`DROP_DISTANCE_M`, `CRUISE_ALT_M`, `RIG_AUTOPILOT_PARAMS`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from companion.config import Config
from companion.geo import offset
from companion.intake.queue import OrderQueue
from companion.security.keys import KeyStore
from companion.telemetry import schema
from sim.gps.neo6m import Neo6m, Position
from sim.gps.pty_runner import Neo6mPty, point_link
from sim.harness.hil_daemon import DaemonProcess, HilError
from sim.harness.hil_ground import (
    GroundStation,
    OperatorSigner,
    Received,
    hostile_order,
    make_order,
    recipient_template,
)
from sim.harness.hil_pwrkey import PowerKeyLine
from sim.modem.a7670 import A7670
from sim.modem.mqtt_bridge import PahoBridge
from sim.modem.pty_runner import A7670Pty
from sim.mqtt_broker import Broker, start_broker
from sim.vehicle import DEFAULT_HOME, VehicleServer

if TYPE_CHECKING:
    from sim.harness.hil_door import DoorFeed

log = logging.getLogger(__name__)

DRONE_ID = "hil-1"
#: The operator's phone number, the one number whose SMS commands the daemon reads.
OPERATOR = "+15550100"
#: A drop close to home: a whole delivery (out, hand-over, back) takes about 70 s.
DROP_DISTANCE_M = 60.0
DROP_BEARING_DEG = 90.0
#: The rig's cruise altitude: low, so that climbs and descents stay short.
CRUISE_ALT_M = 10.0
#: The rig's field is small and clear: the autopilot returns home at the cruise altitude
#: (RTL_ALT, in cm) rather than the shipped 30 m, which would add a climb and a long descent
#: to every return, and lands at once (RTL_LOIT_TIME, ms) instead of hovering 5 s over home
#: first. Every other parameter is the shipped one (the preflight checks them all).
RIG_AUTOPILOT_PARAMS = {"RTL_ALT": CRUISE_ALT_M * 100, "RTL_LOIT_TIME": 0.0}
#: The wind the rig's operator declares for the preflight (the built-in vehicle flies calm).
DECLARED_WIND_MPS = 3.0
#: The daemon logs this once it takes orders over MQTT (`companion.intake.downlink`).
LISTENING_LINE = "orders: listening on "
#: AF_UNIX socket paths are at most 107 bytes on Linux.
_MAX_SOCKET_PATH = 100


def rig_config(
    work: Path,
    *,
    drone_id: str,
    connection: str,
    gps_port: Path,
    modem_port: Path,
    broker: tuple[str, int],
    home: tuple[float, float, float],
    camera_url: str | None = None,
    door_camera_url: str | None = None,
    power_key: Path | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Config:
    """The daemon's configuration on the rig: every device, key and file in `work`, the
        preflight demanding the companion's GPS, the uplink and a (declared) wind report, as on
        the drone. `power_key` is the rig's PWRKEY line (`hil_pwrkey`), pulsed by the daemon's
    power key command. `overrides` ({section: {option: value}}) go over it, validated."""
    pulse = None if power_key is None else f"{sys.executable} -m sim.harness.hil_pwrkey {power_key}"
    config = Config().updated(
        "hil rig",
        vehicle={"connection": connection},
        flight={"cruise_alt_m": CRUISE_ALT_M},
        preflight={
            "companion_gps": True,
            "uplink": True,
            "declared_wind_mps": DECLARED_WIND_MPS,
        },
        sim={"home_lat": home[0], "home_lon": home[1], "home_alt_m": home[2]},
        gps={"port": str(gps_port)},
        modem={
            "port": str(modem_port),
            "sms_operators": OPERATOR,
            "sms_key_file": str(work / "sms.key"),
            "sms_counter_path": str(work / "sms-counters.json"),
            "power_key_command": pulse,
        },
        telemetry={
            "drone_id": drone_id,
            "broker": f"tcp://{broker[0]}:{broker[1]}",
            "transport": "modem",
            "queue_path": str(work / "telemetry.db"),
        },
        vision={"source": camera_url},
        identity={"camera": door_camera_url},
        journal={"path": str(work / "journal.db")},
        intake={
            "queue_path": str(work / "orders.db"),
            "socket_path": str(work / "control.sock"),
        },
        security={
            "keys_dir": str(work / "keys" / "drone"),
            "dispatcher_pub": str(work / "keys" / "dispatcher.pub.json"),
            "nonce_path": str(work / "order-nonces.json"),
            "command_nonce_path": str(work / "command-nonces.json"),
            "audit_path": str(work / "audit.jsonl"),
        },
        logging={"level": "INFO"},
    )
    for section, values in (overrides or {}).items():
        config = config.updated("hil rig overrides", **{section: values})
    return config


def vehicle_position(server: VehicleServer, home_alt_m: float) -> Callable[[float], Position]:
    """Where the built-in vehicle is, as the NEO-6M on board would see it."""

    def position(_t: float) -> Position:
        snap = server.state
        vn, ve, _ = snap.velocity_ned
        course = math.degrees(math.atan2(ve, vn)) % 360.0
        return (snap.lat, snap.lon, home_alt_m + snap.alt_rel_m, math.hypot(vn, ve), course)

    return position


class HilRig:
    """The rig in `work` (created if missing); a context manager. The daemon is started by
    `start()` unless `start_daemon` is False; `wait_ready()` waits until it takes orders.

    `speedup` is the built-in vehicle's (see the module doc: 1 unless experimenting); `sitl`
    flies ArduPilot SITL (instance `sitl_instance`) instead; `camera` adds the camera feed;
    `door_camera` ("recipient", "impostor", "photo": `hil_door.DOOR_MODES`) adds the door
    camera showing that person at the drop; `broker_port` puts the broker on that port (0:
    any free one); `autopilot_params` are set over the shipped parameters (default
    `RIG_AUTOPILOT_PARAMS`); `config_overrides` change the daemon's configuration ({section:
    {option: value}})."""

    def __init__(
        self,
        work: Path,
        *,
        drone_id: str = DRONE_ID,
        speedup: float = 1.0,
        sitl: Path | None = None,
        sitl_instance: int = 0,
        camera: bool = False,
        door_camera: str | None = None,
        broker_port: int = 0,
        home: tuple[float, float, float] = DEFAULT_HOME,
        autopilot_params: dict[str, float] | None = None,
        config_overrides: dict[str, dict[str, Any]] | None = None,
        start_daemon: bool = True,
    ) -> None:
        self.work = Path(work).resolve()
        self.drone_id = drone_id
        self.speedup = speedup
        self.sitl = sitl
        self.sitl_instance = sitl_instance
        self.camera = camera
        self.door_camera = door_camera
        self.broker_port = broker_port
        self.home = home
        self.autopilot_params = (
            dict(RIG_AUTOPILOT_PARAMS) if autopilot_params is None else autopilot_params
        )
        self.config_overrides = config_overrides
        self.start_daemon_now = start_daemon
        self.config_path = self.work / "skycourier.toml"
        self.log_path = self.work / "daemon.log"
        self.daemon = DaemonProcess(self.config_path, self.log_path, self.work)
        self.config: Config | None = None
        self.broker: Broker | None = None
        self.server: VehicleServer | None = None
        self.gps: Neo6mPty | None = None
        self.modem: A7670Pty | None = None
        self.power_key: PowerKeyLine | None = None
        self.ground: GroundStation | None = None
        self.camera_url: str | None = None
        self.door: DoorFeed | None = None
        self.door_camera_url: str | None = None
        self._door_template: np.ndarray | None = None
        self._operator: OperatorSigner | None = None
        self._keys: tuple[KeyStore, KeyStore] | None = None
        self._stack = ExitStack()

    def __enter__(self) -> HilRig:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- bring-up --------------------------------------------------------------------------

    def start(self) -> HilRig:
        """Start the hardware, write the configuration and (unless told not to) the daemon.
        Whatever started is stopped again if a later part fails."""
        self.work.mkdir(parents=True, exist_ok=True)
        socket_path = self.work / "control.sock"
        if len(str(socket_path)) > _MAX_SOCKET_PATH:
            raise HilError(
                f"work folder {self.work} is too deep for the daemon's control socket "
                f"({len(str(socket_path))} > {_MAX_SOCKET_PATH} bytes): use a shorter path"
            )
        with ExitStack() as stack:
            drone, _ = self._keys = self._make_keys()
            self._operator = OperatorSigner(self.work / "sms.key", self.drone_id, OPERATOR)
            self.broker = start_broker(port=self.broker_port, persistent=True)
            stack.callback(self.broker.stop)
            connection, position, clock = self._start_autopilot(stack, drone)
            dev = self.work / "dev"
            dev.mkdir(exist_ok=True)
            self.gps = self._start_gps(stack, dev, position, clock)
            self.modem = self._start_modem(stack, dev)
            if self.camera:
                self.camera_url = self._start_camera(stack)
            self.ground = GroundStation(self.broker.host, self.broker.port, self.drone_id)
            self.ground.connect()
            stack.callback(self.ground.close)
            if self.door_camera is not None:
                self.door_camera_url = self._start_door(stack, self.ground)
            self.config = rig_config(
                self.work,
                drone_id=self.drone_id,
                connection=connection,
                gps_port=dev / "skycourier-gps",
                modem_port=dev / "skycourier-modem",
                broker=(self.broker.host, self.broker.port),
                home=self.home,
                camera_url=self.camera_url,
                door_camera_url=self.door_camera_url,
                power_key=None if self.power_key is None else self.power_key.path,
                overrides=self.config_overrides,
            )
            self.config_path.write_text(self.config.to_toml())
            self._write_manifest()
            if self.start_daemon_now:
                self.daemon.start()
            self._stack = stack.pop_all()
        return self

    def _make_keys(self) -> tuple[KeyStore, KeyStore]:
        """The drone's and the dispatcher's key stores and the SMS key, made once per work
        folder and kept (a drone keeps its keys; its nonces and counters remember them)."""
        keys = self.work / "keys"
        drone = KeyStore(keys / "drone")
        if not drone.has_drone():
            drone.init_drone(self.drone_id)
        elif drone.drone_id() != self.drone_id:
            raise HilError(
                f"{drone.path} holds the keys of drone {drone.drone_id()!r}, not "
                f"{self.drone_id!r}: use another work folder"
            )
        dispatcher = KeyStore(keys / "dispatcher")
        if not dispatcher.has_dispatcher():
            dispatcher.init_dispatcher()
        for name, data in (
            ("dispatcher.pub.json", dispatcher.file("dispatcher.pub.json").read_bytes()),
            ("drone.pub.json", drone.drone_public().to_json()),
        ):
            (keys / name).write_bytes(data)
        sms_key = self.work / "sms.key"
        if not sms_key.exists():
            fd = os.open(sms_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(os.urandom(32).hex() + "\n")
        return drone, dispatcher

    def _start_autopilot(
        self, stack: ExitStack, drone: KeyStore
    ) -> tuple[str, Callable[[float], Position | None], Callable[[], float]]:
        """The flight controller; (its connection string, where it is for the GPS, the
        clock the GPS emulator keeps: UTC seconds as the autopilot tells them)."""
        if self.sitl is not None:
            from sim.harness.hil_sitl import start_sitl

            return start_sitl(
                stack,
                self.sitl,
                self.work,
                self.home,
                self.sitl_instance,
                self.autopilot_params,
                drone,
            )
        self.server = VehicleServer(
            self.home, speedup=self.speedup, port=0, params=self.autopilot_params
        )
        self.server.start()
        stack.callback(self.server.stop)
        server = self.server
        return (
            f"tcp:127.0.0.1:{server.port}",
            vehicle_position(server, self.home[2]),
            lambda: server.utc_at_boot + server.sim_time,
        )

    def _start_gps(
        self,
        stack: ExitStack,
        dev: Path,
        position: Callable[[float], Position | None],
        clock: Callable[[], float],
    ) -> Neo6mPty:
        # UTC is the clock's reading itself (seconds since 1970), so the receiver tells the
        # autopilot's time.
        epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
        receiver = Neo6m(utc_start=epoch, utc_origin=0.0)
        gps = Neo6mPty(receiver, position, link_dir=dev, link_name="skycourier-gps", clock=clock)
        gps.start()
        stack.callback(gps.stop)
        return gps

    def _start_modem(self, stack: ExitStack, dev: Path) -> A7670Pty:
        # The bridge connects where the daemon's AT+CMQTTCONNECT says, as a real module does.
        bridge = PahoBridge()
        stack.callback(bridge.close)
        modem = A7670Pty(A7670(bridge=bridge, time_scale=1.0 / self.speedup))
        modem.start()
        stack.callback(modem.stop)
        assert modem.path is not None
        point_link(dev / "skycourier-modem", modem.path)
        self.power_key = PowerKeyLine(self.work / "pwrkey.sock", modem.power_key).start()
        stack.callback(self.power_key.stop)
        return modem

    def _start_camera(self, stack: ExitStack) -> str:
        from sim.harness.hil_camera import MjpegCamera

        if self.server is None:
            raise HilError("the camera feed follows the built-in vehicle: not with SITL")
        camera = MjpegCamera(self.server).start()
        stack.callback(camera.stop)
        return camera.url

    def _start_door(self, stack: ExitStack, ground: GroundStation) -> str:
        """The door camera's feed, and the recipient's template the orders seal."""
        from sim.harness.handover import HandoverUnavailable
        from sim.harness.hil_door import DoorFeed, door_faces, door_template

        identity = (self.config_overrides or {}).get("identity", {})
        challenge = identity.get("liveness_challenge", "blink")
        try:
            faces = door_faces(self.door_camera or "", challenge)
            self._door_template = door_template()
        except HandoverUnavailable as exc:
            raise HilError(f"no door camera: {exc}") from exc
        self.door = DoorFeed(ground, faces).start()
        stack.callback(self.door.stop)
        return self.door.url

    def recipient_template(self) -> np.ndarray:
        """The template the rig's orders seal: the door camera's recipient, enrolled, or
        the stand-in of `hil_ground` (recipients cleared by PIN) without a door camera."""
        if self._door_template is not None:
            return self._door_template.copy()
        return recipient_template()

    def _write_manifest(self) -> None:
        """`<work>/rig.json`: what `skycourier hil order` and `hil sms` need to act on this
        rig from another shell."""
        assert self.broker is not None
        np.save(self.work / "recipient.npy", self.recipient_template())
        self.sms_spool.mkdir(exist_ok=True)
        manifest = {
            "drone_id": self.drone_id,
            "broker": [self.broker.host, self.broker.port],
            "operator": OPERATOR,
            "home": list(self.home),
            "config": str(self.config_path),
            "daemon_log": str(self.log_path),
            "sms_spool": str(self.sms_spool),
            "door_camera": self.door_camera,
        }
        (self.work / "rig.json").write_text(json.dumps(manifest, indent=2) + "\n")

    @property
    def sms_spool(self) -> Path:
        """Where `skycourier hil sms` leaves SMS texts for the running `skycourier hil`."""
        return self.work / "sms-spool"

    def deliver_spooled_sms(self) -> list[str]:
        """Deliver the SMS texts waiting in `sms_spool` (oldest first) to the modem, from the
        operator's number, removing each; returns them."""
        if self.modem is None:
            raise HilError("the rig is not started")
        delivered = []
        for path in sorted(self.sms_spool.glob("*.sms")):
            text = path.read_text(encoding="utf-8", errors="replace").strip()
            path.unlink()
            if text:
                self.modem.deliver_sms(OPERATOR, text)
                delivered.append(text)
        return delivered

    @contextlib.contextmanager
    def order_queue(self) -> Iterator[OrderQueue]:
        """The daemon's order queue, opened beside the running daemon (SQLite: a reader
        while it writes)."""
        if self.config is None:
            raise HilError("the rig is not started")
        with OrderQueue(self.config.intake.queue_path) as queue:
            yield queue

    def stop(self) -> int | None:
        """Stop the daemon (SIGTERM) and then the hardware; the daemon's exit status."""
        code = self.daemon.stop()
        self._stack.close()
        return code

    # -- the daemon ------------------------------------------------------------------------

    def daemon_problem(self) -> str | None:
        return self.daemon.problem()

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Wait until the daemon takes orders over MQTT: its log says it subscribed, and a
        record it sent arrives after that, which proves its broker connection (and with it
        the subscription, made before anything is sent on a new connection) is up."""
        deadline = time.monotonic() + timeout_s
        self.daemon.wait_line(LISTENING_LINE, timeout_s)
        ground = self._ground()
        mark = ground.mark
        ground.wait_for(
            lambda r: not r.retained,
            "a record from the daemon after it subscribed to its orders",
            max(1.0, deadline - time.monotonic()),
            since=mark,
            check=self.daemon_problem,
        )

    def restart_daemon(self, timeout_s: float = 120.0) -> None:
        """Start the daemon again (after `kill_daemon` or `stop_daemon`) and wait until it
        takes orders."""
        self.daemon.start()
        self.wait_ready(timeout_s)

    def kill_daemon(self) -> int:
        return self.daemon.kill()

    def stop_daemon(self, timeout_s: float = 30.0) -> int | None:
        return self.daemon.stop(timeout_s)

    # -- faults ----------------------------------------------------------------------------

    def unplug_gps(self) -> None:
        """The GPS's lead comes out: its pty closes and ``dev/skycourier-gps`` goes."""
        self._gps().unplug()

    def replug_gps(self) -> None:
        """The GPS is plugged in again, power-cycled, behind the same link."""
        self._gps().replug()

    def hang_modem(self) -> None:
        """The A7670's firmware locks up: silent, deaf even to AT+CRESET, its connections
        dropped, until the daemon pulses its power key."""
        self._modem().hang()

    def cut_autopilot_link(self, cut: bool = True) -> None:
        """Silence the flight controller's link both ways (True) or restore it (False); the
        autopilot flies on by itself meanwhile. The built-in vehicle only."""
        if self.server is None:
            raise HilError("cutting the autopilot link needs the built-in vehicle, not SITL")
        self.server.set_link_blocked(cut)

    def restart_broker(self, down_s: float) -> None:
        """Restart the broker, down for `down_s` seconds, as its administrator would."""
        if self.broker is None:
            raise HilError("the rig is not started")
        self.broker.restart(down_s)

    def _gps(self) -> Neo6mPty:
        if self.gps is None:
            raise HilError("the rig is not started")
        return self.gps

    def _modem(self) -> A7670Pty:
        if self.modem is None:
            raise HilError("the rig is not started")
        return self.modem

    # -- the dispatcher and the operator ---------------------------------------------------

    def _ground(self) -> GroundStation:
        if self.ground is None:
            raise HilError("the rig is not started")
        return self.ground

    def drop(
        self, distance_m: float = DROP_DISTANCE_M, bearing_deg: float = DROP_BEARING_DEG
    ) -> tuple[float, float]:
        """A drop point `distance_m` from home on `bearing_deg`."""
        return offset(self.home[0], self.home[1], distance_m, bearing_deg)

    def order(
        self,
        order_id: str,
        *,
        drop: tuple[float, float] | None = None,
        pin: str | None = None,
        valid_s: int = 3600,
    ) -> bytes:
        """A signed order for this drone, as the dispatcher makes it."""
        drone, dispatcher = self._keystores()
        if self._door_template is not None:
            from sim.harness.hil_door import door_order

            return door_order(
                dispatcher.dispatcher_signing_key(),
                drone.drone_seal_key().public_key(),
                self._door_template,
                drone_id=self.drone_id,
                order_id=order_id,
                drop=drop or self.drop(),
                pin=pin,
                valid_s=valid_s,
            )
        return make_order(
            dispatcher.dispatcher_signing_key(),
            drone.drone_seal_key().public_key(),
            drone_id=self.drone_id,
            order_id=order_id,
            drop=drop or self.drop(),
            pin=pin,
            valid_s=valid_s,
        )

    def hostile_order(self, kind: str, order_id: str) -> bytes:
        """An order this drone must refuse (`hil_ground.hostile_order`)."""
        drone, dispatcher = self._keystores()
        return hostile_order(
            kind,
            dispatcher.dispatcher_signing_key(),
            drone.drone_seal_key().public_key(),
            drone_id=self.drone_id,
            order_id=order_id,
            drop=self.drop(),
        )

    def _keystores(self) -> tuple[KeyStore, KeyStore]:
        if self._keys is None:
            raise HilError("the rig is not started")
        return self._keys

    def submit_order(self, blob: bytes) -> int:
        """Publish an order on the drone's orders topic as the dispatcher does; returns the
        ground station's mark from just before, for waiting on the answer."""
        ground = self._ground()
        mark = ground.mark
        ground.publish_order(blob)
        return mark

    def send_sms(self, command: str, sender: str = OPERATOR) -> str:
        """An operator's signed command ("pin 4711", "abort", ...) arriving at the modem as
        an SMS from `sender`; returns the text."""
        if self._operator is None or self.modem is None:
            raise HilError("the rig is not started")
        text = self._operator.sign(command)
        self.modem.deliver_sms(sender, text)
        return text

    def wait_event(
        self, kind: str, order_id: str | None, timeout_s: float, *, since: int = 0
    ) -> schema.Event:
        """The first event `kind` (of `order_id`) from the ground's index `since` on; fails
        at once, with the daemon's log, if the daemon dies meanwhile."""
        return self._ground().wait_event(
            kind, order_id, timeout_s, since=since, check=self.daemon_problem
        )

    def wait_for(
        self, match: Callable[[Received], bool], what: str, timeout_s: float, *, since: int = 0
    ) -> Received:
        return self._ground().wait_for(
            match, what, timeout_s, since=since, check=self.daemon_problem
        )


#: The events after which an order is settled, one way or the other.
FINAL_ORDER_EVENTS = ("order-done", "order-refused", "order-interrupted")


def follow_order(
    ground: GroundStation,
    order_id: str,
    *,
    since: int,
    timeout_s: float,
    answer_recipient: Callable[[], object] | None = None,
    on_event: Callable[[schema.Event], None] | None = None,
    check: Callable[[], str | None] | None = None,
) -> schema.Event:
    """Follow an order on the ground from index `since` until it is settled
    (`FINAL_ORDER_EVENTS`): each of its events goes to `on_event`, and when the drone asks
    for its recipient (the `verify-recipient` event) `answer_recipient` is called (the
    operator sends the PIN by SMS). Returns the settling event; GroundError if none comes
    within `timeout_s` (or `check` names a problem)."""
    deadline = time.monotonic() + timeout_s
    seen = since
    while True:
        found = ground.wait_for(
            lambda r: isinstance(r.record, schema.Event) and r.record.mission_id == order_id,
            f"the next event of order {order_id}",
            max(1.0, deadline - time.monotonic()),
            since=seen,
            check=check,
        )
        seen = found.index + 1
        event = found.record
        assert isinstance(event, schema.Event)
        if on_event is not None:
            on_event(event)
        if event.kind == "verify-recipient" and answer_recipient is not None:
            answer_recipient()
        if event.kind in FINAL_ORDER_EVENTS:
            return event


def spool_sms(spool: Path, text: str) -> Path:
    """Leave an SMS text for the running rig to deliver (`HilRig.deliver_spooled_sms`),
    written whole before it appears under its final name."""
    spool.mkdir(parents=True, exist_ok=True)
    path = spool / f"{time.time_ns()}.sms"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_manifest(work: Path) -> dict[str, Any]:
    """The running rig's `rig.json` in `work`; HilError naming the file when it is absent."""
    path = work / "rig.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise HilError(
            f"{path}: no rig there (start one with `skycourier hil --work {work}`)"
        ) from None
    except (OSError, ValueError) as exc:
        raise HilError(f"{path}: cannot be read: {exc}") from None
