"""Persistence for tether: users, rooms, memberships, messages, receipts, sessions.

The API is four ``typing.Protocol`` classes (:mod:`.interfaces`), combined
as :class:`Store`, with two implementations held to one contract suite:

* :func:`open_store` / :class:`SqlStore`: SQLite (default, a file in the data
  folder) or PostgreSQL, SQL in worker threads, writes group-committed;
* :class:`MemoryStore`: in process memory, for tests and development.

Errors form the tree documented in :mod:`.errors`; records and limits are in
:mod:`.records`; schema migrations in :mod:`.migrate`.
"""

from tether.storage.database import create_engine_for, default_url
from tether.storage.errors import (
    Conflict,
    LimitExceeded,
    NotFound,
    StorageError,
    StorageUnavailable,
)
from tether.storage.interfaces import MessageStore, RoomStore, SessionStore, Store, UserStore
from tether.storage.memory import MemoryStore
from tether.storage.migrate import current_revision, head_revision, upgrade
from tether.storage.records import (
    MAX_CLIENT_ID_LENGTH,
    MAX_DEVICE_ID_LENGTH,
    MAX_HISTORY_LIMIT,
    MAX_NAME_LENGTH,
    MAX_ONLINE_DEVICES,
    MAX_ROOM_ID_LENGTH,
    MAX_SESSION_ID_LENGTH,
    MAX_SESSION_WATCHING,
    MAX_USER_ID_LENGTH,
    AppendResult,
    DeviceReceipt,
    MemberReceipts,
    MemberRecord,
    MessageRecord,
    Role,
    RoomKind,
    RoomRecord,
    RoomSummary,
    SessionRecord,
    UserRecord,
)
from tether.storage.sql import SqlStore, StoreStatistics, open_store

__all__ = [
    "MAX_CLIENT_ID_LENGTH",
    "MAX_DEVICE_ID_LENGTH",
    "MAX_HISTORY_LIMIT",
    "MAX_NAME_LENGTH",
    "MAX_ONLINE_DEVICES",
    "MAX_ROOM_ID_LENGTH",
    "MAX_SESSION_ID_LENGTH",
    "MAX_SESSION_WATCHING",
    "MAX_USER_ID_LENGTH",
    "AppendResult",
    "Conflict",
    "DeviceReceipt",
    "LimitExceeded",
    "MemberReceipts",
    "MemberRecord",
    "MemoryStore",
    "MessageRecord",
    "MessageStore",
    "NotFound",
    "Role",
    "RoomKind",
    "RoomRecord",
    "RoomStore",
    "RoomSummary",
    "SessionRecord",
    "SessionStore",
    "SqlStore",
    "StorageError",
    "StorageUnavailable",
    "Store",
    "StoreStatistics",
    "UserRecord",
    "UserStore",
    "create_engine_for",
    "current_revision",
    "default_url",
    "head_revision",
    "open_store",
    "upgrade",
]
