"""tell/ask/proxy/start on trio actors, sync and async handlers."""

from __future__ import annotations

import threading
from typing import Any

import pykka
import pytest
import trio
import trio.lowlevel

from tether.actors import (
    Actor,
    ActorDeadError,
    ActorRef,
    ActorStatistics,
    Future,
    StopReason,
    current_system,
    open_actor_system,
)


class Echo(Actor):
    def __init__(self, log: list[Any] | None = None) -> None:
        super().__init__()
        self.log = log if log is not None else []
        self.counter = 0
        self.attr = "initial"

    def on_start(self) -> None:
        self.log.append(("start", threading.get_ident()))

    def on_receive(self, message: Any) -> Any:
        self.counter += 1
        self.log.append(message)
        return ("echo", message)

    def add(self, a: int, b: int) -> int:
        return a + b

    async def slow_add(self, a: int, b: int) -> int:
        await trio.lowlevel.checkpoint()
        return a + b

    def fail(self) -> None:
        raise KeyError("nope")

    def on_stop(self) -> None:
        self.log.append(("stop", self.stop_reason))


class AsyncEcho(Actor):
    """Every handler is async: messages must still be handled one at a time, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []
        self.busy = False

    async def on_start(self) -> None:
        await trio.lowlevel.checkpoint()
        self.seen.append("started")

    async def on_receive(self, message: Any) -> Any:
        assert not self.busy, "two handlers ran at once"
        self.busy = True
        await trio.lowlevel.checkpoint()
        self.seen.append(message)
        self.busy = False
        if message == "raise":
            raise RuntimeError("async boom")
        return message * 2 if isinstance(message, int) else message


async def test_tell_ask_and_proxy() -> None:
    log: list[Any] = []
    async with open_actor_system():
        ref = Echo.start(log)
        ref.tell("a")
        assert await ref.ask("b") == ("echo", "b")
        assert await ref.ask("c", block=False) == ("echo", "c")
        proxy = ref.proxy()
        assert proxy is ref.proxy(), "the proxy must be cached per ref"
        assert await proxy.add(2, 3) == 5
        assert await proxy.counter == 3
        assert await proxy.slow_add(1, 1) == 2
        proxy.attr = "changed"
        assert await proxy.attr == "changed"
        with pytest.raises(KeyError, match="nope"):
            await proxy.fail()
        assert ref.is_alive(), "an exception in an ask must not stop the actor"
        proxy.add.defer(1, 1)
        assert await ref.ask("d") == ("echo", "d")
    assert log[0] == ("start", threading.get_ident())
    assert log[1:5] == ["a", "b", "c", "d"]
    assert log[-1] == ("stop", StopReason.SHUTDOWN)


async def test_async_handlers_run_one_at_a_time_in_order() -> None:
    async with open_actor_system():
        ref = AsyncEcho.start()
        futures = [ref.ask(i) for i in range(20)]
        ref.tell("tell-between")
        futures.append(ref.ask(21))
        results = [await f for f in futures]
        assert results == [i * 2 for i in range(20)] + [42]
        with pytest.raises(RuntimeError, match="async boom"):
            await ref.ask("raise")
        seen = await ref.proxy().seen
        assert seen == ["started", *range(20), "tell-between", 21, "raise"]
        assert ref.is_alive()


async def test_messages_queued_during_async_on_start_wait_for_it() -> None:
    async with open_actor_system():
        ref = AsyncEcho.start()
        ref.tell(1)
        assert await ref.ask(2) == 4
        assert (await ref.proxy().seen)[:3] == ["started", 1, 2]


async def test_mixed_sync_and_async_handlers_keep_order() -> None:
    class Mixed(Actor):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[int] = []

        def on_receive(self, message: Any) -> Any:
            if message % 3 == 0:
                return self._later(message)
            self.seen.append(message)
            return message

        async def _later(self, message: int) -> int:
            await trio.lowlevel.checkpoint()
            self.seen.append(message)
            return message

    async with open_actor_system():
        ref = Mixed.start()
        for i in range(100):
            ref.tell(i)
        assert await ref.ask(100) == 100
        assert await ref.proxy().seen == list(range(101))


async def test_spawn_and_start_are_equivalent_and_kind_defaults_to_class_name() -> None:
    class Room(Actor):
        kind = "room"

    class SpecialRoom(Room):
        pass

    class Plain(Actor):
        pass

    class PlainChild(Plain):
        pass

    async with open_actor_system() as system:
        assert current_system() is system
        a = system.spawn(Echo)
        b = Echo.start()
        assert a.kind == b.kind == "Echo"
        assert system.spawn(Room).kind == "room"
        assert system.spawn(SpecialRoom).kind == "room", "an explicit kind is inherited"
        assert Plain.kind == "Plain"
        assert PlainChild.kind == "PlainChild"
        assert a != b
        assert a == system.registry.get(a.actor_urn)
        assert len({a, b, system.registry.get(b.actor_urn)}) == 2
        assert a.system is system
        assert a.parent is None


async def test_constructor_errors_and_misuse() -> None:
    class Failing(Actor):
        def __init__(self) -> None:
            super().__init__()
            raise ValueError("bad init")

    async with open_actor_system() as system:
        with pytest.raises(ValueError, match="bad init"):
            Failing.start()
        assert len(system.registry) == 0
        with pytest.raises(TypeError, match=r"^Echo must be started with Echo\.start\(\)"):
            Echo()
        with pytest.raises(TypeError, match="no public constructor"):
            ActorRef(object())
        with pytest.raises(
            TypeError, match=r"^Expected a subclass of tether\.actors\.Actor or ThreadActor"
        ):
            system.spawn(pykka.ThreadingActor)  # type: ignore[type-var]


def test_class_attribute_validation() -> None:
    with pytest.raises(TypeError, match=r"mailbox_size to be a positive int, got 0"):

        class Bad(Actor):
            mailbox_size = 0

    with pytest.raises(TypeError, match=r"kind to be a non-empty str"):

        class BadKind(Actor):
            kind = ""


async def test_statistics_of_live_and_stopped_actor() -> None:
    async with open_actor_system() as system:
        parent = Echo.start()
        for i in range(5):
            parent.tell(i)
        await parent.ask("sync")
        stats = parent.statistics()
        assert isinstance(stats, ActorStatistics)
        assert stats.urn == parent.actor_urn
        assert stats.kind == "Echo"
        assert stats.alive
        assert stats.handled == 6
        assert stats.mailbox_depth == 0
        assert stats.mailbox_peak == 6
        assert stats.mailbox_size == Echo.mailbox_size
        assert stats.failures == 0
        assert stats.last_failure is None
        assert stats.stop_reason is None
        assert stats.parent_urn is None
        assert stats.age_s >= 0
        assert await parent.stop(StopReason.KICKED) is True
        stopped = parent.statistics()
        assert not stopped.alive
        assert stopped.stop_reason is StopReason.KICKED
        sys_stats = system.statistics()
        assert sys_stats.name == "tether"
        assert sys_stats.started_total == 1
        assert sys_stats.actors == 0
        assert sys_stats.handled_total >= 7


async def test_actor_stopped_flag_and_pykka_registry_untouched() -> None:
    class Probe(Actor):
        def flag(self) -> bool:
            return self.actor_stopped.is_set()

    async with open_actor_system():
        ref = Probe.start()
        assert await ref.proxy().flag() is False
        assert ref not in pykka.ActorRegistry.get_all()
        await ref.stop()
        assert not ref.is_alive()


async def test_ask_returns_our_future_on_the_trio_thread() -> None:
    async with open_actor_system():
        ref = Echo.start()
        future = ref.ask("x")
        assert isinstance(future, Future)
        assert isinstance(future, pykka.Future)
        assert await future == ("echo", "x")
        assert future.get() == ("echo", "x"), "a resolved future may be read on the trio thread"


async def test_dead_actor_refuses_tell_ask_proxy() -> None:
    async with open_actor_system():
        ref = Echo.start()
        await ref.stop()
        with pytest.raises(ActorDeadError, match=r"is not alive \(stopped: normal\)$"):
            ref.tell("x")
        with pytest.raises(ActorDeadError):
            await ref.ask("x")
        with pytest.raises(pykka.ActorDeadError):
            await ref.ask("x")
        with pytest.raises(ActorDeadError):
            ref.proxy()
        with pytest.raises(ActorDeadError):
            await ref.send("x")
