"""``tether bench actors``: throughput, latency, memory and start-up of the actor runtime.

Every scenario runs in a fresh Python process (``python -m tether.bench.actors`` reading
its parameters as JSON on stdin, see ``tether.bench._harness``), so one scenario's heap and
garbage-collector state cannot colour another's, and the memory figure is a clean RSS
delta. Long-lived actors are frozen out of the cyclic GC after they are built
(``gc.freeze()``), as the server does after start-up.

Figures:

* ``tell_per_s``: one trio task tells ``--messages`` messages to one actor (falling back
  to ``await ref.send()`` whenever the 10,000-message mailbox is full), until the actor
  has handled them all.
* ``ask_p50_us``/``ask_p99_us``: round trip of ``await ref.ask(m)`` from a trio task,
  ``--asks`` sequential asks after a warm-up.
* ``fanout_deliveries_per_s``: a room-like actor tells each of ``--fanout-messages``
  messages to ``--fanout-members`` actors; counted until every member has handled all.
* ``bytes_per_idle_actor``: RSS growth per actor with ``--actors`` idle actors alive, after
  ``gc.collect()`` and ``gc.freeze()``.
* ``startup_us_per_actor``: spawning ``--actors`` actors until every ``on_start`` has run.
* ``stop_all_s``: closing the system with ``--actors`` actors alive (graceful shutdown).
* ``cross_thread_tell_per_s``: ``--threads`` OS threads tell ``--messages`` messages in
  total to one trio actor (mailbox sized to hold them all), until all are handled.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from tether.actors import Actor, MailboxFull, open_actor_system
from tether.bench._harness import emit, percentile, read_json_lines, start_worker, worker_params

_MODULE = "tether.bench.actors"

#: Keys of the figures ``run()`` returns, in order.
FIGURES = (
    "tell_per_s",
    "ask_p50_us",
    "ask_p99_us",
    "fanout_deliveries_per_s",
    "bytes_per_idle_actor",
    "startup_us_per_actor",
    "stop_all_s",
    "cross_thread_tell_per_s",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``tether bench actors``."""
    parser.add_argument("--actors", type=int, default=100_000, help="idle actors (memory)")
    parser.add_argument("--messages", type=int, default=1_000_000, help="tells per run")
    parser.add_argument("--asks", type=int, default=20_000, help="sequential asks")
    parser.add_argument("--fanout-members", type=int, default=1000)
    parser.add_argument("--fanout-messages", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2, help="foreign threads telling")
    parser.add_argument("--repeat", type=int, default=3, help="fresh runs per figure; median")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every scenario ``--repeat`` times in fresh processes; return the median figures."""
    params = {
        "actors": args.actors,
        "messages": args.messages,
        "asks": args.asks,
        "fanout_members": args.fanout_members,
        "fanout_messages": args.fanout_messages,
        "threads": args.threads,
    }
    samples: dict[str, list[float]] = {key: [] for key in FIGURES}
    for _ in range(max(1, args.repeat)):
        for scenario in _SCENARIOS:
            for key, value in _in_fresh_process(scenario, params).items():
                samples[key].append(value)
    return {key: _round(statistics.median(values)) for key, values in samples.items()}


def _round(value: float) -> float | int:
    return round(value, 2) if abs(value) < 100 else round(value)


def _in_fresh_process(scenario: str, params: dict[str, Any]) -> dict[str, float]:
    worker = start_worker(_MODULE, {"scenario": scenario, **params}, cpu=0)
    figures: dict[str, float] = {}
    for line in read_json_lines(worker, timeout=600):
        figures.update(line)
    if worker.returncode != 0:
        raise RuntimeError(f"scenario {scenario!r} failed with exit code {worker.returncode}")
    return figures


# --------------------------------------------------------------------------- actors


class _Counter(Actor):
    """Counts messages; sets ``done`` at ``target``."""

    def __init__(self, target: int, done: trio.Event | None) -> None:
        super().__init__()
        self.count = 0
        self.target = target
        self.done = done

    def on_receive(self, message: Any) -> Any:
        self.count += 1
        if self.count == self.target and self.done is not None:
            self.done.set()
        return message


class _BigCounter(_Counter):
    mailbox_size = 100_000_000


class _Room(Actor):
    """Tells every message to every member, the room's fan-out loop."""

    def __init__(self, members: list[Any]) -> None:
        super().__init__()
        self.members = members

    def on_receive(self, message: Any) -> Any:
        for member in self.members:
            member.tell(message)


class _Member(Actor):
    """Counts deliveries into a shared counter; the last one sets ``done``."""

    def __init__(self, shared: list[int], target: int, done: trio.Event) -> None:
        super().__init__()
        self.shared = shared
        self.target = target
        self.done = done

    def on_receive(self, message: Any) -> Any:
        shared = self.shared
        shared[0] += 1
        if shared[0] == self.target:
            self.done.set()


