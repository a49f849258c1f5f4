"""RoomActor: one per active room.

It owns the room's live state (members and roles, the last sequence number,
receipts, who is typing), enforces membership, and fans out: every push is
encoded once and the same bytes go to every member connection through the
:class:`~tether.actors.context.OnlineIndex` (P12).

Storage work never blocks the actor: each operation runs in a task and its
result comes back as a message (:class:`_IoDone`), so the actor keeps handling
mail while commits are in flight and storage can group-commit many messages of
many rooms together. Sequence numbers are assigned by storage in commit order;
the actor delivers ``msg`` pushes strictly in that order (a small reorder
buffer), and never before the message is committed.

The actor starts on demand (a request for the room), loads its state from
storage in ``on_start``, and retires after ``room_idle_timeout`` without
activity, with the same no-message-lost handover as the UserActor.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from tether.actors import ActorDeadError, ActorRef, MailboxFull, StopReason
from tether.actors.context import ServerContext
from tether.actors.io import IoDone, PipeToSelf
from tether.actors.outbox import Outbox
from tether.actors.receipts import ReceiptLog, Typists
from tether.plugins._messages import PluginPost
from tether.plugins.api import Allow, Intercept, Modify, Posted, PostError, Reject
from tether.storage.errors import Conflict, LimitExceeded, NotFound, StorageUnavailable
from tether.storage.records import MAX_HISTORY_LIMIT, MessageRecord, RoomRecord
from tether.transport.protocol import codec
from tether.transport.protocol.codec import fit_history_reply
from tether.transport.protocol.codes import ErrorCode
from tether.transport.protocol.events import (
    History,
    MemberAction,
    MemberEvent,
    MemberInfo,
    MemberRole,
    Message,
    MessageDeleted,
    MessageEdited,
    MsgDelete,
    MsgEdit,
    MsgSend,
    ReadState,
    Receipt,
    ReceiptInfo,
    Receipts,
    Recovered,
    Reply,
    RoomAdded,
    RoomInfo,
    RoomInvite,
    RoomJoin,
    RoomKind,
    RoomLeave,
    RoomMembers,
    RoomRemove,
    Typing,
    TypingUsers,
)
from tether.transport.websocket import encode_frame

if TYPE_CHECKING:
    from tether.plugins.host import PluginHost

log = logging.getLogger("tether.room")

MAX_RECEIPTS_PER_PUSH = 1000
MAX_TYPING_PER_PUSH = 100
#: (sender, cid) of intercepted messages already allowed, per room: a retry
#: of one goes straight to storage (which answers ``dup``) instead of being
#: intercepted again, possibly into another verdict.
MAX_ACCEPTED_CIDS = 4096


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch (message and room timestamps)."""
    return int(time.time() * 1000)


# -- messages -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoomRequest:
    """A client request about this room, from the connection that got it."""

    connection: ActorRef[Any]
    conn_id: int
    user: str
    device: str
    event: Any


@dataclass(frozen=True, slots=True)
class Respond:
    """To a ConnectionActor: send this reply/error event to the client."""

    event: Any


@dataclass(frozen=True, slots=True)
class ResumeRoom:
    """A resuming connection wants what came after seq ``after`` (see ``docs/protocol.md``).

    The connection holds this room's pushes in ``outbox`` until the room
    releases them with the replay; at most ``budget`` bytes are replayed. The
    room tells ``connection`` :class:`ResumeDone` when it has answered.
    """

    connection: ActorRef[Any]
    outbox: Outbox
    user: str
    after: int
    budget: int


@dataclass(frozen=True, slots=True)
class ResumeDone:
    """To a ConnectionActor: ``room`` has sent its replay and ``recovered``."""

    room: str


@dataclass(frozen=True, slots=True)
class ConnectionGone:
    """A connection of ``user`` that typed in this room stopped."""

    user: str


@dataclass(frozen=True, slots=True)
class MemberQuery:
    """Asked (``ask``): is ``user`` a member of this room?

    Answers ``"member"``, ``"not_member"``, ``"missing"`` (no such room) or
    ``"unavailable"`` (storage could not load it; ask again later), from the
    members the room keeps in memory.
    """

    user: str


@dataclass(frozen=True, slots=True)
class _FlushReceipts:
    pass


@dataclass(frozen=True, slots=True)
class _FlushMessages:
    pass


@dataclass(frozen=True, slots=True)
class _TypingTick:
    pass


@dataclass(frozen=True, slots=True)
class _IdleCheck:
    pass


@dataclass(frozen=True, slots=True)
class _Retire:
    pass


def room_info(record: RoomRecord, last_seq: int | None = None) -> RoomInfo:
    """The wire shape of a room."""
    return RoomInfo(
        id=record.id,
        kind=RoomKind(record.kind),
        name=record.name[:128],
        owner=record.owner_id,
        last_seq=record.last_seq if last_seq is None else last_seq,
        created_at=record.created_at_ms,
    )


def message_shape(record: MessageRecord) -> Message:
    """The wire shape of a stored message."""
    return Message(
        room=record.room_id,
        seq=record.seq,
        cid=record.client_id,
        sender=record.sender_id,
        body=record.body,
        ts=record.created_at_ms,
        edited_at=record.edited_at_ms,
        deleted=record.deleted,
    )


