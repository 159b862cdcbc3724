"""The daemon's order intake as parts the daemon starts: the queue and the verifier
(`open_intake`, before anything can deliver an order), the operator commands' verifier
(`open_commands`, on its own nonce store so that commands work when the queue cannot be
opened), the downlink subscriptions made each time the telemetry link starts (`listen_on`),
and the thread that flies the queue (`start_flights`, once the autopilot is up and
unfinished missions are closed).

Orders are verified against `[security] dispatcher_pub` for this drone (the drone id of the
key store in `[security] keys_dir`, whose seal key opens the orders' recipient templates; the
telemetry drone id without one). Without a dispatcher key every order is refused, each with
that reason on the uplink: the daemon still starts, supervises and answers. The same key
signs operator commands; without it only the control socket's commands are taken.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from contextlib import ExitStack

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from companion.bus import Bus
from companion.config import Config
from companion.intake.commands import CONTROL_REACTION_WAIT_S, CommandIntake
from companion.intake.downlink import subscribe_commands, subscribe_orders
from companion.intake.flights import OrderFlights
from companion.intake.intake import OrderIntake, OrderUpdate
from companion.intake.queue import OrderQueue
from companion.mission.inputs import GroundStatus
from companion.mission.journal import Journal
from companion.mission.runner import AuditHook, MissionRunner
from companion.modem.operator_sms import OperatorSms
from companion.readiness import GroundWatch, order_status
from companion.security.keys import KeyFileError, KeyStore, load_dispatcher_public
from companion.security.orders import NonceStore, Order, OrderError
from companion.telemetry.uplink import TelemetryUplink
from firmware_bridge.vehicle import Vehicle

log = logging.getLogger(__name__)


def _verifier(config: Config, what: str) -> tuple[str, Ed25519PublicKey | None]:
    """This drone's id and the dispatcher's key (None, said why, when there is none) for
    verifying `what` ("order", "signed command")."""
    security = config.security
    keys = KeyStore(security.keys_dir)
    drone_id = keys.drone_id() if keys.has_drone() else config.telemetry.drone_id
    if security.dispatcher_pub is None:
        log.warning("[security] dispatcher_pub is unset: every %s is refused", what)
        return drone_id, None
    try:
        return drone_id, load_dispatcher_public(security.dispatcher_pub)
    except KeyFileError as exc:
        log.error("the dispatcher key cannot be used, every %s is refused: %s", what, exc)
        return drone_id, None


def open_intake(config: Config, bus: Bus, running: ExitStack) -> OrderIntake:
    """The order queue (pushed onto `running`) and the verifier. QueueError when the queue
    cannot be opened."""
    security = config.security
    queue = running.enter_context(OrderQueue(config.intake.queue_path))
    drone_id, dispatcher = _verifier(config, "order")
    return OrderIntake(
        queue,
        dispatcher_public=dispatcher,
        drone_id=drone_id,
        nonces=NonceStore(security.nonce_path),
        publish=bus.publish,
    )


def open_commands(
    config: Config, bus: Bus, running: ExitStack, audit: AuditHook | None = None
) -> CommandIntake:
    """The operator commands' verifier (closed by `running`), recording to `audit`. Never
    fails: a nonce store that cannot be read refuses every signed command, saying why."""
    drone_id, dispatcher = _verifier(config, "signed command")
    path = config.security.command_nonce_path
    nonces, problem = None, ""
    try:
        nonces = NonceStore(path)
    except OrderError as exc:
        problem = f"{exc.message} (fix or remove it; local commands still work)"
        log.error("signed commands: the nonce store cannot be used, every one is refused: %s",
                  problem)  # fmt: skip
    commands = CommandIntake(bus, dispatcher_public=dispatcher, drone_id=drone_id,
                             nonces=nonces, nonce_problem=problem, audit=audit)  # fmt: skip
    running.callback(commands.close)
    return commands


def control_command(commands: CommandIntake) -> Callable[[str, str | None], dict]:
    """The control socket's handler of operator commands: the answer with the mission's
    reaction, waited for a few seconds."""
    return lambda command, order_id: commands.control(command, order_id, CONTROL_REACTION_WAIT_S)


def listen_on(
    uplink: TelemetryUplink,
    config: Config,
    intake: OrderIntake | None,
    pin_check: Callable[[str], tuple[str, bool] | None],
    commands: CommandIntake | None = None,
) -> None:
    """A freshly started telemetry link: take orders and operator commands on its downlink
    (when `[intake] mqtt`) and give its operators' SMS PIN commands `pin_check`."""
    drone_id = config.telemetry.drone_id
    if config.intake.mqtt and intake is not None:
        subscribe_orders(uplink.transport, drone_id, intake.submit)
    if config.intake.mqtt and commands is not None:
        subscribe_commands(uplink.transport, drone_id, commands.submit)
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
    announce: Callable[[Order], Callable[[], None]] | None = None,
) -> OrderFlights:
    """Fly the queue in turn (stopped by `running`); `uplink` gives the telemetry link now
    (it may restart), for each preflight's uplink check. Orders a dead daemon was flying are
    reported interrupted first: here, once the telemetry publisher listens on the bus, so
    that the report reaches the dispatcher. `announce` tells the face check of each order
    before it flies (`OrderFlights`)."""
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

    flights = OrderFlights(
        intake.queue, config, make_runner, systems, bus.publish, announce
    ).start()
    running.callback(flights.stop)
    return flights
