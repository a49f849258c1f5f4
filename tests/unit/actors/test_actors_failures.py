"""pykka's failure semantics on the trio runtime."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any

import pytest
import trio
import trio.lowlevel

from tether.actors import Actor, ActorDeadError, ActorRef, StopReason, open_actor_system


class Recorder(Actor):
    def __init__(self, log: list[Any]) -> None:
        super().__init__()
        self.log = log

    def on_receive(self, message: Any) -> Any:
        if message == "die":
            raise RuntimeError("die")
        self.log.append(message)
        return message

    async def die_later(self) -> None:
        await trio.lowlevel.checkpoint()
        raise LookupError("async die")

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert exception_type is not None
        self.log.append(("failure", exception_type.__name__, str(exception_value)))
        assert traceback is not None

    def on_stop(self) -> None:
        self.log.append("on_stop")


async def test_exception_in_tell_stops_actor_with_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[Any] = []
    async with open_actor_system() as system:
        ref = Recorder.start(log)
        ref.tell("a")
        ref.tell("die")
        queued = ref.ask("never handled")
        with pytest.raises(ActorDeadError, match=r"stopped before handling the message$"):
            await queued
        assert not ref.is_alive()
        stats = ref.statistics()
        assert stats.stop_reason is StopReason.FAILURE
        assert stats.failures == 1
        assert stats.last_failure == "RuntimeError('die')"
        assert system.statistics().failures_total == 1
    assert log == ["a", ("failure", "RuntimeError", "die")], "no on_stop after a failure"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].getMessage().startswith("Unhandled exception in Recorder (urn:tether:")
    assert errors[0].exc_info is not None


async def test_exception_in_async_tell_handler_fails_actor() -> None:
    log: list[Any] = []
    async with open_actor_system():
        ref = Recorder.start(log)
        ref.proxy().die_later.defer()
        with pytest.raises(ActorDeadError):
            await ref.ask("after")
        assert ref.statistics().stop_reason is StopReason.FAILURE
    assert log == [("failure", "LookupError", "async die")]


async def test_exception_in_ask_goes_to_caller_and_is_counted() -> None:
    log: list[Any] = []
    async with open_actor_system():
        ref = Recorder.start(log)
        with pytest.raises(RuntimeError, match="die"):
            await ref.ask("die")
        with pytest.raises(LookupError, match="async die"):
            await ref.proxy().die_later()
        assert ref.is_alive()
        assert await ref.ask("still here") == "still here"
        stats = ref.statistics()
        assert stats.failures == 2
        assert stats.last_failure == "LookupError('async die')"
    assert log == ["still here", "on_stop"]


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_on_start_failure_stops_actor_without_hooks(
    asynchronous: bool, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[str] = []

    class BadStart(Actor):
        if asynchronous:

            async def on_start(self) -> None:
                await trio.lowlevel.checkpoint()
                raise ValueError("no start")
        else:

            def on_start(self) -> None:
                raise ValueError("no start")

        def on_receive(self, message: Any) -> Any:
            log.append(message)

        def on_failure(self, *exc_info: Any) -> None:
            log.append("on_failure")

        def on_stop(self) -> None:
            log.append("on_stop")

    async with open_actor_system():
        ref = BadStart.start()
        queued = ref.ask("x")
        with pytest.raises(ActorDeadError):
            await queued
        assert ref.statistics().stop_reason is StopReason.FAILURE
        assert ref.statistics().last_failure == "ValueError('no start')"
    assert log == []
    assert any("on_start of BadStart" in r.getMessage() for r in caplog.records)


async def test_failing_on_stop_and_on_failure_are_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class BadHooks(Actor):
        def on_receive(self, message: Any) -> Any:
            raise RuntimeError("tell failed")

        def on_failure(self, *exc_info: Any) -> None:
            raise KeyError("on_failure failed")

    class BadStop(Actor):
        def on_stop(self) -> None:
            raise KeyError("on_stop failed")

    async with open_actor_system():
        bad_hooks = BadHooks.start()
        bad_hooks.tell("x")
        bad_stop = BadStop.start()
        assert await bad_stop.stop() is True
        with pytest.raises(ActorDeadError):
            await bad_hooks.ask("y")
        assert bad_hooks.statistics().failures == 2
        assert bad_stop.statistics().last_failure == "KeyError('on_stop failed')"
        assert bad_stop.statistics().stop_reason is StopReason.NORMAL
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("on_failure of BadHooks") for m in messages)
    assert any(m.startswith("on_stop of BadStop") for m in messages)


async def test_async_on_stop_is_refused_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    class AsyncStop(Actor):
        async def on_stop(self) -> None:  # type: ignore[override]
            raise AssertionError("never awaited")

    async with open_actor_system():
        ref = AsyncStop.start()
        await ref.stop()
        assert ref.statistics().last_failure is not None
        assert "to be synchronous, got a coroutine" in ref.statistics().last_failure
    assert any(r.getMessage().startswith("on_stop of AsyncStop") for r in caplog.records)


async def test_parent_is_told_about_a_failed_child() -> None:
    seen: list[tuple[ActorRef[Any], StopReason, BaseException | None]] = []

    class Parent(Actor):
        def on_child_stopped(
            self, child: ActorRef[Any], reason: StopReason, exc: BaseException | None
        ) -> None:
            seen.append((child, reason, exc))

        def spawn(self) -> ActorRef[Any]:
            return self.start_child(Recorder, [])

    async with open_actor_system():
        parent = Parent.start()
        child = await parent.proxy().spawn()
        child.tell("die")
        with pytest.raises(ActorDeadError):
            await child.ask("x")
        await parent.ask("sync")  # on_child_stopped runs as a message before this one
        assert parent.is_alive()
    assert len(seen) == 1
    assert seen[0][0] == child
    assert seen[0][1] is StopReason.FAILURE
    assert isinstance(seen[0][2], RuntimeError)
