"""The transport server end to end over loopback TCP (127.0.0.1, port 0).

Clients are trio-websocket (the project's WebSocket client), h11 over raw trio
streams for HTTP, and a raw wsproto client where a test needs control over the
frames (fragmentation, text frames, a peer that stops reading or vanishes).
Every test is bounded with ``trio.fail_after``.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path

import h11
import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, open_websocket_url
from trio_websocket import WebSocketConnection as ClientWebSocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Request,
    TextMessage,
)

from tether.testing.tls import OPENSSL, self_signed_certificate
from tether.testing.ws import WsPeer
from tether.transport.http import HttpRequest, HttpResponse
from tether.transport.server import Listener, TransportLimits, serve
from tether.transport.websocket import SendQueueFull, WebSocketConnection, encode_frame

SUBPROTOCOL = "tether.v1"

WebSocketHandlerT = Callable[[WebSocketConnection], Awaitable[None]]
HttpHandlerT = Callable[[HttpRequest], Awaitable[HttpResponse]]


async def default_http(request: HttpRequest) -> HttpResponse:
    if request.path == "/hello":
        return HttpResponse.text(200, f"hello {request.query.get('name', ['world'])[0]}")
    if request.path == "/echo":
        return HttpResponse(200, request.body, content_type="application/octet-stream")
    if request.path == "/boom":
        raise RuntimeError("handler bug")
    return HttpResponse.text(404, "no such page")


async def echo(ws: WebSocketConnection) -> None:
    while (message := await ws.receive()) is not None:
        ws.send(message)


@asynccontextmanager
async def running_server(
    *,
    websocket_handler: WebSocketHandlerT = echo,
    http_handler: HttpHandlerT = default_http,
    subprotocols: tuple[str, ...] = (SUBPROTOCOL,),
    ssl_context: ssl.SSLContext | None = None,
    limits: TransportLimits | None = None,
    host: str = "127.0.0.1",
) -> AsyncIterator[Listener]:
    async with trio.open_nursery() as nursery:
        listener: Listener = await nursery.start(
            partial(
                serve,
                host=host,
                port=0,
                http_handler=http_handler,
                websocket_handler=websocket_handler,
                subprotocols=subprotocols,
                ssl_context=ssl_context,
                limits=limits or TransportLimits(),
            )
        )
        try:
            yield listener
        finally:
            nursery.cancel_scope.cancel()


def ws_url(listener: Listener, path: str = "/ws", scheme: str = "ws") -> str:
    return f"{scheme}://127.0.0.1:{listener.port}{path}"


@asynccontextmanager
async def ws_client(
    listener: Listener,
    path: str = "/ws",
    *,
    scheme: str = "ws",
    subprotocols: tuple[str, ...] = (SUBPROTOCOL,),
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[ClientWebSocket]:
    """open_websocket_url, plus closing the client's TCP stream afterwards.

    trio-websocket 0.12.2 closes its stream only when the client starts the
    closing handshake; after a server-initiated close the socket is left to
    the garbage collector (a ResourceWarning, an error in this suite).
    """
    async with open_websocket_url(
        ws_url(listener, path, scheme), ssl_context, subprotocols=subprotocols
    ) as ws:
        try:
            yield ws
        finally:
            stream = ws._stream
    await stream.aclose()


async def upgrade_request(listener: Listener, path: str, protocols: str | None) -> bytes:
    """Send a WebSocket upgrade request by hand; return the server's answer."""
    head = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n"
        "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    )
    if protocols is not None:
        head += f"Sec-WebSocket-Protocol: {protocols}\r\n"
    async with await trio.open_tcp_stream("127.0.0.1", listener.port) as stream:
        await stream.send_all((head + "\r\n").encode())
        reply = b""
        # A refusal ends with EOF; an accepted upgrade leaves the connection open.
        while not (reply.startswith(b"HTTP/1.1 101 ") and reply.endswith(b"\r\n\r\n")):
            chunk = await stream.receive_some()
            if not chunk:
                break
            reply += chunk
        return reply


# -- HTTP client helpers -----------------------------------------------------------


