"""Orders and operator commands from the ground to a drone: built, signed, recorded, sent.

`Dispatcher` is what the dispatch page and the API act through. An order is the same signed
order `skycourier order create` makes (`companion.security.orders`): the recipient's face
template enrolled from uploaded photos (`companion.identity.enrol.enrol_photos`) and sealed
to the drone's registered X25519 key, so only that drone can open it; the drop point; the
validity; an optional fallback PIN (kept only as a scrypt hash); all signed with the
dispatcher's Ed25519 key from its key store (`skycourier keys init --dispatcher`). A command
is a `companion.security.signed_commands` command signed with the same key.

Each is recorded before it is sent (so the drone's answer, which may come back at once,
finds it), audited with the operator's name, then published at QoS 1 on the drone's
``orders`` / ``commands`` topic. Whether the broker took it is recorded (``sent``, or
``unconfirmed`` with why); the drone's own answer, an event, moves it on from there
(`ground.store`). Nothing is signed for a drone that is not registered
(`Store.register_drone`) or while the broker is not connected: such a request is refused
(`DispatchError`) and leaves no order behind.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from companion.security.orders import MAX_LIFETIME_S, create_order
from companion.security.signed_commands import COMMANDS, MAX_VALID_FOR_S, sign_command
from companion.telemetry import schema
from ground.publisher import NotConnected, Publisher
from ground.store import CommandView, OrderView, Store, StoreError

#: How long an order made on the page stays valid by default, and the shortest allowed.
DEFAULT_ORDER_VALID_S = 2 * 3600
MIN_ORDER_VALID_S = 60
#: How long a command may be acted on (the drone refuses it afterwards).
COMMAND_VALID_S = 60

#: The photos of one order: (file name, bytes).
Photos = Sequence[tuple[str, bytes]]


class DispatchError(ValueError):
    """A request the dispatcher refuses; `reason` is one of ``unknown-drone``, ``invalid``
    (a field, named in the message), ``photo`` (a photo that cannot enrol), ``exists`` (the
    order id is taken) or ``not-connected`` (the broker is down: nothing was sent)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class OrderRequest:
    """What a dispatcher asks for. `window` is the hand-over window (Unix seconds); None:
    the whole validity."""

    drone_id: str
    lat: float
    lon: float
    photos: Photos
    alt_m: float = 0.0
    valid_s: int = DEFAULT_ORDER_VALID_S
    pin: str | None = None
    order_id: str | None = None
    window: tuple[int, int] | None = None

    def check(self) -> None:
        """DispatchError ``invalid`` naming the first field out of range."""
        for name, value, limit in (("lat", self.lat, 90.0), ("lon", self.lon, 180.0)):
            if not math.isfinite(value) or abs(value) > limit:
                raise DispatchError("invalid", f"{name}: must be within +-{limit:g} degrees")
        if not math.isfinite(self.alt_m) or abs(self.alt_m) > 500:
            raise DispatchError("invalid", "alt_m: must be within +-500 m of the take-off point")
        if not MIN_ORDER_VALID_S <= self.valid_s <= MAX_LIFETIME_S:
            raise DispatchError(
                "invalid", f"valid_s: must be {MIN_ORDER_VALID_S}-{MAX_LIFETIME_S} seconds"
            )


def _enrol_photos(photos: Photos) -> np.ndarray:
    from companion.identity.enrol import enrol_photos

    return enrol_photos(photos)


