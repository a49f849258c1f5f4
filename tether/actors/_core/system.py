"""``ActorSystem`` and ``open_actor_system``: the nursery that owns every actor.

A system owns one dispatcher task (runs the trio actors), one timer task, the temporary
tasks of actors running ``async def`` handlers, a registry and a cross-thread bridge.
Several systems may run in one process (tests start two servers); nothing here is global
except the list of running systems that ``current_system()`` falls back to.

Closing, in order (P9):

* leaving the ``async with`` block normally: every live actor is asked to stop with
  ``StopReason.SHUTDOWN``, in reverse start order (so children before their parents,
  which also wait for their children); each handles its queued messages first and runs
  ``on_stop``. Once all have stopped, the tasks left in ``system.nursery`` are cancelled.
* an exception or a cancellation: the nursery is cancelled, then every actor still alive
  is torn down at once (children first): ``on_stop`` runs, queued and in-flight asks
  fail with ``ActorDeadError`` naming the actor, and the exception propagates.
  ``ThreadActor`` threads are asked to stop and waited for, up to
  ``THREAD_ACTOR_GRACE_S`` seconds.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import pykka
import trio

from .actor import _ActorBase
from .bridge import _Bridge
from .context import _add_running, _current, _remove_running
from .dispatcher import _Dispatcher
from .errors import ActorDeadError
from .reasons import StopReason
from .registry import Registry
from .statistics import SystemStatistics
from .timers import _TimerQueue

if TYPE_CHECKING:
    from .ref import ActorRef

__all__ = ["ActorSystem", "open_actor_system"]

logger = logging.getLogger("tether.actors")

B = TypeVar("B", bound=pykka.Actor)

#: Seconds a torn-down system waits for ThreadActor threads to finish their stop.
THREAD_ACTOR_GRACE_S = 5.0


class ActorSystem:
    """One actor system: its actors, registry, timers and nursery.

    Obtained from ``open_actor_system()``; there is no public constructor.

    Attributes:
        name: the name given to ``open_actor_system``.
        registry: the live actors of this system.
    """

    __slots__ = (
        "_all_stopped",
        "_bridge",
        "_closed",
        "_closing",
        "_dispatcher",
        "_dropped_total",
        "_failures_total",
        "_handled_retired",
        "_live",
        "_nursery",
        "_started_total",
        "_tearing_down",
        "_thread_id",
        "_thread_refs",
        "_threads_done",
        "_timers",
        "name",
        "registry",
    )

    def __init__(self) -> None:
        raise TypeError("ActorSystem has no public constructor; use open_actor_system()")

    @classmethod
    def _create(cls, name: str, nursery: trio.Nursery) -> ActorSystem:
        self = cls.__new__(cls)
        self._init(name, nursery)
        return self

    def _init(self, name: str, nursery: trio.Nursery) -> None:
        self.name = name
        self.registry = Registry()
        self._nursery = nursery
        self._thread_id = threading.get_ident()
        self._dispatcher = _Dispatcher(self)
        self._timers = _TimerQueue()
        self._bridge = _Bridge(trio.lowlevel.current_trio_token(), name)
        self._live = 0
        self._started_total = 0
        self._failures_total = 0
        self._dropped_total = 0
        self._handled_retired = 0
        self._thread_refs: set[ActorRef[Any]] = set()
        self._closing = False
        self._tearing_down = False
        self._closed = False
        self._all_stopped: trio.Event | None = None
        self._threads_done: trio.Event | None = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else "closing" if self._closing else "running"
        return f"<ActorSystem {self.name!r} {state}, {len(self.registry)} actors>"

    @property
    def nursery(self) -> trio.Nursery:
        """The system's nursery, for tasks that must live as long as the system.

        Tasks still running there once every actor has stopped at shutdown are cancelled.
        """
        return self._nursery

    def spawn(self, actor_class: type[B], /, *args: Any, **kwargs: Any) -> ActorRef[B]:
        """Start an actor of ``actor_class`` (an ``Actor`` or ``ThreadActor``) here.

        The arguments go to the class's ``__init__``, which runs now, in the calling
        thread. Callable from any thread.

        Returns:
            The new actor's ref.

        Raises:
            TypeError: ``actor_class`` is not an Actor or ThreadActor subclass.
            ActorDeadError: the system is closed.
            Exception: whatever ``__init__`` raised.
        """
        return self._spawn(actor_class, args, kwargs, None)

    def _spawn(
        self,
        actor_class: type[B],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        parent: ActorRef[Any] | None,
    ) -> ActorRef[B]:
        cls: Any = actor_class
        if not (isinstance(cls, type) and issubclass(cls, _ActorBase)):
            raise TypeError(
                f"Expected a subclass of tether.actors.Actor or ThreadActor, got {actor_class!r}"
            )
        if self._closed or self._tearing_down:
            raise ActorDeadError(f"actor system {self.name!r} is closed")
        actor = cls._tether_new(self, parent)
        actor.__init__(*args, **kwargs)
        ref: ActorRef[B] = actor._actor_ref
        if threading.get_ident() == self._thread_id:
            self._register(ref)
        elif not self._bridge.call(self._register, ref):
            raise ActorDeadError(f"actor system {self.name!r} is closed")
        return ref

    def _register(self, ref: ActorRef[Any]) -> None:
        """Trio thread: make a new actor live (registry, parent link) and start it."""
        if self._tearing_down:
            ref._never_started()
            return
        ref._started_at = trio.current_time()
        self._live += 1
        self._started_total += 1
        self.registry._add(ref)
        parent = ref._parent
        if parent is not None and not parent._register_child(ref):
            ref._request_stop(StopReason.PARENT_STOPPED, None)
        if self._closing:
            ref._request_stop(StopReason.SHUTDOWN, None)
        ref._start()

    def _actor_finished(self, ref: ActorRef[Any]) -> None:
        """Trio thread: ``ref`` has fully stopped."""
        reason = ref._stop_reason
        assert reason is not None
        self.registry._remove(ref, reason)
        self._live -= 1
        if ref in self._thread_refs:
            self._thread_refs.discard(ref)
            self._handled_retired += ref._handled
            if not self._thread_refs and self._threads_done is not None:
                self._threads_done.set()
        if self._live == 0 and self._all_stopped is not None:
            self._all_stopped.set()

    def statistics(self) -> SystemStatistics:
        """Return a snapshot of the system's counters (see ``SystemStatistics``)."""
        handled = self._dispatcher.handled + self._handled_retired
        handled += sum(ref._handled for ref in list(self._thread_refs))
        return SystemStatistics(
            name=self.name,
            actors=len(self.registry),
            dispatcher_queue=len(self._dispatcher.runq),
            handled_total=handled,
            timers_pending=self._timers.pending(),
            started_total=self._started_total,
            failures_total=self._failures_total,
            dropped_total=self._dropped_total,
        )

    # ------------------------------------------------------------------ closing

    async def _shutdown(self, timeout: float | None) -> None:
        """Graceful close: stop every actor (children first) and wait for them.

        After ``timeout`` seconds (None: no limit) the wait ends; the actors
        still running (a handler that never returns, say) are named in a
        warning and torn down by the caller.
        """
        self._closing = True
        if self._live:
            self._all_stopped = trio.Event()
            for ref in reversed(list(self.registry._by_urn.values())):
                ref._request_stop(StopReason.SHUTDOWN, None)
            with trio.move_on_after(math.inf if timeout is None else timeout):
                await self._all_stopped.wait()
            if not self._all_stopped.is_set():
                stuck = list(self.registry._by_urn.values())
                logger.warning(
                    "actor system %r: %d actors did not stop within %.1fs, tearing down: %s",
                    self.name,
                    len(stuck),
                    timeout,
                    ", ".join(str(ref) for ref in stuck[:20]),
                )

    async def _teardown(self) -> None:
        """Abrupt close, after the nursery has exited: stop everything now."""
        self._closing = True
        self._tearing_down = True
        for ref in reversed(list(self.registry._by_urn.values())):
            try:
                ref._abort()
            except Exception:
                logger.exception("tearing down %s failed", ref)
        if self._thread_refs:
            self._threads_done = trio.Event()
            with trio.CancelScope(shield=True), trio.move_on_after(THREAD_ACTOR_GRACE_S):
                await self._threads_done.wait()
            if self._thread_refs:
                logger.warning(
                    "actor system %r closed while ThreadActors were still stopping: %s",
                    self.name,
                    ", ".join(str(ref) for ref in self._thread_refs),
                )
        self._bridge.close()
        self._closed = True


