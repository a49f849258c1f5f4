"""Trio actors used from foreign threads: batched delivery, blocking asks, bounds."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from tether.actors import (
    Actor,
    ActorDeadError,
    MailboxFull,
    StopReason,
    WouldDeadlock,
    current_system,
    open_actor_system,
)


class Counter(Actor):
    mailbox_size = 50_000

    def __init__(self) -> None:
        super().__init__()
        self.n = 0
        self.per_sender: dict[int, list[int]] = {}

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, tuple):
            sender, seq = message
            self.per_sender.setdefault(sender, []).append(seq)
        self.n += 1
        return self.n

    def add(self, a: int, b: int) -> int:
        return a + b

    async def slow_add(self, a: int, b: int) -> int:
        await trio.lowlevel.checkpoint()
        return a + b


async def test_tells_from_four_threads_all_arrive_in_per_sender_order() -> None:
    with trio.fail_after(30):
        async with open_actor_system():
            ref = Counter.start()

            def spam(sender: int) -> None:
                for seq in range(5000):
                    ref.tell((sender, seq))

            threads = [threading.Thread(target=spam, args=(i,)) for i in range(4)]
            for thread in threads:
                thread.start()
            await trio.to_thread.run_sync(lambda: [t.join() for t in threads])
            assert await ref.ask("last") == 20_001
            per_sender = await ref.proxy().per_sender
            assert all(per_sender[i] == list(range(5000)) for i in range(4))


async def test_blocking_ask_proxy_and_stop_from_a_foreign_thread() -> None:
    with trio.fail_after(30):
        async with open_actor_system():
            ref = Counter.start()

            def worker() -> tuple[Any, ...]:
                a = ref.ask("t")
                b = ref.proxy().add(5, 6).get(timeout=10)
                c = ref.proxy().slow_add(1, 2).get(timeout=10)
                d = ref.ask("u", block=False).get(timeout=10)
                stopped = ref.stop(StopReason.IDLE)
                again = ref.stop()
                return a, b, c, d, stopped, again

            assert await trio.to_thread.run_sync(worker) == (1, 11, 3, 2, True, False)
            assert ref.statistics().stop_reason is StopReason.IDLE

            def dead() -> None:
                with pytest.raises(ActorDeadError):
                    ref.tell("x")
                with pytest.raises(ActorDeadError):
                    ref.ask("x", timeout=10)

            await trio.to_thread.run_sync(dead)


async def test_spawn_and_current_system_from_foreign_threads() -> None:
    with trio.fail_after(30):
        async with open_actor_system() as system:
            seen: list[Any] = []

            def plain_thread() -> None:
                # A thread the application started itself: no context, one system.
                seen.append(current_system())
                ref = Counter.start()
                ref.tell("first")
                seen.append(ref.ask("second", timeout=10))

            thread = threading.Thread(target=plain_thread)
            thread.start()
            await trio.to_thread.run_sync(thread.join)
            assert seen == [system, 2]
            # trio.to_thread copies the context, so the worker finds the system by it
            assert await trio.to_thread.run_sync(current_system) is system


async def test_foreign_tell_respects_the_mailbox_bound() -> None:
    release = trio.Event()

    class Gate(Actor):
        mailbox_size = 5

        async def on_receive(self, message: Any) -> Any:
            await release.wait()

    with trio.fail_after(30):
        async with open_actor_system():
            ref = Gate.start()
            ref.tell("block")
            await trio.testing.wait_all_tasks_blocked()

            def fill() -> int:
                accepted = 0
                try:
                    for _ in range(100):
                        ref.tell("x")
                        accepted += 1
                except MailboxFull:
                    pass
                return accepted

            assert await trio.to_thread.run_sync(fill) == 5
            release.set()


async def test_would_deadlock_on_trio_thread_but_not_in_worker() -> None:
    with trio.fail_after(30):
        async with open_actor_system():
            ref = Counter.start()
            future = ref.proxy().add(1, 1)
            with pytest.raises(WouldDeadlock):
                future.get()
            assert await trio.to_thread.run_sync(lambda: future.get(timeout=10)) == 2


async def test_foreign_ask_queued_at_teardown_fails_instead_of_hanging() -> None:
    release = threading.Event()
    outcome: list[BaseException] = []

    class Stuck(Actor):
        async def on_receive(self, message: Any) -> Any:
            await trio.sleep_forever()

    def asker(ref: Any) -> None:
        try:
            ref.ask("hang", timeout=20)
        except BaseException as exc:
            outcome.append(exc)
        release.set()

    with trio.fail_after(30):
        with trio.move_on_after(0.2):
            async with open_actor_system():
                ref = Stuck.start()
                thread = threading.Thread(target=asker, args=(ref,))
                thread.start()
                await trio.sleep_forever()
        await trio.to_thread.run_sync(release.wait)
    assert len(outcome) == 1
    assert isinstance(outcome[0], ActorDeadError)
