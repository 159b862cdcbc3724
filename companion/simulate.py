"""`skycourier sim`: one whole delivery against the built-in vehicle or ArduPilot SITL.

It wires the same parts the on-board daemon uses (bus, bridge, delivery state machine,
journal) to a simulated autopilot, shows live progress, and writes the flight report. The
only difference from a real flight is where the MAVLink link leads.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from companion.bus import Bus
from companion.config import Config
from companion.geo import distance_m, offset
from companion.gps.driver import GpsDriver
from companion.gps.flight_summary import GpsFlightSummary
from companion.gps.integrity import IntegrityMonitor
from companion.gps.service import start_gps
from companion.mission.delivery import DeliveryMission, DeliveryPlan
from companion.mission.events import MissionEvent
from companion.mission.journal import Journal
from companion.modem.state import ModemState
from companion.progress import DeliveryProgress
from companion.report import FlightRecorder, build_report, write_report
from companion.telemetry.link import TelemetryLink, open_link
from companion.vehicle_link import connect_vehicle
from companion.vision.service import Detections
from firmware_bridge.state import VehicleState
from sim.gps.neo6m import Neo6m, Position
from sim.gps.pty_runner import Neo6mPty
from sim.modem.a7670 import A7670
from sim.modem.mqtt_bridge import PahoBridge
from sim.modem.pty_runner import A7670Pty
from sim.mqtt_broker import Broker, BrokerError, start_broker
from sim.sitl import SitlProcess
from sim.vehicle import VehicleServer

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


def run_simulation(
    config: Config,
    order: Order,
    out_dir: Path,
    *,
    sitl_binary: Path | None = None,
    sitl_defaults: list[Path] | None = None,
    show_progress: bool = True,
    broker: tuple[str, int] | None = None,
    lte_outage_s: float = 0.0,
    on_broker: Callable[[str, int], None] | None = None,
) -> dict:
    """Fly `order` in simulation, write report.json and flight.png to `out_dir`, return the
    report.

    Telemetry goes through the A7670 emulator on a pty to an MQTT broker: `broker` (host,
    port), or one started here (mosquitto if installed, else the embedded one), announced
    through `on_broker`. `lte_outage_s` cuts the LTE coverage for that many simulated
    seconds from the start of the cruise."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sim = config.sim
    home = sim.home
    bus = Bus()
    wall_start = time.monotonic()
    gps_summary = GpsFlightSummary()
    gps_summary.attach(bus)
    with ExitStack() as stack:
        if sitl_binary is not None:
            sitl = SitlProcess(
                sitl_binary,
                home=(*home, 0.0),
                speedup=sim.speedup,
                defaults=sitl_defaults,
                workdir=out_dir / "sitl",
            )
            stack.callback(sitl.stop)
            sitl.start()
            connection = sitl.connection
            server = None
            clock: Callable[[], float] = _SpeedupClock(sim.speedup)
        else:
            server = VehicleServer(home, speedup=sim.speedup, port=0, wind=sim.wind)
            server.start()
            stack.callback(server.stop)
            connection = f"tcp:127.0.0.1:{server.port}"
            clock = _sim_time(server)
        recorder = FlightRecorder()
        recorder.attach(bus)
        progress = DeliveryProgress(
            (order.drop_lat, order.drop_lon), (home[0], home[1]), enabled=show_progress
        )
        bus.subscribe(VehicleState, progress.on_state)
        bus.subscribe(MissionEvent, progress.on_event)
        vehicle = connect_vehicle(
            config,
            bus.publish,
            connection=connection,
            # The simulated autopilot times its companion watchdog in its own, faster clock.
            heartbeat_interval_s=min(1.0 / config.companion.heartbeat_hz, 1.0 / sim.speedup),
            clock=clock,
        )
        stack.callback(vehicle.close)
        gps = _companion_gps(stack, config, bus, server, clock)
        host, port = broker or _own_broker(stack)
        if on_broker is not None:
            on_broker(host, port)
        link, modem = _telemetry_link(stack, config, bus, out_dir, clock, (host, port))
        if lte_outage_s > 0:
            _schedule_outage(bus, modem, clock, lte_outage_s)
        journal = Journal(out_dir / "journal.db")
        stack.callback(journal.close)
        fl = config.flight
        plan = DeliveryPlan(
            mission_id=order.mission_id,
            drop_lat=order.drop_lat,
            drop_lon=order.drop_lon,
            cruise_alt_m=fl.cruise_alt_m,
            handover_alt_m=fl.handover_alt_m,
            arrival_radius_m=fl.arrival_radius_m,
            release_hold_s=fl.release_hold_s,
            min_battery_pct=fl.min_battery_pct,
            preflight_timeout_s=fl.preflight_timeout_s,
            phase_timeout_s=fl.phase_timeout_s,
            link_loss_grace_s=fl.link_loss_grace_s,
            max_hold_s=fl.max_hold_s,
        )
        vision = SimVision(bus, clock, (order.drop_lat, order.drop_lon))
        vision.start()
        stack.callback(vision.stop)
        mission = DeliveryMission(
            vehicle, plan, journal, bus.publish, obstacle_monitor=vision.guard
        )
        with progress:
            outcome = mission.run()
        # Everything queued in flight reaches the broker before the run ends.
        link.drain(timeout_s=60.0)
        telemetry = link.summary()
        telemetry["broker"] = f"{host}:{port}"
    report = build_report(
        recorder,
        outcome=outcome,
        config=config,
        mission_id=order.mission_id,
        home=home,
        drop=(order.drop_lat, order.drop_lon),
        wall_duration_s=time.monotonic() - wall_start,
        autopilot="ArduCopter SITL" if sitl_binary else "built-in vehicle",
    )
    report["companion_gps"] = gps_summary.as_dict(gps)
    report["telemetry"] = telemetry
    report["vision"] = vision.summary()
    write_report(out_dir, report, recorder)
    return report


