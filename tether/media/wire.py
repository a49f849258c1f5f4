"""Framing of the pipe between the main process and a media worker (sans-I/O).

Each frame is a 4-byte big-endian length followed by one msgpack map:

- request (main → worker): ``{"id": int, "m": method, "p": params}``
- response (worker → main): ``{"id": int, "r": result}`` or
  ``{"id": int, "e": {"code": str, "message": str}}``
- event (worker → main): ``{"ev": name, "p": params}``

Both ends use :class:`FrameDecoder` and :func:`encode`; neither knows about
trio or asyncio, so both sides share this module.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

#: Largest frame either side accepts; a bigger announced length is a protocol
#: error (the peer is broken, not merely busy), so the buffer stays bounded.
MAX_FRAME_BYTES = 4 * 1024 * 1024

_HEADER = struct.Struct(">I")


class WireError(Exception):
    """The peer sent bytes that are not a valid frame (too large, not a msgpack map)."""


def encode(message: dict[str, Any]) -> bytes:
    """Return ``message`` framed for the pipe.

    Raises:
        WireError: the encoded message is larger than :data:`MAX_FRAME_BYTES`.
    """
    body: bytes = msgpack.packb(message, use_bin_type=True)
    if len(body) > MAX_FRAME_BYTES:
        raise WireError(f"Expected a frame of at most {MAX_FRAME_BYTES} bytes, got {len(body)}")
    return _HEADER.pack(len(body)) + body


def request(request_id: int, method: str, params: dict[str, Any]) -> bytes:
    """Frame a request."""
    return encode({"id": request_id, "m": method, "p": params})


def result(request_id: int, value: Any) -> bytes:
    """Frame a successful response."""
    return encode({"id": request_id, "r": value})


def error(request_id: int, code: str, message: str) -> bytes:
    """Frame an error response (``code``: bad_request, bad_sdp, not_found or internal)."""
    return encode({"id": request_id, "e": {"code": code, "message": message[:1000]}})


def event(name: str, params: dict[str, Any]) -> bytes:
    """Frame an event (worker → main)."""
    return encode({"ev": name, "p": params})


class FrameDecoder:
    """Incremental decoder: feed bytes, iterate complete messages.

    Holds at most one partial frame (≤ :data:`MAX_FRAME_BYTES` plus a header).
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Add ``data``; return the messages it completed, in order.

        Raises:
            WireError: an announced length is too large, or a body is not a map.
        """
        self._buffer += data
        out: list[dict[str, Any]] = []
        while len(self._buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buffer)
            if size > MAX_FRAME_BYTES:
                raise WireError(f"Expected a frame of at most {MAX_FRAME_BYTES} bytes, got {size}")
            end = _HEADER.size + size
            if len(self._buffer) < end:
                break
            body = bytes(self._buffer[_HEADER.size : end])
            del self._buffer[:end]
            try:
                message = msgpack.unpackb(body, raw=False)
            except (ValueError, msgpack.UnpackException) as exc:
                raise WireError(f"Expected a msgpack frame, got undecodable bytes: {exc}") from exc
            if not isinstance(message, dict):
                raise WireError(f"Expected a msgpack map, got {type(message).__name__}")
            out.append(message)
        return out

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet complete."""
        return len(self._buffer)
