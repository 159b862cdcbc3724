"""Delivery orders from GeoJSON: Point features in the same FeatureCollection as the airspace.

One file holds the whole job, so the operator hands over one thing: the operating area and
the no-fly zones (polygons with a `role`, read by `companion.routing.geojson`) and, as Point
features without a `role`, the orders and the depot.

Order properties: `order_id` (string or integer, unique), `mass_kg` (the parcel, above 0),
optional `window` [start, end] (seconds from departure, by when the drop must be reached),
optional `drone` (the name of the drone that must fly it). The depot is the one Point whose
properties are `{"depot": true}`. Everything is checked; any problem raises `OrderError`
naming the file, the feature (index and id) and the reason. A feature that is neither
airspace, an order nor the depot is refused rather than ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from companion.routing.airspace import Airspace, AirspaceError
from companion.routing.geojson import load_airspace, parse_airspace

MAX_MASS_KG = 100.0
MAX_WINDOW_S = 7 * 24 * 3600.0
_ORDER_KEYS = ("order_id", "mass_kg", "window", "drone", "name")


class OrderError(AirspaceError):
    """An order or the depot was refused; the message names the feature and the reason."""


@dataclass(frozen=True)
class Order:
    """One parcel to drop at (lat, lon) degrees. `window` is (earliest, latest) seconds from
    departure, `drone` the drone that must fly it (None: any)."""

    order_id: str
    lat: float
    lon: float
    mass_kg: float
    window: tuple[float, float] | None = None
    drone: str | None = None


@dataclass(frozen=True)
class OrderFile:
    """An orders file: its airspace, its orders in file order, and the depot (lat, lon) when
    the file names one."""

    airspace: Airspace
    orders: tuple[Order, ...]
    depot: tuple[float, float] | None


def load_orders(path: str | Path) -> OrderFile:
    """Read an orders file (airspace, orders, depot); size limits are the airspace parser's."""
    airspace = load_airspace(path)
    return orders_from_airspace(airspace, origin=str(path))


def parse_orders(source: str | bytes, *, origin: str = "orders") -> OrderFile:
    """Parse orders GeoJSON text; `origin` names the source in messages."""
    return orders_from_airspace(parse_airspace(source, origin=origin), origin=origin)


def orders_from_airspace(airspace: Airspace, *, origin: str = "orders") -> OrderFile:
    """The orders and depot among the airspace file's non-airspace features."""
    orders: list[Order] = []
    depots: list[tuple[int, tuple[float, float]]] = []
    seen: dict[str, int] = {}
    for index, feature in airspace.others:
        where = f"{origin}: feature {index}"
        if feature.get("id") is not None:
            where = f"{where} ({_short(feature.get('id'))})"
        props = feature.get("properties")
        if props is None:
            props = {}
        if not isinstance(props, dict):
            raise OrderError(f"{where}: 'properties' must be an object or null")
        lat, lon = _point(feature.get("geometry"), where)
        if "depot" in props:
            if props.get("depot") is not True or set(props) - {"depot", "name"}:
                raise OrderError(f"{where}: a depot has only the properties depot: true and name")
            depots.append((index, (lat, lon)))
            continue
        order = _order(props, lat, lon, where)
        if order.order_id in seen:
            raise OrderError(
                f"{where}: order_id {order.order_id!r} repeats feature {seen[order.order_id]}"
            )
        seen[order.order_id] = index
        orders.append(order)
    if len(depots) > 1:
        found = ", ".join(str(i) for i, _ in depots)
        raise OrderError(f"{origin}: more than one depot (features {found})")
    return OrderFile(airspace, tuple(orders), depots[0][1] if depots else None)


def _order(props: dict[str, Any], lat: float, lon: float, where: str) -> Order:
    unknown = sorted(str(k) for k in props if k not in _ORDER_KEYS)
    if unknown:
        raise OrderError(
            f"{where}: unknown properties {', '.join(map(repr, unknown))} "
            f"(an order has: {', '.join(_ORDER_KEYS)}; a depot: depot: true)"
        )
    oid = props.get("order_id")
    if isinstance(oid, bool) or not isinstance(oid, (str, int)):
        raise OrderError(f"{where}: order_id must be a string or integer, got {_short(oid)}")
    order_id = str(oid)
    if not order_id or len(order_id) > 64 or not order_id.isprintable():
        raise OrderError(f"{where}: order_id must be 1-64 printable characters")
    where = f"{where} order {order_id!r}"
    mass = _number(props.get("mass_kg"), f"{where}: mass_kg")
    if not 0 < mass <= MAX_MASS_KG:
        raise OrderError(f"{where}: mass_kg must be above 0 and at most {MAX_MASS_KG:g}")
    window = None
    if props.get("window") is not None:
        raw = props["window"]
        if not isinstance(raw, list) or len(raw) != 2:
            raise OrderError(f"{where}: window must be [start, end] seconds from departure")
        start, end = (_number(v, f"{where}: window") for v in raw)
        if not 0 <= start <= end <= MAX_WINDOW_S:
            raise OrderError(
                f"{where}: window [{start:g}, {end:g}] must have 0 <= start <= end <= "
                f"{MAX_WINDOW_S:g} s"
            )
        window = (start, end)
    drone = props.get("drone")
    if drone is not None and (
        not isinstance(drone, str) or not drone or len(drone) > 64 or not drone.isprintable()
    ):
        raise OrderError(f"{where}: drone must be a name of 1-64 printable characters")
    return Order(order_id, lat, lon, mass, window, drone)


def _point(geometry: Any, where: str) -> tuple[float, float]:
    if not isinstance(geometry, dict) or geometry.get("type") != "Point":
        raise OrderError(f"{where}: not airspace, so it must be a Point (an order or the depot)")
    pos = geometry.get("coordinates")
    if not isinstance(pos, list) or len(pos) not in (2, 3):
        raise OrderError(f"{where}: Point coordinates must be [lon, lat] or [lon, lat, alt]")
    lon, lat = (_number(v, f"{where}: coordinates") for v in pos[:2])
    if len(pos) == 3:
        _number(pos[2], f"{where}: coordinates")
    if not -180.0 <= lon <= 180.0 or not -90.0 <= lat <= 90.0:
        raise OrderError(f"{where}: ({lon}, {lat}) is outside lon -180..180, lat -90..90")
    return lat, lon


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OrderError(f"{what} must be a number, got {_short(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise OrderError(f"{what} must be a finite number, got {_short(value)}")
    return number


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
