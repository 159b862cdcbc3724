"""Dispatch: the drones' registered public keys (orders are sealed to them) and the
operator commands sent to drones with the drones' answers (`ground.models.OperatorCommand`).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def _time(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table("drones") as drones:
        drones.add_column(sa.Column("identity_public", sa.String(64), nullable=True))
        drones.add_column(sa.Column("seal_public", sa.String(64), nullable=True))
        drones.add_column(_time("registered_at", nullable=True))
    op.create_table(
        "commands",
        sa.Column("command_id", sa.String(64), nullable=False),
        sa.Column("drone_id", sa.String(64), nullable=False),
        sa.Column("order_id", sa.String(200), nullable=True),
        sa.Column("command", sa.String(16), nullable=False),
        sa.Column("issued_by", sa.Text(), nullable=False),
        _time("issued_at"),
        _time("expires_at"),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        _time("answered_at", nullable=True),
        sa.ForeignKeyConstraint(["drone_id"], ["drones.drone_id"]),
        sa.PrimaryKeyConstraint("command_id"),
    )
    op.create_index("ix_commands_drone", "commands", ["drone_id", "issued_at"])


def downgrade() -> None:
    op.drop_table("commands")
    with op.batch_alter_table("drones") as drones:
        for column in ("registered_at", "seal_public", "identity_public"):
            drones.drop_column(column)
