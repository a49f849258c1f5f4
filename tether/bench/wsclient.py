"""A lean WebSocket client for load generation (not the SDK).

The benchmarks must measure the server, not the load generator: this client
keeps per-connection state to a few hundred bytes (no wsproto, no per-connection
task unless the scenario wants one), writes masked frames built by hand, and
parses server frames incrementally. It speaks just enough of RFC 6455 for
tether: binary messages, close frames, server frames unmasked and unfragmented
(tether's server never fragments).
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import struct

import msgpack
import trio

SUBPROTOCOL = "tether.v1"
_KEY = base64.b64encode(os.urandom(16)).decode()
# A fixed all-zero mask is valid framing (the server must unmask with it) and
# spares the XOR; load generators do not need the proxy-cache protection that
# random masks provide.
_MASK = b"\x00\x00\x00\x00"


def client_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """One masked, unfragmented client frame."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return header + _MASK + payload


def encode(frame: dict[str, object]) -> bytes:
    """A tether frame (msgpack map) as one masked WebSocket frame."""
    return client_frame(msgpack.packb(frame))


class LeanConnection:
    """One client connection on a raw non-blocking socket.

    ``feed()`` parses whatever arrived and yields complete binary message
    payloads; close frames set :attr:`close_code`.
    """

    __slots__ = ("_early", "buf", "close_code", "sock", "user")

    def __init__(self, sock: socket.socket, user: str) -> None:
        self.sock = sock
        self.user = user
        self.buf = bytearray()
        self.close_code: int | None = None
        # Payloads that arrived right behind the welcome (a resume's replay).
        self._early: list[bytes] = []

    @classmethod
    async def open(
        cls, host: str, port: int, user: str, *, source: str | None = None
    ) -> LeanConnection:
        """Connect and complete the WebSocket handshake (not the tether hello)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source:
            sock.bind((source, 0))
        with contextlib.suppress(BlockingIOError):
            sock.connect((host, port))
        await trio.lowlevel.wait_writable(sock)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            sock.close()
            raise OSError(err, os.strerror(err))
        request = (
            f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {_KEY}\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n"
        ).encode()
        conn = cls(sock, user)
        await conn.send_all(request)
        while b"\r\n\r\n" not in conn.buf:
            if not await conn.recv_some():
                sock.close()
                raise OSError("connection closed during the WebSocket upgrade")
        head, _, rest = bytes(conn.buf).partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            sock.close()
            raise OSError(f"handshake refused: {head.splitlines()[0]!r}")
        conn.buf = bytearray(rest)
        return conn

    async def send_all(self, data: bytes) -> None:
        """Write everything (waiting for writability as needed)."""
        view = memoryview(data)
        while view:
            try:
                n = self.sock.send(view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)
                continue
            view = view[n:]

    def send_nowait(self, data: bytes) -> bool:
        """Best-effort write; False if the kernel did not take all of it."""
        try:
            return self.sock.send(data) == len(data)
        except (BlockingIOError, OSError):
            return False

    async def recv_some(self) -> int:
        """Wait for data and append it to the buffer; 0 on EOF."""
        while True:
            try:
                data = self.sock.recv(262144)
            except BlockingIOError:
                try:
                    await trio.lowlevel.wait_readable(self.sock)
                except trio.ClosedResourceError:
                    data = b""
                else:
                    continue
            except (ConnectionError, OSError):
                data = b""
            if not data:
                self.close_code = self.close_code or 1006
                return 0
            self.buf += data
            return len(data)

    def feed(self) -> list[bytes]:
        """Complete binary payloads buffered so far (consumed from the buffer)."""
        out: list[bytes] = self._early
        self._early = []
        buf = self.buf
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0 = buf[pos]
            n = buf[pos + 1] & 0x7F
            hdr = 2
            if n == 126:
                if end - pos < 4:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                hdr = 4
            elif n == 127:
                if end - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                hdr = 10
            if end - pos < hdr + n:
                break
            payload = bytes(buf[pos + hdr : pos + hdr + n])
            pos += hdr + n
            opcode = b0 & 0x0F
            if opcode == 0x2:
                out.append(payload)
            elif opcode == 0x8:
                self.close_code = int.from_bytes(payload[:2], "big") if n >= 2 else 1005
            elif opcode == 0x9:  # WebSocket ping: answer with pong
                self.send_nowait(client_frame(payload, 0xA))
        if pos:
            del buf[:pos]
        return out

    async def hello(
        self,
        token: str,
        device: str | None = None,
        *,
        session: str | None = None,
        resume: dict[str, int] | None = None,
    ) -> dict[str, object]:
        """Send ``hello`` (optionally resuming) and wait for ``welcome``.

        Frames that arrive behind the welcome are kept for the next :meth:`feed`.
        """
        frame: dict[str, object] = {"t": "hello", "ref": 1, "token": token}
        if device:
            frame["device"] = device
        if session:
            frame["session"] = session
        if resume:
            frame["resume"] = resume
        await self.send_all(encode(frame))
        while True:
            payloads = self.feed()
            for i, payload in enumerate(payloads):
                msg = msgpack.unpackb(payload)
                if msg.get("t") == "welcome":
                    self._early = payloads[i + 1 :]
                    return dict(msg)
                if msg.get("t") == "error":
                    raise OSError(f"hello refused: {msg}")
            if self.close_code is not None or not await self.recv_some():
                raise OSError(f"closed during hello: {self.close_code}")

    def close(self) -> None:
        """Drop the socket without a close frame (an abrupt disconnect)."""
        if self.sock.fileno() < 0:
            return
        # Wake any task of ours waiting on this socket before it goes away.
        trio.lowlevel.notify_closing(self.sock)
        with contextlib.suppress(OSError):
            self.sock.close()
