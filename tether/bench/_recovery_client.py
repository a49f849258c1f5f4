"""Load-generator process of ``tether bench recovery`` (see tether.bench.recovery).

Each process runs some of the clients, one trio task per client, on raw
sockets (:class:`~tether.bench.wsclient.LeanConnection`). A client is one user
with one device, a member of a few rooms. It keeps, per room, every ``seq`` it
holds (``got``, with the ``cid``) and the highest one held without a gap
(``held``); on every disconnect it reconnects with exponential backoff and full
jitter and says ``hello`` with its last ``session`` and ``resume`` = the
``held`` of each room; it is *live* again once every room has answered
``recovered`` (and, when a room replayed only part of the gap, once it has paged
``history`` back to what it held). Senders post ``msg.send`` with unique
``cid`` s at a steady pace and resend unanswered ones with the same ``cid``
after a reconnect until a reply arrives; a message is *acknowledged* once its
sender got the reply. With ``subscribe`` > 0 a client follows that many room
mates with ``presence.subscribe`` once joined (so the server stores its
session), and subscribes again after a reconnect whose ``welcome`` is not
``resumed``.

Delivery accounting, per client and room (what the server promises, see
``docs/protocol.md``, "Resuming after a reconnect"):

* ``duplicated``: a ``msg`` push of a seq the client already held, except the
  one case the protocol allows: during a replay, a seq above the position the
  client sent in ``resume`` that it got otherwise (its own reply, or an earlier
  replay cut short), counted as ``redelivered``; and a push of a seq the client
  had fetched with ``history`` itself (``history_overlap``).
* ``out_of_order``: on one connection, a room's ``msg`` push whose seq is not
  above the previous one.
* ``lost`` (computed at the end against every acknowledged message of the
  client's rooms): an acknowledged (room, seq) the client does not hold;
  ``mismatched``: held with another ``cid``.

Protocol with the orchestrator: parameters as the first JSON line on stdin,
then commands (one JSON object per line): ``traffic`` (start sending),
``stop`` (stop sending; report ``stopped`` with the acknowledged messages once
every client is live and every send answered), ``verify`` (with every
acknowledged message of the run: wait until the clients hold them, then
report ``result``), ``exit``. Events on stdout: ``ready`` (every client
connected and joined), ``all_live`` (every client of this process is live
again after some went down; with that period's figures), ``stopped``,
``result``, ``error``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import random
import socket
import sys
import time
from collections import Counter
from typing import Any

import msgpack
import trio

from tether.bench._harness import emit, percentile
from tether.bench._receiver import SOURCES
from tether.bench.wsclient import SUBPROTOCOL, LeanConnection, encode
from tether.transport.auth import mint_token

#: A connection attempt (TCP, upgrade, hello) that takes longer is abandoned.
CONNECT_TIMEOUT_S = 10.0
#: Unanswered sends one client keeps at most; beyond, the pacer skips it.
MAX_PENDING = 64
#: Pause before resending after a temporary error (103, 107, 108).
RETRY_AFTER_S = 0.2
#: Page size of the history requests that fill an incomplete replay.
HISTORY_PAGE = 500
#: presence.subscribe attempts at set-up (RETRY_AFTER_S apart) before giving up.
SUBSCRIBE_TRIES = 100
#: The pacer's period.
TICK_S = 0.01
#: Close codes after which the protocol says not to reconnect (3500-3999, and
#: 1000/1002/1003/1009); the benchmark reconnects anyway but counts them.
_FINAL_CLOSES = frozenset({1000, 1002, 1003, 1009})

_KEY = base64.b64encode(os.urandom(16)).decode()


def rooms_of(index: int, rooms: int, per_client: int) -> list[int]:
    """Indices of the rooms client ``index`` belongs to.

    Client i is in room ``i % rooms`` and then every ``step``-th room after it,
    ``step`` varying with ``i // rooms``: rooms get equal member counts (for
    two rooms per client) and different member sets.
    """
    base = index % rooms
    step = 1 + (index // rooms) % max(1, rooms - 1)
    chosen: list[int] = []
    for k in range(min(per_client, rooms)):
        room = (base + k * step) % rooms
        while room in chosen:
            room = (room + 1) % rooms
        chosen.append(room)
    return sorted(chosen)


def mates(index: int, clients: int, rooms: int, per_client: int, count: int) -> list[str]:
    """Up to ``count`` other clients' user ids sharing a room with client ``index``."""
    mine = set(rooms_of(index, rooms, per_client))
    found: list[str] = []
    for step in range(1, clients):
        other = (index + step) % clients
        if mine & set(rooms_of(other, rooms, per_client)):
            found.append(f"rc-{other}")
            if len(found) == count:
                break
    return found


