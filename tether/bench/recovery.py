"""Recovery: kill -9 the server under traffic, restart it, and check nothing was lost.

``tether bench recovery`` runs a real ``tether serve`` (a subprocess on a
throw-away data folder, SQLite, a fixed loopback port, the secret in the
environment; pinned to CPU 0 with ``--pin``) and load-generator processes
(``tether.bench._recovery_client``, pinned to CPU 1), which:

1. connect ``--clients`` clients, each its own user and device, and make each
   join ``--rooms-per-client`` of ``--rooms`` public rooms (created first by
   an owner that is not a client); with ``--subscribe N`` each also follows N
   room mates with ``presence.subscribe``, which makes the server store its
   session;
2. send traffic: ``--rate`` messages per second in all, round robin over the
   first ``--senders`` clients, each ``msg.send`` with a unique ``cid``;
   unanswered sends are resent with the same ``cid`` after a reconnect until
   they are answered (a message is *acknowledged* once its sender got the reply);
3. ``--restarts`` times: wait a random ``--kill-min-s``..``--kill-max-s``, send
   SIGKILL to the server, start it again at once on the same data folder and
   port, and wait until every client is *live* again. A client reconnects with
   exponential backoff and full jitter (``uniform(0, min(--backoff-cap,
   --backoff-base * 2 ** attempt))``), says ``hello`` with its last ``session``
   and ``resume`` (per room, the highest seq it holds without a gap), and is
   live once every room answered ``recovered`` (after paging ``history`` when a
   room replayed only the newest part of the gap);
4. stop the traffic, wait until every send is answered, and check that every
   client holds every acknowledged message of its rooms, once.

Figures: ``recovery_s_max`` (the longest time, over the restarts, from the
SIGKILL to the moment the last client is live again). Per restart, in
``restarts_detail``: ``recovery_s``; ``from_start_s`` and ``from_ready_s``
(from starting the new process, and from its ``/readyz`` first answering);
``boot_s``; the phases of the reconnecting clients, ``hello_p50_s`` /
``hello_max_s`` (connect + ``hello`` -> ``welcome`` of the attempt that
succeeded) and ``resume_p50_s`` / ``resume_max_s`` (``welcome`` -> every room
recovered); ``welcomes_after_ready_s`` (first, median, 90th percentile and
last ``welcome`` after ``/readyz``: the spread the backoff makes);
``server_cpu`` and ``loadgen_cpu`` (fractions of one core from ``/readyz`` to
the last client live). Delivery: ``lost`` (acknowledged messages missing at a
member, counted per member and message), ``duplicated`` (``msg`` pushes of a
seq the client already held, beyond what the protocol allows; see
``tether.bench._recovery_client``), ``acknowledged``, ``sent``,
``retried_sends`` (sends repeated with their ``cid`` after a reconnect),
``dup_replies`` (retries answered ``dup: true``: stored before the crash),
``replayed`` (messages a client got between its ``hello`` and the room's
``recovered``), ``replayed_per_s`` (replayed messages of all restarts / the
sum over restarts of the time from the first resuming ``hello`` to the last
``recovered``; it follows the traffic, as the gaps are what was sent while
clients were away), ``history_filled`` (messages fetched by clients with
``history`` after an incomplete replay), ``sessions_resumed`` /
``sessions_lost`` (reconnects whose ``welcome`` said ``resumed`` or not, for
clients that subscribed). ``pass``: no loss, no duplicate, every client
resumed after every restart and ``recovery_s_max`` below ``--target-s``.
``command`` spells out every flag.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psutil
import trio

from tether.bench._harness import free_port, percentile, raise_fd_limit
from tether.bench._receiver import check_fd_limit, command_line, expect_reply, handshake, request
from tether.bench._recovery_client import rooms_of
from tether.transport.auth import mint_token

_WORKER = "tether.bench._recovery_client"
_OWNER = "rc-owner"

#: Flags in the order ``command`` spells them.
_FLAGS = (
    "clients",
    "rooms",
    "rooms_per_client",
    "senders",
    "rate",
    "restarts",
    "kill_min_s",
    "kill_max_s",
    "warmup_s",
    "tail_s",
    "backoff_base",
    "backoff_cap",
    "workers",
    "msg_bytes",
    "resume_max_replay",
    "subscribe",
    "settle_s",
    "recovery_timeout_s",
    "target_s",
    "seed",
)

#: Clients one load-generator process runs at most when ``--workers 0``.
_CLIENTS_PER_WORKER = 500


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``tether bench recovery``."""
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rooms", type=int, default=0, help="0: clients / 10")
    parser.add_argument("--rooms-per-client", type=int, default=2)
    parser.add_argument("--senders", type=int, default=0, help="0: half the clients")
    parser.add_argument("--rate", type=float, default=100.0, help="messages/s, all senders")
    parser.add_argument("--restarts", type=int, default=3, help="kill -9 and restart this often")
    parser.add_argument("--kill-min-s", type=float, default=0.5, help="live time before a kill")
    parser.add_argument("--kill-max-s", type=float, default=2.0)
    parser.add_argument("--warmup-s", type=float, default=1.0, help="traffic before the first")
    parser.add_argument("--tail-s", type=float, default=1.0, help="traffic after the last")
    parser.add_argument("--backoff-base", type=float, default=0.2, help="reconnect backoff, s")
    parser.add_argument("--backoff-cap", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=0, help="client processes (0: auto)")
    parser.add_argument("--msg-bytes", type=int, default=100, help="message body size")
    parser.add_argument(
        "--resume-max-replay", type=int, default=0, help="server setting (0: its default)"
    )
    parser.add_argument(
        "--subscribe",
        type=int,
        default=0,
        help="room mates each client follows with presence.subscribe (kept in its session)",
    )
    parser.add_argument("--settle-s", type=float, default=60.0, help="final wait bound")
    parser.add_argument("--recovery-timeout-s", type=float, default=120.0)
    parser.add_argument("--target-s", type=float, default=5.0, help="pass: recovery below")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="server on CPU 0, clients on CPU 1 (two cores or more)",
    )
    parser.add_argument("--keep-data", type=Path, help="copy the data folder and log here")


