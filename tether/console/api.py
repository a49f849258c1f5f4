"""The operator console's HTTP JSON API, served under ``/admin/`` (``docs/console.md``).

:class:`AdminApi` is created by the :class:`~tether.app.Server` and answers
every request whose path is ``/admin`` or starts with ``/admin/``. Access, in
this order:

1. ``admin_enabled = false``: 404 for everything.
2. A peer that is not on the loopback interface: 403, unless
   ``admin_allow_remote = true``.
3. ``Authorization: Bearer <token>``: missing or invalid 401, valid without the
   ``"admin": true`` claim 403. The token's ``sub`` names the operator.

Every POST is a control action: logged at WARNING on ``tether.admin`` (operator,
action, target, result) and kept in a bounded in-memory audit list
(``GET /admin/api/audit``).

Everything here runs on the trio thread, like the actors it reads (except
ThreadActors, whose ``inspect()`` is asked for with a timeout), so reading
actor state synchronously is race-free.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import ipaddress
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import msgpack
import trio

from tether import __version__
from tether.actors import (
    ActorDeadError,
    ActorRef,
    AskTimeout,
    Future,
    MailboxFull,
    StopReason,
    ThreadActor,
    start_trace,
    trace_snapshot,
    waiting_on,
)
from tether.actors.messages import CloseConnection
from tether.media.pool import MediaError, MediaUnavailable
from tether.plugins._messages import PluginPost
from tether.plugins.api import Posted, PostError
from tether.storage import StorageUnavailable
from tether.transport.auth import TokenError
from tether.transport.http import HttpRequest, HttpResponse
from tether.transport.protocol.codes import DisconnectCode, ErrorCode
from tether.transport.protocol.errors import LocalProtocolError
from tether.transport.protocol.events import MsgSend

if TYPE_CHECKING:
    from tether.actors.context import ServerContext
    from tether.app import Server

__all__ = [
    "AUDIT_CAPACITY",
    "SYSTEM_USER",
    "AdminApi",
    "is_loopback",
    "register_page",
]

log = logging.getLogger("tether.admin")

#: Audit entries kept (the oldest are dropped).
AUDIT_CAPACITY: Final = 1000
#: The user system messages are posted as.
SYSTEM_USER: Final = "system"
SYSTEM_USER_NAME: Final = "System"
#: Default and largest ``limit`` of ``GET /admin/api/actors``.
DEFAULT_LIMIT: Final = 200
MAX_LIMIT: Final = 100_000
#: ``rate`` is computed from ``handled`` deltas sampled at most this often.
RATE_WINDOW_S: Final = 1.0
#: How long a ThreadActor's ``inspect()``, a stop or a system post may take.
ASK_TIMEOUT_S: Final = 2.0
STOP_TIMEOUT_S: Final = 5.0
#: Bounds of a trace's duration (seconds).
TRACE_MIN_S: Final = 1
TRACE_MAX_S: Final = 300

_SORTS: Final = ("mailbox", "handled", "rate", "age", "failures")
#: The row field each sort orders by (descending).
_SORT_FIELDS: Final = {
    "mailbox": "mailbox",
    "handled": "handled",
    "rate": "rate",
    "age": "age_s",
    "failures": "failures",
}
#: The store's committer is listed with the actors under this kind and urn.
STORAGE_KIND: Final = "storage"
_JSON_HEADERS: Final = (("Cache-Control", "no-store"),)

#: Pages under ``/admin/`` served without a token (the web console's shell
#: page, which then calls the API with the operator's token); still subject to
#: ``admin_enabled`` and the loopback rule. Path → response factory.
_PAGES: dict[str, Callable[[], HttpResponse]] = {}


def register_page(path: str, page: Callable[[], HttpResponse]) -> None:
    """Serve ``page()`` at ``path`` (under ``/admin/``, not ``/admin/api/``) without a token.

    Raises:
        ValueError: the path is not under ``/admin/`` or is under ``/admin/api/``.
    """
    if not (path == "/admin" or path.startswith("/admin/")) or path.startswith("/admin/api"):
        raise ValueError(f"Expected a path under /admin/ outside /admin/api/, got {path!r}")
    _PAGES[path] = page


def _register_web_page() -> None:
    """Serve the web console's page (``tether.console.web``) at ``/admin/``."""
    from tether.console import web  # noqa: PLC0415 - the page is optional to this module

    for path in web.PATHS:
        register_page(path, web.response)