class _SpeedupClock:
    """Simulated seconds for SITL, whose clock the companion cannot read directly: the wall
    clock times the speed-up (SITL falls behind it when the machine cannot keep up)."""

    def __init__(self, speedup: float) -> None:
        self.speedup = speedup
        self._start = time.monotonic()

    def __call__(self) -> float:
        return (time.monotonic() - self._start) * self.speedup


def _sim_time(server: VehicleServer) -> Callable[[], float]:
    """The built-in vehicle's own simulated clock (its time_boot_ms), exact at any speed."""
    return lambda: server.sim_time


def _companion_gps(
    stack: ExitStack,
    config: Config,
    bus: Bus,
    server: VehicleServer | None,
    clock: Callable[[], float],
) -> GpsDriver:
    """The NEO-6M emulator on a real pty, flying with the vehicle, and the companion's GPS
    driver reading it, configured over UBX as on the drone and cross-checked against the
    autopilot's GPS."""
    home_alt = config.sim.home[2]
    if server is not None:

        def position(_t: float) -> Position:
            snap = server.state
            vn, ve, _ = snap.velocity_ned
            course = math.degrees(math.atan2(ve, vn)) % 360.0
            return (snap.lat, snap.lon, home_alt + snap.alt_rel_m, math.hypot(vn, ve), course)

        utc_boot = datetime.fromtimestamp(server.utc_at_boot, timezone.utc)
        receiver = Neo6m(utc_start=utc_boot, utc_origin=0.0)
        # The pty and the threads add wall-clock latency, which the speed-up stretches in
        # simulated seconds: allow 0.1 s of it (wall) on top of the usual 1 s.
        monitor = IntegrityMonitor(time_tolerance_s=1.0 + 0.1 * config.sim.speedup)
    else:
        latest: dict[str, VehicleState] = {}
        bus.subscribe(VehicleState, lambda state: latest.update(state=state))

        def position(_t: float) -> Position | None:
            state = latest.get("state")
            if state is None or state.position is None:
                return None
            vn, ve, _ = state.velocity_ned_mps or (0.0, 0.0, 0.0)
            course = math.degrees(math.atan2(ve, vn)) % 360.0
            return (state.position.lat, state.position.lon, state.position.alt_msl_m,
                    math.hypot(vn, ve), course)  # fmt: skip

        receiver = Neo6m(utc_start=datetime.now(timezone.utc))
        # SITL's UTC runs in its own simulated time, which the speed-up clock only
        # approximates, so the time comparison would raise false alarms: off for SITL.
        monitor = IntegrityMonitor(time_tolerance_s=math.inf)
    runner = Neo6mPty(receiver, position, clock=clock)
    runner.start()
    stack.callback(runner.stop)
    assert runner.path is not None
    driver = start_gps(
        config.gps,
        bus,
        port=runner.path,
        clock=clock,
        monitor=monitor,
        # Simulated seconds: half a wall second per UBX request at any speed-up.
        ack_timeout_s=max(1.0, 0.5 * config.sim.speedup),
    )
    assert driver is not None
    stack.callback(driver.stop)
    return driver


