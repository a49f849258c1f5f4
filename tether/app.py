"""The server: wires storage, the actor system and the transport together.

``Server(config).run()`` is what ``tether serve`` runs. Structure (one trio
nursery tree, so shutdown is structured and nothing is orphaned)::

    store (SQLAlchemy in worker threads, group commit)
     └─ actor system (users, connections)
         └─ server nursery: listener (HTTP + WebSocket), presence writer,
                            media pool (worker processes for calls, if any)

Graceful shutdown (:meth:`Server.request_shutdown`, SIGINT/SIGTERM in the CLI):
stop accepting, close every client with 3000 (reconnect), wait for them up to
``shutdown_timeout``, stop the actors, flush presence to storage, close storage.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from tether import __version__
from tether.actors import ActorDeadError, MailboxFull, StopReason, open_actor_system
from tether.actors.connection import ConnectionActor
from tether.actors.context import PresenceWriter, ServerContext
from tether.actors.messages import CloseConnection, PeerClosed, Received
from tether.config import ServerConfig
from tether.console.api import AdminApi
from tether.media.pool import MediaPool, default_worker_count
from tether.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from tether.metrics import render_metrics
from tether.plugins.host import PluginHost, load_plugins
from tether.storage import StorageUnavailable, open_store
from tether.transport.auth import TokenVerifier
from tether.transport.http import HttpRequest, HttpResponse
from tether.transport.protocol.codes import DisconnectCode
from tether.transport.protocol.connection import Limits
from tether.transport.protocol.versions import SUBPROTOCOLS
from tether.transport.server import Listener, TransportLimits, serve
from tether.transport.websocket import WebSocketConnection
from tether.web import static_response

log = logging.getLogger("tether.server")

#: How long a closed connection's reader waits for its actor to stop.
_STOP_WAIT_S = 2.0
#: Live sessions re-saved concurrently by the session sweep (group commit merges them).
_SESSION_SAVE_BATCH = 256
#: How long ``/readyz`` waits for a storage probe before answering (probes
#: against a locked SQLite database wait out its busy timeout).
_READY_PROBE_WAIT_S = 0.5

SERVER_NAME = f"tether/{__version__}"


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What :meth:`Server.run` reports through ``task_status`` once listening."""

    host: str
    port: int
    url: str


