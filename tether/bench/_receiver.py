"""Shared machinery of the message benchmarks (``tether bench fanout`` and ``rooms``).

Worker side (load-generator processes):

* :func:`handshake`, :func:`request` and :func:`open_many`: connection set-up
  in trio on :class:`~tether.bench.wsclient.LeanConnection` (one request at a
  time; frames that are not its answer are dropped, pings answered);
* :class:`Receiver`: reads every client socket of the process from one
  ``epoll`` object, from a trio task during set-up and from the plain
  measuring loops afterwards (:meth:`Receiver.poll`). It counts ``msg`` pushes
  from their WebSocket frame header and the first bytes of the msgpack map
  alone, and fully decodes only a uniform sample of them (every N-th) to read
  the send time the publisher put in the body. Other frames (replies, pings,
  membership pushes) are decoded; pings are answered and the rest handed to
  the connection's callback;
* :func:`message_body`: the body every benchmark message carries,
  ``{"s": seq, "t": time.monotonic() at the scheduled send time, "p": padding}``;
* :func:`send_frame`: a whole frame out of a non-blocking socket;
* :func:`cpu_seconds`: this process's CPU time, for ``loadgen_cpu``.

Orchestrator side: :class:`Meter` turns the ``mark`` lines a worker prints at
the edges of a measuring window into the server's CPU use (psutil on the server
process) and every core's busy time over that window, :func:`bottleneck` names
the saturated side, and :func:`command_line` spells out the exact command.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import resource
import select
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgpack
import psutil
import trio

from tether.bench._harness import ServerProcess, percentile
from tether.bench.wsclient import LeanConnection, client_frame, encode

#: A server ``msg`` push starts with a fixmap header and then these bytes: the
#: key ``"t"`` and the str ``"msg"``. Frames that do not match take the slow
#: path (a full decode), so another key order would cost speed, not counts.
MSG_PREFIX = b"\xa1t\xa3msg"

#: Size of one ``recv``. Above glibc's mmap threshold (128 KiB) every call maps
#: and unmaps its buffer, which costs several times the read itself.
_RECV_BYTES = 65536

#: Socket reads one :meth:`Receiver.poll` makes at most before it returns.
_READS_PER_WAKEUP = 512

#: Latency samples kept per window; beyond it samples replace kept ones at
#: random (reservoir sampling), so the percentiles stay uniform and memory bounded.
SAMPLE_CAPACITY = 200_000

#: Decoded samples wanted per measuring window when choosing the sampling step.
SAMPLE_TARGET = 20_000

#: Source addresses the client sockets are spread over (ephemeral ports and
#: TIME_WAIT entries are per source address).
SOURCES = tuple(f"127.0.0.{i}" for i in range(1, 9))


def cpu_seconds() -> float:
    """User + system CPU seconds this process has used so far."""
    t = os.times()
    return t.user + t.system


def message_body(seq: int, stamp: float, pad: str) -> dict[str, object]:
    """The body of one benchmark message (see the module docstring)."""
    return {"s": seq, "t": stamp, "p": pad}


def padding_for(body_bytes: int) -> str:
    """Padding that makes an encoded :func:`message_body` about ``body_bytes`` long."""
    probe = len(msgpack.packb(message_body(1_000_000, time.monotonic(), "")))
    return "x" * max(0, body_bytes - probe - 2)


def sampling_step(expected: int, most: int) -> int:
    """Decode every N-th ``msg`` push: about :data:`SAMPLE_TARGET` per window, N <= most."""
    return max(1, min(most, expected // SAMPLE_TARGET))


class ProtocolFailure(Exception):
    """The server refused a set-up request or closed the connection."""


def _pop_frame(buf: bytearray) -> tuple[int, bytes] | None:
    """Remove one complete WebSocket frame from ``buf``; None if none is complete."""
    end = len(buf)
    if end < 2:
        return None
    n = buf[1] & 0x7F
    hdr = 2
    if n == 126:
        if end < 4:
            return None
        n = int.from_bytes(buf[2:4], "big")
        hdr = 4
    elif n == 127:
        if end < 10:
            return None
        n = int.from_bytes(buf[2:10], "big")
        hdr = 10
    if end < hdr + n:
        return None
    opcode = buf[0] & 0x0F
    payload = bytes(buf[hdr : hdr + n])
    del buf[: hdr + n]
    return opcode, payload


async def request(conn: LeanConnection, frame: Mapping[str, object]) -> dict[str, Any]:
    """Send one request and return its answer (``welcome``, ``reply`` or ``error``).

    For set-up only: frames that arrive before the answer are dropped (pings are
    answered); frames after it stay buffered in ``conn.buf``.

    Raises:
        ProtocolFailure: if the connection closes first.
    """
    ref = frame["ref"]
    await conn.send_all(encode(dict(frame)))
    while True:
        while (item := _pop_frame(conn.buf)) is not None:
            opcode, payload = item
            if opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                raise ProtocolFailure(f"closed with {code} while waiting for ref {ref}")
            if opcode != 0x2:
                continue
            try:
                answer = msgpack.unpackb(payload)
            except Exception as exc:  # msgpack raises more than UnpackException
                raise ProtocolFailure(f"undecodable frame while waiting for ref {ref}") from exc
            if not isinstance(answer, dict):
                continue
            if answer.get("t") == "ping":
                await conn.send_all(encode({"t": "pong", "n": answer.get("n", 0)}))
            elif answer.get("ref") == ref and answer.get("t") in ("welcome", "reply", "error"):
                return answer
        if not await conn.recv_some():
            raise ProtocolFailure(f"connection lost while waiting for ref {ref}")


async def handshake(
    host: str, port: int, user: str, token: str, *, source: str | None = None
) -> LeanConnection:
    """Open a connection and complete ``hello``/``welcome``.

    Raises:
        OSError: if the connection or the WebSocket upgrade fails.
        ProtocolFailure: if the hello is refused.
    """
    conn = await LeanConnection.open(host, port, user, source=source)
    try:
        answer = await request(conn, {"t": "hello", "ref": 1, "token": token, "device": "bench"})
    except BaseException:
        conn.close()
        raise
    if answer.get("t") != "welcome":
        conn.close()
        raise ProtocolFailure(f"hello refused: {answer}")
    return conn


def expect_reply(answer: Mapping[str, Any], what: str) -> dict[str, Any]:
    """The ``data`` of a ``reply``.

    Raises:
        ProtocolFailure: if ``answer`` is an ``error``.
    """
    if answer.get("t") != "reply":
        raise ProtocolFailure(f"{what} refused: {dict(answer)}")
    data: dict[str, Any] = answer.get("data") or {}
    return data


def send_frame(sock: socket.socket, data: bytes) -> bool:
    """Write a whole frame on a non-blocking socket, blocking only if the kernel is full.

    For the measuring loops, which run outside trio.

    Returns:
        True if it went out at once, False if part of it had to wait.

    Raises:
        OSError: if the socket fails (the peer is gone).
    """
    try:
        n = sock.send(data)
    except BlockingIOError:
        n = 0
    if n == len(data):
        return True
    # Never leave half a frame behind: that would corrupt the stream.
    view = memoryview(data)[n:]
    while view:
        select.select([], [sock], [], 1.0)
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            continue
    return False


FrameCallback = Callable[["Peer", dict[str, Any]], None]


class Peer:
    """One client connection as the :class:`Receiver` sees it."""

    __slots__ = ("closed", "conn", "fd", "on_frame", "rest", "subscriber")

    def __init__(self, conn: LeanConnection, on_frame: FrameCallback | None, subscriber: bool):
        self.conn = conn
        self.fd = conn.sock.fileno()
        self.on_frame = on_frame
        self.subscriber = subscriber
        self.rest = bytes(conn.buf)
        conn.buf.clear()
        self.closed = False


class Samples:
    """A bounded uniform sample of latencies (ms): reservoir sampling past capacity."""

    def __init__(self, capacity: int = SAMPLE_CAPACITY, seed: int = 1) -> None:
        self.capacity = capacity
        self.values: list[float] = []
        self.seen = 0
        self._rng = random.Random(seed)

    def add(self, value: float) -> None:
        """Offer one value."""
        self.seen += 1
        if len(self.values) < self.capacity:
            self.values.append(value)
        else:
            slot = self._rng.randrange(self.seen)
            if slot < self.capacity:
                self.values[slot] = value

    def reset(self) -> None:
        """Forget everything (start of a window)."""
        self.values = []
        self.seen = 0

    def summary(self) -> dict[str, float | int]:
        """p50/p99/p999/max in ms (rounded to µs) and the number of samples."""
        v = self.values
        return {
            "p50_ms": round(percentile(v, 50), 3),
            "p99_ms": round(percentile(v, 99), 3),
            "p999_ms": round(percentile(v, 99.9), 3),
            "max_ms": round(max(v, default=0.0), 3),
            "samples": len(v),
        }


class Receiver:
    """Reads all client sockets of a worker from one epoll object.

    While connections are set up, :meth:`run` reads in a trio task; :meth:`add`
    connections once their set-up requests are answered. The measuring loops
    then run outside trio and call :meth:`poll` (or the ``wait_*`` helpers)
    between their sends. Counters are cumulative; a window reads differences.
    """

    def __init__(self, *, sample_every: int = 50) -> None:
        self._epoll = select.epoll()
        self._peers: dict[int, Peer] = {}
        #: ``msg`` pushes counted so far, and when the last one arrived.
        self.received = 0
        self.last_rx = 0.0
        #: Decode every N-th ``msg`` push for its latency.
        self.sample_every = sample_every
        self._countdown = sample_every
        #: Samples of messages stamped before this monotonic time are ignored.
        self.sample_from = 0.0
        self.samples = Samples()
        #: Subscriber connections still open; closes by code (1006: dropped).
        self.alive = 0
        self.disconnects: Counter[int] = Counter()
        #: Frames that needed a full decode (replies, pings, other pushes).
        self.other_frames = 0
        #: Binary frames that were not msgpack (a server bug if ever non-zero).
        self.bad_frames = 0
        #: Times the receiver task woke up, and socket reads it made.
        self.wakeups = 0
        self.reads = 0

    def add(
        self, conn: LeanConnection, on_frame: FrameCallback | None, *, subscriber: bool
    ) -> Peer:
        """Start reading ``conn``; ``on_frame`` gets its decoded non-``msg`` frames.

        Args:
            conn: a connection whose set-up is done; what it has buffered is kept.
            on_frame: called (in the receiver task) with replies, errors and
                pushes other than ``msg`` and ``ping``.
            subscriber: count it in :attr:`alive` (a receiving member).
        """
        peer = Peer(conn, on_frame, subscriber)
        self._peers[peer.fd] = peer
        self._epoll.register(peer.fd, select.EPOLLIN)
        if subscriber:
            self.alive += 1
        if peer.rest:
            data, peer.rest = peer.rest, b""
            self._parse(peer, data, time.monotonic())
        return peer

    def start_window(self, sample_every: int, sample_from: float = 0.0) -> None:
        """Start a measuring window: forget the samples, set how to take new ones.

        Args:
            sample_every: decode every N-th ``msg`` push from now on.
            sample_from: ignore samples of messages stamped before this time.
        """
        self.sample_every = sample_every
        self._countdown = sample_every
        self.sample_from = sample_from
        self.samples.reset()

    def close_all(self) -> None:
        """Close every connection and the epoll object (outside trio)."""
        for peer in self._peers.values():
            peer.conn.sock.close()
        self._peers.clear()
        self._epoll.close()

    def wait_received(self, target: int, timeout: float) -> bool:
        """Read until :attr:`received` reaches ``target``; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.received < target:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.poll(left)
        return True

    def wait_quiet(self, quiet_s: float, timeout: float) -> bool:
        """Read until no ``msg`` push arrived for ``quiet_s``; False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            idle = now - self.last_rx
            if idle >= quiet_s:
                return True
            if now >= deadline:
                return False
            self.poll(min(quiet_s - idle, deadline - now))

    def pause(self, seconds: float) -> None:
        """Keep reading (answering pings, counting) for ``seconds``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.poll(left)

    async def run(self) -> None:
        """Read until cancelled (used while connections are set up).

        Cancellation: the wait on the epoll object is the only checkpoint.
        """
        while True:
            await trio.lowlevel.wait_readable(self._epoll)
            self.poll(0.0)

    def poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for data, then read what is ready.

        Blocking: the measuring loops call it directly instead of going through
        trio, whose wake-up (a task switch plus re-arming the descriptor) cost
        more than the reads themselves when deliveries trickle in one by one.
        """
        epoll = self._epoll
        peers = self._peers
        parse = self._parse
        self.wakeups += 1
        wait = timeout
        # Read again while sockets keep becoming ready (bounded, so that
        # publishing is not held up for long).
        budget = _READS_PER_WAKEUP
        while budget > 0:
            events = epoll.poll(wait, 1024)
            if not events:
                break
            wait = 0.0
            budget -= len(events)
            self.reads += len(events)
            now = time.monotonic()
            for fd, _mask in events:
                peer = peers.get(fd)
                if peer is None:
                    continue
                try:
                    data = peer.conn.sock.recv(_RECV_BYTES)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._drop(peer, 1006)
                    continue
                if peer.rest:
                    data = peer.rest + data
                    peer.rest = b""
                parse(peer, data, now)

    def _parse(self, peer: Peer, data: bytes, now: float) -> None:
        # The hot loop: frame headers only, and a prefix test for `msg`.
        pos = 0
        end = len(data)
        counted = 0
        prefix = MSG_PREFIX
        while end - pos >= 2:
            n = data[pos + 1] & 0x7F
            hdr = 2
            if n == 126:
                if end - pos < 4:
                    break
                n = (data[pos + 2] << 8) | data[pos + 3]
                hdr = 4
            elif n == 127:
                if end - pos < 10:
                    break
                n = int.from_bytes(data[pos + 2 : pos + 10], "big")
                hdr = 10
            start = pos + hdr
            stop = start + n
            if stop > end:
                break
            pos = stop
            opcode = data[start - hdr] & 0x0F
            if opcode == 0x2 and data.startswith(prefix, start + 1):
                counted += 1
                self._countdown -= 1
                if self._countdown <= 0:
                    self._countdown = self.sample_every
                    self._sample(data[start:stop], now)
            else:
                self._other(peer, opcode, data[start:stop], now)
                if peer.closed:
                    break
        if pos < end and not peer.closed:
            peer.rest = data[pos:]
        if counted:
            self.received += counted
            self.last_rx = now

    def _sample(self, frame: Any, now: float) -> None:
        if isinstance(frame, bytes):
            frame = self._decode(frame)
        body = frame.get("body") if isinstance(frame, dict) else None
        stamp = body.get("t") if isinstance(body, dict) else None
        if isinstance(stamp, float) and stamp >= self.sample_from:
            self.samples.add((now - stamp) * 1000.0)

    def _other(self, peer: Peer, opcode: int, payload: bytes, now: float) -> None:
        if opcode == 0x8:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self._drop(peer, code)
            return
        if opcode == 0x9:  # a WebSocket-level ping
            self._reply(peer, client_frame(payload, 0xA))
            return
        if opcode != 0x2:
            return
        self.other_frames += 1
        frame = self._decode(payload)
        if not isinstance(frame, dict):
            return
        kind = frame.get("t")
        if kind == "msg":  # a msg push in another key order: counted all the same
            self.received += 1
            self.last_rx = now
            self._countdown -= 1
            if self._countdown <= 0:
                self._countdown = self.sample_every
                self._sample(frame, now)
        elif kind == "ping":
            self._reply(peer, encode({"t": "pong", "n": frame.get("n", 0)}))
        elif peer.on_frame is not None:
            peer.on_frame(peer, frame)

    def _reply(self, peer: Peer, data: bytes) -> None:
        try:
            send_frame(peer.conn.sock, data)
        except OSError:
            self._drop(peer, 1006)

    def _decode(self, payload: bytes) -> Any:
        try:
            return msgpack.unpackb(payload)
        except Exception:  # msgpack raises more than UnpackException (see its docs)
            self.bad_frames += 1
            return None

    def _drop(self, peer: Peer, code: int) -> None:
        if peer.closed:
            return
        peer.closed = True
        self.disconnects[code] += 1
        if peer.subscriber:
            self.alive -= 1
        self._peers.pop(peer.fd, None)
        with contextlib.suppress(OSError, ValueError):
            self._epoll.unregister(peer.fd)
        # Not conn.close(): that notifies trio, and the measuring loops run
        # outside it. No trio task waits on a socket once it is added here.
        peer.conn.sock.close()


async def open_many(
    count: int,
    open_one: Callable[[int], Any],
    *,
    concurrency: int = 100,
) -> tuple[int, Counter[str]]:
    """Run ``await open_one(i)`` for i in range(count), ``concurrency`` at a time.

    Returns:
        (successes, failures by reason); a failure is an OSError or ProtocolFailure.
    """
    limiter = trio.CapacityLimiter(concurrency)
    failures: Counter[str] = Counter()
    done = 0

    async def one(i: int) -> None:
        nonlocal done
        async with limiter:
            try:
                await open_one(i)
            except (OSError, ProtocolFailure) as exc:
                failures[str(exc)[:80]] += 1
            else:
                done += 1

    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, i)
    return done, failures


# -- orchestrator side ------------------------------------------------------------


def _core_total(t: Any) -> float:
    # guest and guest_nice are already inside user and nice in /proc/stat.
    return float(t.user + t.nice + t.system + t.idle + t.iowait + t.irq + t.softirq + t.steal)


class Meter:
    """Server and machine CPU over windows that a worker delimits with marks.

    A worker prints ``{"event": "mark", "name": ...}`` at the start and end of
    each measuring window; the orchestrator calls :meth:`mark` as it reads the
    line (a pipe away: well under a millisecond), sampling the server's CPU
    seconds (psutil, all threads) and every core's busy, softirq and steal time
    (``/proc/stat``: loopback TCP work done in softirq context is charged to a
    core, not to the process, and other work on the machine shows there too).
    """

    def __init__(self, server: ServerProcess) -> None:
        self._server = server
        self._marks: dict[str, tuple[float, float, list[Any]]] = {}

    def mark(self, name: str) -> None:
        """Record the server's CPU seconds and the per-core times now under ``name``."""
        self._marks[name] = (
            self._server.cpu_seconds(),
            time.monotonic(),
            psutil.cpu_times(percpu=True),
        )

    def window(self, start: str, end: str) -> dict[str, Any]:
        """``server_cpu`` (fraction of one core) and ``cores`` between two marks.

        Returns:
            ``{"server_cpu": float | None, "cores": [{"cpu", "busy", "softirq",
            "steal"}, ...]}``, fractions of each core's time; None and an
            empty list when a mark is missing.
        """
        if start not in self._marks or end not in self._marks:
            return {"server_cpu": None, "cores": []}
        cpu0, t0, cores0 = self._marks[start]
        cpu1, t1, cores1 = self._marks[end]
        cores = []
        for index, (a, b) in enumerate(zip(cores0, cores1, strict=True)):
            total = _core_total(b) - _core_total(a)
            if total <= 0:
                continue
            idle = (b.idle + b.iowait) - (a.idle + a.iowait)
            cores.append(
                {
                    "cpu": index,
                    "busy": round(1 - idle / total, 3),
                    "softirq": round((b.softirq - a.softirq) / total, 3),
                    "steal": round((b.steal - a.steal) / total, 3),
                }
            )
        server = round((cpu1 - cpu0) / (t1 - t0), 3) if t1 > t0 else None
        return {"server_cpu": server, "cores": cores}


