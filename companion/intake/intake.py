"""Order intake: every way an order reaches the daemon ends here, and gets one answer.

An order arrives as the signed bytes the dispatcher made (`companion.security.orders`), from
the telemetry link's downlink or the local control socket. It is verified in full
(`verify_order`: the dispatcher's signature, this drone, the validity window, a nonce never
seen, which is then recorded) and queued durably before the answer says "accepted"; anything
else is refused with the verifier's reason, and nothing about a refused order is kept but the
answer. The answer (`OrderAck`) goes back to the submitter and onto the bus, where the
telemetry publisher sends it up as an `order-accepted` / `order-refused` event, so the
dispatcher learns the fate of an order whichever way it came.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from companion.intake.queue import DuplicateOrder, OrderQueue, QueueError
from companion.security.orders import NonceStore, OrderError, decode_order, verify_order

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OrderAck:
    """The answer to one submitted order. `reason` is "accepted", one of the verifier's
    reasons (`OrderError.reason`), "duplicate", "queue" (it could not be stored) or
    "no-dispatcher-key"; `message` says it in words; `order_id` when the bytes named one."""

    accepted: bool
    reason: str
    message: str
    source: str
    order_id: str | None = None
    digest: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class OrderUpdate:
    """An order changed state (`flying`, `done` with the mission's outcome, `interrupted`
    when a restart found it flying)."""

    order_id: str
    state: str
    outcome: str | None = None


class OrderIntake:
    """Verifies, queues and answers orders for `drone_id`; `publish` puts each answer on
    the bus. Without `dispatcher_public` every order is refused (the daemon says why)."""

    def __init__(
        self,
        queue: OrderQueue,
        *,
        dispatcher_public: Ed25519PublicKey | None,
        drone_id: str,
        nonces: NonceStore,
        publish: Callable[[object], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.queue = queue
        self._dispatcher = dispatcher_public
        self._drone_id = drone_id
        self._nonces = nonces
        self._publish = publish
        self._clock = clock

    def submit(self, blob: bytes, source: str) -> OrderAck:
        """Verify and queue one order; the answer, also published on the bus."""
        ack = self._judge(blob, source)
        level = logging.INFO if ack.accepted else logging.WARNING
        log.log(level, "order %s from %s: %s (%s)", ack.order_id or "?", source, ack.reason,
                ack.message)  # fmt: skip
        self._publish(ack)
        return ack

    def _judge(self, blob: bytes, source: str) -> OrderAck:
        named = _order_id(blob)
        if self._dispatcher is None:
            return OrderAck(
                False, "no-dispatcher-key",
                "this drone has no dispatcher key ([security] dispatcher_pub): every order "
                "is refused", source, named,
            )  # fmt: skip
        try:
            order = verify_order(
                blob,
                dispatcher_public=self._dispatcher,
                drone_id=self._drone_id,
                now=self._clock(),
                nonces=self._nonces,
            )
        except OrderError as err:
            return OrderAck(False, err.reason, err.message, source, named)
        try:
            self.queue.add(order.order_id, order.digest, blob, source)
        except DuplicateOrder as err:
            return OrderAck(False, "duplicate", str(err), source, order.order_id, order.digest)
        except QueueError as err:
            return OrderAck(False, "queue", str(err), source, order.order_id, order.digest)
        return OrderAck(
            True, "accepted", "verified and queued", source, order.order_id, order.digest
        )


def _order_id(blob: bytes) -> str | None:
    """The id an order's bytes name, for the answer (None when they cannot be read)."""
    try:
        return decode_order(blob)[0].order_id
    except OrderError:
        return None
