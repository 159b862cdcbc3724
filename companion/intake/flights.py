"""Flying the queue: each accepted order, in turn, through the one mission runner.

One thread takes the oldest queued order, marks it `flying` (durably, before anything is
commanded), builds its mission, flies it with a `MissionRunner` (the preflight waits for the
vehicle to be ready, uploads nothing it was not given and refuses what is not ready), and
marks it `done` with the mission's outcome. Every order's state change is published on the
bus (`OrderUpdate`) and so reaches the dispatcher as an event.

The mission of an order: take off, fly to the order's drop, hand over, return, land
(`delivery_plan`) with the recipient check always on: a signed order names its recipient,
so the parcel is released only to a cleared recipient (a verdict of the face check, or the
order's PIN sent by an authenticated operator's SMS: `pin_check`), and flown home
otherwise. Each order is announced before its mission starts (`announce`: the door
camera's face check, `companion.identity.door_camera`), and the announcement ended once it
is flown. The preflight also checks the order is still within its validity window at
take-off, besides the receivers, the uplink and the wind that `[preflight]` demands.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable

from companion.config import Config
from companion.intake.intake import OrderUpdate
from companion.intake.queue import DONE, FLYING, OrderQueue, QueueError
from companion.mission.inputs import GroundStatus
from companion.mission.plan import MissionPlan, checks_from_config, delivery_plan
from companion.mission.runner import MissionRunner
from companion.security.orders import Order, OrderError, check_pin, decode_order

log = logging.getLogger(__name__)

#: How often an idle queue is looked at again.
POLL_S = 1.0


def order_plan(order: Order, config: Config) -> MissionPlan:
    """The mission that flies `order` under `config`: recipient check on, the configured
    readiness checks, and the order's own validity checked at take-off."""
    plan = delivery_plan(
        order.order_id, (order.lat, order.lon), config.flight, recipient_check=True
    )
    checks = dataclasses.replace(checks_from_config(config.preflight), signed_orders=True)
    return dataclasses.replace(plan, checks=checks)


class OrderFlights:
    """Flies `queue`'s orders one after another with runners from `make_runner(systems)`,
    where `systems(order)` reports the companion's systems for that order's preflight."""

    def __init__(
        self,
        queue: OrderQueue,
        config: Config,
        make_runner: Callable[[Callable[[], GroundStatus]], MissionRunner],
        systems: Callable[[Order], Callable[[], GroundStatus]],
        publish: Callable[[object], None],
        announce: Callable[[Order], Callable[[], None]] | None = None,
    ) -> None:
        self.queue = queue
        self.config = config
        self._make_runner = make_runner
        self._systems = systems
        self._publish = publish
        self._announce = announce
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._current: Order | None = None
        self.flown: list[tuple[str, str]] = []

    def pin_check(self, digits: str) -> tuple[str, bool] | None:
        """An operator's fallback PIN against the order being flown (`OperatorSms`): (its
        drop id, whether the PIN is the order's), or None when no order with a PIN flies.
        The mission takes it only during that drop's recipient check."""
        with self._lock:
            order = self._current
        if order is None or order.pin is None:
            return None
        return order.order_id, check_pin(order, digits)

    def start(self) -> OrderFlights:
        self._thread = threading.Thread(target=self._run, name="order-flights", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop taking orders; a mission in flight is left to finish in its own runner (the
        daemon is stopping: the autopilot's watchdog takes over if the link goes)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self.queue.next_queued()
            except Exception:
                log.exception("order queue unreadable")
                item = None
            if item is None:
                self._stop.wait(POLL_S)
                continue
            self._fly(item.order_id, item.blob)

    def _fly(self, order_id: str, blob: bytes) -> None:
        try:
            order, _, _ = decode_order(blob)  # verified at intake; its nonce is used up
            plan = order_plan(order, self.config)
        except (OrderError, ValueError) as exc:
            self._finish(order_id, f"cannot be flown: {exc}")
            return
        try:
            self.queue.mark(order_id, FLYING)
        except QueueError:
            log.exception("order %s: not marked flying; not flown", order_id)
            self._stop.wait(POLL_S)  # the queue's file is failing: do not spin on it
            return
        self._publish(OrderUpdate(order_id, FLYING))
        with self._lock:
            self._current = order
        flown = self._announced(order)
        try:
            outcome = self._make_runner(self._systems(order)).run(plan)
        except Exception as exc:  # the runner has already made an armed vehicle safe
            log.exception("order %s: the mission failed", order_id)
            outcome = f"mission failed: {type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                self._current = None
            flown()
        self._finish(order_id, outcome)

    def _announced(self, order: Order) -> Callable[[], None]:
        """Announce `order` (its recipient's face check); what ends the announcement. One
        that fails leaves the order to fly with the PIN as its only clearance."""
        if self._announce is None:
            return lambda: None
        try:
            return self._announce(order)
        except Exception:
            log.exception("order %s: no face check (announcing it failed)", order.order_id)
            return lambda: None

    def _finish(self, order_id: str, outcome: str) -> None:
        try:
            self.queue.mark(order_id, DONE, outcome)
        except QueueError:
            log.exception("order %s: outcome %r not stored", order_id, outcome)
        log.info("order %s: %s", order_id, outcome)
        self.flown.append((order_id, outcome))
        self._publish(OrderUpdate(order_id, DONE, outcome))
