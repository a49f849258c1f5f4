"""Actor timers: one heap and one task per system, on the trio clock.

``Actor.call_later``/``call_at`` push a ``TimerHandle`` on a heap ordered by deadline
(ties keep scheduling order). A single task sleeps until the earliest deadline, by
sleeping in a cancel scope whose deadline it moves earlier when an earlier timer is
pushed, then tells each due message to its actor. So 100k actors with heartbeat timers
cost no task each, and ``trio.testing.MockClock`` (the ``autojump_clock`` fixture) drives
them like any other trio deadline.

Cancelled handles stay in the heap and are skipped when they come up ("lazy deletion");
the heap is rebuilt when more than half of it is cancelled handles.
"""

from __future__ import annotations

import heapq
import logging
import math
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from .ref import ActorRef

__all__ = ["TimerHandle"]

logger = logging.getLogger("tether.actors")

_PENDING = 0
_FIRED = 1
_CANCELLED = 2

#: Rebuild the heap once it holds at least this many cancelled handles (and they are
#: more than half of it).
_COMPACT_MIN = 1024
#: Messages fired between two checkpoints when many timers are due at once.
_FIRE_BATCH = 1024


class TimerHandle:
    """A message scheduled for delivery to an actor at a trio-clock deadline.

    Returned by ``Actor.call_later()`` and ``Actor.call_at()``; no public constructor.
    Use it on the trio thread of the actor's system.
    """

    __slots__ = ("_deadline", "_message", "_queue", "_ref", "_state")

    def __init__(self) -> None:
        raise TypeError("TimerHandle has no public constructor; use Actor.call_later()")

    @classmethod
    def _create(
        cls, queue: _TimerQueue, ref: ActorRef[Any], deadline: float, message: Any
    ) -> TimerHandle:
        self = cls.__new__(cls)
        self._init(queue, ref, deadline, message)
        return self

    def _init(self, queue: _TimerQueue, ref: ActorRef[Any], deadline: float, message: Any) -> None:
        self._queue = queue
        self._ref = ref
        self._deadline = deadline
        self._message: Any = message
        self._state = _PENDING

    def __repr__(self) -> str:
        state = ("pending", "fired", "cancelled")[self._state]
        return f"<TimerHandle {state} deadline={self._deadline:.6f} for {self._ref}>"

    @property
    def deadline(self) -> float:
        """The ``trio.current_time()`` at which the message is (or was) delivered."""
        return self._deadline

    @property
    def cancelled(self) -> bool:
        """True once cancelled, by ``cancel()`` or because the actor stopped first."""
        return self._state == _CANCELLED

    def cancel(self) -> None:
        """Cancel the delivery. No effect if the timer already fired or was cancelled."""
        if self._state != _PENDING:
            return
        self._state = _CANCELLED
        self._message = None
        timers = self._ref._timers
        if timers is not None:
            timers.pop(self, None)
        self._queue._note_cancelled()


class _TimerQueue:
    """The heap of a system's timers and the task that fires them."""

    __slots__ = ("_cancelled", "_heap", "_scope", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = 0
        self._cancelled = 0
        self._scope: trio.CancelScope | None = None

    def pending(self) -> int:
        """Timers neither fired nor cancelled."""
        return len(self._heap) - self._cancelled

    def schedule(self, ref: ActorRef[Any], deadline: float, message: Any) -> TimerHandle:
        """Trio thread: deliver ``message`` to ``ref`` at ``deadline`` (trio time)."""
        handle = TimerHandle._create(self, ref, deadline, message)
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, handle))
        timers = ref._timers
        if timers is None:
            timers = ref._timers = {}
        timers[handle] = None
        scope = self._scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline
        return handle

    def _note_cancelled(self) -> None:
        self._cancelled += 1
        heap = self._heap
        if self._cancelled >= _COMPACT_MIN and self._cancelled * 2 > len(heap):
            heap[:] = [entry for entry in heap if entry[2]._state == _PENDING]
            heapq.heapify(heap)
            self._cancelled = 0

    async def run(self) -> None:
        """The timer task: runs until cancelled (the system closes)."""
        heap = self._heap
        while True:
            now = trio.current_time()
            fired = 0
            while heap and heap[0][0] <= now:
                handle = heapq.heappop(heap)[2]
                if handle._state != _PENDING:
                    self._cancelled -= 1
                    continue
                self._fire(handle)
                fired += 1
                if fired >= _FIRE_BATCH:
                    fired = 0
                    await trio.lowlevel.checkpoint()
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as scope:
                self._scope = scope
                await trio.sleep_forever()
            self._scope = None

    def _fire(self, handle: TimerHandle) -> None:
        handle._state = _FIRED
        message = handle._message
        handle._message = None
        ref = handle._ref
        timers = ref._timers
        if timers is not None:
            timers.pop(handle, None)
        try:
            ref._deliver_timer(message)
        except Exception:
            # A timer must never take the timer task (and with it the system) down.
            logger.exception("delivering a timer message to %s failed", ref)
