"""What the companion reports of its own systems to the preflight (`companion.readiness`):
the GPS receiver from the bus, signed orders within their validity window, and nothing
reported as ready that is absent; and the core refusing a drop whose order is not valid."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from companion.bus import Bus
from companion.config import FlightConfig
from companion.geo import offset
from companion.gps.driver import GpsStatus
from companion.gps.fix import GpsFix
from companion.mission.actions import Arm
from companion.mission.core import MissionCore
from companion.mission.inputs import GroundStatus, OrderStatus
from companion.mission.plan import PreflightChecks, delivery_plan
from companion.readiness import GroundWatch, order_status
from companion.security.orders import NonceStore, Order, create_order, verify_order
from tests.mission_world import HOME, World

T0 = 1_767_225_600


def _signed_order(order_id: str = "m1") -> Order:
    dispatcher, seal = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    blob = create_order(
        dispatcher,
        drone_id="sky-1",
        seal_public=seal.public_key(),
        order_id=order_id,
        lat=HOME[0],
        lon=HOME[1],
        template=np.zeros((2, 128), dtype=np.float32),
        not_before=T0,
        expires=T0 + 3600,
    )
    return verify_order(
        blob,
        dispatcher_public=dispatcher.public_key(),
        drone_id="sky-1",
        now=T0 + 10,
        nonces=NonceStore(None),
    )


def _fix(received_at: float, *, valid: bool = True, mode: int = 3) -> GpsFix:
    return GpsFix(
        time=datetime.fromtimestamp(T0, tz=timezone.utc),
        lat=HOME[0], lon=HOME[1], alt_msl_m=600.0, geoid_sep_m=20.0, speed_mps=0.0,
        course_deg=0.0, mode=mode, quality=1, sats_used=9, pdop=1.8, hdop=0.9, vdop=1.4,
        satellites=(), valid=valid, source="GP", received_at=received_at,
    )  # fmt: skip


def test_an_order_counts_only_inside_its_validity_window() -> None:
    order = _signed_order()
    assert order_status(order, T0 + 100) == OrderStatus("m1", True)
    early = order_status(order, T0 - 1)
    assert not early.valid and early.reason == f"not valid before {T0}"
    late = order_status(order, T0 + 3600)
    assert not late.valid and late.reason == f"expired at {T0 + 3600}"


def test_the_receiver_is_reported_from_the_bus_with_the_age_of_its_fix() -> None:
    bus = Bus()
    now = [100.0]
    watch = GroundWatch(bus, lambda: now[0])
    assert watch.status().gps is None  # nothing heard: absent, never "ok"
    bus.publish(GpsStatus("/dev/ttyAMA0", "configuring", "configuring", 99.0))
    gps = watch.status().gps
    assert gps is not None and not gps.fix_3d and gps.age_s is None
    assert gps.status == "configuring"
    bus.publish(_fix(99.5))
    bus.publish(GpsStatus("/dev/ttyAMA0", "ok", "3-D fix", 99.5))
    gps = watch.status().gps
    assert gps is not None and gps.fix_3d and gps.satellites == 9 and gps.hdop == 0.9
    assert gps.age_s == 0.5 and gps.status == "ok"
    bus.publish(_fix(99.8, mode=2))
    assert watch.status().gps.fix_3d is False  # type: ignore[union-attr]


def test_without_an_uplink_or_a_wind_source_nothing_is_reported() -> None:
    status = GroundWatch(Bus(), lambda: 0.0).status()
    assert status.uplink is None and status.wind_mps is None and status.orders == ()


def test_orders_are_reported_on_the_wall_clock() -> None:
    order = _signed_order()
    now = [T0 + 10.0]
    watch = GroundWatch(Bus(), lambda: 0.0, orders=[order], wall_clock=lambda: now[0])
    assert watch.status().orders == (OrderStatus("m1", True),)
    now[0] = T0 + 4000
    assert watch.status().orders[0].valid is False


def _fly_with_orders(orders: tuple[OrderStatus, ...]) -> tuple[World, MissionCore]:
    plan = delivery_plan("m1", offset(*HOME, 200.0, 45.0), FlightConfig())
    limits = dataclasses.replace(plan.limits, preflight_timeout_s=10.0)
    plan = dataclasses.replace(plan, limits=limits, checks=PreflightChecks(signed_orders=True))
    world = World(ground=GroundStatus(orders=orders))
    core = MissionCore(plan)
    world.run(core)
    return world, core


def test_a_drop_whose_order_expired_or_was_never_verified_stays_on_the_ground() -> None:
    for orders, reason in (
        ((), "drop 'm1': no verified signed order"),
        ((OrderStatus("m1", False, f"expired at {T0}"),), f"drop 'm1': order expired at {T0}"),
        ((OrderStatus("other", True),), "drop 'm1': no verified signed order"),
    ):
        world, core = _fly_with_orders(orders)
        assert reason in (core.outcome or ""), core.outcome
        assert not any(isinstance(a, Arm) for _, a in world.actions)


def test_a_drop_with_a_valid_order_flies() -> None:
    _, core = _fly_with_orders((OrderStatus("m1", True),))
    assert core.outcome == "delivered"
