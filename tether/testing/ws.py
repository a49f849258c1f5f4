"""A server-side WebSocketConnection on a real socket pair, and a wsproto client as its peer.

The server end is a non-blocking stdlib socket, exactly as the server hands
it over after the upgrade (optionally under TLS); the peer is a plain wsproto
client connection (masked frames), so every byte the connection writes is
parsed by an independent implementation.
"""

from __future__ import annotations

import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from wsproto import WSConnection
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Pong

from tether.transport.http import HttpRequest
from tether.transport.websocket import SendQueueFull, WebSocketConfig, WebSocketConnection

#: The upgrade request every :func:`ws_pair` connection says it came from.
REQUEST = HttpRequest(
    method="GET", target="/ws", path="/ws", query={}, headers=(), remote="127.0.0.1:1"
)

#: How much a small kernel buffer holds (SO_SNDBUF / SO_RCVBUF), in bytes.
SMALL_BUFFER = 4096


class WsPeer:
    """The client end: a trio stream (plain or TLS) driven by a wsproto client connection.

    ``ws`` parses the stream: by default a client connection past the opening
    handshake; pass ``wsproto.WSConnection(ConnectionType.CLIENT)`` to drive
    the handshake too. With ``reset_is_eof`` a broken stream (a reset, a TLS
    failure) reads as EOF in :meth:`next_event` and :meth:`read_until_eof`;
    without it, it raises :class:`trio.BrokenResourceError`.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        reset_is_eof: bool = False,
        ws: Connection | WSConnection | None = None,
    ) -> None:
        self.stream = stream
        self.ws = Connection(ConnectionType.CLIENT) if ws is None else ws
        self.events: deque[Event] = deque()
        #: Set once the stream has ended.
        self.eof = False
        self.reset_is_eof = reset_is_eof

    @property
    def sock(self) -> trio.socket.SocketType:
        """The socket under a plain stream: ``peer.sock.close()`` drops it at once."""
        assert isinstance(self.stream, trio.SocketStream), "not a plain socket stream"
        return self.stream.socket

    async def _receive(self) -> bytes:
        try:
            return bytes(await self.stream.receive_some(65536))
        except trio.BrokenResourceError:
            if not self.reset_is_eof:
                raise
            return b""

    async def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (not through wsproto)."""
        await self.stream.send_all(data)

    async def send(self, event: Event) -> None:
        """Send a wsproto event (frames are masked, as a client's must be)."""
        await self.send_raw(self.ws.send(event))

    async def next_event(self) -> Event | None:
        """Return the next event, or None at EOF."""
        while not self.events:
            self.events.extend(self.ws.events())
            if self.events:
                break
            if self.eof:
                return None
            data = await self._receive()
            if not data:
                self.eof = True
                continue
            self.ws.receive_data(data)
        return self.events.popleft()

    async def read_a_little(self) -> None:
        """Take up to 4 KiB off the stream, leaving it to parse later."""
        self.ws.receive_data(bytes(await self.stream.receive_some(4096)))

    async def next_message(self) -> bytes:
        """The next whole binary message; fails (``AssertionError``) on any other event."""
        parts = b""
        while True:
            event = await self.next_event()
            assert isinstance(event, BytesMessage), event
            parts += event.data
            if event.message_finished:
                return parts

    async def messages(self, count: int) -> list[bytes]:
        """The next ``count`` binary messages (see :meth:`next_message`)."""
        return [await self.next_message() for _ in range(count)]

    async def answer_close(self, code: int) -> None:
        """Skip data until the server's close frame, check its code, answer it."""
        while True:
            event = await self.next_event()
            if isinstance(event, CloseConnection):
                assert event.code == code, event
                await self.send(event.response())
                return
            assert isinstance(event, BytesMessage | Pong), event

    async def read_until_eof(self) -> None:
        """Read and discard (unparsed) everything up to EOF."""
        while not self.eof:
            if not await self._receive():
                self.eof = True


def small_socket_pair() -> tuple[socket.socket, socket.socket]:
    """A connected (server, client) socket pair whose kernel buffers hold only a few KiB.

    The server end is non-blocking, as a server hands it over.
    """
    server_sock, client_sock = socket.socketpair()
    server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
    client_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    server_sock.setblocking(False)
    return server_sock, client_sock


@asynccontextmanager
async def ws_pair(
    *,
    max_message_size: int = 1 << 20,
    max_outbound_bytes: int = 4 << 20,
    max_ephemeral_keys: int = 4096,
    close_timeout: float = 5.0,
    trailing_data: bytes = b"",
    small_buffers: bool = False,
    reset_is_eof: bool = False,
    tls: tuple[ssl.SSLContext, ssl.SSLContext] | None = None,
) -> AsyncIterator[tuple[WebSocketConnection, WsPeer, socket.socket]]:
    """A server connection on a socket pair, its peer, and the server's socket.

    The keywords set the :class:`WebSocketConfig` and the connection;
    ``small_buffers`` shrinks the kernel buffers (:func:`small_socket_pair`)
    so that the connection backs up after a few KiB; ``reset_is_eof`` is the
    peer's (:class:`WsPeer`). With ``tls`` (server context, client context)
    both ends complete a TLS handshake first, the client checking the
    certificate for ``localhost``. On exit the connection is aborted and the
    client socket closed.
    """
    if small_buffers:
        server_sock, client_sock = small_socket_pair()
    else:
        server_sock, client_sock = socket.socketpair()
        server_sock.setblocking(False)
    async with trio.open_nursery() as nursery:
        try:
            server_tls: trio.SSLStream[trio.SocketStream] | None = None
            client_stream: trio.abc.Stream = trio.SocketStream(
                trio.socket.from_stdlib_socket(client_sock)
            )
            if tls is not None:
                server_context, client_context = tls
                server_tls = trio.SSLStream(
                    trio.SocketStream(trio.socket.from_stdlib_socket(server_sock)),
                    server_context,
                    server_side=True,
                    https_compatible=True,
                )
                client_stream = trio.SSLStream(
                    client_stream, client_context, server_hostname="localhost"
                )
                async with trio.open_nursery() as handshakes:
                    handshakes.start_soon(server_tls.do_handshake)
                    handshakes.start_soon(client_stream.do_handshake)
            config = WebSocketConfig(
                nursery,
                max_message_size=max_message_size,
                max_outbound_bytes=max_outbound_bytes,
                close_timeout=close_timeout,
                max_ephemeral_keys=max_ephemeral_keys,
            )
            connection = WebSocketConnection(
                REQUEST,
                "tether.v1",
                sock=server_sock,
                protocol=Connection(ConnectionType.SERVER),
                config=config,
                tls=server_tls,
                trailing_data=trailing_data,
            )
        except BaseException:
            server_sock.close()
            client_sock.close()
            raise
        try:
            yield connection, WsPeer(client_stream, reset_is_eof=reset_is_eof), server_sock
        finally:
            connection.abort()
            client_sock.close()
            # The close timer may still be waiting for an already closed connection.
            nursery.cancel_scope.cancel()


def fill_until_full(connection: WebSocketConnection, frame: bytes) -> int:
    """Send ordered ``frame`` until :class:`SendQueueFull`; return how many were accepted.

    Fails (``AssertionError``) when 100 000 frames went through.
    """
    sent = 0
    while True:
        try:
            connection.send_frame(frame)
        except SendQueueFull:
            return sent
        sent += 1
        assert sent < 100_000, "the queue never filled up"