def storage_error(request: Any, exc: BaseException) -> Any:
    """Turn a storage failure into the client's error reply."""
    if isinstance(exc, StorageUnavailable):
        return request.error(ErrorCode.UNAVAILABLE, "storage unavailable, retry")
    if isinstance(exc, NotFound):
        return request.error(ErrorCode.NOT_FOUND, str(exc)[:200] or "not found")
    if isinstance(exc, LimitExceeded):
        return request.error(
            ErrorCode.LIMIT_EXCEEDED,
            f"{exc.user_id[:128]} is in the maximum number of rooms ({exc.limit})",
        )
    if isinstance(exc, Conflict):
        return request.error(ErrorCode.FORBIDDEN, str(exc)[:200] or "conflict")
    log.error("storage failed: %r", exc)
    return request.error(ErrorCode.INTERNAL, "internal error")


def _with_body(reply: Reply, body: Any) -> Reply:
    """``reply`` with ``body`` added: what was stored when a plugin changed the message."""
    return Reply(ref=reply.ref, data={**reply.data, "body": body})


def _post_error(exc: BaseException) -> PostError:
    """What a plugin's post gets when storing it failed."""
    if isinstance(exc, StorageUnavailable):
        return PostError(int(ErrorCode.UNAVAILABLE), "storage unavailable, retry")
    if isinstance(exc, NotFound):
        return PostError(int(ErrorCode.ROOM_NOT_FOUND), str(exc)[:200] or "not found")
    log.error("plugin post failed: %r", exc)
    return PostError(int(ErrorCode.INTERNAL), "internal error")


def _own_message_error(request: Any, exc: BaseException) -> Any:
    """The error reply for a failed edit or delete of one's own message."""
    if isinstance(exc, NotFound):
        return request.error(ErrorCode.MESSAGE_NOT_FOUND, "no such message")
    if isinstance(exc, Conflict):
        return request.error(ErrorCode.NOT_AUTHOR, "not your message")
    return storage_error(request, exc)


