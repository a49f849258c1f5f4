"""HTTP/1.1 on one connection: request/response value types and the h11 driver.

The server (``tether.transport.server``) runs one :class:`HttpConnection` per
accepted socket until the peer closes, a limit or timeout ends it, or a request
asks to upgrade to a WebSocket. h11 does the parsing and framing; this module
adds what h11 leaves to its user:

* limits: a request head larger than ``max_request_head`` gets ``431``, a body
  larger than ``max_body_size`` gets ``413``; both close the connection;
* timeouts: the first request head must arrive within ``request_timeout`` of
  the connection opening; between keep-alive requests the connection may idle
  for ``keepalive_timeout``, and once the first byte of a request has arrived
  the rest of it must follow within ``request_timeout``;
* standard response headers (``Content-Length``, ``Date``, ``Server``), HEAD
  handling, ``Expect: 100-continue`` and keep-alive.

Error handling: peer misbehaviour never raises out of this module. h11's
``RemoteProtocolError`` is answered with the status h11 suggests (400, 431, ...)
and the connection is closed. I/O errors of the stream (``OSError``,
``trio.BrokenResourceError``, ``trio.ClosedResourceError``) propagate to the
server, which drops the connection.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from sys import intern
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import h11
import trio

__all__ = [
    "ByteStream",
    "HttpConnection",
    "HttpHandler",
    "HttpRequest",
    "HttpResponse",
]

logger = logging.getLogger("tether.transport.http")

SERVER_HEADER = "tether"

# Size of one read from the socket. h11 buffers at most ``max_request_head``
# (plus one read) before it refuses the head, so this bounds memory as well.
_READ_SIZE = 65536

# Hop-by-hop and framing headers are owned by this module: a handler's value
# would either be wrong (Content-Length of a HEAD response) or break h11's
# framing (Transfer-Encoding), so handlers cannot set them.
_RESERVED_RESPONSE_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade"}
)

# Statuses whose responses never carry a body (RFC 9110 §6.4.1).
_BODYLESS_STATUSES = frozenset({204, 304})


class ByteStream(Protocol):
    """The byte stream an :class:`HttpConnection` runs on.

    ``trio.SSLStream`` satisfies it as is; the server adapts plain non-blocking
    sockets to it.
    """

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Return the next bytes from the peer; ``b""`` at end of stream."""
        ...

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data``."""
        ...


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One HTTP request as seen by handlers (and kept by WebSocket connections).

    Attributes:
        method: Request method, upper case (``"GET"``, ``"HEAD"``, ``"POST"``...).
        target: The raw request target, e.g. ``"/ws?token=abc"``.
        path: The target's path, percent-decoded (UTF-8), e.g. ``"/ws"``.
        query: The target's query string, parsed; blank values are kept.
        headers: All header fields in arrival order, names lower-cased, values as
            received (decoded as ISO-8859-1, which is lossless for HTTP bytes).
        body: The complete request body (``b""`` for GET/HEAD).
        remote: The client address, ``"ip:port"`` (``"[ip]:port"`` for IPv6).
    """

    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: tuple[tuple[str, str], ...]
    remote: str
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """Return the value of header ``name`` (case-insensitive), or None if absent.

        Repeated fields are joined with ``", "`` as RFC 9110 §5.3 allows.
        """
        wanted = name.lower()
        values = [value for key, value in self.headers if key == wanted]
        if not values:
            return None
        return values[0] if len(values) == 1 else ", ".join(values)


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """An HTTP response produced by a handler.

    ``Content-Length``, ``Date`` and ``Server`` are added by the transport; the
    framing headers (``Content-Length``, ``Transfer-Encoding``, ``Connection``,
    ``Keep-Alive``, ``Upgrade``) are ignored if given in ``headers``.

    Raises:
        ValueError: ``status`` is outside 200-599, or a 204/304 response has a body.
    """

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not 200 <= self.status <= 599:
            raise ValueError(f"Expected an HTTP status 200-599, got {self.status!r}")
        if self.status in _BODYLESS_STATUSES and self.body:
            raise ValueError(f"Expected an empty body for status {self.status}, got {self.body!r}")

    @classmethod
    def text(cls, status: int, text: str) -> HttpResponse:
        """Return a ``text/plain; charset=utf-8`` response with ``text`` as its body."""
        return cls(status, text.encode("utf-8"))

    @classmethod
    def json(cls, status: int, obj: Any) -> HttpResponse:
        """Return an ``application/json`` response with ``obj`` serialized compactly.

        Raises:
            TypeError: ``obj`` is not JSON-serializable.
        """
        body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return cls(status, body, content_type="application/json")


HttpHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]


class _DateCache:
    """The ``Date`` header value, formatted at most once per second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def get(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True)
        return self._value


_date_cache = _DateCache()


def format_remote(address: Any) -> str:
    """Format a socket peer address as ``"ip:port"`` (``"[ip]:port"`` for IPv6)."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        if ":" in str(host):
            return f"[{host}]:{port}"
        return f"{host}:{port}"
    return str(address)


def _reason_phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def _head_size(event: h11.Request) -> int:
    """Size of the request head as sent, give or take optional whitespace."""
    # "METHOD SP target SP HTTP/x.y CRLF", "name: value CRLF" each, final CRLF.
    size = len(event.method) + len(event.target) + 13
    for name, value in event.headers:
        size += len(name) + len(value) + 4
    return size + 2


def build_request(event: h11.Request, remote: str, body: bytes = b"") -> HttpRequest:
    """Convert an h11 request head into an :class:`HttpRequest`.

    Args:
        event: The request head h11 parsed.
        remote: The client address, already formatted.
        body: The complete body.

    Returns:
        The request; the path is percent-decoded as UTF-8 with replacement of
        invalid sequences, so any target h11 accepted yields a request.
    """
    target = event.target.decode("latin-1")
    parts = urlsplit(target)
    # Names are interned: a WebSocket connection keeps its upgrade request for its
    # whole life, and thousands of them would otherwise each hold their own
    # copies of "host", "user-agent", ...
    headers = tuple(
        (intern(name.decode("latin-1")), value.decode("latin-1")) for name, value in event.headers
    )
    return HttpRequest(
        method=event.method.decode("ascii", errors="replace"),
        target=target,
        path=unquote(parts.path, errors="replace"),
        query=parse_qs(parts.query, keep_blank_values=True),
        headers=headers,
        remote=remote,
        body=body,
    )


