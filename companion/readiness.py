"""What the companion knows of its own systems when a preflight asks (`CheckSystems`).

The mission core judges readiness (`companion.mission.preflight.check_receivers` and
`check_ground`); this gathers the facts it judges from the running parts: the newest fix and
status word of the companion's GPS receiver (from the bus), the modem's registration and
whether telemetry is being acknowledged by the broker, the wind with where that figure
comes from, and whether each drop's signed order is still within its validity window.
Nothing here decides "ok": a part that is absent is reported as absent (None), and the core
refuses what the plan demands and does not get.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from companion.bus import Bus
from companion.gps.driver import GpsStatus
from companion.gps.fix import GpsFix
from companion.mission.inputs import GroundStatus, OrderStatus, ReceiverStatus, UplinkStatus
from companion.security.orders import Order
from companion.telemetry.uplink import TelemetryUplink


class GroundWatch:
    """Follows the companion's GPS on `bus` and reads `uplink` and `wind` when asked.

    `clock` is the GPS driver's clock (a fix's `received_at` is on it); `uplink` gives the
    telemetry link as it is now (the daemon's supervisor may restart it); `wind` is
    (speed m/s, source) or None when nothing reports the wind; `orders` are the signed orders
    verified at intake (`verify_order`), whose validity window is judged on `wall_clock`
    (UTC seconds, as the orders' times are)."""

    def __init__(
        self,
        bus: Bus,
        clock: Callable[[], float],
        *,
        uplink: Callable[[], TelemetryUplink | None] = lambda: None,
        wind: tuple[float, str] | None = None,
        orders: Sequence[Order] = (),
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._uplink = uplink
        self._wind = wind
        self._orders = tuple(orders)
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._fix: GpsFix | None = None
        self._gps_state: str | None = None
        bus.subscribe(GpsFix, self._on_fix)
        bus.subscribe(GpsStatus, self._on_status)

    def _on_fix(self, fix: GpsFix) -> None:
        with self._lock:
            self._fix = fix

    def _on_status(self, status: GpsStatus) -> None:
        with self._lock:
            self._gps_state = status.state

    def status(self) -> GroundStatus:
        """The ground status now (the `systems` callable of a `MissionRunner`)."""
        wind, source = self._wind if self._wind is not None else (None, "")
        now = self._wall_clock()
        return GroundStatus(
            gps=self._receiver(),
            uplink=self._uplink_status(),
            wind_mps=wind,
            wind_source=source,
            orders=tuple(order_status(o, now) for o in self._orders),
        )

    def _receiver(self) -> ReceiverStatus | None:
        with self._lock:
            fix, state = self._fix, self._gps_state
        if fix is None and state is None:
            return None
        if fix is None:
            return ReceiverStatus(False, None, None, None, state or "unknown")
        return ReceiverStatus(
            fix_3d=fix.valid and fix.mode == 3,
            satellites=fix.sats_used,
            hdop=fix.hdop,
            age_s=fix.age_s(self._clock()),
            status=state or "unknown",
        )

    def _uplink_status(self) -> UplinkStatus | None:
        uplink = self._uplink()
        if uplink is None:
            return None
        stats = uplink.publisher.stats()
        connected = uplink.transport.connected
        supervisor = uplink.supervisor
        if supervisor is not None:
            modem = supervisor.state
            registered = modem.registered
            detail = f"modem {modem.stage}" + (f": {modem.error}" if modem.error else "")
        else:  # a direct broker connection: no cellular network to register on
            registered = connected
            detail = "direct connection"
        flowing = connected and stats.published > 0
        if not flowing:
            detail += "; broker not connected" if not connected else "; nothing acknowledged yet"
        return UplinkStatus(registered, flowing, "" if registered and flowing else detail)


def order_status(order: Order, now: float) -> OrderStatus:
    """A verified order's standing at `now` (UTC seconds): inside its validity window or not.
    The signature, the drone and the nonce were checked once, at intake; the window is what
    time can change before take-off."""
    if now < order.not_before:
        return OrderStatus(order.order_id, False, f"not valid before {order.not_before}")
    if now >= order.expires:
        return OrderStatus(order.order_id, False, f"expired at {order.expires}")
    return OrderStatus(order.order_id, True)
