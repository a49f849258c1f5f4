"""Stopping one actor, and closing a whole system gracefully or by cancellation."""

from __future__ import annotations

from typing import Any

import pykka
import pytest
import trio
import trio.testing

from tether.actors import (
    Actor,
    ActorDeadError,
    AskTimeout,
    Future,
    StopReason,
    current_system,
    open_actor_system,
)


class Counter(Actor):
    def __init__(self, log: list[Any] | None = None, name: str = "") -> None:
        super().__init__()
        self.n = 0
        self.log = log if log is not None else []
        self.name = name

    def on_receive(self, message: Any) -> Any:
        if message == "stop-self":
            self.stop(StopReason.IDLE)
            return "stopping"
        self.n += 1
        return self.n

    def on_stop(self) -> None:
        self.log.append((self.name or self.kind, self.stop_reason))


class Blocker(Actor):
    """Its async handler waits until the test lets it go (or forever)."""

    def __init__(self, log: list[Any], release: trio.Event) -> None:
        super().__init__()
        self.log = log
        self.release = release

    async def on_receive(self, message: Any) -> Any:
        self.log.append(("handling", message))
        await self.release.wait()
        return message

    def on_stop(self) -> None:
        self.log.append(("on_stop", self.stop_reason))


async def test_stop_handles_queued_messages_first() -> None:
    async with open_actor_system():
        ref = Counter.start()
        for _ in range(100):
            ref.tell("x")
        stopping = ref.stop()
        late = ref.ask("late")
        assert await stopping is True
        assert ref.statistics().handled == 101
        with pytest.raises(ActorDeadError, match="stopped before handling the message"):
            await late
        assert await ref.stop() is False


async def test_stop_while_stopping_waits_for_the_end() -> None:
    log: list[Any] = []
    release = trio.Event()
    async with open_actor_system():
        child_holder: list[Any] = []

        class Parent(Actor):
            def spawn(self) -> Any:
                child_holder.append(self.start_child(Blocker, log, release))

            def on_stop(self) -> None:
                log.append(("parent on_stop", self.stop_reason))

        p = Parent.start()
        await p.proxy().spawn()
        child = child_holder[0]
        child.tell("busy")
        await trio.testing.wait_all_tasks_blocked()
        first = p.stop()
        await trio.testing.wait_all_tasks_blocked()
        assert not p.is_alive(), "stopping (waiting for its child): no longer alive"
        second = p.stop()
        assert not first.done()
        assert not second.done()
        release.set()
        assert await first is True
        assert await second is True
        assert await p.stop() is False
    assert log.index(("on_stop", StopReason.PARENT_STOPPED)) < log.index(
        ("parent on_stop", StopReason.NORMAL)
    )


async def test_self_stop_happens_after_the_current_message() -> None:
    log: list[Any] = []
    async with open_actor_system():
        ref = Counter.start(log)
        ref.tell(1)
        reply = ref.ask("stop-self")
        queued = ref.ask(2)
        assert await reply == "stopping"
        with pytest.raises(ActorDeadError):
            await queued
        assert ref.statistics().stop_reason is StopReason.IDLE
    assert log == [("Counter", StopReason.IDLE)]


async def test_self_stop_in_on_start() -> None:
    class Quitter(Actor):
        def on_start(self) -> None:
            self.stop(StopReason.AUTH_FAILED)

        def on_receive(self, message: Any) -> Any:
            raise AssertionError("no message after stop")

    async with open_actor_system():
        ref = Quitter.start()
        queued = ref.ask("x")
        with pytest.raises(ActorDeadError):
            await queued
        assert ref.statistics().stop_reason is StopReason.AUTH_FAILED


async def test_graceful_close_stops_in_reverse_start_order_with_children_first() -> None:
    log: list[Any] = []

    class Parent(Counter):
        def on_start(self) -> None:
            self.start_child(Counter, log, f"{self.name}.child")

    async with open_actor_system() as system:
        a = system.spawn(Parent, log, "a")
        b = system.spawn(Parent, log, "b")
        c = system.spawn(Counter, log, "c")
        await a.ask("sync")
        await b.ask("sync")
        # Registered in this order: a, b, c, a.child, b.child (children start in on_start).
        assert [r.actor_urn for r in system.registry][:3] == [x.actor_urn for x in (a, b, c)]
    assert not any(r.is_alive() for r in (a, b, c))
    assert log == [
        ("b.child", StopReason.SHUTDOWN),
        ("a.child", StopReason.SHUTDOWN),
        ("c", StopReason.SHUTDOWN),
        ("b", StopReason.SHUTDOWN),
        ("a", StopReason.SHUTDOWN),
    ]
    assert len(system.registry) == 0


async def test_graceful_close_handles_queued_messages_and_waits_for_children() -> None:
    log: list[Any] = []
    release = trio.Event()

    class Parent(Counter):
        def on_start(self) -> None:
            self.start_child(Blocker, log, release)

    async with open_actor_system() as system:
        busy = system.spawn(Counter, log, "busy")
        parent = system.spawn(Parent, log, "parent")
        await parent.ask("sync")
        (child,) = system.registry.children_of(parent)
        child.tell("slow")
        for _ in range(10):
            busy.tell("queued before shutdown")
        system.nursery.start_soon(_release_later, release)
    assert busy.statistics().handled == 11, "queued messages are handled before on_stop"
    assert log.index(("on_stop", StopReason.SHUTDOWN)) < log.index(("parent", StopReason.SHUTDOWN))


async def _release_later(release: trio.Event) -> None:
    await trio.testing.wait_all_tasks_blocked()
    release.set()


