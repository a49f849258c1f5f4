"""``ActorRef``: the handle to an actor, and the actor's mailbox.

An actor's mailbox lives in its ref rather than in a separate object: the ref is what every
sender holds, so ``tell`` touches one object, and at 100k actors one object less per actor
matters (REPORT.md §2: memory per idle actor). The mailbox is a list plus a read index
(a ``deque`` allocates a 64-slot block even when empty), bounded by the actor class's
``mailbox_size``.

Threading model: everything in this module runs on the trio thread of the actor's system,
except the parts of ``tell``/``ask``/``stop`` that detect a foreign thread and hand the
work to the system's bridge (one batched ``run_sync_soon`` per burst).

Life of a (trio) actor, as ``_state``::

    STARTING --on_start begins--> RUNNING --stop handled / failure--> STOPPING --> DEAD
                                                                 (children stopped first)
"""

from __future__ import annotations

import logging
import math
import threading
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import pykka
import trio

from .envelope import _Ask, _ChildStopped, _StopRequest
from .errors import ActorDeadError, MailboxFull
from .future import Future
from .reasons import StopReason
from .statistics import ActorStatistics

if TYPE_CHECKING:
    from .dispatcher import _Dispatcher
    from .system import ActorSystem
    from .timers import TimerHandle

__all__ = ["ActorRef"]

logger = logging.getLogger("tether.actors")

A = TypeVar("A", bound=pykka.Actor)

_STARTING = 0
_RUNNING = 1
_STOPPING = 2
_DEAD = 3

_get_ident = threading.get_ident

#: ``ActorStatistics.last_failure`` keeps at most this many characters of the repr.
_MAX_FAILURE_REPR = 500


