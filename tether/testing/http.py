"""A tiny HTTP/1.1 client for tests: one request per connection, over loopback.

``await http_request(port, "GET", "/admin/api/summary", token=t)`` returns
``(status, headers, body)``; headers are lower-cased names (repeated fields
joined with ``", "``). It speaks HTTP through h11 on a plain trio socket, so
tests exercise the server's real HTTP path.
"""

from __future__ import annotations

import json
from typing import Any

import h11
import trio

__all__ = ["http_json", "http_request"]

_READ_SIZE = 65536


async def http_request(
    port: int,
    method: str,
    path: str,
    *,
    token: str | None = None,
    json_body: Any = None,
    host: str = "127.0.0.1",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """Send one request to ``host:port`` and return ``(status, headers, body)``.

    ``token`` becomes ``Authorization: Bearer <token>``; ``json_body`` is
    serialized as UTF-8 JSON with ``Content-Type: application/json`` (``body``
    sends raw bytes instead). The connection is closed afterwards.

    Raises:
        OSError: the connection failed.
        h11.RemoteProtocolError: the server's answer is not valid HTTP.
    """
    payload = b""
    fields: list[tuple[str, str]] = [("Host", f"{host}:{port}"), ("Connection", "close")]
    if token is not None:
        fields.append(("Authorization", f"Bearer {token}"))
    if json_body is not None:
        payload = json.dumps(json_body).encode("utf-8")
        fields.append(("Content-Type", "application/json"))
    elif body is not None:
        payload = body
    if payload or method.upper() in ("POST", "PUT", "PATCH"):
        fields.append(("Content-Length", str(len(payload))))
    for name, value in (headers or {}).items():
        fields.append((name, value))
    conn = h11.Connection(h11.CLIENT)
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(conn.send(h11.Request(method=method, target=path, headers=fields)))
        if payload:
            await stream.send_all(conn.send(h11.Data(data=payload)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
        status = 0
        got: dict[str, str] = {}
        chunks: list[bytes] = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(_READ_SIZE)))
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                for raw_name, raw_value in event.headers:
                    name = raw_name.decode("latin-1").lower()
                    value = raw_value.decode("latin-1")
                    got[name] = f"{got[name]}, {value}" if name in got else value
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
    return status, got, b"".join(chunks)


async def http_json(
    port: int,
    method: str,
    path: str,
    *,
    token: str | None = None,
    json_body: Any = None,
) -> tuple[int, Any]:
    """Like :func:`http_request`, returning ``(status, decoded JSON body)``."""
    status, _headers, raw = await http_request(port, method, path, token=token, json_body=json_body)
    return status, json.loads(raw.decode("utf-8")) if raw else None
