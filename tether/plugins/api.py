"""The public plugin API (see ``docs/plugins.md``).

A plugin is an actor class: subclass :class:`Plugin` (runs on the server's
trio thread; handlers may be ``async def``) or :class:`ThreadPlugin` (its own
OS thread, for code that blocks), declare :attr:`~PluginBase.name`,
:attr:`~PluginBase.version` and :attr:`~PluginBase.api_version`, and override
the hooks you need. The server only sends a plugin the events it has a hook
for; a plugin with an :meth:`~PluginBase.intercept` hook is asked about every
message before it is stored.

Everything here is importable from ``tether.plugins``.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

import trio

from tether.actors import Actor, Future, ThreadActor
from tether.config import ConfigError

if TYPE_CHECKING:
    from tether.plugins.host import PluginHost

__all__ = [
    "PLUGIN_API_VERSION",
    "Allow",
    "CallEvent",
    "Command",
    "Event",
    "Intercept",
    "MembershipChanged",
    "MessageDeleted",
    "MessageEdited",
    "MessagePosted",
    "Modify",
    "Plugin",
    "PluginBase",
    "PluginContext",
    "PluginError",
    "PostError",
    "Posted",
    "PresenceChanged",
    "Reject",
    "ThreadPlugin",
    "Verdict",
]

#: The plugin API this server provides. It changes only when the API changes
#: incompatibly; new event types, new event fields and new hooks come without a
#: change (a plugin never receives what it has no hook for). A plugin whose
#: ``api_version`` differs is refused at start.
PLUGIN_API_VERSION: Final = 1


class PluginError(ConfigError):
    """A plugin cannot be loaded: not found, incompatible, misdeclared or misconfigured.

    Raised when the server is created (``Server(config)``), so ``tether serve``
    stops before listening, with the message on stderr.
    """


class PostError(Exception):
    """A :meth:`PluginContext.post` was refused.

    Attributes:
        code: the protocol error code a client would have got (``121`` no such
            room, ``103`` room busy, ``108`` storage unavailable, ``100`` bad body).
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


# -- events -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessagePosted:
    """A message was stored in a room (hook: ``on_message``), once per stored message.

    Plugins get these in each room's ``seq`` order. ``by_plugin`` is true for a
    message a plugin posted (its ``sender`` is the plugin's bot user).
    """

    room: str
    seq: int
    cid: str
    sender: str
    body: Any
    ts: int
    by_plugin: bool = False


@dataclass(frozen=True, slots=True)
class MessageEdited:
    """``sender`` replaced the body of message ``seq`` (hook: ``on_edit``)."""

    room: str
    seq: int
    sender: str
    body: Any
    edited_at: int


@dataclass(frozen=True, slots=True)
class MessageDeleted:
    """``sender`` deleted message ``seq`` (hook: ``on_delete``)."""

    room: str
    seq: int
    sender: str


@dataclass(frozen=True, slots=True)
class PresenceChanged:
    """A user's published presence changed (hook: ``on_presence``).

    The same change subscribers see as a ``presence`` push: ``status`` is
    ``"online"``, ``"away"`` or ``"offline"``, ``devices`` the devices online,
    ``last_seen`` ms since the epoch or None.
    """

    user: str
    status: str
    devices: int
    last_seen: int | None


#: What happened to a membership: the wire's ``member`` actions.
MemberAction = Literal["joined", "left", "invited", "removed"]


@dataclass(frozen=True, slots=True)
class MembershipChanged:
    """``user`` joined, left, was invited to or removed from ``room`` (hook: ``on_membership``).

    ``by`` is the user who made the change (the user themselves for joins and
    leaves). A new room gives one event per member: ``joined`` for its creator
    (both users of a direct room), ``invited`` for the members named at creation.
    """

    room: str
    user: str
    action: MemberAction
    by: str


@dataclass(frozen=True, slots=True)
class CallEvent:
    """Reserved for calls (issue #5; hook: ``on_call``). Not emitted by this server yet."""

    room: str
    call: str
    kind: str
    user: str
    data: Mapping[str, Any]


#: Every event a plugin may receive.
Event = (
    MessagePosted | MessageEdited | MessageDeleted | PresenceChanged | MembershipChanged | CallEvent
)


@dataclass(frozen=True, slots=True)
class Command:
    """A slash command addressed to this plugin (hook: ``on_command``).

    Sent once the message that carries it is stored (it is an ordinary
    message too: members see it). ``name`` is the command without its slash,
    ``args`` the rest of the text, stripped.
    """

    name: str
    args: str
    room: str
    sender: str
    seq: int
    cid: str
    body: Any


