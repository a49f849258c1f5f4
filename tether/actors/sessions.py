"""Resumable sessions: what a reconnecting client gets back.

A session is the server's memory of one client connection that outlives the
socket: its device id and the users it subscribed to with
``presence.subscribe`` (the automatic subscriptions to room mates are made
again at every connect, so they are not kept). ``welcome.session`` names it;
a client that reconnects sends it back in ``hello.session``.

The registry holds live sessions and, for ``session_ttl`` after their
connection ended, dormant ones. Sessions are also written to storage
(``sessions`` table) when they start and when their subscriptions change, so
a resume works after a restart or a crash; the in-memory copy is the fast
path. Everything here runs on the trio thread.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import trio

from tether.storage.records import SessionRecord

#: Dormant sessions kept in memory at most (the oldest go first; storage
#: still has them).
MAX_DORMANT_SESSIONS = 100_000
#: Explicit subscriptions written to storage per session (the storage limit).
MAX_STORED_WATCHING = 1000


@dataclass(slots=True, eq=False)
class Session:
    """One session (see the module docstring).

    Attributes:
        id: the opaque id sent in ``welcome.session``.
        user_id: its owner; a session is only resumed by the same user.
        device: the device id in use.
        explicit: users watched through ``presence.subscribe``.
        connection: the live connection's ref, or None while dormant.
    """

    id: str
    user_id: str
    device: str
    explicit: set[str] = field(default_factory=set)
    connection: Any = None
    conn_id: int | None = None
    dormant_since: float = 0.0
    #: When the stored copy was last written (Unix ms; 0: never).
    stored_at_ms: int = 0

    def record(self, now_ms: int) -> SessionRecord:
        """The storage row for this session (noting ``now_ms`` as its stored time)."""
        self.stored_at_ms = now_ms
        return SessionRecord(
            id=self.id,
            user_id=self.user_id,
            device_id=self.device,
            watching=tuple(sorted(self.explicit))[:MAX_STORED_WATCHING],
            updated_at_ms=now_ms,
        )


class SessionRegistry:
    """Session id → :class:`Session`, live and recently dormant ones.

    Args:
        ttl: seconds a dormant session stays resumable.
        max_dormant: bound of dormant sessions kept in memory.
    """

    __slots__ = ("_dormant", "_max_dormant", "_sessions", "ttl")

    def __init__(self, ttl: float, max_dormant: int = MAX_DORMANT_SESSIONS) -> None:
        self.ttl = ttl
        self._max_dormant = max_dormant
        self._sessions: dict[str, Session] = {}
        self._dormant: OrderedDict[str, None] = OrderedDict()  # oldest first

    def new(self, user_id: str, device: str, connection: Any) -> Session:
        """Start a fresh session for a connection."""
        session = Session(secrets.token_urlsafe(18), user_id, device, connection=connection)
        self._sessions[session.id] = session
        return session

    def claim(self, session_id: str, user_id: str, connection: Any) -> tuple[Session | None, Any]:
        """Take over ``session_id`` for ``connection`` if it is known and ``user_id``'s.

        Returns:
            (the session or None, the ref of the connection that held it live
            before, which the caller closes, or None).
        """
        self._sweep()
        session = self._sessions.get(session_id)
        if session is None or session.user_id != user_id:
            return None, None
        previous = session.connection
        self._dormant.pop(session_id, None)
        session.connection = connection
        return session, previous

    def adopt(self, record: SessionRecord, connection: Any) -> Session:
        """Bring back a session loaded from storage, live on ``connection``."""
        session = Session(
            record.id,
            record.user_id,
            record.device_id,
            set(record.watching),
            connection=connection,
        )
        old = self._sessions.get(record.id)
        if old is not None and old.connection is not None:
            # Claimed meanwhile by another connection: keep that one's state.
            return old
        self._dormant.pop(record.id, None)
        self._sessions[record.id] = session
        return session

    def release(self, session: Session, connection: Any) -> None:
        """``connection`` ended: the session turns dormant (unless another took it)."""
        if session.connection is not connection:
            return
        session.connection = None
        session.dormant_since = trio.current_time()
        self._dormant[session.id] = None
        self._dormant.move_to_end(session.id)
        self._sweep()

    def _sweep(self) -> None:
        if not self._dormant:
            return
        expired_before = trio.current_time() - self.ttl
        while self._dormant:
            oldest = next(iter(self._dormant))
            session = self._sessions.get(oldest)
            if (
                session is not None
                and session.dormant_since > expired_before
                and len(self._dormant) <= self._max_dormant
            ):
                break
            del self._dormant[oldest]
            if session is not None and session.connection is None:
                del self._sessions[oldest]

    def live_stored_before(self, ms: int) -> list[Session]:
        """Live sessions whose stored copy is older than ``ms`` (Unix ms)."""
        return [
            s for s in self._sessions.values() if s.connection is not None and s.stored_at_ms < ms
        ]

    def __len__(self) -> int:
        return len(self._sessions)

    def statistics(self) -> dict[str, int]:
        """Live and dormant session counts."""
        return {"sessions": len(self._sessions), "dormant": len(self._dormant)}
