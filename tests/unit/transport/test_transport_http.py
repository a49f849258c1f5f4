"""HttpRequest/HttpResponse and the h11 driver, over trio's in-memory streams.

The client side is an h11 client connection, so responses are checked as a
conforming client parses them. Timeouts run on the autojump clock.
"""

from __future__ import annotations

import json

import h11
import pytest
import trio
import trio.testing

from tether.transport.http import (
    HttpConnection,
    HttpRequest,
    HttpResponse,
    build_request,
    format_remote,
)

REMOTE = "127.0.0.1:5000"


def make_pair(
    *,
    max_request_head: int = 16 << 10,
    max_body_size: int = 1 << 20,
    request_timeout: float = 10.0,
    keepalive_timeout: float = 30.0,
) -> tuple[HttpConnection, trio.abc.HalfCloseableStream]:
    client, server = trio.testing.memory_stream_pair()
    http = HttpConnection(
        server,
        REMOTE,
        max_request_head=max_request_head,
        max_body_size=max_body_size,
        request_timeout=request_timeout,
        keepalive_timeout=keepalive_timeout,
    )
    return http, client


async def read_response(
    client: trio.abc.Stream, conn: h11.Connection
) -> tuple[h11.Response, bytes]:
    """Read one complete response with the h11 client ``conn``."""
    response: h11.Response | None = None
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await client.receive_some()))
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert response is not None
            return response, body
        elif isinstance(event, h11.InformationalResponse):
            continue
        else:
            raise AssertionError(f"unexpected event {event!r}")


def header(response: h11.Response, name: bytes) -> bytes | None:
    for key, value in response.headers:
        if key == name:
            return bytes(value)
    return None


# -- value types -------------------------------------------------------------------


def test_header_lookup_is_case_insensitive_and_joins_repeats() -> None:
    request = HttpRequest(
        method="GET",
        target="/",
        path="/",
        query={},
        headers=(("accept", "a"), ("x-one", "1"), ("accept", "b")),
        remote=REMOTE,
    )
    assert request.header("X-One") == "1"
    assert request.header("Accept") == "a, b"
    assert request.header("missing") is None


def test_response_helpers() -> None:
    text = HttpResponse.text(404, "nope é")
    assert text.status == 404
    assert text.body == "nope é".encode()
    assert text.content_type == "text/plain; charset=utf-8"
    as_json = HttpResponse.json(200, {"ok": True, "n": [1, 2]})
    assert as_json.content_type == "application/json"
    assert json.loads(as_json.body) == {"ok": True, "n": [1, 2]}


def test_response_rejects_invalid_status_and_bodies() -> None:
    with pytest.raises(ValueError, match=r"^Expected an HTTP status 200-599, got 101$"):
        HttpResponse(101)
    with pytest.raises(ValueError, match=r"^Expected an empty body for status 204, got b'x'$"):
        HttpResponse(204, b"x")


def test_build_request_decodes_path_and_query() -> None:
    event = h11.Request(
        method="GET",
        target="/a%20b/%C3%A9?x=1&x=2&empty=&y=%2F",
        headers=[("Host", "example"), ("X-Token", "t")],
    )
    request = build_request(event, REMOTE)
    assert request.method == "GET"
    assert request.target == "/a%20b/%C3%A9?x=1&x=2&empty=&y=%2F"
    assert request.path == "/a b/é"
    assert request.query == {"x": ["1", "2"], "empty": [""], "y": ["/"]}
    assert request.headers == (("host", "example"), ("x-token", "t"))
    assert request.remote == REMOTE
    assert request.body == b""


def test_format_remote() -> None:
    assert format_remote(("10.0.0.1", 80)) == "10.0.0.1:80"
    assert format_remote(("::1", 443, 0, 0)) == "[::1]:443"
    assert format_remote("/tmp/sock") == "/tmp/sock"


# -- the connection driver ---------------------------------------------------------


async def test_keepalive_serves_several_requests_with_standard_headers() -> None:
    http, client = make_pair()
    conn = h11.Connection(h11.CLIENT)
    with trio.fail_after(5):
        for n in range(3):
            await client.send_all(
                conn.send(h11.Request(method="GET", target=f"/r{n}", headers=[("Host", "x")]))
                + conn.send(h11.EndOfMessage())
            )
            request = await http.next_request()
            assert request is not None
            assert request.path == f"/r{n}"
            reply = HttpResponse.text(200, f"body {n}")
            assert await http.send_response(request, reply) is True
            response, body = await read_response(client, conn)
            assert response.status_code == 200
            assert response.reason == b"OK"
            assert body == f"body {n}".encode()
            assert header(response, b"content-length") == str(len(body)).encode()
            assert header(response, b"server") == b"tether"
            assert header(response, b"date") is not None
            assert header(response, b"content-type") == b"text/plain; charset=utf-8"
            conn.start_next_cycle()


async def test_head_gets_length_but_no_body() -> None:
    http, client = make_pair()
    conn = h11.Connection(h11.CLIENT)
    with trio.fail_after(5):
        await client.send_all(
            conn.send(h11.Request(method="HEAD", target="/", headers=[("Host", "x")]))
            + conn.send(h11.EndOfMessage())
        )
        request = await http.next_request()
        assert request is not None
        assert request.method == "HEAD"
        assert await http.send_response(request, HttpResponse.text(200, "twelve bytes"))
        response, body = await read_response(client, conn)
    assert header(response, b"content-length") == b"12"
    assert body == b""


