"""The dispatcher: one trio task per system runs the handlers of every (trio) actor.

There is no task per actor (REPORT.md §2: a parked task costs ~2.8 KB, and every
``await`` that reaches the scheduler ~5 µs). Instead each actor with mail sits in the
dispatcher's run queue; the dispatcher takes it, runs up to ``PER_ACTOR_BUDGET`` of its
messages inline, puts it back at the end of the queue if it still has mail, and
checkpoints once every ``CHECKPOINT_EVERY`` messages so that other tasks (sockets,
timers) get their turn.

An actor gets a task of its own only while an ``async def`` handler (or ``on_start``)
runs: the handler's coroutine is awaited in a temporary task in the system nursery, and
that task keeps handling the actor's mail, one message at a time and in order, until the
mailbox is empty; then the task ends and the actor is idle again.
"""

from __future__ import annotations

import collections
import logging
import sys
import time
import types
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeAlias

import trio
from pykka import messages

from .envelope import _SPECIAL, ON_START, _Ask, _ChildrenDone, _ChildStopped, _StopRequest
from .errors import ActorDeadError
from .future import ExcInfo, Future
from .reasons import StopReason
from .ref import _RUNNING, _STARTING, ActorRef

if TYPE_CHECKING:
    from .system import ActorSystem

__all__: list[str] = []

logger = logging.getLogger("tether.actors")

#: Messages one actor may handle before the dispatcher moves on to the next actor.
PER_ACTOR_BUDGET = 64
#: Messages the dispatcher handles between two checkpoints (one checkpoint ≈ 5 µs).
CHECKPOINT_EVERY = 256
#: Messages an actor's temporary task handles between two checkpoints.
TASK_CHECKPOINT_EVERY = 64
#: Read index beyond which a mailbox that never empties is compacted.
COMPACT_AT = 4096

_CoroutineType = types.CoroutineType

_START = 0
_TELL = 1
_ASK = 2

# (coroutine to await, future for its result or None, what it is: _START/_TELL/_ASK,
# the message it handles)
_Pending: TypeAlias = tuple[Coroutine[Any, Any, Any], Future[Any] | None, int, Any]

_monotonic = time.monotonic


