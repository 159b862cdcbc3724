"""Recipient tracking links: ``/track/<token>`` shows one order's status and ETA, nothing
else, to whoever holds the link.

The token is ``<order id, base64url>.<expiry, Unix s>.<HMAC-SHA256 of both, base64url>`` with
a key derived for this purpose only: unguessable without the service's secret (256-bit tag),
bound to one order (changing the order id breaks the tag) and dead after its expiry. A bad
tag and an unknown order read the same (404), so a link reveals nothing about other orders.

The ETA is estimated from what the drone reported: the drop it is flying to (the ``drop``
of its latest ``enter`` event for this order) and its latest position and ground speed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from dataclasses import dataclass
from typing import Any

from ground.store import EventView, OrderView, TrackPoint

#: Below this ground speed the drone is not going anywhere: no ETA from speed.
MIN_SPEED_MPS = 0.5
#: Phases where the drone is over the drop (the hand-over is under way).
AT_DROP_PHASES = frozenset({"descend", "release"})
#: Phases after the drop (`companion.mission.events.Phase`): the drone is flying home.
AFTER_DROP_PHASES = frozenset({"climb", "return", "land"})
EARTH_RADIUS_M = 6_371_000.0


class TokenRefused(Exception):
    """A tracking token that is not valid: `reason` is ``malformed``, ``bad-signature`` or
    ``expired`` (the page says only "not found" or "expired")."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TrackingLinks:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _tag(self, order_id: str, expires: int) -> str:
        message = order_id.encode() + b"\0" + str(expires).encode()
        return _b64(hmac.new(self._key, message, hashlib.sha256).digest())

    def token(self, order_id: str, expires_at: float) -> str:
        expires = math.ceil(expires_at)
        return f"{_b64(order_id.encode())}.{expires}.{self._tag(order_id, expires)}"

    def order_id(self, token: str, now: float) -> str:
        """The order `token` was made for; TokenRefused if it is not valid at `now`."""
        parts = token.split(".")
        if len(parts) != 3 or len(token) > 600 or not parts[1].isdigit():
            raise TokenRefused("malformed")
        try:
            order_id = _unb64(parts[0]).decode()
        except ValueError:
            raise TokenRefused("malformed") from None
        if not hmac.compare_digest(parts[2], self._tag(order_id, int(parts[1]))):
            raise TokenRefused("bad-signature")
        if now >= int(parts[1]):
            raise TokenRefused("expired")
        return order_id


@dataclass(frozen=True)
class Progress:
    """What the recipient sees: the order's state in words and, while it flies, the ETA."""

    order_id: str
    state: str
    summary: str
    eta_s: float | None
    outcome: str | None


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle (haversine) distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(min(1.0, a)))


def _drop(events: list[EventView]) -> tuple[float, float] | None:
    for event in reversed(events):
        drop: Any = event.detail.get("drop") if event.kind == "enter" else None
        if (
            isinstance(drop, list)
            and len(drop) == 2
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in drop)
        ):
            return float(drop[0]), float(drop[1])
    return None


def progress(order: OrderView, events: list[EventView], latest: TrackPoint | None) -> Progress:
    """The recipient's view of `order`, from its events and its drone's latest sample."""
    summaries = {
        "created": "Order received; waiting for the drone to accept it.",
        "accepted": "The drone has accepted your order and is getting ready.",
        "refused": "The drone could not take this order; the dispatcher will be in touch.",
        "flying": "Your parcel is on its way.",
        "done": "Delivery finished.",
        "interrupted": "The delivery was interrupted; the dispatcher will be in touch.",
    }
    summary = summaries.get(order.state, "In progress.")
    eta = None
    if order.state == "flying" and latest is not None:
        if latest.phase in AT_DROP_PHASES:
            summary, eta = "The drone is at your drop point.", 0.0
        elif latest.phase in AFTER_DROP_PHASES:
            summary = "The drone has left your drop point."
        else:
            drop = _drop(events)
            speed = latest.ground_speed_mps
            placed = drop and latest.lat is not None and latest.lon is not None
            if placed and speed is not None and speed >= MIN_SPEED_MPS:
                eta = distance_m(latest.lat, latest.lon, *drop) / speed
    return Progress(order.order_id, order.state, summary, eta, order.outcome)
