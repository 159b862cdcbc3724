"""The daemon's order intake, started as one subsystem: the queue, the verifier, the control
socket, the downlink subscription and the thread that flies the queue.

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
from companion.intake.control import ControlServer
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
from companion.status import DaemonStatus
from companion.telemetry.uplink import TelemetryUplink
from firmware_bridge.vehicle import Vehicle

log = logging.getLogger(__name__)


def start_intake(
    config: Config,
    bus: Bus,
    vehicle: Vehicle,
    journal: Journal,
    running: ExitStack,
    *,
    audit: AuditHook | None = None,
    uplink: TelemetryUplink | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> OrderIntake:
    """Start taking and flying orders; every part is pushed onto `running` as it starts."""
    security = config.security
    queue = running.enter_context(OrderQueue(config.intake.queue_path))
    for order_id in queue.interrupt_flying():
        log.warning("order %s: the daemon stopped while flying it; reported, not re-flown",
                    order_id)  # fmt: skip
        bus.publish(OrderUpdate(order_id, "interrupted", "the daemon stopped while flying it"))
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
    intake = OrderIntake(
        queue,
        dispatcher_public=dispatcher,
        drone_id=drone_id,
        nonces=NonceStore(security.nonce_path),
        publish=bus.publish,
    )
    status = DaemonStatus(bus, vehicle, queue, uplink)
    control = ControlServer(config.intake.socket_path, intake.submit, status.snapshot).start()
    running.callback(control.stop)
    if config.intake.mqtt and uplink is not None:
        subscribe_orders(uplink.transport, config.telemetry.drone_id, intake.submit)
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

    flights = OrderFlights(queue, config, make_runner, systems, bus.publish).start()
    running.callback(flights.stop)
    operators = None if uplink is None or uplink.sms is None else uplink.sms.on_message
    if isinstance(operators, OperatorSms):
        operators.pin_check = flights.pin_check  # an operator's PIN for the order in flight
    return intake
