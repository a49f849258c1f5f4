"""Load-generator process of ``tether bench rooms`` (see tether.bench.rooms).

Reads its parameters as one JSON line on stdin and prints JSON lines:
``{"event": "connected", ...}`` after set-up, ``{"event": "mark", "name": ...}``
at both edges of the measuring window (the orchestrator samples the server's
CPU then), then ``{"event": "result", ...}``, or ``{"event": "error", ...}`` if
set-up fails.
"""

from __future__ import annotations

import gc
import math
import time
from collections import Counter
from typing import Any

import trio

from tether.bench._harness import emit, worker_params
from tether.bench._receiver import (
    SOURCES,
    Peer,
    ProtocolFailure,
    Receiver,
    cpu_seconds,
    expect_reply,
    handshake,
    message_body,
    open_many,
    padding_for,
    request,
    sampling_step,
    send_frame,
)
from tether.bench.wsclient import LeanConnection, encode
from tether.transport.auth import mint_token

#: Publishing is paced by a timer of this period; each tick sends for the
#: clients whose phase falls in it.
_TICK_S = 0.01

#: Unanswered sends one client may have before it skips a turn (the server's
#: limit is 128; a client publishing every few seconds has 0 or 1).
_MAX_IN_FLIGHT = 64

#: Refs 0..15 belong to the set-up.
_FIRST_REF = 16


class Member:
    """One client: a member of one room that publishes to it."""

    __slots__ = ("conn", "errors", "in_flight", "peer", "room", "room_index", "seq")

    def __init__(self, conn: LeanConnection, room: str, room_index: int, errors: Counter[int]):
        self.conn = conn
        self.room = room
        self.room_index = room_index
        self.seq = 0
        self.in_flight = 0
        self.errors = errors
        self.peer: Peer | None = None

    @property
    def closed(self) -> bool:
        """Whether the server closed this client's connection."""
        return self.peer is None or self.peer.closed

    def on_frame(self, _peer: Peer, frame: dict[str, Any]) -> None:
        """Receiver callback: the answer to one of this client's sends."""
        kind = frame.get("t")
        if kind not in ("reply", "error") or not isinstance(frame.get("ref"), int):
            return
        self.in_flight -= 1
        if kind == "error":
            self.errors[int(frame.get("code", 0))] += 1


async def _setup(
    params: dict[str, Any], rx: Receiver, errors: Counter[int]
) -> tuple[list[list[Member]], dict[str, Any]]:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rx.run)
        result = await _build(params, rx, errors)
        # Let the membership pushes of the set-up drain before measuring.
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    return result


async def _build(
    params: dict[str, Any], rx: Receiver, errors: Counter[int]
) -> tuple[list[list[Member]], dict[str, Any]]:
    host, port = params["host"], int(params["port"])
    secret = params["secret"].encode()
    clients, size = int(params["clients"]), int(params["room_size"])
    rooms: list[list[Member]] = [[] for _ in range(math.ceil(clients / size))]
    started = time.monotonic()
    failures: Counter[str] = Counter()

    async def connect(i: int) -> LeanConnection:
        user = f"rooms-{i}"
        return await handshake(
            host, port, user, mint_token(secret, user, ttl_s=7200), source=SOURCES[i % 8]
        )

    def enlist(conn: LeanConnection, room: str, r: int) -> None:
        member = Member(conn, room, r, errors)
        member.peer = rx.add(conn, member.on_frame, subscriber=True)
        rooms[r].append(member)

    async def join(i: int, room: str, r: int) -> None:
        try:
            conn = await connect(i)
        except (OSError, ProtocolFailure) as exc:
            failures[str(exc)[:80]] += 1
            return
        try:
            expect_reply(await request(conn, {"t": "room.join", "ref": 2, "room": room}), "join")
        except (OSError, ProtocolFailure) as exc:
            conn.close()
            failures[str(exc)[:80]] += 1
            return
        enlist(conn, room, r)

    async def build_room(r: int) -> None:
        # The room's first client creates it (public); the others join it.
        first = r * size
        conn = await connect(first)
        try:
            data = expect_reply(
                await request(
                    conn, {"t": "room.create", "ref": 2, "name": f"bench {r}", "kind": "public"}
                ),
                "room.create",
            )
        except BaseException:
            conn.close()
            raise
        room = str(data["room"]["id"])
        enlist(conn, room, r)
        async with trio.open_nursery() as nursery:
            for i in range(first + 1, min(first + size, clients)):
                nursery.start_soon(join, i, room, r)

    built, room_failures = await open_many(len(rooms), build_room, concurrency=20)
    failures.update(room_failures)
    return rooms, {
        "event": "connected",
        "clients": sum(len(members) for members in rooms),
        "rooms": built,
        "failed": sum(failures.values()),
        "failures": dict(failures),
        "setup_s": round(time.monotonic() - started, 3),
    }


