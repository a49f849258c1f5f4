"""MediaPool against real fake-worker processes: requests, errors, timeouts, crashes, shutdown."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from tether.media.pool import (
    MediaError,
    MediaEvent,
    MediaPool,
    MediaUnavailable,
    WorkerLost,
    default_worker_count,
)
from tether.media.testing.fake_worker import fake_command

OFFER = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\n"
)


class Inbox:
    """An owner that records what it is told."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.changed = trio.Event()

    def tell(self, message: Any) -> None:
        self.messages.append(message)
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, kind: type, timeout: float = 10.0) -> Any:
        with trio.fail_after(timeout):
            while True:
                for message in self.messages:
                    if isinstance(message, kind):
                        return message
                await self.changed.wait()


@asynccontextmanager
async def running_pool(workers: int = 1, **kwargs: Any) -> AsyncIterator[MediaPool]:
    pool = MediaPool(workers, command=fake_command, **kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        await pool.wait_ready(20)
        # The first stats poll follows each worker's start at once: let it
        # finish, so tests that count requests in flight see only their own.
        with trio.fail_after(20):
            while not all(w["stats"] for w in pool.health()):  # noqa: ASYNC110
                await trio.sleep(0.01)
        try:
            yield pool
        finally:
            nursery.cancel_scope.cancel()


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    """Poll ``predicate()`` (state changed by a child process's I/O), with a deadline."""
    with trio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.01)


async def test_requests_get_results_and_errors_carry_the_code() -> None:
    with trio.fail_after(30):
        async with running_pool(2) as pool:
            assert pool.live_workers == 2
            info = await pool.request(0, "worker.info", {})
            assert info["pid"] == pool.pid(0)
            owner = Inbox()
            index = await pool.open_router("r1", owner)
            assert pool.worker_of("r1") == index
            answer = await pool.call("r1", "publish", {"participant": "p1", "sdp": OFFER})
            assert answer["tracks"] == [{"id": "p1.0", "kind": "audio", "rids": []}]
            event = await owner.wait_for(MediaEvent)
            assert (event.router, event.name, event.params["state"]) == (
                "r1",
                "transport",
                "connected",
            )
            with pytest.raises(MediaError) as caught:
                await pool.call("r1", "publish", {"participant": "p1", "sdp": "garbage"})
            assert caught.value.code == "bad_sdp"
            with pytest.raises(MediaUnavailable):
                await pool.call("nope", "answer", {"participant": "p1", "sdp": "v=0"})


async def test_placement_picks_the_least_loaded_worker() -> None:
    with trio.fail_after(30):
        async with running_pool(2) as pool:
            owner = Inbox()
            first = await pool.open_router("a", owner)
            second = await pool.open_router("b", owner)
            assert {first, second} == {0, 1}
            await pool.close_router("a")
            assert await pool.open_router("c", owner) == first
            with pytest.raises(ValueError, match="already open"):
                await pool.open_router("c", owner)


async def test_a_request_without_answer_times_out() -> None:
    with trio.fail_after(30):
        async with running_pool(1, request_timeout=0.3) as pool:
            with pytest.raises(MediaUnavailable, match="did not answer"):
                await pool.request(0, "fake.hang", {})
            # the worker still works afterwards
            assert (await pool.request(0, "router.open", {"router": "x"})) == {}


async def test_pending_requests_are_bounded() -> None:
    with trio.fail_after(30):
        async with running_pool(1, max_pending=2, request_timeout=5) as pool:
            outcomes: list[str] = []

            async def hang() -> None:
                try:
                    await pool.request(0, "fake.hang", {})
                except MediaUnavailable as exc:
                    outcomes.append(str(exc))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(hang)
                nursery.start_soon(hang)
                await trio.testing.wait_all_tasks_blocked()
                assert pool.health()[0]["pending"] == 2
                with pytest.raises(MediaUnavailable, match="busy"):
                    await pool.request(0, "worker.info", {})
                nursery.cancel_scope.cancel()


async def test_crash_fails_pending_requests_notifies_owners_and_restarts() -> None:
    with trio.fail_after(30):
        async with running_pool(1, backoff=(0.05, 0.2)) as pool:
            owner = Inbox()
            await pool.open_router("room-1", owner)
            old_pid = pool.pid(0)
            failed: list[BaseException] = []

            async def hang() -> None:
                try:
                    await pool.request(0, "fake.hang", {})
                except MediaUnavailable as exc:
                    failed.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(hang)
                await trio.testing.wait_all_tasks_blocked()
                assert pool.health()[0]["pending"] == 1
                with pytest.raises(MediaUnavailable):
                    await pool.request(0, "fake.exit", {"code": 3})
            assert len(failed) == 1
            assert "lost" in str(failed[0])
            lost = await owner.wait_for(WorkerLost)
            assert lost == WorkerLost("room-1", 0)
            assert pool.worker_of("room-1") is None
            await pool.wait_live(10)
            assert pool.pid(0) not in (None, old_pid)
            assert pool.health()[0]["restarts"] == 1
            # a fresh router opens on the restarted worker
            assert await pool.open_router("room-1", owner) == 0


async def test_a_killed_worker_is_restarted() -> None:
    with trio.fail_after(30):
        async with running_pool(1, backoff=(0.05, 0.2)) as pool:
            pid = pool.pid(0)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            await wait_until(lambda: pool.live_workers == 1 and pool.pid(0) != pid)
            assert (await pool.request(0, "worker.stats", {}))["routers"] == 0


async def test_shutdown_stops_every_worker() -> None:
    with trio.fail_after(30):
        pool = MediaPool(2, command=fake_command)
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            await pool.wait_ready(20)
            pids = [pool.pid(0), pool.pid(1)]
            nursery.cancel_scope.cancel()
        for pid in pids:
            assert pid is not None
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        with pytest.raises(MediaUnavailable):
            pool.place()


async def test_a_worker_that_ignores_stdin_close_is_killed(tmp_path: Any) -> None:
    script = tmp_path / "stubborn.py"
    # Answers worker.info, then ignores the end of stdin (and SIGTERM) forever.
    script.write_text(
        "import sys, time, signal\n"
        "from tether.media import wire\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "d = wire.FrameDecoder()\n"
        "while True:\n"
        "    data = sys.stdin.buffer.read1(65536)\n"
        "    if not data:\n"
        "        time.sleep(3600)\n"
        "    for m in d.feed(data):\n"
        "        sys.stdout.buffer.write(wire.result(m['id'], {'port': 1}))\n"
        "        sys.stdout.buffer.flush()\n"
    )
    pool = MediaPool(1, command=lambda i: [sys.executable, str(script)], stop_timeout=0.3)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            await pool.wait_ready(20)
            pid = pool.pid(0)
            nursery.cancel_scope.cancel()
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_default_worker_count() -> None:
    assert default_worker_count(0) == 0
    assert default_worker_count(3) == 3
    assert default_worker_count(-1) == max(1, (os.cpu_count() or 1) - 1)
