"""Errors raised by tether's storage layer.

The hierarchy::

    StorageError                 (base: catch this to handle any storage failure)
     ├─ StorageUnavailable       (temporary: the database cannot be reached, is locked,
     │                            lost the connection, or the write queue is full;
     │                            nothing of the failed operation was committed;
     │                            tell the client "temporary error" and retry later)
     ├─ Conflict                 (the operation contradicts stored state: a uniqueness
     │                            violation, or an actor acting on what is not its own,
     │                            e.g. editing another user's message)
     ├─ NotFound                 (a room, user, membership or message does not exist)
     └─ LimitExceeded            (the operation would put a user in more rooms than the
                                  caller's max_rooms_per_user allows; nothing changed)

Malformed arguments (an over-long id, a negative sequence number, an unknown
room kind) are caller bugs and raise :class:`ValueError` before anything is
queued; validate client input at the protocol edge with the limits in
:mod:`tether.storage.records`.

Every SQLAlchemy exception is translated at one choke point,
:func:`translate_errors` (or :func:`map_exception` where a context manager
does not fit), with ``raise ... from exc`` so the original stays on the
chain. SQLAlchemy errors that are neither an availability problem nor an
integrity violation (a syntax error, a type mismatch) are bugs in this
package and propagate untranslated.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import exc as sa_exc

__all__ = [
    "Conflict",
    "LimitExceeded",
    "NotFound",
    "StorageError",
    "StorageUnavailable",
    "map_exception",
    "translate_errors",
]


class StorageError(Exception):
    """Base class of every error the storage layer raises on purpose."""


class StorageUnavailable(StorageError):
    """The database is temporarily unusable; the operation did not take effect.

    Raised when the database cannot be reached, is locked by another writer
    for longer than the busy timeout, drops the connection, when the write
    queue is full ("overloaded"), or when the store is closed. Callers send a
    temporary error to the client; the store recovers by itself once the
    database is back (the next operation opens a fresh connection).
    """


class Conflict(StorageError):
    """The operation conflicts with stored state (uniqueness or ownership)."""


class NotFound(StorageError):
    """The room, user, membership or message the operation names does not exist."""


class LimitExceeded(StorageError):
    """The operation would make a user a member of more rooms than allowed.

    Raised by ``create_room``, ``get_or_create_direct`` and ``add_member``
    when given ``max_rooms_per_user``; nothing of the operation took effect.

    Attributes:
      user_id: the user who already is in ``limit`` rooms or more (the first
        such user, in argument order, when several are).
      limit: the ``max_rooms_per_user`` of the call.
    """

    def __init__(self, user_id: str, limit: int) -> None:
        """Record who is at the limit; ``args`` is ``(user_id, limit)``."""
        super().__init__(user_id, limit)
        self.user_id = user_id
        self.limit = limit

    def __str__(self) -> str:
        """The message: who is at which limit."""
        return f"{self.user_id!r} would be a member of more than {self.limit} rooms"


# SQLite reports lock contention as OperationalError already; the message
# check also catches the rare DatabaseError subclasses that carry it.
_LOCKED_MESSAGES = ("database is locked", "database table is locked")


def map_exception(exc: BaseException) -> StorageError | None:
    """Translate a database-layer exception into this package's hierarchy.

    Args:
      exc: an exception raised by SQLAlchemy or a DBAPI driver.

    Returns:
      The :class:`StorageError` to raise ``from exc``, or ``None`` if ``exc``
      is not a database availability or integrity problem (a bug: let it
      propagate unchanged).
    """
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, sa_exc.IntegrityError):
        return Conflict(_describe(exc))
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated or isinstance(
            exc, sa_exc.OperationalError | sa_exc.InterfaceError
        ):
            return StorageUnavailable(_describe(exc))
        if any(text in str(exc.orig).lower() for text in _LOCKED_MESSAGES):
            return StorageUnavailable(_describe(exc))
        return None
    # Pool checkout timeouts and disconnects detected by pre-ping are not
    # DBAPIErrors, but they are the same "try again later" condition.
    if isinstance(exc, sa_exc.TimeoutError | sa_exc.DisconnectionError):
        return StorageUnavailable(str(exc))
    # A raw driver error can escape from a pool "connect" hook (the pragmas).
    if isinstance(exc, sqlite3.OperationalError):
        return StorageUnavailable(str(exc))
    return None


@contextmanager
def translate_errors() -> Iterator[None]:
    """Translate database exceptions raised in the block (the choke point).

    :class:`StorageError` passes through unchanged; SQLAlchemy errors are
    mapped by :func:`map_exception` and raised ``from`` the original;
    anything else (a bug) propagates unchanged.

    Raises:
      StorageUnavailable: the database is unreachable, locked or disconnected.
      Conflict: an integrity constraint was violated.
    """
    try:
        yield
    except StorageError:
        raise
    except (sa_exc.SQLAlchemyError, sqlite3.Error) as exc:
        mapped = map_exception(exc)
        if mapped is None:
            raise
        raise mapped from exc


def _describe(exc: sa_exc.DBAPIError) -> str:
    # The driver's own message only: SQLAlchemy's str() appends the SQL text,
    # and the parameters would be message bodies (engines are created with
    # hide_parameters=True as well, so logs are redacted either way).
    return str(exc.orig).strip() or type(exc.orig).__name__
