"""A raw wire-protocol test client: plain msgpack maps over a lean socket.

It pins what ``docs/protocol.md`` promises client authors (no SDK in the
way): requests by ref, pushes collected in arrival order, pings answered.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import trio

from tether.bench.wsclient import LeanConnection, encode
from tether.testing.server import token


class RawClient:
    """A test client: requests by ref, pushes collected in order, pings answered."""

    def __init__(self, conn: LeanConnection) -> None:
        self.conn = conn
        self.refs = itertools.count(100)
        self.replies: dict[int, dict[str, Any]] = {}
        self.reply_arrived = trio.Event()
        self.pushes_send, self.pushes = trio.open_memory_channel[dict[str, Any]](10_000)
        self.welcome: dict[str, Any] = {}
        #: Set when the connection has ended (``conn.close_code`` says how).
        self.closed = trio.Event()

    async def pump(self) -> None:
        try:
            await self._pump()
        finally:
            self.closed.set()

    async def _pump(self) -> None:
        while True:
            # feed() first: frames may already be buffered behind the welcome
            for payload in self.conn.feed():
                frame = msgpack.unpackb(payload)
                kind = frame.get("t")
                if kind == "ping":
                    await self.conn.send_all(encode({"t": "pong", "n": frame["n"]}))
                elif kind in ("reply", "error") and "ref" in frame:
                    self.replies[frame["ref"]] = frame
                    self.reply_arrived.set()
                    self.reply_arrived = trio.Event()
                else:
                    self.pushes_send.send_nowait(frame)
            if self.conn.close_code is not None or not await self.conn.recv_some():
                return

    async def request(self, frame_type: str, /, **fields: Any) -> dict[str, Any]:
        ref = next(self.refs)
        await self.conn.send_all(encode({"t": frame_type, "ref": ref, **fields}))
        while ref not in self.replies:
            await self.reply_arrived.wait()
        return self.replies.pop(ref)

    async def ok(self, frame_type: str, /, **fields: Any) -> dict[str, Any]:
        frame = await self.request(frame_type, **fields)
        assert frame["t"] == "reply", frame
        data: dict[str, Any] = frame["data"]
        return data

    async def fails(self, frame_type: str, code: int, /, **fields: Any) -> dict[str, Any]:
        frame = await self.request(frame_type, **fields)
        assert (frame["t"], frame.get("code")) == ("error", code), frame
        return frame

    async def send_only(self, frame_type: str, /, **fields: Any) -> None:
        await self.conn.send_all(encode({"t": frame_type, **fields}))

    async def push(self, kind: str, *, timeout: float = 5.0, **match: Any) -> dict[str, Any]:
        """The next push of type ``kind`` whose fields equal ``match`` (others skipped)."""
        with trio.fail_after(timeout):
            while True:
                frame = await self.pushes.receive()
                if frame["t"] == kind and all(frame.get(k) == v for k, v in match.items()):
                    return frame

    async def nothing(self, kind: str, within: float = 0.3) -> None:
        with trio.move_on_after(within):
            while True:
                frame = await self.pushes.receive()
                if frame["t"] == kind:
                    raise AssertionError(f"unexpected {frame}")


@asynccontextmanager
async def clients(url_port: int, *who: tuple[str, str]) -> AsyncIterator[list[RawClient]]:
    """Connect (user, device) pairs; pump each until the block ends."""
    async with trio.open_nursery() as nursery:
        result = []
        for user, device in who:
            conn = await LeanConnection.open("127.0.0.1", url_port, user)
            welcome = await conn.hello(token(user), device=device)
            c = RawClient(conn)
            c.welcome = welcome
            nursery.start_soon(c.pump)
            result.append(c)
        try:
            yield result
        finally:
            for c in result:
                c.conn.close()


@asynccontextmanager
async def raw_client(
    port: int,
    user: str,
    device: str | None = None,
    *,
    session: str | None = None,
    resume: dict[str, int] | None = None,
) -> AsyncIterator[RawClient]:
    """One pumped :class:`RawClient` for ``user`` on ``127.0.0.1:port``, said hello.

    ``device``, ``session`` and ``resume`` go into ``hello`` as given; each is
    left out when empty, so ``None`` or ``""`` lets the server make up a device
    id. The welcome is in ``client.welcome``; a refused hello raises
    :class:`OSError`. On exit the socket is closed without a close frame (an
    abrupt drop, as the server sees it), whatever happened, so that a failing
    test does not leave the server's teardown waiting on it.
    """
    async with trio.open_nursery() as nursery:
        conn = await LeanConnection.open("127.0.0.1", port, user)
        try:
            welcome = await conn.hello(token(user), device=device, session=session, resume=resume)
            client = RawClient(conn)
            client.welcome = dict(welcome)
            nursery.start_soon(client.pump)
            yield client
        finally:
            conn.close()


async def make_room(owner: RawClient, *members: str, name: str = "r") -> str:
    """Create a private room owned by ``owner`` with ``members``; return its id.

    Fails (``AssertionError``) unless the server replies.
    """
    data = await owner.ok("room.create", name=name, kind="private", members=list(members))
    room: str = data["room"]["id"]
    return room


async def msgs_until_recovered(
    client: RawClient,
    room: str,
    others: list[dict[str, Any]] | None = None,
    timeout: float = 10.0,
) -> tuple[list[int], dict[str, Any]]:
    """The seqs of ``room``'s ``msg`` pushes up to its ``recovered`` frame, and that frame.

    Pushes of other types or rooms seen meanwhile are appended to ``others``
    (dropped when it is ``None``). Raises :class:`trio.TooSlowError` when the
    ``recovered`` frame has not come within ``timeout`` seconds (trio time).
    """
    seqs: list[int] = []
    with trio.fail_after(timeout):
        while True:
            frame = await client.pushes.receive()
            if frame["t"] == "msg" and frame["room"] == room:
                seqs.append(frame["seq"])
            elif frame["t"] == "recovered" and frame["room"] == room:
                return seqs, frame
            elif others is not None:
                others.append(frame)


async def msgs_through(client: RawClient, room: str, last: int, timeout: float = 10.0) -> list[int]:
    """The seqs of ``room``'s ``msg`` pushes, in arrival order, up to and including ``last``.

    Other pushes are dropped. It stops at the first seq at or past ``last``;
    raises :class:`trio.TooSlowError` when that has not come within
    ``timeout`` seconds (trio time).
    """
    seqs: list[int] = []
    with trio.fail_after(timeout):
        while not seqs or seqs[-1] < last:
            frame = await client.pushes.receive()
            if frame["t"] == "msg" and frame["room"] == room:
                seqs.append(frame["seq"])
    return seqs


async def text_push(client: RawClient, needle: str, timeout: float = 10.0) -> dict[str, Any]:
    """The next push whose content mentions ``needle`` (pushes before it are skipped)."""
    with trio.fail_after(timeout):
        while True:
            frame = await client.pushes.receive()
            if needle in repr(frame):
                return frame