class Dispatcher:
    """Signs with `signing_key`, sends through `publisher`, records in `store`. `enrol`
    turns photos into a template (the face models by default, loaded on first use)."""

    def __init__(
        self,
        store: Store,
        signing_key: Ed25519PrivateKey,
        publisher: Publisher,
        clock: Callable[[], float] = time.time,
        enrol: Callable[[Photos], np.ndarray] = _enrol_photos,
    ) -> None:
        self.store = store
        self.signing_key = signing_key
        self.publisher = publisher
        self.clock = clock
        self._enrol = enrol
        self._enrol_lock = threading.Lock()  # the face models are not shared across threads

    def _seal_key(self, drone_id: str) -> X25519PublicKey:
        try:
            schema.check_drone_id(drone_id)
        except schema.SchemaError as exc:
            raise DispatchError("invalid", str(exc)) from None
        keys = self.store.drone_keys(drone_id)
        if keys is None:
            raise DispatchError(
                "unknown-drone",
                f"drone {drone_id!r} is not registered: skycourier ground drone add "
                "<its drone.pub.json>",
            )
        return X25519PublicKey.from_public_bytes(keys.seal_public)

    def create_order(self, request: OrderRequest, operator: str) -> OrderView:
        """Build, sign, record and send the order (module doc); the order as recorded."""
        request.check()
        seal = self._seal_key(request.drone_id)
        self._require_connection()
        try:
            with self._enrol_lock:
                template = self._enrol(request.photos)
        except Exception as exc:  # EnrolmentError, or the face models missing
            raise DispatchError("photo", str(exc)) from None
        order_id = request.order_id or f"o-{secrets.token_hex(8)}"
        now = int(self.clock())
        try:
            blob = create_order(
                self.signing_key,
                drone_id=request.drone_id,
                seal_public=seal,
                order_id=order_id,
                lat=request.lat,
                lon=request.lon,
                alt_m=request.alt_m,
                template=template,
                not_before=now,
                expires=now + request.valid_s,
                window=request.window,
                pin=request.pin,
            )
            view = self.store.create_order(
                order_id, request.drone_id, hashlib.sha256(blob).hexdigest(), created_by=operator
            )
        except (ValueError, StoreError) as exc:
            reason = "exists" if "exists" in str(exc) else "invalid"
            raise DispatchError(reason, str(exc)) from None
        detail: dict[str, Any] = {
            "drone_id": request.drone_id,
            "drop": {"lat": request.lat, "lon": request.lon, "alt_m": request.alt_m},
            "expires": now + request.valid_s,
            "photos": len(request.photos),
            "pin": request.pin is not None,
            "digest": view.payload_digest,
        }
        self.store.append_audit(operator, "order-create", "order", order_id, detail)
        problem = self._send(schema.topic(request.drone_id, "orders"), blob)
        self.store.mark_order_sent(order_id, problem is None, problem)
        self.store.append_audit(
            operator,
            "order-sent" if problem is None else "order-unconfirmed",
            "order",
            order_id,
            {"drone_id": request.drone_id, **({} if problem is None else {"why": problem})},
        )
        found = self.store.order(order_id)
        assert found is not None  # orders are never deleted
        return found

    def send_command(
        self, drone_id: str, command: str, operator: str, order_id: str | None = None
    ) -> CommandView:
        """Sign, record and send an operator command; the command as recorded."""
        if command not in COMMANDS:
            raise DispatchError("invalid", f"command: expected one of {', '.join(COMMANDS)}")
        self._seal_key(drone_id)  # registered drones only
        self._require_connection()
        now = int(self.clock())
        valid = min(COMMAND_VALID_S, MAX_VALID_FOR_S)
        try:
            blob = sign_command(
                self.signing_key,
                drone_id=drone_id,
                command=command,
                issued_at=now,
                valid_for_s=valid,
                order_id=order_id,
            )
        except ValueError as exc:
            raise DispatchError("invalid", str(exc)) from None
        command_id = _command_id(blob)
        view = self.store.create_command(
            command_id, drone_id, command, operator, now, now + valid, order_id
        )
        self.store.append_audit(
            operator,
            f"command-{command}",
            "command",
            command_id,
            {"drone_id": drone_id, "order_id": order_id},
        )
        problem = self._send(schema.topic(drone_id, "commands"), blob)
        self.store.mark_command_sent(command_id, problem is None, problem)
        found = self.store.command(view.command_id)
        assert found is not None
        return found

    def _require_connection(self) -> None:
        if not self.publisher.connected:
            raise DispatchError("not-connected", "the broker is not connected: nothing was sent")

    def _send(self, topic: str, blob: bytes) -> str | None:
        try:
            return self.publisher.publish(topic, blob)
        except NotConnected as exc:  # lost between the check and the send
            return str(exc)


def _command_id(blob: bytes) -> str:
    """The id the drone will answer with: the signed command's nonce."""
    from companion.security.signed_commands import decode_command

    command, _signed, _signature = decode_command(blob)
    return command.command_id
