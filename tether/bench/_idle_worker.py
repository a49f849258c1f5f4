"""Load-generator process of ``tether bench idle`` (and a building block of others).

Reads its parameters as one JSON line on stdin; opens ``count`` authenticated
connections (one user each), answers server heartbeats, and reports JSON lines:
``{"phase": "connected", ...}`` once all are open, ``{"phase": "done", ...}``
after holding them ``hold_s`` seconds.
"""

from __future__ import annotations

import time
from typing import Any

import msgpack
import trio

from tether.bench._harness import emit, worker_params
from tether.bench.wsclient import LeanConnection, encode
from tether.transport.auth import mint_token


async def _hold(conn: LeanConnection, stats: dict[str, int], stop: trio.Event) -> None:
    while not stop.is_set():
        if not await conn.recv_some():
            stats["closed"] += 1
            return
        for payload in conn.feed():
            msg = msgpack.unpackb(payload)
            if msg.get("t") == "ping":
                stats["pings"] += 1
                conn.send_nowait(encode({"t": "pong", "n": msg.get("n", 0)}))
        if conn.close_code is not None:
            stats["closed"] += 1
            return


async def main(params: dict[str, Any]) -> None:
    host, port = params["host"], int(params["port"])
    secret = params["secret"].encode()
    count, first = int(params["count"]), int(params.get("first", 0))
    sources: list[str] = params.get("sources", ["127.0.0.1"])
    conns: list[LeanConnection] = []
    failed = 0
    limiter = trio.CapacityLimiter(int(params.get("concurrency", 100)))
    started = time.monotonic()

    stats = {"pings": 0, "closed": 0}
    stop = trio.Event()

    async def open_one(i: int, nursery: trio.Nursery) -> None:
        nonlocal failed
        async with limiter:
            user = f"u{first + i}"
            try:
                conn = await LeanConnection.open(host, port, user, source=sources[i % len(sources)])
                await conn.hello(mint_token(secret, user, ttl_s=3600), device="d0")
            except OSError:
                failed += 1
                return
            conns.append(conn)
        # Answer heartbeats from the start: connecting all of them takes longer
        # than the server's heartbeat timeout.
        nursery.start_soon(_hold, conn, stats, stop)

    async with trio.open_nursery() as holders:
        async with trio.open_nursery() as openers:
            for i in range(count):
                openers.start_soon(open_one, i, holders)
        emit(
            {
                "phase": "connected",
                "opened": len(conns),
                "failed": failed,
                "connect_s": round(time.monotonic() - started, 3),
            }
        )
        await trio.sleep(float(params["hold_s"]))
        stop.set()
        holders.cancel_scope.cancel()
    held = sum(1 for c in conns if c.close_code is None)
    emit({"phase": "done", "held": held, "pings": stats["pings"], "closed": stats["closed"]})
    for conn in conns:
        conn.close()


if __name__ == "__main__":
    trio.run(main, worker_params())