def backoff_delay(rng: random.Random, attempt: int, base: float, cap: float) -> float:
    """Full jitter: uniform(0, min(cap, base * 2 ** attempt))."""
    return rng.uniform(0.0, min(cap, base * 2.0 ** min(attempt, 30)))


async def open_connection(host: str, port: int, user: str, source: str | None) -> LeanConnection:
    """TCP connect and WebSocket upgrade (not the tether hello).

    Unlike :meth:`LeanConnection.open`, an end of stream during the upgrade is
    an error (a server killed at that moment), not a wait.

    Raises:
        OSError: refused, reset, closed or not upgraded.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source:
            sock.bind((source, 0))
        with contextlib.suppress(BlockingIOError):
            sock.connect((host, port))
        await trio.lowlevel.wait_writable(sock)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
    except BaseException:
        sock.close()
        raise
    conn = LeanConnection(sock, user)
    try:
        await conn.send_all(
            (
                f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {_KEY}\r\n"
                f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n"
            ).encode()
        )
        while b"\r\n\r\n" not in conn.buf:
            if not await conn.recv_some():
                raise OSError("closed during the WebSocket upgrade")
        head, _, rest = bytes(conn.buf).partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise OSError(f"upgrade refused: {head.splitlines()[0]!r}")
        conn.buf = bytearray(rest)
        conn.close_code = None
    except BaseException:
        conn.close()
        raise
    return conn


def _finite(value: float) -> float | None:
    return None if math.isinf(value) else value


class RoomState:
    """What one client holds of one room."""

    __slots__ = ("filled", "got", "held", "last_push", "replayed_now", "resume_pos")

    def __init__(self) -> None:
        #: seq -> cid of every message held (pushes, replays, own replies, history).
        self.got: dict[int, str] = {}
        #: Highest seq held without a gap.
        self.held = 0
        #: ``held`` as sent in the latest ``hello.resume``.
        self.resume_pos = 0
        #: Seqs of the replay in progress (None when not replaying).
        self.replayed_now: set[int] | None = None
        #: Seqs fetched with ``history`` by the client itself.
        self.filled: set[int] = set()
        #: Seq of the latest ``msg`` push on the current connection.
        self.last_push = 0

    def add(self, seq: int, cid: str) -> None:
        """Hold ``seq``; advance ``held`` over what is now contiguous."""
        self.got[seq] = cid
        got = self.got
        held = self.held
        while held + 1 in got:
            held += 1
        self.held = held


class Pending:
    """One message not acknowledged yet."""

    __slots__ = ("body", "cid", "ref", "room", "tries")

    def __init__(self, cid: str, room: str, body: dict[str, Any]) -> None:
        self.cid = cid
        self.room = room
        self.body = body
        self.ref: int | None = None  # the ref of the attempt on the current connection
        self.tries = 0


class Client:
    """One resuming client (see the module docstring)."""

    def __init__(self, worker: Worker, index: int, rooms: list[str], sender: bool) -> None:
        self.w = worker
        self.index = index
        self.user = f"rc-{index}"
        self.device = f"dev-{index}"
        self.token = mint_token(worker.secret, self.user, ttl_s=7 * 86400)
        self.source = SOURCES[index % len(SOURCES)]
        self.room_ids = rooms
        self.rooms = {room: RoomState() for room in rooms}
        self.sender = sender
        #: Users this client follows with presence.subscribe (kept in its session).
        self.mates: list[str] = []
        self.subscribed = False
        self.subscribe_tries = 0
        self.session: str | None = None
        self.joined = False
        self.live = False
        self.gen = 0  # welcomes received
        self.out: trio.MemorySendChannel[bytes] | None = None
        self.nursery: trio.Nursery | None = None
        self.next_ref = 2
        self.inflight: dict[int, Any] = {}
        self.pending: dict[str, Pending] = {}
        self.sent = 0
        self.acked: list[tuple[str, int, str]] = []
        self.replaying: set[str] = set()
        self.filling: set[str] = set()
        self.to_join = 0
        self.drop_at = 0.0
        self.hello_at = 0.0
        self.welcome_at = 0.0
        self.live_at = 0.0

    # -- connection loop ----------------------------------------------------------
    async def run(self) -> None:
        """Connect, serve the connection, reconnect; until the worker exits."""
        w = self.w
        attempt = 0
        first = True
        while True:
            if first:
                first = False
                ok = await self._connect_once(w.first_connect)
            else:
                await trio.sleep(backoff_delay(w.rng, attempt, w.backoff_base, w.backoff_cap))
                ok = await self._connect_once(None)
            attempt = 0 if ok else attempt + 1

    async def _connect_once(self, limiter: trio.CapacityLimiter | None) -> bool:
        """One attempt: connect, hello, then serve the connection until it drops.

        Returns:
            Whether the hello was answered by a welcome.
        """
        w = self.w
        resume: dict[str, int] | None = None
        if self.joined:
            resume = {}
            for room, st in self.rooms.items():
                st.resume_pos = st.held
                resume[room] = st.held
        try:
            async with limiter if limiter is not None else contextlib.nullcontext():
                self.hello_at = time.monotonic()
                conn, welcome = await self._hello(resume)
        except (OSError, trio.TooSlowError) as exc:
            w.stats["connect_failures"] += 1
            w.failure_reasons[type(exc).__name__] += 1
            return False
        try:
            await self._serve(conn, welcome, resume)
        finally:
            conn.close()
            self._dropped(conn.close_code)
        return True

    async def _hello(self, resume: dict[str, int] | None) -> tuple[LeanConnection, dict[str, Any]]:
        w = self.w
        with trio.fail_after(CONNECT_TIMEOUT_S):
            conn = await open_connection(w.host, w.port, self.user, self.source)
            try:
                welcome = await conn.hello(
                    self.token, self.device, session=self.session, resume=resume
                )
            except BaseException:
                conn.close()
                raise
        return conn, welcome

    async def _serve(
        self, conn: LeanConnection, welcome: dict[str, Any], resume: dict[str, int] | None
    ) -> None:
        w = self.w
        now = time.monotonic()
        self.gen += 1
        self.session = str(welcome.get("session") or "") or None
        self.welcome_at = now
        resubscribe = False
        if welcome.get("resumed"):
            w.stats["sessions_resumed"] += 1
        elif self.subscribed:
            # The session (and its subscriptions) is gone: subscribe again.
            w.stats["sessions_lost"] += 1
            resubscribe = True
        if self.gen > 1:
            w.stats["reconnects"] += 1
            w.epoch_first_welcome = min(w.epoch_first_welcome, now)
            w.epoch_first_hello = min(w.epoch_first_hello, self.hello_at)
            w.epoch_hellos.append(now - self.hello_at)
        send, receive = trio.open_memory_channel[bytes](math.inf)
        self.out = send
        for st in self.rooms.values():
            st.last_push = 0
        if resume:
            self.replaying = set(resume)
            for room in resume:
                self.rooms[room].replayed_now = set()
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self._writer, conn, receive, nursery.cancel_scope)
                if not self.joined:
                    self.to_join = len(self.room_ids)
                    for room in self.room_ids:
                        self._request({"t": "room.join", "room": room}, ("join", room))
                elif not resume:
                    self._became_live()
                if resubscribe:
                    self._subscribe()
                for pending in list(self.pending.values()):
                    self._send_pending(pending)
                await self._reader(conn)
                nursery.cancel_scope.cancel()
        finally:
            self.out = None
            self.nursery = None

    async def _writer(
        self,
        conn: LeanConnection,
        receive: trio.MemoryReceiveChannel[bytes],
        scope: trio.CancelScope,
    ) -> None:
        try:
            async for data in receive:
                await conn.send_all(data)
        except OSError:
            scope.cancel()  # the reader would see the end of stream too

    async def _reader(self, conn: LeanConnection) -> None:
        on_frame = self._on_frame
        while True:
            for payload in conn.feed():
                on_frame(msgpack.unpackb(payload))
            if conn.close_code is not None:
                return
            if not await conn.recv_some():
                return

    def _dropped(self, code: int | None) -> None:
        w = self.w
        self.drop_at = time.monotonic()
        w.stats["drops"] += 1
        w.close_codes[str(code)] += 1
        if code in _FINAL_CLOSES or (code is not None and 3500 <= code < 4000):
            w.stats["final_close_codes"] += 1
        self.inflight.clear()
        for pending in self.pending.values():
            pending.ref = None
        self.replaying.clear()
        self.filling.clear()
        for st in self.rooms.values():
            st.replayed_now = None
        if self.live:
            self.live = False
            w.not_live += 1

    def _became_live(self) -> None:
        if self.live:
            return
        w = self.w
        self.live = True
        self.live_at = time.monotonic()
        if self.gen > 1:
            w.epoch_recoveries.append(self.live_at - self.drop_at)
            w.epoch_resumes.append(self.live_at - self.welcome_at)
            w.epoch_welcomes.append(self.welcome_at)
            w.epoch_last_live = max(w.epoch_last_live, self.live_at)
        w.not_live -= 1
        if w.not_live == 0:
            w.all_live()

    # -- requests -----------------------------------------------------------------
    def _request(self, frame: dict[str, Any], what: Any) -> int | None:
        if self.out is None:
            return None
        ref = self.next_ref
        self.next_ref = 2 if ref >= 0xFFFFFFFF else ref + 1
        frame["ref"] = ref
        self.inflight[ref] = what
        self.out.send_nowait(encode(frame))
        return ref

    def send_new(self) -> None:
        """Post one new message (now, or after the reconnect if down)."""
        w = self.w
        if len(self.pending) >= MAX_PENDING:
            w.stats["skipped_sends"] += 1
            return
        self.sent += 1
        room = self.room_ids[self.sent % len(self.room_ids)]
        cid = f"{self.user}.{self.sent}"
        pending = Pending(cid, room, {"n": self.sent, "p": w.padding})
        self.pending[cid] = pending
        w.stats["sent"] += 1
        self._send_pending(pending)

    def _send_pending(self, pending: Pending) -> None:
        if self.out is None or pending.ref is not None:
            return
        frame = {"t": "msg.send", "room": pending.room, "cid": pending.cid, "body": pending.body}
        ref = self._request(frame, pending)
        if ref is None:
            return
        pending.ref = ref
        if pending.tries:
            self.w.stats["retried_sends"] += 1
        pending.tries += 1

    def _later(self, fn: Any, *args: Any) -> None:
        async def after() -> None:
            await trio.sleep(RETRY_AFTER_S)
            fn(*args)

        if self.nursery is not None:
            self.nursery.start_soon(after)

    # -- frames -------------------------------------------------------------------
    def _on_frame(self, frame: Any) -> None:
        if not isinstance(frame, dict):
            self.w.stats["bad_frames"] += 1
            return
        kind = frame.get("t")
        if kind == "msg":
            self._on_msg(frame)
        elif kind == "ping":
            if self.out is not None:
                self.out.send_nowait(encode({"t": "pong", "n": frame.get("n", 0)}))
        elif kind == "recovered":
            self._on_recovered(frame)
        elif kind in ("reply", "error") and frame.get("ref") in self.inflight:
            what = self.inflight.pop(frame["ref"])
            if isinstance(what, Pending):
                self._on_send_answer(what, frame)
            elif what[0] == "join":
                self._on_join_answer(what[1], frame)
            elif what[0] == "subscribe":
                self._on_subscribe_answer(frame)
            else:
                self._on_history_answer(what, frame)
        else:
            self.w.stats["other_frames"] += 1

    def _on_msg(self, frame: dict[str, Any]) -> None:
        w = self.w
        room = str(frame.get("room"))
        st = self.rooms.get(room)
        if st is None:
            w.stats["foreign_pushes"] += 1
            return
        seq = int(frame["seq"])
        cid = str(frame.get("cid"))
        if seq <= st.last_push:
            w.stats["out_of_order"] += 1
        st.last_push = max(st.last_push, seq)
        replay = st.replayed_now
        if seq in st.got:
            if st.got[seq] != cid:
                w.stats["mismatched_pushes"] += 1
            if replay is not None and seq > st.resume_pos and seq not in replay:
                w.stats["redelivered"] += 1  # held above a gap: the protocol replays it
                replay.add(seq)
            elif replay is None and seq in st.filled:
                w.stats["history_overlap"] += 1
            else:
                w.stats["duplicated"] += 1
                if len(w.duplicates) < 20:
                    w.duplicates.append(
                        [self.user, room, seq, st.resume_pos, replay is not None, st.held]
                    )
            return
        st.add(seq, cid)
        w.stats["received"] += 1
        if replay is not None:
            replay.add(seq)
            w.stats["replayed"] += 1
            w.epoch_replayed += 1

    def _on_recovered(self, frame: dict[str, Any]) -> None:
        w = self.w
        room = str(frame.get("room"))
        st = self.rooms.get(room)
        if st is None or room not in self.replaying:
            w.stats["unexpected_recovered"] += 1
            return
        now = time.monotonic()
        w.epoch_last_recovered = max(w.epoch_last_recovered, now)
        w.stats["server_replayed"] += int(frame.get("replayed") or 0)
        self.replaying.discard(room)
        st.replayed_now = None
        code = frame.get("code")
        if code is not None:
            w.resume_codes[str(code)] += 1
            self.filling.add(room)
            self._history(room, after=st.held)
        elif not frame.get("complete", True):
            w.stats["incomplete_recoveries"] += 1
            self.filling.add(room)
            first = frame.get("first")
            before = int(first) if first is not None else int(frame.get("head", 0)) + 1
            self._history(room, before=before)
        if not self.replaying and not self.filling:
            self._became_live()

    def _history(self, room: str, *, before: int | None = None, after: int | None = None) -> None:
        st = self.rooms[room]
        frame: dict[str, Any] = {"t": "history", "room": room, "limit": HISTORY_PAGE}
        if before is not None:
            if before <= st.held + 1:
                self._filled(room)
                return
            frame["before"] = before
        else:
            frame["after"] = after
        self._request(frame, ("history", room, before, after))

    def _on_history_answer(self, what: tuple[Any, ...], frame: dict[str, Any]) -> None:
        w = self.w
        _, room, before, after = what
        if frame["t"] == "error":
            w.stats["history_errors"] += 1
            self._later(lambda: self._history(room, before=before, after=after))
            return
        data = frame.get("data") or {}
        messages = data.get("messages") or []
        st = self.rooms[room]
        for m in messages:
            seq = int(m["seq"])
            if seq in st.got:
                continue
            st.filled.add(seq)
            st.add(seq, str(m.get("cid")))
            w.stats["history_filled"] += 1
        more = bool(data.get("more"))
        if before is not None:
            lowest = int(messages[0]["seq"]) if messages else 0
            if more and messages and lowest > st.held + 1:
                self._history(room, before=lowest)
                return
        elif more and messages:
            self._history(room, after=int(messages[-1]["seq"]))
            return
        self._filled(room)

    def _filled(self, room: str) -> None:
        self.filling.discard(room)
        if not self.replaying and not self.filling:
            self._became_live()

    def _on_join_answer(self, room: str, frame: dict[str, Any]) -> None:
        w = self.w
        if frame["t"] != "reply":
            w.stats["join_errors"] += 1
            self._later(lambda: self._request({"t": "room.join", "room": room}, ("join", room)))
            return
        st = self.rooms[room]
        last = int(((frame.get("data") or {}).get("room") or {}).get("last_seq", 0))
        # Messages from before joining are not expected (traffic starts later).
        st.held = max(st.held, last)
        self.to_join -= 1
        if self.to_join == 0:
            self.joined = True
            if self.mates and not self.subscribed:
                self._subscribe()  # live once answered
            else:
                self._became_live()

    def _subscribe(self) -> None:
        self._request({"t": "presence.subscribe", "users": self.mates}, ("subscribe",))

    def _on_subscribe_answer(self, frame: dict[str, Any]) -> None:
        if frame["t"] != "reply":
            # At set-up a mate may not have joined the shared room yet (104).
            self.subscribe_tries += 1
            if self.subscribe_tries < SUBSCRIBE_TRIES:
                self._later(self._subscribe)
                return
            self.w.stats["subscribe_errors"] += 1
        self.subscribed = True
        if self.joined and not self.replaying and not self.filling:
            self._became_live()

    def _on_send_answer(self, pending: Pending, frame: dict[str, Any]) -> None:
        w = self.w
        pending.ref = None
        if frame["t"] == "error":
            code = int(frame.get("code", 0))
            w.send_errors[str(code)] += 1
            if frame.get("temporary"):
                self._later(self._send_pending, pending)
            else:
                self.pending.pop(pending.cid, None)  # never acknowledged
            return
        data = frame.get("data") or {}
        seq = int(data["seq"])
        if data.get("dup"):
            w.stats["dup_replies"] += 1
        self.pending.pop(pending.cid, None)
        self.acked.append((pending.room, seq, pending.cid))
        w.stats["acknowledged"] += 1
        st = self.rooms[pending.room]
        if seq in st.got:
            if st.got[seq] != pending.cid:
                w.stats["mismatched_replies"] += 1
        else:
            st.add(seq, pending.cid)


class Worker:
    """The clients of this process and their shared figures."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.host = str(params["host"])
        self.port = int(params["port"])
        self.secret = str(params["secret"]).encode()
        self.rate = float(params["rate"])
        self.backoff_base = float(params["backoff_base"])
        self.backoff_cap = float(params["backoff_cap"])
        self.settle_s = float(params["settle_s"])
        self.padding = "x" * max(0, int(params["msg_bytes"]) - 16)
        self.rng = random.Random(int(params["seed"]))
        self.first_connect = trio.CapacityLimiter(int(params["connect_concurrency"]))
        room_ids: list[str] = params["rooms"]
        per_client = int(params["rooms_per_client"])
        senders = int(params["senders"])
        self.clients = [
            Client(
                self,
                i,
                [room_ids[r] for r in rooms_of(i, len(room_ids), per_client)],
                i < senders,
            )
            for i in params["indices"]
        ]
        subscribe = int(params.get("subscribe", 0))
        if subscribe:
            everyone = int(params["clients"])
            for client in self.clients:
                client.mates = mates(client.index, everyone, len(room_ids), per_client, subscribe)
        self.not_live = len(self.clients)
        self.ready_sent = False
        self.stats: Counter[str] = Counter()
        self.close_codes: Counter[str] = Counter()
        self.send_errors: Counter[str] = Counter()
        self.resume_codes: Counter[str] = Counter()
        self.failure_reasons: Counter[str] = Counter()
        self.duplicates: list[list[Any]] = []
        self.traffic = False
        self.live_changed = trio.Event()
        self._reset_epoch()

    def _reset_epoch(self) -> None:
        inf = math.inf
        self.epoch_first_hello = inf
        self.epoch_first_welcome = inf
        self.epoch_last_recovered = 0.0
        self.epoch_last_live = 0.0
        self.epoch_replayed = 0
        self.epoch_recoveries: list[float] = []
        self.epoch_hellos: list[float] = []
        self.epoch_resumes: list[float] = []
        self.epoch_welcomes: list[float] = []

    def all_live(self) -> None:
        """Every client is live: report the period that ends here."""
        self.live_changed.set()
        self.live_changed = trio.Event()
        if not self.ready_sent:
            self.ready_sent = True
            emit({"event": "ready", "clients": len(self.clients), "t": time.monotonic()})
            self._reset_epoch()
            return
        gens = [c.gen for c in self.clients]
        rec = self.epoch_recoveries
        emit(
            {
                "event": "all_live",
                "t": max(c.live_at for c in self.clients),
                "min_gen": min(gens),
                "max_gen": max(gens),
                "recovered_clients": len(rec),
                "client_recovery_p50_s": round(percentile(rec, 50), 4),
                "client_recovery_max_s": round(max(rec, default=0.0), 4),
                "first_hello": _finite(self.epoch_first_hello),
                "first_welcome": _finite(self.epoch_first_welcome),
                "last_recovered": self.epoch_last_recovered or None,
                "replayed": self.epoch_replayed,
                # Phases: the successful attempt's connect + hello -> welcome,
                # and welcome -> live (every room recovered).
                "hello_p50_s": round(percentile(self.epoch_hellos, 50), 4),
                "hello_max_s": round(max(self.epoch_hellos, default=0.0), 4),
                "resume_p50_s": round(percentile(self.epoch_resumes, 50), 4),
                "resume_max_s": round(max(self.epoch_resumes, default=0.0), 4),
                "welcomes": self.epoch_welcomes,
            }
        )
        self._reset_epoch()

    async def pace(self) -> None:
        """Post ``rate`` messages per second over this process's senders, round robin."""
        senders = [c for c in self.clients if c.sender]
        if not senders or self.rate <= 0:
            return
        budget = 0.0
        i = 0
        last = time.monotonic()
        while self.traffic:
            await trio.sleep(TICK_S)
            now = time.monotonic()
            budget += self.rate * (now - last)
            last = now
            while budget >= 1.0 and self.traffic:
                budget -= 1.0
                senders[i % len(senders)].send_new()
                i += 1

    async def stop(self) -> None:
        """Stop sending; report once every client is live and every send answered."""
        self.traffic = False
        deadline = trio.current_time() + self.settle_s
        while trio.current_time() < deadline:
            if self.not_live == 0 and not any(c.pending for c in self.clients):
                break
            await trio.sleep(0.05)
        emit(
            {
                "event": "stopped",
                "acked": [a for c in self.clients for a in c.acked],
                "not_live": self.not_live,
                "pending": sum(len(c.pending) for c in self.clients),
            }
        )

    def _missing(self, acked: dict[str, dict[int, str]]) -> tuple[int, int]:
        lost = mismatched = 0
        for c in self.clients:
            for room, st in c.rooms.items():
                expected = acked.get(room)
                if not expected:
                    continue
                got = st.got
                for seq, cid in expected.items():
                    have = got.get(seq)
                    if have is None:
                        lost += 1
                    elif have != cid:
                        mismatched += 1
        return lost, mismatched

    async def verify(self, acked_wire: dict[str, list[list[Any]]]) -> None:
        """Wait (up to ``settle_s``) until every client holds every acknowledged message."""
        acked = {room: {int(s): str(cid) for s, cid in items} for room, items in acked_wire.items()}
        started = trio.current_time()
        deadline = started + self.settle_s
        while True:
            lost, mismatched = self._missing(acked)
            if lost == 0 or trio.current_time() >= deadline:
                break
            await trio.sleep(0.05)
        held = sum(len(st.got) for c in self.clients for st in c.rooms.values())
        emit(
            {
                "event": "result",
                "lost": lost,
                "mismatched": mismatched,
                "settle_s": round(trio.current_time() - started, 3),
                "held_messages": held,
                "not_live": self.not_live,
                "gens": [c.gen for c in self.clients],
                "stats": dict(self.stats),
                "close_codes": dict(self.close_codes),
                "send_errors": dict(self.send_errors),
                "resume_codes": dict(self.resume_codes),
                "connect_failure_kinds": dict(self.failure_reasons),
                "duplicate_examples": self.duplicates,
            }
        )