# -- the server ---------------------------------------------------------------------


def _pin(pid: int, cpu: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        if (os.cpu_count() or 1) >= 2:
            os.sched_setaffinity(pid, {cpu})


class ServerUnderTest:
    """``tether serve`` as a subprocess that can be killed and started again.

    Same data folder, port and secret at every start; the output goes to
    ``<data_dir>/server.log``.
    """

    def __init__(
        self, data_dir: Path, port: int, secret: str, env: Mapping[str, str], *, pin: bool
    ) -> None:
        self.data_dir = data_dir
        self.host = "127.0.0.1"
        self.port = port
        self.secret = secret
        self.pin = pin
        self.log_path = data_dir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._env = {**os.environ, **env, "TETHER_SECRET": secret}
        self.starts = 0

    def start(self) -> float:
        """Start the process; returns the monotonic time just before."""
        assert self.process is None
        command = [
            sys.executable,
            "-m",
            "tether",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--log-level",
            "WARNING",
        ]
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self._env,
                preexec_fn=raise_fd_limit,  # noqa: PLW1509 - only sets a limit
            )
        if self.pin:
            _pin(self.process.pid, 0)
        self.starts += 1
        return started

    def wait_ready(self, timeout: float) -> float:
        """Poll ``/readyz`` every 5 ms; returns the time it first answered 200.

        Raises:
            RuntimeError: if the process exits or is not ready in time.
        """
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode} during start: {self.log_tail()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0) as s:
                    s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        return time.monotonic()
            except OSError:
                pass
            time.sleep(0.005)
        raise RuntimeError(f"server not ready after {timeout} s: {self.log_tail()}")

    def kill(self) -> float:
        """SIGKILL the process and reap it; returns the monotonic time of the signal."""
        assert self.process is not None
        killed = time.monotonic()
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.process = None
        return killed

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the running process (0.0 if none)."""
        if self.process is None:
            return 0.0
        try:
            t = psutil.Process(self.process.pid).cpu_times()
        except psutil.Error:
            return 0.0
        return float(t.user + t.system)

    def stop(self) -> None:
        """Graceful stop (SIGTERM), SIGKILL if it takes more than 30 s."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def log_tail(self, size: int = 2000) -> str:
        """The end of the server's output."""
        try:
            return self.log_path.read_bytes()[-size:].decode(errors="replace")
        except OSError:
            return ""


