"""``ThreadActor``: a pykka ``ThreadingActor`` that lives in an actor system.

For plugin actors that must call blocking code. Each one has its own OS thread and a
bounded ``queue.Queue`` mailbox, but otherwise behaves like a trio ``Actor``: it is
registered in its system's registry, has a kind, statistics, a parent and children, stops
with the system, and its futures are our ``Future``, so trio code can
``await thread_ref.ask(m)`` without a thread hop. From its thread it uses the plain pykka
API on trio actors (``ref.ask(m)`` blocks that thread only).

All bookkeeping shared with the trio side (registry, parent/children links, stop waiters
of trio callers) still happens on the trio thread: the actor's thread hands it over
through the system's bridge.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import types
from typing import TYPE_CHECKING, Any, Self

import pykka
import trio
from pykka import messages

from .actor import _ActorBase
from .context import _current, current_system
from .envelope import _PROXY_MESSAGES, _Ask, _ChildrenDone, _ChildStopped, _StopRequest
from .errors import ActorDeadError
from .future import Future
from .reasons import StopReason
from .ref import _DEAD, _RUNNING, _STOPPING, ActorRef

_monotonic = time.monotonic

if TYPE_CHECKING:
    from .system import ActorSystem

__all__ = ["ThreadActor"]

logger = logging.getLogger("tether.actors")

_thread_serial = itertools.count(1)


class _InboxClosedError(Exception):
    """The ThreadActor has finished; its inbox takes nothing more."""


class _Inbox(queue.Queue[Any]):
    """A ``queue.Queue`` with a bounded non-blocking put and a final close.

    Both take the queue's own mutex, so "check the bound, then put" and "close, then drain"
    are atomic with respect to every other thread.
    """

    def __init__(self) -> None:
        super().__init__()
        self._closed = False

    def put_bounded(self, item: Any, limit: int | None) -> int:
        """Put ``item`` unless ``limit`` items wait already; return the new size.

        Raises:
            _InboxClosedError: the actor has finished.
            queue.Full: ``limit`` reached.
        """
        with self.mutex:
            if self._closed:
                raise _InboxClosedError
            size = self._qsize()
            if limit is not None and size >= limit:
                raise queue.Full
            self._put(item)
            self.unfinished_tasks += 1
            self.not_empty.notify()
            return size + 1

    def close(self) -> list[Any]:
        """Refuse further puts; return what was left."""
        with self.mutex:
            self._closed = True
            items = list(self.queue)
            self.queue.clear()
            return items


class _ThreadActorRef(ActorRef[Any]):
    """The ref of a ThreadActor: its mailbox is the thread's queue."""

    __slots__ = ("_inbox",)

    _inbox: _Inbox

    def _init(
        self,
        actor: Any,
        urn: str,
        system: ActorSystem,
        parent: ActorRef[Any] | None,
    ) -> None:
        super()._init(actor, urn, system, parent)
        self._inbox = _Inbox()

    def _put(self, item: Any, limit: int | None) -> None:
        depth = self._inbox.put_bounded(item, limit)
        self._peak = max(self._peak, depth)

    def tell(self, message: Any) -> None:
        """See ``ActorRef.tell``."""
        if self._state >= _STOPPING:
            raise self._dead_error()
        try:
            self._put(message, self._size)
        except queue.Full:
            raise self._full_error() from None
        except _InboxClosedError:
            raise self._dead_error() from None

    def ask(self, message: Any, *, block: bool = True, timeout: float | None = None) -> Any:
        """See ``ActorRef.ask``."""
        future: Future[Any] = Future()
        if self._state >= _STOPPING:
            future._fail_unshared(self._dead_error())
        else:
            try:
                self._put(_Ask(message, future), self._size)
            except queue.Full:
                raise self._full_error() from None
            except _InboxClosedError:
                future._fail_unshared(self._dead_error())
        if block and threading.get_ident() != self._tid:
            return future.get(timeout=timeout)
        future._await_timeout = timeout
        return future

    def stop(
        self,
        reason: StopReason = StopReason.NORMAL,
        *,
        block: bool = True,
        timeout: float | None = None,
    ) -> Any:
        """See ``ActorRef.stop``."""
        future: Future[bool] = Future()
        self._request_stop(reason, future)
        if block and threading.get_ident() != self._tid:
            return future.get(timeout=timeout)
        future._await_timeout = timeout
        return future

    def _request_stop(self, reason: StopReason, reply: Future[bool] | None) -> None:
        # Any thread. A stop request bypasses the bound; while stopping, the actor's
        # thread adds the reply to its stop waiters.
        if self._state == _DEAD:
            if reply is not None:
                reply.set(False)
            return
        try:
            self._put(_StopRequest(reason, reply), None)
        except _InboxClosedError:
            if reply is not None:
                reply.set(False)

    def _mailbox_depth(self) -> int:
        return self._inbox.qsize()

    def _wake_senders(self) -> None:
        space = self._space
        if space is not None:
            free = self._size - self._inbox.qsize()
            if free > 0:
                space.unpark(count=free)
            if not space:
                self._space = None

    # ------------------------------------------------ trio-thread bookkeeping

    def _start(self) -> None:
        actor = self._actor
        assert isinstance(actor, ThreadActor)
        self._system._thread_refs.add(self)
        thread = threading.Thread(
            target=actor._actor_loop,
            name=f"{self.kind}-{next(_thread_serial)}",
            daemon=actor.use_daemon_thread,
        )
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread"
            self._note_failure(exc)
            self._state = _DEAD
            self._stop_reason = StopReason.FAILURE
            self._stopped_at = trio.current_time()
            self._actor = None
            self._system._failures_total += 1
            self._system._actor_finished(self)
            if self._parent is not None:
                self._parent._child_finished(self, StopReason.FAILURE, exc)
            for item in self._inbox.close():
                self._reject(item)
            raise

    def _child_finished(
        self, child: ActorRef[Any], reason: StopReason, exc: BaseException | None
    ) -> None:
        children = self._children
        if children is not None:
            children.pop(child.actor_urn, None)
        try:
            self._put(_ChildStopped(child, reason, exc), None)
            if self._pending_children > 0:
                self._pending_children -= 1
                if self._pending_children == 0:
                    self._put(_ChildrenDone(), None)
        except _InboxClosedError:
            pass

    def _stop_children(self) -> None:
        """Trio thread: the actor's thread began to stop; stop its children first."""
        self._stopped_at = trio.current_time()
        children = self._children
        try:
            if children:
                self._pending_children = len(children)
                for child in list(children.values()):
                    child._request_stop(StopReason.PARENT_STOPPED, None)
            else:
                self._put(_ChildrenDone(), None)
        except _InboxClosedError:
            pass

    def _thread_finished(self, waiters: list[Future[bool]], leftovers: list[Any]) -> None:
        """Trio thread: the actor's thread has finished; unregister and notify.

        The messages it never handled are answered here, after the bookkeeping, so that a
        caller who sees its ask fail also sees the actor gone (as with trio actors).
        """
        reason = self._stop_reason
        assert reason is not None
        if reason is StopReason.FAILURE:
            self._system._failures_total += 1
        if self._stopped_at != self._stopped_at:  # NaN: stopped without _stop_children
            self._stopped_at = trio.current_time()
        self._system._actor_finished(self)
        parent = self._parent
        if parent is not None:
            parent._child_finished(self, reason, self._stop_exc)
        self._answer_leftovers(waiters, leftovers)

    def _answer_leftovers(self, waiters: list[Future[bool]], leftovers: list[Any]) -> None:
        for item in leftovers:
            self._reject(item)
        for waiter in waiters:
            waiter.set(True)

    def _abort(self) -> None:
        # System teardown: the thread cannot be stopped from here; ask it to.
        self._request_stop(StopReason.SHUTDOWN, None)

    def _never_started(self) -> None:
        self._state = _DEAD
        self._stop_reason = StopReason.SHUTDOWN
        for item in self._inbox.close():
            self._reject(item)
        self._actor = None