async def _commands(worker: Worker, stream: trio.lowlevel.FdStream, nursery: trio.Nursery) -> None:
    buf = b""
    while True:
        while b"\n" not in buf:
            data = await stream.receive_some(65536)
            if not data:
                nursery.cancel_scope.cancel()  # the orchestrator is gone
                return
            buf += data
        line, _, buf = buf.partition(b"\n")
        if not line.strip():
            continue
        command = json.loads(line)
        cmd = command.get("cmd")
        if cmd == "traffic":
            worker.traffic = True
            nursery.start_soon(worker.pace)
        elif cmd == "stop":
            nursery.start_soon(worker.stop)
        elif cmd == "verify":
            nursery.start_soon(worker.verify, command["acked"])
        elif cmd == "exit":
            nursery.cancel_scope.cancel()
            return


async def _read_params(stream: trio.lowlevel.FdStream) -> tuple[dict[str, Any], bytes]:
    buf = b""
    while b"\n" not in buf:
        data = await stream.receive_some(1 << 20)
        if not data:
            raise SystemExit("no parameters on stdin")
        buf += data
    line, _, rest = buf.partition(b"\n")
    params: dict[str, Any] = json.loads(line)
    return params, rest


async def main_async() -> None:
    """Run this process's clients until the orchestrator says ``exit``."""
    stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    params, rest = await _read_params(stream)
    if rest.strip():
        raise SystemExit("unexpected input after the parameters")
    worker = Worker(params)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_commands, worker, stream, nursery)
        for client in worker.clients:
            nursery.start_soon(client.run)
    await stream.aclose()


def main() -> None:
    """Entry point (``python -m tether.bench._recovery_client``)."""
    try:
        trio.run(main_async)
    except Exception as exc:
        emit({"event": "error", "error": repr(exc)})
        raise


if __name__ == "__main__":
    main()