class HttpClient:
    """One keep-alive HTTP/1.1 connection driven by an h11 client."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def request(
        self, method: str, target: str, body: bytes = b""
    ) -> tuple[h11.Response, bytes]:
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        headers = [("Host", "127.0.0.1")]
        if body or method == "POST":
            headers.append(("Content-Length", str(len(body))))
        data = self.conn.send(h11.Request(method=method, target=target, headers=headers))
        if body:
            data += self.conn.send(h11.Data(data=body))
        data += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)
        response: h11.Response | None = None
        received = b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(bytes(await self.stream.receive_some()))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                received += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                return response, received
            else:
                raise AssertionError(f"unexpected {event!r}")


def get_header(response: h11.Response, name: bytes) -> bytes | None:
    for key, value in response.headers:
        if key == name:
            return bytes(value)
    return None


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    """Read until EOF (a reset counts as EOF)."""
    data = b""
    while True:
        try:
            chunk = await stream.receive_some()
        except trio.BrokenResourceError:
            return data
        if not chunk:
            return data
        data += chunk


# -- raw WebSocket client ----------------------------------------------------------


class RawClient(WsPeer):
    """A WebSocket client over TCP with full control over frames (wsproto over a trio stream).

    A reset reads as EOF.
    """

    @classmethod
    async def connect(cls, port: int, *, rcvbuf: int | None = None) -> RawClient:
        sock = trio.socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect(("127.0.0.1", port))
        stream = trio.SocketStream(sock)
        client = cls(stream, reset_is_eof=True, ws=WSConnection(ConnectionType.CLIENT))
        await client.send(Request(host="127.0.0.1", target="/ws", subprotocols=[SUBPROTOCOL]))
        event = await client.next_event()
        assert isinstance(event, AcceptConnection), event
        return client

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stream.aclose()


# -- HTTP --------------------------------------------------------------------------


async def test_http_get_head_post_share_one_keepalive_connection() -> None:
    with trio.fail_after(10):
        async with running_server() as listener:
            stream = await trio.open_tcp_stream("127.0.0.1", listener.port)
            client = HttpClient(stream)
            response, body = await client.request("GET", "/hello?name=tether")
            assert (response.status_code, body) == (200, b"hello tether")
            assert get_header(response, b"server") == b"tether"
            assert get_header(response, b"date") is not None
            response, body = await client.request("HEAD", "/hello")
            assert response.status_code == 200
            assert get_header(response, b"content-length") == b"11"
            assert body == b""
            response, body = await client.request("POST", "/echo", b"\x00payload\xff")
            assert (response.status_code, body) == (200, b"\x00payload\xff")
            response, body = await client.request("GET", "/nowhere")
            assert (response.status_code, body) == (404, b"no such page")
            await stream.aclose()
            await trio.testing.wait_all_tasks_blocked()
            stats = listener.statistics()
            assert stats.http_requests == 4
            assert stats.accepted == 1
            assert stats.active_connections == 0


async def test_handler_exception_gives_500_and_the_connection_stays_usable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(10):
        async with (
            running_server() as listener,
            await trio.open_tcp_stream("127.0.0.1", listener.port) as stream,
        ):
            client = HttpClient(stream)
            response, _ = await client.request("GET", "/boom")
            assert response.status_code == 500
            response, body = await client.request("GET", "/hello")
            assert (response.status_code, body) == (200, b"hello world")
    assert "HTTP handler failed" in caplog.text


async def test_oversized_request_head_gets_431() -> None:
    limits = TransportLimits(max_request_head=2048)
    with trio.fail_after(10):
        async with running_server(limits=limits) as listener:
            async with await trio.open_tcp_stream("127.0.0.1", listener.port) as stream:
                await stream.send_all(
                    b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 8000 + b"\r\n\r\n"
                )
                reply = await read_all(stream)
            assert reply.startswith(b"HTTP/1.1 431 ")


async def test_garbage_instead_of_http_is_refused_and_others_are_still_served() -> None:
    with trio.fail_after(10):
        async with running_server() as listener:
            async with await trio.open_tcp_stream("127.0.0.1", listener.port) as stream:
                await stream.send_all(b"\x00\xffNOT HTTP AT ALL\r\n\r\n\xde\xad\xbe\xef")
                reply = await read_all(stream)  # EOF: the server closed it
            assert reply.startswith(b"HTTP/1.1 400 ")
            async with ws_client(listener) as ws:
                await ws.send_message(b"still here")
                assert await ws.get_message() == b"still here"


async def test_connections_beyond_max_connections_get_503() -> None:
    limits = TransportLimits(max_connections=2)
    with trio.fail_after(10):
        async with (
            running_server(limits=limits) as listener,
            ws_client(listener),
            ws_client(listener),
        ):
            async with await trio.open_tcp_stream("127.0.0.1", listener.port) as stream:
                await stream.send_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
                reply = await read_all(stream)
            assert reply.startswith(b"HTTP/1.1 503 ")
            assert listener.statistics().refused == 1


# -- WebSocket handshake -----------------------------------------------------------


async def test_upgrade_negotiates_the_subprotocol() -> None:
    seen: list[tuple[str, str, str]] = []

    async def handler(ws: WebSocketConnection) -> None:
        seen.append((ws.subprotocol, ws.request.path, ws.request.query["token"][0]))
        await echo(ws)

    with trio.fail_after(10):
        async with (
            running_server(
                websocket_handler=handler, subprotocols=("tether.v2", SUBPROTOCOL)
            ) as listener,
            open_websocket_url(
                ws_url(listener, "/ws?token=abc"), subprotocols=["other", SUBPROTOCOL]
            ) as ws,
        ):
            assert ws.subprotocol == SUBPROTOCOL
            await ws.send_message(b"ping")
            assert await ws.get_message() == b"ping"
            assert listener.statistics().websocket_connections == 1
    assert seen == [(SUBPROTOCOL, "/ws", "abc")]


async def test_upgrade_without_a_supported_subprotocol_gets_400() -> None:
    with trio.fail_after(10):
        async with running_server(subprotocols=("tether.v1", "tether.v2")) as listener:
            for offered in (None, "chat, tether.v3"):
                reply = await upgrade_request(listener, "/ws", offered)
                assert reply.startswith(b"HTTP/1.1 400 ")
                assert reply.endswith(
                    b"\r\n\r\nunsupported subprotocol, offer one of: tether.v1, tether.v2\n"
                )
            reply = await upgrade_request(listener, "/ws", "chat, tether.v2")
            assert reply.startswith(b"HTTP/1.1 101 ")
            assert b"\r\nSec-WebSocket-Protocol: tether.v2\r\n" in reply
            assert listener.statistics().handshake_failures == 2


async def test_upgrade_on_another_path_gets_404() -> None:
    with trio.fail_after(10):
        async with running_server() as listener:
            reply = await upgrade_request(listener, "/elsewhere", SUBPROTOCOL)
            assert reply.startswith(b"HTTP/1.1 404 ")


async def test_malformed_upgrade_gets_400_and_the_server_carries_on() -> None:
    with trio.fail_after(10):
        async with running_server() as listener:
            async with await trio.open_tcp_stream("127.0.0.1", listener.port) as stream:
                await stream.send_all(
                    b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                    b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                    b"Sec-WebSocket-Protocol: tether.v1\r\n\r\n"
                )
                reply = await read_all(stream)
            assert reply.startswith(b"HTTP/1.1 400 ")
            assert b"Sec-WebSocket-Key" in reply
            async with ws_client(listener) as ws:
                await ws.send_message(b"ok")
                assert await ws.get_message() == b"ok"


@pytest.mark.parametrize(
    ("request_head", "status", "detail"),
    [
        (
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n",
            426,
            b"\r\nSec-WebSocket-Version: 13\r\n",
        ),
        (
            b"POST /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Content-Length: 0\r\n",
            400,
            b"a WebSocket upgrade must use GET",
        ),
        (
            b"GET /ws HTTP/1.1\r\nHost: xn--zz\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
            400,
            b"invalid WebSocket upgrade request",
        ),
        (
            b"GET /ws HTTP/1.0\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
            400,
            b"invalid WebSocket upgrade request",
        ),
    ],
)
async def test_invalid_upgrades_are_refused_with_a_reason(
    request_head: bytes, status: int, detail: bytes
) -> None:
    with trio.fail_after(10):
        async with running_server() as listener:
            async with await trio.open_tcp_stream("127.0.0.1", listener.port) as stream:
                await stream.send_all(request_head + b"\r\n")
                reply = await read_all(stream)
            assert reply.startswith(f"HTTP/1.1 {status} ".encode())
            assert detail in reply
            assert listener.statistics().handshake_failures == 1


async def test_server_without_subprotocols_accepts_plain_upgrades() -> None:
    seen: list[str] = []

    async def handler(ws: WebSocketConnection) -> None:
        seen.append(ws.subprotocol)
        await echo(ws)

    with trio.fail_after(10):
        async with (
            running_server(websocket_handler=handler, subprotocols=()) as listener,
            ws_client(listener, subprotocols=()) as ws,
        ):
            assert ws.subprotocol is None
            await ws.send_message(b"plain")
            assert await ws.get_message() == b"plain"
    assert seen == [""]


# -- WebSocket messages ------------------------------------------------------------


async def test_echo_small_large_and_fragmented_messages() -> None:
    with trio.fail_after(20):
        async with running_server() as listener:
            async with ws_client(listener) as ws:
                for size in (0, 1, 125, 126, 65535, 65536, 900_000):
                    payload = bytes(range(256)) * (size // 256) + b"\x07" * (size % 256)
                    await ws.send_message(payload)
                    assert await ws.get_message() == payload
                await ws.ping(b"are you there")
            async with await RawClient.connect(listener.port) as raw:
                chunks = [bytes([n]) * 60_000 for n in range(10)]
                for n, chunk in enumerate(chunks):
                    last = n == len(chunks) - 1
                    await raw.send(BytesMessage(data=chunk, message_finished=last))
                assert await raw.next_message() == b"".join(chunks)


async def test_message_over_max_message_size_closes_with_1009() -> None:
    limits = TransportLimits(max_message_size=100_000)
    with trio.fail_after(10):
        async with running_server(limits=limits) as listener, ws_client(listener) as ws:
            await ws.send_message(b"x" * 100_000)
            assert len(await ws.get_message()) == 100_000
            await ws.send_message(b"x" * 100_001)
            with pytest.raises(ConnectionClosed) as info:
                await ws.get_message()
            assert info.value.reason is not None
            assert info.value.reason.code == 1009


async def test_text_message_closes_with_1003() -> None:
    with trio.fail_after(10):
        async with running_server() as listener, ws_client(listener) as ws:
            await ws.send_message("text is not part of the protocol")
            with pytest.raises(ConnectionClosed) as info:
                await ws.get_message()
            assert info.value.reason is not None
            assert info.value.reason.code == 1003


async def test_client_initiated_close_reaches_the_handler() -> None:
    ended: list[tuple[int | None, str]] = []
    done = trio.Event()

    async def handler(ws: WebSocketConnection) -> None:
        await echo(ws)
        ended.append((ws.close_code, ws.close_reason))
        done.set()

    with trio.fail_after(10):
        async with running_server(websocket_handler=handler) as listener:
            async with ws_client(listener) as ws:
                await ws.send_message(b"hi")
                assert await ws.get_message() == b"hi"
                await ws.aclose(4000, "client done")
                assert ws.closed is not None
                assert ws.closed.code == 4000
            await done.wait()
    assert ended == [(4000, "client done")]


async def test_server_initiated_close_with_a_truncated_reason() -> None:
    long_reason = "ä" * 100  # 200 bytes of UTF-8

    async def handler(ws: WebSocketConnection) -> None:
        message = await ws.receive()
        assert message == b"close me"
        ws.close(4001, long_reason)
        assert await ws.receive() is None

    with trio.fail_after(10):
        async with running_server(websocket_handler=handler) as listener, ws_client(listener) as ws:
            await ws.send_message(b"close me")
            with pytest.raises(ConnectionClosed) as info:
                await ws.get_message()
            assert info.value.reason is not None
            assert info.value.reason.code == 4001
            assert info.value.reason.reason == "ä" * 61


async def test_abrupt_disconnect_gives_1006() -> None:
    ended: list[int | None] = []
    done = trio.Event()

    async def handler(ws: WebSocketConnection) -> None:
        assert await ws.receive() == b"hello"
        assert await ws.receive() is None
        ended.append(ws.close_code)
        done.set()

    with trio.fail_after(10):
        async with running_server(websocket_handler=handler) as listener:
            raw = await RawClient.connect(listener.port)
            await raw.send(BytesMessage(data=b"hello"))
            await raw.stream.aclose()  # no close frame
            await done.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert listener.statistics().websocket_connections == 0
    assert ended == [1006]


async def test_slow_consumer_gets_send_queue_full_and_close_still_works() -> None:
    limits = TransportLimits(max_outbound_bytes=256 * 1024)
    payload = b"s" * 16_000
    sent_before_full: list[int] = []
    full = trio.Event()

    async def handler(ws: WebSocketConnection) -> None:
        count = 0
        while True:
            try:
                ws.send(payload)
            except SendQueueFull:
                break
            count += 1
            if count % 16 == 0:
                # Let the flusher try (the peer is not reading, so it cannot).
                await trio.testing.wait_all_tasks_blocked()
        assert ws.outbound_bytes <= limits.max_outbound_bytes
        sent_before_full.append(count)
        full.set()
        ws.close(4008, "slow consumer")
        assert await ws.receive() is None

    with trio.fail_after(20):
        async with running_server(websocket_handler=handler, limits=limits) as listener:
            async with await RawClient.connect(listener.port, rcvbuf=4096) as raw:
                await full.wait()
                # The client starts reading again: everything queued before the close
                # arrives intact, then the close frame.
                for _ in range(sent_before_full[0]):
                    assert await raw.next_message() == payload
                event = await raw.next_event()
                assert isinstance(event, CloseConnection)
                assert (event.code, event.reason) == (4008, "slow consumer")
                await raw.send(event.response())
                # The server closes the TCP connection after the handshake.
                assert await raw.next_event() is None
            await trio.testing.wait_all_tasks_blocked()
            assert listener.statistics().websocket_connections == 0


async def test_one_frame_encoded_once_reaches_100_connections() -> None:
    members: set[WebSocketConnection] = set()
    ready = trio.Event()

    async def handler(ws: WebSocketConnection) -> None:
        members.add(ws)
        if len(members) == 100:
            ready.set()
        try:
            await echo(ws)
        finally:
            members.discard(ws)

    with trio.fail_after(30):
        async with running_server(websocket_handler=handler) as listener, AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(await RawClient.connect(listener.port))
                for _ in range(100)
            ]
            await ready.wait()
            # Encoded once; the same bytes object goes to every member.
            frame = encode_frame(b"broadcast \x00\x01")
            for ws in members:
                ws.send_frame(frame)
            for client in clients:
                assert await client.next_message() == b"broadcast \x00\x01"
            assert all(ws.statistics().frames_out == 1 for ws in members)


async def test_stop_accepting_keeps_existing_connections() -> None:
    with trio.fail_after(10):
        async with running_server() as listener, ws_client(listener) as ws:
            listener.stop_accepting()
            listener.stop_accepting()
            with pytest.raises(OSError, match="all attempts to connect"):
                await trio.open_tcp_stream("127.0.0.1", listener.port)
            await ws.send_message(b"still served")
            assert await ws.get_message() == b"still served"


async def test_500_connections_echo_concurrently() -> None:
    with trio.fail_after(60):
        async with running_server() as listener:

            async def client(n: int) -> None:
                async with ws_client(listener) as ws:
                    for k in range(3):
                        message = f"{n}:{k}".encode()
                        await ws.send_message(message)
                        assert await ws.get_message() == message

            async with trio.open_nursery() as nursery:
                for n in range(500):
                    nursery.start_soon(client, n)
            stats = listener.statistics()
            assert stats.accepted == 500
            assert stats.handshake_failures == 0


async def test_cancelling_serve_aborts_every_connection() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def run(task_status: trio.TaskStatus[Listener]) -> None:
                with scope:
                    await serve(
                        host="127.0.0.1",
                        port=0,
                        http_handler=default_http,
                        websocket_handler=echo,
                        subprotocols=[SUBPROTOCOL],
                        task_status=task_status,
                    )

            listener: Listener = await nursery.start(run)
            async with ws_client(listener) as ws:
                await ws.send_message(b"x")
                assert await ws.get_message() == b"x"
                scope.cancel()
                with pytest.raises(ConnectionClosed) as info:
                    await ws.get_message()
                assert info.value.reason is not None
                assert info.value.reason.code == 1006
            with pytest.raises(OSError, match="all attempts to connect"):
                await trio.open_tcp_stream("127.0.0.1", listener.port)


async def test_websocket_handler_exception_closes_with_1011(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(ws: WebSocketConnection) -> None:
        await ws.receive()
        raise RuntimeError("app bug")

    with trio.fail_after(10):
        async with running_server(websocket_handler=handler) as listener:
            async with ws_client(listener) as ws:
                await ws.send_message(b"trigger")
                with pytest.raises(ConnectionClosed) as info:
                    await ws.get_message()
                assert info.value.reason is not None
                assert info.value.reason.code == 1011
            # The server is unaffected.
            async with ws_client(listener):
                pass
    assert "websocket handler failed" in caplog.text


async def test_raw_text_frame_and_early_frames_after_the_upgrade() -> None:
    with trio.fail_after(10):
        async with running_server() as listener, await RawClient.connect(listener.port) as raw:
            await raw.send(BytesMessage(data=b"binary first"))
            await raw.send(TextMessage(data="then text"))
            assert await raw.next_message() == b"binary first"
            event = await raw.next_event()
            assert isinstance(event, CloseConnection)
            assert event.code == 1003


class _EventOnLog(logging.Handler):
    """Sets a trio.Event when a record containing ``text`` is logged (in the trio thread)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.event = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