def _own_broker(stack: ExitStack) -> tuple[str, int]:
    """A broker for this run: on MQTT's port 1883 when it is free, so `skycourier track` finds
    it without options, else on any free port."""
    broker: Broker
    try:
        broker = start_broker(port=1883)
    except BrokerError:
        broker = start_broker()
    stack.callback(broker.stop)
    return broker.host, broker.port


def _telemetry_link(
    stack: ExitStack,
    config: Config,
    bus: Bus,
    out_dir: Path,
    clock: Callable[[], float],
    broker: tuple[str, int],
) -> tuple[TelemetryLink, A7670Pty]:
    """The A7670 emulator on a real pty, its MQTT stack bridged to the broker, and the
    daemon's telemetry chain driving it through AT commands. The module's own delays run in
    simulated time (scaled by the speed-up); the driver keeps the manual's timeouts in wall
    time, as it would on a slow real module."""
    bridge = PahoBridge()
    stack.callback(bridge.close)
    modem = A7670Pty(A7670(bridge=bridge, time_scale=1.0 / config.sim.speedup))
    modem.start()
    stack.callback(modem.stop)
    assert modem.path is not None
    telemetry = config.updated(
        "simulator", telemetry={"broker": f"tcp://{broker[0]}:{broker[1]}", "transport": "modem"}
    ).telemetry
    link = open_link(
        config.modem,
        telemetry,
        bus,
        port=modem.path,
        queue_path=out_dir / "telemetry.db",
        clock=clock,
        power_key=modem.power_key,
    )
    assert link is not None
    stack.callback(link.close)
    return link, modem


def _schedule_outage(
    bus: Bus, modem: A7670Pty, clock: Callable[[], float], duration_s: float
) -> None:
    """Cut LTE coverage when the cruise starts (or, if the modem is still coming up, as soon
    as it is up), restore it `duration_s` simulated seconds later: a valley without coverage
    on the way to the drop."""

    link_up = threading.Event()

    def on_modem(state: ModemState) -> None:
        if state.mqtt_up:
            link_up.set()

    def outage() -> None:
        link_up.wait(timeout=60.0)  # cut a link that is up, not one still booting
        modem.set_coverage(False)
        log.warning("LTE coverage lost for %.0f s (simulated outage)", duration_s)
        end = clock() + duration_s
        while clock() < end:
            time.sleep(0.02)
        modem.set_coverage(True)
        log.warning("LTE coverage back")

    def on_event(event: MissionEvent) -> None:
        if event.phase.value == "cruise" and event.event == "enter":
            threading.Thread(target=outage, name="lte-outage", daemon=True).start()

    bus.subscribe(ModemState, on_modem)
    bus.subscribe(MissionEvent, on_event)


# -- the simulated downward camera and the descent-cone guard ---------------------------------

#: Frames per simulated second the vision loop aims at (fewer when the detector cannot keep
#: up with the speed-up: the newest moment always wins, none is queued).
VISION_HZ = 4.0
#: The camera only matters near the hand-over: below this altitude, within this distance of
#: the drop, until the parcel is released (rendering and detecting cost ~50-80 ms a frame).
VISION_BELOW_M = 40.0
VISION_WITHIN_M = 50.0
#: The simulated person steps onto the pad as the descent starts and walks off this many
#: simulated seconds after the drone has stopped over them (at the latest after the stay).
PERSON_LINGER_S = 1.0
PERSON_MAX_STAY_S = 30.0