class _Problem(Exception):
    """An error answer: ``{"error": message, "code": status}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json(status: int, obj: Any) -> HttpResponse:
    body = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str).encode()
    return HttpResponse(
        status, body, content_type="application/json; charset=utf-8", headers=_JSON_HEADERS
    )


def _error(status: int, message: str) -> HttpResponse:
    return _json(status, {"error": message, "code": status})


def is_loopback(remote: str) -> bool:
    """Whether ``remote`` (``"ip:port"`` or ``"[ip]:port"``) is a loopback address."""
    host = remote.rsplit(":", 1)[0] if remote.count(":") == 1 or "]" in remote else remote
    host = host.strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _actor(ref: ActorRef[Any]) -> Any:
    """The actor behind ``ref`` (None once it stopped); trio thread only."""
    return ref._actor_weakref()


def _key(ref: ActorRef[Any], actor: Any) -> str | None:
    if actor is None:
        return None
    kind = ref.kind
    if kind == "user":
        return str(actor.user_id)
    if kind == "room":
        return str(actor.room_id)
    if kind == "connection":
        return str(actor.conn_id)
    if kind == "plugin":
        return str(actor.name)
    return None


class _Route:
    """A parsed ``/admin/api/...`` path: its segments after ``api``."""

    __slots__ = ("parts",)

    def __init__(self, path: str) -> None:
        rest = path[len("/admin/api") :].strip("/")
        self.parts = rest.split("/") if rest else []


class AdminApi:
    """Routing, access control, handlers and audit of ``/admin/`` (trio thread only).

    Args:
        server: the server it inspects and controls.
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self.audit: collections.deque[dict[str, Any]] = collections.deque(maxlen=AUDIT_CAPACITY)
        self._sampled_at: float | None = None
        self._samples: dict[str, int] = {}
        self._rates: dict[str, float] = {}
        _register_web_page()

    async def start(self, ctx: ServerContext) -> None:
        """At server start: store the ``system`` user that room messages are posted as."""
        try:
            await ctx.store.upsert_user(SYSTEM_USER, SYSTEM_USER_NAME)
        except StorageUnavailable as exc:  # the room's append retries it
            log.info("system user not stored yet: %r", exc)
        else:
            ctx.known_users.add(SYSTEM_USER)

    # -- entry ------------------------------------------------------------------
    async def handle(self, request: HttpRequest) -> HttpResponse:
        """Answer one ``/admin`` request (never raises)."""
        config = self.server.config
        if not config.admin_enabled:
            return _error(404, "not found")
        if not config.admin_allow_remote and not is_loopback(request.remote):
            return _error(403, "the console API is served to loopback peers only")
        page = _PAGES.get(request.path)
        if page is not None and request.method in ("GET", "HEAD"):
            return page()
        operator = self._operator(request)
        if isinstance(operator, HttpResponse):
            return operator
        ctx = self.server.ctx
        if ctx is None:
            return _error(503, "server starting")
        if not request.path.startswith("/admin/api/") and request.path != "/admin/api":
            return _error(404, "not found")
        route = _Route(request.path)
        try:
            if request.method == "GET":
                return _json(200, await self._get(ctx, request, route.parts))
            if request.method == "POST":
                return await self._post(ctx, request, route.parts, operator)
            raise _Problem(405, f"method {request.method} not allowed")
        except _Problem as problem:
            return _error(problem.status, problem.message)
        except Exception as exc:
            log.exception("admin API: %s %s failed", request.method, request.path)
            return _error(500, f"internal error: {type(exc).__name__}")

    def _operator(self, request: HttpRequest) -> str | HttpResponse:
        header = request.header("authorization")
        if header is None:
            return _error(401, "missing Authorization: Bearer <admin token>")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _error(401, "expected Authorization: Bearer <admin token>")
        ctx = self.server.ctx
        if ctx is None:
            return _error(503, "server starting")
        try:
            identity = ctx.verifier.verify(token.strip())
        except TokenError as exc:
            return _error(401, exc.reason)
        if not identity.admin:
            return _error(403, "not an admin token (mint one with `tether token --admin`)")
        return identity.user_id

    # -- GET --------------------------------------------------------------------
    async def _get(self, ctx: ServerContext, request: HttpRequest, parts: list[str]) -> Any:
        match parts:
            case ["summary"]:
                return self._summary(ctx)
            case ["actors"]:
                return self._actors(ctx, request)
            case ["tree"]:
                return self._tree(ctx)
            case ["audit"]:
                return {"entries": list(self.audit)}
            case ["media"]:
                return self._media(ctx)
            case ["actors", urn]:
                return await self._detail(ctx, urn)
            case ["actors", urn, "trace"]:
                snap = trace_snapshot(self._ref(ctx, urn))
                return {
                    "tracing": snap.tracing,
                    "until_s": round(snap.until_s, 3),
                    "messages": snap.messages,
                }
        raise _Problem(404, "not found")

    def _summary(self, ctx: ServerContext) -> dict[str, Any]:
        server = self.server
        kinds = dict(ctx.system.registry.kinds())
        if getattr(ctx.store, "statistics", None) is not None:
            kinds[STORAGE_KIND] = 1
        return {
            "server": __version__,
            "uptime_s": round(trio.current_time() - ctx.started_at, 3),
            "kinds": kinds,
            "connections": kinds.get("connection", 0),
            "users_online": len(ctx.online),
            "rooms_active": len(ctx.rooms),
            "calls_active": len(ctx.calls),
            "call_participants": ctx.counters.call_participants,
            "media_workers_live": 0 if ctx.media is None else ctx.media.live_workers,
            "draining": server.draining,
        }

    def _media(self, ctx: ServerContext) -> dict[str, Any]:
        """``GET /admin/media``: each media worker (pid, port, routers, restarts, last stats)."""
        pool = ctx.media
        return {"workers": [] if pool is None else pool.health()}

    def _sample_rates(self, refs: list[ActorRef[Any]]) -> None:
        """Recompute every actor's rate if the last sample is at least a window old."""
        now = time.monotonic()
        last = self._sampled_at
        if last is not None and now - last < RATE_WINDOW_S:
            return
        samples: dict[str, int] = {}
        rates: dict[str, float] = {}
        previous = self._samples
        for ref in refs:
            handled = ref._handled
            urn = ref.actor_urn
            samples[urn] = handled
            before = previous.get(urn)
            if last is not None and before is not None:
                rates[urn] = round((handled - before) / (now - last), 3)
        self._sampled_at = now
        self._samples = samples
        self._rates = rates

    def _row(self, ref: ActorRef[Any]) -> dict[str, Any]:
        stats = ref.statistics()
        actor = _actor(ref)
        return {
            "urn": stats.urn,
            "kind": stats.kind,
            "key": _key(ref, actor),
            "mailbox": stats.mailbox_depth,
            "mailbox_peak": stats.mailbox_peak,
            "mailbox_size": stats.mailbox_size,
            "handled": stats.handled,
            "rate": self._rates.get(stats.urn, 0.0),
            "failures": stats.failures,
            "last_failure": stats.last_failure,
            "age_s": round(stats.age_s, 3),
            "state": self._state(ref, actor),
            "parent": stats.parent_urn,
            "children": stats.children,
            "alive": stats.alive,
        }

    @staticmethod
    def _state(ref: ActorRef[Any], actor: Any) -> str:
        if actor is None or not ref.is_alive():
            reason = ref._stop_reason
            return f"stopping ({reason.value})" if reason is not None else "stopping"
        busy = waiting_on(ref)
        summary = getattr(actor, "state_summary", None)
        text = "running"
        if summary is not None:
            try:
                text = str(summary())
            except Exception as exc:
                text = f"state unavailable: {type(exc).__name__}"
        if busy is not None:
            text += f"; busy with {busy.message} for {busy.since_s:.1f}s"
        return text

    def _actors(self, ctx: ServerContext, request: HttpRequest) -> dict[str, Any]:
        query = request.query
        kind = (query.get("kind") or [""])[0]
        sort = (query.get("sort") or ["mailbox"])[0]
        if sort not in _SORTS:
            raise _Problem(400, f"sort must be one of {', '.join(_SORTS)}")
        raw_limit = (query.get("limit") or [str(DEFAULT_LIMIT)])[0]
        try:
            limit = int(raw_limit)
        except ValueError:
            raise _Problem(400, "limit must be an integer") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise _Problem(400, f"limit must be 1..{MAX_LIMIT}")
        registry = ctx.system.registry
        everyone = list(registry)
        self._sample_rates(everyone)
        refs = registry.by_kind(kind) if kind else everyone
        rates = self._rates
        keys: dict[str, Callable[[ActorRef[Any]], float]] = {
            "mailbox": lambda r: r._mailbox_depth(),
            "handled": lambda r: r._handled,
            "rate": lambda r: rates.get(r.actor_urn, 0.0),
            "age": lambda r: -r._started_at,
            "failures": lambda r: r._failures,
        }
        refs = sorted(refs, key=keys[sort], reverse=True)
        rows = [self._row(ref) for ref in refs[:limit]]
        total = len(refs)
        storage = self._storage_row(ctx) if kind in ("", STORAGE_KIND) else None
        if storage is not None:
            # Storage is a service, not an actor, but operators look for it in
            # the same table: it takes its place in the chosen order.
            field = _SORT_FIELDS[sort]
            at = next((i for i, r in enumerate(rows) if r[field] < storage[field]), len(rows))
            rows.insert(at, storage)
            rows = rows[:limit]
            total += 1
        return {"actors": rows, "total": total}

    def _storage_row(self, ctx: ServerContext) -> dict[str, Any] | None:
        """The store's committer as a table row (None for stores without statistics)."""
        statistics = getattr(ctx.store, "statistics", None)
        if statistics is None:
            return None
        stats = statistics()
        reason = getattr(ctx.store, "unavailable_reason", None)
        state = (
            f"unavailable: {reason}"
            if reason
            else f"ok, commit {stats.commit_latency_ms_ewma:.1f} ms avg, "
            f"last batch {stats.last_batch_size}"
        )
        return {
            "urn": STORAGE_KIND,
            "kind": STORAGE_KIND,
            "key": None,
            "mailbox": stats.queue_depth,
            "mailbox_peak": stats.max_batch_size,
            "mailbox_size": None,
            "handled": stats.ops_committed,
            "rate": 0.0,
            "failures": stats.failures,
            "last_failure": reason,
            "age_s": round(trio.current_time() - ctx.started_at, 3),
            "state": state[:200],
            "parent": None,
            "children": 0,
            "alive": True,
        }

    def _tree(self, ctx: ServerContext) -> dict[str, Any]:
        registry = ctx.system.registry
        nodes: dict[str, dict[str, Any]] = {}
        for ref in registry:
            nodes[ref.actor_urn] = {
                "urn": ref.actor_urn,
                "kind": ref.kind,
                "key": _key(ref, _actor(ref)),
                "children": [],
            }
        roots: list[dict[str, Any]] = []
        for ref in registry:
            parent = ref.parent
            node = nodes[ref.actor_urn]
            if parent is not None and parent.actor_urn in nodes:
                nodes[parent.actor_urn]["children"].append(node)
            else:
                roots.append(node)
        return {"roots": roots}

    def _ref(self, ctx: ServerContext, urn: str) -> ActorRef[Any]:
        ref = ctx.system.registry.get(urn)
        if ref is None:
            raise _Problem(404, f"no actor {urn}")
        return ref

    async def _detail(self, ctx: ServerContext, urn: str) -> dict[str, Any]:
        if urn == STORAGE_KIND:
            row = self._storage_row(ctx)
            if row is None:
                raise _Problem(404, "this store keeps no statistics")
            statistics = getattr(ctx.store, "statistics")  # noqa: B009 - checked above
            return {
                "actor": row,
                "detail": dataclasses.asdict(statistics()),
                "waiting_on": None,
            }
        ref = self._ref(ctx, urn)
        self._sample_rates(list(ctx.system.registry))
        row = self._row(ref)
        busy = waiting_on(ref)
        detail = await self._inspect(ref)
        if ref.kind == "call":
            detail["media"] = await self._router_stats(ctx, detail.get("router"))
        return {
            "actor": row,
            "detail": detail,
            "waiting_on": None
            if busy is None
            else {
                "message": busy.message,
                "since_s": round(busy.since_s, 3),
                "awaiting": busy.awaiting,
            },
        }

    @staticmethod
    async def _router_stats(ctx: ServerContext, router: Any) -> dict[str, Any]:
        """A call's live media figures from its worker (tracks, layers, bitrates)."""
        pool = ctx.media
        if pool is None or not isinstance(router, str):
            return {"error": "no router"}
        try:
            with trio.fail_after(ASK_TIMEOUT_S):
                stats = await pool.call(router, "router.stats", {})
        except (MediaError, MediaUnavailable, trio.TooSlowError) as exc:
            return {"error": f"router stats unavailable: {exc!r}"[:300]}
        return dict(stats) if isinstance(stats, dict) else {"value": repr(stats)[:300]}

    @staticmethod
    async def _inspect(ref: ActorRef[Any]) -> dict[str, Any]:
        actor = _actor(ref)
        if actor is None:
            return {}
        inspect = getattr(actor, "inspect", None)
        if inspect is None:
            return {}
        try:
            if isinstance(actor, ThreadActor):
                # On its own thread: ask it, so the read cannot race its handlers.
                result: Any = None
                with trio.move_on_after(ASK_TIMEOUT_S) as scope:
                    result = await ref.proxy().inspect()
                if scope.cancelled_caught:
                    return {"error": f"no answer within {ASK_TIMEOUT_S}s (busy)"}
            else:
                # Trio actor: this handler runs on the same thread, between its messages.
                result = inspect()
        except (ActorDeadError, AskTimeout):
            return {"error": "actor stopped"}
        except Exception as exc:
            return {"error": f"inspect() raised {exc!r}"[:300]}
        return dict(result) if isinstance(result, dict) else {"value": repr(result)[:300]}

    # -- POST -------------------------------------------------------------------
    async def _post(
        self, ctx: ServerContext, request: HttpRequest, parts: list[str], operator: str
    ) -> HttpResponse:
        body = _body(request)
        action: str
        target: str
        run: Callable[[], Awaitable[tuple[int, dict[str, Any]]]]
        match parts:
            case ["actors", urn, "trace"]:
                action, target = "trace", urn
                run = lambda: self._trace(ctx, urn, body)  # noqa: E731
            case ["actors", urn, "stop"]:
                action, target = "stop", urn
                run = lambda: self._stop(ctx, urn)  # noqa: E731
            case ["actors", urn, "restart"]:
                action, target = "restart", urn
                run = lambda: self._restart(ctx, urn)  # noqa: E731
            case ["connections", conn_id, "disconnect"]:
                action, target = "disconnect", f"connection {conn_id}"
                run = lambda: self._disconnect(ctx, conn_id, body)  # noqa: E731
            case ["drain"]:
                action, target = "drain", "server"
                run = self._drain
            case ["rooms", room_id, "message"]:
                action, target = "message", f"room {room_id}"
                run = lambda: self._message(ctx, room_id, body)  # noqa: E731
            case _:
                raise _Problem(404, "not found")
        try:
            status, answer = await run()
        except _Problem as problem:
            self._audit(operator, action, target, f"{problem.status} {problem.message}")
            raise
        self._audit(operator, action, target, str(answer.get("result", "ok")))
        return _json(status, answer)

    def _audit(self, operator: str, action: str, target: str, result: str) -> None:
        entry = {
            "ts": time.time(),
            "operator": operator,
            "action": action,
            "target": target,
            "result": result,
        }
        self.audit.append(entry)
        log.warning("admin %s: %s %s: %s", operator, action, target, result)

    async def _trace(
        self, ctx: ServerContext, urn: str, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        seconds = body.get("seconds")
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not TRACE_MIN_S <= seconds <= TRACE_MAX_S
        ):
            raise _Problem(400, f"seconds must be a number {TRACE_MIN_S}..{TRACE_MAX_S}")
        ref = self._ref(ctx, urn)
        try:
            start_trace(ref, float(seconds))
        except ActorDeadError:
            raise _Problem(409, f"{urn} is stopping") from None
        except TypeError as exc:
            raise _Problem(409, str(exc)) from None
        return 200, {"result": f"tracing for {seconds}s", "tracing": True, "until_s": seconds}

    async def _stop_ref(self, ref: ActorRef[Any], reason: StopReason) -> bool:
        """Stop ``ref`` and wait (bounded); True if it has stopped."""
        try:
            future = ref.stop(reason)
        except ActorDeadError:
            return True
        with trio.move_on_after(STOP_TIMEOUT_S):
            with contextlib.suppress(ActorDeadError):
                await future
            return True
        return False

    async def _stop(self, ctx: ServerContext, urn: str) -> tuple[int, dict[str, Any]]:
        ref = self._ref(ctx, urn)
        stopped = await self._stop_ref(ref, StopReason.KICKED)
        result = "stopped" if stopped else "stopping"
        return (200 if stopped else 202), {"result": result, "urn": urn, "stopped": stopped}

    async def _restart(self, ctx: ServerContext, urn: str) -> tuple[int, dict[str, Any]]:
        ref = self._ref(ctx, urn)
        kind = ref.kind
        if kind in ("user", "room"):
            key = _key(ref, _actor(ref))
            stopped = await self._stop_ref(ref, StopReason.RESTART)
            return 200, {
                "result": "stopped; restarts on demand from storage",
                "urn": urn,
                "key": key,
                "stopped": stopped,
                "restarted": False,
            }
        if kind == "plugin" and ctx.plugins is not None and ctx.plugins.supervisor is not None:
            name = str(_actor(ref).name)
            await self._stop_ref(ref, StopReason.RESTART)
            from tether.plugins.host import _Restart  # noqa: PLC0415 - the supervisor's message

            # Asked after the stop: the supervisor handles the child's stop first.
            try:
                await ctx.plugins.supervisor.ask(_Restart(name))
            except ActorDeadError:
                raise _Problem(409, "the plugin supervisor is stopping") from None
            new = ctx.plugins.ref(name)
            return 200, {
                "result": "restarted",
                "urn": urn,
                "key": name,
                "restarted": new is not None,
                "new_urn": new.actor_urn if new is not None else None,
            }
        raise _Problem(409, f"actors of kind {kind!r} cannot be restarted")

    async def _disconnect(
        self, ctx: ServerContext, conn_id: str, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        reason = body.get("reason", "kicked by an operator")
        if not isinstance(reason, str):
            raise _Problem(400, "reason must be a string")
        for ref in ctx.system.registry.by_kind("connection"):
            actor = _actor(ref)
            if actor is not None and str(actor.conn_id) == conn_id:
                try:
                    ref.tell(CloseConnection(DisconnectCode.KICKED, reason[:100]))
                except (ActorDeadError, MailboxFull):
                    raise _Problem(409, f"connection {conn_id} is closing or busy") from None
                return 200, {"result": "closing with 3504", "urn": ref.actor_urn, "code": 3504}
        raise _Problem(404, f"no connection {conn_id}")

    async def _drain(self) -> tuple[int, dict[str, Any]]:
        self.server.request_shutdown()
        return 202, {"result": "draining", "draining": True}

    async def _message(
        self, ctx: ServerContext, room_id: str, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        if "body" not in body:
            raise _Problem(400, 'expected {"body": ...}')
        content = body["body"]
        cid = f"admin-{secrets.token_hex(8)}"
        try:
            MsgSend(ref=0, room=room_id, cid=cid, body=content)
            size = len(msgpack.packb(content))
        except (LocalProtocolError, TypeError, ValueError, OverflowError) as exc:
            raise _Problem(400, f"invalid message: {exc}") from None
        if size > ctx.protocol_limits.max_body_bytes:
            raise _Problem(413, f"body of {size} bytes is too large")
        reply: Future[Posted] = Future()
        post = PluginPost(SYSTEM_USER, SYSTEM_USER_NAME, content, cid, reply)
        try:
            ctx.rooms.get_or_spawn(room_id).tell(post)
        except (MailboxFull, ActorDeadError):
            raise _Problem(429, "room busy, retry") from None
        posted: Posted | None = None
        with trio.move_on_after(STOP_TIMEOUT_S):
            try:
                posted = await reply
            except PostError as exc:
                raise _Problem(_post_status(exc.code), exc.reason) from None
        if posted is None:
            raise _Problem(504, "the room did not answer in time")
        return 200, {"result": f"posted seq {posted.seq}", "room": room_id, "seq": posted.seq}


def _post_status(code: int) -> int:
    return {
        int(ErrorCode.ROOM_NOT_FOUND): 404,
        int(ErrorCode.RATE_LIMITED): 429,
        int(ErrorCode.UNAVAILABLE): 503,
        int(ErrorCode.TOO_LARGE): 413,
        int(ErrorCode.BAD_REQUEST): 400,
    }.get(code, 500)


def _body(request: HttpRequest) -> dict[str, Any]:
    if not request.body.strip():
        return {}
    try:
        value = json.loads(request.body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _Problem(400, f"invalid JSON body: {exc}") from None
    if not isinstance(value, dict):
        raise _Problem(400, "expected a JSON object")
    return value