def bottleneck(record: Mapping[str, Any], server_core: int = 0, loadgen_core: int = 1) -> str:
    """Which side was saturated in a window: "server", "loadgen", "both" or "neither".

    A side is saturated when its process used at least 90 % of a core or its
    (pinned) core was at least 95 % busy, softirq and other processes included.
    """

    def core_busy(index: int) -> float:
        for core in record.get("cores") or []:
            if core["cpu"] == index:
                return float(core["busy"])
        return 0.0

    server = (record.get("server_cpu") or 0.0) >= 0.9 or core_busy(server_core) >= 0.95
    loadgen = (record.get("loadgen_cpu") or 0.0) >= 0.9 or core_busy(loadgen_core) >= 0.95
    if server and loadgen:
        return "both"
    return "server" if server else "loadgen" if loadgen else "neither"


def command_line(scenario: str, args: argparse.Namespace, flags: Iterable[str]) -> str:
    """The full ``tether bench`` command that reproduces a run (every flag spelled out)."""
    parts = ["tether", "bench", scenario]
    if getattr(args, "json", False):
        parts.append("--json")
    for dest in flags:
        value = getattr(args, dest)
        if isinstance(value, list | tuple):
            value = ",".join(str(v) for v in value)
        parts += [f"--{dest.replace('_', '-')}", str(value)]
    return " ".join(parts)


def check_fd_limit(needed: int) -> None:
    """Check that one process may hold ``needed`` sockets (its hard descriptor limit).

    Raises:
        RuntimeError: naming the limit and what was needed.
    """
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and needed + 64 > hard:
        raise RuntimeError(f"Expected a descriptor limit above {needed + 64}, got {hard}")


def rates_arg(text: str) -> list[int]:
    """Parse ``10,20,50`` into a list of positive ints (an argparse type)."""
    try:
        rates = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"Expected comma-separated ints, got {text!r}") from None
    if not rates or min(rates) <= 0:
        raise argparse.ArgumentTypeError(f"Expected positive rates, got {text!r}")
    return rates