async def test_graceful_close_cancels_leftover_system_tasks() -> None:
    cancelled = trio.Event()

    async def forever() -> None:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    async with open_actor_system() as system:
        system.nursery.start_soon(forever)
        Counter.start()
    assert cancelled.is_set()


async def test_cancellation_tears_down_actors_and_fails_pending_asks() -> None:
    log: list[Any] = []
    release = trio.Event()
    pending: list[Future[Any]] = []
    with trio.move_on_after(1) as scope:
        async with open_actor_system():
            counter = Counter.start(log, "counter")
            blocker = Blocker.start(log, release)
            pending.append(blocker.ask("in flight"))
            pending.append(blocker.ask("queued"))
            await counter.ask("sync")
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert ("counter", StopReason.SHUTDOWN) in log
    assert ("on_stop", StopReason.SHUTDOWN) in log
    for future in pending:
        with pytest.raises(ActorDeadError, match=r"^Blocker \(urn:tether:"):
            future.get()
    assert not counter.is_alive()
    assert not blocker.is_alive()


async def test_exception_in_block_propagates_unwrapped_after_teardown() -> None:
    log: list[Any] = []

    async def body() -> None:
        async with open_actor_system():
            Counter.start(log, "x")
            raise ValueError("boom")

    with pytest.raises(ValueError, match=r"^boom$"):
        await body()
    assert log == [("x", StopReason.SHUTDOWN)]


async def test_base_exception_in_handler_tears_the_system_down() -> None:
    log: list[Any] = []

    class Fatal(Actor):
        def on_receive(self, message: Any) -> Any:
            raise KeyboardInterrupt

    async def body() -> None:
        async with open_actor_system():
            Counter.start(log, "bystander")
            fatal = Fatal.start()
            fatal.tell("x")
            await trio.sleep_forever()

    with pytest.raises(KeyboardInterrupt):
        await body()
    assert log == [("bystander", StopReason.SHUTDOWN)]


async def test_cancellation_never_calls_pykka_stop_all(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pykka.ActorRegistry.stop_all must never be called")

    monkeypatch.setattr(pykka.ActorRegistry, "stop_all", forbidden)
    release = trio.Event()
    with trio.move_on_after(1) as scope:
        async with open_actor_system():
            blocker = Blocker.start([], release)
            blocker.tell("x")
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
    assert scope.cancelled_caught
    assert not blocker.is_alive()


async def test_spawn_into_closed_system_and_no_current_system() -> None:
    async with open_actor_system() as system:
        pass
    with pytest.raises(ActorDeadError, match="actor system 'tether' is closed"):
        system.spawn(Counter)
    with pytest.raises(RuntimeError, match=r"^Expected a running actor system, got none"):
        current_system()
    with pytest.raises(RuntimeError):
        Counter.start()


async def test_actors_spawned_during_shutdown_are_stopped_too() -> None:
    log: list[Any] = []

    class Spawner(Counter):
        def on_stop(self) -> None:
            super().on_stop()
            log.append("spawning in on_stop")
            self.system.spawn(Counter, log, "late")

    async with open_actor_system() as system:
        system.spawn(Spawner, log, "spawner")
    assert log == [
        ("spawner", StopReason.SHUTDOWN),
        "spawning in on_stop",
        ("late", StopReason.SHUTDOWN),
    ]


async def test_self_stop_from_a_worker_thread_of_the_actor() -> None:
    log: list[Any] = []

    class Offloader(Counter):
        async def work(self) -> str:
            # Blocking work in a worker thread decides that the actor is done.
            await trio.to_thread.run_sync(self.stop, StopReason.CLIENT_LEFT)
            return "done"

    with trio.fail_after(30):
        async with open_actor_system():
            ref = Offloader.start(log, "offloader")
            assert await ref.proxy().work() == "done"
            assert await ref.stop() is False, "it had stopped right after work()"
            assert ref.statistics().stop_reason is StopReason.CLIENT_LEFT
    assert log == [("offloader", StopReason.CLIENT_LEFT)]


async def test_pykka_stop_message_and_stop_timeout(autojump_clock: trio.testing.MockClock) -> None:
    release = trio.Event()
    async with open_actor_system():
        ref = Counter.start()
        ref.tell(pykka.messages._ActorStop())
        assert await ref.stop() is True, "queued behind pykka's stop message"
        assert not ref.is_alive()
        blocker = Blocker.start([], release)
        blocker.tell("busy")
        with pytest.raises(AskTimeout):
            await blocker.stop(timeout=5)
        release.set()
        assert await blocker.stop() is True


async def test_a_crashing_system_task_tears_the_actors_down() -> None:
    log: list[Any] = []

    async def crash() -> None:
        raise OSError("listener died")

    async def body() -> None:
        async with open_actor_system() as system:
            Counter.start(log, "bystander")
            system.nursery.start_soon(crash)
            await trio.sleep_forever()

    with pytest.raises(OSError, match=r"^listener died$"):
        await body()
    assert log == [("bystander", StopReason.SHUTDOWN)]


async def test_graceful_close_is_bounded_by_shutdown_timeout(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[Any] = []
    started = trio.current_time()
    async with open_actor_system(shutdown_timeout=5.0):
        hung = Blocker.start(log, trio.Event())  # never released
        hung.tell("work")
        well = Counter.start(log, name="well")
        await well.ask(1)
    # The healthy actor stopped gracefully; the hung one was torn down at the deadline.
    assert trio.current_time() - started == pytest.approx(5.0, abs=0.5)
    assert ("well", StopReason.SHUTDOWN) in log
    assert ("handling", "work") in log
    assert any(entry[0] == "on_stop" for entry in log)
    assert "did not stop within 5.0s" in caplog.text