# -- interception ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Intercept:
    """A message about to be stored (``kind="send"``) or edited (``kind="edit"``).

    Answer with :class:`Allow`, :class:`Reject` or :class:`Modify` from the
    ``intercept`` hook. ``cid`` is set for sends, ``seq`` for edits. Past
    ``deadline`` (on the trio clock) the server no longer waits for the answer.
    """

    room: str
    sender: str
    body: Any
    kind: Literal["send", "edit"] = "send"
    cid: str | None = None
    seq: int | None = None
    deadline: float = float("inf")


@dataclass(frozen=True, slots=True)
class Allow:
    """Store the message as it is (returning None means the same)."""


@dataclass(frozen=True, slots=True)
class Reject:
    """Refuse the message: the sender gets error 127 ``REJECTED`` with ``reason``."""

    reason: str


@dataclass(frozen=True, slots=True)
class Modify:
    """Store ``body`` instead (a valid message body; the next plugin sees it)."""

    body: Any


Verdict = Allow | Reject | Modify


# -- the context ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Posted:
    """What :meth:`PluginContext.post` resolves to: the stored message's place."""

    room: str
    seq: int
    ts: int
    cid: str
    dup: bool = False


class PluginContext:
    """What the server gives a plugin: its settings, its bot user, posting, commands.

    Thread-safe: :meth:`post` and :meth:`register_command` may be called from
    the plugin's handlers, whichever thread they run on.

    Attributes:
        name: the plugin's name.
        settings: the plugin's ``[plugin_settings.<name>]`` table (read-only; empty
            when there is none).
        bot_user: the user id the plugin posts as, ``bot:<name>``.
        bot_name: that user's display name.
        log: a logger named ``tether.plugin.<name>``.
    """

    def __init__(
        self,
        host: PluginHost,
        name: str,
        settings: Mapping[str, Any],
        bot_user: str,
        bot_name: str,
    ) -> None:
        self._host = host
        self.name = name
        self.settings = settings
        self.bot_user = bot_user
        self.bot_name = bot_name
        self.log = logging.getLogger(f"tether.plugin.{name}")
        self._token = trio.lowlevel.current_trio_token()
        self._trio_thread = threading.get_ident()

    def post(self, room: str, body: Any, *, cid: str | None = None) -> Future[Posted]:
        """Post ``body`` to ``room`` as this plugin's bot user.

        The bot posts without being a member (it is a system sender) and its
        messages are not intercepted. Members get an ordinary ``msg`` push.
        Give a ``cid`` to make a retried post idempotent (default: a fresh one).

        Returns:
            A future of the :class:`Posted` place: ``await`` it on the trio
            thread, ``.get(timeout=...)`` in a :class:`ThreadPlugin`, or ignore it.
            It fails with :class:`PostError` (no such room, room busy, storage
            unavailable, invalid body).
        """
        future: Future[Posted] = Future()
        self._soon(
            future, lambda: self._host.post(self, room, body, cid or uuid.uuid4().hex, future)
        )
        return future

    def register_command(self, name: str, help: str) -> None:
        """Route messages starting with ``/<name>`` to this plugin's ``on_command``.

        Idempotent for this plugin (call it from ``__init__`` or ``on_start``;
        registrations survive restarts). ``name`` is 1..32 characters of
        ``a-z``, ``0-9``, ``_`` and ``-``.

        Raises:
            ValueError: an invalid name, or one another plugin registered.
        """
        self._host.register_command(self.name, name, help)

    def _soon(self, future: Future[Any], call: Callable[[], None]) -> None:
        if threading.get_ident() == self._trio_thread:
            call()
            return
        try:
            self._token.run_sync_soon(call)
        except trio.RunFinishedError:
            future.set_exception((PostError, PostError(108, "the server has stopped"), None))


# -- the plugin classes -----------------------------------------------------------

#: Event type → the hook that receives it.
HOOKS: Final[Mapping[type, str]] = {
    MessagePosted: "on_message",
    MessageEdited: "on_edit",
    MessageDeleted: "on_delete",
    PresenceChanged: "on_presence",
    MembershipChanged: "on_membership",
    CallEvent: "on_call",
}


