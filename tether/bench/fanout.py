"""Fan-out: one room, 1,000 subscribers, one publisher stepping its rate up.

``tether bench fanout`` reproduces workload W1 of ``shared/bench-peers`` against
tether's real protocol. It starts ``tether serve`` pinned to CPU 0 (per-connection
frame rate limit lifted so that one connection may publish 1,000 msgs/s) and one
load-generator process pinned to CPU 1, which:

1. connects a publisher (its own user) that creates a public room, then
   ``--subscribers`` connections, each its own user, that ``room.join`` it
   (sockets spread over the source addresses 127.0.0.1..8);
2. warms up: up to ``--warmup-msgs`` messages sent one at a time, each waited
   for at every subscriber (at most 3 s, 10 s in all), then a 1 s pause;
3. for each rate of ``--rates`` (msgs/s), sends ``rate x --step-s`` messages
   on a fixed schedule (``msg.send``, at most ``--window`` unanswered), then
   waits up to ``--drain-s`` for every delivery. A step **passes** with no loss,
   p99 < ``--p99-ms`` and no subscriber disconnected; a failing step is run
   ``--retries`` more times before it counts, and the run stops at the first
   step that fails.

Every message body is ``{"s": seq, "t": scheduled send time (time.monotonic()),
"p": padding}`` (about ``--msg-bytes`` bytes); the ``msg`` push carries it back.
The same process publishes and receives, so latency = receive time - ``t`` has
no clock skew, and a publisher held back (full window, late timer) is charged to
latency rather than hidden. The receiver is lean: one epoll for all sockets,
read by a plain loop that alternates with the sends (no task switch per
wake-up); a ``msg`` push is counted from its WebSocket header and first map
bytes, and only every N-th push is decoded for its latency (N chosen per step
for about 20,000 samples, at most ``--sample-every``). Garbage collection is
off in the load generator while it measures.

Per step: ``rate``, ``deliveries_per_s`` (pushes received / time from the first
send to the last delivery or the end of publishing, whichever is later),
``p50_ms``/``p99_ms`` (sampled), ``lost`` (expected - received after the drain;
expected = messages sent x subscribers connected), and next to them
``server_cpu`` (psutil on the server process) and ``loadgen_cpu`` (the worker's
``os.times()``), both fractions of one core over the same window (publishing
plus drain), with ``cores`` (each core's busy, softirq and steal fraction:
loopback TCP work and other processes show there) and ``bottleneck`` (the side
whose process used >= 90 % or whose core was >= 95 % busy). Top level:
``max_sustained_deliveries_per_s``, the deliveries/s of the highest step that
passed below the first failure, ``steps``, and ``command``.

One load-generator process (``loadgen_processes``): on this two-core machine
the load generator owns one core whatever the number of processes, and 1,001
sockets fit one process's descriptor limit. A step whose ``loadgen_cpu`` nears
1.0 measured the load generator, not the server.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from tether.bench._harness import raise_fd_limit, read_json_lines, run_server, start_worker
from tether.bench._receiver import Meter, bottleneck, check_fd_limit, command_line, rates_arg
from tether.config import ServerConfig

_WORKER = "tether.bench._fanout_worker"

#: Flags in the order ``command`` spells them.
_FLAGS = (
    "subscribers",
    "rates",
    "step_s",
    "drain_s",
    "p99_ms",
    "retries",
    "warmup_msgs",
    "msg_bytes",
    "window",
    "sample_every",
)

#: Worker events reported as they are, under these keys.
_SECTIONS = {"connected": "setup", "warm": "warmup", "done": "totals"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``tether bench fanout``."""
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument(
        "--rates",
        type=rates_arg,
        default=[10, 20, 50, 100, 150, 200, 250, 300, 400, 500, 750, 1000],
        help="publish rates (msgs/s), comma-separated",
    )
    parser.add_argument("--step-s", type=float, default=3.0, help="seconds per step")
    parser.add_argument("--drain-s", type=float, default=3.0, help="wait for late deliveries")
    parser.add_argument("--p99-ms", type=float, default=100.0, help="pass: p99 below this")
    parser.add_argument("--retries", type=int, default=1, help="re-runs of a failing step")
    parser.add_argument("--warmup-msgs", type=int, default=50)
    parser.add_argument("--msg-bytes", type=int, default=100, help="encoded body size")
    parser.add_argument("--window", type=int, default=100, help="msg.send requests in flight")
    parser.add_argument(
        "--sample-every", type=int, default=50, help="decode at most every N-th push"
    )


def server_settings(subscribers: int) -> dict[str, object]:
    """Server settings of the scenario: defaults, but room for one fast publisher."""
    settings: dict[str, object] = {
        # One connection publishes up to 1,000 msgs/s: lift the per-connection
        # frame rate limit (default 50/s, burst 200) for it.
        "max_frames_per_s": 100_000,
        "frames_burst": 100_000,
        "max_connections": subscribers + 100,
    }
    # One room holds everyone: raise the member cap if the default is lower.
    if ServerConfig().max_room_members < subscribers + 1:
        settings["max_room_members"] = subscribers + 1
    return settings


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the scenario; returns the figures (see the module docstring).

    Raises:
        RuntimeError: if the server or the load generator fails.
    """
    for name in ("subscribers", "step_s", "window", "sample_every"):
        if getattr(args, name) <= 0:
            raise RuntimeError(
                f"Expected a positive --{name.replace('_', '-')}, got {getattr(args, name)}"
            )
    raise_fd_limit()
    check_fd_limit(args.subscribers + 1)
    settings = server_settings(args.subscribers)
    params = {name: getattr(args, name) for name in _FLAGS}
    attempts = len(args.rates) * (args.retries + 1)
    timeout = 180 + attempts * (args.step_s + args.drain_s + 12)
    steps: list[dict[str, Any]] = []
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
                elif event == "step":
                    obj.update(meter.window(*obj.pop("window")))
                    obj["bottleneck"] = bottleneck(obj)
                    steps.append(obj)
                elif event == "error":
                    result["error"] = obj["error"]
                elif event in _SECTIONS:
                    result[_SECTIONS[event]] = obj
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    if not steps:
        raise RuntimeError(
            f"the fanout load generator reported no step: {result.get('error', 'no error')}"
        )
    best: dict[str, Any] | None = None
    first_fail: dict[str, Any] | None = None
    for i, step in enumerate(steps):
        if step["pass"]:
            best = step
            continue
        retried = i + 1 < len(steps) and steps[i + 1]["rate"] == step["rate"]
        if not retried:
            first_fail = step
            break
    return {
        "command": command_line("fanout", args, _FLAGS),
        "max_sustained_deliveries_per_s": best["deliveries_per_s"] if best else 0.0,
        "max_sustained_rate": best["rate"] if best else 0,
        "first_failing_rate": first_fail["rate"] if first_fail else None,
        "bottleneck_at_first_failure": first_fail["bottleneck"] if first_fail else None,
        "subscribers": result.get("setup", {}).get("subscribers", 0),
        "p99_limit_ms": args.p99_ms,
        "loadgen_processes": 1,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "server_settings": settings,
        **result,
        "steps": steps,
    }
