"""The storage error tree and the SQLAlchemy choke point."""

from __future__ import annotations

import pickle
import sqlite3

import pytest
from sqlalchemy import exc as sa_exc

from tether.storage.errors import (
    Conflict,
    LimitExceeded,
    NotFound,
    StorageError,
    StorageUnavailable,
    map_exception,
    translate_errors,
)


class _DriverError(Exception):
    """Stands in for a DBAPI exception (what SQLAlchemy wraps as ``orig``)."""


def _wrap(
    cls: type[sa_exc.DBAPIError], message: str, *, connection_invalidated: bool = False
) -> sa_exc.DBAPIError:
    return cls(
        "SELECT secret FROM t WHERE x = ?",
        ("a message body",),
        _DriverError(message),
        connection_invalidated=connection_invalidated,
    )


def test_hierarchy() -> None:
    for cls in (StorageUnavailable, Conflict, NotFound, LimitExceeded):
        assert issubclass(cls, StorageError)
    assert issubclass(StorageError, Exception)
    assert not issubclass(Conflict, StorageUnavailable)
    assert not issubclass(LimitExceeded, StorageUnavailable | Conflict | NotFound)


def test_limit_exceeded_names_the_user() -> None:
    error = LimitExceeded("bob", 50)
    assert (error.user_id, error.limit, error.args) == ("bob", 50, ("bob", 50))
    assert str(error) == "'bob' would be a member of more than 50 rooms"
    assert map_exception(error) is error
    # args hold the constructor's arguments, so copies (pickle) rebuild it.
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.user_id, copy.limit) == (LimitExceeded, "bob", 50)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (_wrap(sa_exc.OperationalError, "server closed the connection"), StorageUnavailable),
        (_wrap(sa_exc.InterfaceError, "connection already closed"), StorageUnavailable),
        (_wrap(sa_exc.DatabaseError, "database is locked"), StorageUnavailable),
        (
            _wrap(sa_exc.ProgrammingError, "terminating connection", connection_invalidated=True),
            StorageUnavailable,
        ),
        (_wrap(sa_exc.IntegrityError, "UNIQUE constraint failed: messages.seq"), Conflict),
        (sa_exc.TimeoutError("QueuePool limit reached"), StorageUnavailable),
        (sa_exc.DisconnectionError("pre-ping failed"), StorageUnavailable),
        (sqlite3.OperationalError("unable to open database file"), StorageUnavailable),
    ],
)
def test_map_exception(error: Exception, expected: type[StorageError]) -> None:
    mapped = map_exception(error)
    assert type(mapped) is expected


@pytest.mark.parametrize(
    "error",
    [
        _wrap(sa_exc.ProgrammingError, "syntax error at or near SELEC"),
        _wrap(sa_exc.DataError, "value too long for type character varying(64)"),
        sa_exc.ArgumentError("bad argument"),
        RuntimeError("not a database error"),
    ],
)
def test_bugs_are_not_translated(error: Exception) -> None:
    assert map_exception(error) is None


def test_storage_errors_map_to_themselves() -> None:
    error = NotFound("No such room: 'r'")
    assert map_exception(error) is error


def test_translate_errors_chains_and_redacts() -> None:
    original = _wrap(sa_exc.OperationalError, "database is locked")
    with (
        pytest.raises(StorageUnavailable, match=r"^database is locked$") as info,
        translate_errors(),
    ):
        raise original
    assert info.value.__cause__ is original
    # Neither the SQL nor its parameters (message bodies) leak into the message.
    assert "a message body" not in str(info.value)
    assert "SELECT" not in str(info.value)


def test_translate_errors_integrity_is_conflict() -> None:
    with pytest.raises(Conflict, match=r"^duplicate key$"), translate_errors():
        raise _wrap(sa_exc.IntegrityError, "duplicate key")


def test_translate_errors_passes_storage_errors_and_bugs() -> None:
    with pytest.raises(NotFound), translate_errors():
        raise NotFound("x")
    with pytest.raises(sa_exc.ProgrammingError), translate_errors():
        raise _wrap(sa_exc.ProgrammingError, "syntax error")
    with pytest.raises(KeyError), translate_errors():
        raise KeyError("bug")
