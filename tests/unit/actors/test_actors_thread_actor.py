"""ThreadActor: blocking actors in the system, interoperating with trio actors both ways."""

from __future__ import annotations

import threading
from typing import Any

import pykka
import pytest
import trio
import trio.testing

from tether.actors import (
    Actor,
    ActorDeadError,
    ActorRef,
    MailboxFull,
    StopReason,
    ThreadActor,
    open_actor_system,
    wait,
)


class TrioSide(Actor):
    def __init__(self, log: list[Any] | None = None) -> None:
        super().__init__()
        self.log = log if log is not None else []

    def on_receive(self, message: Any) -> Any:
        self.log.append(message)
        return ("trio", message)

    def add(self, a: int, b: int) -> int:
        return a + b

    async def ask_thread(self, thread_ref: ActorRef[Any], message: Any) -> Any:
        # The ThreadActor's future is ours: awaited with no thread hop.
        return await thread_ref.ask(message)

    def tell_thread(self, thread_ref: ActorRef[Any], message: Any) -> None:
        thread_ref.tell(message)


class Blocking(ThreadActor):
    def __init__(self, log: list[Any] | None = None) -> None:
        super().__init__()
        self.log = log if log is not None else []
        self.thread_name = ""

    def on_start(self) -> None:
        self.thread_name = threading.current_thread().name

    def on_receive(self, message: Any) -> Any:
        if message == "die":
            raise RuntimeError("thread actor failed")
        if message == "exit":
            raise SystemExit(3)
        self.log.append(message)
        return ("thread", message, threading.current_thread().name)

    def call_trio(self, trio_ref: ActorRef[Any], x: int) -> tuple[Any, Any]:
        # Plain pykka API from a thread: blocks this thread only.
        r1 = trio_ref.ask(x)
        r2 = trio_ref.proxy().add(x, x).get(timeout=10)
        trio_ref.tell(("from-thread", x))
        return r1, r2

    def start_trio(self) -> Any:
        ref = TrioSide.start()
        return ref.ask("hi from a thread", timeout=10)

    def start_trio_child(self) -> ActorRef[Any]:
        return self.start_child(TrioSide, self.log)

    def on_stop(self) -> None:
        self.log.append(("on_stop", self.stop_reason))


async def test_trio_to_thread_tell_ask_proxy() -> None:
    log: list[Any] = []
    with trio.fail_after(30):
        async with open_actor_system() as system:
            ref = Blocking.start(log)
            assert ref.kind == "Blocking"
            assert system.registry.get(ref.actor_urn) is ref
            ref.tell("told")
            reply = await ref.ask("asked")
            assert reply[:2] == ("thread", "asked")
            assert reply[2] != threading.current_thread().name
            assert await ref.proxy().thread_name == reply[2]
            assert (await ref.proxy().on_receive("via proxy"))[:2] == ("thread", "via proxy")
            trio_ref = TrioSide.start()
            assert (await trio_ref.proxy().ask_thread(ref, "from trio actor"))[
                1
            ] == "from trio actor"
            await trio_ref.proxy().tell_thread(ref, "told by trio actor")
            await ref.ask("sync")
            stats = ref.statistics()
            assert stats.kind == "Blocking"
            assert stats.alive
            assert stats.handled >= 6
            assert await ref.stop(StopReason.KICKED) is True
            assert await ref.stop() is False
            assert system.registry.get(ref.actor_urn) is None
    assert log[:2] == ["told", "asked"]
    assert "told by trio actor" in log
    assert log[-1] == ("on_stop", StopReason.KICKED)


async def test_thread_to_trio_tell_ask_proxy_and_start() -> None:
    trio_log: list[Any] = []
    with trio.fail_after(30):
        async with open_actor_system() as system:
            trio_ref = TrioSide.start(trio_log)
            thread_ref = Blocking.start()
            assert await thread_ref.proxy().call_trio(trio_ref, 7) == (("trio", 7), 14)
            assert await thread_ref.proxy().start_trio() == ("trio", "hi from a thread")
            await trio_ref.ask("sync")
            assert ("from-thread", 7) in trio_log
            child = await thread_ref.proxy().start_trio_child()
            await trio.testing.wait_all_tasks_blocked()
            assert child.parent == thread_ref
            assert await child.ask("child?") == ("trio", "child?")
            assert system.registry.children_of(thread_ref) == [child]
            assert await thread_ref.stop() is True
            assert not child.is_alive()
            assert child.statistics().stop_reason is StopReason.PARENT_STOPPED


