"""A scripted fake tether server, for testing clients against docs/protocol.md.

It is real WebSocket I/O (trio-websocket's server on a loopback port) and
shares no code with tether's server, so a client tested against it is pinned
to the documented frames, not to one implementation. Connections are served
one after the other, numbered from 1: each ``hello`` is answered with a
``welcome``, every later frame is recorded, requests are answered from a
script, and pushes and closes are sent on demand.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import msgpack
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

#: The welcome sent by default (``user`` and ``ref`` are filled in per hello).
WELCOME: dict[str, Any] = {
    "t": "welcome",
    "session": "s-1",
    "user": "alice",
    "name": "Alice",
    "device": "laptop",
    "heartbeat_ms": 25_000,
    "timeout_ms": 60_000,
    "server": "fake/0",
    "limits": {"max_frame_bytes": 1 << 20, "max_frames_per_s": 50, "max_in_flight": 128},
}


@dataclass(frozen=True)
class Fail:
    """Answer a request with an ``error`` frame."""

    code: int
    reason: str = "scripted failure"
    temporary: bool = False


@dataclass(frozen=True)
class Close:
    """Close the connection instead of answering."""

    code: int
    reason: str = ""


class Silent:
    """Do not answer (a reply lost with the connection, or a server that stalls)."""


SILENT = Silent()

#: One scripted answer: a reply's ``data``, :class:`Fail`, :class:`Close`,
#: :data:`SILENT`, or a function of the request frame that returns one of those.
Answer = dict[str, Any] | Fail | Close | Silent | Callable[[dict[str, Any]], Any]


class FakeServer:
    """A scripted tether server; connections are numbered from 1, in hello order.

    The welcome is :data:`WELCOME` updated with the constructor's keywords;
    its ``user`` is the second ``:``-separated field of the hello's token
    (``dev:<user>``), and a hello with a ``session`` on a later connection
    gets ``resumed`` set to :attr:`resumed`. A request (a frame with a
    ``ref``) is answered by the next :meth:`answer` queued for its type, or
    by ``reply {}`` when none is queued.

    Attributes:
        hellos: the ``hello`` of every connection, in order.
        received: (connection number, frame) for every frame after ``hello``.
        refuse: when set, new WebSocket handshakes are refused with HTTP 503.
        resumed: the ``resumed`` of the next welcomes that answer a resume.
        attempts: when each handshake arrived (trio time), refused ones included.
    """

    def __init__(self, **welcome: Any) -> None:
        self.welcome = {**WELCOME, **welcome}
        self.hellos: list[dict[str, Any]] = []
        self.received: list[tuple[int, dict[str, Any]]] = []
        self.refuse = False
        self.resumed = True
        self.attempts: list[float] = []
        self._script: defaultdict[str, deque[Answer]] = defaultdict(deque)
        self._ws: WebSocketConnection | None = None
        self._changed = trio.Event()

    def answer(self, frame_type: str, *answers: Answer) -> None:
        """Queue answers for the next requests of ``frame_type`` (default: ``reply {}``)."""
        self._script[frame_type].extend(answers)

    def frames(
        self, frame_type: str | None = None, connection: int | None = None
    ) -> list[dict[str, Any]]:
        """Received frames in arrival order: of one type, of one connection, or all."""
        return [
            frame
            for number, frame in self.received
            if frame_type in (None, frame["t"]) and connection in (None, number)
        ]

    async def push(self, frame: dict[str, Any]) -> None:
        """Send a frame on the current connection."""
        assert self._ws is not None
        await self._ws.send_message(msgpack.packb(frame))

    async def close(self, code: int, reason: str = "") -> None:
        """Close the current connection with ``code``."""
        assert self._ws is not None
        await self._ws.aclose(code, reason)

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds (re-checked whenever the server sees something)."""
        while not condition():
            await self._changed.wait()

    async def connections(self, count: int) -> None:
        """Wait until ``count`` connections got their welcome."""
        await self.wait_for(lambda: len(self.hellos) >= count)

    async def wait_frames(self, count: int) -> list[dict[str, Any]]:
        """Wait until ``count`` frames arrived after the hellos; return all of them.

        For frames that get no answer (fire-and-forget, or answered by a push).
        """
        await self.wait_for(lambda: len(self.received) >= count)
        return self.frames()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def handle(self, request: WebSocketRequest) -> None:
        """trio-websocket handler: the whole life of one connection.

        Fails (``AssertionError``) when the client does not offer the
        ``tether.v1`` subprotocol or does not start with ``hello``.
        """
        self.attempts.append(trio.current_time())
        if self.refuse:
            await request.reject(503)
            self._notify()
            return
        assert "tether.v1" in request.proposed_subprotocols, request.proposed_subprotocols
        ws = await request.accept(subprotocol="tether.v1")
        try:
            hello = msgpack.unpackb(await ws.get_message())
            assert hello["t"] == "hello", hello
            self.hellos.append(hello)
            number = len(self.hellos)
            self._ws = ws
            token: str = hello["token"]
            user = token.split(":")[1] if ":" in token else token
            welcome = {**self.welcome, "user": user, "ref": hello["ref"]}
            if number > 1 and "session" in hello:
                welcome["resumed"] = self.resumed
            await ws.send_message(msgpack.packb(welcome))
            self._notify()
            while True:
                frame = msgpack.unpackb(await ws.get_message())
                self.received.append((number, frame))
                self._notify()
                if "ref" in frame:
                    await self._answer(ws, frame)
        except ConnectionClosed:
            self._notify()  # the client closed, or the script did

    async def _answer(self, ws: WebSocketConnection, frame: dict[str, Any]) -> None:
        queue = self._script[frame["t"]]
        answer: Answer = queue.popleft() if queue else {}
        if callable(answer):
            answer = answer(frame)
        if isinstance(answer, Silent):
            return
        if isinstance(answer, Close):
            await ws.aclose(answer.code, answer.reason)
            return
        if isinstance(answer, Fail):
            out = {
                "t": "error",
                "ref": frame["ref"],
                "code": answer.code,
                "reason": answer.reason,
                "temporary": answer.temporary,
            }
        else:
            out = {"t": "reply", "ref": frame["ref"], "data": answer}
        await ws.send_message(msgpack.packb(out))


@asynccontextmanager
async def fake_server(**welcome: Any) -> AsyncIterator[tuple[FakeServer, str]]:
    """A :class:`FakeServer` on a loopback port, and its ``ws://`` URL.

    ``welcome`` overrides keys of :data:`WELCOME`. The server stops when the
    block ends.
    """
    server = FakeServer(**welcome)
    async with trio.open_nursery() as nursery:
        listener = await nursery.start(serve_websocket, server.handle, "127.0.0.1", 0, None)
        yield server, f"ws://127.0.0.1:{listener.port}/ws"
        nursery.cancel_scope.cancel()
