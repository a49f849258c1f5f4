"""Outbox holds for resume: pure logic against a recording sink."""

from __future__ import annotations

from collections.abc import Hashable

import pytest

from tether.actors.outbox import Outbox
from tether.transport.websocket import SendQueueFull


class Sink:
    """Records what reaches the socket; ``limit`` bytes make it 'full'."""

    def __init__(self, limit: int = 1 << 30) -> None:
        self.writes: list[tuple[bytes, Hashable | None]] = []
        self.limit = limit
        self.closed = False

    def send_frame(self, frame: bytes, *, key: Hashable | None = None) -> None:
        if len(frame) > self.limit:
            raise SendQueueFull(0, len(frame), self.limit)
        self.writes.append((frame, key))

    @property
    def data(self) -> bytes:
        return b"".join(frame for frame, _ in self.writes)


def outbox(sink: Sink, **kwargs: int) -> tuple[Outbox, list[str]]:
    overflows: list[str] = []
    return Outbox(1, sink, lambda: overflows.append("overflow"), **kwargs), overflows


def test_unheld_rooms_and_untagged_frames_go_straight_out() -> None:
    sink = Sink()
    box, _ = outbox(sink)
    box.hold("r1")
    assert box.push(b"A", room="r2", seq=5)
    assert box.push(b"B")
    assert box.push(b"C", key=("presence", "bob"))
    assert sink.writes == [(b"A", None), (b"B", None), (b"C", ("presence", "bob"))]
    assert box.holding == ("r1",)


def test_release_sends_replay_then_what_came_after_the_head() -> None:
    sink = Sink()
    box, _ = outbox(sink)
    box.hold("r1")
    box.push(b"m4", room="r1", seq=4)  # pushed before the room fixed its head: replayed
    box.push(b"typing", room="r1", key=("typing", "r1"))  # not a message: kept
    box.push(b"m7", room="r1", seq=7)  # after the head: kept, after the replay
    assert sink.writes == []
    assert box.release("r1", [b"m3", b"m4", b"m5", b"m6", b"rec"], head=6)
    assert sink.data == b"m3m4m5m6rec" + b"typing" + b"m7"
    assert box.holding == ()
    box.push(b"m8", room="r1", seq=8)
    assert sink.data.endswith(b"m8")


def test_release_of_a_room_not_held_does_nothing() -> None:
    sink = Sink()
    box, _ = outbox(sink)
    assert not box.release("r1", [b"x"], head=1)
    assert sink.writes == []


def test_a_long_replay_is_written_in_pieces_under_the_queue_bound() -> None:
    sink = Sink(limit=300 << 10)
    box, overflows = outbox(sink)
    box.hold("r1")
    frames = [bytes(1024) for _ in range(1000)]  # ~1 MiB in all
    assert box.release("r1", frames, head=1000)
    assert overflows == []
    assert len(sink.writes) > 1
    assert sum(len(f) for f, _ in sink.writes) == 1000 * 1024


def test_held_frames_are_bounded() -> None:
    sink = Sink()
    box, overflows = outbox(sink, max_held_bytes=10)
    box.hold("r1")
    assert box.push(b"12345", room="r1", seq=1)
    assert not box.push(b"123456", room="r1", seq=2)
    assert overflows == ["overflow"]
    assert box.overflowed
    assert not box.push(b"x")  # an overflowed outbox takes nothing more


@pytest.mark.parametrize("key", [None, ("typing", "r1")])
def test_a_full_queue_overflows_once(key: Hashable | None) -> None:
    sink = Sink(limit=2)
    box, overflows = outbox(sink)
    assert not box.push(b"too big", key=key)
    assert not box.push(b"x")
    assert overflows == ["overflow"]
