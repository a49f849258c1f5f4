"""Load-generator process of ``tether bench presence`` (see tether.bench.presence)."""

from __future__ import annotations

import random
import time
from collections import defaultdict
from typing import Any

import msgpack
import trio

from tether.bench._harness import emit, worker_params
from tether.bench.wsclient import LeanConnection, encode
from tether.transport.auth import mint_token


class Device:
    """One device connection of a simulated user."""

    __slots__ = ("conn", "device", "frozen", "user")

    def __init__(self, user: str, device: str) -> None:
        self.user = user
        self.device = device
        self.conn: LeanConnection | None = None
        self.frozen = False


class Observers:
    """Connections that watch every simulated user and log presence events."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, str]] = []
        self.count_by_phase: dict[str, int] = defaultdict(int)
        self.phase = "setup"

    def record(self, user: str, status: str) -> None:
        self.events.append((time.monotonic(), user, status))
        self.count_by_phase[self.phase] += 1


async def _pump(conn: LeanConnection, on_frame: Any, device: Device | None = None) -> None:
    """Read frames, answer pings (unless frozen), hand the rest to on_frame."""
    while True:
        if device is not None and device.frozen:
            return  # a vanished client: never reads nor answers again
        if not await conn.recv_some():
            return
        for payload in conn.feed():
            msg = msgpack.unpackb(payload)
            kind = msg.get("t")
            if kind == "ping":
                if device is None or not device.frozen:
                    conn.send_nowait(encode({"t": "pong", "n": msg.get("n", 0)}))
            else:
                on_frame(msg)
        if conn.close_code is not None:
            return


async def main(params: dict[str, Any]) -> None:
    host, port = params["host"], int(params["port"])
    secret = params["secret"].encode()
    users = [f"p{i}" for i in range(int(params["users"]))]
    per_user = int(params["devices"])
    grace = float(params["grace"])
    sources = [f"127.0.0.{i}" for i in range(1, 9)]
    rng = random.Random(7)
    observers = Observers()
    tokens = {u: mint_token(secret, u, ttl_s=3600) for u in users}

    async def open_conn(user: str, device: str, token: str | None = None) -> LeanConnection:
        conn = await LeanConnection.open(host, port, user, source=rng.choice(sources))
        await conn.hello(token or tokens[user], device=device)
        return conn

    def ignore(_msg: dict[str, Any]) -> None:
        return None

    def on_observer_frame(msg: dict[str, Any]) -> None:
        if msg.get("t") == "presence":
            observers.record(msg["user"], msg["status"])

    async with trio.open_nursery() as nursery:
        # -- observers watch every user ---------------------------------------
        for o in range(int(params["observers"])):
            conn = await open_conn(f"observer{o}", "d0", mint_token(secret, f"observer{o}"))
            for start in range(0, len(users), 100):
                chunk = users[start : start + 100]
                await conn.send_all(
                    encode({"t": "presence.subscribe", "ref": 10 + start, "users": chunk})
                )
            nursery.start_soon(_pump, conn, on_observer_frame)

        # -- every user connects all devices -----------------------------------
        devices = [Device(u, f"d{d}") for u in users for d in range(per_user)]
        limiter = trio.CapacityLimiter(100)

        async def connect(dev: Device) -> None:
            async with limiter:
                dev.conn = await open_conn(dev.user, dev.device)
            nursery.start_soon(_pump, dev.conn, ignore, dev)

        async with trio.open_nursery() as connecting:
            for dev in devices:
                connecting.start_soon(connect, dev)
        await trio.sleep(1.0)

        # -- flap: abrupt drops, reconnect inside the grace period ----------------
        observers.phase = "flap"
        by_user: dict[str, list[Device]] = defaultdict(list)
        for dev in devices:
            by_user[dev.user].append(dev)
        flap_users = users[: len(users) // 2]
        vanish_users = users[len(users) // 2 : len(users) // 2 + int(params["vanish"])]
        close_users = users[
            len(users) // 2 + int(params["vanish"]) : len(users) // 2 + 2 * int(params["vanish"])
        ]
        flap_deadline = time.monotonic() + float(params["flap_s"])
        drops = 0

        async def flap_user(user: str) -> None:
            nonlocal drops
            while time.monotonic() < flap_deadline:
                await trio.sleep(rng.uniform(0.2, 1.5))
                # all devices at once (the no-flap case) or a single one
                victims = by_user[user] if rng.random() < 0.5 else [rng.choice(by_user[user])]
                for dev in victims:
                    assert dev.conn is not None
                    dev.conn.close()  # no close frame
                    drops += 1
                await trio.sleep(rng.uniform(0.0, grace * 0.4))
                for dev in victims:
                    dev.conn = await open_conn(dev.user, dev.device)
                    nursery.start_soon(_pump, dev.conn, ignore, dev)

        async with trio.open_nursery() as flapping:
            for user in flap_users:
                flapping.start_soon(flap_user, user)
        await trio.sleep(grace + 1.0)  # any late (spurious) offline would show now
        spurious = [e for e in observers.events if e[1] in set(flap_users) and e[2] == "offline"]

        # -- vanish (half-open) and abrupt close: time until offline --------------
        observers.phase = "offline"
        dropped_at: dict[str, float] = {}
        for user in vanish_users:
            dropped_at[user] = time.monotonic()
            for dev in by_user[user]:
                dev.frozen = True  # stops reading and answering; socket stays open
        closed_at: dict[str, float] = {}
        for user in close_users:
            closed_at[user] = time.monotonic()
            for dev in by_user[user]:
                assert dev.conn is not None
                dev.conn.close()
        wait_until = time.monotonic() + float(params["expected_offline_s"]) * 2 + 5
        while time.monotonic() < wait_until:
            seen = {e[1] for e in observers.events if e[2] == "offline"}
            if set(vanish_users) <= seen and set(close_users) <= seen:
                break
            await trio.sleep(0.1)
        first_offline: dict[str, float] = {}
        for ts, user, status in observers.events:
            if status == "offline" and user not in first_offline:
                first_offline[user] = ts
        vanish_detect = [
            first_offline[u] - dropped_at[u] for u in vanish_users if u in first_offline
        ]
        close_detect = [first_offline[u] - closed_at[u] for u in close_users if u in first_offline]

        # -- throughput: status flips (away/online) fanned out to observers --------
        observers.phase = "throughput"
        active = [u for u in users if u not in set(vanish_users) | set(close_users)]
        for user in active:
            for dev in by_user[user][1:]:
                assert dev.conn is not None
                dev.conn.send_nowait(encode({"t": "presence.set", "status": "idle"}))
        await trio.sleep(1.0)
        before = observers.count_by_phase["throughput"]
        flip_deadline = time.monotonic() + float(params["throughput_s"])
        flips = 0
        t0 = time.monotonic()
        while time.monotonic() < flip_deadline:
            for user in active:
                dev = by_user[user][0]
                assert dev.conn is not None
                status = "idle" if flips % 2 == 0 else "active"
                dev.conn.send_nowait(encode({"t": "presence.set", "status": status}))
            flips += 1
            # stay under the per-connection frame rate limit (50/s by default)
            await trio.sleep(max(0.0, 1 / 40 - 0.0))
        await trio.sleep(1.0)
        elapsed = time.monotonic() - t0
        delivered = observers.count_by_phase["throughput"] - before
        emit(
            {
                "devices_connected": len(devices),
                "drops": drops,
                "spurious_offline": len(spurious),
                "vanished_users": len(vanish_users),
                "vanished_detected": len(vanish_detect),
                "offline_detect_s_max": round(max(vanish_detect, default=-1.0), 3),
                "offline_detect_s_min": round(min(vanish_detect, default=-1.0), 3),
                "closed_users": len(close_users),
                "offline_after_close_s_max": round(max(close_detect, default=-1.0), 3),
                "presence_changes_sent": flips * len(active),
                "presence_events_delivered": delivered,
                "presence_events_per_s": round(delivered / elapsed, 1),
            }
        )
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, worker_params())
