"""Implementation of the Python SDK (see ``tether.client``)."""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import msgpack
import trio
from trio_websocket import (
    ConnectionClosed as WsConnectionClosed,
)
from trio_websocket import (
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

log = logging.getLogger("tether.client")

SUBPROTOCOL = "tether.v1"
#: Close codes after which reconnecting with the same credentials is pointless.
_TERMINAL = range(3500, 4000)
_APP_TERMINAL = range(4500, 5000)


# -- errors -------------------------------------------------------------------


class TetherError(Exception):
    """Base of every error this SDK raises.

    Tree::

        TetherError
         ├─ ConnectionClosed        the connection is gone (.code, .reason, .reconnect)
         │   └─ AuthenticationError the token was refused (.expired)
         └─ RequestError            the server answered a request with an error
    """


class ConnectionClosed(TetherError):
    """The connection is closed.

    Attributes:
        code: WebSocket close code (see docs/protocol.md, close codes), 1006
            when the connection was lost without a close frame.
        reason: the server's reason text.
        reconnect: whether reconnecting (with backoff) makes sense.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"connection closed: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason
        self.reconnect = not (code in _TERMINAL or code in _APP_TERMINAL)


class AuthenticationError(ConnectionClosed):
    """The server refused the token; ``expired`` when a fresh token would do."""

    @property
    def expired(self) -> bool:
        """True for close code 3006 (token expired)."""
        return self.code == 3006


class RequestError(TetherError):
    """An ``error`` frame answering one of our requests.

    Attributes:
        code: the error code (docs/protocol.md, error codes).
        reason: human-readable text.
        temporary: retrying later may succeed.
    """

    def __init__(self, code: int, reason: str, temporary: bool) -> None:
        super().__init__(f"error {code}: {reason}")
        self.code = code
        self.reason = reason
        self.temporary = temporary


# -- events -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Welcome:
    """The server's answer to ``hello``."""

    session: str
    user: str
    name: str
    device: str
    heartbeat_ms: int
    timeout_ms: int
    server: str
    limits: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """A ``presence`` push: a watched user's status changed."""

    user: str
    status: str
    devices: int
    last_seen: int | None


@dataclass(frozen=True, slots=True)
class ServerError:
    """An ``error`` frame not tied to a request (e.g. a rate-limit notice)."""

    code: int
    reason: str
    temporary: bool


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """A server frame type this SDK version does not know (forward compatibility)."""

    type: str
    data: dict[str, Any]


Event = PresenceEvent | ServerError | UnknownEvent


def _presence(data: dict[str, Any]) -> PresenceEvent:
    return PresenceEvent(
        str(data["user"]), str(data["status"]), int(data["devices"]), data.get("last_seen")
    )


# -- the client ---------------------------------------------------------------


class _Pending:
    """One request waiting for its reply."""

    __slots__ = ("done", "frame")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.frame: dict[str, Any] | None = None


class Client:
    """A connected, authenticated client. Use :func:`connect` to get one.

    Attributes:
        welcome: what the server said in ``welcome`` (session, user, limits...).
    """

    def __init__(self, ws: WebSocketConnection, *, max_events: int) -> None:
        self._ws = ws
        self._refs = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._events_send, self._events_recv = trio.open_memory_channel[Event](max_events)
        self._closed: ConnectionClosed | None = None
        self._closed_event = trio.Event()
        self._last_frame = trio.current_time()
        self.welcome: Welcome | None = None

    @property
    def user(self) -> str:
        """The authenticated user id."""
        assert self.welcome is not None
        return self.welcome.user

    @property
    def closed(self) -> ConnectionClosed | None:
        """Why the connection closed, or None while it is open."""
        return self._closed

    # -- requests -------------------------------------------------------------
    async def request(self, frame_type: str, **fields: Any) -> dict[str, Any]:
        """Send a request frame and wait for its reply.

        Returns:
            The reply's ``data`` map (the whole frame for ``welcome``).

        Raises:
            RequestError: the server answered with an ``error`` frame.
            ConnectionClosed: the connection closed before the reply.
        """
        ref = next(self._refs) % (1 << 32)
        pending = _Pending()
        self._pending[ref] = pending
        try:
            await self._send({"t": frame_type, "ref": ref, **fields})
            await pending.done.wait()
        finally:
            self._pending.pop(ref, None)
        frame = pending.frame
        if frame is None:
            assert self._closed is not None
            raise self._closed
        if frame["t"] == "error":
            raise RequestError(
                int(frame["code"]), str(frame.get("reason", "")), bool(frame["temporary"])
            )
        if frame["t"] == "welcome":
            return frame
        data = frame.get("data", {})
        return data if isinstance(data, dict) else {}

    async def subscribe_presence(self, users: Sequence[str]) -> list[PresenceEvent]:
        """Watch these users' presence; returns their current snapshots."""
        data = await self.request("presence.subscribe", users=list(users))
        return [_presence(item) for item in data.get("users", [])]

    async def unsubscribe_presence(self, users: Sequence[str]) -> None:
        """Stop watching these users."""
        await self.request("presence.unsubscribe", users=list(users))

    async def set_idle(self, idle: bool) -> None:
        """Report this device idle (``True``) or active (``False``)."""
        await self.request("presence.set", status="idle" if idle else "active")

    async def ping(self) -> None:
        """Send an application-level ping (the server answers with pong)."""
        await self._send({"t": "ping", "n": 0})

    async def bye(self) -> None:
        """Leave deliberately: this device goes offline at once (no grace period)."""
        if self._closed is None:
            await self._send({"t": "bye"})

    async def send_raw(self, payload: bytes) -> None:
        """Send arbitrary bytes as one binary message (for tests and tools)."""
        try:
            await self._ws.send_message(payload)
        except WsConnectionClosed as exc:
            raise self._closed_from(exc) from None

    # -- events ---------------------------------------------------------------
    async def events(self) -> AsyncIterator[Event]:
        """Server pushes, in order, until the connection closes.

        Raises:
            ConnectionClosed: when the connection closes (after the pushes
                received before the close were yielded).
        """
        while True:
            try:
                event = await self._events_recv.receive()
            except trio.EndOfChannel:
                assert self._closed is not None
                raise self._closed from None
            yield event

    async def next_event(self, *, timeout: float | None = None) -> Event:
        """The next server push (raises ``trio.TooSlowError`` after ``timeout``)."""
        with trio.fail_after(math.inf if timeout is None else timeout):
            try:
                return await self._events_recv.receive()
            except trio.EndOfChannel:
                assert self._closed is not None
                raise self._closed from None

    # -- internals ------------------------------------------------------------
    async def _send(self, frame: dict[str, Any]) -> None:
        if self._closed is not None:
            raise self._closed
        try:
            await self._ws.send_message(msgpack.packb(frame))
        except WsConnectionClosed as exc:
            raise self._closed_from(exc) from None

    def _closed_from(self, exc: WsConnectionClosed) -> ConnectionClosed:
        if self._closed is None:
            reason = exc.reason
            code = reason.code if reason is not None else 1006
            text = (reason.reason or "") if reason is not None else ""
            cls = AuthenticationError if code in (3502, 3006) else ConnectionClosed
            self._closed = cls(code, text)
        return self._closed

    def _finish(self, closed: ConnectionClosed) -> None:
        if self._closed is None:
            self._closed = closed
        for pending in self._pending.values():
            pending.done.set()
        self._events_send.close()
        self._closed_event.set()

    async def wait_closed(self) -> ConnectionClosed:
        """Wait until the connection is closed; returns why."""
        await self._closed_event.wait()
        assert self._closed is not None
        return self._closed

    async def _reader(self) -> None:
        try:
            while True:
                message = await self._ws.get_message()
                self._last_frame = trio.current_time()
                if isinstance(message, str):
                    continue  # the protocol is binary-only; ignore stray text
                await self._on_frame(msgpack.unpackb(message, strict_map_key=True))
        except WsConnectionClosed as exc:
            self._finish(self._closed_from(exc))
        except (ValueError, msgpack.UnpackException, KeyError, TypeError) as exc:
            log.error("undecodable frame from server: %r", exc)
            await self._ws.aclose(1002, "undecodable frame")
            self._finish(ConnectionClosed(1002, "undecodable frame from server"))

    async def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("t")
        ref = frame.get("ref")
        if kind in ("reply", "error", "welcome") and ref is not None:
            pending = self._pending.get(ref)
            if pending is not None:
                pending.frame = frame
                pending.done.set()
                return
        if kind == "ping":
            # If the connection just closed, the reader sees the close next.
            with contextlib.suppress(ConnectionClosed):
                await self._send({"t": "pong", "n": frame.get("n", 0)})
            return
        if kind == "pong":
            return
        event: Event
        if kind == "presence":
            event = _presence(frame)
        elif kind == "error":
            event = ServerError(
                int(frame["code"]), str(frame.get("reason", "")), bool(frame["temporary"])
            )
        else:
            event = UnknownEvent(str(kind), frame)
        # Bounded: if the application stops consuming events the reader waits,
        # and the server eventually closes us as a slow consumer.
        await self._events_send.send(event)

    async def _watchdog(self, deadline_s: float) -> None:
        """Close the connection when the server has been silent too long."""
        while self._closed is None:
            silent = trio.current_time() - self._last_frame
            if silent > deadline_s:
                log.warning("server silent for %.1fs: closing", silent)
                await self._ws.aclose(1000, "server silent")
                self._finish(ConnectionClosed(1006, "server heartbeat timeout"))
                return
            await trio.sleep(deadline_s - silent + 0.01)


@asynccontextmanager
async def _single_errors() -> AsyncIterator[None]:
    """Unwrap an exception group holding one exception (trio nurseries wrap).

    Callers of :func:`connect` should catch ``AuthenticationError`` or the
    error raised in their own block, not an ExceptionGroup around it.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if len(leaves) == 1:
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


@asynccontextmanager
async def connect(
    url: str,
    token: str,
    *,
    device: str | None = None,
    client_name: str = "tether-py/0.1",
    max_events: int = 1000,
    connect_timeout: float = 10.0,
) -> AsyncIterator[Client]:
    """Open an authenticated connection (hello → welcome) for the block.

    Args:
        url: the server's WebSocket URL, e.g. ``ws://127.0.0.1:8740/ws``.
        token: a client token (``tether token --user ID``).
        device: a stable id of this device (so tabs/reconnects count as one).
        client_name: sent to the server in ``hello``.
        max_events: bound of the queue of pushes not yet consumed.
        connect_timeout: seconds for the TCP/WebSocket handshake and hello.

    Raises:
        AuthenticationError: the token was refused.
        ConnectionClosed: the server closed during the handshake.
        OSError / HandshakeError: the server could not be reached.

    Resource handling: the connection is closed when the block exits (normal
    close 1000 unless it is already closed); the reader and watchdog tasks
    run for the block's duration.
    """
    stream: Any = None
    try:
        async with (
            _single_errors(),
            open_websocket_url(
                url,
                subprotocols=[SUBPROTOCOL],
                message_queue_size=64,
                connect_timeout=connect_timeout,
                disconnect_timeout=2.0,
            ) as ws,
            trio.open_nursery() as nursery,
        ):
            try:
                client = Client(ws, max_events=max_events)
                nursery.start_soon(client._reader)
                hello: dict[str, Any] = {"token": token, "client": client_name}
                if device is not None:
                    hello["device"] = device
                with trio.fail_after(connect_timeout):
                    try:
                        frame = await client.request("hello", **hello)
                    except RequestError:
                        # The close frame that follows says why; wait for it.
                        raise await client.wait_closed() from None
                client.welcome = Welcome(
                    session=str(frame["session"]),
                    user=str(frame["user"]),
                    name=str(frame["name"]),
                    device=str(frame["device"]),
                    heartbeat_ms=int(frame["heartbeat_ms"]),
                    timeout_ms=int(frame["timeout_ms"]),
                    server=str(frame["server"]),
                    limits=dict(frame.get("limits", {})),
                )
                nursery.start_soon(
                    client._watchdog,
                    (client.welcome.heartbeat_ms + client.welcome.timeout_ms) / 1000,
                )
                yield client
            finally:
                nursery.cancel_scope.cancel()
                stream = ws._stream
    finally:
        # trio-websocket 0.12.2 leaves its TCP stream open when the server
        # closed first (a ResourceWarning later); close it once its own close
        # handshake is over. This relies on a private attribute: the version
        # is pinned in pyproject.toml and the integration tests cover
        # server-side closes.
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()


__all__ = [
    "AuthenticationError",
    "Client",
    "ConnectionClosed",
    "HandshakeError",
    "PresenceEvent",
    "RequestError",
    "ServerError",
    "TetherError",
    "UnknownEvent",
    "Welcome",
    "connect",
]
