"""The ground segment's tables (SQLAlchemy 2 declarative models), the same on SQLite and
PostgreSQL; `ground/migrations` creates them (`ground.db.upgrade`).

Records from drones (track points, events, statuses, hand-over steps) keep the drone's
``seq`` and record ``id``; ``UNIQUE (drone_id, record_id)`` is what de-duplicates
at-least-once delivery (the wire format's ``id`` is fixed when the drone queues a record, so
a re-sent record carries the same one). Every time is a UTC `datetime` (`UtcDateTime`):
``t`` is the drone's clock, ``received_at`` the ingest's.

Integers from the wire are BIGINT: the schema allows anything strictly within ±2^63. Texts a
drone chooses are TEXT (the payload bound, 64 KiB, is their bound), except those that are
indexed or are keys, which `ground.store` bounds before storing (a PostgreSQL B-tree entry
cannot exceed about 2.7 kB).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from companion.telemetry import schema

#: Drone ids are at most 64 characters (`schema.check_drone_id`), record ids too.
ID_CHARS = schema.MAX_ID_CHARS
#: Order ids (and the mission ids events carry, which name orders) are indexed: bounded.
ORDER_ID_CHARS = 200
#: A SHA-256 hex digest.
DIGEST_CHARS = 64
#: A 32-byte public key as unpadded base64url (43 characters), with room to spare.
KEY_CHARS = 64

#: An auto-incrementing 64-bit key: BIGINT on PostgreSQL, SQLite's INTEGER rowid alias.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """A point in time, always UTC: aware datetimes in, aware UTC datetimes out.

    PostgreSQL stores ``timestamptz``; SQLite stores naive UTC text, which sorts and
    compares correctly because every value is converted to UTC first. A naive datetime is
    refused (a ValueError) rather than guessed at.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the ground store keeps UTC times only")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map: dict[Any, Any] = {datetime: UtcDateTime()}  # noqa: RUF012


class Drone(Base):
    """A drone the ground has heard from (or dispatched to). The ``status_*`` columns hold
    its newest `schema.Status` by the drone's clock; ``status_expires_at`` is when an
    ``online`` stops meaning online (`schema.status_expires_at`; NULL: never by itself)."""

    __tablename__ = "drones"

    drone_id: Mapped[str] = mapped_column(String(ID_CHARS), primary_key=True)
    first_seen_at: Mapped[datetime | None]
    last_seen_at: Mapped[datetime | None]
    last_seq: Mapped[int | None] = mapped_column(BigInteger)
    status_state: Mapped[str | None] = mapped_column(String(16))
    status_t: Mapped[datetime | None]
    status_received_at: Mapped[datetime | None]
    status_ttl_s: Mapped[float | None] = mapped_column(Float)
    status_expires_at: Mapped[datetime | None]
    #: The drone's public keys (unpadded base64url of 32 bytes) from its ``drone.pub.json``,
    #: set by `Store.register_drone`: orders are sealed to ``seal_public``. NULL: not
    #: registered, so nothing can be dispatched to it.
    identity_public: Mapped[str | None] = mapped_column(String(KEY_CHARS))
    seal_public: Mapped[str | None] = mapped_column(String(KEY_CHARS))
    registered_at: Mapped[datetime | None]


