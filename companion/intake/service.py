"""The daemon's order intake as parts the daemon starts: the queue and the verifier
(`open_intake`, before anything can deliver an order), the downlink subscription made each
time the telemetry link starts (`listen_on`), and the thread that flies the queue
(`start_flights`, once the autopilot is up and unfinished missions are closed).

Orders are verified against `[security] dispatcher_pub` for this drone (the drone id of the
key store in `[security] keys_dir`, whose seal key opens the orders' recipient templates; the
telemetry drone id without one). Without a dispatcher key every order is refused, each with
that reason on the uplink: the daemon still starts, supervises and answers.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from contextlib import ExitStack

from companion.bus import Bus
from companion.config import Config
from companion.intake.downlink import subscribe_orders
from companion.intake.flights import OrderFlights
from companion.intake.intake import OrderIntake, OrderUpdate
from companion.intake.queue import OrderQueue
from companion.mission.inputs import GroundStatus
from companion.mission.journal import Journal
from companion.mission.runner import AuditHook, MissionRunner
from companion.modem.operator_sms import OperatorSms
from companion.readiness import GroundWatch, order_status
from companion.security.keys import KeyFileError, KeyStore, load_dispatcher_public
from companion.security.orders import NonceStore, Order
from companion.telemetry.uplink import TelemetryUplink
from firmware_bridge.vehicle import Vehicle

log = logging.getLogger(__name__)


def open_intake(config: Config, bus: Bus, running: ExitStack) -> OrderIntake:
    """The order queue (pushed onto `running`) and the verifier. QueueError when the queue
    cannot be opened."""
    security = config.security
    queue = running.enter_context(OrderQueue(config.intake.queue_path))
    keys = KeyStore(security.keys_dir)
    drone_id = keys.drone_id() if keys.has_drone() else config.telemetry.drone_id
    dispatcher = None
    if security.dispatcher_pub is None:
        log.warning("orders: [security] dispatcher_pub is unset: every order is refused")
    else:
        try:
            dispatcher = load_dispatcher_public(security.dispatcher_pub)
        except KeyFileError as exc:
            log.error("orders: the dispatcher key cannot be used, every order is refused: %s",
                      exc)  # fmt: skip
    return OrderIntake(
        queue,
        dispatcher_public=dispatcher,
        drone_id=drone_id,
        nonces=NonceStore(security.nonce_path),
        publish=bus.publish,
    )


def listen_on(
    uplink: TelemetryUplink,
    config: Config,
    intake: OrderIntake,
    pin_check: Callable[[str], tuple[str, bool] | None],
) -> None:
    """A freshly started telemetry link: take orders on its downlink (when `[intake] mqtt`)
    and give its operators' SMS PIN commands `pin_check`."""
    if config.intake.mqtt:
        subscribe_orders(uplink.transport, config.telemetry.drone_id, intake.submit)
    operators = None if uplink.sms is None else uplink.sms.on_message
    if isinstance(operators, OperatorSms):
        operators.pin_check = pin_check


def start_flights(
    config: Config,
    intake: OrderIntake,
    bus: Bus,
    vehicle: Vehicle,
    journal: Journal,
    running: ExitStack,
    *,
    uplink: Callable[[], TelemetryUplink | None],
    audit: AuditHook | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> OrderFlights:
    """Fly the queue in turn (stopped by `running`); `uplink` gives the telemetry link now
    (it may restart), for each preflight's uplink check. Orders a dead daemon was flying are
    reported interrupted first: here, once the telemetry publisher listens on the bus, so
    that the report reaches the dispatcher."""
    for order_id in intake.queue.interrupt_flying():
        log.warning("order %s: the daemon stopped while flying it; reported, not re-flown",
                    order_id)  # fmt: skip
        bus.publish(OrderUpdate(order_id, "interrupted", "the daemon stopped while flying it"))
    wind = config.preflight.declared_wind_mps
    declared = None if wind is None else (wind, "declared, preflight.declared_wind_mps")
    watch = GroundWatch(bus, clock, uplink=uplink, wind=declared)

    def systems(order: Order) -> Callable[[], GroundStatus]:
        def report() -> GroundStatus:
            status = watch.status()
            return dataclasses.replace(status, orders=(order_status(order, time.time()),))

        return report

    def make_runner(report: Callable[[], GroundStatus]) -> MissionRunner:
        return MissionRunner(vehicle, journal, bus, audit=audit, systems=report)

    flights = OrderFlights(intake.queue, config, make_runner, systems, bus.publish).start()
    running.callback(flights.stop)
    return flights