def _sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    exceptions = group.exceptions
    while len(exceptions) == 1:
        exc = exceptions[0]
        if not isinstance(exc, BaseExceptionGroup):
            return exc
        exceptions = exc.exceptions
    return None


@asynccontextmanager
async def open_actor_system(
    name: str = "tether", *, shutdown_timeout: float | None = None
) -> AsyncIterator[ActorSystem]:
    """Open an actor system; every actor started in it lives inside this block.

    Inside the block (and in every task and ``trio.to_thread`` worker started from it),
    ``current_system()`` and ``ActorCls.start()`` use this system.

    Args:
        name: shown in logs, ``repr`` and statistics.
        shutdown_timeout: how long leaving the block waits for actors to stop
            (None: no limit); those still running then are torn down.

    Yields:
        The system.

    Resource handling:
        Leaving the block normally stops every live actor with ``StopReason.SHUTDOWN``
        (children before parents, otherwise in reverse start order); each handles its
        queued messages first and runs ``on_stop``. The block exits once all have
        stopped, or ``shutdown_timeout`` has passed (the rest are torn down); tasks
        left in ``system.nursery`` are then cancelled.

    Error handling:
        If the block raises, or an actor raises a ``BaseException`` that is not an
        ``Exception`` (``KeyboardInterrupt``, ``SystemExit``), every actor is torn down
        at once (``on_stop`` runs, pending asks fail with ``ActorDeadError``) and the
        exception propagates. A lone exception is not wrapped in an ExceptionGroup.

    Cancellation:
        Cancelling the block tears the actors down as above. The teardown waits (shielded
        from the cancellation) up to ``THREAD_ACTOR_GRACE_S`` seconds for ThreadActors.
    """
    system: ActorSystem | None = None
    context_token = None
    try:
        async with trio.open_nursery() as nursery:
            system = ActorSystem._create(name, nursery)
            context_token = _current.set(system)
            _add_running(system)
            nursery.start_soon(system._dispatcher.run, name=f"tether.actors:{name}:dispatcher")
            nursery.start_soon(system._timers.run, name=f"tether.actors:{name}:timers")
            yield system
            await system._shutdown(shutdown_timeout)
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # trio wraps even a lone exception of the block in an ExceptionGroup; callers of
        # a context manager expect the exception they raised.
        sole = _sole_exception(group)
        if sole is None:
            raise
        raise sole from None
    finally:
        if system is not None:
            await system._teardown()
            _remove_running(system)
        if context_token is not None:
            _current.reset(context_token)
