"""Users online: ``users.online_devices`` and its partial index.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

``online_devices`` (INTEGER NOT NULL DEFAULT 0) is the number of live
devices a user has on this server, written by ``set_online``; existing users
start at 0 (offline). ``ix_users_online_devices`` covers only the rows with
``online_devices > 0``, so ``online_users`` reads the online users without a
scan of all users. The default makes the new column a metadata-only change
on both backends (no table rewrite; PostgreSQL 11 or later).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out rather than imported from the models, so that this revision
# stays what it is when the models change later.
_PREDICATE = "online_devices > 0"


def upgrade() -> None:
    """Add ``users.online_devices`` (0 for every existing user) and its index."""
    op.add_column(
        "users",
        sa.Column("online_devices", sa.Integer(), server_default="0", nullable=False),
    )
    op.create_index(
        "ix_users_online_devices",
        "users",
        ["online_devices"],
        sqlite_where=sa.text(_PREDICATE),
        postgresql_where=sa.text(_PREDICATE),
    )


def downgrade() -> None:
    """Drop the index and the column (the recorded online users are lost)."""
    op.drop_index("ix_users_online_devices", table_name="users")
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+), not a batch rebuild:
    # rebuilding users would mean dropping a table that every other table
    # references, with foreign keys enforced.
    op.drop_column("users", "online_devices")
