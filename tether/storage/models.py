"""SQLAlchemy 2.0 declarative models: the schema of a tether database.

The models describe the schema; the migrations in ``migrations/versions``
create it (revision ``0001`` the messaging tables, ``0002`` the sessions,
``0003`` ``users.online_devices``), and a unit test checks that the migrated
database and these models agree. The store itself runs Core
statements against ``Model.__table__``: the ORM's unit of work would cost
more per row than the whole group-committed insert.

Times are Unix milliseconds in BIGINT columns, so that both backends store
the same integers and no time zone handling is involved.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tether.storage.records import (
    MAX_CLIENT_ID_LENGTH,
    MAX_DEVICE_ID_LENGTH,
    MAX_NAME_LENGTH,
    MAX_ROOM_ID_LENGTH,
    MAX_SESSION_ID_LENGTH,
    MAX_USER_ID_LENGTH,
)

__all__ = ["Base", "DeviceReceipt", "Membership", "Message", "Room", "Session", "User"]

# Deterministic constraint names, so that later migrations can refer to them
# on both backends (SQLite has no names of its own for unnamed constraints).
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: ``len(str(MAX_USER_ID_LENGTH)) + 2 * MAX_USER_ID_LENGTH + 2`` rounded up:
#: a direct key is "<len>:<low id>:<high id>".
DIRECT_KEY_LENGTH = 272


class Base(DeclarativeBase):
    """Declarative base holding the metadata of every table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


#: The rows ``online_users`` reads; also the predicate of its partial index.
ONLINE_PREDICATE = "online_devices > 0"


class User(Base):
    """A user, created on first sign-in.

    ``online_devices``: live devices on this server (``set_online``), so that
    a restarted server knows who was online.
    """

    __tablename__ = "users"
    __table_args__ = (
        # Partial: it holds the online users only, so ``online_users`` reads
        # them without scanning every user, and offline users cost nothing.
        # The query must repeat the predicate verbatim for SQLite's planner.
        Index(
            None,
            "online_devices",
            sqlite_where=text(ONLINE_PREDICATE),
            postgresql_where=text(ONLINE_PREDICATE),
        ),
    )

    id: Mapped[str] = mapped_column(String(MAX_USER_ID_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(String(MAX_NAME_LENGTH))
    created_at_ms: Mapped[int] = mapped_column(BigInteger)
    last_seen_ms: Mapped[int | None] = mapped_column(BigInteger)
    online_devices: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Room(Base):
    """A room; ``last_seq`` is the sequence number of its latest message."""

    __tablename__ = "rooms"
    __table_args__ = (CheckConstraint("kind IN ('public', 'private', 'direct')", name="kind"),)

    id: Mapped[str] = mapped_column(String(MAX_ROOM_ID_LENGTH), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(MAX_NAME_LENGTH))
    owner_id: Mapped[str] = mapped_column(String(MAX_USER_ID_LENGTH), ForeignKey("users.id"))
    created_at_ms: Mapped[int] = mapped_column(BigInteger)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Unique: one direct room per user pair (NULL for other kinds, and NULLs
    # never collide in a unique constraint on either backend).
    direct_key: Mapped[str | None] = mapped_column(String(DIRECT_KEY_LENGTH), unique=True)


class Membership(Base):
    """A user's membership of a room, with the user's read marker."""

    __tablename__ = "memberships"
    __table_args__ = (
        CheckConstraint("role IN ('owner', 'member')", name="role"),
        # "Which rooms is this user in" is the query of every connect, and
        # counting them is the check of max_rooms_per_user.
        Index(None, "user_id"),
    )

    room_id: Mapped[str] = mapped_column(
        String(MAX_ROOM_ID_LENGTH), ForeignKey("rooms.id"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(
        String(MAX_USER_ID_LENGTH), ForeignKey("users.id"), primary_key=True
    )
    role: Mapped[str] = mapped_column(String(16))
    joined_at_ms: Mapped[int] = mapped_column(BigInteger)
    read_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class Message(Base):
    """A message; the primary key (room_id, seq) is also the history index."""

    __tablename__ = "messages"
    __table_args__ = (
        # The dedupe key of appends: a client retry finds its original here.
        UniqueConstraint("room_id", "sender_id", "client_id"),
    )

    room_id: Mapped[str] = mapped_column(
        String(MAX_ROOM_ID_LENGTH), ForeignKey("rooms.id"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    sender_id: Mapped[str] = mapped_column(String(MAX_USER_ID_LENGTH), ForeignKey("users.id"))
    client_id: Mapped[str] = mapped_column(String(MAX_CLIENT_ID_LENGTH))
    # msgpack bytes of the body; NULL once the message is deleted.
    body: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at_ms: Mapped[int] = mapped_column(BigInteger)
    edited_at_ms: Mapped[int | None] = mapped_column(BigInteger)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class DeviceReceipt(Base):
    """Delivery progress of one device of a room member."""

    __tablename__ = "device_receipts"
    __table_args__ = (
        # Removing a member removes the member's device markers with it.
        ForeignKeyConstraint(
            ["room_id", "user_id"],
            ["memberships.room_id", "memberships.user_id"],
            ondelete="CASCADE",
        ),
    )

    room_id: Mapped[str] = mapped_column(String(MAX_ROOM_ID_LENGTH), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(MAX_USER_ID_LENGTH), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(MAX_DEVICE_ID_LENGTH), primary_key=True)
    delivered_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class Session(Base):
    """A resumable session (see ``SessionStore``).

    No foreign key to users: a session is keyed by its id alone, and saving
    one never depends on the user being stored.
    """

    __tablename__ = "sessions"
    __table_args__ = (
        Index(None, "user_id"),
        # The session sweep deletes by age.
        Index(None, "updated_at_ms"),
    )

    id: Mapped[str] = mapped_column(String(MAX_SESSION_ID_LENGTH), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(MAX_USER_ID_LENGTH))
    device_id: Mapped[str] = mapped_column(String(MAX_DEVICE_ID_LENGTH))
    # The watched user ids as a JSON array of strings, in the record's order:
    # readable by an operator with plain SQL on both backends, and never
    # queried by content.
    watching: Mapped[str] = mapped_column(Text)
    updated_at_ms: Mapped[int] = mapped_column(BigInteger)