async def test_post_body_and_expect_100_continue() -> None:
    http, client = make_pair()
    conn = h11.Connection(h11.CLIENT)
    with trio.fail_after(5):
        await client.send_all(
            conn.send(
                h11.Request(
                    method="POST",
                    target="/submit",
                    headers=[("Host", "x"), ("Content-Length", "5"), ("Expect", "100-continue")],
                )
            )
        )
        async with trio.open_nursery() as nursery:
            result: list[HttpRequest | None] = []

            async def receive() -> None:
                result.append(await http.next_request())

            nursery.start_soon(receive)
            # The client waits for "100 Continue" before it sends the body.
            conn.receive_data(bytes(await client.receive_some()))
            informational = conn.next_event()
            assert isinstance(informational, h11.InformationalResponse)
            assert informational.status_code == 100
            await client.send_all(
                conn.send(h11.Data(data=b"hello")) + conn.send(h11.EndOfMessage())
            )
        (request,) = result
        assert request is not None
        assert request.method == "POST"
        assert request.body == b"hello"


async def test_oversized_head_gets_431_and_closes() -> None:
    http, client = make_pair(max_request_head=1024)
    with trio.fail_after(5):
        await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4096 + b"\r\n\r\n")
        assert await http.next_request() is None
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        response, _ = await read_response(client, conn)
    assert response.status_code == 431
    assert header(response, b"connection") == b"close"


async def test_oversized_body_gets_413() -> None:
    http, client = make_pair(max_body_size=10)
    with trio.fail_after(5):
        await client.send_all(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world"
        )
        assert await http.next_request() is None
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="POST", target="/", headers=[("Host", "x")]))
        response, _ = await read_response(client, conn)
    assert response.status_code == 413


async def test_garbage_gets_400() -> None:
    http, client = make_pair()
    with trio.fail_after(5):
        await client.send_all(b"\x16\x03\x01 this is not http\r\n\r\n")
        assert await http.next_request() is None
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        response, _ = await read_response(client, conn)
    assert response.status_code == 400


async def test_peer_close_ends_the_connection_quietly() -> None:
    http, client = make_pair()
    with trio.fail_after(5):
        await client.send_all(b"GET / HTTP/1.1\r\nHost: x")
        await client.send_eof()
        assert await http.next_request() is None
    assert http.peer_closed


async def test_first_request_must_arrive_within_request_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    http, _client = make_pair(request_timeout=3.0, keepalive_timeout=100.0)
    start = trio.current_time()
    assert await http.next_request() is None
    assert trio.current_time() - start == pytest.approx(3.0)


async def test_idle_keepalive_then_slow_head_gets_408(
    autojump_clock: trio.testing.MockClock,
) -> None:
    http, client = make_pair(request_timeout=3.0, keepalive_timeout=20.0)
    conn = h11.Connection(h11.CLIENT)
    await client.send_all(
        conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        + conn.send(h11.EndOfMessage())
    )
    request = await http.next_request()
    assert request is not None
    assert await http.send_response(request, HttpResponse.text(200, "ok"))
    await read_response(client, conn)
    conn.start_next_cycle()

    async def slow_client() -> None:
        # Idle longer than request_timeout (allowed between keep-alive requests),
        # then start a head and never finish it.
        await trio.sleep(10.0)
        await client.send_all(b"GET /slow HTTP/1.1\r\n")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_client)
        start = trio.current_time()
        assert await http.next_request() is None
        # 10 s idle plus the 3 s allowed to finish the head.
        assert trio.current_time() - start == pytest.approx(13.0)
    response, _ = await read_response(client, conn)
    assert response.status_code == 408


async def test_idle_keepalive_connection_times_out_silently(
    autojump_clock: trio.testing.MockClock,
) -> None:
    http, client = make_pair(request_timeout=3.0, keepalive_timeout=20.0)
    conn = h11.Connection(h11.CLIENT)
    await client.send_all(
        conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        + conn.send(h11.EndOfMessage())
    )
    request = await http.next_request()
    assert request is not None
    assert await http.send_response(request, HttpResponse.text(200, "ok"))
    await read_response(client, conn)
    start = trio.current_time()
    assert await http.next_request() is None
    assert trio.current_time() - start == pytest.approx(20.0)
    with trio.move_on_after(1):
        extra = await client.receive_some()
        raise AssertionError(f"unexpected bytes after an idle timeout: {extra!r}")


async def test_handler_headers_cannot_override_framing_and_invalid_ones_give_500() -> None:
    http, client = make_pair()
    conn = h11.Connection(h11.CLIENT)
    with trio.fail_after(5):
        for reply, status in [
            (
                HttpResponse(
                    200,
                    b"abc",
                    headers=(("Content-Length", "999"), ("X-Custom", "yes")),
                ),
                200,
            ),
            (HttpResponse(200, b"abc", headers=(("X-Bad", "line\r\nbreak"),)), 500),
        ]:
            await client.send_all(
                conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
                + conn.send(h11.EndOfMessage())
            )
            request = await http.next_request()
            assert request is not None
            assert await http.send_response(request, reply)
            response, body = await read_response(client, conn)
            assert response.status_code == status
            if status == 200:
                assert body == b"abc"
                assert header(response, b"content-length") == b"3"
                assert header(response, b"x-custom") == b"yes"
            conn.start_next_cycle()


async def test_close_flag_ends_keepalive() -> None:
    http, client = make_pair()
    conn = h11.Connection(h11.CLIENT)
    with trio.fail_after(5):
        await client.send_all(
            conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
            + conn.send(h11.EndOfMessage())
        )
        request = await http.next_request()
        assert request is not None
        assert await http.send_response(request, HttpResponse(204), close=True) is False
        response, body = await read_response(client, conn)
    assert response.status_code == 204
    assert body == b""
    assert header(response, b"content-length") is None
    assert header(response, b"connection") == b"close"
