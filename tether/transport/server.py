"""The listening socket: accept loop, TLS, HTTP/1.1 and WebSocket upgrade dispatch.

One port serves both protocols. Each accepted connection runs in one task of
:func:`serve`'s nursery: it speaks HTTP/1.1 (keep-alive) until a request asks to
upgrade to a WebSocket on ``websocket_path``, then the same task runs the
application's WebSocket handler. Sockets are plain non-blocking stdlib sockets
driven by trio's documented ``trio.lowlevel.wait_readable`` /
``wait_writable``, so the WebSocket layer can write through synchronously (see
``tether.transport.websocket``); with an ``ssl_context`` the connection runs on
a ``trio.SSLStream`` instead.

Error handling: one connection's failure never reaches the accept loop or other
connections. Peer misbehaviour and I/O errors are logged at debug level, bugs
(unexpected exceptions) with their traceback; running out of file descriptors
(EMFILE/ENFILE) is logged and the loop backs off briefly. Beyond
``max_connections`` a connection is accepted, answered ``503`` and closed.

Cancellation: cancelling :func:`serve` aborts every connection at once (no
close frames, no lingering) and closes the listening socket.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import h11
import trio
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import AcceptConnection, RejectConnection
from wsproto.events import Request as WsRequest
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

from tether.transport.http import (
    SERVER_HEADER,
    HttpConnection,
    HttpHandler,
    HttpRequest,
    HttpResponse,
    format_remote,
)
from tether.transport.websocket import (
    WebSocketConfig,
    WebSocketConnection,
    WebSocketHandler,
    close_socket,
    run_websocket,
)

__all__ = [
    "DEFAULT_LIMITS",
    "Listener",
    "ListenerStatistics",
    "TransportLimits",
    "serve",
]

logger = logging.getLogger("tether.transport.server")

# Accepts per wake-up of the accept loop: enough to absorb a connection storm
# cheaply, small enough that established connections keep getting served.
_ACCEPT_BURST: Final = 64

# Pause after the process or system ran out of descriptors or memory: accepting
# again at once would spin; existing connections closing is what frees them.
_ACCEPT_BACKOFF: Final = 0.1
_RESOURCE_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

# Longest a closed HTTP connection keeps reading (and discarding) what the client
# still sends, so that closing does not turn into a reset that destroys the
# response before the client read it (the "lingering close" of HTTP servers).
_LINGER_SECONDS: Final = 2.0

# Refused connections (over max_connections) linger too, but at most this many at
# once: under a connection flood the refusals themselves must stay bounded.
_MAX_LINGERING_REFUSALS: Final = 256

_READ_SIZE: Final = 65536


@dataclass(frozen=True, slots=True)
class TransportLimits:
    """Bounds of the transport; all must be positive.

    Attributes:
        max_message_size: Largest WebSocket message received (larger: close 1009);
            also the largest HTTP request body (larger: 413).
        max_outbound_bytes: Bound of each WebSocket connection's outbound queue
            (a send beyond it raises ``SendQueueFull``).
        max_request_head: Largest HTTP request head (larger: 431).
        request_timeout: Seconds to complete the TLS handshake, and to receive a
            request head (and body) once it started; the WebSocket upgrade
            response must be written within it too.
        close_timeout: Seconds the WebSocket closing handshake may take.
        keepalive_timeout: Seconds an HTTP keep-alive connection may idle between
            requests, and to write one HTTP response.
        max_connections: Open connections beyond which new ones get 503.
        backlog: The listening socket's accept backlog.
        max_ephemeral_keys: Bound of each WebSocket connection's keyed frames
            waiting while it is backed up (a new key beyond it raises
            ``SendQueueFull``).

    Raises:
        ValueError: a limit is not positive.
    """

    max_message_size: int = 1 << 20
    max_outbound_bytes: int = 4 << 20
    max_request_head: int = 16 << 10
    request_timeout: float = 10.0
    close_timeout: float = 5.0
    keepalive_timeout: float = 30.0
    max_connections: int = 100_000
    backlog: int = 4096
    max_ephemeral_keys: int = 4096

    def __post_init__(self) -> None:
        for name in (
            "max_message_size",
            "max_outbound_bytes",
            "max_request_head",
            "request_timeout",
            "close_timeout",
            "keepalive_timeout",
            "max_connections",
            "backlog",
            "max_ephemeral_keys",
        ):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"Expected a positive {name}, got {value!r}")


DEFAULT_LIMITS: Final = TransportLimits()


@dataclass(frozen=True, slots=True)
class ListenerStatistics:
    """Counters of one listener (a snapshot).

    Attributes:
        accepted: Connections accepted since start (including refused ones).
        active_connections: Connections open now (HTTP or WebSocket).
        websocket_connections: WebSocket connections open now.
        http_requests: HTTP requests received (upgrade requests included).
        refused: Connections answered 503 because of ``max_connections``.
        handshake_failures: Refused upgrade requests (bad headers, subprotocol or
            path) and failed or timed-out TLS handshakes.
    """

    accepted: int
    active_connections: int
    websocket_connections: int
    http_requests: int
    refused: int
    handshake_failures: int


@dataclass(frozen=True, slots=True)
class _Upgrade:
    request: HttpRequest
    subprotocol: str
    protocol: Connection
    trailing_data: bytes


class _SocketByteStream:
    """A non-blocking stdlib socket as a :class:`~tether.transport.http.ByteStream`."""

    __slots__ = ("_sock",)

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Return the next bytes (``b""`` at EOF); the wait is the checkpoint."""
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while True:
            try:
                data = self._sock.recv(max_bytes or _READ_SIZE)
            except BlockingIOError:
                waited = True
                await trio.lowlevel.wait_readable(self._sock)
                continue
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data``, waiting for the socket to be writable as needed."""
        await trio.lowlevel.checkpoint_if_cancelled()
        view = memoryview(data)
        while view:
            try:
                sent = self._sock.send(view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._sock)
                continue
            view = view[sent:]


def _wants_websocket(request: HttpRequest) -> bool:
    upgrade = request.header("upgrade")
    return upgrade is not None and any(
        token.strip().lower() == "websocket" for token in upgrade.split(",")
    )


async def _linger_close(sock: socket.socket) -> None:
    """Half-close ``sock`` and discard input until EOF or ``_LINGER_SECONDS``."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        return
    with trio.move_on_after(_LINGER_SECONDS):
        while True:
            try:
                data = sock.recv(_READ_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError:
                return
            if not data:
                return


def _refusal_bytes() -> bytes:
    # Written without h11: a refused connection never gets a parser.
    body = b"server is at its connection limit\n"
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        f"server: {SERVER_HEADER}\r\n"
        "content-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\n"
        "retry-after: 1\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


_REFUSAL: Final = _refusal_bytes()


class Listener:
    """A bound listening socket and the connections it accepted.

    Returned by :func:`serve` through ``task_status.started()``.

    Attributes:
        host: The bound address (e.g. ``"127.0.0.1"`` or ``"::1"``).
        port: The bound port (the kernel's choice when ``serve`` got port 0).
    """

    __slots__ = (
        "_accepted",
        "_active",
        "_handshake_failures",
        "_http_handler",
        "_http_requests",
        "_limits",
        "_lingering_refusals",
        "_lsock",
        "_refused",
        "_ssl_context",
        "_subprotocols",
        "_websocket_handler",
        "_websocket_path",
        "_websockets",
        "_ws_config",
        "host",
        "port",
    )

    def __init__(
        self,
        lsock: socket.socket,
        *,
        nursery: trio.Nursery,
        http_handler: HttpHandler,
        websocket_handler: WebSocketHandler,
        subprotocols: tuple[str, ...],
        websocket_path: str,
        ssl_context: ssl.SSLContext | None,
        limits: TransportLimits,
    ) -> None:
        self._lsock = lsock
        address = lsock.getsockname()
        self.host: str = address[0]
        self.port: int = address[1]
        self._http_handler = http_handler
        self._websocket_handler = websocket_handler
        self._subprotocols = subprotocols
        self._websocket_path = websocket_path
        self._ssl_context = ssl_context
        self._limits = limits
        self._ws_config = WebSocketConfig(
            nursery,
            max_message_size=limits.max_message_size,
            max_outbound_bytes=limits.max_outbound_bytes,
            close_timeout=limits.close_timeout,
            max_ephemeral_keys=limits.max_ephemeral_keys,
        )
        self._accepted = 0
        self._active = 0
        self._websockets = 0
        self._http_requests = 0
        self._refused = 0
        self._lingering_refusals = 0
        self._handshake_failures = 0

    def __repr__(self) -> str:
        return f"<Listener {self.host}:{self.port} active={self._active}>"

    def stop_accepting(self) -> None:
        """Close the listening socket (drain); established connections carry on.

        Idempotent. :func:`serve` keeps running until cancelled.
        """
        close_socket(self._lsock)

    def statistics(self) -> ListenerStatistics:
        """Return a snapshot of the listener's counters."""
        return ListenerStatistics(
            accepted=self._accepted,
            active_connections=self._active,
            websocket_connections=self._websockets,
            http_requests=self._http_requests,
            refused=self._refused,
            handshake_failures=self._handshake_failures,
        )

    # -- accepting -----------------------------------------------------------------

    async def _accept_loop(self, nursery: trio.Nursery) -> None:
        lsock = self._lsock
        while lsock.fileno() >= 0:
            try:
                await trio.lowlevel.wait_readable(lsock)
            except trio.ClosedResourceError:
                return  # stop_accepting()
            for _ in range(_ACCEPT_BURST):
                try:
                    sock, address = lsock.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    if exc.errno in _RESOURCE_ERRNOS:
                        logger.warning("accept failed, backing off: %s", exc)
                    else:
                        # ECONNABORTED and friends: that connection is gone, not us.
                        logger.info("accept failed: %s", exc)
                    await trio.sleep(_ACCEPT_BACKOFF)
                    break
                self._accepted += 1
                try:
                    sock.setblocking(False)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError as exc:
                    logger.debug("dropping a connection that failed set-up: %s", exc)
                    sock.close()
                    continue
                remote = format_remote(address)
                if self._active >= self._limits.max_connections:
                    self._refuse(nursery, sock, remote)
                    continue
                self._active += 1
                nursery.start_soon(self._serve_connection, sock, remote)

    def _refuse(self, nursery: trio.Nursery, sock: socket.socket, remote: str) -> None:
        """Answer 503 and close (lingering, unless too many refusals already linger)."""
        self._refused += 1
        logger.info("refusing %s: %d connections open", remote, self._active)
        try:
            sock.send(_REFUSAL)
        except OSError:
            sock.close()
            return
        if self._lingering_refusals >= _MAX_LINGERING_REFUSALS:
            sock.close()
            return
        self._lingering_refusals += 1
        nursery.start_soon(self._linger_refused, sock)

    async def _linger_refused(self, sock: socket.socket) -> None:
        try:
            await _linger_close(sock)
        finally:
            self._lingering_refusals -= 1
            close_socket(sock)

    # -- one connection ------------------------------------------------------------

    async def _serve_connection(self, sock: socket.socket, remote: str) -> None:
        """Serve one accepted connection until it closes; never raises (but Cancelled)."""
        tls: trio.SSLStream[trio.SocketStream] | None = None
        try:
            if self._ssl_context is not None:
                tls = await self._tls_handshake(sock, remote, self._ssl_context)
                if tls is None:
                    return
            upgrade = await self._serve_http(sock, tls, remote)
            if upgrade is None:
                return
            connection = WebSocketConnection(
                upgrade.request,
                upgrade.subprotocol,
                sock=sock,
                protocol=upgrade.protocol,
                config=self._ws_config,
                tls=tls,
                trailing_data=upgrade.trailing_data,
            )
            del upgrade
            self._websockets += 1
            try:
                await run_websocket(connection, self._websocket_handler)
            finally:
                self._websockets -= 1
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            logger.debug("connection %s dropped: %r", remote, exc)
        except Exception:
            logger.exception("unexpected error on connection %s", remote)
        finally:
            self._active -= 1
            close_socket(sock)

    async def _tls_handshake(
        self, sock: socket.socket, remote: str, context: ssl.SSLContext
    ) -> trio.SSLStream[trio.SocketStream] | None:
        # https_compatible: clients commonly close without close_notify; treat that
        # as EOF, and do not wait for the client's close_notify when closing.
        tls = trio.SSLStream(
            trio.SocketStream(trio.socket.from_stdlib_socket(sock)),
            context,
            server_side=True,
            https_compatible=True,
        )
        with trio.move_on_after(self._limits.request_timeout) as scope:
            try:
                await tls.do_handshake()
            except trio.BrokenResourceError as exc:
                self._handshake_failures += 1
                logger.debug("TLS handshake with %s failed: %r", remote, exc)
                return None
        if scope.cancelled_caught:
            self._handshake_failures += 1
            logger.debug("TLS handshake with %s timed out", remote)
            return None
        return tls

    async def _serve_http(
        self,
        sock: socket.socket,
        tls: trio.SSLStream[trio.SocketStream] | None,
        remote: str,
    ) -> _Upgrade | None:
        """Answer HTTP requests until the connection closes or upgrades.

        Returns:
            The accepted upgrade (the 101 response is sent), or None once the
            HTTP connection has been closed gracefully.
        """
        limits = self._limits
        http = HttpConnection(
            tls if tls is not None else _SocketByteStream(sock),
            remote,
            max_request_head=limits.max_request_head,
            max_body_size=limits.max_message_size,
            request_timeout=limits.request_timeout,
            keepalive_timeout=limits.keepalive_timeout,
        )
        while True:
            request = await http.next_request()
            if request is None:
                break
            self._http_requests += 1
            if _wants_websocket(request):
                upgrade = await self._upgrade(http, request, tls, sock)
                if upgrade is not None:
                    return upgrade
                break
            response = await self._call_http_handler(request)
            if not await http.send_response(request, response):
                break
        if tls is not None:
            with trio.move_on_after(limits.close_timeout):
                await tls.aclose()
        elif not http.peer_closed:
            await _linger_close(sock)
        return None

    async def _call_http_handler(self, request: HttpRequest) -> HttpResponse:
        try:
            # Typed as object: handlers may be untyped code returning anything.
            response: object = await self._http_handler(request)
        except Exception:
            logger.exception("HTTP handler failed on %s %s", request.method, request.path)
            return HttpResponse.text(500, "internal server error\n")
        if not isinstance(response, HttpResponse):
            logger.error(
                "HTTP handler returned %r for %s %s, expected an HttpResponse",
                type(response).__name__,
                request.method,
                request.path,
            )
            return HttpResponse.text(500, "internal server error\n")
        return response

    async def _upgrade(
        self,
        http: HttpConnection,
        request: HttpRequest,
        tls: trio.SSLStream[trio.SocketStream] | None,
        sock: socket.socket,
    ) -> _Upgrade | None:
        """Validate a WebSocket upgrade request and accept it, or answer it with an error.

        Returns:
            The upgrade, with the 101 response sent; None if it was refused (the
            refusal was sent and the connection is to be closed).
        """
        refusal = self._check_upgrade(request)
        if isinstance(refusal, HttpResponse):
            self._handshake_failures += 1
            await http.send_response(request, refusal, close=True)
            return None
        handshake, subprotocol = refusal
        accept = handshake.send(AcceptConnection(subprotocol=subprotocol or None))
        protocol = handshake.connection
        assert protocol is not None  # wsproto sets it when it accepts
        trailing = http.trailing_data
        stream = tls if tls is not None else _SocketByteStream(sock)
        with trio.move_on_after(self._limits.request_timeout) as scope:
            await stream.send_all(accept)
        if scope.cancelled_caught:
            raise trio.BrokenResourceError("client did not read the upgrade response in time")
        return _Upgrade(request, subprotocol, protocol, trailing)

    def _check_upgrade(self, request: HttpRequest) -> HttpResponse | tuple[H11Handshake, str]:
        """Return the refusal for ``request``, or wsproto's handshake and the subprotocol."""
        if request.path != self._websocket_path:
            return HttpResponse.text(404, "not found\n")
        if request.method != "GET":
            return HttpResponse.text(400, "a WebSocket upgrade must use GET\n")
        handshake = H11Handshake(ConnectionType.SERVER)
        headers = [
            (name.encode("latin-1"), value.encode("latin-1")) for name, value in request.headers
        ]
        try:
            handshake.initiate_upgrade_connection(headers, request.target)
            offer = next(event for event in handshake.events() if isinstance(event, WsRequest))
        except RemoteProtocolError as exc:
            hint = exc.event_hint
            status = hint.status_code if isinstance(hint, RejectConnection) else 400
            extra: tuple[tuple[str, str], ...] = ()
            if isinstance(hint, RejectConnection):
                extra = tuple(
                    (name.decode("latin-1"), value.decode("latin-1"))
                    for name, value in hint.headers
                )
            return HttpResponse(status, f"{exc}\n".encode(), headers=extra)
        except (h11.LocalProtocolError, UnicodeError, StopIteration) as exc:
            # wsproto re-serializes the request with h11 and decodes Host as IDNA:
            # an HTTP/1.0 request without Host or a malformed Host ends here.
            return HttpResponse.text(400, f"invalid WebSocket upgrade request: {exc}\n")
        subprotocol = ""
        if self._subprotocols:
            offered = set(offer.subprotocols)
            chosen = next((name for name in self._subprotocols if name in offered), None)
            if chosen is None:
                return HttpResponse.text(
                    400,
                    "unsupported subprotocol, offer one of: "
                    + ", ".join(self._subprotocols)
                    + "\n",
                )
            subprotocol = chosen
        return handshake, subprotocol


async def _bind(host: str, port: int, backlog: int) -> socket.socket:
    infos = await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    if not infos:
        raise OSError(f"cannot resolve {host!r}")
    family, _, proto, _, address = infos[0]
    lsock = socket.socket(family, socket.SOCK_STREAM, proto)
    try:
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(address)
        lsock.listen(backlog)
        lsock.setblocking(False)
    except BaseException:
        lsock.close()
        raise
    return lsock


async def serve(
    *,
    host: str,
    port: int,
    http_handler: HttpHandler,
    websocket_handler: WebSocketHandler,
    subprotocols: Sequence[str],
    websocket_path: str = "/ws",
    ssl_context: ssl.SSLContext | None = None,
    limits: TransportLimits = DEFAULT_LIMITS,
    task_status: trio.TaskStatus[Listener] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve HTTP/1.1 and WebSocket on ``host:port`` until cancelled.

    Args:
        host: Address to bind, IPv4 or IPv6 (a name is resolved; the first
            address is used).
        port: Port to bind; 0 lets the kernel choose (see ``Listener.port``).
        http_handler: Answers every request that is not a WebSocket upgrade.
        websocket_handler: Runs once per accepted WebSocket, in the connection's
            task; the connection is closed (1000 if still open) when it returns.
        subprotocols: Subprotocols the server speaks, by preference; an upgrade
            must offer one of them (400 otherwise). Empty: none is negotiated.
        websocket_path: The path upgrades are accepted on (404 elsewhere).
        ssl_context: Serve TLS with this context (``server_side`` handshake).
        limits: Bounds and timeouts.
        task_status: Receives the :class:`Listener` once the socket listens.

    Raises:
        OSError: the address cannot be resolved or bound.

    Resource handling: the listening socket and every accepted connection
    belong to this call; they are all closed when it returns.

    Error handling: handler exceptions are logged and answered (HTTP 500,
    WebSocket close 1011); connection errors are logged; nothing a client does
    makes this function raise.

    Cancellation: the only way to stop it; every connection is aborted.
    """
    lsock = await _bind(host, port, limits.backlog)
    try:
        async with trio.open_nursery() as nursery:
            listener = Listener(
                lsock,
                nursery=nursery,
                http_handler=http_handler,
                websocket_handler=websocket_handler,
                subprotocols=tuple(subprotocols),
                websocket_path=websocket_path,
                ssl_context=ssl_context,
                limits=limits,
            )
            logger.info("listening on %s:%d", listener.host, listener.port)
            task_status.started(listener)
            await listener._accept_loop(nursery)
            await trio.sleep_forever()
    finally:
        close_socket(lsock)
