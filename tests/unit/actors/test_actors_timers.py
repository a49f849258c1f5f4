"""Actor timers on the trio clock (driven by the autojump clock)."""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio
import trio.testing

from tether.actors import (
    Actor,
    ActorDeadError,
    StopReason,
    TimerHandle,
    open_actor_system,
)


class Clocked(Actor):
    mailbox_size = 100_000

    def __init__(self, fired: list[tuple[float, Any]]) -> None:
        super().__init__()
        self.fired = fired

    def on_receive(self, message: Any) -> Any:
        self.fired.append((trio.current_time(), message))

    def later(self, delay: float, message: Any) -> TimerHandle:
        return self.call_later(delay, message)

    def at(self, deadline: float, message: Any) -> TimerHandle:
        return self.call_at(deadline, message)

    def schedule_many(self, items: list[tuple[float, int]]) -> list[TimerHandle]:
        return [self.call_later(delay, (delay, i)) for delay, i in items]


async def test_timers_fire_at_their_deadline_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fired: list[tuple[float, Any]] = []
    async with open_actor_system() as system:
        ref = Clocked.start(fired)
        proxy = ref.proxy()
        start = trio.current_time()
        late = await proxy.later(30, "late")
        await proxy.later(10, "early")
        await proxy.at(start + 20, "middle")
        await proxy.later(10, "early too")  # same deadline: scheduling order
        assert late.deadline == start + 30
        assert not late.cancelled
        assert system.statistics().timers_pending == 4
        await trio.sleep(31)
        assert [m for _, m in fired] == ["early", "early too", "middle", "late"]
        assert [t - start for t, _ in fired] == [10, 10, 20, 30]
        assert system.statistics().timers_pending == 0
        late.cancel()  # after firing: no effect
        assert not late.cancelled


async def test_cancel_and_cancel_on_stop(autojump_clock: trio.testing.MockClock) -> None:
    fired: list[tuple[float, Any]] = []
    async with open_actor_system() as system:
        ref = Clocked.start(fired)
        proxy = ref.proxy()
        cancelled = await proxy.later(5, "cancelled")
        cancelled.cancel()
        cancelled.cancel()  # idempotent
        assert cancelled.cancelled
        kept = await proxy.later(6, "kept")
        await trio.sleep(7)
        assert [m for _, m in fired] == ["kept"]
        assert not kept.cancelled
        pending = await proxy.later(100, "never")
        assert system.statistics().timers_pending == 1
        await ref.stop()
        assert pending.cancelled, "an actor's timers are cancelled when it stops"
        assert system.statistics().timers_pending == 0
        await trio.sleep(200)
        assert [m for _, m in fired] == ["kept"]
        assert "cancelled" in repr(pending)


async def test_earlier_timer_wakes_the_timer_task(autojump_clock: trio.testing.MockClock) -> None:
    fired: list[tuple[float, Any]] = []
    async with open_actor_system():
        proxy = Clocked.start(fired).proxy()
        start = trio.current_time()
        await proxy.later(1000, "far")
        await trio.sleep(1)  # the timer task now sleeps until start + 1000
        await proxy.later(1, "near")
        await trio.sleep(5)
        assert [(t - start, m) for t, m in fired] == [(2, "near")]


async def test_many_timers_fire_in_deadline_order(autojump_clock: trio.testing.MockClock) -> None:
    fired: list[tuple[float, Any]] = []
    rng = random.Random(42)
    async with open_actor_system() as system:
        actors = [Clocked.start(fired) for _ in range(50)]
        start = trio.current_time()
        plan: list[list[tuple[float, int]]] = [[] for _ in actors]
        for i in range(10_000):
            plan[i % len(actors)].append((rng.uniform(0, 1000), i))
        handles: list[TimerHandle] = [None] * 10_000  # type: ignore[list-item]
        for ref, items in zip(actors, plan, strict=True):
            made = await ref.proxy().schedule_many(items)
            for (_, i), handle in zip(items, made, strict=True):
                handles[i] = handle
        cancelled = set(range(0, 10_000, 3))
        for i in cancelled:
            handles[i].cancel()
        assert system.statistics().timers_pending == 10_000 - len(cancelled)
        await trio.sleep(1001)
        delivered = [message for _, message in fired]
        assert len(delivered) == 10_000 - len(cancelled)
        assert {i for _, i in delivered}.isdisjoint(cancelled)
        times = [t for t, _ in fired]
        assert times == sorted(times)
        for t, (delay, _) in fired:
            assert t - start == pytest.approx(delay, abs=1e-6)
        assert system.statistics().timers_pending == 0


async def test_timer_into_full_mailbox_is_dropped_and_counted(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    release = trio.Event()

    class Busy(Actor):
        mailbox_size = 1

        def __init__(self) -> None:
            super().__init__()
            self.seen: list[Any] = []

        async def on_receive(self, message: Any) -> Any:
            if message == "block":
                await release.wait()
            self.seen.append(message)

        def arm(self) -> None:
            self.call_later(1, "tick")

    async with open_actor_system() as system:
        ref = Busy.start()
        await ref.proxy().arm()
        ref.tell("block")
        await trio.testing.wait_all_tasks_blocked()
        ref.tell("fills the mailbox")
        await trio.sleep(2)
        assert ref.statistics().dropped == 1
        assert system.statistics().dropped_total == 1
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert await ref.proxy().seen == ["block", "fills the mailbox"]
    assert any("dropped a timer message (str)" in r.getMessage() for r in caplog.records)


async def test_timer_misuse() -> None:
    fired: list[tuple[float, Any]] = []
    async with open_actor_system():
        ref = Clocked.start(fired)
        proxy = ref.proxy()
        with pytest.raises(ValueError, match=r"^Expected a delay >= 0 seconds, got -1$"):
            await proxy.later(-1, "x")
        with pytest.raises(ValueError, match="Expected a deadline on the trio clock"):
            await proxy.at(float("nan"), "x")
        actor = ref._actor_weakref()
        assert actor is not None
        await ref.stop(StopReason.IDLE)
        with pytest.raises(ActorDeadError):
            actor.call_later(1, "x")
        with pytest.raises(TypeError, match="no public constructor"):
            TimerHandle()


async def test_past_deadline_fires_at_once(autojump_clock: trio.testing.MockClock) -> None:
    fired: list[tuple[float, Any]] = []
    async with open_actor_system():
        proxy = Clocked.start(fired).proxy()
        now = trio.current_time()
        await proxy.at(now - 10, "past")
        await trio.testing.wait_all_tasks_blocked()
        assert [m for _, m in fired] == ["past"]
        assert fired[0][0] == now
