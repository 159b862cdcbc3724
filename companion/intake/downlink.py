"""Orders over the telemetry link's downlink: the dispatcher publishes a signed order on
``skycourier/v1/<drone_id>/orders`` (QoS 1) and the daemon's transport delivers it here,
whichever transport carries the link (the A7670's `AT+CMQTTSUB` receive path, or paho on
the `ip` transport). Each payload is submitted as it came: the intake verifies it like any
other order and its answer goes back up as an event."""

from __future__ import annotations

import logging
from collections.abc import Callable

from companion.intake.intake import OrderAck
from companion.security.orders import MAX_ORDER_BYTES
from companion.telemetry import schema
from companion.telemetry.transport import Transport

log = logging.getLogger(__name__)

ORDERS_CHANNEL = "orders"


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