class TelemetrySample(Base):
    """One `schema.Telemetry` record: a point of the drone's track and its state then."""

    __tablename__ = "telemetry"
    __table_args__ = (
        UniqueConstraint("drone_id", "record_id", name="uq_telemetry_record"),
        Index("ix_telemetry_drone_t", "drone_id", "t"),
        Index("ix_telemetry_drone_seq", "drone_id", "seq"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    drone_id: Mapped[str] = mapped_column(String(ID_CHARS), ForeignKey("drones.drone_id"))
    seq: Mapped[int] = mapped_column(BigInteger)
    record_id: Mapped[str] = mapped_column(String(ID_CHARS))
    t: Mapped[datetime]
    received_at: Mapped[datetime]
    phase: Mapped[str | None] = mapped_column(Text)
    armed: Mapped[bool] = mapped_column(Boolean)
    mode: Mapped[str] = mapped_column(Text)
    lat: Mapped[float | None] = mapped_column(Float)
    lon: Mapped[float | None] = mapped_column(Float)
    alt_msl_m: Mapped[float | None] = mapped_column(Float)
    alt_rel_m: Mapped[float | None] = mapped_column(Float)
    heading_deg: Mapped[float | None] = mapped_column(Float)
    ground_speed_mps: Mapped[float | None] = mapped_column(Float)
    vertical_speed_mps: Mapped[float | None] = mapped_column(Float)
    battery_pct: Mapped[int | None] = mapped_column(BigInteger)
    battery_v: Mapped[float | None] = mapped_column(Float)
    gps_fix: Mapped[int] = mapped_column(BigInteger)
    gps_sats: Mapped[int | None] = mapped_column(BigInteger)
    gps_alarms: Mapped[list[str]] = mapped_column(JSON)
    detections: Mapped[dict[str, int]] = mapped_column(JSON)
    link_rssi_dbm: Mapped[int | None] = mapped_column(BigInteger)
    link_rsrp_dbm: Mapped[float | None] = mapped_column(Float)
    link_sinr_db: Mapped[float | None] = mapped_column(Float)


class EventRecord(Base):
    """One `schema.Event` record; ``mission_id`` names the order for order events."""

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("drone_id", "record_id", name="uq_events_record"),
        Index("ix_events_drone_t", "drone_id", "t"),
        Index("ix_events_mission", "mission_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    drone_id: Mapped[str] = mapped_column(String(ID_CHARS), ForeignKey("drones.drone_id"))
    seq: Mapped[int] = mapped_column(BigInteger)
    record_id: Mapped[str] = mapped_column(String(ID_CHARS))
    t: Mapped[datetime]
    received_at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(Text)
    mission_id: Mapped[str | None] = mapped_column(String(ORDER_ID_CHARS))
    phase: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)


class StatusRecord(Base):
    """One `schema.Status` record: the drone's online/offline history."""

    __tablename__ = "statuses"
    __table_args__ = (
        UniqueConstraint("drone_id", "record_id", name="uq_statuses_record"),
        Index("ix_statuses_drone_t", "drone_id", "t"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    drone_id: Mapped[str] = mapped_column(String(ID_CHARS), ForeignKey("drones.drone_id"))
    seq: Mapped[int] = mapped_column(BigInteger)
    record_id: Mapped[str] = mapped_column(String(ID_CHARS))
    t: Mapped[datetime]
    received_at: Mapped[datetime]
    state: Mapped[str] = mapped_column(String(16))
    ttl_s: Mapped[float | None] = mapped_column(Float)
    expires_at: Mapped[datetime | None]


class Order(Base):
    """A delivery order: created by a dispatcher (`Store.create_order`), then moved on by
    the drone's order events (accepted, refused, flying, done, interrupted). ``state_seq``
    is the seq of the event that set ``state``, so that an older event delivered late never
    moves an order back."""

    __tablename__ = "orders"
    __table_args__ = (Index("ix_orders_drone", "drone_id", "created_at"),)

    order_id: Mapped[str] = mapped_column(String(ORDER_ID_CHARS), primary_key=True)
    drone_id: Mapped[str] = mapped_column(String(ID_CHARS), ForeignKey("drones.drone_id"))
    state: Mapped[str] = mapped_column(String(32))
    payload_digest: Mapped[str | None] = mapped_column(String(DIGEST_CHARS))
    created_at: Mapped[datetime]
    created_by: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime]
    state_seq: Mapped[int | None] = mapped_column(BigInteger)
    outcome: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Handover(Base):
    """One step of a hand-over as the drone reported it: a recipient verdict or fallback
    PIN judged (outcome cleared / refused / ignored, and why), or the parcel released."""

    __tablename__ = "handovers"
    __table_args__ = (
        UniqueConstraint("drone_id", "record_id", name="uq_handovers_record"),
        Index("ix_handovers_mission", "mission_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    drone_id: Mapped[str] = mapped_column(String(ID_CHARS), ForeignKey("drones.drone_id"))
    record_id: Mapped[str] = mapped_column(String(ID_CHARS))
    mission_id: Mapped[str | None] = mapped_column(String(ORDER_ID_CHARS))
    drop_id: Mapped[str | None] = mapped_column(Text)
    step: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(Text)
    why: Mapped[str | None] = mapped_column(Text)
    t: Mapped[datetime]


class OperatorCommand(Base):
    """An operator command (hold, resume, abort, ...) signed by the dispatcher's key and sent
    to a drone, and the drone's answer. ``command_id`` is the signed command's nonce, which
    the drone's ``command-accepted`` / ``command-refused`` event names; ``state`` is
    ``sending``, then ``sent`` (the broker took it) or ``unconfirmed`` (the broker did not
    say so: ``message`` says why), then ``accepted`` or ``refused`` (``reason``,
    ``message``) by the drone."""

    __tablename__ = "commands"
    __table_args__ = (Index("ix_commands_drone", "drone_id", "issued_at"),)

    command_id: Mapped[str] = mapped_column(String(ID_CHARS), primary_key=True)
    drone_id: Mapped[str] = mapped_column(String(ID_CHARS), ForeignKey("drones.drone_id"))
    order_id: Mapped[str | None] = mapped_column(String(ORDER_ID_CHARS))
    command: Mapped[str] = mapped_column(String(16))
    issued_by: Mapped[str] = mapped_column(Text)
    issued_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    message: Mapped[str | None] = mapped_column(Text)
    answered_at: Mapped[datetime | None]


class OperatorAccount(Base):
    """An operator of the ground service. Only the table: hashing and authentication belong
    to the web service; a disabled account keeps its row for the audit log's sake."""

    __tablename__ = "operator_accounts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(ID_CHARS), unique=True)
    password_hash: Mapped[str | None] = mapped_column(Text)
    #: SHA-256 (hex) of the account's API token (`ground.web.tokens`); NULL: none issued.
    token_hash: Mapped[str | None] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime]
    disabled_at: Mapped[datetime | None]


class AuditEntry(Base):
    """One operator action (or the system's on an operator's behalf), append-only."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_target", "target_kind", "target_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(String(64))
    target_kind: Mapped[str | None] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(ORDER_ID_CHARS))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
