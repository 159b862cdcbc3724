"""The ground store: what the ground segment knows of its fleet, behind one typed API.

Written by the telemetry ingest (`ingest`: decoded records in batches) and by the dispatch
service (`create_order`, `append_audit`); read by both (`drones`, `track`, `events`,
`orders`, `handovers`, `audit`). Every method is synchronous and opens its own short
transaction, so one `Store` may be shared by threads (SQLAlchemy's connection pool); an
ASGI service calls it from a worker thread. Every time it returns is an aware UTC
`datetime`; every time it takes is one too, or a Unix time (float).

Ingest, one transaction per batch:

- **exactly once**: each record is inserted with ``INSERT ... ON CONFLICT (drone_id,
  record_id) DO NOTHING ... RETURNING``, so a record delivered again (the drone re-sends
  until its broker acknowledges; the broker re-sends until the ingest does; several ingest
  instances share the fleet) is counted as a duplicate and stored once, on SQLite and on
  PostgreSQL alike, whichever instance gets it;
- **drones**: a drone's row is created by its first record; ``last_seen_at`` / ``last_seq``
  only move forward; its current status is the newest `schema.Status` by the drone's clock,
  so a late retained status never overrides a newer one;
- **orders**: the drone's order events move an order on (``order-accepted`` ->
  ``accepted``, ``order-refused`` -> ``refused``, ``order-flying``, ``order-done`` with its
  outcome, ``order-interrupted``), only if the event is newer (by seq) than the one that set
  the order's state, and only for the drone the order was made for. An order the store has
  not seen (dispatched by another tool) is created from the drone's report;
- **hand-overs**: ``recipient-verdict``, ``recipient-pin`` and ``released`` events become
  `HandoverView` rows (drop, outcome, why);
- **refused**: a record the database could not keep as it is (a NUL character, which
  PostgreSQL text cannot hold, or an order id longer than `ORDER_ID_CHARS`) is returned in
  `IngestResult.refused` with the reason, never half-stored; the batch's other records are.

Liveness: a drone is online while its newest status says ``online`` and its time-to-live
(`schema.status_expires_at`) has not run out at `now` (the store's injected clock by
default); `DroneView.liveness` says which of online / offline / expired / unknown it is.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from sqlalchemy import (
    Engine,
    Select,
    Table,
    bindparam,
    case,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.sql.expression import ColumnElement

from companion.security.encoding import b64url, from_b64url
from companion.telemetry import schema
from ground import db
from ground.models import (
    DIGEST_CHARS,
    ID_CHARS,
    ORDER_ID_CHARS,
    AuditEntry,
    Drone,
    EventRecord,
    Handover,
    OperatorCommand,
    Order,
    StatusRecord,
    TelemetrySample,
)

#: Order events from the drone and the order state each one sets.
ORDER_EVENT_STATES: Mapping[str, str] = {
    "order-accepted": "accepted",
    "order-refused": "refused",
    "order-flying": "flying",
    "order-done": "done",
    "order-interrupted": "interrupted",
}
#: The state of an order the dispatcher created and the drone has not answered yet.
ORDER_CREATED = "created"
#: An order the broker took for the drone (`mark_order_sent`), and one it did not confirm.
ORDER_SENT = "sent"
ORDER_UNCONFIRMED = "unconfirmed"
#: Command events from the drone and the command state each one sets.
COMMAND_EVENT_STATES: Mapping[str, str] = {
    "command-accepted": "accepted",
    "command-refused": "refused",
}
#: A command's states before the drone answers (`OperatorCommand`).
COMMAND_SENDING, COMMAND_SENT, COMMAND_UNCONFIRMED = "sending", "sent", "unconfirmed"
#: A public key's raw length (Ed25519 and X25519 alike).
PUBLIC_KEY_BYTES = 32
#: Mission events that are steps of a hand-over (`companion.mission.handover`).
HANDOVER_STEPS = ("recipient-verdict", "recipient-pin", "released")
#: The longest audit ``action`` and ``target_kind`` (their columns' widths).
AUDIT_ACTION_CHARS = 64
AUDIT_TARGET_KIND_CHARS = 32
#: The longest actor name an audit entry keeps.
AUDIT_ACTOR_CHARS = 200
#: The most rows one query returns, whatever the caller asks.
MAX_ROWS = 10_000
_HEX = frozenset("0123456789abcdef")

Liveness = Literal["online", "offline", "expired", "unknown"]


class StoreError(ValueError):
    """An argument the store refuses (an order id too long, a naive datetime...); the
    message names it."""


class OrderExists(StoreError):
    """`create_order` for an order id the store already has."""


@dataclass(frozen=True)
class Received:
    """A decoded record and when the ingest received it (Unix time, the ingest's clock)."""

    record: schema.Record
    received_at: float


@dataclass(frozen=True)
class Refused:
    """A record the store did not keep, and why."""

    record: schema.Record
    reason: str


@dataclass(frozen=True)
class IngestResult:
    """What one `Store.ingest` batch did: `stored` records new to the store, `duplicates`
    already there (or twice in the batch), `refused` those it could not keep."""

    stored: int
    duplicates: int
    refused: tuple[Refused, ...] = ()


@dataclass(frozen=True)
class TrackPoint:
    """One telemetry sample: where the drone was and its state then."""

    drone_id: str
    seq: int
    record_id: str
    t: datetime
    received_at: datetime
    phase: str | None
    armed: bool
    mode: str
    lat: float | None
    lon: float | None
    alt_msl_m: float | None
    alt_rel_m: float | None
    heading_deg: float | None
    ground_speed_mps: float | None
    vertical_speed_mps: float | None
    battery_pct: int | None
    battery_v: float | None
    gps_fix: int
    gps_sats: int | None
    gps_alarms: tuple[str, ...]
    detections: dict[str, int]
    link_rssi_dbm: int | None
    link_rsrp_dbm: float | None
    link_sinr_db: float | None


@dataclass(frozen=True)
class DroneView:
    """A drone as the drone list shows it: liveness by its status's time-to-live, and its
    latest telemetry sample (phase, battery, link, GPS), if any."""

    drone_id: str
    liveness: Liveness
    first_seen_at: datetime | None
    last_seen_at: datetime | None
    last_seq: int | None
    status_state: str | None
    status_t: datetime | None
    status_expires_at: datetime | None
    latest: TrackPoint | None

    @property
    def online(self) -> bool:
        return self.liveness == "online"


@dataclass(frozen=True)
class EventView:
    drone_id: str
    seq: int
    record_id: str
    t: datetime
    received_at: datetime
    kind: str
    mission_id: str | None
    phase: str | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class OrderView:
    order_id: str
    drone_id: str
    state: str
    payload_digest: str | None
    created_at: datetime
    created_by: str | None
    updated_at: datetime
    outcome: str | None
    detail: dict[str, Any] | None


@dataclass(frozen=True)
class HandoverView:
    drone_id: str
    mission_id: str | None
    drop_id: str | None
    step: str
    outcome: str
    why: str | None
    t: datetime


@dataclass(frozen=True)
class DroneKeys:
    """A registered drone's public keys (raw 32 bytes each)."""

    drone_id: str
    identity_public: bytes
    seal_public: bytes
    registered_at: datetime


@dataclass(frozen=True)
class CommandView:
    command_id: str
    drone_id: str
    order_id: str | None
    command: str
    issued_by: str
    issued_at: datetime
    expires_at: datetime
    state: str
    reason: str | None
    message: str | None
    answered_at: datetime | None


@dataclass(frozen=True)
class AuditView:
    id: int
    at: datetime
    actor: str
    action: str
    target_kind: str | None
    target_id: str | None
    detail: dict[str, Any]


def utc(ts: float) -> datetime:
    """Unix time as an aware UTC datetime."""
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def _record_time(text: str) -> datetime:
    """A record's ``t`` (checked by the decoder) as an aware UTC datetime."""
    moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    return moment.astimezone(timezone.utc)


def _moment(value: datetime | float | None, name: str) -> datetime | None:
    if value is None or isinstance(value, datetime):
        if value is not None and value.utcoffset() is None:
            raise StoreError(f"{name}: {value!r} has no time zone (the store keeps UTC)")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise StoreError(f"{name}: expected a datetime or a Unix time, got {value!r}")
    return utc(float(value))


def is_transient(exc: BaseException) -> bool:
    """Whether a database error is about the database rather than the data (connection
    lost, server gone, lock or deadlock, no pooled connection free): worth retrying the same
    batch after a pause."""
    return isinstance(exc, (OperationalError, PoolTimeout)) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )


