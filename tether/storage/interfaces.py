"""The async storage API the actors call, as ``typing.Protocol`` classes.

Two implementations exist, held to the same contract by one test suite
(``tests/contract/test_storage_contract.py``):

* :class:`tether.storage.sql.SqlStore` (SQLite or PostgreSQL, via
  :func:`tether.storage.sql.open_store`);
* :class:`tether.storage.memory.MemoryStore` (tests and development).

Common rules for every method:

* Every method is ``async`` and runs under trio; each call is one atomic
  operation (all of it takes effect, or none).
* A write has taken effect, durably on SQL stores, when the call returns.
* ``ValueError``: a malformed argument (see :mod:`tether.storage.records` for
  the limits); raised before anything is queued. This is a caller bug.
* :class:`~tether.storage.errors.StorageUnavailable`: temporary; nothing was
  done; retry later. :class:`~tether.storage.errors.NotFound`,
  :class:`~tether.storage.errors.Conflict` and
  :class:`~tether.storage.errors.LimitExceeded` as documented per method.
* ``now_ms`` arguments are Unix milliseconds; where optional, None means the
  current wall-clock time.
* Cancellation: a cancelled read had no effect. A cancelled write may still
  take effect (it was already queued); retrying an append is safe because
  appends are deduplicated.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Protocol

from tether.storage.records import (
    AppendResult,
    MemberReceipts,
    MemberRecord,
    MessageRecord,
    RoomKind,
    RoomRecord,
    RoomSummary,
    SessionRecord,
    UserRecord,
)

__all__ = ["MessageStore", "RoomStore", "SessionStore", "Store", "UserStore"]


class UserStore(Protocol):
    """Users, their last-seen times, and who is online on this server."""

    async def upsert_user(
        self, user_id: str, name: str, *, now_ms: int | None = None
    ) -> UserRecord:
        """Create the user, or update the name of an existing one.

        Args:
          user_id: the user's id.
          name: display name.
          now_ms: creation time if the user is new (ignored otherwise).

        Returns:
          The stored user (``created_at_ms`` and ``last_seen_ms`` unchanged for
          an existing user).
        """
        ...

    async def touch_last_seen(self, user_id: str, ts_ms: int) -> None:
        """Record activity at ``ts_ms``; the stored time never moves back.

        Raises:
          NotFound: no such user.
        """
        ...

    async def get_last_seen(self, user_ids: Collection[str]) -> dict[str, int | None]:
        """Last-seen times of several users.

        Returns:
          One entry per distinct requested id: the time, or None if the user
          was never seen or does not exist.
        """
        ...

    async def get_user(self, user_id: str) -> UserRecord:
        """The stored user.

        Raises:
          NotFound: no such user.
        """
        ...

    async def set_online(self, user_id: str, devices: int) -> None:
        """Record that the user has ``devices`` live devices on this server.

        A server writes this as devices connect and disconnect; after a
        restart or crash :meth:`online_users` tells it who was online, so it
        can hold their presence steady while they reconnect. The stored count
        is replaced, not added to; 0 means offline.

        An unknown user is ignored (no error, nothing stored): presence is a
        hint, and its writer must not fail because a user is missing. Unlike
        :meth:`touch_last_seen`, which raises NotFound.

        Raises:
          ValueError: ``devices`` not an int in 0..``MAX_ONLINE_DEVICES``
            (``2**31 - 1``).
        """
        ...

    async def online_users(self) -> dict[str, int]:
        """Every user recorded with ``devices > 0``, mapped to the count.

        Cheap with many stored users: its cost grows with the users online,
        not with all users (SQL stores: a partial index on
        ``users.online_devices WHERE online_devices > 0``).
        """
        ...


class RoomStore(Protocol):
    """Rooms and memberships."""

    async def create_room(
        self,
        kind: RoomKind,
        name: str,
        owner_id: str,
        members: Iterable[str] = (),
        *,
        now_ms: int | None = None,
        max_rooms_per_user: int | None = None,
    ) -> RoomRecord:
        """Create a public or private room with a fresh id.

        Args:
          kind: "public" or "private" (direct rooms: ``get_or_create_direct``).
          name: display name.
          owner_id: the creator; becomes a member with role "owner".
          members: further users to add with role "member" (repeats and the
            owner are ignored).
          now_ms: creation time, also every membership's join time.
          max_rooms_per_user: most rooms the owner and each member may be in
            once the room exists (None: no limit). Counted in the same
            transaction as the insert.

        Raises:
          ValueError: kind is "direct" or unknown; ``max_rooms_per_user`` negative.
          NotFound: the owner or a member does not exist (nothing is created).
          LimitExceeded: the owner or a member is already in
            ``max_rooms_per_user`` rooms (nothing is created; checked after
            NotFound; names the first such user, owner first).
        """
        ...

    async def get_room(self, room_id: str) -> RoomRecord:
        """The stored room, with its current ``last_seq``.

        Raises:
          NotFound: no such room.
        """
        ...

    async def get_or_create_direct(
        self,
        a: str,
        b: str,
        *,
        now_ms: int | None = None,
        max_rooms_per_user: int | None = None,
    ) -> RoomRecord:
        """The one direct room of users ``a`` and ``b``, created on first use.

        ``(a, b)`` and ``(b, a)`` name the same room. On creation ``a`` is the
        owner and ``b`` a member; ``a == b`` gives a room with one member.

        Args:
          a, b: the two users.
          now_ms: creation time (ignored if the room exists).
          max_rooms_per_user: on creation, most rooms ``a`` and ``b`` may be in
            once the room exists (None: no limit). An existing room is
            returned whatever the users' room counts.

        Raises:
          ValueError: ``max_rooms_per_user`` negative.
          NotFound: a user does not exist (only checked on creation).
          LimitExceeded: on creation, ``a`` or ``b`` is already in
            ``max_rooms_per_user`` rooms (nothing is created; ``a`` checked
            first).
        """
        ...

    async def add_member(
        self,
        room_id: str,
        user_id: str,
        *,
        now_ms: int | None = None,
        max_rooms_per_user: int | None = None,
    ) -> bool:
        """Add a user to a public or private room with role "member".

        Args:
          room_id: the room.
          user_id: the user to add.
          now_ms: join time.
          max_rooms_per_user: most rooms the user may be in once added (None:
            no limit); not applied when the user already is a member.

        Returns:
          True if added, False if the user was already a member (unchanged).

        Raises:
          ValueError: ``max_rooms_per_user`` negative.
          NotFound: no such room or user.
          Conflict: the room is a direct room (its members are fixed).
          LimitExceeded: the user is not a member and already is in
            ``max_rooms_per_user`` rooms (nothing changed).
        """
        ...

    async def remove_member(self, room_id: str, user_id: str) -> bool:
        """Remove a user from a room, with the user's read and delivery markers.

        Returns:
          True if removed, False if the user was not a member.

        Raises:
          NotFound: no such room.
          Conflict: the room is a direct room, or the user is its owner.
        """
        ...

    async def list_members(self, room_id: str) -> list[MemberRecord]:
        """The members of a room, by join time then user id.

        Raises:
          NotFound: no such room.
        """
        ...

    async def rooms_for_user(self, user_id: str) -> list[RoomSummary]:
        """The rooms a user belongs to, by creation time then id, with unread counts.

        Returns:
          An empty list for a user with no rooms or no such user.
        """
        ...

    async def room_mates(self, user_id: str, *, max_room_members: int | None = None) -> set[str]:
        """Users who share at least one room (direct rooms included) with ``user_id``.

        Args:
            user_id: whose room mates.
            max_room_members: only count rooms with at most this many members
                (``None``: every room).

        Returns:
            The other users' ids (never ``user_id`` itself); empty for an
            unknown user.
        """
        ...


class MessageStore(Protocol):
    """Messages, their per-room sequence numbers, and receipts."""

    async def append_message(
        self, room_id: str, sender_id: str, client_id: str, body: object, now_ms: int
    ) -> AppendResult:
        """Append a message under the room's next sequence number.

        Deduplicated by ``(room_id, sender_id, client_id)``: a retry returns the
        original seq and time with ``duplicate=True`` and writes nothing, also
        after a restart. Sequence numbers are 1, 2, 3... per room, without gaps,
        in commit order. Membership is the caller's policy and is not checked.

        Args:
          room_id: the room.
          sender_id: the author (an existing user).
          client_id: the author's id for this message (1..64 characters).
          body: any msgpack-serialisable value; stored opaque.
          now_ms: the message time.

        Raises:
          ValueError: the body is not msgpack-serialisable.
          NotFound: no such room, or no such sender (checked in that order).
        """
        ...

    async def edit_message(
        self, room_id: str, seq: int, sender_id: str, body: object, now_ms: int
    ) -> MessageRecord:
        """Replace the body of one's own message; sets ``edited_at_ms``.

        Returns:
          The updated message.

        Raises:
          NotFound: no such message, or it was deleted.
          Conflict: ``sender_id`` is not the message's author.
        """
        ...

    async def delete_message(
        self, room_id: str, seq: int, sender_id: str, now_ms: int
    ) -> MessageRecord:
        """Delete one's own message, keeping a tombstone (body None) at its seq.

        Idempotent: deleting a deleted message returns the tombstone unchanged.

        Returns:
          The tombstone (``deleted=True``, ``edited_at_ms`` the deletion time).

        Raises:
          NotFound: no such message.
          Conflict: ``sender_id`` is not the message's author.
        """
        ...

    async def history(
        self,
        room_id: str,
        *,
        before_seq: int | None = None,
        after_seq: int | None = None,
        limit: int,
    ) -> list[MessageRecord]:
        """A page of a room's messages, tombstones included, in ascending seq.

        * neither cursor: the latest ``limit`` messages;
        * ``before_seq``: the ``limit`` messages just before it (paging back);
        * ``after_seq``: the ``limit`` messages just after it (paging forward);
        * both: the first ``limit`` messages after ``after_seq`` and before
          ``before_seq`` (filling a gap).

        Raises:
          ValueError: a negative cursor, or ``limit`` outside 1..500.
          NotFound: no such room.
        """
        ...

    async def set_read(self, room_id: str, user_id: str, seq: int) -> int:
        """Advance a member's read marker to ``seq``; it never moves back.

        ``seq`` is capped at the room's ``last_seq``.

        Returns:
          The marker after the call.

        Raises:
          NotFound: no such room, or the user is not a member.
        """
        ...

    async def set_delivered(self, room_id: str, user_id: str, device_id: str, seq: int) -> int:
        """Advance a member device's delivery marker; it never moves back.

        ``seq`` is capped at the room's ``last_seq``.

        Returns:
          The marker after the call.

        Raises:
          NotFound: no such room, or the user is not a member.
        """
        ...

    async def receipts(self, room_id: str) -> list[MemberReceipts]:
        """Read and delivery markers of every member, sorted by user id.

        Raises:
          NotFound: no such room.
        """
        ...

    async def unread_count(self, room_id: str, user_id: str) -> int:
        """Messages after the member's read marker, sent by others, not deleted.

        Raises:
          NotFound: no such room, or the user is not a member.
        """
        ...


class SessionStore(Protocol):
    """Resumable sessions: a reconnecting client's presence subscriptions.

    Sessions are keyed by id alone; ``user_id`` is not checked against the
    stored users (saving never raises NotFound).
    """

    async def save_session(self, session: SessionRecord) -> None:
        """Store the session, replacing any stored one with the same id.

        Raises:
          ValueError: not a :class:`~tether.storage.records.SessionRecord`, or
            a field over its limits.
        """
        ...

    async def load_session(self, session_id: str) -> SessionRecord | None:
        """The stored session with this id, or None.

        Raises:
          ValueError: ``session_id`` empty or longer than 128 characters.
        """
        ...

    async def delete_sessions(self, *, updated_before_ms: int) -> int:
        """Delete every session with ``updated_at_ms < updated_before_ms``.

        Returns:
          How many sessions were deleted.
        """
        ...


class Store(UserStore, RoomStore, MessageStore, SessionStore, Protocol):
    """Everything a tether server stores: what both implementations provide."""
