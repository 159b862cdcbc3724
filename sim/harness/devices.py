"""The emulated hardware a simulated flight runs the daemon's own drivers against.

The NEO-6M emulator on a pty read by the GPS driver, the A7670 emulator on a pty driven by the
modem supervisor and its MQTT stack bridged to a broker, the broker itself, an LTE outage on
cue, and the clocks that keep them in the simulator's time. Only the far side of each port is
simulated; everything on the companion's side is what flies.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

from companion.bus import Bus
from companion.config import Config
from companion.gps.driver import GpsDriver
from companion.gps.integrity import IntegrityMonitor
from companion.gps.service import start_gps
from companion.mission.events import MissionEvent
from companion.modem.state import ModemState
from companion.telemetry.uplink import TelemetryUplink, open_uplink
from firmware_bridge.state import VehicleState
from sim.gps.neo6m import Neo6m, Position
from sim.gps.pty_runner import Neo6mPty
from sim.modem.a7670 import A7670
from sim.modem.mqtt_bridge import PahoBridge
from sim.modem.pty_runner import A7670Pty
from sim.mqtt_broker import Broker, BrokerError, start_broker
from sim.vehicle import VehicleServer

log = logging.getLogger(__name__)


class SpeedupClock:
    """Simulated seconds for SITL, whose clock the companion cannot read directly: the wall
    clock times the speed-up (SITL falls behind it when the machine cannot keep up)."""

    def __init__(self, speedup: float) -> None:
        self.speedup = speedup
        self._start = time.monotonic()

    def __call__(self) -> float:
        return (time.monotonic() - self._start) * self.speedup


def sim_time_of(server: VehicleServer) -> Callable[[], float]:
    """The built-in vehicle's own simulated clock (its time_boot_ms), exact at any speed."""
    return lambda: server.sim_time


def companion_gps(
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


def own_broker(stack: ExitStack) -> tuple[str, int]:
    """A broker for this run: on MQTT's port 1883 when it is free, so `skycourier track` finds
    it without options, else on any free port."""
    broker: Broker
    try:
        broker = start_broker(port=1883)
    except BrokerError:
        broker = start_broker()
    stack.callback(broker.stop)
    return broker.host, broker.port


def telemetry_uplink(
    stack: ExitStack,
    config: Config,
    bus: Bus,
    out_dir: Path,
    clock: Callable[[], float],
    broker: tuple[str, int],
) -> tuple[TelemetryUplink, A7670Pty]:
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
    link = open_uplink(
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


def schedule_outage(
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
