"""Resumable sessions: the sessions table.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

``watching`` is a JSON array of user ids in a TEXT column. There is no
foreign key to users (sessions are keyed by id alone). The room limit
(``max_rooms_per_user``) needs no schema change: its count uses
``ix_memberships_user_id`` from revision 0001.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the sessions table and its indexes."""
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("watching", sa.Text(), nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sessions"),
    )
    op.create_index("ix_sessions_user_id", "sessions", ["user_id"])
    op.create_index("ix_sessions_updated_at_ms", "sessions", ["updated_at_ms"])


def downgrade() -> None:
    """Drop the sessions table (and every stored session)."""
    op.drop_index("ix_sessions_updated_at_ms", table_name="sessions")
    op.drop_index("ix_sessions_user_id", table_name="sessions")
    op.drop_table("sessions")