async def test_trio_actor_with_thread_child_and_ping_pong() -> None:
    done = trio.Event()

    class Pong(ThreadActor):
        def on_receive(self, message: Any) -> Any:
            n, reply_to = message
            if n > 0:
                reply_to.tell((n - 1, self.actor_ref))

    class Ping(Actor):
        def __init__(self) -> None:
            super().__init__()
            self.child_reason: StopReason | None = None

        def start_pong(self) -> ActorRef[Any]:
            return self.start_child(Pong)

        def on_receive(self, message: Any) -> Any:
            n, reply_to = message
            if n == 0:
                done.set()
            else:
                reply_to.tell((n - 1, self.actor_ref))

        def on_child_stopped(self, child: ActorRef[Any], reason: StopReason, exc: Any) -> None:
            self.child_reason = reason

    with trio.fail_after(30):
        async with open_actor_system():
            ping = Ping.start()
            pong = await ping.proxy().start_pong()
            ping.tell((200, pong))
            await done.wait()
            await pong.stop(StopReason.IDLE)
            assert await ping.proxy().child_reason is StopReason.IDLE


async def test_thread_actor_failure_semantics(caplog: pytest.LogCaptureFixture) -> None:
    log: list[Any] = []
    with trio.fail_after(30):
        async with open_actor_system() as system:
            ref = Blocking.start(log)
            with pytest.raises(RuntimeError, match="thread actor failed"):
                await ref.ask("die")
            assert ref.is_alive(), "an exception in an ask goes to the caller"
            ref.tell("die")
            with pytest.raises(ActorDeadError):
                await ref.ask("after")
            assert ref.statistics().stop_reason is StopReason.FAILURE
            assert ("on_stop", StopReason.FAILURE) not in log
            assert system.statistics().failures_total == 1
            contained = Blocking.start()
            contained.tell("exit")  # SystemExit fails this actor only
            with pytest.raises(ActorDeadError):
                await contained.ask("after")
            assert contained.statistics().last_failure == "SystemExit(3)"
            assert await TrioSide.start().ask("still running") == ("trio", "still running")
    assert any(r.getMessage().startswith("Unhandled exception in Blocking") for r in caplog.records)


async def test_thread_actors_stop_with_the_system() -> None:
    log: list[Any] = []
    with trio.fail_after(30):
        async with open_actor_system():
            ref = Blocking.start(log)
            ref.tell("queued")
        assert not ref.is_alive()
        assert log == ["queued", ("on_stop", StopReason.SHUTDOWN)]

        with trio.move_on_after(0.1):
            async with open_actor_system():
                cancelled = Blocking.start(log)
                await trio.sleep_forever()
        assert not cancelled.is_alive()
        assert log[-1] == ("on_stop", StopReason.SHUTDOWN)


async def test_thread_actor_mailbox_bound_and_send() -> None:
    gate = threading.Event()
    entered = threading.Event()

    class Slow(ThreadActor):
        mailbox_size = 2

        def on_receive(self, message: Any) -> Any:
            entered.set()
            gate.wait(10)
            return message

    with trio.fail_after(30):
        async with open_actor_system():
            ref = Slow.start()
            ref.tell(1)
            await trio.to_thread.run_sync(entered.wait)  # 1 is taken: the mailbox is empty
            ref.tell(2)
            ref.tell(3)
            with pytest.raises(MailboxFull):
                ref.tell(4)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ref.send, 4)
                await trio.testing.wait_all_tasks_blocked()
                gate.set()
            assert await ref.ask("last") == "last"


async def test_stock_pykka_threading_actor_interop() -> None:
    class Stock(pykka.ThreadingActor):
        def on_receive(self, message: Any) -> Any:
            if isinstance(message, ActorRef):
                return message.ask("from stock", timeout=10)  # blocks the stock thread only
            return ("stock", message)

    with trio.fail_after(30):
        async with open_actor_system():
            stock = Stock.start()
            trio_ref = TrioSide.start()
            # trio -> stock: a ThreadingFuture goes through wait() (a thread hop)
            assert await wait(stock.ask("x", block=False)) == ("stock", "x")
            # stock -> trio: the plain pykka API from its thread
            assert await wait(stock.ask(trio_ref, block=False)) == ("trio", "from stock")
            await trio.to_thread.run_sync(stock.stop)


async def test_thread_actor_self_stop_and_async_handler_misuse() -> None:
    log: list[Any] = []

    class Quitter(ThreadActor):
        def on_receive(self, message: Any) -> Any:
            if message == "quit":
                self.stop(StopReason.IDLE)
                return "bye"
            log.append(message)
            return message

        def on_stop(self) -> None:
            log.append(("on_stop", self.stop_reason))

    class Confused(ThreadActor):
        async def on_receive(self, message: Any) -> Any:
            return message

    with trio.fail_after(30):
        async with open_actor_system():
            quitter = Quitter.start()
            quitter.tell(1)
            reply = quitter.ask("quit")
            queued = quitter.ask(2)
            assert await reply == "bye"
            with pytest.raises(ActorDeadError):
                await queued
            assert quitter.statistics().stop_reason is StopReason.IDLE
            confused = Confused.start()
            with pytest.raises(TypeError, match=r"on_receive\(\) to be synchronous"):
                await confused.ask("x")
    assert log == [1, ("on_stop", StopReason.IDLE)]