class Store:
    """The ground store on one database (see the module doc). `clock` gives Unix time; it
    decides liveness when a query passes no `now`, and stamps orders and audit entries."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock
        self._writer = db.writer(engine)
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert

    @classmethod
    def open(cls, url: str | None = None, clock: Callable[[], float] = time.time) -> Store:
        """Open (and migrate to the newest schema) the database at `url`, default
        `db.default_url()`; `db.DatabaseUrlError` names a URL it cannot use."""
        engine = db.create_engine(url or db.default_url())
        try:
            db.upgrade(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, clock)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- ingest ----------------------------------------------------------------------------

    def ingest(self, batch: Sequence[Received]) -> IngestResult:
        """Store a batch of decoded records in one transaction (module doc). Database errors
        propagate (nothing of the batch is kept then); `is_transient` tells whether trying
        the same batch again may work."""
        plan = _Plan.of(batch)
        if not plan.rows_by_table:
            return IngestResult(0, plan.duplicates, tuple(plan.refused))
        with self._writer.begin() as conn:
            self._upsert_drones(conn, plan.drones)
            new: set[tuple[str, str]] = set()
            for table, rows in plan.rows_by_table.items():
                new |= self._insert_new(conn, table, rows)
            self._apply_statuses(conn, [s for s in plan.statuses if s.key in new])
            self._apply_orders(conn, [o for o in plan.orders if o.key in new])
            self._apply_commands(conn, [c for c in plan.commands if c.key in new])
            handovers = [h.row for h in plan.handovers if h.key in new]
            if handovers:
                conn.execute(insert(Handover.__table__), handovers)
        stored = len(new)
        return IngestResult(stored, plan.duplicates + plan.total - stored, tuple(plan.refused))

    def _insert_new(
        self, conn: Connection, table: Table, rows: list[dict[str, Any]]
    ) -> set[tuple[str, str]]:
        """Insert `rows`, skipping those already stored; the (drone, record id) of the new.
        In key order, so that two instances inserting the same redelivered records wait for
        each other instead of deadlocking."""
        rows = sorted(rows, key=lambda row: (row["drone_id"], row["record_id"]))
        statement = (
            self._insert(table)
            .on_conflict_do_nothing(index_elements=["drone_id", "record_id"])
            .returning(table.c.drone_id, table.c.record_id)
        )
        return {(row[0], row[1]) for row in conn.execute(statement, rows)}

    def _upsert_drones(self, conn: Connection, drones: Mapping[str, tuple[float, int]]) -> None:
        """Create each drone's row, or move its last-seen time and seq forward; in drone
        order, so that concurrent batches lock rows in one order (no deadlock)."""
        table = Drone.__table__
        statement = self._insert(table)
        old, new = table.c, statement.excluded
        statement = statement.on_conflict_do_update(
            index_elements=["drone_id"],
            set_={
                "first_seen_at": func.coalesce(old.first_seen_at, new.first_seen_at),
                "last_seen_at": _later(old.last_seen_at, new.last_seen_at),
                "last_seq": _later(old.last_seq, new.last_seq),
            },
        )
        rows = [
            {"drone_id": drone, "first_seen_at": utc(at), "last_seen_at": utc(at), "last_seq": seq}
            for drone, (at, seq) in sorted(drones.items())
        ]
        conn.execute(statement, rows)

    def _apply_statuses(self, conn: Connection, statuses: list[_StatusUpdate]) -> None:
        if not statuses:
            return
        table = Drone.__table__
        c = table.c
        statement = (
            update(table)
            .where(c.drone_id == _param("d", c.drone_id))
            .where(or_(c.status_t.is_(None), c.status_t <= _param("status_t", c.status_t)))
            .values(
                status_state=_param("status_state", c.status_state),
                status_t=_param("status_t", c.status_t),
                status_received_at=_param("status_received_at", c.status_received_at),
                status_ttl_s=_param("status_ttl_s", c.status_ttl_s),
                status_expires_at=_param("status_expires_at", c.status_expires_at),
            )
        )
        ordered = sorted(statuses, key=lambda s: (s.values["d"], s.values["status_t"]))
        for status in ordered:  # one by one: a later one must see the earlier one's effect
            conn.execute(statement, status.values)

    def _apply_orders(self, conn: Connection, orders: list[_OrderUpdate]) -> None:
        if not orders:
            return
        table = Order.__table__
        c = table.c
        create = self._insert(table).on_conflict_do_nothing(index_elements=["order_id"])
        move = (
            update(table)
            .where(c.order_id == _param("o", c.order_id))
            .where(c.drone_id == _param("d", c.drone_id))
            .where(or_(c.state_seq.is_(None), c.state_seq < _param("state_seq", c.state_seq)))
            .values(
                state=_param("state", c.state),
                state_seq=_param("state_seq", c.state_seq),
                updated_at=_param("updated_at", c.updated_at),
                outcome=func.coalesce(_param("outcome", c.outcome), c.outcome),
                detail=_param("detail", c.detail),
            )
        )
        for order in sorted(orders, key=lambda o: (o.order_id, o.seq)):
            conn.execute(create, order.create_row())
            conn.execute(move, order.move_values())

    def _apply_commands(self, conn: Connection, answers: list[_CommandAnswer]) -> None:
        """A drone's answer settles a command sent to that drone, once: the first answer
        stays (a command is answered once; a late copy of an event changes nothing)."""
        if not answers:
            return
        c = OperatorCommand.__table__.c
        statement = (
            update(OperatorCommand.__table__)
            .where(c.command_id == _param("c", c.command_id))
            .where(c.drone_id == _param("d", c.drone_id))
            .where(c.state.in_((COMMAND_SENDING, COMMAND_SENT, COMMAND_UNCONFIRMED)))
            .values(
                state=_param("state", c.state),
                reason=_param("reason", c.reason),
                message=_param("message", c.message),
                answered_at=_param("answered_at", c.answered_at),
            )
        )
        for answer in sorted(answers, key=lambda a: (a.values["c"], a.seq)):
            conn.execute(statement, answer.values)

    # -- drones and liveness ---------------------------------------------------------------

    def drones(self, now: datetime | float | None = None) -> list[DroneView]:
        """Every drone, by id, with its liveness at `now` (default: the store's clock)."""
        return self._drones(None, now)

    def drone(self, drone_id: str, now: datetime | float | None = None) -> DroneView | None:
        """One drone (None if the store has never heard of it)."""
        found = self._drones(drone_id, now)
        return found[0] if found else None

    def _drones(self, drone_id: str | None, now: datetime | float | None) -> list[DroneView]:
        at = _moment(now, "now") or utc(self.clock())
        d = Drone.__table__.c
        t = TelemetrySample.__table__
        latest_id = (
            select(t.c.id)
            .where(t.c.drone_id == d.drone_id)
            .order_by(t.c.t.desc(), t.c.seq.desc())
            .limit(1)
            .correlate(Drone.__table__)
            .scalar_subquery()
        )
        query = (
            select(Drone.__table__, *(col.label(f"tp_{col.name}") for col in t.c))
            .select_from(Drone.__table__.outerjoin(t, t.c.id == latest_id))
            .order_by(d.drone_id)
        )
        if drone_id is not None:
            query = query.where(d.drone_id == drone_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query.limit(MAX_ROWS)).mappings().all()
        views = []
        for row in rows:
            point = None
            if row["tp_id"] is not None:
                point = _track_point({col.name: row[f"tp_{col.name}"] for col in t.c})
            views.append(
                DroneView(
                    drone_id=row["drone_id"],
                    liveness=liveness(row["status_state"], row["status_expires_at"], at),
                    first_seen_at=row["first_seen_at"],
                    last_seen_at=row["last_seen_at"],
                    last_seq=row["last_seq"],
                    status_state=row["status_state"],
                    status_t=row["status_t"],
                    status_expires_at=row["status_expires_at"],
                    latest=point,
                )
            )
        return views

    # -- tracks and events -----------------------------------------------------------------

    def track(
        self,
        drone_id: str,
        since: datetime | float | None = None,
        until: datetime | float | None = None,
        max_points: int = 2000,
    ) -> list[TrackPoint]:
        """The drone's samples with ``since <= t <= until``, in time order, thinned evenly
        to at most `max_points` (always keeping the first and the last)."""
        if not 2 <= max_points <= MAX_ROWS:
            raise StoreError(f"max_points must be 2-{MAX_ROWS}, got {max_points}")
        t = TelemetrySample.__table__
        where = _time_range(t.c.t, _moment(since, "since"), _moment(until, "until"))
        where.append(t.c.drone_id == drone_id)
        with self.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(t).where(*where)).scalar_one()
            if total == 0:
                return []
            sub = (
                select(t, func.row_number().over(order_by=(t.c.t, t.c.seq)).label("rn"))
                .where(*where)
                .subquery()
            )
            # limit: on PostgreSQL rows committed since the count may show up (read committed)
            query = select(sub).order_by(sub.c.rn).limit(max_points)
            if total > max_points:
                step = math.ceil((total - 1) / (max_points - 1))  # keeps first and last
                query = query.where(or_((sub.c.rn - 1) % step == 0, sub.c.rn == total))
            rows = conn.execute(query).mappings().all()
        return [_track_point(row) for row in rows]

    def events(
        self,
        drone_id: str | None = None,
        order_id: str | None = None,
        since: datetime | float | None = None,
        until: datetime | float | None = None,
        kinds: Iterable[str] | None = None,
        limit: int = 500,
    ) -> list[EventView]:
        """Events of a drone and/or an order (its ``mission_id``), of `kinds` if given: the
        newest `limit` of them within [since, until], returned oldest first."""
        if not 1 <= limit <= MAX_ROWS:
            raise StoreError(f"limit must be 1-{MAX_ROWS}, got {limit}")
        e = EventRecord.__table__
        where = _time_range(e.c.t, _moment(since, "since"), _moment(until, "until"))
        if drone_id is not None:
            where.append(e.c.drone_id == drone_id)
        if order_id is not None:
            where.append(e.c.mission_id == order_id)
        if kinds is not None:
            where.append(e.c.kind.in_(list(kinds)))
        query = select(e).where(*where).order_by(e.c.t.desc(), e.c.seq.desc()).limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            EventView(**{k: row[k] for k in EventView.__dataclass_fields__}) for row in rows[::-1]
        ]

    def handovers(
        self, order_id: str | None = None, drone_id: str | None = None, limit: int = 500
    ) -> list[HandoverView]:
        """Hand-over steps of an order (its mission) and/or a drone, oldest first."""
        if not 1 <= limit <= MAX_ROWS:
            raise StoreError(f"limit must be 1-{MAX_ROWS}, got {limit}")
        h = Handover.__table__
        query = select(h).order_by(h.c.t.desc(), h.c.id.desc()).limit(limit)
        if order_id is not None:
            query = query.where(h.c.mission_id == order_id)
        if drone_id is not None:
            query = query.where(h.c.drone_id == drone_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            HandoverView(**{k: row[k] for k in HandoverView.__dataclass_fields__})
            for row in rows[::-1]
        ]

    # -- orders ----------------------------------------------------------------------------

    def create_order(
        self,
        order_id: str,
        drone_id: str,
        payload_digest: str,
        created_by: str | None = None,
    ) -> OrderView:
        """Record an order made for `drone_id` (before it is sent, so that the drone's answer
        finds it): state ``created``. `payload_digest` is the SHA-256 (hex) of the signed
        order's bytes. OrderExists if the id is taken; StoreError for a malformed argument."""
        _check_text(order_id, "order_id", ORDER_ID_CHARS)
        try:
            schema.check_drone_id(drone_id)
        except schema.SchemaError as exc:
            raise StoreError(str(exc)) from None
        if len(payload_digest) != DIGEST_CHARS or not set(payload_digest) <= _HEX:
            raise StoreError("payload_digest: expected 64 lowercase hex digits (SHA-256)")
        if created_by is not None:
            _check_text(created_by, "created_by", AUDIT_ACTOR_CHARS)
        now = utc(self.clock())
        row = {
            "order_id": order_id,
            "drone_id": drone_id,
            "state": ORDER_CREATED,
            "payload_digest": payload_digest,
            "created_at": now,
            "created_by": created_by,
            "updated_at": now,
        }
        with self._writer.begin() as conn:
            conn.execute(
                self._insert(Drone.__table__).on_conflict_do_nothing(index_elements=["drone_id"]),
                {"drone_id": drone_id},
            )
            created = conn.execute(
                self._insert(Order.__table__)
                .on_conflict_do_nothing(index_elements=["order_id"])
                .returning(Order.__table__.c.order_id),
                row,
            ).first()
        if created is None:
            raise OrderExists(f"order {order_id!r} exists already")
        view = self.order(order_id)
        assert view is not None  # just created; orders are never deleted
        return view

    def order(self, order_id: str) -> OrderView | None:
        o = Order.__table__
        with self.engine.connect() as conn:
            row = conn.execute(select(o).where(o.c.order_id == order_id)).mappings().first()
        return None if row is None else _order_view(row)

    def orders(
        self, drone_id: str | None = None, state: str | None = None, limit: int = 500
    ) -> list[OrderView]:
        """Orders, newest first, of a drone and/or in a state if given."""
        o = Order.__table__
        query = _newest(o, (o.c.created_at, o.c.order_id), limit, drone_id=drone_id, state=state)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [_order_view(row) for row in rows]

    def mark_order_sent(self, order_id: str, sent: bool, message: str | None = None) -> None:
        """Whether the broker took a created order (`ORDER_SENT`) or not (`ORDER_UNCONFIRMED`,
        `message` kept in its detail). Only a ``created`` order moves: the drone's answer may
        have come first, and it is the later word."""
        o = Order.__table__
        values: dict[str, Any] = {
            "state": ORDER_SENT if sent else ORDER_UNCONFIRMED,
            "updated_at": utc(self.clock()),
        }
        if not sent:
            values["detail"] = {"error": message or "not sent"}
        with self._writer.begin() as conn:
            conn.execute(
                update(o)
                .where(o.c.order_id == order_id)
                .where(o.c.state == ORDER_CREATED)
                .values(**values)
            )

    # -- drones' keys ----------------------------------------------------------------------

    def register_drone(
        self, drone_id: str, identity_public: bytes, seal_public: bytes
    ) -> DroneKeys:
        """Keep a drone's public keys (from its ``drone.pub.json``), replacing any it had:
        a drone whose keys were made anew is registered again. StoreError for a malformed
        id or key."""
        try:
            schema.check_drone_id(drone_id)
        except schema.SchemaError as exc:
            raise StoreError(str(exc)) from None
        for name, key in (("identity_public", identity_public), ("seal_public", seal_public)):
            if not isinstance(key, bytes) or len(key) != PUBLIC_KEY_BYTES:
                raise StoreError(f"{name}: expected {PUBLIC_KEY_BYTES} bytes")
        row = {
            "drone_id": drone_id,
            "identity_public": b64url(identity_public),
            "seal_public": b64url(seal_public),
            "registered_at": utc(self.clock()),
        }
        table = Drone.__table__
        statement = self._insert(table)
        statement = statement.on_conflict_do_update(
            index_elements=["drone_id"],
            set_={name: statement.excluded[name] for name in row if name != "drone_id"},
        )
        with self._writer.begin() as conn:
            conn.execute(statement, row)
        keys = self.drone_keys(drone_id)
        assert keys is not None  # just written
        return keys

    def drone_keys(self, drone_id: str) -> DroneKeys | None:
        """The drone's registered public keys; None if it is not registered."""
        d = Drone.__table__.c
        query = select(d.drone_id, d.identity_public, d.seal_public, d.registered_at).where(
            d.drone_id == drone_id, d.seal_public.is_not(None)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return DroneKeys(row[0], from_b64url(row[1]), from_b64url(row[2]), row[3])

    def registered_drones(self) -> list[str]:
        """The ids of the drones that orders and commands can be sent to, sorted."""
        d = Drone.__table__.c
        query = select(d.drone_id).where(d.seal_public.is_not(None)).order_by(d.drone_id)
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    # -- operator commands -----------------------------------------------------------------

    def create_command(
        self,
        command_id: str,
        drone_id: str,
        command: str,
        issued_by: str,
        issued_at: float,
        expires_at: float,
        order_id: str | None = None,
    ) -> CommandView:
        """Record a signed command before it is sent (state ``sending``), so that the drone's
        answer finds it. StoreError for a malformed argument or a command id in use."""
        _check_text(command_id, "command_id", ID_CHARS)
        _check_text(command, "command", 16)
        _check_text(issued_by, "issued_by", AUDIT_ACTOR_CHARS)
        if order_id is not None:
            _check_text(order_id, "order_id", ORDER_ID_CHARS)
        try:
            schema.check_drone_id(drone_id)
        except schema.SchemaError as exc:
            raise StoreError(str(exc)) from None
        row = {
            "command_id": command_id,
            "drone_id": drone_id,
            "order_id": order_id,
            "command": command,
            "issued_by": issued_by,
            "issued_at": utc(issued_at),
            "expires_at": utc(expires_at),
            "state": COMMAND_SENDING,
            "reason": None,
            "message": None,
            "answered_at": None,
        }
        table = OperatorCommand.__table__
        with self._writer.begin() as conn:
            conn.execute(
                self._insert(Drone.__table__).on_conflict_do_nothing(index_elements=["drone_id"]),
                {"drone_id": drone_id},
            )
            created = conn.execute(
                self._insert(table)
                .on_conflict_do_nothing(index_elements=["command_id"])
                .returning(table.c.command_id),
                row,
            ).first()
        if created is None:
            raise StoreError(f"command id {command_id!r} is in use")
        return CommandView(**row)

    def mark_command_sent(self, command_id: str, sent: bool, message: str | None = None) -> None:
        """Whether the broker took the command; only a command still ``sending`` moves (the
        drone's answer may have come first)."""
        c = OperatorCommand.__table__.c
        with self._writer.begin() as conn:
            conn.execute(
                update(OperatorCommand.__table__)
                .where(c.command_id == command_id, c.state == COMMAND_SENDING)
                .values(
                    state=COMMAND_SENT if sent else COMMAND_UNCONFIRMED,
                    message=None if sent else (message or "not sent"),
                )
            )

    def command(self, command_id: str) -> CommandView | None:
        found = self.commands(command_id=command_id, limit=1)
        return found[0] if found else None

    def commands(
        self, drone_id: str | None = None, command_id: str | None = None, limit: int = 100
    ) -> list[CommandView]:
        """Commands, newest first, of a drone if given."""
        t = OperatorCommand.__table__
        query = _newest(
            t, (t.c.issued_at, t.c.command_id), limit, drone_id=drone_id, command_id=command_id
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        fields = CommandView.__dataclass_fields__
        return [CommandView(**{k: row[k] for k in fields}) for row in rows]

    # -- audit log -------------------------------------------------------------------------

    def append_audit(
        self,
        actor: str,
        action: str,
        target_kind: str | None = None,
        target_id: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> AuditView:
        """Append one entry, stamped with the store's clock. `detail` must be JSON data (no
        NaN); every text is kept as given (parameterised, never interpreted)."""
        _check_text(actor, "actor", AUDIT_ACTOR_CHARS)
        _check_text(action, "action", AUDIT_ACTION_CHARS)
        if target_kind is not None:
            _check_text(target_kind, "target_kind", AUDIT_TARGET_KIND_CHARS)
        if target_id is not None:
            _check_text(target_id, "target_id", ORDER_ID_CHARS)
        body = dict(detail or {})
        try:
            json.dumps(body, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"detail: not JSON data: {exc}") from None
        a = AuditEntry.__table__
        row = {
            "at": utc(self.clock()),
            "actor": actor,
            "action": action,
            "target_kind": target_kind,
            "target_id": target_id,
            "detail": body,
        }
        with self._writer.begin() as conn:
            entry_id = conn.execute(insert(a).returning(a.c.id), row).scalar_one()
        return AuditView(id=entry_id, **row)

    def audit(
        self,
        limit: int = 100,
        before_id: int | None = None,
        actor: str | None = None,
        target_kind: str | None = None,
        target_id: str | None = None,
    ) -> list[AuditView]:
        """Audit entries, newest first; `before_id` pages back from an entry."""
        if not 1 <= limit <= MAX_ROWS:
            raise StoreError(f"limit must be 1-{MAX_ROWS}, got {limit}")
        a = AuditEntry.__table__
        query = select(a).order_by(a.c.id.desc()).limit(limit)
        for column, value in (
            (a.c.id, before_id),
            (a.c.actor, actor),
            (a.c.target_kind, target_kind),
            (a.c.target_id, target_id),
        ):
            if value is not None:
                query = query.where(column < value if column is a.c.id else column == value)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [AuditView(**{k: row[k] for k in AuditView.__dataclass_fields__}) for row in rows]


def liveness(state: str | None, expires_at: datetime | None, now: datetime) -> Liveness:
    """online / offline / expired (an online whose time-to-live ran out) / unknown (no
    status yet). An online without a time-to-live (a version-1 status) stays online, as
    `schema.status_expires_at` says."""
    if state is None:
        return "unknown"
    if state != "online":
        return "offline"
    if expires_at is not None and now >= expires_at:
        return "expired"
    return "online"


def _later(old: ColumnElement[Any], new: ColumnElement[Any]) -> ColumnElement[Any]:
    """The later of a stored value and a new one (the stored one may be NULL)."""
    return case((or_(old.is_(None), old < new), new), else_=old)


def _param(name: str, column: ColumnElement[Any]) -> ColumnElement[Any]:
    """A bound parameter typed like `column` (so that times go through `UtcDateTime`)."""
    return bindparam(name, type_=column.type)


def _time_range(
    column: ColumnElement[Any], since: datetime | None, until: datetime | None
) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if since is not None:
        where.append(column >= since)
    if until is not None:
        where.append(column <= until)
    return where


def _newest(
    table: Table, order: tuple[ColumnElement[Any], ColumnElement[Any]], limit: int, **equal: Any
) -> Select[Any]:
    """At most `limit` rows of `table`, newest first by `order` (a time, then a key for
    ties), whose columns equal the values in `equal` that are not None."""
    if not 1 <= limit <= MAX_ROWS:
        raise StoreError(f"limit must be 1-{MAX_ROWS}, got {limit}")
    when, key = order
    query = select(table).order_by(when.desc(), key).limit(limit)
    for name, value in equal.items():
        if value is not None:
            query = query.where(table.c[name] == value)
    return query


def _check_text(value: object, name: str, limit: int) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= limit:
        raise StoreError(f"{name}: expected 1-{limit} characters of text, got {value!r:.80}")
    if "\x00" in value:
        raise StoreError(f"{name}: holds a NUL character")


def _track_point(row: Mapping[str, Any] | RowMapping) -> TrackPoint:
    fields = {k: row[k] for k in TrackPoint.__dataclass_fields__}
    fields["gps_alarms"] = tuple(fields["gps_alarms"] or ())
    return TrackPoint(**fields)


def _order_view(row: RowMapping) -> OrderView:
    return OrderView(**{k: row[k] for k in OrderView.__dataclass_fields__})


# -- turning records into rows -----------------------------------------------------------


@dataclass(frozen=True)
class _StatusUpdate:
    key: tuple[str, str]
    values: dict[str, Any]


@dataclass(frozen=True)
class _OrderUpdate:
    key: tuple[str, str]
    order_id: str
    drone_id: str
    seq: int
    state: str
    at: datetime
    outcome: str | None
    digest: str | None
    detail: dict[str, Any]

    def create_row(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "drone_id": self.drone_id,
            "state": self.state,
            "payload_digest": self.digest,
            "created_at": self.at,
            "created_by": None,
            "updated_at": self.at,
            "state_seq": self.seq,
            "outcome": self.outcome,
            "detail": self.detail,
        }

    def move_values(self) -> dict[str, Any]:
        return {
            "o": self.order_id,
            "d": self.drone_id,
            "state": self.state,
            "state_seq": self.seq,
            "updated_at": self.at,
            "outcome": self.outcome,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class _HandoverRow:
    key: tuple[str, str]
    row: dict[str, Any]


@dataclass(frozen=True)
class _CommandAnswer:
    key: tuple[str, str]
    seq: int
    values: dict[str, Any]


class _Plan:
    """A batch turned into rows (pure Python, before any database work): each record's
    row, the drones' last-seen figures, status / order / hand-over updates to apply if the
    record turns out new, and the records refused."""

    def __init__(self) -> None:
        self.rows_by_table: dict[Table, list[dict[str, Any]]] = {}
        self.drones: dict[str, tuple[float, int]] = {}
        self.statuses: list[_StatusUpdate] = []
        self.orders: list[_OrderUpdate] = []
        self.commands: list[_CommandAnswer] = []
        self.handovers: list[_HandoverRow] = []
        self.refused: list[Refused] = []
        self.duplicates = 0  # twice in the batch
        self.total = 0  # rows to insert

    @classmethod
    def of(cls, batch: Sequence[Received]) -> _Plan:
        plan = cls()
        seen: set[tuple[str, str]] = set()
        for item in batch:
            record = item.record
            key = (record.drone_id, record.id)
            if key in seen:
                plan.duplicates += 1
                continue
            try:
                plan._add(record, key, item.received_at)
            except _Unstorable as exc:
                plan.refused.append(Refused(record, str(exc)))
                continue
            seen.add(key)
        return plan

    def _add(self, record: schema.Record, key: tuple[str, str], received_at: float) -> None:
        head = {
            "drone_id": record.drone_id,
            "seq": record.seq,
            "record_id": record.id,
            "t": _record_time(record.t),
            "received_at": utc(received_at),
        }
        extra: list[_StatusUpdate | _OrderUpdate | _HandoverRow | _CommandAnswer] = []
        if isinstance(record, schema.Telemetry):
            table, row = TelemetrySample.__table__, {**head, **_telemetry_fields(record)}
        elif isinstance(record, schema.Event):
            table, row = EventRecord.__table__, {**head, **_event_fields(record)}
            extra.extend(_event_effects(record, key, head["t"]))
        else:
            expires = schema.status_expires_at(record, received_at)
            table = StatusRecord.__table__
            row = {
                **head,
                "state": record.state,
                "ttl_s": record.ttl_s,
                "expires_at": None if expires is None else utc(expires),
            }
            extra.append(
                _StatusUpdate(
                    key,
                    {
                        "d": record.drone_id,
                        "status_state": record.state,
                        "status_t": head["t"],
                        "status_received_at": head["received_at"],
                        "status_ttl_s": record.ttl_s,
                        "status_expires_at": row["expires_at"],
                    },
                )
            )
        _check_row(row)
        for effect in extra:
            _check_row(_effect_fields(effect))
        self.rows_by_table.setdefault(table, []).append(row)
        self.total += 1
        for effect in extra:
            if isinstance(effect, _StatusUpdate):
                self.statuses.append(effect)
            elif isinstance(effect, _OrderUpdate):
                self.orders.append(effect)
            elif isinstance(effect, _CommandAnswer):
                self.commands.append(effect)
            else:
                self.handovers.append(effect)
        at, seq = self.drones.get(record.drone_id, (received_at, record.seq))
        self.drones[record.drone_id] = (max(at, received_at), max(seq, record.seq))


def _effect_fields(effect: _StatusUpdate | _OrderUpdate | _HandoverRow | _CommandAnswer) -> Any:
    """The texts an effect would write, for `_check_row`."""
    if isinstance(effect, _HandoverRow):
        return effect.row
    return effect.values if isinstance(effect, _CommandAnswer) else vars(effect)


class _Unstorable(Exception):
    """A record the database cannot keep as it is; the message says why."""


def _check_row(row: Mapping[str, Any]) -> None:
    """Refuse what PostgreSQL text cannot hold (NUL) and keys longer than their columns;
    JSON columns escape NUL themselves."""
    for name, value in row.items():
        if isinstance(value, str):
            if "\x00" in value:
                raise _Unstorable(f"{name} holds a NUL character, which the database cannot keep")
            limit = {"mission_id": ORDER_ID_CHARS, "order_id": ORDER_ID_CHARS}.get(name)
            if limit is not None and len(value) > limit:
                raise _Unstorable(
                    f"{name} of {len(value)} characters is longer than the {limit} an order id "
                    "may have"
                )


def _telemetry_fields(record: schema.Telemetry) -> dict[str, Any]:
    pos, link = record.position, record.link
    return {
        "phase": record.phase,
        "armed": record.armed,
        "mode": record.mode,
        "lat": pos.lat if pos else None,
        "lon": pos.lon if pos else None,
        "alt_msl_m": pos.alt_msl_m if pos else None,
        "alt_rel_m": pos.alt_rel_m if pos else None,
        "heading_deg": record.heading_deg,
        "ground_speed_mps": record.ground_speed_mps,
        "vertical_speed_mps": record.vertical_speed_mps,
        "battery_pct": record.battery.pct,
        "battery_v": record.battery.voltage_v,
        "gps_fix": record.gps.fix_type,
        "gps_sats": record.gps.satellites,
        "gps_alarms": list(record.gps.alarms),
        "detections": record.detections,
        "link_rssi_dbm": link.rssi_dbm if link else None,
        "link_rsrp_dbm": link.rsrp_dbm if link else None,
        "link_sinr_db": link.sinr_db if link else None,
    }


def _event_fields(record: schema.Event) -> dict[str, Any]:
    return {
        "kind": record.kind,
        "mission_id": record.mission_id,
        "phase": record.phase,
        "detail": record.detail,
    }


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _event_effects(
    record: schema.Event, key: tuple[str, str], at: datetime
) -> list[_OrderUpdate | _HandoverRow | _CommandAnswer]:
    """What an event changes besides its own row: an order's state, a hand-over step, a
    command's answer."""
    detail = record.detail
    answered = COMMAND_EVENT_STATES.get(record.kind)
    command_id = _text_or_none(detail.get("command_id"))
    if answered is not None and command_id is not None and len(command_id) <= ID_CHARS:
        values = {
            "c": command_id,
            "d": record.drone_id,
            "state": answered,
            "reason": _text_or_none(detail.get("reason")),
            "message": _text_or_none(detail.get("message")),
            "answered_at": at,
        }
        return [_CommandAnswer(key, record.seq, values)]
    state = ORDER_EVENT_STATES.get(record.kind)
    if state is not None and record.mission_id is not None:
        digest = _text_or_none(detail.get("digest"))
        if digest is not None and (len(digest) != DIGEST_CHARS or not set(digest) <= _HEX):
            digest = None  # not a SHA-256: the drone's word on it is not kept as one
        return [
            _OrderUpdate(
                key=key,
                order_id=record.mission_id,
                drone_id=record.drone_id,
                seq=record.seq,
                state=state,
                at=at,
                outcome=_text_or_none(detail.get("outcome")),
                digest=digest,
                detail=detail,
            )
        ]
    if record.kind in HANDOVER_STEPS:
        outcome = "released" if record.kind == "released" else detail.get("outcome")
        if not isinstance(outcome, str):
            return []  # a step without an outcome is an event, not a hand-over result
        return [
            _HandoverRow(
                key,
                {
                    "drone_id": record.drone_id,
                    "record_id": record.id,
                    "mission_id": record.mission_id,
                    "drop_id": _text_or_none(detail.get("drop")),
                    "step": record.kind,
                    "outcome": outcome,
                    "why": _text_or_none(detail.get("why")),
                    "t": at,
                },
            )
        ]
    return []
