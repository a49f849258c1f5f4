"""Server memory per idle authenticated connection (heartbeats running).

``tether bench idle --connections N`` starts a server, opens N connections
(one user each, so every connection has its user actor and heartbeat timer),
holds them across several heartbeat rounds while answering pings, and reports
the server's RSS growth per connection and how many were still held at the end.
"""

from __future__ import annotations

import argparse
import gc
import time
from typing import Any

from tether.bench._harness import raise_fd_limit, read_json_lines, run_server, start_worker

#: Per-process descriptor budget for one load-generator worker.
_PER_WORKER = 9000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``tether bench idle``."""
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--warm", type=int, default=200, help="connections before the baseline")
    parser.add_argument("--heartbeat", type=float, default=2.0, help="server heartbeat interval")
    parser.add_argument("--rounds", type=float, default=3.0, help="heartbeat rounds to hold")


def _phase(workers: list[Any], name: str, timeout: float) -> list[dict[str, Any]]:
    results = []
    for worker in workers:
        for obj in read_json_lines(worker, timeout):
            if obj.get("phase") == name:
                results.append(obj)
                break
    return results


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the scenario; returns the figures (see the module docstring)."""
    raise_fd_limit()
    interval = float(args.heartbeat)
    settings = {
        "heartbeat_interval": interval,
        "heartbeat_timeout": interval * 2.5,
        "offline_grace": interval * 2.5,
        "max_connections": args.connections + args.warm + 100,
    }
    sources = [f"127.0.0.{i}" for i in range(1, 9)]
    with run_server(settings) as server:
        base = {"host": server.host, "port": server.port, "secret": server.secret}
        base["sources"] = sources
        warm = start_worker(
            "tether.bench._idle_worker",
            {**base, "count": args.warm, "first": 10_000_000, "hold_s": 3600},
        )
        _phase([warm], "connected", 120)
        time.sleep(1.0)
        gc.collect()
        rss_warm = server.rss()
        cpu0 = server.cpu_seconds()
        hold_s = interval * float(args.rounds) + 2.0
        workers = []
        remaining, first = args.connections, 0
        while remaining > 0:
            count = min(_PER_WORKER, remaining)
            workers.append(
                start_worker(
                    "tether.bench._idle_worker",
                    {**base, "count": count, "first": first, "hold_s": hold_s},
                )
            )
            first += count
            remaining -= count
        connected = _phase(workers, "connected", 600)
        connect_cpu = server.cpu_seconds() - cpu0
        rss_connected = server.rss()
        done = _phase(workers, "done", hold_s + 120)
        rss_end = server.rss()
        warm.kill()
    opened = sum(c["opened"] for c in connected)
    held = sum(d["held"] for d in done)
    per_conn = (max(rss_end, rss_connected) - rss_warm) / max(1, opened)
    return {
        "connections": args.connections,
        "opened": opened,
        "failed": sum(c["failed"] for c in connected),
        "held": held,
        "pings_answered": sum(d["pings"] for d in done),
        "heartbeat_interval_s": interval,
        "hold_s": hold_s,
        "connect_s_max": max((c["connect_s"] for c in connected), default=0.0),
        "server_cpu_ms_per_connection": round(connect_cpu * 1000 / max(1, opened), 3),
        "rss_warm_mb": round(rss_warm / 2**20, 1),
        "rss_end_mb": round(rss_end / 2**20, 1),
        "rss_per_connection_kb": round(per_conn / 1024, 2),
    }