class ThreadActor(_ActorBase, pykka.ThreadingActor):
    """An actor with its own OS thread, for code that blocks; part of an actor system.

    Same hooks and failure semantics as ``Actor`` (``on_start``, ``on_receive``,
    ``on_stop``, ``on_failure``, ``on_child_stopped``), all run in the actor's thread and
    all synchronous. A ``BaseException`` that is not an ``Exception`` raised by a handler
    (``SystemExit`` from a plugin) fails this actor only, where pykka would stop every
    actor in the process. ``use_daemon_thread`` is honoured. ThreadActors have no timers
    (``call_later``); they may block instead.
    """

    _ref_class = _ThreadActorRef
    _actor_ref: _ThreadActorRef

    @classmethod
    def start(cls, *args: Any, **kwargs: Any) -> ActorRef[Self]:
        """Start an actor of this class in the current system; see ``Actor.start``."""
        return current_system()._spawn(cls, args, kwargs, None)

    @classmethod
    def _tether_new(cls, system: ActorSystem, parent: ActorRef[Any] | None) -> Any:
        actor = super()._tether_new(system, parent)
        actor.actor_inbox = actor._actor_ref._inbox
        actor.actor_stopped = threading.Event()
        return actor

    @staticmethod
    def _create_actor_inbox() -> Any:
        return _Inbox()

    @staticmethod
    def _create_future() -> Future[Any]:
        return Future()

    def _start_actor_loop(self) -> None:
        # pykka's ABC requires it; the system starts the thread at registration.
        raise TypeError("tether actors are started by their ActorSystem")

    def stop(self, reason: StopReason = StopReason.NORMAL) -> None:
        """Stop this actor: after the current message if called from its own thread (the
        queued messages are not handled), else after the messages queued so far.
        """
        ref = self._actor_ref
        if self._in_own_thread():
            if ref._stop_req is None:
                ref._stop_req = reason
        else:
            ref._request_stop(reason, None)

    def _in_own_thread(self) -> bool:
        return getattr(self, "_thread_ident", None) == threading.get_ident()

    # ------------------------------------------------------------ the thread

    def _actor_loop(self) -> None:
        """The actor's thread: on_start, then one message at a time, then stop."""
        ref = self._actor_ref
        assert isinstance(ref, _ThreadActorRef)
        self._thread_ident = threading.get_ident()
        context_token = _current.set(ref._system)
        try:
            self._run(ref)
        finally:
            _current.reset(context_token)

    def _run(self, ref: _ThreadActorRef) -> None:
        inbox = ref._inbox
        waiters: list[Future[bool]] = []
        leftovers: list[Any] = []
        ref._state = _RUNNING
        ref._started = True
        try:
            self._call_hook("on_start")
        except BaseException as exc:
            ref._note_failure(exc)
            logger.error("on_start of %s failed:", ref, exc_info=True)
            self._begin_stop(ref, StopReason.FAILURE, exc)
        while ref._state == _RUNNING:
            item = inbox.get()
            if ref._space is not None:
                ref._system._bridge.call(ref._wake_senders)
            ref._handled += 1
            # Read from the trio thread by the console (one tuple: read atomically).
            ref._busy = (item, _monotonic(), None)
            self._handle(ref, item, waiters)
            ref._busy = None
            if ref._state == _RUNNING and ref._stop_req is not None:
                self._begin_stop(ref, ref._stop_req)
        self._wait_for_children(ref, inbox, waiters, leftovers)
        if ref._stop_reason is not StopReason.FAILURE:
            try:
                self._call_hook("on_stop")
            except Exception as exc:
                ref._note_failure(exc)
                logger.exception("on_stop of %s failed", ref)
        ref._state = _DEAD
        self.actor_stopped.set()
        for item in inbox.close():
            if type(item) is _StopRequest and item.reply is not None:
                waiters.append(item.reply)
            else:
                leftovers.append(item)
        ref._actor = None
        ref._proxy = None
        logger.debug("%s stopped: %s", ref, ref._stop_reason)
        if not ref._system._bridge.call(ref._thread_finished, waiters, leftovers):
            ref._answer_leftovers(waiters, leftovers)

    def _call_hook(self, hook: str, *args: Any) -> None:
        self._check_sync(getattr(self, hook)(*args), hook)

    def _check_sync(self, result: Any, hook: str) -> None:
        if type(result) is types.CoroutineType:
            result.close()
            raise TypeError(
                f"Expected {type(self).__name__}.{hook}() to be synchronous, got a coroutine"
            )

    def _handle(self, ref: _ThreadActorRef, item: Any, waiters: list[Future[bool]]) -> None:
        cls = type(item)
        if cls is _StopRequest:
            if item.reply is not None:
                waiters.append(item.reply)
            self._begin_stop(ref, item.reason)
            return
        if cls is _ChildrenDone:
            return
        if cls is messages._ActorStop:
            self._begin_stop(ref, StopReason.NORMAL)
            return
        if cls is _Ask:
            reply = item.reply
            try:
                result = self._call(item.message)
            except Exception as exc:
                ref._note_failure(exc)
                logger.debug("exception returned from %s to the caller", ref, exc_info=True)
                reply.set_exception()
            except BaseException as exc:
                reply._set_error(ActorDeadError(f"{ref} failed handling the message"))
                self._failed(ref, exc)
            else:
                reply.set(result)
            return
        try:
            if cls is _ChildStopped:
                self._call_hook("on_child_stopped", item.child, item.reason, item.exc)
            else:
                self._call(item)
        except BaseException as exc:
            self._failed(ref, exc)

    def _call(self, message: Any) -> Any:
        if type(message) in _PROXY_MESSAGES:
            result = self._handle_receive(message)
        else:
            result = self.on_receive(message)
        self._check_sync(result, "on_receive")
        return result

    def _failed(self, ref: _ThreadActorRef, exc: BaseException) -> None:
        ref._note_failure(exc)
        exc_info = (type(exc), exc, exc.__traceback__)
        logger.error("Unhandled exception in %s:", ref, exc_info=exc_info)
        try:
            self.on_failure(*exc_info)
        except Exception as hook_exc:
            ref._note_failure(hook_exc)
            logger.exception("on_failure of %s failed", ref)
        self._begin_stop(ref, StopReason.FAILURE, exc)

    def _begin_stop(
        self, ref: _ThreadActorRef, reason: StopReason, exc: BaseException | None = None
    ) -> None:
        if ref._state >= _STOPPING:
            return
        ref._stop_reason = reason
        ref._stop_exc = exc
        ref._stop_req = None
        ref._state = _STOPPING

    def _wait_for_children(
        self,
        ref: _ThreadActorRef,
        inbox: _Inbox,
        waiters: list[Future[bool]],
        leftovers: list[Any],
    ) -> None:
        """Stopping: have the trio side stop the children, handle mail until they are done."""
        if not ref._system._bridge.call(ref._stop_children):
            return
        while True:
            item = inbox.get()
            cls = type(item)
            if cls is _ChildrenDone:
                return
            if cls is _ChildStopped:
                try:
                    self._call_hook("on_child_stopped", item.child, item.reason, item.exc)
                except Exception as exc:
                    ref._note_failure(exc)
                    logger.exception("on_child_stopped of %s failed", ref)
            elif cls is _StopRequest:
                if item.reply is not None:
                    waiters.append(item.reply)
            else:
                leftovers.append(item)
