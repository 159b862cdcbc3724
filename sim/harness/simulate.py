"""`skycourier sim`: one whole delivery against the built-in vehicle or ArduPilot SITL.

It wires the parts the drone flies with (bus, bridge, mission core and runner, journal, the
GPS and modem drivers, the detector and descent-cone guard) to emulated hardware, shows live
progress, and writes the flight report. The autopilot flies the parameters SkyCourier ships
(`firmware_bridge/autopilot/params`), so the preflight that would refuse a flight on the drone
refuses it here.

The delivery is a secure hand-over (`sim.harness.handover`): a signed order with the
recipient's sealed face template, verified before the flight; MAVLink signing between the
companion and the autopilot; an audit trail signed by the drone; and at the drop the identity
service checking the face the simulated door camera shows (the right recipient, an impostor
or a photo) before the release gate lets the parcel go.

The built-in vehicle runs in lockstep with the companion (`sim.harness.lockstep`): its clock
waits while the mission has not taken in what the vehicle sent, and at every frame of the
simulated cameras, so a run gives the same outcome, holds and phases on a loaded machine as
on an idle one. SITL cannot be paused from outside; with the camera it runs at speed-up 2 at
most, so that the mission's camera freshness check holds.

With `skycourier sim --ground` an `OrderWatch` (`sim.harness.sim_ground`) is told when the
order takes off and how it ended, and its links go into the report.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from companion.autopilot import connect_autopilot
from companion.bus import Bus
from companion.config import Config
from companion.geo import distance_m, offset
from companion.gps.driver import GpsDriver
from companion.gps.fix import GpsFix
from companion.gps.flight_summary import GpsFlightSummary
from companion.identity.service import IdentityService
from companion.mission.events import MissionEvent
from companion.mission.journal import Journal
from companion.mission.plan import MissionPlan, checks_from_config, delivery_plan
from companion.mission.runner import MissionRunner
from companion.progress import DeliveryProgress
from companion.readiness import GroundWatch
from companion.report import FlightRecorder, build_report, write_report
from companion.security.orders import Order as SignedOrder
from companion.telemetry.uplink import TelemetryUplink
from firmware_bridge.errors import BridgeError
from firmware_bridge.payload import Gripper
from firmware_bridge.state import VehicleState
from firmware_bridge.vehicle import Vehicle
from sim.harness.devices import (
    SpeedupClock,
    companion_gps,
    own_broker,
    schedule_outage,
    sim_time_of,
    telemetry_uplink,
)
from sim.harness.handover import Handover, SimDoorCamera, handover_summary, prepare_handover
from sim.harness.lockstep import Follower, Lockstep
from sim.harness.vision import SimVision
from sim.sitl import SitlProcess
from sim.vehicle import VehicleServer
from sim.vehicle.faults import Faults

log = logging.getLogger(__name__)


class OrderError(ValueError):
    """An order file that cannot be flown; the message names the file and the field."""


@dataclass(frozen=True)
class Order:
    """Where one parcel goes (the simulated stand-in for a signed order)."""

    mission_id: str
    drop_lat: float
    drop_lon: float


def order_from_config(config: Config) -> Order:
    """The default order: a drop at the configured distance and bearing from home."""
    lat, lon = config.delivery.drop_point(config.sim.home_lat, config.sim.home_lon)
    return Order(f"sim-{uuid.uuid4().hex[:8]}", lat, lon)


def load_order(path: Path, config: Config) -> Order:
    """Read an order file: JSON with `drop` {lat, lon} or {distance_m, bearing_deg}."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise OrderError(f"{path}: cannot read: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise OrderError(f"{path}: not JSON: {exc.msg} at line {exc.lineno}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("drop"), dict):
        raise OrderError(f"{path}: expected an object with a 'drop' object")
    drop = data["drop"]
    try:
        if "lat" in drop or "lon" in drop:
            lat, lon = float(drop["lat"]), float(drop["lon"])
        else:
            lat, lon = offset(
                config.sim.home_lat,
                config.sim.home_lon,
                float(drop["distance_m"]),
                float(drop["bearing_deg"]),
            )
    except KeyError as exc:
        raise OrderError(f"{path}: drop.{exc.args[0]} is missing") from exc
    except (TypeError, ValueError) as exc:
        raise OrderError(f"{path}: drop: numbers expected ({exc})") from exc
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise OrderError(f"{path}: drop ({lat}, {lon}) is not a position on Earth")
    reach = distance_m(config.sim.home_lat, config.sim.home_lon, lat, lon)
    if reach > config.delivery.max_range_m:
        raise OrderError(
            f"{path}: drop is {reach:.0f} m from home, beyond delivery.max_range_m "
            f"({config.delivery.max_range_m:g} m)"
        )
    return Order(str(data.get("mission_id") or f"order-{uuid.uuid4().hex[:8]}"), lat, lon)


class OrderWatch(Protocol):
    """Follows the order a run flies (`sim.harness.sim_ground.SimGround`, for `--ground`)."""

    def flying(self, bus: Bus, order: Order, signed: SignedOrder | None) -> None:
        """The order is about to fly; `signed` is the verified signed order, if any."""

    def done(self, bus: Bus, order: Order, outcome: str) -> None:
        """The mission flying the order has ended with `outcome`."""

    def links(self) -> dict[str, Any]:
        """Where the flight is seen: the report's `ground` section."""


#: The fastest SITL runs with the simulated camera: SITL cannot wait for a frame, so a frame's
#: ~0.1 s of wall time must stay well inside the mission's camera age (1 s) in SITL's clock.
SITL_CAMERA_SPEEDUP = 2.0

#: What a run writes into its report folder; a new run into the same folder starts afresh.
RUN_OUTPUTS = (
    "report.json", "flight.png", "journal.db", "journal.db-wal", "journal.db-shm",
    "telemetry.db", "telemetry.db-wal", "telemetry.db-shm",
)  # fmt: skip


def run_simulation(
    config: Config,
    order: Order,
    out_dir: Path,
    *,
    sitl_binary: Path | None = None,
    sitl_defaults: list[Path] | None = None,
    autopilot_params: dict[str, float] | None = None,
    faults: Faults | None = None,
    camera: bool = True,
    show_progress: bool = True,
    broker: tuple[str, int] | None = None,
    lte_outage_s: float = 0.0,
    on_broker: Callable[[str, int], None] | None = None,
    recipient: str = "right",
    mission: MissionPlan | None = None,
    observe: Callable[[Bus], None] | None = None,
    order_watch: OrderWatch | None = None,
) -> dict:
    """Fly `order` in simulation, write report.json and flight.png to `out_dir`, return the
    report.

    The autopilot flies the shipped parameters (delivery-copter.parm and the SITL airframe
    overlay); `autopilot_params` overrides some of them (e.g. a smaller FENCE_RADIUS), and
    `faults` injects faults into the built-in vehicle; `camera` False flies without the
    simulated camera (and without the descent-cone check it feeds). Telemetry goes through the A7670
    emulator on a pty to an MQTT broker: `broker` (host, port), or one started here
    (mosquitto if installed, else the embedded one), announced through `on_broker`.
    `lte_outage_s` cuts the LTE coverage for that many simulated seconds from the start of
    the cruise. `recipient` is who waits at the drop ("right", "impostor", "photo"; "none"
    flies without the recipient check); the keys, the order and the audit trail go into
    `out_dir` too (KeyFileError, AuditError or a refused order's OrderError before anything
    flies). `mission` is a planned sortie (`skycourier sim --orders`) flown instead of the
    order's single drop, with its own legs, airspace limits and energy price; the order then
    only names the run and the drop the camera looks at. The report lists every release
    (`drops`) and the charge the autopilot counted (`battery_used_mah`); `observe` is handed
    the run's bus before anything flies, to follow it (e.g. a map of several sorties);
    `order_watch` is told when the order takes off and how it ended (its calls publish on the
    bus before the telemetry is drained), and its `links` go into the report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in RUN_OUTPUTS:
        (out_dir / name).unlink(missing_ok=True)
    bus = Bus()
    wall_start = time.monotonic()
    gps_summary = GpsFlightSummary()
    gps_summary.attach(bus)
    drop = (order.drop_lat, order.drop_lon)
    handover = prepare_handover(config, out_dir, order.mission_id, drop, recipient)
    vision = SimVision(bus, drop, wanted=camera)
    cameras = vision.enabled or handover.checks_recipient
    if sitl_binary is not None and cameras and config.sim.speedup > SITL_CAMERA_SPEEDUP:
        log.warning(
            "SITL with the simulated cameras runs at speed-up %g, not %g: SITL's clock does not "
            "wait for a frame (~0.1 s of wall time), and a stale frame holds the descent and "
            "fails the recipient check (--no-camera --recipient none flies faster)",
            SITL_CAMERA_SPEEDUP,
            config.sim.speedup,
        )
        config = config.updated("SITL with a camera", sim={"speedup": SITL_CAMERA_SPEEDUP})
    sim = config.sim
    home = sim.home
    with ExitStack() as stack:
        stack.callback(handover.close)
        stack.callback(vision.stop)
        identity, door = _recipient_check(stack, bus, config, handover, order.mission_id)
        server: VehicleServer | None = None
        if sitl_binary is not None:
            sitl = SitlProcess(
                sitl_binary,
                home=(*home, 0.0),
                speedup=sim.speedup,
                defaults=sitl_defaults,
                params=autopilot_params or {},
                workdir=out_dir / "sitl",
            )
            stack.callback(sitl.stop)
            sitl.start()
            connection = sitl.connection
            clock: Callable[[], float] = SpeedupClock(sim.speedup)
        else:
            server = VehicleServer(
                home, speedup=sim.speedup, port=0, wind=sim.wind, params=autopilot_params,
                faults=faults,
            )  # fmt: skip
            server.start()
            stack.callback(server.stop)
            connection = f"tcp:127.0.0.1:{server.port}"
            clock = sim_time_of(server)
        recorder = FlightRecorder()
        recorder.attach(bus)
        progress = DeliveryProgress(drop, (home[0], home[1]), enabled=show_progress)
        bus.subscribe(VehicleState, progress.on_state)
        bus.subscribe(MissionEvent, progress.on_event)
        vehicle = connect_autopilot(
            config,
            bus.publish,
            connection=connection,
            # The simulated autopilot times its companion watchdog in its own, faster clock.
            heartbeat_interval_s=min(1.0 / config.companion.heartbeat_hz, 1.0 / sim.speedup),
            clock=clock,
            signing_secret=handover.signing_secret(),
        )
        stack.callback(vehicle.close)
        if sitl_binary is not None:
            # Loading the parcel: SITL's simulated gripper holds its 1 kg load only when it
            # closes on the ground (the built-in vehicle starts with the parcel aboard).
            Gripper(vehicle).grab()
        gps = companion_gps(stack, config, bus, server, clock)
        host, port = broker or own_broker(stack)
        if on_broker is not None:
            on_broker(host, port)
        uplink, modem = telemetry_uplink(stack, config, bus, out_dir, clock, (host, port))
        if lte_outage_s > 0:
            schedule_outage(bus, modem, clock, lte_outage_s)
        journal = Journal(out_dir / "journal.db")
        stack.callback(journal.close)
        plan = dataclasses.replace(
            mission
            or delivery_plan(
                order.mission_id,
                drop,
                config.flight,
                camera_required=vision.enabled,
                recipient_check=handover.checks_recipient,
            ),
            checks=dataclasses.replace(
                checks_from_config(config.preflight), signed_orders=handover.order is not None
            ),
        )
        releases = ReleaseLog()
        releases.attach(bus)
        if observe is not None:
            observe(bus)
        signed = [handover.order] if handover.order is not None else []
        ground = GroundWatch(
            bus, clock, uplink=lambda: uplink, wind=simulated_wind(config), orders=signed
        )
        runner = MissionRunner(vehicle, journal, bus, audit=handover.audit, systems=ground.status)
        lockstep = None
        if server is not None:
            followers = [gps_follower(bus, server, gps), uplink_follower(uplink, server)]
            cameras = [door] if door is not None else []
            lockstep = Lockstep(server, runner, vision, followers=followers, cameras=cameras)
            server.set_step_gate(lockstep.gate)
            stack.callback(server.set_step_gate, None)
            vision.start_lockstep(runner)
            if door is not None:
                door.start_lockstep(runner)
        else:
            vision.start_free(clock)
            if door is not None:
                door.start_free()
        if order_watch is not None:
            order_watch.flying(bus, order, handover.order)
        with progress:
            outcome = runner.run(plan)
        if order_watch is not None:
            order_watch.done(bus, order, outcome)
        if outcome != "delivered":
            _wait_until_landed(vehicle, sim.speedup)
        gripper = _gripper(server, handover)
        signing = {
            "link": vehicle.link.signing,
            "autopilot_rejected": None if server is None else server.signing_rejected,
        }
        # Everything queued in flight reaches the broker before the run ends. After an abort
        # the telemetry goes on at the abort's rate, faster than the modem sends it at a high
        # speed-up: only what was queued until the landing is waited for then.
        if outcome == "delivered":
            uplink.drain(timeout_s=60.0)
        else:
            _drain_through(uplink, uplink.store.last_seq, timeout_s=60.0)
        telemetry = uplink.summary()
        telemetry["broker"] = f"{host}:{port}"
    report = build_report(
        recorder,
        outcome=outcome,
        config=config,
        mission_id=order.mission_id,
        home=home,
        drop=drop,
        wall_duration_s=time.monotonic() - wall_start,
        autopilot="ArduCopter SITL" if sitl_binary else "built-in vehicle",
        ground=None if order_watch is None else order_watch.links(),
    )
    report["drops"] = releases.drops()
    report["battery_used_mah"] = releases.consumed_mah
    report["companion_gps"] = gps_summary.as_dict(gps)
    report["telemetry"] = telemetry
    report["vision"] = vision.summary()
    report["handover"] = handover_summary(
        handover,
        identity=identity.summary() if identity is not None else None,
        camera=door,
        gripper=gripper,
        signing=signing,
    )
    report["speedup"] = sim.speedup
    report["lockstep_stalls"] = None if lockstep is None else lockstep.stalls
    write_report(out_dir, report, recorder)
    return report


class ReleaseLog:
    """Where and when each parcel left the drone (the mission's "released" events, placed at
    the autopilot's latest position), and the charge the autopilot has counted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: VehicleState | None = None
        self._drops: list[dict] = []
        self.consumed_mah: float | None = None

    def attach(self, bus: Bus) -> None:
        bus.subscribe(VehicleState, self._on_state)
        bus.subscribe(MissionEvent, self._on_event)

    def _on_state(self, state: VehicleState) -> None:
        with self._lock:
            self._state = state
            if state.battery.consumed_mah is not None:
                self.consumed_mah = round(state.battery.consumed_mah, 1)

    def _on_event(self, event: MissionEvent) -> None:
        if event.event != "released":
            return
        with self._lock:
            state = self._state
            where = None if state is None else state.position
            self._drops.append(
                {
                    "drop": event.detail.get("drop"),
                    "boot_time_s": event.boot_time_s,
                    "lat": None if where is None else round(where.lat, 7),
                    "lon": None if where is None else round(where.lon, 7),
                    "alt_rel_m": None if where is None else round(where.alt_rel_m, 2),
                }
            )

    def drops(self) -> list[dict]:
        with self._lock:
            return list(self._drops)


def simulated_wind(config: Config) -> tuple[float, str]:
    """The wind the simulator blows, as the preflight's wind report."""
    return config.sim.wind_speed_mps, "simulated, sim.wind_speed_mps"


def _recipient_check(
    stack: ExitStack, bus: Bus, config: Config, handover: Handover, drop_id: str
) -> tuple[IdentityService | None, SimDoorCamera | None]:
    """The identity service, expecting the order's recipient at `drop_id`, and the door
    camera that shows it the face; (None, None) for a delivery without the check."""
    if handover.order is None:
        return None, None
    # The door camera is not the downward camera: its person boxes are no region of interest.
    identity = IdentityService(
        bus, handover.analyzer, config.identity, audit=handover.audit, person_roi=False
    )
    stack.callback(identity.close)
    identity.expect_order(handover.order, handover.drone_keys.drone_seal_key(), drop_id)
    door = SimDoorCamera(bus, drop_id, handover.faces, identity.frame)
    stack.callback(door.stop)
    return identity, door


#: Simulated seconds an aborted delivery's return home (the autopilot's RTL) may take.
RETURN_LIMIT_S = 600.0


def _wait_until_landed(vehicle: Vehicle, speedup: float) -> None:
    """After an abort the autopilot flies home on its own (RTL): wait until it has landed
    and disarmed, so that the report shows the whole flight and where the parcel went."""
    if not vehicle.state.armed:
        return
    try:
        vehicle.wait_until(lambda s: not s.armed, RETURN_LIMIT_S / speedup, "the landing")
    except BridgeError as exc:
        log.warning("sim: the vehicle did not land after the abort: %s", exc)


def _drain_through(uplink: TelemetryUplink, seq: int, timeout_s: float) -> bool:
    """Wait until every record up to `seq` is acknowledged; False if time ran out."""
    deadline = time.monotonic() + timeout_s
    while (oldest := uplink.store.peek(1)) and oldest[0].seq <= seq:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _gripper(server: VehicleServer | None, handover: Handover) -> dict:
    """Whether the parcel left the drone and where the drone ended up: the built-in vehicle's
    own gripper and position, or (SITL) the mission's "released" record."""
    if server is not None:
        snap = server.state
        return {
            "released": snap.gripper_released,
            "parcel_aboard": snap.load_held,
            "landed": snap.landed and not snap.armed,
            "landed_from_home_m": round(math.hypot(snap.north_m, snap.east_m), 1),
            "source": "built-in vehicle",
        }
    released = any(kind == "released" for kind, _ in handover.records)
    return {"released": released, "parcel_aboard": None, "landed": None,
            "landed_from_home_m": None, "source": "mission records"}  # fmt: skip


#: Simulated seconds the built-in vehicle may run before telemetry first reaches the broker.
UPLINK_LEAD_S = 15.0
#: Wall seconds the vehicle waits for the uplink before take-off: the A7670's boot, attach
#: and recovery ladder (re-register, radio off and on, AT+CRESET) at their documented
#: delays, with room; a modem that never comes back is then left to the preflight's timeout.
UPLINK_PATIENCE_S = 120.0


def uplink_follower(uplink: TelemetryUplink, server: VehicleServer) -> Follower:
    """The uplink as a lockstep follower until the vehicle first arms. The A7670 emulator
    boots, attaches and recovers in wall time (the module's documented delays) while the
    preflight waits for a flowing uplink in simulated time, so without this a slow machine
    (an AT answer late past the driver's timeout, and the recovery that follows) would spend
    the preflight's timeout waiting for the modem. Before take-off the clock holds
    `UPLINK_LEAD_S` after its start until telemetry first reaches the broker, and at once
    whenever the link stops flowing (connected with something acknowledged, as the preflight
    judges it), for up to `UPLINK_PATIENCE_S` wall seconds; what was sampled meanwhile is
    queued and sent. From the first arming on, never: an outage in flight is the modem's to
    ride out, not the simulator's."""
    airborne: list[bool] = []

    def seen() -> float:
        if airborne or server.state.armed:
            airborne[:] = [True]
            return math.inf
        flowing = uplink.transport.connected and uplink.publisher.stats().published > 0
        return math.inf if flowing else 0.0

    return Follower("the telemetry uplink", seen, UPLINK_LEAD_S, UPLINK_PATIENCE_S)


def gps_follower(bus: Bus, server: VehicleServer, driver: GpsDriver) -> Follower:
    """The companion's GPS as a lockstep follower once the driver has configured the
    receiver (before that, the receiver needs simulated time to pass to answer and switch its
    baud rate): the newest fix it has decoded, as the simulated time its UTC shows (the
    emulated receiver's UTC runs with the vehicle's clock), at most 0.6 s (three 5 Hz epochs)
    behind the vehicle."""
    utc_boot = server.utc_at_boot
    newest: list[float] = []

    def seen() -> float | None:
        if not newest or not driver.settled:
            return None
        return newest[0]

    def on_fix(fix: GpsFix) -> None:
        if fix.time is not None:
            t = fix.time.timestamp() - utc_boot
            if not newest or t > newest[0]:
                newest[:] = [t]

    bus.subscribe(GpsFix, on_fix)
    return Follower("the companion's GPS", seen, 0.6)
