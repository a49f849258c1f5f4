"""What the console reads from the runtime: ``waiting_on`` and message tracing."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import trio
import trio.testing

from tether.actors import (
    Actor,
    ThreadActor,
    open_actor_system,
    start_trace,
    trace_snapshot,
    waiting_on,
)
from tether.actors._core import introspect


class Msg:
    def __init__(self, n: int) -> None:
        self.n = n

    def __repr__(self) -> str:
        return f"Msg({self.n})" + "x" * (300 if self.n == 99 else 0)


class Gated(Actor):
    """Sync handler for ints, async (parked on ``gate``) for ``Msg``; raises on "boom"."""

    def __init__(self, gate: trio.Event) -> None:
        super().__init__()
        self.gate = gate
        self.seen: list[Any] = []

    def on_receive(self, message: Any) -> Any:
        if message == "boom":
            raise ValueError("boom")
        if isinstance(message, Msg):
            return self._slow(message)
        self.seen.append(message)
        return message

    async def _slow(self, message: Msg) -> None:
        await self.gate.wait()
        self.seen.append(message)

    async def slow_call(self) -> str:
        await self.gate.wait()
        return "done"


async def test_waiting_on_names_the_message_and_where_the_handler_waits() -> None:
    gate = trio.Event()
    async with open_actor_system() as system:
        ref = system.spawn(Gated, gate)
        ref.tell(1)
        await trio.testing.wait_all_tasks_blocked()
        assert waiting_on(ref) is None  # synchronous handlers are never seen running
        ref.tell(Msg(7))
        ref.tell(2)
        await trio.testing.wait_all_tasks_blocked()
        busy = waiting_on(ref)
        assert busy is not None
        assert busy.message == "Msg"
        assert busy.since_s >= 0
        assert "Gated._slow" in busy.awaiting
        assert "Event.wait" in busy.awaiting
        assert ref.statistics().mailbox_depth == 1
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert waiting_on(ref) is None
        assert ref.statistics().handled == 3
        seen = await ref.proxy().seen
        assert [m if isinstance(m, int) else m.n for m in seen] == [1, 7, 2]


async def test_waiting_on_an_ask_and_a_proxy_call() -> None:
    gate = trio.Event()
    async with open_actor_system() as system, trio.open_nursery() as nursery:
        ref = system.spawn(Gated, gate)
        results: list[Any] = []

        async def call() -> None:
            results.append(await ref.proxy().slow_call())

        nursery.start_soon(call)
        await trio.testing.wait_all_tasks_blocked()
        busy = waiting_on(ref)
        assert busy is not None
        assert busy.message == "slow_call()"
        assert "Gated.slow_call" in busy.awaiting
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert results == ["done"]
        assert waiting_on(ref) is None


class Blocking(ThreadActor):
    def __init__(self, entered: threading.Event, release: threading.Event) -> None:
        super().__init__()
        self.entered = entered
        self.release = release

    def on_receive(self, message: Any) -> Any:
        self.entered.set()
        self.release.wait(10)
        return message


async def test_waiting_on_a_thread_actor() -> None:
    entered, release = threading.Event(), threading.Event()
    async with open_actor_system() as system:
        ref = system.spawn(Blocking, entered, release)
        ref.tell(Msg(1))
        await trio.to_thread.run_sync(entered.wait, 10)
        busy = waiting_on(ref)
        assert busy is not None
        assert (busy.message, busy.awaiting) == ("Msg", "running in its thread")
        release.set()
        await ref.stop()
        assert waiting_on(ref) is None


async def test_trace_records_sync_async_and_failed_handlers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = trio.Event()
    gate.set()
    now = [1000.0]
    monkeypatch.setattr(introspect, "_monotonic", lambda: now[0])
    async with open_actor_system() as system:
        ref = system.spawn(Gated, gate)
        actor: Any = ref._actor
        ref.tell(0)
        await trio.testing.wait_all_tasks_blocked()
        assert "on_receive" not in vars(actor)  # nothing is wrapped while not traced
        assert trace_snapshot(ref).tracing is False

        assert start_trace(ref, 10) == 1010.0
        assert "on_receive" in vars(actor)
        ref.tell(1)
        ref.tell(Msg(99))
        assert await ref.proxy().slow_call() == "done"
        await trio.testing.wait_all_tasks_blocked()
        snap = trace_snapshot(ref)
        assert snap.tracing is True
        assert snap.until_s == 10.0
        assert [e["message"] for e in snap.messages] == ["int", "Msg", "slow_call()"]
        assert snap.messages[1]["repr"].startswith("Msg(99)xx")
        assert len(snap.messages[1]["repr"]) == 200
        assert all(e["duration_ms"] >= 0 and e["error"] is None for e in snap.messages)

        # The ring keeps the last TRACE_CAPACITY entries.
        for i in range(introspect.TRACE_CAPACITY + 5):
            ref.tell(i)
        await trio.testing.wait_all_tasks_blocked()
        snap = trace_snapshot(ref)
        assert len(snap.messages) == introspect.TRACE_CAPACITY
        assert snap.messages[-1]["repr"] == repr(introspect.TRACE_CAPACITY + 4)

        # Expired: the wrappers go, entries stay readable, no more are added.
        now[0] += 11
        assert trace_snapshot(ref).tracing is False
        assert "on_receive" not in vars(actor)
        ref.tell("after")
        await trio.testing.wait_all_tasks_blocked()
        assert len(trace_snapshot(ref).messages) == introspect.TRACE_CAPACITY

        # A failing handler is traced with its error (and still fails the actor).
        start_trace(ref, 5)
        ref.tell("boom")
        await trio.testing.wait_all_tasks_blocked()
        last = trace_snapshot(ref).messages[-1]
        assert last["message"] == "str"
        assert "ValueError" in (last["error"] or "")
        assert not ref.is_alive()
        assert trace_snapshot(ref).tracing is False