class _Dispatcher:
    """Run queue and dispatch loop of one actor system."""

    __slots__ = ("handled", "runq", "system", "waiter")

    def __init__(self, system: ActorSystem) -> None:
        self.runq: collections.deque[ActorRef[Any]] = collections.deque()
        self.waiter: trio.lowlevel.Task | None = None
        self.system = system
        self.handled = 0

    def wake(self) -> None:
        """Reschedule the parked dispatcher task (trio thread)."""
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            trio.lowlevel.reschedule(waiter)

    def _abort(self, _: Any) -> trio.lowlevel.Abort:
        self.waiter = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def run(self) -> None:
        """The dispatcher task: runs until cancelled (the system closes)."""
        runq = self.runq
        popleft = runq.popleft
        run_slice = self._run_slice
        done = 0
        while True:
            if runq:
                done += run_slice(popleft()) or 1
                if done >= CHECKPOINT_EVERY:
                    done = 0
                    await trio.lowlevel.checkpoint()
            else:
                done = 0
                self.waiter = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(self._abort)

    # ----------------------------------------------------------------- slices

    def _run_slice(self, ref: ActorRef[Any]) -> int:
        """Handle up to PER_ACTOR_BUDGET messages of ``ref``; return how many."""
        actor = ref._actor
        if actor is None or ref._in_task:
            return 0
        count = 0
        if ref._state == _STARTING:
            count = 1
            if not self._start_actor(ref, actor):
                return 1
        if ref._state != _RUNNING:
            # Stopping (waiting for its children) or dead: leave _scheduled set so that
            # the actor is never queued again; what is left in the mailbox is rejected
            # when it finishes.
            return count
        buf = ref._buf
        head = start = ref._head
        end = len(buf)
        if end - head > PER_ACTOR_BUDGET:
            end = head + PER_ACTOR_BUDGET
        on_receive = actor.on_receive
        special = _SPECIAL
        failure: ExcInfo | None = None
        while head < end:
            if ref._stop_req is not None:
                break
            message = buf[head]
            head += 1
            ref._head = head
            if type(message) in special:
                # Account before the handler: it may stop the actor, which empties
                # the mailbox and resets its counters.
                self._account(ref, head - start)
                count += head - start
                start = head
                pending = self._process(ref, actor, message)
                if pending is not None:
                    self._go_async(ref, *pending)
                    return count
                if ref._state != _RUNNING:
                    return count
                continue
            try:
                result = on_receive(message)
            except Exception:
                failure = sys.exc_info()
                break
            if type(result) is _CoroutineType:
                self._account(ref, head - start)
                self._go_async(ref, result, None, _TELL, message)
                return count + head - start
        self._account(ref, head - start)
        count += head - start
        if failure is not None:
            self._tell_failed(ref, actor, failure)
        else:
            self._settle(ref)
        return count

    def _account(self, ref: ActorRef[Any], n: int) -> None:
        ref._depth -= n
        ref._handled += n
        self.handled += n

    def _settle(self, ref: ActorRef[Any]) -> None:
        """Between messages, outside any handler: stop, go idle, or queue again."""
        if ref._state != _RUNNING:
            return
        stop_req = ref._stop_req
        if stop_req is not None:
            ref._begin_stop(stop_req)
            return
        buf = ref._buf
        head = ref._head
        if head >= len(buf):
            buf.clear()
            ref._head = 0
            ref._scheduled = False
        else:
            if head > COMPACT_AT and head * 2 > len(buf):
                # A mailbox that never drains completely would otherwise grow forever.
                del buf[:head]
                ref._head = 0
            self.runq.append(ref)
        if ref._space is not None:
            ref._wake_senders()

    def _start_actor(self, ref: ActorRef[Any], actor: Any) -> bool:
        """Run on_start; True if the actor may go on to handle messages now."""
        ref._state = _RUNNING
        ref._started = True
        try:
            result = actor.on_start()
        except Exception:
            self._start_failed(ref, sys.exc_info())
            return False
        if type(result) is _CoroutineType:
            self._go_async(ref, result, None, _START, ON_START)
            return False
        return True

    def _process(self, ref: ActorRef[Any], actor: Any, message: Any) -> _Pending | None:
        """Handle one mailbox item; return the coroutine to await if a handler is async."""
        cls = type(message)
        if cls is _Ask:
            reply = message.reply
            try:
                inner = message.message
                if type(inner) in _SPECIAL:
                    result = actor._handle_receive(inner)
                else:
                    result = actor.on_receive(inner)
            except Exception as exc:
                ref._note_failure(exc)
                logger.debug("exception returned from %s to the caller", ref, exc_info=True)
                reply.set_exception()
                return None
            except BaseException:
                reply._set_error(ActorDeadError(f"{ref} was torn down handling the message"))
                raise
            if type(result) is _CoroutineType:
                return (result, reply, _ASK, inner)
            reply.set(result)
            return None
        if cls is _StopRequest:
            ref._begin_stop(message.reason, reply=message.reply)
            return None
        if cls is messages._ActorStop:
            ref._begin_stop(StopReason.NORMAL)
            return None
        if cls is _ChildrenDone:
            return None
        try:
            if cls is _ChildStopped:
                result = actor.on_child_stopped(message.child, message.reason, message.exc)
                if type(result) is _CoroutineType:
                    # A hook, synchronous like on_stop: it also runs inline while the
                    # parent itself stops, where it could not be awaited.
                    result.close()
                    raise TypeError(
                        "Expected on_child_stopped() to be synchronous, got a coroutine"
                    )
            elif cls in _SPECIAL:
                result = actor._handle_receive(message)
            else:
                result = actor.on_receive(message)
        except Exception:
            self._tell_failed(ref, actor, sys.exc_info())
            return None
        if type(result) is _CoroutineType:
            return (result, None, _TELL, message)
        return None

    # ---------------------------------------------------------------- failures

    def _tell_failed(self, ref: ActorRef[Any], actor: Any, exc_info: ExcInfo) -> None:
        """An exception escaped a tell handler: log, on_failure, stop with FAILURE."""
        exc_type, exc, tb = exc_info
        ref._note_failure(exc)
        logger.error("Unhandled exception in %s:", ref, exc_info=exc)
        try:
            actor.on_failure(exc_type, exc, tb)
        except Exception as hook_exc:
            ref._note_failure(hook_exc)
            logger.exception("on_failure of %s failed", ref)
        ref._begin_stop(StopReason.FAILURE, exc)

    def _start_failed(self, ref: ActorRef[Any], exc_info: ExcInfo) -> None:
        """on_start raised: log, stop with FAILURE (as pykka: no on_failure, no on_stop)."""
        exc = exc_info[1]
        ref._note_failure(exc)
        logger.error("on_start of %s failed:", ref, exc_info=exc)
        ref._begin_stop(StopReason.FAILURE, exc)

    # ------------------------------------------------------------ async handlers

    def _go_async(
        self,
        ref: ActorRef[Any],
        coro: Coroutine[Any, Any, Any],
        reply: Future[Any] | None,
        kind: int,
        message: Any,
    ) -> None:
        ref._in_task = True
        self.system.nursery.start_soon(
            self._task, ref, coro, reply, kind, message, name=f"tether.actors:{ref.kind}"
        )

    async def _task(
        self,
        ref: ActorRef[Any],
        coro: Coroutine[Any, Any, Any],
        reply: Future[Any] | None,
        kind: int,
        message: Any,
    ) -> None:
        """An actor's temporary task: await the handler, then drain the mailbox in order."""
        actor: Any = ref._actor
        if ref._space is not None:
            ref._wake_senders()  # the slice that started this task consumed messages
        await self._await_handler(ref, actor, (coro, reply, kind, message))
        count = 0
        while ref._state == _RUNNING and ref._stop_req is None:
            buf = ref._buf
            head = ref._head
            if head >= len(buf):
                break
            message = buf[head]
            ref._head = head + 1
            self._account(ref, 1)
            if ref._space is not None:
                ref._wake_senders()
            if type(message) in _SPECIAL:
                pending = self._process(ref, actor, message)
            else:
                pending = None
                try:
                    result = actor.on_receive(message)
                except Exception:
                    self._tell_failed(ref, actor, sys.exc_info())
                else:
                    if type(result) is _CoroutineType:
                        pending = (result, None, _TELL, message)
            if pending is not None:
                await self._await_handler(ref, actor, pending)
            count += 1
            if count >= TASK_CHECKPOINT_EVERY:
                count = 0
                await trio.lowlevel.checkpoint()
        ref._in_task = False
        self._settle(ref)

    async def _await_handler(self, ref: ActorRef[Any], actor: Any, pending: _Pending) -> None:
        coro, reply, kind, message = pending
        # Only async handlers are recorded: a synchronous one runs to completion
        # on the trio thread, so nothing on that thread can ever see it running.
        ref._busy = (message, _monotonic(), coro)
        try:
            result = await coro
        except Exception as exc:
            if kind == _ASK:
                assert reply is not None
                ref._note_failure(exc)
                logger.debug("exception returned from %s to the caller", ref, exc_info=True)
                reply.set_exception()
            elif kind == _START:
                self._start_failed(ref, sys.exc_info())
            else:
                self._tell_failed(ref, actor, sys.exc_info())
            return
        except BaseException:
            # Cancelled (the system is being torn down) or KeyboardInterrupt/SystemExit,
            # which tear the system down. The teardown handles the actor itself; the one
            # thing only this task knows is the ask in flight.
            if reply is not None and not reply.done():
                reply._set_error(ActorDeadError(f"{ref} was torn down handling the message"))
            raise
        finally:
            ref._busy = None
        if reply is not None:
            reply.set(result)
