"""Bounded mailboxes: MailboxFull, send() backpressure, control messages, compaction."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from tether.actors import Actor, ActorDeadError, MailboxFull, open_actor_system


class Small(Actor):
    mailbox_size = 3

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []

    def on_receive(self, message: Any) -> Any:
        self.seen.append(message)
        return message


class Gate(Actor):
    """Blocks in an async handler until released, so its mailbox fills up."""

    mailbox_size = 2

    def __init__(self, release: trio.Event, seen: list[Any] | None = None) -> None:
        super().__init__()
        self.release = release
        self.seen: list[Any] = seen if seen is not None else []

    async def on_receive(self, message: Any) -> Any:
        if message == "block":
            await self.release.wait()
        self.seen.append(message)
        return message


async def test_tell_raises_mailbox_full_at_the_bound() -> None:
    async with open_actor_system():
        ref = Small.start()
        await ref.ask("started")
        for i in range(3):
            ref.tell(i)
        with pytest.raises(
            MailboxFull, match=r"^mailbox of Small \(urn:tether:.*\) is full \(3 messages\)$"
        ) as info:
            ref.tell(3)
        assert info.value.actor_urn == ref.actor_urn
        assert info.value.mailbox_size == 3
        with pytest.raises(MailboxFull):
            ref.ask("no room")
        stats = ref.statistics()
        assert stats.mailbox_depth == 3
        assert stats.mailbox_peak == 3
        assert await ref.stop() is True, "a stop request is accepted even when full"
        assert ref.statistics().handled == 5  # "started", 0, 1, 2 and the stop request


async def test_send_waits_for_room_then_delivers_in_order() -> None:
    release = trio.Event()
    async with open_actor_system():
        ref = Gate.start(release)
        ref.tell("block")
        await trio.testing.wait_all_tasks_blocked()
        ref.tell(1)
        ref.tell(2)
        with pytest.raises(MailboxFull):
            ref.tell(3)
        sent: list[int] = []

        async def sender() -> None:
            for i in (3, 4, 5):
                await ref.send(i)
                sent.append(i)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            await trio.testing.wait_all_tasks_blocked()
            assert sent == [], "send() must wait while the mailbox is full"
            release.set()
        assert sent == [3, 4, 5]
        assert await ref.ask("last") == "last"
        assert await ref.proxy().seen == ["block", 1, 2, 3, 4, 5, "last"]


async def test_send_is_cancellable_and_fails_when_actor_stops() -> None:
    release = trio.Event()
    seen: list[Any] = []
    async with open_actor_system():
        ref = Gate.start(release, seen)
        ref.tell("block")
        await trio.testing.wait_all_tasks_blocked()
        ref.tell(1)
        ref.tell(2)
        with trio.move_on_after(0.5) as scope:
            await ref.send("cancelled")
        assert scope.cancelled_caught
        failure: list[BaseException] = []

        async def sender() -> None:
            try:
                await ref.send("too late")
            except ActorDeadError as exc:
                failure.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            await trio.testing.wait_all_tasks_blocked()
            stopping = ref.stop()
            release.set()
            assert await stopping is True
        assert len(failure) == 1
    assert seen == ["block", 1, 2]


async def test_send_on_free_mailbox_is_a_checkpoint() -> None:
    async with open_actor_system():
        ref = Small.start()
        with trio.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(trio.Cancelled):
                await ref.send("x")
        assert await ref.ask("y") == "y"
        assert await ref.proxy().seen == ["y"], "a cancelled send sends nothing"


async def test_mailbox_that_never_drains_is_compacted_and_keeps_order() -> None:
    class Relay(Actor):
        mailbox_size = 100_000

        def __init__(self) -> None:
            super().__init__()
            self.expected = 0
            self.out_of_order = 0

        def on_receive(self, message: Any) -> Any:
            if message != self.expected:
                self.out_of_order += 1
            self.expected += 1
            if message < 30_000:
                # The mailbox never empties: every early message tells a late one.
                self.actor_ref.tell(message + 50_000)

        def check(self) -> tuple[int, int]:
            return self.expected, self.out_of_order

    async with open_actor_system():
        ref = Relay.start()
        for i in range(50_000):
            ref.tell(i)
        await ref.proxy().check()  # queued after 0..49999, before most self-tells
        assert await ref.proxy().check() == (80_000, 0)
        assert ref.statistics().mailbox_depth == 0
        assert ref.statistics().mailbox_peak >= 50_000
