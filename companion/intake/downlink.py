"""Orders over the telemetry link's downlink: the dispatcher publishes a signed order on
``skycourier/v1/<drone_id>/orders`` (QoS 1) and the daemon's transport delivers it here,
whichever transport carries the link (the A7670's `AT+CMQTTSUB` receive path, or paho on
the `ip` transport). Each payload is submitted as it came: the intake verifies it like any
other order and its answer goes back up as an event. Signed operator commands come the same
way on ``skycourier/v1/<drone_id>/commands`` (`subscribe_commands`)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from companion.intake.commands import CommandAck
from companion.intake.intake import OrderAck
from companion.security.orders import MAX_ORDER_BYTES
from companion.security.signed_commands import MAX_COMMAND_BYTES
from companion.telemetry import schema
from companion.telemetry.transport import Transport

log = logging.getLogger(__name__)

ORDERS_CHANNEL = "orders"
COMMANDS_CHANNEL = "commands"


def subscribe_orders(
    transport: Transport, drone_id: str, submit: Callable[[bytes, str], OrderAck]
) -> str:
    """Subscribe `submit` to this drone's orders topic; returns the topic."""
    topic = schema.topic(drone_id, ORDERS_CHANNEL)

    def on_message(received: str, payload: bytes) -> None:
        if len(payload) > MAX_ORDER_BYTES:
            log.warning("orders: %d-byte message on %s refused unread", len(payload), received)
        submit(payload[: MAX_ORDER_BYTES + 1], f"mqtt:{received}")

    transport.subscribe(topic, on_message)
    log.info("orders: listening on %s", topic)
    return topic


def subscribe_commands(
    transport: Transport, drone_id: str, submit: Callable[[bytes, str], CommandAck]
) -> str:
    """Subscribe `submit` to this drone's operator commands topic; returns the topic. Called
    on the transport's receive thread, `submit` answers without waiting for the mission."""
    topic = schema.topic(drone_id, COMMANDS_CHANNEL)

    def on_message(received: str, payload: bytes) -> None:
        if len(payload) > MAX_COMMAND_BYTES:
            log.warning("commands: %d-byte message on %s refused unread", len(payload), received)
        submit(payload[: MAX_COMMAND_BYTES + 1], f"mqtt:{received}")

    transport.subscribe(topic, on_message)
    log.info("commands: listening on %s", topic)
    return topic