async def _create_rooms(server: ServerUnderTest, count: int) -> list[str]:
    token = mint_token(server.secret.encode(), _OWNER, ttl_s=86400)
    conn = await handshake(server.host, server.port, _OWNER, token)
    try:
        rooms = []
        for i in range(count):
            frame = {"t": "room.create", "ref": 2, "name": f"recovery {i}", "kind": "public"}
            data = expect_reply(await request(conn, frame), "room.create")
            rooms.append(str(data["room"]["id"]))
        return rooms
    finally:
        conn.close()


# -- the load generators ------------------------------------------------------------


class Workers:
    """Client processes: JSON commands on their stdin, JSON events from their stdout."""

    def __init__(self, params: list[dict[str, Any]], *, pin: bool) -> None:
        self.events: queue.Queue[tuple[int, dict[str, Any] | None]] = queue.Queue()
        self.processes: list[subprocess.Popen[str]] = []
        self._threads: list[threading.Thread] = []
        for index, p in enumerate(params):
            process = subprocess.Popen(
                [sys.executable, "-m", _WORKER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                preexec_fn=raise_fd_limit,  # noqa: PLW1509
            )
            self.processes.append(process)
            if pin:
                _pin(process.pid, 1)
            self.send(index, p)
            thread = threading.Thread(target=self._read, args=(index, process), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _read(self, index: int, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                obj = {"event": "error", "error": f"not a JSON line: {line[:200]!r}"}
            self.events.put((index, obj))
        self.events.put((index, None))  # end of output: the process is gone

    def send(self, index: int, obj: Mapping[str, Any]) -> None:
        """Write one command line to worker ``index``."""
        stdin = self.processes[index].stdin
        assert stdin is not None
        stdin.write(json.dumps(obj) + "\n")
        stdin.flush()

    def broadcast(self, obj: Mapping[str, Any]) -> None:
        """Write one command line to every worker."""
        for index in range(len(self.processes)):
            self.send(index, obj)

    def wait(
        self,
        done: Callable[[], bool],
        on_event: Callable[[int, dict[str, Any]], None],
        timeout: float,
    ) -> bool:
        """Hand events to ``on_event`` until ``done()``; False on timeout.

        Raises:
            RuntimeError: if a worker reports an error or exits.
        """
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                index, obj = self.events.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if obj is None:
                raise RuntimeError(f"client process {index} exited unexpectedly")
            if obj.get("event") == "error":
                raise RuntimeError(f"client process {index}: {obj.get('error')}")
            on_event(index, obj)
        return True

    def pause(self, seconds: float, on_event: Callable[[int, dict[str, Any]], None]) -> None:
        """Keep handling events for ``seconds``."""
        deadline = time.monotonic() + seconds
        self.wait(lambda: time.monotonic() >= deadline, on_event, seconds + 1.0)

    def close(self) -> None:
        """Ask every worker to exit; kill those that do not within 10 s."""
        for index, process in enumerate(self.processes):
            if process.poll() is None:
                with contextlib.suppress(OSError, ValueError):
                    self.send(index, {"cmd": "exit"})
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        # The readers end at the end of output; close the pipes after them.
        for thread in self._threads:
            thread.join(timeout=5)
        for process in self.processes:
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the workers still running."""
        total = 0.0
        for process in self.processes:
            with contextlib.suppress(psutil.Error):
                t = psutil.Process(process.pid).cpu_times()
                total += t.user + t.system
        return total


# -- the scenario -------------------------------------------------------------------


def _validate(args: argparse.Namespace) -> None:
    for name in ("clients", "rooms_per_client", "backoff_base", "backoff_cap", "target_s"):
        if getattr(args, name) <= 0:
            raise RuntimeError(
                f"Expected a positive --{name.replace('_', '-')}, got {getattr(args, name)}"
            )
    for name in (
        "rooms",
        "senders",
        "rate",
        "restarts",
        "workers",
        "resume_max_replay",
        "subscribe",
    ):
        if getattr(args, name) < 0:
            raise RuntimeError(
                f"Expected --{name.replace('_', '-')} >= 0, got {getattr(args, name)}"
            )
    if not 0 <= args.kill_min_s <= args.kill_max_s:
        raise RuntimeError(
            f"Expected 0 <= --kill-min-s <= --kill-max-s, got {args.kill_min_s}, {args.kill_max_s}"
        )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the scenario; returns the figures (see the module docstring).

    Raises:
        RuntimeError: if the server or a client process fails, or set-up,
            a recovery or the final settling does not finish in time.
    """
    _validate(args)
    clients = args.clients
    rooms = args.rooms or max(1, clients // 10)
    senders = min(clients, args.senders or max(1, clients // 2))
    workers_n = args.workers or max(1, math.ceil(clients / _CLIENTS_PER_WORKER))
    workers_n = min(workers_n, clients)
    raise_fd_limit()
    check_fd_limit(math.ceil(clients / workers_n))
    rng = random.Random(args.seed)
    env = {"TETHER_MAX_CONNECTIONS": str(clients + 100)}
    if args.resume_max_replay:
        env["TETHER_RESUME_MAX_REPLAY"] = str(args.resume_max_replay)
    load_before = os.getloadavg()
    data_dir = Path(tempfile.mkdtemp(prefix="tether-recovery-"))
    server = ServerUnderTest(data_dir, free_port(), secrets.token_hex(32), env, pin=args.pin)
    workers: Workers | None = None
    try:
        server.start()
        server.wait_ready(60.0)
        room_ids = trio.run(_create_rooms, server, rooms)
        indices: list[list[int]] = [list(range(w, clients, workers_n)) for w in range(workers_n)]
        params = [
            {
                "host": server.host,
                "port": server.port,
                "secret": server.secret,
                "rooms": room_ids,
                "rooms_per_client": args.rooms_per_client,
                "indices": mine,
                "clients": clients,
                "subscribe": args.subscribe,
                "senders": senders,
                "rate": args.rate * sum(1 for i in mine if i < senders) / senders,
                "backoff_base": args.backoff_base,
                "backoff_cap": args.backoff_cap,
                "msg_bytes": args.msg_bytes,
                "settle_s": args.settle_s,
                "seed": args.seed * 1000 + w,
                "connect_concurrency": 50,
            }
            for w, mine in enumerate(indices)
        ]
        workers = Workers(params, pin=args.pin)
        result = _drive(args, server, workers, rng, workers_n)
    finally:
        if workers is not None:
            workers.close()
        server.stop()
        if args.keep_data:
            shutil.copytree(data_dir, args.keep_data, dirs_exist_ok=True)
        shutil.rmtree(data_dir, ignore_errors=True)
    members = Counter(r for i in range(clients) for r in rooms_of(i, rooms, args.rooms_per_client))
    command = command_line("recovery", args, _FLAGS) + ("" if args.pin else " --no-pin")
    return {
        "command": command,
        "clients": clients,
        "rooms": rooms,
        "members_per_room": [min(members.values()), max(members.values())],
        "senders": senders,
        "workers": workers_n,
        **result,
        "server_settings": env,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


def _drive(
    args: argparse.Namespace,
    server: ServerUnderTest,
    workers: Workers,
    rng: random.Random,
    n: int,
) -> dict[str, Any]:
    ready: set[int] = set()
    live: dict[int, dict[str, Any]] = {}
    stopped: dict[int, dict[str, Any]] = {}
    results: dict[int, dict[str, Any]] = {}

    def on_event(index: int, obj: dict[str, Any]) -> None:
        event = obj.get("event")
        if event == "ready":
            ready.add(index)
        elif event == "all_live":
            live[index] = obj
        elif event == "stopped":
            stopped[index] = obj
        elif event == "result":
            results[index] = obj

    if not workers.wait(lambda: len(ready) == n, on_event, 60.0 + args.clients / 20):
        raise RuntimeError(f"only {len(ready)} of {n} client processes set up in time")
    workers.broadcast({"cmd": "traffic"})
    traffic_started = time.monotonic()
    workers.pause(args.warmup_s, on_event)
    details = []
    for k in range(1, args.restarts + 1):
        workers.pause(rng.uniform(args.kill_min_s, args.kill_max_s), on_event)
        killed = server.kill()
        started = server.start()
        ready_at = server.wait_ready(60.0)
        cpu0, wcpu0, t0 = server.cpu_seconds(), workers.cpu_seconds(), time.monotonic()

        def recovered(gen: int = k + 1) -> bool:
            return len(live) == n and all(e["min_gen"] >= gen for e in live.values())

        if not workers.wait(recovered, on_event, args.recovery_timeout_s):
            raise RuntimeError(
                f"restart {k}: clients not live again after {args.recovery_timeout_s} s "
                f"({ {i: e.get('min_gen') for i, e in live.items()} })"
            )
        t1 = time.monotonic()
        cpu1, wcpu1 = server.cpu_seconds(), workers.cpu_seconds()
        events = list(live.values())
        last_live = max(e["t"] for e in events)
        hellos = [e["first_hello"] for e in events if e.get("first_hello")]
        recovereds = [e["last_recovered"] for e in events if e.get("last_recovered")]
        window = max(recovereds) - min(hellos) if hellos and recovereds else 0.0
        welcomes = [t for e in events for t in e["welcomes"]]
        details.append(
            {
                "recovery_s": round(last_live - killed, 3),
                "from_start_s": round(last_live - started, 3),
                "from_ready_s": round(last_live - ready_at, 3),
                "boot_s": round(ready_at - started, 3),
                "client_recovery_p50_s": round(
                    percentile([e["client_recovery_p50_s"] for e in events], 50), 3
                ),
                "client_recovery_max_s": round(max(e["client_recovery_max_s"] for e in events), 3),
                "hello_p50_s": round(percentile([e["hello_p50_s"] for e in events], 50), 3),
                "hello_max_s": round(max(e["hello_max_s"] for e in events), 3),
                "resume_p50_s": round(percentile([e["resume_p50_s"] for e in events], 50), 3),
                "resume_max_s": round(max(e["resume_max_s"] for e in events), 3),
                "welcomes_after_ready_s": [
                    round(percentile(welcomes, q) - ready_at, 3) for q in (0, 50, 90, 100)
                ],
                "replayed": sum(e["replayed"] for e in events),
                "replay_window_s": round(window, 3),
                "server_cpu": round((cpu1 - cpu0) / (t1 - t0), 3) if t1 > t0 else None,
                "loadgen_cpu": round((wcpu1 - wcpu0) / (t1 - t0), 3) if t1 > t0 else None,
            }
        )
        live.clear()
    workers.pause(args.tail_s, on_event)
    workers.broadcast({"cmd": "stop"})
    traffic_s = time.monotonic() - traffic_started
    if not workers.wait(lambda: len(stopped) == n, on_event, args.settle_s + 30.0):
        raise RuntimeError("client processes did not stop in time")
    acked: dict[str, dict[int, str]] = {}
    conflicts = 0
    for obj in stopped.values():
        for room, seq, cid in obj["acked"]:
            seen = acked.setdefault(room, {}).setdefault(seq, cid)
            if seen != cid:
                conflicts += 1  # two messages acknowledged with one seq
    cids = Counter((room, cid) for room, by_seq in acked.items() for cid in by_seq.values())
    conflicts += sum(count - 1 for count in cids.values())  # one message, two seqs
    wire = {room: [[seq, cid] for seq, cid in by_seq.items()] for room, by_seq in acked.items()}
    workers.broadcast({"cmd": "verify", "acked": wire})
    if not workers.wait(lambda: len(results) == n, on_event, args.settle_s + 30.0):
        raise RuntimeError("client processes did not report in time")
    stats: Counter[str] = Counter()
    close_codes: Counter[str] = Counter()
    send_errors: Counter[str] = Counter()
    resume_codes: Counter[str] = Counter()
    failure_kinds: Counter[str] = Counter()
    lost = mismatched = not_live = 0
    gens: list[int] = []
    examples: list[Any] = []
    for obj in results.values():
        stats.update(obj["stats"])
        close_codes.update(obj["close_codes"])
        send_errors.update(obj["send_errors"])
        resume_codes.update(obj["resume_codes"])
        failure_kinds.update(obj["connect_failure_kinds"])
        lost += obj["lost"]
        mismatched += obj["mismatched"]
        not_live += obj["not_live"]
        gens += obj["gens"]
        examples += obj["duplicate_examples"]
    mismatched += stats["mismatched_replies"] + stats["mismatched_pushes"]
    pending = sum(obj["pending"] for obj in stopped.values())
    replay_s = sum(d["replay_window_s"] for d in details)
    replayed_in_windows = sum(d["replayed"] for d in details)
    recovery_max = max((d["recovery_s"] for d in details), default=0.0)
    duplicated = stats["duplicated"]
    every_client_resumed = bool(gens) and min(gens) >= args.restarts + 1
    passed = (
        lost == 0
        and duplicated == 0
        and mismatched == 0
        and conflicts == 0
        and pending == 0
        and not_live == 0
        and stats["out_of_order"] == 0
        and every_client_resumed
        and recovery_max < args.target_s
    )
    return {
        "restarts": len(details),
        "recovery_s_max": recovery_max,
        "lost": lost,
        "duplicated": duplicated,
        "acknowledged": sum(len(v) for v in acked.values()),
        "pass": passed,
        "target_s": args.target_s,
        "every_client_resumed": every_client_resumed,
        "replayed_per_s": round(replayed_in_windows / replay_s, 1) if replay_s > 0 else 0.0,
        "replayed": stats["replayed"],
        "history_filled": stats["history_filled"],
        "incomplete_recoveries": stats["incomplete_recoveries"],
        "sent": stats["sent"],
        "retried_sends": stats["retried_sends"],
        "dup_replies": stats["dup_replies"],
        "unanswered_sends": pending,
        "traffic_s": round(traffic_s, 3),
        "restarts_detail": details,
        "redelivered": stats["redelivered"],
        "history_overlap": stats["history_overlap"],
        "out_of_order": stats["out_of_order"],
        "mismatched": mismatched,
        "seq_conflicts": conflicts,
        "received": stats["received"],
        "server_replayed": stats["server_replayed"],
        "reconnects": stats["reconnects"],
        "connect_failures": stats["connect_failures"],
        "connect_failure_kinds": dict(failure_kinds),
        "sessions_resumed": stats["sessions_resumed"],
        "sessions_lost": stats["sessions_lost"],
        "subscribe_errors": stats["subscribe_errors"],
        "close_codes": dict(close_codes),
        "send_errors": dict(send_errors),
        "resume_codes": dict(resume_codes),
        "skipped_sends": stats["skipped_sends"],
        "not_live_at_end": not_live,
        "duplicate_examples": examples[:10],
    }