async def test_running_out_of_file_descriptors_does_not_stop_the_accept_loop() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    seen = _EventOnLog("backing off")
    server_logger = logging.getLogger("tether.transport.server")
    server_logger.addHandler(seen)
    try:
        with trio.fail_after(10):
            async with running_server() as listener:
                with trio.socket.socket() as client:
                    # RLIMIT_NOFILE bounds the descriptor *number*, and new ones
                    # take the lowest free number: a limit at the lowest free
                    # number leaves none for the server's accept(), even when
                    # earlier tests left gaps below higher descriptors.
                    # dup() returns the lowest free number.
                    open_fds = os.dup(0)
                    os.close(open_fds)
                    resource.setrlimit(resource.RLIMIT_NOFILE, (open_fds, hard))
                    try:
                        await client.connect(("127.0.0.1", listener.port))
                        await seen.event.wait()
                    finally:
                        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                    # After the back-off the pending connection is accepted and served.
                    stream = trio.SocketStream(client)
                    await stream.send_all(
                        b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                    )
                    reply = await read_all(stream)
                assert reply.startswith(b"HTTP/1.1 200 ")
                assert reply.endswith(b"hello world")
    finally:
        server_logger.removeHandler(seen)


def _ipv6_loopback_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback_available(), reason="no IPv6 loopback")
async def test_ipv6_listener() -> None:
    with trio.fail_after(10):
        async with running_server(host="::1") as listener:
            assert listener.host == "::1"
            async with await trio.open_tcp_stream("::1", listener.port) as stream:
                client = HttpClient(stream)
                response, body = await client.request("GET", "/hello")
            assert (response.status_code, body) == (200, b"hello world")


