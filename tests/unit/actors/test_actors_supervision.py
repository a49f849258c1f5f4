"""Parent/child links: stop cascade, on_child_stopped."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from tether.actors import Actor, ActorDeadError, ActorRef, StopReason, open_actor_system


class Node(Actor):
    """Records its stop and every child stop in a shared log."""

    def __init__(self, log: list[Any], name: str) -> None:
        super().__init__()
        self.log = log
        self.name = name

    def child(self, name: str) -> ActorRef[Any]:
        return self.start_child(Node, self.log, name)

    def on_receive(self, message: Any) -> Any:
        if message == "fail":
            raise RuntimeError(f"{self.name} failed")
        return message

    def on_child_stopped(
        self, child: ActorRef[Any], reason: StopReason, exc: BaseException | None
    ) -> None:
        self.log.append((self.name, "child stopped", reason, type(exc).__name__ if exc else None))

    def on_stop(self) -> None:
        self.log.append((self.name, "on_stop", self.stop_reason))


async def test_stopping_a_parent_stops_the_tree_children_first() -> None:
    log: list[Any] = []
    async with open_actor_system() as system:
        root = Node.start(log, "root")
        proxy = root.proxy()
        a = await proxy.child("a")
        b = await proxy.child("b")
        a1 = await a.proxy().child("a1")
        assert a.parent == root
        assert a1.parent == a
        assert a.statistics().parent_urn == root.actor_urn
        assert root.statistics().children == 2
        assert set(system.registry.children_of(root)) == {a, b}
        assert await root.stop(StopReason.ROOM_CLOSED) is True
        assert not any(r.is_alive() for r in (root, a, b, a1))
        assert len(system.registry) == 0
    # Every child stops (and is reported to its parent) before its parent's on_stop.
    assert log.index(("a1", "on_stop", StopReason.PARENT_STOPPED)) < log.index(
        ("a", "on_stop", StopReason.PARENT_STOPPED)
    )
    assert ("a", "child stopped", StopReason.PARENT_STOPPED, None) in log
    assert log[-1] == ("root", "on_stop", StopReason.ROOM_CLOSED)
    assert log.count(("root", "child stopped", StopReason.PARENT_STOPPED, None)) == 2
    assert len(log) == 7  # 4 on_stop + 3 child-stopped (a1 to a, a and b to root)


async def test_child_stop_and_failure_reach_the_running_parent_as_messages() -> None:
    log: list[Any] = []
    async with open_actor_system() as system:
        root = Node.start(log, "root")
        a = await root.proxy().child("a")
        b = await root.proxy().child("b")
        await a.stop(StopReason.KICKED)
        b.tell("fail")
        await trio.testing.wait_all_tasks_blocked()
        await root.ask("sync")
        assert root.is_alive()
        assert root.statistics().children == 0
        assert system.registry.children_of(root) == []
        await root.stop()
    assert log == [
        ("a", "on_stop", StopReason.KICKED),
        ("root", "child stopped", StopReason.KICKED, None),
        ("root", "child stopped", StopReason.FAILURE, "RuntimeError"),
        ("root", "on_stop", StopReason.NORMAL),
    ]


async def test_failing_parent_stops_its_children_first() -> None:
    log: list[Any] = []
    async with open_actor_system():
        root = Node.start(log, "root")
        a = await root.proxy().child("a")
        root.tell("fail")
        with pytest.raises(ActorDeadError):
            await root.ask("x")
        assert not a.is_alive()
        assert a.statistics().stop_reason is StopReason.PARENT_STOPPED
    assert log == [
        ("a", "on_stop", StopReason.PARENT_STOPPED),
        ("root", "child stopped", StopReason.PARENT_STOPPED, None),
    ], "a failed parent gets on_child_stopped but no on_stop"


async def test_exception_in_on_child_stopped_fails_the_parent() -> None:
    class Strict(Node):
        def on_child_stopped(self, *args: Any) -> None:
            raise ValueError("cannot live without my child")

    log: list[Any] = []
    async with open_actor_system():
        root = Strict.start(log, "root")
        child = await root.proxy().child("c")
        await child.stop()
        with pytest.raises(ActorDeadError):
            await root.ask("x")
        assert root.statistics().stop_reason is StopReason.FAILURE


async def test_start_child_on_stopping_actor_is_refused() -> None:
    class Late(Actor):
        def on_stop(self) -> None:
            with pytest.raises(ActorDeadError):
                self.start_child(Actor)
            self.refused = True

    async with open_actor_system():
        ref = Late.start()
        actor = ref._actor_weakref()
        await ref.stop()
        assert actor is not None
        assert actor.refused  # type: ignore[attr-defined]


async def test_async_child_stop_waits_for_its_handler() -> None:
    release = trio.Event()
    log: list[Any] = []

    class SlowChild(Actor):
        async def on_receive(self, message: Any) -> Any:
            await release.wait()
            log.append("child handled")

        def on_stop(self) -> None:
            log.append("child on_stop")

    class Parent(Actor):
        def spawn(self) -> ActorRef[Any]:
            return self.start_child(SlowChild)

        def on_stop(self) -> None:
            log.append("parent on_stop")

    async with open_actor_system():
        parent = Parent.start()
        child = await parent.proxy().spawn()
        child.tell("work")
        await trio.testing.wait_all_tasks_blocked()
        stopping = parent.stop()
        await trio.testing.wait_all_tasks_blocked()
        assert log == []
        release.set()
        assert await stopping is True
    assert log == ["child handled", "child on_stop", "parent on_stop"]


async def test_async_on_child_stopped_is_refused() -> None:
    class AsyncHook(Node):
        async def on_child_stopped(self, *args: Any) -> None:  # type: ignore[override]
            raise AssertionError("never awaited")

    async with open_actor_system():
        root = AsyncHook.start([], "root")
        child = await root.proxy().child("c")
        await child.stop()
        with pytest.raises(ActorDeadError):
            await root.ask("x")
        last_failure = root.statistics().last_failure
        assert last_failure is not None
        assert "on_child_stopped() to be synchronous" in last_failure
