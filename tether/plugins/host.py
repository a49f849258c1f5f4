"""Loading, supervising and feeding plugins (see ``docs/plugins.md``).

* :func:`load_plugins` finds the plugin classes the configuration asks for
  (``module:Class`` paths and entry points of the ``tether.plugins`` group)
  and checks them: a missing, misdeclared, misconfigured or incompatible
  plugin raises :class:`~tether.plugins.api.PluginError` before the server
  listens.
* :class:`PluginHost` is what the server's actors call (``ctx.plugins``, None
  when no plugin is loaded, so a server without plugins pays nothing). It
  fans events out with ``tell`` (a full or dead plugin loses the event, which
  is counted: a room never waits for a plugin), asks interceptors within
  ``plugin_intercept_timeout``, routes slash commands and carries posts to rooms.
* :class:`PluginSupervisor` starts each plugin as its child and restarts one
  that fails, after an exponential backoff; failures are counted in
  ``ctx.counters.plugin_failures``.

Everything here runs on the trio thread, except :class:`PluginContext`'s
calls, which hop to it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from importlib import import_module, metadata
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, cast

import msgpack
import pykka
import trio

from tether.actors import (
    Actor,
    ActorDeadError,
    ActorRef,
    Future,
    MailboxFull,
    StopReason,
    wait,
)
from tether.config import ServerConfig
from tether.plugins._messages import PluginPost
from tether.plugins.api import (
    HOOKS,
    PLUGIN_API_VERSION,
    Allow,
    Command,
    Intercept,
    MemberAction,
    MembershipChanged,
    MessageDeleted,
    MessageEdited,
    MessagePosted,
    Modify,
    Plugin,
    PluginContext,
    PluginError,
    Posted,
    PostError,
    PresenceChanged,
    Reject,
    ThreadPlugin,
)
from tether.transport.protocol.codes import MAX_ERROR_REASON_BYTES, ErrorCode, fit_reason
from tether.transport.protocol.errors import LocalProtocolError
from tether.transport.protocol.events import MsgSend

if TYPE_CHECKING:
    from tether.actors.context import ServerContext
    from tether.actors.presence import PresenceSnapshot
    from tether.transport.protocol.events import Message

log = logging.getLogger("tether.plugins")

#: The entry point group plugins are published under.
ENTRY_POINT_GROUP: Final = "tether.plugins"
#: The first restart of a failed plugin waits this long (seconds); each
#: further consecutive failure doubles it, up to :data:`RESTART_BACKOFF_MAX`.
RESTART_BACKOFF: Final = 1.0
RESTART_BACKOFF_MAX: Final = 60.0
#: A plugin that ran this long before failing starts over from :data:`RESTART_BACKOFF`.
STABLE_AFTER: Final = 60.0

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_COMMAND = re.compile(r"[a-z0-9_-]{1,32}")
_SLASH = re.compile(r"/([A-Za-z0-9_-]{1,32})(?:\s+(.*))?", re.S)


# -- loading ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PluginSpec:
    """A plugin class that passed the checks, with its settings."""

    cls: type[Plugin] | type[ThreadPlugin]
    source: str
    settings: Mapping[str, Any]

    @property
    def name(self) -> str:
        """The plugin's declared name."""
        return self.cls.name


