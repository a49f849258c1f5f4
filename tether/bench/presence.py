"""Presence under churn: spurious offline events, detection time, event rate.

``tether bench presence`` starts a server with short heartbeat timers, connects
U users x D devices plus observers that watch every user, then:

1. flaps half the users (abrupt drops of one or all devices, reconnecting
   within the grace period) and counts ``offline`` events for them: every one
   is spurious (target 0);
2. makes some users vanish (half-open: sockets stay open, nothing is read or
   answered) and measures drop → ``offline`` at the observers (target: heartbeat
   timeout + grace, ± one heartbeat interval); others close their sockets
   without a close frame (offline after the grace period alone);
3. flips users between away and online as fast as the rate limit allows and
   reports the presence events per second the observers receive.
"""

from __future__ import annotations

import argparse
from typing import Any

from tether.bench._harness import raise_fd_limit, read_json_lines, run_server, start_worker


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``tether bench presence``."""
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--observers", type=int, default=10)
    parser.add_argument("--vanish", type=int, default=20, help="users that vanish (and close)")
    parser.add_argument("--heartbeat", type=float, default=1.0, help="heartbeat interval (s)")
    parser.add_argument("--timeout", type=float, default=3.0, help="heartbeat timeout (s)")
    parser.add_argument("--grace", type=float, default=3.0, help="offline grace period (s)")
    parser.add_argument("--flap-s", type=float, default=10.0, help="flapping phase length")
    parser.add_argument("--throughput-s", type=float, default=5.0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the scenario; returns the figures (see the module docstring)."""
    raise_fd_limit()
    settings = {
        "heartbeat_interval": args.heartbeat,
        "heartbeat_timeout": args.timeout,
        "offline_grace": args.grace,
        "max_presence_subscriptions": max(1000, args.users),
        # Observers watch users they share no room with: explicit subscriptions.
        "presence_visibility": "all",
    }
    expected = args.timeout + args.grace
    with run_server(settings) as server:
        cpu0 = server.cpu_seconds()
        worker = start_worker(
            "tether.bench._presence_worker",
            {
                "host": server.host,
                "port": server.port,
                "secret": server.secret,
                "users": args.users,
                "devices": args.devices,
                "observers": args.observers,
                "vanish": args.vanish,
                "grace": args.grace,
                "flap_s": args.flap_s,
                "throughput_s": args.throughput_s,
                "expected_offline_s": expected,
            },
        )
        results = list(read_json_lines(worker, 600))
        cpu = server.cpu_seconds() - cpu0
    if not results:
        raise RuntimeError("the load generator reported nothing")
    figures = results[-1]
    figures.update(
        {
            "users": args.users,
            "devices_per_user": args.devices,
            "observers": args.observers,
            "heartbeat_interval_s": args.heartbeat,
            "expected_offline_s": expected,
            "server_cpu_s": round(cpu, 2),
        }
    )
    return figures