class PluginBase:
    """What :class:`Plugin` and :class:`ThreadPlugin` share: declarations and hooks.

    Subclasses declare, as class attributes:

    * ``name``: unique, 1..64 characters of ``a-z``, ``0-9``, ``_``, ``.``, ``-``;
    * ``version``: the plugin's own version, for logs;
    * ``api_version``: the :data:`PLUGIN_API_VERSION` it was written for.

    They are started by the server with one argument, the :class:`PluginContext`
    (``self.context``). Hooks (override what you need; each is sent only what
    it handles): ``on_message``, ``on_edit``, ``on_delete``, ``on_presence``,
    ``on_membership``, ``on_call``, ``on_command`` (tells: an exception fails
    the plugin, which is restarted with backoff) and ``intercept`` (an ask: an
    exception counts as no answer, see ``plugin_fail_policy``). Messages of
    other types (your own, timers) go to :meth:`on_other`.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = ""
    api_version: ClassVar[int] = 0
    #: The bot user's display name (default: ``name``).
    bot_name: ClassVar[str | None] = None

    context: PluginContext

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        """Check the plugin's settings when the server starts.

        Raises:
            ValueError: the settings are invalid (the server refuses to start,
                with this message).
        """

    @property
    def settings(self) -> Mapping[str, Any]:
        """The plugin's settings (``self.context.settings``)."""
        return self.context.settings

    def intercept(
        self, message: Intercept
    ) -> Verdict | Future[Verdict] | Awaitable[Verdict | None] | None:
        """Decide about a message before it is stored; None means :class:`Allow`.

        To answer later without holding up the plugin's mailbox (an I/O-bound
        check), return a :class:`~tether.actors.Future` and ``set()`` the
        verdict on it when known (from any thread), before ``message.deadline``.
        """
        return Allow()

    def on_message(self, event: MessagePosted) -> Awaitable[None] | None:
        """A message was stored."""

    def on_edit(self, event: MessageEdited) -> Awaitable[None] | None:
        """A message was edited."""

    def on_delete(self, event: MessageDeleted) -> Awaitable[None] | None:
        """A message was deleted."""

    def on_presence(self, event: PresenceChanged) -> Awaitable[None] | None:
        """A user's presence changed."""

    def on_membership(self, event: MembershipChanged) -> Awaitable[None] | None:
        """A room's membership changed."""

    def on_call(self, event: CallEvent) -> Awaitable[None] | None:
        """Reserved: call events (not emitted yet)."""

    def on_command(self, command: Command) -> Awaitable[None] | None:
        """A slash command this plugin registered was posted."""

    def on_other(self, message: Any) -> Any:
        """Any other message (the plugin's own, timers).

        Raises:
            TypeError: by default.
        """
        raise TypeError(f"{type(self).__name__} got an unexpected message {message!r}")

    def _dispatch(self, message: Any) -> Any:
        kind = type(message)
        if kind is Intercept:
            return self.intercept(message)
        if kind is Command:
            return self.on_command(message)
        hook = HOOKS.get(kind)
        if hook is not None:
            return getattr(self, hook)(message)
        return self.on_other(message)

    @classmethod
    def handles(cls, hook: str) -> bool:
        """Whether this class overrides ``hook`` (the server sends only those events)."""
        return getattr(cls, hook) is not getattr(PluginBase, hook)

    def inspect(self) -> dict[str, Any]:
        """Console detail: name, version and the host's status of this plugin."""
        detail: dict[str, Any] = {"name": self.name, "version": self.version}
        host = getattr(self.context, "_host", None)
        for status in host.status() if host is not None else ():
            if status.name == self.name:
                detail.update(
                    status="running" if status.running else "stopped",
                    failures=status.failures,
                    restarts=status.restarts,
                    dropped_events=status.dropped_events,
                )
        detail.setdefault("status", "unknown")
        return detail

    def state_summary(self) -> str:
        """One line for the console's actor list."""
        return f"plugin {self.name} {self.version}".rstrip()


class Plugin(PluginBase, Actor):
    """A plugin on the server's trio thread: hooks may be ``async def``.

    Never block in a hook (no ``time.sleep``, no blocking I/O): it would hold
    up every actor of the server. Use ``await trio.to_thread.run_sync(...)`` or
    a :class:`ThreadPlugin`. ``self.call_later`` timers work (their messages go
    to :meth:`on_other`).
    """

    kind = "plugin"
    mailbox_size = 1_000

    def __init__(self, context: PluginContext) -> None:
        super().__init__()
        self.context = context

    def on_receive(self, message: Any) -> Any:
        """Dispatch to the hooks (see :class:`PluginBase`)."""
        if type(message) is Intercept and trio.current_time() > message.deadline:
            return None  # the server stopped waiting: do not spend time on it
        return self._dispatch(message)


class ThreadPlugin(PluginBase, ThreadActor):
    """A plugin on its own OS thread (pykka's ``ThreadingActor``): hooks may block.

    Hooks must be synchronous. From its thread it may call trio actors with
    the plain pykka API and wait on :meth:`PluginContext.post` with
    ``.get(timeout=...)``. A thread costs memory: one per plugin is fine.
    """

    kind = "plugin"
    mailbox_size = 1_000

    def __init__(self, context: PluginContext) -> None:
        super().__init__()
        self.context = context

    def on_receive(self, message: Any) -> Any:
        """Dispatch to the hooks (see :class:`PluginBase`)."""
        return self._dispatch(message)
