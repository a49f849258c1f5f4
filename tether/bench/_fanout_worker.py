"""Load-generator process of ``tether bench fanout`` (see tether.bench.fanout).

Reads its parameters as one JSON line on stdin and prints JSON lines:
``{"event": "connected", ...}`` after set-up, ``{"event": "warm", ...}`` after
the warm-up, ``{"event": "mark", "name": ...}`` at the edges of every measuring
window (the orchestrator samples the server's CPU then), ``{"event": "step",
...}`` per step attempt and ``{"event": "done", ...}`` at the end; or
``{"event": "error", "error": ...}`` when set-up or the publisher fails.

Set-up runs in trio (connections are opened concurrently); the warm-up and the
steps run in one plain loop that alternates sends with :meth:`Receiver.poll`,
which costs about half the CPU per delivery of waking a trio task.
"""

from __future__ import annotations

import gc
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

#: Refs below this belong to the set-up; message refs start here.
_FIRST_REF = 16


class Publisher:
    """The publishing connection: ``msg.send`` with a bounded number in flight.

    Replies and errors come back through the :class:`Receiver` (``on_frame``).
    """

    def __init__(self, conn: LeanConnection, room: str, window: int, pad: str) -> None:
        self.conn = conn
        self.room = room
        self.window = window
        self.pad = pad
        self.seq = 0
        self.in_flight = 0
        self.replies = 0
        self.errors: Counter[int] = Counter()
        #: Times a due message found the window full.
        self.window_waits = 0
        self.peer: Peer | None = None

    @property
    def closed(self) -> bool:
        """Whether the server closed the publishing connection."""
        return self.peer is not None and self.peer.closed

    @property
    def full(self) -> bool:
        """Whether ``window`` sends await their answer."""
        return self.in_flight >= self.window

    def on_frame(self, _peer: Peer, frame: dict[str, Any]) -> None:
        """Receiver callback: count a reply or an error to one of our sends."""
        kind = frame.get("t")
        if kind not in ("reply", "error") or not isinstance(frame.get("ref"), int):
            return
        self.in_flight -= 1
        if kind == "reply":
            self.replies += 1
        else:
            self.errors[int(frame.get("code", 0))] += 1

    def send(self, stamp: float) -> None:
        """Send one message stamped ``stamp`` (its scheduled send time).

        Raises:
            ProtocolFailure: if the publishing connection is gone.
        """
        if self.closed:
            raise ProtocolFailure("the server closed the publishing connection")
        self.seq += 1
        frame = {
            "t": "msg.send",
            "ref": _FIRST_REF + self.seq % (1 << 31),
            "room": self.room,
            "cid": str(self.seq),
            "body": message_body(self.seq, stamp, self.pad),
        }
        self.in_flight += 1
        try:
            send_frame(self.conn.sock, encode(frame))
        except OSError as exc:
            raise ProtocolFailure(f"publishing failed: {exc}") from exc


def publish_paced(pub: Publisher, rx: Receiver, rate: int, duration: float) -> int:
    """Send ``rate * duration`` messages on a fixed schedule, reading in between.

    Message k is due at start + k / rate and stamped with that time, not the
    time it left, so a publisher held back by a full window or a late wake-up
    is charged to latency (no coordinated omission). Lasts at least ``duration``.

    Returns:
        The number of messages sent.

    Raises:
        ProtocolFailure: if the publishing connection is gone.
    """
    total = max(1, round(rate * duration))
    t0 = time.monotonic()
    end = t0 + duration
    k = 0
    blocked = False
    while True:
        now = time.monotonic()
        while k < total and t0 + k / rate <= now:
            if pub.full:
                if not blocked:
                    pub.window_waits += 1
                    blocked = True
                break
            blocked = False
            pub.send(t0 + k / rate)
            k += 1
        if k >= total and now >= end:
            return k
        if k < total and not pub.full:
            wake = min(t0 + k / rate, end)
        else:
            # Window full (a reply wakes us) or all sent (wait out the step).
            wake = end if k >= total else now + 0.05
        rx.poll(max(0.0, wake - now))
        if pub.closed:
            raise ProtocolFailure("the server closed the publishing connection")


async def _setup(params: dict[str, Any]) -> tuple[Receiver, Publisher, dict[str, Any]]:
    host, port = params["host"], int(params["port"])
    secret = params["secret"].encode()
    subscribers = int(params["subscribers"])
    pad = padding_for(int(params["msg_bytes"]))
    started = time.monotonic()
    rx = Receiver()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rx.run)
        token = mint_token(secret, "fanout-pub", ttl_s=7200)
        conn = await handshake(host, port, "fanout-pub", token)
        answer = await request(
            conn, {"t": "room.create", "ref": 2, "name": "bench fanout", "kind": "public"}
        )
        room = str(expect_reply(answer, "room.create")["room"]["id"])
        pub = Publisher(conn, room, int(params["window"]), pad)
        pub.peer = rx.add(conn, pub.on_frame, subscriber=False)

        async def join(i: int) -> None:
            user = f"fanout-sub-{i}"
            sub = await handshake(
                host, port, user, mint_token(secret, user, ttl_s=7200), source=SOURCES[i % 8]
            )
            try:
                answer = await request(sub, {"t": "room.join", "ref": 2, "room": room})
                expect_reply(answer, "room.join")
            except BaseException:
                sub.close()
                raise
            rx.add(sub, None, subscriber=True)

        joined, failures = await open_many(subscribers, join)
        nursery.cancel_scope.cancel()
    return (
        rx,
        pub,
        {
            "event": "connected",
            "room": room,
            "subscribers": joined,
            "failed": sum(failures.values()),
            "failures": dict(failures),
            "setup_s": round(time.monotonic() - started, 3),
        },
    )