class SimVision:
    """The vision loop of `skycourier sim`: renders `SimCamera` frames at the vehicle's
    altitude and offset from the drop point, runs the real YOLOv4-Tiny detector on them and
    feeds a `DescentGuard`, which the mission consults as its obstacle monitor. Its own thread,
    paced in simulated time; `summary()` is the report's `vision` section."""

    def __init__(self, bus: Bus, clock: Callable[[], float], drop: tuple[float, float]) -> None:
        from companion.vision.descent_guard import DescentGuard
        from companion.vision.detector import model_path
        from sim.camera import GEOMETRY

        self.clock = clock
        self.bus = bus
        self.drop = drop
        self.model = model_path("fp32")
        self.guard: DescentGuard | None = None
        self.note = ""
        self.frames = 0
        self.errors = 0
        self.detections: dict[str, int] = {}
        self.intruder_frames = 0
        self.frame_ms: list[float] = []
        self.holds: list[dict] = []
        self._geometry = GEOMETRY
        self._camera = None  # the SimCamera of the current scene
        self._scene_t0: float | None = None  # clock() when the descent started
        self._state: VehicleState | None = None
        self._done = False  # parcel released or mission over: the camera is off
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if not self.model.exists():
            self.note = f"{self.model} is missing"
            log.warning(
                "sim camera off: %s is missing; run `skycourier models build` to enable the "
                "simulated camera (flying without vision)",
                self.model,
            )
            return
        self.guard = DescentGuard(GEOMETRY, clock=clock)
        bus.subscribe(VehicleState, self._on_state)
        bus.subscribe(MissionEvent, self._on_event)

    def start(self) -> None:
        if self.guard is not None:
            self._thread = threading.Thread(target=self._run, name="sim-vision", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)

    # -- bus --------------------------------------------------------------------------------

    def _on_state(self, state: VehicleState) -> None:
        self._state = state

    def _on_event(self, event: MissionEvent) -> None:
        phase, what = event.phase.value, event.event
        if phase == "descend" and what == "enter":
            self._scene_t0 = self.clock()
            self._camera = self._scene(PERSON_MAX_STAY_S)
        elif what == "hold":
            self.holds.append(
                {"phase": phase, "at_s": event.boot_time_s, "reason": event.detail.get("reason")}
            )
            if self._scene_t0 is not None and len(self.holds) == 1:
                # Seeing the drone stop above them, the person walks off.
                self._camera = self._scene(self.clock() - self._scene_t0 + PERSON_LINGER_S)
        elif what == "resume" and self.holds:
            self.holds[-1]["held_s"] = event.detail.get("held_s")
        if what in ("released", "abort") or event.phase.value in ("climb", "done"):
            self._done = True

    def _scene(self, stay_s: float):
        from sim.camera import PersonVisit, SimCamera, SimScene

        return SimCamera(SimScene(people=(PersonVisit(appear_s=0.0, stay_s=stay_s),)))

    # -- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        from companion.geo import local_en_m
        from companion.vision.detector import Detector
        from companion.vision.errors import ModelError

        assert self.guard is not None
        try:
            detector = Detector(self.model, threads=1)
        except ModelError as exc:
            self.note = str(exc)
            log.warning("sim camera off: %s; run `skycourier models build`", exc)
            return
        next_t = -math.inf
        size = (self._geometry.width, self._geometry.height)
        while not self._stop.is_set():
            state = self._state
            pos = state.position if state is not None else None
            near = pos is not None and (
                pos.alt_rel_m < VISION_BELOW_M
                and distance_m(pos.lat, pos.lon, *self.drop) < VISION_WITHIN_M
            )
            t = self.clock()
            if self._done or not near or t < next_t:
                self._stop.wait(0.01)
                continue
            assert pos is not None
            next_t = t + 1.0 / VISION_HZ
            east, north = local_en_m(self.drop[0], self.drop[1], pos.lat, pos.lon)
            camera = self._camera or self._scene(0.0)
            scene_t = t - self._scene_t0 if self._scene_t0 is not None else -1.0
            try:
                started = time.perf_counter()
                found = detector.detect(camera.frame(pos.alt_rel_m, scene_t, (north, east)))
                self.frame_ms.append((time.perf_counter() - started) * 1000.0)
                intruders = self.guard.update(found, size, t)
            except Exception:  # a bad frame is counted and logged, never the end of the sim
                self.errors += 1
                log.exception("sim camera: frame failed")
                continue
            self.frames += 1
            self.intruder_frames += bool(intruders)
            counts: dict[str, int] = {}
            for det in found:
                counts[det.class_name] = counts.get(det.class_name, 0) + 1
                self.detections[det.class_name] = self.detections.get(det.class_name, 0) + 1
            # On the bus like the daemon's camera: telemetry carries the counts.
            self.bus.publish(
                Detections(
                    t, self.frames, tuple(sorted(counts.items(), key=lambda kv: -kv[1])), size,
                    tuple(found), self.frame_ms[-1],
                )
            )  # fmt: skip

    def summary(self) -> dict:
        """The report's `vision` section."""
        if self.guard is None or self.note:
            return {"enabled": False, "note": self.note, "holds": len(self.holds)}
        ms = sorted(self.frame_ms)
        return {
            "enabled": True,
            "model": self.model.name,
            "window": (
                f"below {VISION_BELOW_M:g} m within {VISION_WITHIN_M:g} m of the drop, "
                f"until the release, at most {VISION_HZ:g} frames per simulated second"
            ),
            "frames": self.frames,
            "frame_errors": self.errors,
            "frame_ms_median": round(ms[len(ms) // 2], 1) if ms else None,
            "detections": dict(sorted(self.detections.items())),
            "frames_with_intruder": self.intruder_frames,
            "holds": len(self.holds),
            "hold_s": round(sum(h.get("held_s") or 0.0 for h in self.holds), 1),
            "hold_events": self.holds,
        }
