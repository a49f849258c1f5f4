"""Pure bookkeeping of a room's receipts and typing users (no trio, no I/O).

:class:`ReceiptLog` keeps, per member, the read position and the delivered
position of each device; :class:`Typists` keeps who is typing and until when.
The :class:`~tether.actors.room.RoomActor` owns one of each, drives their
timers, persists what changed and turns changes into pushes.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class _MemberReceipts:
    read: int = 0
    devices: dict[str, int] = field(default_factory=dict)

    @property
    def delivered(self) -> int:
        # What reached at least one device; reading implies delivery.
        return max(self.read, max(self.devices.values(), default=0))


@dataclass(slots=True)
class ReceiptLog:
    """Read and delivered positions of a room's members.

    Positions never move back and never pass the room's last sequence number.
    Changes are collected until :meth:`take_changes`, so that pushes and
    writes can be coalesced (at most a few per second per room).
    """

    _members: dict[str, _MemberReceipts] = field(default_factory=dict)
    _changed_users: set[str] = field(default_factory=set)
    _changed_reads: dict[str, int] = field(default_factory=dict)
    _changed_devices: dict[tuple[str, str], int] = field(default_factory=dict)

    def load(self, user: str, read: int, devices: dict[str, int]) -> None:
        """Set a member's stored positions (no change is recorded)."""
        self._members[user] = _MemberReceipts(read, dict(devices))

    def add_member(self, user: str) -> None:
        """A new member starts at zero."""
        self._members.setdefault(user, _MemberReceipts())

    def remove_member(self, user: str) -> None:
        """Forget a member (and any unsaved change of theirs)."""
        self._members.pop(user, None)
        self._changed_users.discard(user)
        self._changed_reads.pop(user, None)
        for key in [k for k in self._changed_devices if k[0] == user]:
            del self._changed_devices[key]

    def position(self, user: str) -> tuple[int, int]:
        """``(delivered, read)`` of a member; ``(0, 0)`` for a non-member."""
        member = self._members.get(user)
        if member is None:
            return (0, 0)
        return (member.delivered, member.read)

    def ack(
        self,
        user: str,
        device: str,
        *,
        delivered: int | None,
        read: int | None,
        last_seq: int,
    ) -> bool:
        """Record a receipt; True if the member's visible positions changed.

        ``read`` also counts as delivered to ``device``. Values are capped at
        ``last_seq`` and ignored when they would move a position back.
        """
        member = self._members.get(user)
        if member is None:
            return False
        before = (member.delivered, member.read)
        if read is not None:
            read = min(read, last_seq)
            if read > member.read:
                member.read = read
                self._changed_reads[user] = read
            delivered = max(delivered or 0, read)
        if delivered is not None:
            delivered = min(delivered, last_seq)
            if delivered > member.devices.get(device, 0):
                member.devices[device] = delivered
                self._changed_devices[(user, device)] = delivered
        if (member.delivered, member.read) != before:
            self._changed_users.add(user)
            return True
        return False

    @property
    def has_changes(self) -> bool:
        """Whether anything waits to be pushed or written."""
        return bool(self._changed_users or self._changed_reads or self._changed_devices)

    def take_changes(
        self,
    ) -> tuple[list[tuple[str, int, int]], dict[str, int], dict[tuple[str, str], int]]:
        """Return and clear what changed since the last call.

        Returns:
            ``(users, reads, devices)``: ``(user, delivered, read)`` for each
            member whose visible positions changed, the new read positions to
            store, and the new per-device delivered positions to store.
        """
        users = [(u, *self.position(u)) for u in sorted(self._changed_users)]
        reads, devices = self._changed_reads, self._changed_devices
        self._changed_users = set()
        self._changed_reads = {}
        self._changed_devices = {}
        return users, reads, devices


@dataclass(slots=True)
class Typists:
    """Who is typing in a room, each until a deadline (seconds, any clock)."""

    _until: dict[str, float] = field(default_factory=dict)

    def start(self, user: str, deadline: float) -> bool:
        """``user`` is typing until ``deadline``; True if the list changed."""
        new = user not in self._until
        self._until[user] = deadline
        return new

    def stop(self, user: str) -> bool:
        """``user`` stopped (sent a message, said so, left); True if the list changed."""
        return self._until.pop(user, None) is not None

    def expire(self, now: float) -> bool:
        """Drop entries whose deadline passed; True if the list changed."""
        gone = [user for user, until in self._until.items() if until <= now]
        for user in gone:
            del self._until[user]
        return bool(gone)

    def users(self) -> list[str]:
        """The users typing now, in the order they started."""
        return list(self._until)

    def next_deadline(self) -> float | None:
        """The earliest deadline, if anyone is typing."""
        return min(self._until.values(), default=None)
