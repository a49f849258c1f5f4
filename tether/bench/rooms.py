"""Many rooms: 5,000 clients in 500 rooms of 10, each publishing at a low rate.

``tether bench rooms`` reproduces workload W2 of ``shared/bench-peers`` against
tether's real protocol. It starts ``tether serve`` pinned to CPU 0 (default
settings) and one load-generator process pinned to CPU 1, which:

1. opens ``--clients`` connections, each its own user, spread over the source
   addresses 127.0.0.1..8; the first client of every group of ``--room-size``
   creates a public room and the others ``room.join`` it;
2. has every client send one ``msg.send`` to its room per ``--interval-ms``,
   phases spread evenly over the interval (client i sends in the 10 ms tick
   i mod interval/10 ms), for ``--warmup-s`` (not measured) then
   ``--duration-s`` (the measuring window);
3. waits up to ``--drain-s`` for the last deliveries.

Each message reaches the other members' connections as a ``msg`` push; the
sending connection gets the ``reply`` instead (protocol rule), so one message
makes ``room size - 1`` deliveries: with the defaults, 1,000 msgs/s in and
9,000 deliveries/s out. (bench-peers' W2 counts the sender's own copy too,
10,000/s; the adapter in ``benchmarks/`` maps the reply to that copy.)

Every message body is ``{"s": seq, "t": scheduled send time (time.monotonic()),
"p": padding}``; the same process sends and receives, so latency = receive time
- ``t`` has no clock skew and includes any lateness of the sender. The receiver
is lean: one epoll for all sockets, read by a plain loop between the 10 ms
publishing ticks (no task switch per wake-up); a ``msg`` push is counted from
its WebSocket header and first map bytes, and only every N-th push is decoded
(N chosen for about 20,000 samples, at most ``--sample-every``); samples of
messages sent during the warm-up are left out. Garbage collection is off in the
load generator while it measures.

Figures: ``deliveries_per_s`` (pushes received during the window / window),
``p50_ms``/``p99_ms`` (target: p99 < 50 ms), ``lost`` (expected - received after
the drain, over the whole run; expected = for each send, the members of its
room then connected, minus the sender), ``server_cpu`` (psutil on the server
process) and ``loadgen_cpu`` (the worker's ``os.times()``), both fractions of
one core over the window, with ``cores`` and ``bottleneck`` as in ``tether
bench fanout``; ``clients`` and ``rooms`` actually set up; ``pass`` (no loss,
no disconnect, no refused send, p99 under ``--p99-target-ms``); ``command``.
One load-generator process (``loadgen_processes``): on this two-core machine it
owns one core whatever the number of processes, and 5,000 sockets fit one
process's descriptor limit.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

from tether.bench._harness import raise_fd_limit, read_json_lines, run_server, start_worker
from tether.bench._receiver import Meter, bottleneck, check_fd_limit, command_line

_WORKER = "tether.bench._rooms_worker"

#: Flags in the order ``command`` spells them.
_FLAGS = (
    "clients",
    "room_size",
    "interval_ms",
    "warmup_s",
    "duration_s",
    "drain_s",
    "msg_bytes",
    "sample_every",
    "p99_target_ms",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``tether bench rooms``."""
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--room-size", type=int, default=10)
    parser.add_argument("--interval-ms", type=float, default=5000.0, help="per client")
    parser.add_argument("--warmup-s", type=float, default=5.0, help="publishing, not measured")
    parser.add_argument("--duration-s", type=float, default=30.0, help="the measuring window")
    parser.add_argument("--drain-s", type=float, default=3.0, help="wait for late deliveries")
    parser.add_argument("--msg-bytes", type=int, default=100, help="encoded body size")
    parser.add_argument(
        "--sample-every", type=int, default=50, help="decode at most every N-th push"
    )
    parser.add_argument("--p99-target-ms", type=float, default=50.0, help="pass: p99 below")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the scenario; returns the figures (see the module docstring).

    Raises:
        RuntimeError: if the server or the load generator fails.
    """
    if args.room_size < 2:
        raise RuntimeError(f"Expected --room-size of at least 2, got {args.room_size}")
    for name in ("clients", "interval_ms", "duration_s", "sample_every"):
        if getattr(args, name) <= 0:
            raise RuntimeError(
                f"Expected a positive --{name.replace('_', '-')}, got {getattr(args, name)}"
            )
    raise_fd_limit()
    check_fd_limit(args.clients)
    settings: dict[str, object] = {"max_connections": args.clients + 100}
    params = {name: getattr(args, name) for name in _FLAGS}
    # Set-up (about 1 ms of server CPU per connection and join) plus the run.
    timeout = 120 + args.clients / 50 + args.warmup_s + args.duration_s + args.drain_s
    setup: dict[str, Any] = {}
    result: dict[str, Any] = {}
    load_before = os.getloadavg()
    with run_server(settings) as server:
        meter = Meter(server)
        worker = start_worker(
            _WORKER, {**params, "host": server.host, "port": server.port, "secret": server.secret}
        )
        try:
            for obj in read_json_lines(worker, timeout):
                event = obj.pop("event", None)
                if event == "mark":
                    meter.mark(obj["name"])
                elif event == "connected":
                    setup = obj
                elif event == "result":
                    obj.update(meter.window(*obj.pop("window")))
                    obj["bottleneck"] = bottleneck(obj)
                    result = obj
                elif event == "error":
                    raise RuntimeError(f"rooms load generator: {obj['error']}")
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    if not result:
        raise RuntimeError("the rooms load generator reported no result")
    head = {
        key: result.pop(key)
        for key in ("deliveries_per_s", "p50_ms", "p99_ms", "lost", "server_cpu", "loadgen_cpu")
    }
    passed = (
        head["lost"] <= 0
        and result["samples"] > 0
        and head["p99_ms"] < args.p99_target_ms
        and result["disconnects"] == 0
        and result["publish_errors"] == 0
    )
    return {
        "command": command_line("rooms", args, _FLAGS),
        "clients": setup.get("clients", 0),
        "rooms": setup.get("rooms", 0),
        "room_size": args.room_size,
        **head,
        "pass": passed,
        "p99_target_ms": args.p99_target_ms,
        "loadgen_processes": 1,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "server_settings": settings,
        "deliveries_per_message": args.room_size - 1,
        "rooms_expected": math.ceil(args.clients / args.room_size),
        "setup": setup,
        **result,
    }