class ActorRef(pykka.ActorRef[A]):
    """Reference to a running actor, safe to pass around and to use from any thread.

    Refs come from ``system.spawn()``, ``ActorCls.start()``, ``actor.start_child()`` and
    the registry; there is no public constructor. Two refs are equal (and hash alike) when
    they name the same actor URN.

    On the trio thread of the actor's system nothing here blocks: ``ask`` and ``stop``
    return an awaitable ``Future``. On any other thread they keep pykka's blocking
    defaults.
    """

    __slots__ = (
        "_actor",
        "_buf",
        "_busy",
        "_children",
        "_depth",
        "_dispatcher",
        "_dropped",
        "_failures",
        "_handled",
        "_head",
        "_in_task",
        "_inflight",
        "_last_failure",
        "_parent",
        "_peak",
        "_pending_children",
        "_proxy",
        "_scheduled",
        "_size",
        "_space",
        "_started",
        "_started_at",
        "_state",
        "_stop_exc",
        "_stop_reason",
        "_stop_req",
        "_stop_waiters",
        "_stopped_at",
        "_system",
        "_tid",
        "_timers",
        "_trace",
        "actor_class",
        "actor_urn",
        "kind",
    )

    # pykka.ActorRef declares these; the runtime keeps its own state instead.
    actor_class: type[A]
    actor_urn: str
    kind: str

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            "ActorRef has no public constructor; refs come from system.spawn(), "
            "ActorCls.start() and Actor.start_child()"
        )

    @classmethod
    def _create(
        cls,
        actor: A,
        urn: str,
        system: ActorSystem,
        parent: ActorRef[Any] | None,
    ) -> ActorRef[A]:
        self = cls.__new__(cls)
        self._init(actor, urn, system, parent)
        return self

    def _init(
        self,
        actor: A,
        urn: str,
        system: ActorSystem,
        parent: ActorRef[Any] | None,
    ) -> None:
        actor_class = type(actor)
        self.actor_class = actor_class
        self.actor_urn = urn
        self.kind = actor_class.kind  # type: ignore[attr-defined]
        self._actor: A | None = actor
        self._system = system
        self._tid = system._thread_id
        self._dispatcher: _Dispatcher = system._dispatcher
        self._parent = parent
        self._children: dict[str, ActorRef[Any]] | None = None
        self._buf: list[Any] = []
        self._head = 0
        self._depth = 0
        self._peak = 0
        self._size: int = actor_class.mailbox_size  # type: ignore[attr-defined]
        self._inflight = 0
        self._state = _STARTING
        self._started = False
        self._scheduled = False
        self._in_task = False
        self._stop_req: StopReason | None = None
        self._proxy: pykka.ActorProxy[A] | None = None
        self._timers: dict[TimerHandle, None] | None = None
        self._space: trio.lowlevel.ParkingLot | None = None
        self._handled = 0
        self._failures = 0
        self._last_failure: str | None = None
        self._dropped = 0
        self._started_at = math.nan
        self._stopped_at = math.nan
        self._stop_reason: StopReason | None = None
        self._stop_exc: BaseException | None = None
        self._stop_waiters: list[Future[bool]] | None = None
        self._pending_children = 0
        # Introspection (see ``introspect``): ``(message, time.monotonic() when
        # it began, coroutine or None)`` while an async handler (or a
        # ThreadActor's handler) runs, else None; one slot so that idle actors
        # pay 8 bytes. ``_trace`` is the trace ring while the console traces it.
        self._busy: tuple[Any, float, Any] | None = None
        self._trace: Any = None

    # ------------------------------------------------------------------ identity

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if isinstance(other, pykka.ActorRef):
            return bool(self.actor_urn == other.actor_urn)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.actor_urn)

    def _actor_weakref(self) -> A | None:  # type: ignore[override]
        # pykka's ActorProxy calls ``ref._actor_weakref()`` to reach the actor. The ref
        # holds the actor strongly while it lives and drops it at stop, which frees the
        # actor exactly as a weakref would, without a weakref object per actor.
        return self._actor

    @property
    def parent(self) -> ActorRef[Any] | None:
        """The ref of the actor that started this one with ``start_child``, or None."""
        return self._parent

    @property
    def system(self) -> ActorSystem:
        """The actor system this actor lives in."""
        return self._system

    def is_alive(self) -> bool:
        """Return True until the actor begins to stop.

        False from the moment its stop request is handled (or it failed), even while it
        still waits for its children or runs ``on_stop``.
        """
        return self._state < _STOPPING

    def _dead_error(self) -> ActorDeadError:
        reason = self._stop_reason
        if reason is None:
            return ActorDeadError(f"{self} is not alive")
        return ActorDeadError(f"{self} is not alive (stopped: {reason.value})")

    def _full_error(self) -> MailboxFull:
        return MailboxFull(
            f"mailbox of {self} is full ({self._size} messages)",
            actor_urn=self.actor_urn,
            mailbox_size=self._size,
        )

    # ---------------------------------------------------------------- messaging

    def tell(self, message: Any) -> None:
        """Put ``message`` in the actor's mailbox and return at once. Any thread.

        The actor handles it later with ``on_receive(message)``; if that raises, the
        actor fails (``on_failure``, ``StopReason.FAILURE``).

        Raises:
            ActorDeadError: the actor is not alive.
            MailboxFull: the mailbox holds ``mailbox_size`` messages already. Use
                ``await ref.send(message)`` to wait for room instead.
        """
        if self._state >= _STOPPING:
            raise self._dead_error()
        if _get_ident() != self._tid:
            self._system._bridge.tell(self, message)
            return
        depth = self._depth
        if depth + self._inflight >= self._size:
            raise self._full_error()
        self._depth = depth = depth + 1
        if depth > self._peak:  # noqa: PLR1730  (hot path: a compare beats a max() call)
            self._peak = depth
        self._buf.append(message)
        if not self._scheduled:
            self._scheduled = True
            dispatcher = self._dispatcher
            dispatcher.runq.append(self)
            if dispatcher.waiter is not None:
                dispatcher.wake()

    async def send(self, message: Any) -> None:
        """Tell ``message``, first waiting for room in the mailbox (backpressure).

        Raises:
            ActorDeadError: the actor is not alive (or stopped while we waited).

        Cancellation:
            A checkpoint. If cancelled while waiting for room, the message is not sent.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            if self._state >= _STOPPING:
                raise self._dead_error()
            try:
                self.tell(message)
            except MailboxFull:
                lot = self._space
                if lot is None:
                    lot = self._space = trio.lowlevel.ParkingLot()
                await lot.park()
                continue
            break
        await trio.lowlevel.cancel_shielded_checkpoint()

    def ask(self, message: Any, *, block: bool = True, timeout: float | None = None) -> Any:
        """Send ``message`` and get the actor's reply (``on_receive``'s return value).

        On the trio thread this never blocks, whatever ``block`` says: it returns a
        ``Future`` to ``await`` (``await ref.ask(m)``), which raises ``AskTimeout`` if
        ``timeout`` is given and passes first. On any other thread, ``block=True`` waits
        for the reply (pykka's default) and ``block=False`` returns the future.

        An exception raised by the handler is raised to the caller; the actor survives.

        Args:
            message: the message.
            block: on a foreign thread, wait for the reply instead of returning a future.
            timeout: seconds to wait for the reply; None waits forever.

        Returns:
            A ``Future`` (trio thread, or ``block=False``), else the reply.

        Raises:
            MailboxFull: the mailbox is full (raised at once, not through the future).
            ActorDeadError: (through the future) the actor is not alive, or stopped before
                handling the message.
            AskTimeout: no reply within ``timeout``.
        """
        future: Future[Any] = Future()
        on_trio_thread = _get_ident() == self._tid
        if self._state >= _STOPPING:
            future._fail_unshared(self._dead_error())
        elif on_trio_thread:
            self._put_checked(_Ask(message, future))
        else:
            try:
                self._system._bridge.tell(self, _Ask(message, future))
            except ActorDeadError as exc:
                future._fail_unshared(exc)
        if block and not on_trio_thread:
            return future.get(timeout=timeout)
        future._await_timeout = timeout
        return future

    def _put_checked(self, item: Any) -> None:
        depth = self._depth
        if depth + self._inflight >= self._size:
            raise self._full_error()
        self._append(item)

    def _append(self, item: Any) -> None:
        """Queue ``item`` regardless of the bound (control messages, delivered ones)."""
        self._depth = depth = self._depth + 1
        if depth > self._peak:  # noqa: PLR1730  (hot path: a compare beats a max() call)
            self._peak = depth
        self._buf.append(item)
        if not self._scheduled:
            self._scheduled = True
            dispatcher = self._dispatcher
            dispatcher.runq.append(self)
            if dispatcher.waiter is not None:
                dispatcher.wake()

    def _deliver_foreign(self, item: Any) -> None:
        """Trio thread: put an item that a foreign thread told (bound already checked)."""
        if self._state == _DEAD:
            self._reject(item)
        else:
            self._append(item)

    def _deliver_timer(self, message: Any) -> None:
        """Trio thread: put a timer's message; drop it (counted, logged) if the mailbox is full."""
        if self._state >= _STOPPING:
            return
        if self._depth + self._inflight >= self._size:
            self._dropped += 1
            self._system._dropped_total += 1
            # The message's type only: payloads may carry secrets (P18).
            logger.warning(
                "mailbox of %s is full: dropped a timer message (%s)", self, type(message).__name__
            )
            return
        self._append(message)

    def stop(
        self,
        reason: StopReason = StopReason.NORMAL,
        *,
        block: bool = True,
        timeout: float | None = None,
    ) -> Any:
        """Ask the actor to stop once the messages already queued are handled.

        Its children are stopped first (``StopReason.PARENT_STOPPED``), then ``on_stop``
        runs; messages queued after the stop request fail with ``ActorDeadError``. On the
        trio thread this returns an awaitable ``Future[bool]``
        (``await ref.stop(StopReason.KICKED)``); on other threads it blocks when ``block``.

        Args:
            reason: recorded as the actor's ``stop_reason`` (unless it is already stopping).
            block: on a foreign thread, wait until the actor has stopped.
            timeout: seconds to wait; None waits forever.

        Returns:
            (Through the future when not blocking) True once the actor has fully stopped,
            if it was alive or stopping at the time of the call; False if it was already
            stopped.

        Raises:
            AskTimeout: not stopped within ``timeout``.
        """
        future: Future[bool] = Future()
        if _get_ident() == self._tid:
            self._request_stop(reason, future)
            future._await_timeout = timeout
            return future
        if not self._system._bridge.call(self._request_stop, reason, future):
            future.set(False)
        if block:
            return future.get(timeout=timeout)
        return future

    def _request_stop(self, reason: StopReason, reply: Future[bool] | None) -> None:
        """Trio thread: queue a stop request (bypasses the bound: a stop must get in)."""
        state = self._state
        if state == _DEAD:
            if reply is not None:
                reply.set(False)
        elif state == _STOPPING:
            if reply is not None:
                self._add_stop_waiter(reply)
        else:
            self._append(_StopRequest(reason, reply))

    def _add_stop_waiter(self, reply: Future[bool]) -> None:
        if self._stop_waiters is None:
            self._stop_waiters = [reply]
        else:
            self._stop_waiters.append(reply)

    def proxy(self) -> pykka.ActorProxy[A]:
        """Return the (cached) pykka ``ActorProxy`` for this actor.

        Method calls through the proxy return our ``Future`` (awaitable); ``async def``
        methods are awaited inside the actor. Building a proxy introspects the actor
        (~190 µs), so it is built once per ref. On the trio thread, ``proxy.attr = value``
        is sent without waiting for it to be applied.

        Raises:
            ActorDeadError: the actor is not alive.
        """
        proxy = self._proxy
        if proxy is None:
            if self._state >= _STOPPING or self._actor is None:
                raise self._dead_error()
            proxy = self._proxy = pykka.ActorProxy(actor_ref=self)
        return proxy

    # -------------------------------------------------------------- statistics

    def _mailbox_depth(self) -> int:
        return self._depth

    def statistics(self) -> ActorStatistics:
        """Return a snapshot of the actor's counters (see ``ActorStatistics``).

        Must be called on the trio thread of the actor's system (it reads the trio clock).
        """
        now = trio.current_time()
        end = self._stopped_at if self._state >= _STOPPING else now
        parent = self._parent
        children = self._children
        return ActorStatistics(
            urn=self.actor_urn,
            kind=self.kind,
            alive=self._state < _STOPPING,
            mailbox_depth=self._mailbox_depth(),
            mailbox_peak=self._peak,
            mailbox_size=self._size,
            handled=self._handled,
            failures=self._failures,
            last_failure=self._last_failure,
            dropped=self._dropped,
            started_at=self._started_at,
            age_s=end - self._started_at,
            children=len(children) if children else 0,
            stop_reason=self._stop_reason,
            parent_urn=parent.actor_urn if parent is not None else None,
        )

    # --------------------------------------------------------------- lifecycle

    def _note_failure(self, exc: BaseException | None) -> None:
        self._failures += 1
        try:
            text = repr(exc)
        except Exception:
            text = f"<{type(exc).__name__} (repr failed)>"
        self._last_failure = (
            text if len(text) <= _MAX_FAILURE_REPR else text[:_MAX_FAILURE_REPR] + "..."
        )

    def _start(self) -> None:
        """Trio thread, at registration: schedule the actor so that on_start runs."""
        if not self._scheduled:
            self._scheduled = True
            dispatcher = self._dispatcher
            dispatcher.runq.append(self)
            if dispatcher.waiter is not None:
                dispatcher.wake()

    def _stop_self(self, reason: StopReason) -> None:
        """Trio thread: ``Actor.stop()``: stop once the current handler returns."""
        if self._state >= _STOPPING or self._stop_req is not None:
            return
        self._stop_req = reason
        # If the actor is idle, nothing would look at _stop_req: schedule it. While a
        # handler runs, _scheduled (or _in_task) is already set.
        if not self._scheduled:
            self._start()

    def _begin_stop(
        self,
        reason: StopReason,
        exc: BaseException | None = None,
        reply: Future[bool] | None = None,
    ) -> None:
        """Trio thread, between two messages: stop children, then finish."""
        if reply is not None:
            self._add_stop_waiter(reply)
        if self._state >= _STOPPING:
            return
        self._state = _STOPPING
        self._stop_reason = reason
        self._stop_exc = exc
        self._stop_req = None
        self._stopped_at = trio.current_time()
        if reason is StopReason.FAILURE:
            self._system._failures_total += 1
        self._cancel_timers()
        children = self._children
        if children:
            self._pending_children = len(children)
            for child in list(children.values()):
                child._request_stop(StopReason.PARENT_STOPPED, None)
        else:
            self._finish()

    def _cancel_timers(self) -> None:
        timers = self._timers
        if timers:
            self._timers = None
            for handle in timers:
                handle.cancel()

    def _finish(self) -> None:
        """Trio thread: run on_stop, fail what is left in the mailbox, unregister, notify."""
        actor = self._actor
        reason = self._stop_reason
        assert reason is not None
        # Cleared first: if on_stop raises a BaseException that tears the system down,
        # the teardown must not run it a second time.
        started = self._started
        self._started = False
        if actor is not None and started and reason is not StopReason.FAILURE:
            self._run_hook(actor, "on_stop", actor.on_stop)
        self._state = _DEAD
        buf = self._buf
        remaining = buf[self._head :]
        buf.clear()
        self._head = 0
        self._depth = 0
        self._actor = None
        self._proxy = None
        for item in remaining:
            self._reject(item)
        space = self._space
        if space is not None:
            self._space = None
            space.unpark_all()
        logger.debug("%s stopped: %s", self, reason.value)
        self._system._actor_finished(self)
        parent = self._parent
        if parent is not None:
            parent._child_finished(self, reason, self._stop_exc)
        waiters = self._stop_waiters
        if waiters is not None:
            self._stop_waiters = None
            for waiter in waiters:
                waiter.set(True)

    def _run_hook(self, actor: Any, name: str, hook: Callable[..., Any], *args: Any) -> None:
        """Run a synchronous lifecycle hook; log (never raise) what it raises."""
        try:
            result = hook(*args)
            if type(result) is types.CoroutineType:
                result.close()
                raise TypeError(f"Expected {name}() to be synchronous, got a coroutine")
        except Exception as exc:
            self._note_failure(exc)
            logger.exception("%s of %s failed", name, self)

    def _reject(self, item: Any) -> None:
        """Answer an item that will never be handled (the actor has stopped)."""
        cls = type(item)
        if cls is _Ask:
            item.reply._set_error(ActorDeadError(f"{self} stopped before handling the message"))
        elif cls is _StopRequest and item.reply is not None:
            # pykka: True when the actor "was being stopped at the time of the call".
            item.reply.set(True)

    def _child_finished(
        self, child: ActorRef[Any], reason: StopReason, exc: BaseException | None
    ) -> None:
        """Trio thread: ``child`` has fully stopped."""
        children = self._children
        if children is not None:
            children.pop(child.actor_urn, None)
        state = self._state
        if state < _STOPPING:
            self._append(_ChildStopped(child, reason, exc))
        elif state == _STOPPING:
            actor: Any = self._actor
            if actor is not None:
                self._run_hook(
                    actor, "on_child_stopped", actor.on_child_stopped, child, reason, exc
                )
            self._pending_children -= 1
            if self._pending_children <= 0:
                self._finish()

    def _abort(self) -> None:
        """Trio thread, system teardown: stop now, without handling the mailbox.

        Children are torn down first; on_stop runs if on_start began (and the actor did
        not fail); queued asks fail with ActorDeadError.
        """
        if self._state == _DEAD:
            return
        children = self._children
        if children:
            for child in list(children.values()):
                child._abort()
        if self._state < _STOPPING:
            self._state = _STOPPING
            self._stop_reason = self._stop_req or StopReason.SHUTDOWN
            self._stopped_at = trio.current_time()
            self._cancel_timers()
        self._pending_children = 0
        self._finish()

    def _never_started(self) -> None:
        """Trio thread: registration arrived after the system was torn down."""
        self._state = _DEAD
        self._stop_reason = StopReason.SHUTDOWN
        remaining = self._buf[self._head :]
        self._buf.clear()
        self._head = 0
        self._depth = 0
        self._actor = None
        for item in remaining:
            self._reject(item)
        waiters = self._stop_waiters
        if waiters is not None:
            self._stop_waiters = None
            for waiter in waiters:
                waiter.set(True)

    def _register_child(self, child: ActorRef[Any]) -> bool:
        """Trio thread: link ``child``; False if this actor is no longer alive."""
        if self._state >= _STOPPING:
            return False
        children = self._children
        if children is None:
            children = self._children = {}
        children[child.actor_urn] = child
        return True

    def _wake_senders(self) -> None:
        space = self._space
        if space is not None:
            free = self._size - self._depth - self._inflight
            if free > 0:
                space.unpark(count=free)
            if not space:
                self._space = None