class HttpConnection:
    """One HTTP/1.1 server connection, driven by h11, with limits and timeouts.

    Usage (by the server): call :meth:`next_request` until it returns None; answer
    each request with :meth:`send_response`. A request that asks to switch
    protocols pauses h11: the caller either answers it with a refusal (which
    closes the connection) or takes :attr:`trailing_data` and stops using this
    object.

    Args:
        stream: The byte stream of the accepted connection.
        remote: The client address, formatted.
        max_request_head: Largest request head accepted (bytes); larger gets 431.
        max_body_size: Largest request body accepted (bytes); larger gets 413.
        request_timeout: Seconds allowed to receive a complete request once it started
            (and for the first request, from the connection opening).
        keepalive_timeout: Seconds a keep-alive connection may idle between requests;
            also the bound for writing one response to a client that does not read.
    """

    __slots__ = (
        "_conn",
        "_keepalive_timeout",
        "_max_body_size",
        "_max_request_head",
        "_remote",
        "_request_timeout",
        "_requests",
        "_stream",
        "peer_closed",
    )

    def __init__(
        self,
        stream: ByteStream,
        remote: str,
        *,
        max_request_head: int,
        max_body_size: int,
        request_timeout: float,
        keepalive_timeout: float,
    ) -> None:
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_request_head)
        self._stream = stream
        self._remote = remote
        self._max_body_size = max_body_size
        self._max_request_head = max_request_head
        self._request_timeout = request_timeout
        self._keepalive_timeout = keepalive_timeout
        self._requests = 0
        #: True once the peer has closed its sending side (no lingering needed).
        self.peer_closed = False

    @property
    def trailing_data(self) -> bytes:
        """Bytes received after the current request (e.g. the first WebSocket frames)."""
        return bytes(self._conn.trailing_data[0])

    async def next_request(self) -> HttpRequest | None:
        """Receive the next complete request (head and body).

        Returns:
            The request, or None when the connection should be closed: the peer
            closed it, a timeout expired, or the peer sent something invalid or too
            large (in which case an error response was already sent).

        Raises:
            OSError, trio.BrokenResourceError, trio.ClosedResourceError: the stream
                failed.

        Cancellation: the read from the stream is the checkpoint; a cancelled call
        leaves the connection unusable.
        """
        conn = self._conn
        first = self._requests == 0
        started = bool(conn.trailing_data[0])
        timeout = self._request_timeout if first or started else self._keepalive_timeout
        head: h11.Request | None = None
        body: list[bytes] = []
        body_size = 0
        with trio.move_on_after(timeout) as scope:
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    logger.debug("bad request from %s: %s", self._remote, exc)
                    if not self.peer_closed:
                        await self._send_error(exc.error_status_hint, str(exc))
                    return None
                if event is h11.NEED_DATA:
                    data = await self._stream.receive_some(_READ_SIZE)
                    if not data:
                        self.peer_closed = True
                    elif not started:
                        # The request has started: from now on the slower keep-alive
                        # allowance no longer applies (slow-loris protection).
                        started = True
                        scope.deadline = min(
                            scope.deadline, trio.current_time() + self._request_timeout
                        )
                    conn.receive_data(data if isinstance(data, bytes) else bytes(data))
                elif isinstance(event, h11.Request):
                    # h11 enforces the bound only on a head still incomplete in its
                    # buffer; one that arrived whole in a single read is measured here.
                    if _head_size(event) > self._max_request_head:
                        await self._send_error(
                            431, f"request head larger than {self._max_request_head} bytes"
                        )
                        return None
                    head = event
                    if conn.client_is_waiting_for_100_continue:
                        await self._send_bytes(
                            conn.send(h11.InformationalResponse(status_code=100, headers=[]))
                        )
                elif isinstance(event, h11.Data):
                    body_size += len(event.data)
                    if body_size > self._max_body_size:
                        await self._send_error(
                            413, f"request body larger than {self._max_body_size} bytes"
                        )
                        return None
                    body.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    assert head is not None  # h11 yields the head before the end
                    self._requests += 1
                    return build_request(head, self._remote, b"".join(body))
                else:
                    # ConnectionClosed, or PAUSED after a refused/finished cycle.
                    return None
        if started and not self.peer_closed:
            await self._send_error(408, "request timeout")
        return None

    async def send_response(
        self, request: HttpRequest, response: HttpResponse, *, close: bool = False
    ) -> bool:
        """Send ``response`` to ``request`` as one write.

        Args:
            request: The request being answered (its method decides whether the
                body is sent: never for HEAD).
            response: The response; invalid header fields (rejected by h11) turn it
                into a logged 500.
            close: Ask the client to close, and close after sending.

        Returns:
            True if the connection can carry another request (keep-alive).

        Raises:
            OSError, trio.BrokenResourceError, trio.ClosedResourceError: the stream
                failed.
        """
        conn = self._conn
        try:
            head = self._response_head(response, close=close)
        except h11.LocalProtocolError as exc:
            logger.error("invalid response for %s %s: %s", request.method, request.path, exc)
            response = HttpResponse.text(500, "internal server error")
            head = self._response_head(response, close=close)
        out = bytearray(conn.send(head) or b"")
        if request.method != "HEAD" and response.body and response.status not in _BODYLESS_STATUSES:
            out += conn.send(h11.Data(data=response.body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        await self._send_bytes(out)
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            return True
        return False

    def _response_head(self, response: HttpResponse, *, close: bool) -> h11.Response:
        headers: list[tuple[str, str]] = [
            ("date", _date_cache.get()),
            ("server", SERVER_HEADER),
        ]
        if response.status not in _BODYLESS_STATUSES:
            headers.append(("content-type", response.content_type))
            headers.append(("content-length", str(len(response.body))))
        headers.extend(
            (name, value)
            for name, value in response.headers
            if name.lower() not in _RESERVED_RESPONSE_HEADERS
        )
        if close:
            headers.append(("connection", "close"))
        return h11.Response(
            status_code=response.status, headers=headers, reason=_reason_phrase(response.status)
        )

    async def _send_error(self, status: int, detail: str) -> None:
        """Send an error response with ``Connection: close``, if h11 still allows one."""
        if self._conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        response = HttpResponse.text(status, f"{status} {_reason_phrase(status).decode()}\n")
        logger.debug("answering %s with %d: %s", self._remote, status, detail)
        try:
            head = self._response_head(response, close=True)
            out = (self._conn.send(head) or b"") + (
                self._conn.send(h11.Data(data=response.body)) or b""
            )
            out += self._conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            # h11 refuses a response in this state (e.g. mid-body after a 100);
            # closing is all that is left.
            return
        await self._send_bytes(out)

    async def _send_bytes(self, data: bytes | bytearray) -> None:
        """Write ``data``, dropping the connection if the client does not take it in time."""
        with trio.move_on_after(self._keepalive_timeout) as scope:
            await self._stream.send_all(data)
        if scope.cancelled_caught:
            raise trio.BrokenResourceError("client did not read the response in time")