# -- TLS ---------------------------------------------------------------------------


@pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")
async def test_tls_round_trip(tmp_path: Path) -> None:
    certificate = self_signed_certificate(tmp_path)
    server_context = certificate.server_context()
    client_context = certificate.client_context()
    with trio.fail_after(20):
        async with running_server(ssl_context=server_context) as listener:
            async with open_websocket_url(
                ws_url(listener, scheme="wss"),
                ssl_context=client_context,
                subprotocols=[SUBPROTOCOL],
            ) as ws:
                for size in (5, 70_000, 600_000):
                    await ws.send_message(b"t" * size)
                    assert await ws.get_message() == b"t" * size
            stream = await trio.open_ssl_over_tcp_stream(
                "127.0.0.1", listener.port, ssl_context=client_context
            )
            client = HttpClient(stream)
            response, body = await client.request("GET", "/hello?name=tls")
            assert (response.status_code, body) == (200, b"hello tls")
            response, body = await client.request("POST", "/echo", b"over tls")
            assert (response.status_code, body) == (200, b"over tls")
            await stream.aclose()
            # A client that does not speak TLS fails the handshake, nothing else.
            async with await trio.open_tcp_stream("127.0.0.1", listener.port) as plain:
                await plain.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                await read_all(plain)
            await trio.testing.wait_all_tasks_blocked()
            assert listener.statistics().handshake_failures == 1
