"""Our Future: awaitable, get()-able from threads, callback-based combinators."""

from __future__ import annotations

import queue
import threading
from typing import Any

import pykka
import pytest
import trio
import trio.testing

from tether.actors import (
    Actor,
    AskTimeout,
    Future,
    WouldDeadlock,
    open_actor_system,
    wait,
)


class Math(Actor):
    def add(self, a: int, b: int) -> int:
        return a + b

    def numbers(self) -> list[int]:
        return [1, 2, 3, 4]

    def fail(self) -> None:
        raise ZeroDivisionError("nope")

    async def slow(self) -> str:
        await trio.sleep(1000)
        return "finally"


async def test_combinators_are_awaitable() -> None:
    async with open_actor_system():
        proxy = Math.start().proxy()
        assert await proxy.add(1, 2).map(lambda v: v * 10) == 30
        joined = proxy.add(1, 1).join(proxy.add(2, 2), proxy.add(3, 3))
        assert await joined == [2, 4, 6]
        assert await joined.reduce(lambda a, b: a + b) == 12
        assert await joined.reduce(lambda a, b: a + b, 100) == 112
        assert await proxy.numbers().filter(lambda v: v % 2 == 0) == [2, 4]
        with pytest.raises(ZeroDivisionError):
            await proxy.add(1, 1).join(proxy.fail())
        with pytest.raises(ZeroDivisionError):
            await proxy.fail().map(lambda v: v)
        with pytest.raises(TypeError):
            await proxy.add(1, 1).map(lambda v: v + "x")


async def test_get_on_the_trio_thread_raises_would_deadlock() -> None:
    async with open_actor_system():
        proxy = Math.start().proxy()
        future = proxy.add(1, 2)
        with pytest.raises(WouldDeadlock, match="would block the event loop"):
            future.get()
        with pytest.raises(RuntimeError):
            future.get()
        assert await future == 3
        assert future.get() == 3
        assert future.done()


async def test_aget_timeout_and_ask_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with open_actor_system():
        ref = Math.start()
        proxy = ref.proxy()
        slow = proxy.slow()
        with pytest.raises(AskTimeout, match=r"^no reply within 5 seconds$"):
            await slow.aget(timeout=5)
        with pytest.raises(pykka.Timeout):
            await slow.aget(timeout=5)
        assert await slow == "finally", "a timed-out future still gets its result"
        asked = ref.ask(
            pykka.messages.ProxyCall(attr_path=("slow",), args=(), kwargs={}), timeout=3
        )
        with pytest.raises(AskTimeout):
            await asked
        assert await Math.start().proxy().add(2, 2).aget(timeout=1) == 4


async def test_set_from_a_thread_wakes_all_awaiting_tasks() -> None:
    future: Future[str] = Future()
    results: list[str] = []

    async def waiter() -> None:
        results.append(await future)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            await trio.to_thread.run_sync(future.set, "from thread")
    assert results == ["from thread", "from thread"]
    with pytest.raises(queue.Full):
        future.set("twice")


async def test_cancelled_await_leaves_future_usable() -> None:
    future: Future[int] = Future()
    with trio.move_on_after(0.01):
        await future
    assert future._waiters == []
    future.set(7)
    assert await future == 7


def test_blocking_get_from_a_plain_thread() -> None:
    future: Future[int] = Future()
    threading.Timer(0.01, future.set, args=(5,)).start()
    assert future.get(timeout=10) == 5
    other: Future[int] = Future()
    with pytest.raises(AskTimeout, match=r"^no result within 0.01 seconds$"):
        other.get(timeout=0.01)


def test_exception_keeps_its_traceback_across_gets() -> None:
    future: Future[Any] = Future()
    try:
        raise KeyError("k")
    except KeyError:
        future.set_exception()
    lengths = []
    for _ in range(3):
        with pytest.raises(KeyError) as info:
            future.get()
        lengths.append(len(list(_frames(info.value.__traceback__))))
    assert lengths[0] == lengths[1] == lengths[2], "the traceback must not grow per get()"
    with pytest.raises(TypeError, match=r"^Expected an exception to set"):
        Future().set_exception((None, None, None))


def _frames(tb: Any) -> Any:
    while tb is not None:
        yield tb
        tb = tb.tb_next


def test_callbacks_run_once_and_errors_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    future: Future[int] = Future()
    seen: list[int] = []
    future.add_done_callback(lambda f: seen.append(f.get()))
    future.add_done_callback(lambda f: 1 / 0)  # type: ignore[func-returns-value]
    future.set(3)
    future.add_done_callback(lambda f: seen.append(f.get() * 2))
    assert seen == [3, 6]
    assert any("callback" in r.getMessage() for r in caplog.records)


async def test_get_hook_futures_keep_pykka_semantics() -> None:
    future: Future[int] = Future()
    future.set_get_hook(lambda timeout: 41 + 1)
    assert await future == 42
    assert future.get() == 42
    mapped = future.map(lambda v: v + 1)
    assert await wait(mapped) == 43
    with pytest.raises(TypeError, match="get-hook"):
        future.add_done_callback(lambda f: None)


async def test_wait_on_a_stock_threading_future() -> None:
    class Stock(pykka.ThreadingActor):
        def on_receive(self, message: Any) -> Any:
            if message == "slow":
                threading.Event().wait(0.2)
            return ("stock", message)

    ref = Stock.start()
    try:
        with trio.fail_after(10):
            assert await wait(ref.ask("x", block=False)) == ("stock", "x")
            with pytest.raises(AskTimeout):
                await wait(ref.ask("slow", block=False), timeout=0.01)
            with pytest.raises(TypeError, match=r"^Expected a pykka Future"):
                await wait("nope")  # type: ignore[arg-type]
    finally:
        await trio.to_thread.run_sync(ref.stop)