def load_plugins(config: ServerConfig) -> list[PluginSpec]:
    """The plugins ``config`` enables, in order, checked.

    Each entry of ``config.plugins`` is a ``module:Class`` path or the name of
    an entry point in the ``tether.plugins`` group; with
    ``config.plugin_autoload`` every such entry point is loaded too (after the
    listed ones, by name).

    Raises:
        PluginError: a plugin cannot be imported, is not a plugin class,
            declares no valid name or version, needs another plugin API
            version, rejects its settings, or shares its name with another;
            or ``plugin_settings`` names a plugin that is not loaded.
    """
    points = {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    wanted: list[tuple[str, Any]] = []
    for entry in config.plugins:
        if ":" in entry:
            wanted.append((entry, _import(entry)))
        elif entry in points:
            wanted.append(_from_entry_point(points[entry]))
        else:
            installed = ", ".join(sorted(points)) or "none"
            raise PluginError(
                f"plugin {entry!r}: not a 'module:Class' path, and no entry point of that "
                f"name in group {ENTRY_POINT_GROUP!r} (installed: {installed})"
            )
    if config.plugin_autoload:
        wanted.extend(_from_entry_point(points[name]) for name in sorted(points))
    specs: list[PluginSpec] = []
    by_name: dict[str, PluginSpec] = {}
    for source, cls in wanted:
        _check_class(source, cls)
        known = by_name.get(cls.name)
        if known is not None:
            if known.cls is cls:
                continue  # listed and autoloaded: once
            raise PluginError(
                f"plugin name {cls.name!r} is declared by both {known.source} and {source}"
            )
        settings = config.plugin_settings.get(cls.name, {})
        if not isinstance(settings, Mapping):
            raise PluginError(f"plugin_settings.{cls.name} must be a table")
        frozen = MappingProxyType(dict(settings))
        try:
            cls.validate_settings(frozen)
        except (ValueError, TypeError) as exc:
            raise PluginError(f"plugin {cls.name!r}: invalid settings: {exc}") from exc
        spec = PluginSpec(cls, source, frozen)
        by_name[cls.name] = spec
        specs.append(spec)
    unknown = sorted(set(config.plugin_settings) - set(by_name))
    if unknown:
        raise PluginError(f"plugin_settings.{unknown[0]}: no plugin named {unknown[0]!r} is loaded")
    return specs


def _import(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    try:
        module = import_module(module_name)
    except Exception as exc:
        raise PluginError(f"plugin {path!r}: cannot import {module_name!r}: {exc!r}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PluginError(f"plugin {path!r}: {module_name!r} has no {attr!r}") from None
    return obj


def _from_entry_point(ep: metadata.EntryPoint) -> tuple[str, Any]:
    dist = getattr(ep, "dist", None)
    where = f" of {dist.name} {dist.version}" if dist is not None else ""
    source = f"entry point {ep.name!r}{where} ({ep.value})"
    try:
        return source, ep.load()
    except Exception as exc:
        raise PluginError(f"plugin {source}: cannot load: {exc!r}") from exc


def _check_class(source: str, cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Plugin | ThreadPlugin)):
        raise PluginError(
            f"plugin {source}: {cls!r} is not a plugin class "
            "(subclass tether.plugins.Plugin or tether.plugins.ThreadPlugin)"
        )
    name = cls.name
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PluginError(
            f"plugin {source}: name must be 1..64 characters of a-z, 0-9, '_', '.', '-' "
            f"(starting with a letter or digit), got {name!r}"
        )
    if not isinstance(cls.version, str) or not cls.version:
        raise PluginError(f"plugin {name!r} ({source}): declare a version (a str)")
    api = cls.api_version
    if type(api) is not int or api != PLUGIN_API_VERSION:
        raise PluginError(
            f"plugin {name!r} {cls.version} ({source}) needs plugin API version {api!r}, "
            f"but this server provides plugin API version {PLUGIN_API_VERSION}: "
            "install a release of the plugin made for this server"
        )


def parse_command(body: Any) -> tuple[str, str] | None:
    """``(name, args)`` of a slash command in a message body, or None.

    The text is the body itself when it is a str, or its ``"text"`` when it is
    a map; a command is ``/name`` at its very start, then whitespace and the
    arguments. Names are compared in lower case.
    """
    text = body.get("text") if isinstance(body, dict) else body
    if not isinstance(text, str) or not text.startswith("/"):
        return None
    match = _SLASH.fullmatch(text)
    if match is None:
        return None
    return match.group(1).lower(), (match.group(2) or "").strip()


# -- the host -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Unavailable:
    """No verdict (timeout, failure) under the fail-closed policy."""

    reason: str


#: What :meth:`PluginHost.intercept` decides.
Decision = Allow | Reject | Modify | Unavailable


@dataclass(frozen=True, slots=True)
class PluginStatus:
    """One plugin, as :meth:`PluginHost.status` reports it."""

    name: str
    version: str
    running: bool
    failures: int
    restarts: int
    dropped_events: int
    next_restart_at: float | None


class _Slot:
    """One loaded plugin: its class, context, live ref and counts (trio thread)."""

    __slots__ = (
        "consecutive",
        "context",
        "dropped",
        "failures",
        "next_restart_at",
        "ref",
        "restarts",
        "spec",
        "started_at",
    )

    def __init__(self, spec: PluginSpec, context: PluginContext) -> None:
        self.spec = spec
        self.context = context
        self.ref: ActorRef[Any] | None = None
        self.failures = 0
        self.consecutive = 0
        self.restarts = 0
        self.dropped = 0
        self.started_at = 0.0
        self.next_restart_at: float | None = None


class PluginHost:
    """The server's side of the plugin API (``ctx.plugins``; trio thread only).

    Args:
        ctx: the server context.
        specs: the plugins, from :func:`load_plugins`, in order (interceptors
            are asked in this order).

    Attributes:
        intercepting: whether any plugin intercepts messages (rooms check it
            before asking, so messages cost nothing extra otherwise).
        dropped_events: events lost because a plugin's mailbox was full or it
            was not running.
        intercept_timeouts: messages whose interceptors did not answer in time.
        intercept_errors: interceptor failures (an exception, not running,
            mailbox full, an invalid answer).
    """

    def __init__(self, ctx: ServerContext, specs: Iterable[PluginSpec]) -> None:
        self.ctx = ctx
        self._slots: dict[str, _Slot] = {}
        for spec in specs:
            name = spec.name
            context = PluginContext(
                self, name, spec.settings, f"bot:{name}", spec.cls.bot_name or name
            )
            self._slots[name] = _Slot(spec, context)
        slots = list(self._slots.values())
        self._subscribers: dict[type, list[_Slot]] = {
            event: [s for s in slots if s.spec.cls.handles(hook)] for event, hook in HOOKS.items()
        }
        self._interceptors = [s for s in slots if s.spec.cls.handles("intercept")]
        self.intercepting = bool(self._interceptors)
        self._commands: dict[str, tuple[_Slot, str]] = {}
        self._bots = {s.context.bot_user for s in slots}
        self.supervisor: ActorRef[Any] | None = None
        self.dropped_events = 0
        self.intercept_timeouts = 0
        self.intercept_errors = 0

    # -- life ---------------------------------------------------------------------
    async def start(self) -> None:
        """Create the bot users, then start the supervisor (which starts the plugins)."""
        store = self.ctx.store
        for slot in self._slots.values():
            context = slot.context
            try:
                await store.upsert_user(context.bot_user, context.bot_name)
            except Exception as exc:  # retried at its first post
                log.warning("plugin %s: bot user not stored yet: %r", context.name, exc)
            else:
                self.ctx.known_users.add(context.bot_user)
        self.supervisor = self.ctx.system.spawn(PluginSupervisor, self)

    @property
    def names(self) -> list[str]:
        """The loaded plugins' names, in order."""
        return list(self._slots)

    def ref(self, name: str) -> ActorRef[Any] | None:
        """The running actor of plugin ``name`` (None while it waits for a restart)."""
        slot = self._slots.get(name)
        return None if slot is None else slot.ref

    def context(self, name: str) -> PluginContext:
        """The :class:`PluginContext` of plugin ``name`` (the same across restarts).

        Raises:
            KeyError: no plugin of that name is loaded.
        """
        return self._slots[name].context

    def status(self) -> list[PluginStatus]:
        """Every plugin's state and counts, in load order."""
        return [
            PluginStatus(
                name=name,
                version=slot.spec.cls.version,
                running=slot.ref is not None and slot.ref.is_alive(),
                failures=slot.failures,
                restarts=slot.restarts,
                dropped_events=slot.dropped,
                next_restart_at=slot.next_restart_at,
            )
            for name, slot in self._slots.items()
        ]

    def commands(self) -> dict[str, tuple[str, str]]:
        """Registered slash commands: name → (plugin, help)."""
        return {name: (slot.spec.name, text) for name, (slot, text) in self._commands.items()}

    def register_command(self, plugin: str, name: str, help_text: str) -> None:
        """See :meth:`PluginContext.register_command`."""
        if not isinstance(name, str) or not _COMMAND.fullmatch(name):
            raise ValueError(
                f"command name must be 1..32 characters of a-z, 0-9, '_', '-', got {name!r}"
            )
        slot = self._slots[plugin]
        current = self._commands.get(name)
        if current is not None and current[0] is not slot:
            raise ValueError(f"command /{name} is already registered by {current[0].spec.name!r}")
        # One dict store: safe from a ThreadPlugin's thread too (rooms only read it).
        self._commands[name] = (slot, str(help_text))

    # -- events ---------------------------------------------------------------------
    def _tell(self, slot: _Slot, message: Any) -> None:
        ref = slot.ref
        try:
            if ref is None:
                raise ActorDeadError(f"plugin {slot.spec.name} is not running")
            ref.tell(message)
        except (MailboxFull, ActorDeadError) as exc:
            slot.dropped += 1
            self.dropped_events += 1
            if slot.dropped & (slot.dropped - 1) == 0:  # 1, 2, 4, 8...: bounded logging
                log.warning(
                    "plugin %s: %d events dropped so far (%s)",
                    slot.spec.name,
                    slot.dropped,
                    type(exc).__name__,
                )

    def message_committed(self, message: Message) -> None:
        """A message was stored (called by its room, in seq order, once per message)."""
        by_plugin = message.sender in self._bots
        subscribers = self._subscribers[MessagePosted]
        if subscribers:
            event = MessagePosted(
                room=message.room,
                seq=message.seq,
                cid=message.cid,
                sender=message.sender,
                body=message.body,
                ts=message.ts,
                by_plugin=by_plugin,
            )
            for slot in subscribers:
                self._tell(slot, event)
        if self._commands and not by_plugin:
            parsed = parse_command(message.body)
            if parsed is None:
                return
            target = self._commands.get(parsed[0])
            if target is not None:
                command = Command(
                    name=parsed[0],
                    args=parsed[1],
                    room=message.room,
                    sender=message.sender,
                    seq=message.seq,
                    cid=message.cid,
                    body=message.body,
                )
                self._tell(target[0], command)

    def message_edited(self, room: str, seq: int, sender: str, body: Any, edited_at: int) -> None:
        """A message was edited."""
        subscribers = self._subscribers[MessageEdited]
        if subscribers:
            event = MessageEdited(room, seq, sender, body, edited_at)
            for slot in subscribers:
                self._tell(slot, event)

    def message_deleted(self, room: str, seq: int, sender: str) -> None:
        """A message was deleted."""
        subscribers = self._subscribers[MessageDeleted]
        if subscribers:
            event = MessageDeleted(room, seq, sender)
            for slot in subscribers:
                self._tell(slot, event)

    def membership_changed(self, room: str, changes: Iterable[tuple[str, str]], by: str) -> None:
        """Users joined, left, were invited or removed.

        Args:
            room: the room.
            changes: (user, action), the action a :data:`~tether.plugins.api.MemberAction`.
            by: who made the change.
        """
        subscribers = self._subscribers[MembershipChanged]
        if subscribers:
            for user, action in changes:
                event = MembershipChanged(room, user, cast("MemberAction", action), by)
                for slot in subscribers:
                    self._tell(slot, event)

    def presence_changed(self, snapshot: PresenceSnapshot) -> None:
        """A user's published presence changed."""
        subscribers = self._subscribers[PresenceChanged]
        if subscribers:
            event = PresenceChanged(
                snapshot.user, str(snapshot.status), snapshot.devices, snapshot.last_seen_ms
            )
            for slot in subscribers:
                self._tell(slot, event)

    # -- interception -------------------------------------------------------------
    async def intercept(self, request: Intercept) -> Decision:
        """Ask every interceptor, in order, within ``plugin_intercept_timeout`` in all.

        A :class:`Modify` passes the new body to the next plugin; the first
        :class:`Reject` ends it. An interceptor that fails (raises, is not
        running, has a full mailbox, answers something else or an invalid
        body) or the deadline passing is skipped under ``plugin_fail_policy =
        "open"`` (what was decided so far stands) and makes the answer
        :class:`Unavailable` under ``"closed"``. Never raises.
        """
        config = self.ctx.config
        closed = config.plugin_fail_policy == "closed"
        deadline = trio.current_time() + config.plugin_intercept_timeout
        body = request.body
        modified = False
        with trio.move_on_at(deadline):
            for slot in self._interceptors:
                problem, answer = await self._ask(
                    slot, replace(request, body=body, deadline=deadline)
                )
                if problem is None:
                    if answer is None or isinstance(answer, Allow):
                        continue
                    if isinstance(answer, Reject):
                        reason = fit_reason(str(answer.reason), MAX_ERROR_REASON_BYTES)
                        log.debug("plugin %s rejected a message: %s", slot.spec.name, reason)
                        return Reject(reason)
                    if isinstance(answer, Modify):
                        problem = _body_problem(
                            answer.body, self.ctx.protocol_limits.max_body_bytes
                        )
                        if problem is None:
                            body = answer.body
                            modified = True
                            continue
                    else:
                        problem = f"answered {type(answer).__name__}, not a verdict"
                self.intercept_errors += 1
                log.warning("plugin %s: intercept failed: %s", slot.spec.name, problem)
                if closed:
                    return Unavailable(f"message filter {slot.spec.name} failed")
            return Modify(body) if modified else Allow()
        self.intercept_timeouts += 1
        log.warning(
            "message interceptors did not answer within %.3gs", config.plugin_intercept_timeout
        )
        if closed:
            return Unavailable("message filter did not answer in time")
        return Modify(body) if modified else Allow()

    async def _ask(self, slot: _Slot, request: Intercept) -> tuple[str | None, Any]:
        ref = slot.ref
        if ref is None:
            return "not running", None
        try:
            answer = await ref.ask(request)
            if isinstance(answer, pykka.Future):  # the plugin answers later
                answer = await wait(answer)
        except MailboxFull:
            return "mailbox full", None
        except ActorDeadError:
            return "not running", None
        except Exception as exc:
            return f"raised {exc!r}", None
        return None, answer

    # -- posting --------------------------------------------------------------------
    def post(
        self, context: PluginContext, room: str, body: Any, cid: str, future: Future[Posted]
    ) -> None:
        """Carry a bot post to its room (see :meth:`PluginContext.post`)."""
        try:
            MsgSend(ref=0, room=room, cid=cid, body=body)
        except LocalProtocolError as exc:
            _fail(future, PostError(int(ErrorCode.BAD_REQUEST), str(exc)))
            return
        problem = _body_problem(body, self.ctx.protocol_limits.max_body_bytes)
        if problem is not None:
            _fail(future, PostError(int(ErrorCode.TOO_LARGE), problem))
            return
        message = PluginPost(context.bot_user, context.bot_name, body, cid, future)
        try:
            self.ctx.rooms.get_or_spawn(room).tell(message)
        except (MailboxFull, ActorDeadError):
            _fail(future, PostError(int(ErrorCode.RATE_LIMITED), "room busy, retry"))
        except RuntimeError as exc:  # the actor system is closing
            _fail(future, PostError(int(ErrorCode.UNAVAILABLE), str(exc)))


def _fail(future: Future[Any], exc: BaseException) -> None:
    future.set_exception((type(exc), exc, None))


def _body_problem(body: Any, max_bytes: int) -> str | None:
    """Why ``body`` cannot be a message body, or None."""
    try:
        MsgSend(ref=0, room="r", cid="c", body=body)
        size = len(msgpack.packb(body))
    except (LocalProtocolError, TypeError, ValueError, OverflowError) as exc:
        return f"invalid body: {exc}"
    if size > max_bytes:
        return f"body of {size} bytes, over the {max_bytes} allowed"
    return None


# -- supervision ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Restart:
    name: str


class PluginSupervisor(Actor):
    """Starts every plugin as a child; restarts a failed one with exponential backoff.

    A plugin that stops by itself (not a failure) stays stopped. Restarts
    wait :data:`RESTART_BACKOFF` seconds, doubling per consecutive failure up
    to :data:`RESTART_BACKOFF_MAX`; a plugin that ran :data:`STABLE_AFTER`
    seconds before failing starts over from the first delay.
    """

    kind = "plugin-supervisor"

    def __init__(self, host: PluginHost) -> None:
        super().__init__()
        self.host = host

    def on_start(self) -> None:
        """Start every plugin."""
        for slot in self.host._slots.values():
            self._start(slot)

    def on_receive(self, message: Any) -> Any:
        """``_Restart`` timers."""
        if isinstance(message, _Restart):
            slot = self.host._slots[message.name]
            slot.next_restart_at = None
            slot.restarts += 1
            log.info("plugin %s: restarting (restart %d)", message.name, slot.restarts)
            self._start(slot)
            return None
        raise TypeError(f"Expected a supervisor message, got {message!r}")

    def on_child_stopped(
        self, child: ActorRef[Any], reason: StopReason, exc: BaseException | None
    ) -> None:
        """Restart a failed plugin later; forget one that stopped by itself."""
        for slot in self.host._slots.values():
            if slot.ref == child:
                slot.ref = None
                if reason is StopReason.FAILURE:
                    self._failed(slot, exc)
                elif self.ref.is_alive():
                    log.info("plugin %s stopped (%s); not restarted", slot.spec.name, reason)
                return

    def _start(self, slot: _Slot) -> None:
        slot.started_at = trio.current_time()
        try:
            slot.ref = self.start_child(slot.spec.cls, slot.context)
        except ActorDeadError:
            return  # the server is stopping
        except Exception as exc:
            log.exception("plugin %s failed to start", slot.spec.name)
            self._failed(slot, exc)

    def _failed(self, slot: _Slot, exc: BaseException | None) -> None:
        self.host.ctx.counters.plugin_failures += 1
        slot.failures += 1
        now = trio.current_time()
        if now - slot.started_at >= STABLE_AFTER:
            slot.consecutive = 0
        slot.consecutive += 1
        delay = min(RESTART_BACKOFF * 2 ** (slot.consecutive - 1), RESTART_BACKOFF_MAX)
        if not self.ref.is_alive():
            return
        slot.next_restart_at = now + delay
        log.warning("plugin %s failed (%r); restarting in %.3gs", slot.spec.name, exc, delay)
        self.call_later(delay, _Restart(slot.spec.name))


__all__ = [
    "ENTRY_POINT_GROUP",
    "RESTART_BACKOFF",
    "RESTART_BACKOFF_MAX",
    "STABLE_AFTER",
    "Decision",
    "PluginHost",
    "PluginSpec",
    "PluginStatus",
    "PluginSupervisor",
    "load_plugins",
    "parse_command",
]