def warm_up(pub: Publisher, rx: Receiver, messages: int, max_s: float) -> dict[str, Any]:
    """Send messages one at a time, each waited for (<= 3 s) at every subscriber.

    Warms both sides at the server's own pace and leaves no backlog.
    """
    t0 = time.monotonic()
    sent = complete = 0
    for _ in range(messages):
        if time.monotonic() - t0 > max_s:
            break
        target = rx.received + rx.alive
        pub.send(time.monotonic())
        sent += 1
        complete += rx.wait_received(target, 3.0)
    rx.wait_quiet(0.5, 5.0)
    rx.pause(1.0)
    return {
        "warmup_msgs": sent,
        "warmup_complete": complete,
        "warmup_s": round(time.monotonic() - t0, 3),
    }


def run_step(
    pub: Publisher, rx: Receiver, params: dict[str, Any], rate: int, *, index: int, attempt: int
) -> dict[str, Any]:
    """Publish at ``rate`` for one step, drain, and return the step's figures."""
    step_s = float(params["step_s"])
    subscribers = rx.alive
    offered = round(rate * step_s) * subscribers
    rx.start_window(sampling_step(offered, int(params["sample_every"])))
    base = rx.received
    errors0 = sum(pub.errors.values())
    waits0 = pub.window_waits
    drops0 = sum(rx.disconnects.values())
    name = f"step{index}"

    emit({"event": "mark", "name": f"{name}-start"})
    cpu0, t0 = cpu_seconds(), time.monotonic()
    sent = publish_paced(pub, rx, rate, step_s)
    t_pub_end = time.monotonic()
    expected = sent * subscribers
    rx.wait_received(base + expected, float(params["drain_s"]))
    cpu1, t1 = cpu_seconds(), time.monotonic()
    emit({"event": "mark", "name": f"{name}-end"})

    received = rx.received - base
    span = max(rx.last_rx, t_pub_end) - t0
    latency = rx.samples.summary()
    lost = expected - received
    disconnects = sum(rx.disconnects.values()) - drops0
    passed = (
        lost <= 0
        and latency["samples"] > 0
        and latency["p99_ms"] < float(params["p99_ms"])
        and disconnects == 0
    )
    return {
        "event": "step",
        "window": [f"{name}-start", f"{name}-end"],
        "rate": rate,
        "attempt": attempt,
        "sent": sent,
        "subscribers": subscribers,
        "expected": expected,
        "received": received,
        "lost": lost,
        "deliveries_per_s": round(received / span, 1) if span > 0 else 0.0,
        **latency,
        "sample_every": rx.sample_every,
        "publish_errors": sum(pub.errors.values()) - errors0,
        "window_waits": pub.window_waits - waits0,
        "disconnects": disconnects,
        "loadgen_cpu": round((cpu1 - cpu0) / (t1 - t0), 3),
        "pass": passed,
    }


def run_steps(pub: Publisher, rx: Receiver, params: dict[str, Any]) -> None:
    """Step the rate up; stop at the first step that still fails after its retries."""
    index = 0
    for rate in params["rates"]:
        record: dict[str, Any] = {}
        for attempt in range(int(params["retries"]) + 1):
            # A clean boundary: whatever a failed attempt left in flight
            # arrives before the next window opens.
            rx.wait_quiet(0.3, 10.0)
            record = run_step(pub, rx, params, int(rate), index=index, attempt=attempt)
            index += 1
            emit(record)
            if record["pass"] or rx.alive == 0 or pub.closed:
                break
            rx.pause(1.0)
        if not record["pass"]:
            return


def main(params: dict[str, Any]) -> None:
    """Run the whole scenario in this process (see the module docstring)."""
    try:
        rx, pub, connected = trio.run(_setup, params)
    except (OSError, ProtocolFailure) as exc:
        emit({"event": "error", "error": f"set-up failed: {exc}"})
        return
    emit(connected)
    # The cyclic GC would pause this process (and so skew latencies) for tens
    # of ms with a thousand connections: freeze what set-up built, and measure
    # without it (the measuring loop creates no reference cycles).
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        emit({"event": "warm", **warm_up(pub, rx, int(params["warmup_msgs"]), 10.0)})
        run_steps(pub, rx, params)
    except ProtocolFailure as exc:
        emit({"event": "error", "error": str(exc)})
    finally:
        gc.enable()
    emit(
        {
            "event": "done",
            "publisher_errors": {str(k): v for k, v in pub.errors.items()},
            "disconnects": {str(k): v for k, v in rx.disconnects.items()},
            "other_frames": rx.other_frames,
            "bad_frames": rx.bad_frames,
            "receiver_wakeups": rx.wakeups,
            "socket_reads": rx.reads,
        }
    )
    rx.close_all()


if __name__ == "__main__":
    main(worker_params())