class Server:
    """One tether node.

    Args:
        config: the settings (see ``tether.config``).
        media_pool_factory: builds the media pool from the config and the
            resolved worker count (default: real workers,
            :meth:`MediaPool.from_config`); tests pass fake workers here.
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        media_pool_factory: Callable[[ServerConfig, int], MediaPool] | None = None,
    ) -> None:
        self.config = config
        self._media_pool_factory = media_pool_factory or MediaPool.from_config
        # Before anything starts: a missing or incompatible plugin refuses
        # the start here (PluginError, a ConfigError), with its reason.
        self.plugins = load_plugins(config)
        self.ctx: ServerContext | None = None
        self.listener: Listener | None = None
        self._shutdown = trio.Event()
        self._draining = False
        self._no_connections = trio.Event()
        self.ready = False
        #: The operator console's ``/admin/`` API (see ``docs/console.md``).
        self.admin = AdminApi(self)

    def request_shutdown(self) -> None:
        """Begin a graceful shutdown (idempotent, callable from the trio thread)."""
        self._shutdown.set()

    @property
    def draining(self) -> bool:
        """Whether a graceful shutdown (drain) was requested or is under way."""
        return self._draining or self._shutdown.is_set()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until :meth:`request_shutdown`, then shut down gracefully.

        Resource handling: owns the store, the actor system and the listener;
        all are closed when this returns.
        Cancellation: cancelling it aborts every connection without the
        graceful close frames; storage is still closed.
        """
        config = self.config
        secret = config.load_secret()
        if config.dev:
            log.warning(
                "DEV MODE: self-issued 'dev:<user>' identities are accepted. "
                "Anyone who can reach this server can claim any user. Never use --dev "
                "on a reachable server."
            )
        verifier = TokenVerifier(
            secret, require_expiry=config.require_token_expiry, dev_mode=config.dev
        )
        ssl_context = self._ssl_context()
        url = config.effective_database_url
        async with open_store(url, migrate=True) as store:
            writer = PresenceWriter(store)
            try:
                async with open_actor_system(
                    name="tether", shutdown_timeout=config.shutdown_timeout
                ) as system:
                    ctx = ServerContext(
                        config=config,
                        system=system,
                        verifier=verifier,
                        store=store,
                        server_version=SERVER_NAME,
                        presence_writer=writer,
                        protocol_limits=Limits(max_frame_bytes=config.max_frame_bytes),
                    )
                    self.ctx = ctx
                    if self.plugins:
                        ctx.plugins = PluginHost(ctx, self.plugins)
                        await ctx.plugins.start()
                    await _load_presumed_online(ctx)
                    await self.admin.start(ctx)
                    system.registry.subscribe(_ConnectionsGone(self))
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(writer.run)
                        nursery.start_soon(_expire_sessions, ctx)
                        nursery.start_soon(_expire_presumed_online, ctx)
                        workers = default_worker_count(config.media_workers)
                        if workers:
                            pool = self._media_pool_factory(config, workers)
                            # Workers start in the background: calls wait
                            # for a live one (chat does not wait at all).
                            await nursery.start(pool.run)
                            ctx.media = pool
                        listener: Listener = await nursery.start(self._serve, ssl_context)
                        self.listener = listener
                        scheme = "wss" if ssl_context else "ws"
                        info = ServerInfo(
                            listener.host,
                            listener.port,
                            f"{scheme}://{_url_host(listener.host)}:{listener.port}/ws",
                        )
                        self._tune_gc()
                        self.ready = True
                        log.info("tether %s listening on %s", __version__, info.url)
                        task_status.started(info)
                        await self._shutdown.wait()
                        await self._drain(listener)
                        nursery.cancel_scope.cancel()
            finally:
                self.ready = False
                with trio.CancelScope(shield=True), trio.move_on_after(config.shutdown_timeout):
                    try:
                        await writer.flush()
                    except Exception as exc:
                        log.error("presence not flushed at shutdown: %r", exc)
        log.info("tether stopped")

    async def _serve(self, ssl_context: ssl.SSLContext | None, *, task_status: Any) -> None:
        config = self.config
        await serve(
            host=config.host,
            port=config.port,
            http_handler=self._http,
            websocket_handler=self._websocket,
            subprotocols=SUBPROTOCOLS,
            ssl_context=ssl_context,
            limits=TransportLimits(
                max_message_size=config.max_frame_bytes,
                max_outbound_bytes=config.max_outbound_bytes,
                max_connections=config.max_connections,
            ),
            task_status=task_status,
        )

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.config.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        return context

    @staticmethod
    def _tune_gc() -> None:
        # Everything allocated during start-up lives as long as the server:
        # keep it out of every future collection. A higher gen-0 threshold
        # means fewer collections under message load (see ARCHITECTURE.md,
        # GC pauses with many live connections).
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)

    async def _drain(self, listener: Listener) -> None:
        ctx = self.ctx
        assert ctx is not None
        self._draining = True
        # One deadline for the whole drain: clients closing, then receipts.
        deadline = trio.current_time() + self.config.shutdown_timeout
        listener.stop_accepting()
        connections = ctx.system.registry.by_kind("connection")
        log.info("shutting down: closing %d connections", len(connections))
        for ref in connections:
            try:
                ref.tell(CloseConnection(DisconnectCode.SHUTDOWN, "server shutting down"))
            except (ActorDeadError, MailboxFull):
                continue
        if ctx.system.registry.kinds().get("connection", 0):
            with trio.move_on_at(deadline):
                await self._no_connections.wait()
        # Receipts are coalesced in the rooms: write what is pending.
        with trio.move_on_at(deadline):
            async with trio.open_nursery() as nursery:
                for ref in ctx.system.registry.by_kind("room"):
                    nursery.start_soon(_flush_room, ref)

    # -- handlers -------------------------------------------------------------
    async def _websocket(self, ws: WebSocketConnection) -> None:
        """Reader task of one client: feed its frames to its ConnectionActor."""
        ctx = self.ctx
        if ctx is None or self._draining:
            ws.close(DisconnectCode.SHUTDOWN, "server shutting down")
            return
        ref = ctx.system.spawn(ConnectionActor, ctx, ws, ctx.next_conn_id())
        try:
            while (payload := await ws.receive()) is not None:
                message = Received(payload)
                try:
                    ref.tell(message)
                except MailboxFull:
                    # Backpressure: stop reading this socket until the actor
                    # catches up; TCP then slows the client down.
                    await ref.send(message)
        except ActorDeadError:
            pass  # the actor closed the connection itself
        finally:
            with contextlib.suppress(ActorDeadError, MailboxFull):
                ref.tell(PeerClosed(ws.close_code or 1006))
            # Shielded so a cancelled reader still lets its actor finish, but
            # bounded: when the actor system itself is being cancelled, the
            # stop never completes and waiting would hang the server.
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(_STOP_WAIT_S),
                contextlib.suppress(ActorDeadError),
            ):
                await ref.stop(reason=StopReason.CLIENT_LEFT)

    async def _http(self, request: HttpRequest) -> HttpResponse:
        if request.path == "/healthz":
            return HttpResponse.text(200, "ok\n")
        if request.path == "/readyz":
            return await self._readiness()
        if request.path == "/admin" or request.path.startswith("/admin/"):
            return await self.admin.handle(request)
        if request.path == "/metrics" and self.config.metrics_enabled and self.ctx is not None:
            return HttpResponse(
                200,
                render_metrics(self.ctx, self.listener).encode(),
                content_type=METRICS_CONTENT_TYPE,
            )
        static = static_response(request.path) if request.method in ("GET", "HEAD") else None
        if static is not None:
            return static
        if request.path == "/":
            return HttpResponse.text(
                200,
                f"{SERVER_NAME}: WebSocket endpoint at /ws (subprotocol "
                f"{SUBPROTOCOLS[0]}); see docs/protocol.md\n",
            )
        return HttpResponse.text(404, "not found\n")

    async def _readiness(self) -> HttpResponse:
        """``/readyz``: 200 while serving with working storage, else 503 saying why.

        Storage counts as failing from a write transaction that failed as a
        whole (``SqlStore.unavailable_reason``) until one commits. While it
        fails, each ``/readyz`` queues a probe write (one at a time) and waits
        for it briefly, so readiness comes back with the database even when
        no client traffic writes (a node out of its load balancer gets none).
        """
        ctx = self.ctx
        if self._draining:
            return HttpResponse.text(503, "not ready: draining\n")
        if not self.ready or ctx is None:
            return HttpResponse.text(503, "not ready: starting\n")
        problem = await _storage_problem(ctx.store)
        if problem is not None:
            return HttpResponse.text(503, f"not ready: storage unavailable: {problem}\n")
        if ctx.media is not None:
            # Calls are one feature among others: a down worker is reported,
            # not a reason to take the node out of its load balancer.
            media = ctx.media
            return HttpResponse.text(
                200, f"ready\nmedia workers: {media.live_workers}/{media.size} live\n"
            )
        return HttpResponse.text(200, "ready\n")