class _Idle(Actor):
    """An idle actor, as a connected but silent user would be; counts starts."""

    started: list[int] | None = None
    all_started: trio.Event | None = None
    expected = 0

    def on_start(self) -> None:
        started = _Idle.started
        if started is not None:
            started[0] += 1
            if started[0] == _Idle.expected and _Idle.all_started is not None:
                _Idle.all_started.set()


# ------------------------------------------------------------------------ scenarios


async def _tell(params: dict[str, Any]) -> dict[str, float]:
    n = int(params["messages"])
    warm_up = 1000
    done = trio.Event()
    async with open_actor_system("bench"):
        # The warm-up (1000 tells and one ask) counts towards the target too.
        ref = _Counter.start(warm_up + 1 + n, done)
        for i in range(warm_up):
            ref.tell(i)
        await ref.ask("warm-up")
        gc.collect()
        gc.freeze()
        tell = ref.tell
        start = time.perf_counter()
        for i in range(n):
            try:
                tell(i)
            except MailboxFull:
                await ref.send(i)
        await done.wait()
        elapsed = time.perf_counter() - start
    return {"tell_per_s": n / elapsed}


async def _ask(params: dict[str, Any]) -> dict[str, float]:
    n = int(params["asks"])
    async with open_actor_system("bench"):
        ref = _Counter.start(0, None)
        for i in range(1000):
            await ref.ask(i)
        gc.collect()
        gc.freeze()
        clock = time.perf_counter_ns
        samples: list[float] = []
        for i in range(n):
            start = clock()
            await ref.ask(i)
            samples.append((clock() - start) / 1000)
    return {"ask_p50_us": percentile(samples, 50), "ask_p99_us": percentile(samples, 99)}


async def _fanout(params: dict[str, Any]) -> dict[str, float]:
    members_n = int(params["fanout_members"])
    messages = int(params["fanout_messages"])
    done = trio.Event()
    shared = [0]
    async with open_actor_system("bench"):
        members = [_Member.start(shared, members_n * messages, done) for _ in range(members_n)]
        room = _Room.start(members)
        await room.ask("warm-up")  # also delivers one message to every member
        for member in members:
            await member.ask("sync")
        shared[0] = 0
        gc.collect()
        gc.freeze()
        start = time.perf_counter()
        for i in range(messages):
            room.tell(i)
        await done.wait()
        elapsed = time.perf_counter() - start
    return {"fanout_deliveries_per_s": members_n * messages / elapsed}


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _idle(params: dict[str, Any]) -> dict[str, float]:
    n = int(params["actors"])
    _Idle.started = [0]
    _Idle.expected = n
    _Idle.all_started = trio.Event()
    async with open_actor_system("bench") as system:
        for _ in range(100):  # warm up allocator and code paths
            await system.spawn(_Idle).stop()
        _Idle.started[0] = 0
        gc.collect()
        before = _rss()
        start = time.perf_counter()
        spawn = system.spawn
        for _ in range(n):
            spawn(_Idle)
        await _Idle.all_started.wait()
        startup = time.perf_counter() - start
        gc.collect()
        gc.freeze()
        after = _rss()
        stop_started = time.perf_counter()
    stop_all = time.perf_counter() - stop_started
    return {
        "bytes_per_idle_actor": (after - before) / n,
        "startup_us_per_actor": startup / n * 1e6,
        "stop_all_s": stop_all,
    }


async def _cross_thread(params: dict[str, Any]) -> dict[str, float]:
    n = int(params["messages"])
    threads_n = max(1, int(params["threads"]))
    per_thread = n // threads_n
    total = per_thread * threads_n
    done = trio.Event()
    async with open_actor_system("bench"):
        ref = _BigCounter.start(total + 1, done)
        await ref.ask("warm-up")
        gc.collect()
        gc.freeze()
        go = threading.Event()

        def sender() -> None:
            tell = ref.tell
            go.wait()
            for i in range(per_thread):
                tell(i)

        threads = [threading.Thread(target=sender) for _ in range(threads_n)]
        for thread in threads:
            thread.start()
        start = time.perf_counter()
        go.set()
        await done.wait()
        elapsed = time.perf_counter() - start
        for thread in threads:
            await trio.to_thread.run_sync(thread.join)
    return {"cross_thread_tell_per_s": total / elapsed}


_SCENARIOS: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, float]]]] = {
    "tell": _tell,
    "ask": _ask,
    "fanout": _fanout,
    "idle": _idle,
    "cross_thread": _cross_thread,
}


def _worker_main() -> None:
    params = worker_params()
    emit(trio.run(_SCENARIOS[params["scenario"]], params))


if __name__ == "__main__":
    _worker_main()
