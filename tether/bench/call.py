"""Call forwarding cost: P participants publishing audio+video through ONE media worker.

``tether bench call`` runs a server in this process (trio, a throw-away data
folder, ``media_workers = 1``, an ephemeral UDP port announced on 127.0.0.1)
and the participants in separate load-generator processes
(``tether.bench._call_client``, ``--client-procs`` of them). Each participant
publishes pre-encoded VP8 (``--width`` x ``--height`` at ``--fps``,
``--bitrate`` bits/s, CBR with a noise band so the encoder really spends it)
and Opus, so publishers cost little, and receives everyone else's tracks in
sink mode (RTP counted from the clear SRTP header and dropped, no decryption).
Where the machine has two cores, the worker is pinned to CPU 0 and the
clients and this process to CPU 1, so the worker is measured, not its load.

Phases, once every participant receives all 2 x (P - 1) remote tracks and
``--warmup`` seconds passed:

1. *forwarding*, ``--duration`` s: deltas of the worker's ``worker.stats``
   (``cpu_s``: its process time; ``rx_packets``, ``tx_packets``) and of the
   sequence gaps the subscribers saw;
2. *ingest only*, ``--duration`` s: every participant mutes audio and video
   (``call.mute``): the worker keeps receiving every packet but forwards
   none, so ``us_per_received_packet = cpu / rx`` of this phase.

Figures (JSON): ``participants``; ``forwarded_packets_per_s`` (phase 1 tx
packets / s); ``us_per_forwarded_packet`` = (phase-1 CPU - rx x
``us_per_received_packet``) / tx: the forwarding cost net of ingest;
``us_per_received_packet``; ``worker_cpu_fraction`` (phase-1 CPU / wall time:
fraction of one core); ``lost_packets`` (primary-stream sequence numbers the
subscribers never got during phase 1, before any RTX repair). ``--details``
adds a ``details`` map (raw deltas, bitrate of the clip, client counts).

``--find-max`` runs P = 2, 3, ... (each a fresh server, ``--duration`` s
forwarding only, so ``us_per_forwarded_packet`` is gross there: ingest
included, and ``us_per_received_packet`` is null) until a run loses more than
``--max-loss`` of the packets (default 0.1%: on a shared machine a scheduling
stall of a few hundred ms overflows a socket buffer whatever the load), has a
participant republish (a failed connection), or the worker uses more than
``--max-cpu`` of its core (a size that loses is tried ``--attempts`` times,
default 2, since a stall of the shared machine can cost one run); it reports
``max_participants`` (the largest P that passed), ``limited_by`` (why the
next size failed: ``loss``, ``worker_cpu``, ``rebuilds``, ``clients``, or
``max_participants``) and every run's figures plus ``loss_fraction``,
``client_cpu_fraction``, ``rebuilds``, ``received_packets_per_s``,
``delivery_fraction`` (packets the subscribers got or saw missing / worker rx
x (P - 1)) and ``publish_rate_fraction`` (per-publisher rx rate / the P = 2
run's). A run with either fraction below 0.95 fails as ``clients``: the load
generators, not the worker, fell behind. On a 2-core machine the Python
clients saturate their core before the worker does, so a failing run can be
the clients' limit: ``client_cpu_fraction`` near 1 says so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import trio

from tether.app import Server, ServerInfo
from tether.bench._harness import raise_fd_limit
from tether.client import connect
from tether.config import ServerConfig
from tether.transport.auth import mint_token

_CLIENT = "tether.bench._call_client"
#: The six figures, in order.
FIGURES = (
    "participants",
    "forwarded_packets_per_s",
    "us_per_forwarded_packet",
    "us_per_received_packet",
    "worker_cpu_fraction",
    "lost_packets",
)
_MAX_LINE = 1 << 16
#: --find-max: a run passes only if each publisher sent at least this fraction
#: of what one sends with idle clients (P = 2), and the subscribers got this
#: fraction of what the worker should forward (received x (P - 1)).
_MIN_RATE = 0.95


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``tether bench call``."""
    parser.add_argument("--participants", type=int, default=6, help="people in the call")
    parser.add_argument("--bitrate", type=int, default=2_500_000, help="video bits/s per person")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--client-procs", type=int, default=0, help="0: one per 3 participants")
    parser.add_argument("--setup-timeout", type=float, default=120.0)
    parser.add_argument("--find-max", action="store_true", help="largest call without loss")
    parser.add_argument("--max-cpu", type=float, default=0.9, help="--find-max: CPU bound")
    parser.add_argument(
        "--max-loss", type=float, default=0.001, help="--find-max: tolerated loss fraction"
    )
    parser.add_argument("--max-participants", type=int, default=16, help="--find-max: stop")
    parser.add_argument(
        "--attempts", type=int, default=2, help="--find-max: runs per size before it fails"
    )
    parser.add_argument("--details", action="store_true", help="add raw deltas")
    parser.add_argument(
        "--pin", action=argparse.BooleanOptionalAction, default=True, help="pin worker/clients"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the scenario; returns the figures (see the module docstring)."""
    raise_fd_limit()
    if not args.find_max:
        return trio.run(_one, args, args.participants, True)
    runs = []
    best = 0
    limited_by = "max_participants"
    baseline: float | None = None  # packets/s one publisher sends with idle clients
    for participants in range(2, args.max_participants + 1):
        verdict = ""
        for _ in range(max(1, args.attempts)):
            result = trio.run(_one, args, participants, False)
            runs.append(result)
            per_publisher = result["received_packets_per_s"] / participants
            if baseline is None:
                baseline = per_publisher
            result["publish_rate_fraction"] = round(per_publisher / baseline, 3)
            verdict = _verdict(args, result)
            if verdict in ("", "worker_cpu"):
                break  # passed, or over the bound (another attempt would not fit either)
        if verdict:
            limited_by = verdict
            break
        best = participants
    return {"max_participants": best, "limited_by": limited_by, "runs": runs}


def _verdict(args: argparse.Namespace, result: dict[str, Any]) -> str:
    """Why a --find-max run failed ("" when it passed)."""
    if result["worker_cpu_fraction"] > args.max_cpu:
        return "worker_cpu"
    if result["rebuilds"]:
        return "rebuilds"
    if result["publish_rate_fraction"] < _MIN_RATE or result["delivery_fraction"] < _MIN_RATE:
        # Publishers sent less than with idle clients, or subscribers got less
        # than the worker should forward: the client processes fell behind.
        return "clients"
    if result["loss_fraction"] > args.max_loss:
        return "loss"
    return ""


def _pin(pid: int | None, cpu: int, enabled: bool) -> None:
    if not enabled or pid is None or (os.cpu_count() or 1) < 2:
        return
    with contextlib.suppress(OSError):
        os.sched_setaffinity(pid, {cpu})


class _Lines:
    """JSON lines from a client process's stdout (bounded buffer)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def next(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            chunk = await self._stream.receive_some(_MAX_LINE)
            if not chunk:
                raise RuntimeError("call bench client exited early")
            self._buffer += chunk
            if len(self._buffer) > _MAX_LINE:
                raise RuntimeError("call bench client line too long")
        line, self._buffer = self._buffer.split(b"\n", 1)
        result: dict[str, Any] = json.loads(line)
        return result


class _ClientProc:
    def __init__(self, process: trio.Process) -> None:
        assert process.stdin is not None
        assert process.stdout is not None
        self.process = process
        self.lines = _Lines(process.stdout)

    async def send(self, obj: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(json.dumps(obj).encode() + b"\n")

    async def ask(self, obj: dict[str, Any], phase: str) -> dict[str, Any]:
        await self.send(obj)
        while True:
            answer = await self.lines.next()
            if answer.get("phase") == phase:
                return answer


async def _snapshot(procs: list[_ClientProc]) -> tuple[int, int, list[int], int]:
    """Totals over the clients: packets, lost, remote tracks per participant, rebuilds."""
    packets = lost = rebuilds = 0
    tracks: list[int] = []
    for proc in procs:
        snap = await proc.ask({"cmd": "snapshot"}, "snapshot")
        packets += snap["packets"]
        lost += snap["lost"]
        tracks += snap["tracks"]
        rebuilds += snap["rebuilds"]
    return packets, lost, tracks, rebuilds


async def _one(args: argparse.Namespace, participants: int, ingest: bool) -> dict[str, Any]:
    """One call of ``participants``; ``ingest``: also measure the ingest-only phase."""
    from tether.media.synthetic import VideoSpec, encode_vp8  # noqa: PLC0415 - av is heavy

    spec = VideoSpec(
        width=args.width,
        height=args.height,
        fps=args.fps,
        bitrate=args.bitrate,
        keyframe_interval=2 * args.fps,
        noise=0.1,
    )
    clip_bitrate = encode_vp8(spec, 4.0).bitrate if args.details else None
    data_dir = Path(tempfile.mkdtemp(prefix="tether-bench-call-"))
    secret = secrets.token_hex(32)
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        data_dir=data_dir,
        secret=secret,
        log_level="WARNING",
        media_workers=1,
        media_udp_port=0,
        media_announced_addresses=("127.0.0.1",),
        media_max_publish_bitrate=max(3_000_000, 2 * args.bitrate),
        call_max_participants=max(16, participants),
    )
    server = Server(config)
    _pin(os.getpid(), 1, args.pin)
    try:
        async with trio.open_nursery() as nursery:
            info: ServerInfo = await nursery.start(server.run)
            url = info.url
            assert server.ctx is not None
            pool = server.ctx.media
            assert pool is not None
            await pool.wait_live(30.0)
            _pin(pool.pid(0), 0, args.pin)
            async with connect(url, mint_token(secret.encode(), "bench-owner")) as owner:
                room = await owner.create_room("call bench", kind="public")
            procs_count = args.client_procs or math.ceil(participants / 3)
            procs_count = max(1, min(procs_count, participants))
            users = [f"bench-p{i}" for i in range(participants)]
            groups = [users[i::procs_count] for i in range(procs_count)]
            procs: list[_ClientProc] = []
            try:
                for group in groups:
                    process = await trio.lowlevel.open_process(
                        [sys.executable, "-m", _CLIENT],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                    )
                    _pin(process.pid, 1, args.pin)
                    proc = _ClientProc(process)
                    procs.append(proc)
                    video = {
                        "width": spec.width,
                        "height": spec.height,
                        "fps": spec.fps,
                        "bitrate": spec.bitrate,
                        "keyframe_interval": spec.keyframe_interval,
                        "noise": spec.noise,
                    }
                    tokens = [mint_token(secret.encode(), u) for u in group]
                    await proc.send({"url": url, "room": room.id, "tokens": tokens, "video": video})
                with trio.fail_after(args.setup_timeout):
                    for proc in procs:
                        while (await proc.lines.next()).get("phase") != "ready":
                            pass
                    expected = 2 * (participants - 1)
                    while True:
                        _, _, tracks, _ = await _snapshot(procs)
                        if len(tracks) == participants and min(tracks) >= expected:
                            break
                        await trio.sleep(0.2)
                await trio.sleep(args.warmup)
                result = await _measure(args, pool, procs, participants, ingest)
                if args.details:
                    result["details"]["clip_bitrate"] = clip_bitrate
                return result
            finally:
                with trio.CancelScope(shield=True):
                    for proc in procs:
                        with contextlib.suppress(
                            trio.BrokenResourceError, trio.ClosedResourceError
                        ):
                            await proc.send({"cmd": "stop"})
                    with trio.move_on_after(20):
                        for proc in procs:
                            await proc.process.wait()
                    for proc in procs:
                        if proc.process.returncode is None:
                            proc.process.kill()
                            await proc.process.wait()
                    server.request_shutdown()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


async def _window(
    args: argparse.Namespace, pool: Any, procs: list[_ClientProc]
) -> dict[str, float]:
    """Deltas of worker stats and client counters over ``--duration`` seconds."""
    clients = [psutil.Process(p.process.pid) for p in procs]

    def client_cpu() -> float:
        return float(sum(c.cpu_times().user + c.cpu_times().system for c in clients))

    s0 = await pool.request(0, "worker.stats", {})
    packets0, lost0, _, rebuilds0 = await _snapshot(procs)
    c0, t0 = client_cpu(), time.monotonic()
    await trio.sleep(args.duration)
    s1 = await pool.request(0, "worker.stats", {})
    c1, t1 = client_cpu(), time.monotonic()
    packets1, lost1, _, rebuilds1 = await _snapshot(procs)
    wall = t1 - t0
    return {
        "wall_s": wall,
        "cpu_s": float(s1["cpu_s"] - s0["cpu_s"]),
        "rx_packets": float(s1["rx_packets"] - s0["rx_packets"]),
        "tx_packets": float(s1["tx_packets"] - s0["tx_packets"]),
        "rtx_sent": float(s1.get("rtx_sent", 0) - s0.get("rtx_sent", 0)),
        "worker_dropped_packets": float(
            s1.get("dropped_packets", 0) - s0.get("dropped_packets", 0)
        ),
        "client_packets": float(packets1 - packets0),
        "lost": float(lost1 - lost0),
        "rebuilds": float(rebuilds1 - rebuilds0),
        "client_cpu_fraction": (c1 - c0) / wall,
    }


async def _measure(
    args: argparse.Namespace, pool: Any, procs: list[_ClientProc], participants: int, ingest: bool
) -> dict[str, Any]:
    forward = await _window(args, pool, procs)
    us_rx: float | None = None
    ingest_window: dict[str, float] | None = None
    if ingest:
        for proc in procs:
            await proc.ask({"cmd": "mute", "muted": True}, "muted")
        await trio.sleep(1.0)  # packets already in flight drain
        ingest_window = await _window(args, pool, procs)
        if ingest_window["rx_packets"]:
            us_rx = ingest_window["cpu_s"] / ingest_window["rx_packets"] * 1e6
    tx = forward["tx_packets"]
    # Without an ingest phase (--find-max) the per-forwarded cost is gross (ingest included).
    net = forward["cpu_s"] - (forward["rx_packets"] * us_rx / 1e6 if us_rx is not None else 0.0)
    result: dict[str, Any] = {
        "participants": participants,
        "forwarded_packets_per_s": round(tx / forward["wall_s"], 1),
        "us_per_forwarded_packet": round(net / tx * 1e6, 2) if tx else None,
        "us_per_received_packet": round(us_rx, 2) if us_rx is not None else None,
        "worker_cpu_fraction": round(forward["cpu_s"] / forward["wall_s"], 4),
        "lost_packets": int(forward["lost"]),
    }
    if args.details:
        result["details"] = {"forwarding": forward, "ingest_only": ingest_window}
    if not ingest:  # a --find-max run: what decides whether it passed
        received = forward["client_packets"] + forward["lost"]
        result["loss_fraction"] = round(forward["lost"] / received, 5) if received else 1.0
        result["client_cpu_fraction"] = round(forward["client_cpu_fraction"], 3)
        result["rebuilds"] = int(forward["rebuilds"])
        result["received_packets_per_s"] = round(forward["rx_packets"] / forward["wall_s"], 1)
        expected = forward["rx_packets"] * (participants - 1)
        result["delivery_fraction"] = round(received / expected, 4) if expected else 0.0
    return result