class RoomActor(PipeToSelf):
    """One active room (see the module docstring).

    Args:
        ctx: the server context.
        room_id: the room's id.
    """

    kind = "room"
    mailbox_size = 20_000

    def __init__(self, ctx: ServerContext, room_id: str) -> None:
        super().__init__()
        self.ctx = ctx
        self.room_id = room_id
        self.record: RoomRecord | None = None
        self.missing = False
        self.unavailable = False
        self.members: dict[str, str] = {}  # user -> role
        self.last_seq = 0
        self.receipts = ReceiptLog()
        self.typists = Typists()
        self._pending_sends = 0
        self._reorder: dict[int, Message] = {}
        self._origin: dict[int, int] = {}  # seq -> connection that sent it
        self._committed_at: dict[int, float] = {}  # seq -> its commit result came (metrics)
        self._outgoing: list[tuple[Message, int | None]] = []
        self._flush_queued = False
        self._next_seq = 1
        self._receipt_timer = False
        self._typing_timer = False
        self._last_activity = trio.current_time()
        self._retiring = False
        self.delivered_pushes = 0
        size = ctx.config.resume_buffer_messages
        # The newest pushed messages as encoded frames, for resumes that need
        # no storage read: (seq, frame), contiguous, oldest first.
        self._recent: deque[tuple[int, bytes]] | None = deque(maxlen=size) if size else None
        self._resuming = 0
        # Plugin interception: sends and edits waiting for a verdict, per
        # sender, in arrival order (one asked at a time per sender, so the
        # sender's order holds); allowed (sender, cid) → the stored body when
        # a plugin changed it, else None.
        self._intercepting = 0
        self._held: dict[str, deque[RoomRequest]] = {}
        self._accepted: OrderedDict[tuple[str, str], Any] = OrderedDict()

    # -- lifecycle ------------------------------------------------------------
    async def on_start(self) -> None:  # type: ignore[override]  # async hooks are ours
        """Load the room from storage (temporary task, before any message)."""
        store = self.ctx.store
        try:
            self.record = await store.get_room(self.room_id)
            members = await store.list_members(self.room_id)
            receipts = await store.receipts(self.room_id)
        except NotFound:
            self.missing = True
            return
        except StorageUnavailable as exc:
            # Requests are answered "unavailable" and the actor retires so the
            # next request tries again.
            log.warning("room %s not loaded: %r", self.room_id, exc)
            self.missing = True
            self.unavailable = True
            return
        self.last_seq = self.record.last_seq
        self._next_seq = self.last_seq + 1
        self.members = {m.user_id: m.role for m in members}
        for r in receipts:
            self.receipts.load(
                r.user_id, r.read_seq, {d.device_id: d.delivered_seq for d in r.devices}
            )
        for user in self.members:
            self.receipts.add_member(user)
        self.call_later(self.ctx.config.room_idle_timeout, _IdleCheck())

    def on_receive(self, message: Any) -> Any:
        """Dispatch by message type."""
        if self._retiring and isinstance(message, RoomRequest | ResumeRoom | PluginPost):
            successor = self.ctx.rooms.get(self.room_id)
            if successor is not None:
                self._tell(successor, message)
                return None
            self._retiring = False
            self.ctx.rooms.adopt(self.room_id, self.ref)
        match message:
            case RoomRequest():
                self._last_activity = trio.current_time()
                self._on_request(message)
            case ResumeRoom():
                self._last_activity = trio.current_time()
                self._on_resume(message)
            case IoDone():
                self._io_done(message)
            case PluginPost():
                self._last_activity = trio.current_time()
                self._on_plugin_post(message)
            case MemberQuery():
                return self._member_of(message.user)
            case ConnectionGone():
                # Only when the user has no connection left: another device
                # may be the one typing now (a stale entry expires anyway).
                if not self.ctx.online.is_online(message.user) and self.typists.stop(message.user):
                    self._push_typing()
            case _FlushReceipts():
                self._receipt_timer = False
                self._flush_receipts()
            case _FlushMessages():
                self._flush_messages()
            case _TypingTick():
                self._typing_timer = False
                if self.typists.expire(trio.current_time()):
                    self._push_typing()
                self._arm_typing()
            case _IdleCheck():
                self._on_idle_check()
            case _Retire():
                if self._retiring:
                    self.stop(reason=StopReason.IDLE)
            case _:
                raise TypeError(f"Expected a room message, got {message!r}")
        return None

    def on_stop(self) -> None:
        """Leave the directory; unsaved receipts are written in the background.

        At server shutdown :meth:`flush_receipts` has run before (``Server``
        drains rooms first), so nothing is left here then.
        """
        self.ctx.rooms.remove(self.room_id, self.ref)
        if self.receipts.has_changes:
            _, reads, devices = self.receipts.take_changes()
            try:
                self.ctx.system.nursery.start_soon(self._write_receipts, reads, devices)
            except RuntimeError:  # the system is closing: too late to write
                log.warning("room %s: %d receipts not saved", self.room_id, len(reads))

    async def flush_receipts(self) -> None:
        """Push and persist pending receipts now (called at graceful shutdown)."""
        users, reads, devices = self.receipts.take_changes()
        self._push_receipts(users)
        if reads or devices:
            await self._write_receipts(reads, devices)

    # -- helpers --------------------------------------------------------------
    def _tell(self, ref: ActorRef[Any], message: Any) -> None:
        try:
            ref.tell(message)
        except (ActorDeadError, MailboxFull) as exc:
            log.debug("room %s: %r dropped: %r", self.room_id, message, exc)

    def _respond(self, request: RoomRequest, event: Any) -> None:
        self._tell(request.connection, Respond(event))

    def _push(
        self, event: Any, users: Any = None, *, exclude: int | None = None, key: Any = None
    ) -> int:
        """Encode once, push to every connection of ``users`` (default: members)."""
        frame = encode_frame(codec.encode(event))
        sent = self.ctx.online.push(
            self.members if users is None else users,
            frame,
            exclude=exclude,
            room=self.room_id,
            key=key,
        )
        self.delivered_pushes += sent
        return sent

    def _member_check(self, request: RoomRequest) -> bool:
        if self.unavailable:
            self._respond(
                request, request.event.error(ErrorCode.UNAVAILABLE, "storage unavailable, retry")
            )
            self._maybe_retire_missing()
            return False
        if self.missing:
            self._respond(request, request.event.error(ErrorCode.ROOM_NOT_FOUND, "no such room"))
            self._maybe_retire_missing()
            return False
        if request.user not in self.members:
            self._respond(
                request, request.event.error(ErrorCode.NOT_MEMBER, "not a member of this room")
            )
            return False
        return True

    def _member_of(self, user: str) -> str:
        """The answer to a :class:`MemberQuery` (same rules as :meth:`_member_check`)."""
        if self.unavailable or self.missing:
            self._maybe_retire_missing()
            return "unavailable" if self.unavailable else "missing"
        return "member" if user in self.members else "not_member"

    def _maybe_retire_missing(self) -> None:
        if not self._retiring:
            self._retiring = True
            self.ctx.rooms.remove(self.room_id, self.ref)
            self._tell(self.ref, _Retire())

    # -- requests ---------------------------------------------------------------
    def _on_request(self, request: RoomRequest) -> None:
        event = request.event
        if isinstance(event, Typing):
            if not self.missing and request.user in self.members:
                self._on_typing(request.user, event.typing)
            return
        if isinstance(event, RoomJoin):
            self._on_join(request)
            return
        if not self._member_check(request):
            return
        match event:
            case MsgSend():
                self._on_send(request, event)
            case MsgEdit():
                self._on_edit(request, event)
            case MsgDelete():
                self._on_delete(request, event)
            case History():
                self._on_history(request, event)
            case Receipt():
                self._on_receipt(request, event)
            case RoomMembers():
                self._on_members(request, event)
            case RoomLeave():
                self._on_leave(request, event)
            case RoomInvite():
                self._on_invite(request, event)
            case RoomRemove():
                self._on_remove(request, event)
            case _:
                self._respond(request, event.error(ErrorCode.UNKNOWN_TYPE, "not a room request"))

    # -- messages ---------------------------------------------------------------
    def _on_send(self, request: RoomRequest, event: MsgSend) -> None:
        pending = self._pending_sends + self._intercepting
        if pending >= self.ctx.config.max_pending_sends_per_room:
            self._respond(request, event.error(ErrorCode.RATE_LIMITED, "room busy, retry"))
            return
        plugins = self.ctx.plugins
        if plugins is not None and plugins.intercepting:
            self._hold(request)
            return
        self._store_send(request, event, event.body, modified=False)

    def _store_send(
        self, request: RoomRequest, event: MsgSend, body: Any, *, modified: bool
    ) -> None:
        """Append the message (``body``: what plugins left of it) and answer the sender."""
        self._pending_sends += 1
        self.ctx.counters.messages_in += 1
        ts = now_ms()
        store = self.ctx.store

        def append() -> Awaitable[Any]:
            return store.append_message(self.room_id, request.user, event.cid, body, ts)

        def done(result: Any, error: BaseException | None) -> None:
            self._pending_sends -= 1
            if error is not None:
                self._accepted.pop((request.user, event.cid), None)  # not stored: ask again
                self._respond(request, storage_error(event, error))
                self._deliver_ready()
                return
            reply = event.reply(seq=result.seq, ts=result.created_at_ms, dup=result.duplicate)
            self._respond(request, _with_body(reply, body) if modified else reply)
            if not result.duplicate:
                self._reorder[result.seq] = Message(
                    room=self.room_id,
                    seq=result.seq,
                    cid=event.cid,
                    sender=request.user,
                    body=body,
                    ts=result.created_at_ms,
                )
                self._origin[result.seq] = request.conn_id
                self._committed_at[result.seq] = trio.current_time()
            if self.typists.stop(request.user):
                self._push_typing()
            self._deliver_ready()

        self._io(append, done)

    def _deliver_ready(self) -> None:
        """Queue committed messages in sequence order (see the module docstring).

        The pushes go out in :meth:`_flush_messages`, after the results already
        in the mailbox: when the room is busy, several messages leave in one
        write per connection instead of one write each (natural batching, the
        same idea as storage's group commit).
        """
        reorder = self._reorder
        plugins = self.ctx.plugins
        while reorder:
            message = reorder.pop(self._next_seq, None)
            if message is None:
                if self._pending_sends:
                    return  # the missing seq is still being committed
                # Nothing in flight: the gap was taken by someone else (another
                # node); deliver what we have in order.
                self._next_seq = min(reorder)
                continue
            self._outgoing.append((message, self._origin.pop(message.seq, None)))
            if plugins is not None:
                plugins.message_committed(message)
            self.last_seq = max(self.last_seq, message.seq)
            self._next_seq = message.seq + 1
        if self._outgoing and not self._flush_queued:
            self._flush_queued = True
            try:
                self.ref.tell(_FlushMessages())
            except MailboxFull:
                self._flush_messages()  # no room to batch: send now

    def _flush_messages(self) -> None:
        self._flush_queued = False
        outgoing, self._outgoing = self._outgoing, []
        if not outgoing:
            return
        self.ctx.counters.messages_out += len(outgoing)
        frames = [encode_frame(codec.encode(message)) for message, _ in outgoing]
        if self._recent is not None:
            self._recent.extend((m.seq, f) for (m, _), f in zip(outgoing, frames, strict=True))
        last = outgoing[-1][0].seq
        if len(outgoing) == 1:
            self.delivered_pushes += self.ctx.online.push(
                self.members, frames[0], exclude=outgoing[0][1], room=self.room_id, seq=last
            )
            self._observe_fanout(outgoing)
            return
        origins = [origin for _, origin in outgoing]
        self.delivered_pushes += self.ctx.online.push_batch(
            self.members, frames, origins, room=self.room_id, seq=last
        )
        self._observe_fanout(outgoing)

    def _observe_fanout(self, pushed: list[tuple[Message, int | None]]) -> None:
        """Record each pushed message's commit-to-outbox time (``/metrics``)."""
        committed_at = self._committed_at
        now = trio.current_time()
        observe = self.ctx.counters.fanout_seconds.observe
        for message, _ in pushed:
            at = committed_at.pop(message.seq, None)
            if at is not None:
                observe(now - at)

    def _on_edit(self, request: RoomRequest, event: MsgEdit) -> None:
        plugins = self.ctx.plugins
        if plugins is not None and plugins.intercepting:
            self._hold(request)
            return
        self._store_edit(request, event, event.body, modified=False)

    def _store_edit(
        self, request: RoomRequest, event: MsgEdit, body: Any, *, modified: bool
    ) -> None:
        """Replace the message's body with ``body`` (what plugins left of the edit)."""
        ts = now_ms()
        store = self.ctx.store

        def done(result: Any, error: BaseException | None) -> None:
            if error is not None:
                self._respond(request, _own_message_error(event, error))
            else:
                edited_at = result.edited_at_ms or ts
                self._forget_recent(event.seq)
                reply = event.reply(edited_at=edited_at)
                self._respond(request, _with_body(reply, body) if modified else reply)
                self._push(
                    MessageEdited(room=self.room_id, seq=event.seq, body=body, edited_at=edited_at),
                    exclude=request.conn_id,
                )
                plugins = self.ctx.plugins
                if plugins is not None:
                    plugins.message_edited(self.room_id, event.seq, request.user, body, edited_at)

        self._io(lambda: store.edit_message(self.room_id, event.seq, request.user, body, ts), done)

    # -- plugins ----------------------------------------------------------------------
    def _hold(self, request: RoomRequest) -> None:
        """Queue a send or edit for the plugins' verdict (one at a time per sender)."""
        self._intercepting += 1
        queue = self._held.get(request.user)
        if queue is not None:
            queue.append(request)
            return
        self._held[request.user] = deque((request,))
        self._intercept_next(request.user)

    def _intercept_next(self, user: str) -> None:
        """Ask the plugins about ``user``'s oldest held request, in a task.

        The room keeps handling its mail meanwhile; the verdict comes back as a
        message. The host bounds the wait (``plugin_intercept_timeout``).
        """
        queue = self._held[user]
        plugins = self.ctx.plugins
        while queue:
            request = queue[0]
            event = request.event
            if isinstance(event, MsgSend) and (user, event.cid) in self._accepted:
                # A retry of an allowed message: storage answers dup with the
                # original seq; the verdict is not asked for again.
                queue.popleft()
                self._intercepting -= 1
                stored = self._accepted[(user, event.cid)]
                body = event.body if stored is None else stored
                self._store_send(request, event, body, modified=stored is not None)
                continue
            if plugins is None:  # no host to ask (defensive): store as sent
                queue.popleft()
                self._intercepting -= 1
                if isinstance(event, MsgSend):
                    self._store_send(request, event, event.body, modified=False)
                else:
                    self._store_edit(request, event, event.body, modified=False)
                continue
            self._ask_plugins(user, queue, request, plugins)
            return
        del self._held[user]

    def _ask_plugins(
        self, user: str, queue: deque[RoomRequest], request: RoomRequest, plugins: PluginHost
    ) -> None:
        event = request.event
        is_send = isinstance(event, MsgSend)
        intercept = Intercept(
            room=self.room_id,
            sender=user,
            body=event.body,
            kind="send" if is_send else "edit",
            cid=event.cid if is_send else None,
            seq=None if is_send else event.seq,
        )

        def decided(verdict: Any, error: BaseException | None) -> None:
            queue.popleft()
            self._intercepting -= 1
            if error is None and isinstance(verdict, Reject):
                self._respond(request, event.error(ErrorCode.REJECTED, verdict.reason))
            elif error is not None or not isinstance(verdict, Allow | Modify):
                # Fail-closed: temporary, a retry with the same cid is safe.
                reason = getattr(verdict, "reason", None) or "message filter unavailable"
                self._respond(request, event.error(ErrorCode.UNAVAILABLE, f"{reason}, retry"))
            else:
                modified = isinstance(verdict, Modify)
                body = verdict.body if isinstance(verdict, Modify) else event.body
                if is_send:
                    accepted = self._accepted
                    accepted[(user, event.cid)] = body if modified else None
                    if len(accepted) > MAX_ACCEPTED_CIDS:
                        accepted.popitem(last=False)
                    self._store_send(request, event, body, modified=modified)
                else:
                    self._store_edit(request, event, body, modified=modified)
            self._intercept_next(user)

        self._io(lambda: plugins.intercept(intercept), decided)

    def _on_plugin_post(self, post: PluginPost) -> None:
        """A plugin posts as its bot user: no membership check, no interception."""
        reply = post.reply
        if self.unavailable or self.missing:
            code = ErrorCode.UNAVAILABLE if self.unavailable else ErrorCode.ROOM_NOT_FOUND
            reason = "storage unavailable, retry" if self.unavailable else "no such room"
            reply.set_exception((PostError, PostError(int(code), reason), None))
            self._maybe_retire_missing()
            return
        if self._pending_sends + self._intercepting >= self.ctx.config.max_pending_sends_per_room:
            busy = PostError(int(ErrorCode.RATE_LIMITED), "room busy, retry")
            reply.set_exception((PostError, busy, None))
            return
        self._pending_sends += 1
        ts = now_ms()
        ctx = self.ctx

        async def append() -> Any:
            if post.user not in ctx.known_users:
                await ctx.store.upsert_user(post.user, post.user_name)
                ctx.known_users.add(post.user)
            return await ctx.store.append_message(self.room_id, post.user, post.cid, post.body, ts)

        def done(result: Any, error: BaseException | None) -> None:
            self._pending_sends -= 1
            if error is not None:
                reply.set_exception((PostError, _post_error(error), None))
                self._deliver_ready()
                return
            reply.set(
                Posted(self.room_id, result.seq, result.created_at_ms, post.cid, result.duplicate)
            )
            if not result.duplicate:
                self._reorder[result.seq] = Message(
                    room=self.room_id,
                    seq=result.seq,
                    cid=post.cid,
                    sender=post.user,
                    body=post.body,
                    ts=result.created_at_ms,
                )
                self._committed_at[result.seq] = trio.current_time()
            self._deliver_ready()

        self._io(append, done)

    def _on_delete(self, request: RoomRequest, event: MsgDelete) -> None:
        store = self.ctx.store
        ts = now_ms()

        def done(result: Any, error: BaseException | None) -> None:
            if error is not None:
                self._respond(request, _own_message_error(event, error))
            else:
                self._forget_recent(event.seq)
                self._respond(request, event.reply())
                self._push(
                    MessageDeleted(room=self.room_id, seq=event.seq), exclude=request.conn_id
                )
                plugins = self.ctx.plugins
                if plugins is not None:
                    plugins.message_deleted(self.room_id, event.seq, request.user)

        self._io(lambda: store.delete_message(self.room_id, event.seq, request.user, ts), done)

    def _on_history(self, request: RoomRequest, event: History) -> None:
        store = self.ctx.store
        limit = event.limit
        max_bytes = self.ctx.protocol_limits.max_frame_bytes
        # One extra row tells whether there is more in that direction (at the
        # storage page limit, a full page is taken to mean "maybe more").
        fetch = min(limit + 1, MAX_HISTORY_LIMIT)

        def done(result: Any, error: BaseException | None) -> None:
            if error is not None:
                self._respond(request, storage_error(event, error))
                return
            records: list[MessageRecord] = result
            more = len(records) > limit or (fetch == limit and len(records) == limit)
            if len(records) > limit:
                records = records[:limit] if event.forward else records[len(records) - limit :]
            messages = [message_shape(r) for r in records]
            self._respond(
                request, fit_history_reply(event, messages, more=more, max_bytes=max_bytes)
            )

        self._io(
            lambda: store.history(
                self.room_id, before_seq=event.before, after_seq=event.after, limit=fetch
            ),
            done,
        )

    # -- receipts and typing ----------------------------------------------------
    def _on_receipt(self, request: RoomRequest, event: Receipt) -> None:
        self.receipts.ack(
            request.user,
            request.device,
            delivered=event.delivered,
            read=event.read,
            last_seq=self.last_seq,
        )
        if event.ref is not None:
            # An acknowledged receipt is a stored one: flush now and answer
            # once written, so a room.list right after the reply agrees.
            users, reads, devices = self.receipts.take_changes()
            self._push_receipts(users)

            def written(_result: Any, error: BaseException | None) -> None:
                if error is not None:
                    self._respond(request, storage_error(event, error))
                else:
                    self._respond(request, event.reply())

            self._io(lambda: self._write_receipts(reads, devices, strict=True), written)
            return
        if self.receipts.has_changes and not self._receipt_timer:
            self._receipt_timer = True
            self.call_later(self.ctx.config.receipts_interval, _FlushReceipts())

    def _flush_receipts(self) -> None:
        users, reads, devices = self.receipts.take_changes()
        self._push_receipts(users)
        if reads or devices:
            self.ctx.system.nursery.start_soon(self._write_receipts, reads, devices)

    def _push_receipts(self, users: list[tuple[str, int, int]]) -> None:
        for start in range(0, len(users), MAX_RECEIPTS_PER_PUSH):
            chunk = users[start : start + MAX_RECEIPTS_PER_PUSH]
            self._push(
                Receipts(
                    room=self.room_id,
                    users=tuple(ReceiptInfo(user=u, delivered=d, read=r) for u, d, r in chunk),
                )
            )

    async def _write_receipts(
        self, reads: dict[str, int], devices: dict[tuple[str, str], int], *, strict: bool = False
    ) -> None:
        """Persist receipts, then sync each reader's devices (``read`` push).

        Raises:
            StorageUnavailable: only when ``strict`` (an acknowledged receipt);
                otherwise failures are logged and the positions stay in memory.
        """
        store = self.ctx.store
        failed: list[BaseException] = []

        async def write(fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
            try:
                await fn(self.room_id, *args)
            except (StorageUnavailable, NotFound) as exc:
                # Unavailable: the positions are kept in memory and pushed;
                # they are written again with the next receipt. NotFound: the
                # member left or the room is gone meanwhile.
                failed.append(exc)

        async with trio.open_nursery() as nursery:
            for (user, device), seq in devices.items():
                nursery.start_soon(write, store.set_delivered, user, device, seq)
            for user, seq in reads.items():
                nursery.start_soon(write, store.set_read, user, seq)
        if failed:
            log.warning("room %s: %d receipts not saved: %r", self.room_id, len(failed), failed[0])
            if strict and any(isinstance(exc, StorageUnavailable) for exc in failed):
                raise StorageUnavailable("receipts not saved")
            return
        for user, seq in reads.items():
            try:
                unread = await store.unread_count(self.room_id, user)
            except (StorageUnavailable, NotFound):
                continue
            frame = encode_frame(codec.encode(ReadState(room=self.room_id, seq=seq, unread=unread)))
            self.ctx.online.push((user,), frame, room=self.room_id)

    def _on_typing(self, user: str, typing: bool) -> None:
        if typing:
            changed = self.typists.start(user, trio.current_time() + self.ctx.config.typing_timeout)
            self._arm_typing()
        else:
            changed = self.typists.stop(user)
        if changed:
            self._push_typing()

    def _arm_typing(self) -> None:
        deadline = self.typists.next_deadline()
        if deadline is not None and not self._typing_timer:
            self._typing_timer = True
            self.call_at(deadline, _TypingTick())

    def _push_typing(self) -> None:
        users = self.typists.users()[:MAX_TYPING_PER_PUSH]
        # Last write wins per room: a slow reader gets the current list, not
        # every change it missed.
        self._push(TypingUsers(room=self.room_id, users=tuple(users)), key=("typing", self.room_id))

    # -- resume -------------------------------------------------------------------
    def _on_resume(self, msg: ResumeRoom) -> None:
        """Replay what ``msg.user`` missed after ``msg.after``, then ``recovered``.

        The seam: every committed message is pushed (or queued in the
        connection's hold) before the head is fixed here, so the replay is
        exactly (after, head] and live pushes after it are > head.
        """
        if self.unavailable or self.missing or msg.user not in self.members:
            code = (
                ErrorCode.UNAVAILABLE
                if self.unavailable
                else ErrorCode.ROOM_NOT_FOUND
                if self.missing
                else ErrorCode.NOT_MEMBER
            )
            # Only a member may learn the room's head.
            head = self.last_seq if code is ErrorCode.UNAVAILABLE else 0
            self._release(msg, [], head=head, after=msg.after, code=code)
            if self.missing:
                self._maybe_retire_missing()
            return
        self._flush_messages()
        head = self.last_seq
        if msg.after >= head:
            self._release(msg, [], head=head, after=msg.after)
            return
        start = max(msg.after, head - self.ctx.config.resume_max_replay)
        recent = self._recent
        if recent and recent[0][0] <= start + 1:
            frames = [(seq, frame) for seq, frame in recent if start < seq <= head]
            self._release(msg, frames, head=head, after=msg.after)
            return
        # Older than memory: read storage, holding live pushes meanwhile.
        self._resuming += 1
        store = self.ctx.store
        room_id = self.room_id

        async def read() -> list[tuple[int, bytes]]:
            frames: list[tuple[int, bytes]] = []
            after = start
            while after < head:
                page = await store.history(room_id, after_seq=after, limit=MAX_HISTORY_LIMIT)
                if not page:
                    break
                for record in page:
                    if record.seq > head:
                        break
                    frames.append((record.seq, encode_frame(codec.encode(message_shape(record)))))
                after = page[-1].seq
            return frames

        def done(result: Any, error: BaseException | None) -> None:
            self._resuming -= 1
            if error is not None:
                log.warning("room %s: resume read failed: %r", self.room_id, error)
                code = (
                    ErrorCode.UNAVAILABLE
                    if isinstance(error, StorageUnavailable)
                    else ErrorCode.INTERNAL
                )
                self._release(msg, [], head=head, after=msg.after, code=code)
                return
            self._release(msg, result, head=head, after=msg.after)

        self._io(read, done)

    def _release(
        self,
        msg: ResumeRoom,
        frames: list[tuple[int, bytes]],
        *,
        head: int,
        after: int,
        code: ErrorCode | None = None,
    ) -> None:
        """Send the replay (newest ``frames`` within budget) and ``recovered``."""
        budget = msg.budget
        keep = len(frames)
        size = 0
        while keep and size + len(frames[keep - 1][1]) <= budget:
            size += len(frames[keep - 1][1])
            keep -= 1
        replay = frames[keep:]
        first_wanted = after + 1
        covered = bool(replay) and replay[0][0] <= first_wanted
        complete = code is None and (head <= after or covered)
        first = None
        if not complete and code is None:
            first = replay[0][0] if replay else head + 1
        recovered = Recovered(
            room=self.room_id,
            complete=complete,
            replayed=len(replay),
            head=head,
            first=first,
            code=None if code is None else int(code),
        )
        out = [frame for _, frame in replay]
        if code is None:
            # The current typing list, so that no indicator from before the
            # drop (or a restart) stays stuck on the client.
            typists = tuple(self.typists.users()[:MAX_TYPING_PER_PUSH])
            out.append(encode_frame(codec.encode(TypingUsers(room=self.room_id, users=typists))))
        out.append(encode_frame(codec.encode(recovered)))
        msg.outbox.release(self.room_id, out, head)
        self.ctx.counters.replayed_messages += len(replay)
        self._tell(msg.connection, ResumeDone(self.room_id))

    def _forget_recent(self, seq: int) -> None:
        """An edit or delete of ``seq``: its stored frame is stale, drop it and older ones."""
        recent = self._recent
        while recent and recent[0][0] <= seq:
            recent.popleft()

    # -- membership ---------------------------------------------------------------
    def _on_members(self, request: RoomRequest, event: RoomMembers) -> None:
        members = []
        for user, role in self.members.items():
            delivered, read = self.receipts.position(user)
            members.append(
                MemberInfo(user=user, role=MemberRole(role), read=read, delivered=delivered)
            )
        self._respond(request, event.reply(members=members))

    def _info(self) -> RoomInfo:
        assert self.record is not None
        return room_info(self.record, self.last_seq)

    def _on_join(self, request: RoomRequest) -> None:
        event: RoomJoin = request.event
        if self.missing:
            self._respond(request, event.error(ErrorCode.ROOM_NOT_FOUND, "no such room"))
            self._maybe_retire_missing()
            return
        assert self.record is not None
        if request.user in self.members:
            self._respond(request, event.reply(room=self._info()))
            return
        if self.record.kind == "direct":
            self._respond(
                request, event.error(ErrorCode.FORBIDDEN, "direct rooms cannot be joined")
            )
            return
        if self.record.kind != "public":
            self._respond(request, event.error(ErrorCode.NOT_PUBLIC, "the room is not public"))
            return
        self._add_member(request, request.user, lambda: event.reply(room=self._info()), joined=True)

    def _on_invite(self, request: RoomRequest, event: RoomInvite) -> None:
        assert self.record is not None
        if self.record.kind == "direct":
            self._respond(request, event.error(ErrorCode.FORBIDDEN, "direct rooms take no guests"))
            return
        if self.members.get(request.user) != "owner":
            self._respond(request, event.error(ErrorCode.NOT_OWNER, "only the owner can invite"))
            return
        if event.user in self.members:
            self._respond(request, event.reply())
            return
        self._add_member(request, event.user, event.reply, joined=False)

    def _add_member(
        self, request: RoomRequest, user: str, reply: Callable[[], Any], *, joined: bool
    ) -> None:
        if len(self.members) >= self.ctx.config.max_room_members:
            self._respond(request, request.event.error(ErrorCode.ROOM_FULL, "the room is full"))
            return
        store = self.ctx.store

        def done(result: Any, error: BaseException | None) -> None:
            if error is not None:
                self._respond(request, storage_error(request.event, error))
                return
            if user not in self.members:
                others = list(self.members)
                self.members[user] = "member"
                self.receipts.add_member(user)
                action = MemberAction.JOINED if joined else MemberAction.INVITED
                self._push(
                    MemberEvent(room=self.room_id, user=user, action=action),
                    others,
                    exclude=request.conn_id,
                )
                self._push(RoomAdded(room=self._info(), unread=0), (user,), exclude=request.conn_id)
                self.ctx.online.introduce(
                    self.members, (user,), self.ctx.config.presence_auto_subscribe_max_members
                )
                plugins = self.ctx.plugins
                if plugins is not None:
                    plugins.membership_changed(self.room_id, ((user, action.value),), request.user)
            self._respond(request, reply())

        limit = self.ctx.config.max_rooms_per_user
        self._io(
            lambda: store.add_member(self.room_id, user, now_ms=now_ms(), max_rooms_per_user=limit),
            done,
        )

    def _on_leave(self, request: RoomRequest, event: RoomLeave) -> None:
        assert self.record is not None
        if self.record.kind == "direct":
            self._respond(request, event.error(ErrorCode.FORBIDDEN, "direct rooms cannot be left"))
            return
        if self.members.get(request.user) == "owner":
            self._respond(request, event.error(ErrorCode.FORBIDDEN, "the owner cannot leave"))
            return
        self._drop_member(request, request.user, MemberAction.LEFT)

    def _on_remove(self, request: RoomRequest, event: RoomRemove) -> None:
        assert self.record is not None
        if self.members.get(request.user) != "owner":
            self._respond(request, event.error(ErrorCode.NOT_OWNER, "only the owner can remove"))
            return
        if event.user == request.user:
            self._respond(request, event.error(ErrorCode.BAD_REQUEST, "use room.leave"))
            return
        if event.user not in self.members:
            self._respond(request, event.reply())
            return
        self._drop_member(request, event.user, MemberAction.REMOVED)

    def _drop_member(self, request: RoomRequest, user: str, action: MemberAction) -> None:
        store = self.ctx.store

        def done(result: Any, error: BaseException | None) -> None:
            if error is not None:
                self._respond(request, storage_error(request.event, error))
                return
            if user in self.members:
                del self.members[user]
                self.receipts.remove_member(user)
                if self.typists.stop(user):
                    self._push_typing()
                self._leave_call(user, action)
                # Remaining members, and the departed user's other devices.
                self._push(
                    MemberEvent(room=self.room_id, user=user, action=action),
                    [*self.members, user],
                    exclude=request.conn_id,
                )
                plugins = self.ctx.plugins
                if plugins is not None:
                    plugins.membership_changed(self.room_id, ((user, action.value),), request.user)
            self._respond(request, request.event.reply())

        self._io(lambda: store.remove_member(self.room_id, user), done)

    def _leave_call(self, user: str, action: MemberAction) -> None:
        """A member went: the room's call (if any) drops their participants."""
        call = self.ctx.calls.get(self.room_id)
        if call is not None:
            from tether.actors.call import CallMemberGone  # noqa: PLC0415 - call imports room

            reason = "left the room" if action is MemberAction.LEFT else "removed from the room"
            self._tell(call, CallMemberGone(user, reason))

    # -- idling ---------------------------------------------------------------------
    def _on_idle_check(self) -> None:
        idle_for = trio.current_time() - self._last_activity
        timeout = self.ctx.config.room_idle_timeout
        busy = (
            self._pending_sends
            or self._intercepting
            or self._resuming
            or self.typists.users()
            or self.receipts.has_changes
        )
        if idle_for < timeout or busy:
            self.call_later(max(1.0, timeout - idle_for), _IdleCheck())
            return
        self._retiring = True
        self.ctx.rooms.remove(self.room_id, self.ref)
        self._tell(self.ref, _Retire())

    # -- console ------------------------------------------------------------
    def state_summary(self) -> str:
        """One line for the console's actor list."""
        if self.missing:
            return "missing" + (" (storage unavailable)" if self.unavailable else "")
        return (
            f"{len(self.members)} members, last_seq {self.last_seq}, "
            f"{self._pending_sends} pending sends" + (", retiring" if self._retiring else "")
        )

    def inspect(self) -> dict[str, Any]:
        """Console detail (runs in the actor: trio thread)."""
        members = []
        for user, role in sorted(self.members.items()):
            delivered, read = self.receipts.position(user)
            members.append({"user": user, "role": role, "delivered": delivered, "read": read})
        return {
            "room": self.room_id,
            "missing": self.missing,
            "unavailable": self.unavailable,
            "members": members,
            "last_seq": self.last_seq,
            "typing": list(self.typists.users()),
            "pending_sends": self._pending_sends,
            "intercepting": self._intercepting,
            "resuming": self._resuming,
            "reorder_waiting": len(self._reorder),
            "delivered_pushes": self.delivered_pushes,
            "idle_s": round(trio.current_time() - self._last_activity, 3),
            "retiring": self._retiring,
        }