class _ConnectionsGone:
    """Registry observer: sets the server's event when the last connection stops."""

    def __init__(self, server: Server) -> None:
        self._server = server

    def actor_started(self, ref: Any) -> None:
        return None

    def actor_stopped(self, ref: Any, reason: Any) -> None:
        ctx = self._server.ctx
        if (
            self._server._draining
            and ctx is not None
            and not ctx.system.registry.kinds().get("connection", 0)
        ):
            self._server._no_connections.set()


async def _storage_problem(store: object) -> str | None:
    """Why storage is failing, or None (stores without health reporting never fail here)."""
    reason: str | None = getattr(store, "unavailable_reason", None)
    probe = getattr(store, "probe_writes", None)
    if reason is None or probe is None:
        return reason
    with trio.move_on_after(_READY_PROBE_WAIT_S):
        # A failed probe needs no handling: the reason read below says why.
        with contextlib.suppress(StorageUnavailable):
            await probe()
    result: str | None = getattr(store, "unavailable_reason", None)
    return result


async def _flush_room(ref: Any) -> None:
    try:
        await ref.proxy().flush_receipts()
    except ActorDeadError:
        pass
    except Exception as exc:
        log.warning("receipts of %s not flushed: %r", ref, exc)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


async def _expire_sessions(ctx: ServerContext) -> None:
    """Keep live sessions' stored copies fresh; delete those idle longer than ``session_ttl``.

    Runs at start and then every half ``session_ttl`` (at most hourly). A live
    session is saved again when its stored copy is older than half the TTL, so
    the sweep never deletes a session that is still connected and a crash
    still finds it.
    """
    store = ctx.store
    ttl = ctx.config.session_ttl
    while True:
        now_ms = int(time.time() * 1000)
        stale = ctx.sessions.live_stored_before(now_ms - int(ttl * 500))
        try:
            for start in range(0, len(stale), _SESSION_SAVE_BATCH):
                async with trio.open_nursery() as nursery:
                    for session in stale[start : start + _SESSION_SAVE_BATCH]:
                        session.stored_at_ms = now_ms
                        nursery.start_soon(store.save_session, session.record(now_ms))
            removed = await store.delete_sessions(updated_before_ms=now_ms - int(ttl * 1000))
        except StorageUnavailable as exc:
            log.info("sessions not refreshed or expired now: %r", exc)
        else:
            if removed:
                log.info("deleted %d expired sessions", removed)
        await trio.sleep(min(ttl / 2, 3600.0))


async def _load_presumed_online(ctx: ServerContext) -> None:
    """Learn who was online when the previous process stopped (see ServerContext)."""
    ctx.started_at = trio.current_time()
    ctx.started_at_ms = int(time.time() * 1000)
    try:
        ctx.presumed_online = await ctx.store.online_users()
    except StorageUnavailable as exc:
        log.warning("who was online before the restart is unknown: %r", exc)
        return
    if ctx.presumed_online:
        log.info(
            "%d users were online before this start; they stay so for %.0fs",
            len(ctx.presumed_online),
            ctx.config.offline_grace,
        )


async def _expire_presumed_online(ctx: ServerContext) -> None:
    """After the grace, users presumed online who never came back are offline."""
    await trio.sleep(ctx.config.offline_grace)
    writer = ctx.presence_writer
    for user_id in list(ctx.presumed_online):
        writer.note_online(user_id, 0)
        writer.note_last_seen(user_id, ctx.started_at_ms)
    ctx.presumed_online.clear()