def publish(
    rooms: list[list[Member]], rx: Receiver, params: dict[str, Any], errors: Counter[int]
) -> dict[str, Any]:
    """Every client publishes once per interval for warm-up + duration; then drain.

    Returns:
        The figures of the measuring window (see tether.bench.rooms).
    """
    interval = float(params["interval_ms"]) / 1000.0
    warmup, duration = float(params["warmup_s"]), float(params["duration_s"])
    pad = padding_for(int(params["msg_bytes"]))
    members = [m for room in rooms for m in room]
    members.sort(key=lambda m: int(m.conn.user.rsplit("-", 1)[1]))
    slots = max(1, round(interval / _TICK_S))
    # Phases spread evenly over the interval: client i sends in tick i mod slots.
    by_slot: list[list[Member]] = [[] for _ in range(slots)]
    for i, member in enumerate(members):
        by_slot[i % slots].append(member)
    ticks = round((warmup + duration) / _TICK_S)
    measure_tick = round(warmup / _TICK_S)
    per_client = duration / interval
    others = sum(max(0, len(room) - 1) * len(room) for room in rooms)
    every = sampling_step(int(per_client * others), int(params["sample_every"]))

    sent = expected = skipped = stalls = failed_sends = 0
    base = rx.received
    drops0 = sum(rx.disconnects.values())
    max_lag = 0.0
    window: dict[str, float] = {}
    t0 = time.monotonic() + 0.1
    for k in range(ticks + 1):
        due = t0 + k * _TICK_S
        while (now := time.monotonic()) < due:
            rx.poll(due - now)
        if k >= measure_tick:  # lateness inside the measuring window
            max_lag = max(max_lag, now - due)
        if k == measure_tick:
            emit({"event": "mark", "name": "measure-start"})
            rx.start_window(every, sample_from=due)
            window.update(
                t=time.monotonic(), cpu=cpu_seconds(), rx=rx.received, sent=sent, exp=expected
            )
        if k == ticks:
            break  # the end of the last tick: the window closes here
        for member in by_slot[k % slots]:
            if member.closed:
                continue
            if member.in_flight >= _MAX_IN_FLIGHT:
                skipped += 1
                continue
            member.seq += 1
            frame = {
                "t": "msg.send",
                "ref": _FIRST_REF + member.seq % (1 << 31),
                "room": member.room,
                "cid": str(member.seq),
                "body": message_body(member.seq, due, pad),
            }
            member.in_flight += 1
            sent += 1
            expected += sum(1 for m in rooms[member.room_index] if not m.closed) - 1
            try:
                if not send_frame(member.conn.sock, encode(frame)):
                    stalls += 1
            except OSError:
                failed_sends += 1
    t_end, cpu_end, rx_end = time.monotonic(), cpu_seconds(), rx.received
    emit({"event": "mark", "name": "measure-end"})
    span = t_end - window["t"]
    rx.wait_received(base + expected, float(params["drain_s"]))
    sent_window = sent - int(window["sent"])
    latency = rx.samples.summary()
    lost = expected - (rx.received - base)
    return {
        "event": "result",
        "window": ["measure-start", "measure-end"],
        "measured_s": round(span, 3),
        "sent": sent,
        "expected": expected,
        "received": rx.received - base,
        "lost": lost,
        "sent_measured": sent_window,
        "publish_rate": round(sent_window / span, 1),
        "offered_deliveries_per_s": round((expected - window["exp"]) / span, 1),
        "deliveries_per_s": round((rx_end - window["rx"]) / span, 1),
        **latency,
        "sample_every": rx.sample_every,
        "publish_errors": sum(errors.values()),
        "publish_errors_by_code": {str(k): v for k, v in errors.items()},
        "skipped_sends": skipped,
        "send_stalls": stalls,
        "failed_sends": failed_sends,
        "disconnects": sum(rx.disconnects.values()) - drops0,
        "max_tick_lag_ms": round(max_lag * 1000, 3),
        "loadgen_cpu": round((cpu_end - window["cpu"]) / span, 3),
        "other_frames": rx.other_frames,
        "bad_frames": rx.bad_frames,
        "receiver_wakeups": rx.wakeups,
        "socket_reads": rx.reads,
    }


def main(params: dict[str, Any]) -> None:
    """Run the whole scenario in this process (see the module docstring)."""
    rx = Receiver()
    errors: Counter[int] = Counter()
    try:
        rooms, connected = trio.run(_setup, params, rx, errors)
    except (OSError, ProtocolFailure) as exc:
        emit({"event": "error", "error": f"set-up failed: {exc}"})
        return
    emit(connected)
    # Freeze what set-up built and keep the cyclic GC out of the measuring
    # window: with 5,000 connections a full collection would pause this
    # process for tens of ms and show up as server latency.
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        result = publish(rooms, rx, params, errors)
    finally:
        gc.enable()
    emit(result)
    rx.close_all()


if __name__ == "__main__":
    main(worker_params())
