"""The initial schema: drones, telemetry, events, statuses, orders, hand-overs, operator
accounts and the audit log (see `ground.models` for what each holds).

Written out in full rather than from the models, so that later changes to the models never
change what this revision did. Times are ``DateTime(timezone=True)``: timestamptz on
PostgreSQL, UTC text on SQLite (the models' `UtcDateTime` converts).

Revision ID: 0001
Revises:
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
FLOAT_TELEMETRY = ("lat", "lon", "alt_msl_m", "alt_rel_m", "heading_deg", "ground_speed_mps",
                   "vertical_speed_mps")  # fmt: skip


def _time(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _record_head(table: str) -> list[sa.SchemaItem]:
    """The columns and constraints every table of drone records starts with."""
    return [
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("drone_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("record_id", sa.String(64), nullable=False),
        _time("t"),
        _time("received_at"),
        sa.ForeignKeyConstraint(["drone_id"], ["drones.drone_id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("drone_id", "record_id", name=f"uq_{table}_record"),
    ]


def upgrade() -> None:
    op.create_table(
        "drones",
        sa.Column("drone_id", sa.String(64), nullable=False),
        _time("first_seen_at", nullable=True),
        _time("last_seen_at", nullable=True),
        sa.Column("last_seq", sa.BigInteger(), nullable=True),
        sa.Column("status_state", sa.String(16), nullable=True),
        _time("status_t", nullable=True),
        _time("status_received_at", nullable=True),
        sa.Column("status_ttl_s", sa.Float(), nullable=True),
        _time("status_expires_at", nullable=True),
        sa.PrimaryKeyConstraint("drone_id"),
    )
    op.create_table(
        "telemetry",
        *_record_head("telemetry"),
        sa.Column("phase", sa.Text(), nullable=True),
        sa.Column("armed", sa.Boolean(), nullable=False),
        sa.Column("mode", sa.Text(), nullable=False),
        *(sa.Column(name, sa.Float(), nullable=True) for name in FLOAT_TELEMETRY),
        sa.Column("battery_pct", sa.BigInteger(), nullable=True),
        sa.Column("battery_v", sa.Float(), nullable=True),
        sa.Column("gps_fix", sa.BigInteger(), nullable=False),
        sa.Column("gps_sats", sa.BigInteger(), nullable=True),
        sa.Column("gps_alarms", sa.JSON(), nullable=False),
        sa.Column("detections", sa.JSON(), nullable=False),
        sa.Column("link_rssi_dbm", sa.BigInteger(), nullable=True),
        sa.Column("link_rsrp_dbm", sa.Float(), nullable=True),
        sa.Column("link_sinr_db", sa.Float(), nullable=True),
    )
    op.create_index("ix_telemetry_drone_t", "telemetry", ["drone_id", "t"])
    op.create_index("ix_telemetry_drone_seq", "telemetry", ["drone_id", "seq"])
    op.create_table(
        "events",
        *_record_head("events"),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("mission_id", sa.String(200), nullable=True),
        sa.Column("phase", sa.Text(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
    )
    op.create_index("ix_events_drone_t", "events", ["drone_id", "t"])
    op.create_index("ix_events_mission", "events", ["mission_id"])
    op.create_table(
        "statuses",
        *_record_head("statuses"),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("ttl_s", sa.Float(), nullable=True),
        _time("expires_at", nullable=True),
    )
    op.create_index("ix_statuses_drone_t", "statuses", ["drone_id", "t"])
    op.create_table(
        "orders",
        sa.Column("order_id", sa.String(200), nullable=False),
        sa.Column("drone_id", sa.String(64), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("payload_digest", sa.String(64), nullable=True),
        _time("created_at"),
        sa.Column("created_by", sa.Text(), nullable=True),
        _time("updated_at"),
        sa.Column("state_seq", sa.BigInteger(), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["drone_id"], ["drones.drone_id"]),
        sa.PrimaryKeyConstraint("order_id"),
    )
    op.create_index("ix_orders_drone", "orders", ["drone_id", "created_at"])
    op.create_table(
        "handovers",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("drone_id", sa.String(64), nullable=False),
        sa.Column("record_id", sa.String(64), nullable=False),
        sa.Column("mission_id", sa.String(200), nullable=True),
        sa.Column("drop_id", sa.Text(), nullable=True),
        sa.Column("step", sa.String(32), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("why", sa.Text(), nullable=True),
        _time("t"),
        sa.ForeignKeyConstraint(["drone_id"], ["drones.drone_id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("drone_id", "record_id", name="uq_handovers_record"),
    )
    op.create_index("ix_handovers_mission", "handovers", ["mission_id"])
    op.create_table(
        "operator_accounts",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=True),
        sa.Column("token_hash", sa.Text(), nullable=True),
        sa.Column("role", sa.String(32), nullable=False),
        _time("created_at"),
        _time("disabled_at", nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("username"),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        _time("at"),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target_kind", sa.String(32), nullable=True),
        sa.Column("target_id", sa.String(200), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_target", "audit_log", ["target_kind", "target_id"])


def downgrade() -> None:
    tables = ("audit_log", "operator_accounts", "handovers", "orders", "statuses", "events",
              "telemetry", "drones")  # fmt: skip
    for table in tables:
        op.drop_table(table)
