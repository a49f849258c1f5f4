"""A pykka ``Future`` that trio tasks await and other threads block on.

pykka's own ``Future.__await__`` yields ``None`` and then calls the blocking ``get()``: trio
rejects the bare yield, and the blocking get would freeze the event loop anyway (REPORT.md
§1 items 2 and 5). This future parks the awaiting trio task with
``wait_task_rescheduled`` instead, and wakes it from whichever thread resolves the future.
Its combinators (``map``, ``filter``, ``join``, ``reduce``) are built on completion
callbacks, so they are awaitable too; pykka's lazy get-hook mechanism is still honoured for
futures that pykka code builds with ``set_get_hook``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import sys
import threading
import types
from collections.abc import Callable, Generator, Iterable
from typing import Any, TypeAlias, TypeVar, cast

import pykka
import trio

from .errors import AskTimeout, WouldDeadlock

__all__ = ["Future", "wait"]

logger = logging.getLogger("tether.actors")

T = TypeVar("T")
J = TypeVar("J")
M = TypeVar("M")
R = TypeVar("R")

ExcInfo: TypeAlias = tuple[
    type[BaseException] | None, BaseException | None, types.TracebackType | None
]

_PENDING = 0
_VALUE = 1
_ERROR = 2

# One process-wide lock orders "resolve" against "register a waiter" when the two happen
# on different threads; without it a waiter could register just after the resolver looked
# for waiters and sleep forever. It is held for a handful of bytecodes, never across a
# callback, so contention stays negligible.
_LOCK = threading.Lock()


class _Unset:
    """Marker: the get-hook has not produced its result yet."""


_UNSET = _Unset()


class _TrioWaiter:
    """A trio task parked in ``await future``."""

    __slots__ = ("task", "thread", "token")

    def __init__(self, task: trio.lowlevel.Task, thread: int, token: trio.lowlevel.TrioToken):
        self.task: trio.lowlevel.Task | None = task
        self.thread = thread
        self.token = token

    def wake(self) -> None:
        """Reschedule the task unless its wait was aborted. Runs on the task's trio thread."""
        task = self.task
        if task is not None:
            self.task = None
            trio.lowlevel.reschedule(task)


class Future(pykka.Future[T]):
    """The result of an ``ask`` (or proxy call), available now or later.

    * ``await future`` on a trio task: parks the task until the result is set (from any
      thread); cancellable; a checkpoint even when the result is already there.
    * ``future.get(timeout=None)`` on any other thread: blocks like pykka's futures and
      raises ``AskTimeout`` (a ``pykka.Timeout``) after ``timeout`` seconds.
    * ``future.get()`` on a thread running trio: returns an available result, but raises
      ``WouldDeadlock`` instead of blocking the event loop.
    * ``set()``/``set_exception()`` may be called from any thread, once.

    An exception set on the future is raised by every ``get``/``await``.
    """

    __slots__ = (
        "_await_timeout",
        "_callbacks",
        "_event",
        "_exc",
        "_get_hook",
        "_hook_result",
        "_state",
        "_tb",
        "_value",
        "_waiters",
    )

    def __init__(self) -> None:
        # pykka.Future.__init__ is deliberately not called: it allocates a marker object
        # per future, and this class keeps its own get-hook cache.
        self._get_hook = None
        self._hook_result: Any = _UNSET
        self._state = _PENDING
        self._value: Any = None
        self._exc: BaseException | None = None
        self._tb: types.TracebackType | None = None
        self._waiters: list[_TrioWaiter] | None = None
        self._event: threading.Event | None = None
        self._callbacks: list[Callable[[Future[T]], None]] | None = None
        self._await_timeout: float | None = None

    def __repr__(self) -> str:
        if self._state == _VALUE:
            state = "done"
        elif self._state == _ERROR:
            state = f"failed: {self._exc!r}"
        else:
            state = "pending"
        return f"<tether.actors.Future {state}>"

    # ----------------------------------------------------------------- state

    def done(self) -> bool:
        """Return True once the result (value or exception) is available without waiting."""
        return self._state != _PENDING or self._hook_result is not _UNSET

    def _result(self) -> T:
        if self._state == _VALUE:
            return cast("T", self._value)
        exc = self._exc
        assert exc is not None
        # Re-raise with the traceback captured at set time, not one that grows by a frame
        # per get() (pykka does the same).
        if exc.__traceback__ is not self._tb:
            raise exc.with_traceback(self._tb)
        raise exc

    def _resolve(self, state: int, value: Any, exc: BaseException | None, tb: Any) -> None:
        with _LOCK:
            if self._state != _PENDING or self._get_hook is not None:
                # pykka's contract for a second set() (ThreadingFuture does the same).
                raise queue.Full
            self._state = state
            self._value = value
            self._exc = exc
            self._tb = tb
            waiters = self._waiters
            self._waiters = None
            event = self._event
            callbacks = self._callbacks
            self._callbacks = None
        if waiters is not None:
            _wake_all(waiters)
        if event is not None:
            event.set()
        if callbacks is not None:
            for callback in callbacks:
                try:
                    callback(self)
                except Exception:
                    logger.exception("Future callback %r failed", callback)

    def set(self, value: T | None = None) -> None:
        """Set the result and wake every waiter. Any thread.

        Raises:
            queue.Full: the future already has a result (pykka's contract).
        """
        self._resolve(_VALUE, value, None, None)

    def set_exception(self, exc_info: ExcInfo | None = None) -> None:
        """Set an exception as the result; ``exc_info`` defaults to ``sys.exc_info()``.

        Raises:
            queue.Full: the future already has a result.
            TypeError: there is no exception to set.
        """
        if exc_info is None:
            exc_info = sys.exc_info()
        exc_type, exc, tb = exc_info
        if exc is None:
            if exc_type is None:
                raise TypeError("Expected an exception to set, got no exception")
            exc = exc_type()
        self._resolve(_ERROR, None, exc, tb if tb is not None else exc.__traceback__)

    def _set_error(self, exc: BaseException) -> None:
        """Set ``exc`` as the result (any thread)."""
        self._resolve(_ERROR, None, exc, exc.__traceback__)

    def _fail_unshared(self, exc: BaseException) -> None:
        """Set an exception on a future nobody else has seen yet (no lock needed)."""
        self._state = _ERROR
        self._exc = exc
        self._tb = None

    def _set_unshared(self, value: Any) -> None:
        """Set the value of a future nobody else has seen yet (no lock needed)."""
        self._state = _VALUE
        self._value = value

    def set_get_hook(self, func: Callable[[float | None], T]) -> None:
        """pykka's lazy result: ``func(timeout)`` runs at the first ``get()``.

        Awaiting such a future runs the (blocking) hook in a worker thread.

        Raises:
            queue.Full: the future already has a result.
        """
        with _LOCK:
            if self._state != _PENDING:
                raise queue.Full
            self._get_hook = func
            waiters = self._waiters
            self._waiters = None
        if waiters is not None:
            _wake_all(waiters)

    def add_done_callback(self, callback: Callable[[Future[T]], None]) -> None:
        """Call ``callback(future)`` once the result is set, in the thread that sets it.

        If the result is already set, the callback runs now, in the calling thread. An
        exception from the callback is logged and otherwise ignored.

        Raises:
            TypeError: the future has a pykka get-hook (its result only exists once
                someone calls ``get()``).
        """
        with _LOCK:
            if self._get_hook is not None:
                raise TypeError("Expected a future without a get-hook, got one with a get-hook")
            if self._state == _PENDING:
                if self._callbacks is None:
                    self._callbacks = [callback]
                else:
                    self._callbacks.append(callback)
                return
        try:
            callback(self)
        except Exception:
            logger.exception("Future callback %r failed", callback)

    # ------------------------------------------------------------ blocking API

    def get(self, *, timeout: float | None = None) -> T:
        """Return the result, blocking this (non-trio) thread until it is set.

        Args:
            timeout: seconds to wait; None waits forever.

        Returns:
            The value set on the future.

        Raises:
            AskTimeout: no result within ``timeout`` seconds.
            WouldDeadlock: called on a thread running trio while the result is not set.
            Exception: the exception set on the future.
        """
        hook = self._get_hook
        if hook is not None:
            if self._hook_result is _UNSET:
                self._hook_result = hook(timeout)
            return cast("T", self._hook_result)
        if self._state == _PENDING:
            if trio.lowlevel.in_trio_run():
                raise WouldDeadlock(
                    "Future.get() on the trio thread would block the event loop before the "
                    "result can be set; use `await future` or `await wait(future)`"
                )
            with _LOCK:
                event: threading.Event | None = None
                if self._state == _PENDING and self._get_hook is None:
                    event = self._event
                    if event is None:
                        event = self._event = threading.Event()
            if event is not None and not event.wait(timeout):
                raise AskTimeout(f"no result within {timeout} seconds")
            if self._get_hook is not None:
                return self.get(timeout=timeout)
        return self._result()

    # ---------------------------------------------------------------- trio API

    def __await__(self) -> Generator[Any, None, T]:
        if self._await_timeout is not None:
            return (yield from self.aget(timeout=self._await_timeout).__await__())
        return (yield from self._wait())

    __iter__ = __await__

    def _wait(self) -> Generator[Any, None, T]:
        parked = False
        while True:
            hook = self._get_hook
            if hook is not None:
                if self._hook_result is _UNSET:
                    result = yield from trio.to_thread.run_sync(
                        hook, None, abandon_on_cancel=True
                    ).__await__()
                    if self._hook_result is _UNSET:
                        self._hook_result = result
                return cast("T", self._hook_result)
            if self._state != _PENDING:
                if not parked:
                    # trio's convention: every await is a checkpoint, even when no wait
                    # is needed (like trio.Event.wait on a set event).
                    yield from trio.lowlevel.checkpoint().__await__()  # noqa: ASYNC105
                return self._result()
            waiter = _TrioWaiter(
                trio.lowlevel.current_task(),
                threading.get_ident(),
                trio.lowlevel.current_trio_token(),
            )
            with _LOCK:
                pending = self._state == _PENDING and self._get_hook is None
                if pending:
                    if self._waiters is None:
                        self._waiters = [waiter]
                    else:
                        self._waiters.append(waiter)
            if not pending:
                continue

            def abort(_: Any, waiter: _TrioWaiter = waiter) -> trio.lowlevel.Abort:
                with _LOCK:
                    waiters = self._waiters
                    if waiters is not None and waiter in waiters:
                        waiters.remove(waiter)
                waiter.task = None
                return trio.lowlevel.Abort.SUCCEEDED

            yield from trio.lowlevel.wait_task_rescheduled(abort).__await__()  # noqa: ASYNC105
            parked = True

    @types.coroutine
    def _wait_coro(self) -> Generator[Any, None, T]:
        return (yield from self._wait())

    async def aget(self, *, timeout: float | None = None) -> T:
        """Await the result, giving up after ``timeout`` seconds of trio time.

        Args:
            timeout: seconds on the trio clock; None waits forever.

        Returns:
            The value set on the future.

        Raises:
            AskTimeout: no result within ``timeout``. The future stays usable: the result
                may still arrive and can be awaited again.
            Exception: the exception set on the future.

        Cancellation:
            Cancellable; a checkpoint even if the result is already available.
        """
        if timeout is None:
            return await self._wait_coro()
        with trio.move_on_after(timeout):
            return await self._wait_coro()
        raise AskTimeout(f"no reply within {timeout} seconds")

    # ------------------------------------------------------------- combinators

    def _derive(self, transform: Callable[[Any], Any]) -> Future[Any]:
        out: Future[Any] = Future()

        def on_done(source: Future[T]) -> None:
            try:
                value = transform(source._result())
            except Exception:
                out.set_exception()
            else:
                out.set(value)

        self.add_done_callback(on_done)
        return out

    def map(self, func: Callable[[T], M]) -> pykka.Future[M]:
        """Return a future of ``func(result)`` (an exception propagates to it unchanged)."""
        if self._get_hook is not None:
            return super().map(func)
        return cast("Future[M]", self._derive(func))

    def filter(
        self: pykka.Future[Iterable[J]], func: Callable[[J], bool]
    ) -> pykka.Future[Iterable[J]]:
        """Return a future of the list of items of the (iterable) result passing ``func``."""
        if not isinstance(self, Future) or self._get_hook is not None:
            return pykka.Future.filter(self, func)
        return cast("Future[Iterable[J]]", self._derive(lambda items: list(filter(func, items))))

    def reduce(
        self: pykka.Future[Iterable[J]], func: Callable[[R, J], R], *args: R
    ) -> pykka.Future[R]:
        """Return a future of ``functools.reduce(func, result, *args)``."""
        if not isinstance(self, Future) or self._get_hook is not None:
            return pykka.Future.reduce(self, func, *args)
        return cast("Future[R]", self._derive(lambda items: functools.reduce(func, items, *args)))

    def join(self: pykka.Future[Any], *futures: pykka.Future[Any]) -> pykka.Future[Iterable[Any]]:
        """Return a future of the list of the results of this future and ``futures``.

        The first exception among them (in argument order) becomes the joined result.
        Futures of other kinds (pykka's ``ThreadingFuture``) fall back to pykka's lazy join.
        """
        sources = [self, *futures]
        if not all(isinstance(f, Future) and f._get_hook is None for f in sources):
            return pykka.Future.join(self, *futures)
        ours = cast("list[Future[Any]]", sources)
        out: Future[Iterable[Any]] = Future()
        remaining = [len(ours)]
        lock = threading.Lock()

        def on_done(_: Future[Any]) -> None:
            with lock:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last:
                try:
                    values = [f._result() for f in ours]
                except Exception:
                    out.set_exception()
                else:
                    out.set(values)

        for f in ours:
            f.add_done_callback(on_done)
        return out


def _wake_all(waiters: list[_TrioWaiter]) -> None:
    me = threading.get_ident()
    for waiter in waiters:
        if waiter.thread == me:
            waiter.wake()
        else:
            # If the waiter's trio run is over, there is no task left to wake.
            with contextlib.suppress(trio.RunFinishedError):
                waiter.token.run_sync_soon(waiter.wake)


async def wait(future: pykka.Future[T], *, timeout: float | None = None) -> T:
    """Await any pykka future from trio.

    Our ``Future`` parks the task (no thread involved). Any other pykka future (for
    instance the ``ThreadingFuture`` of a stock ``pykka.ThreadingActor``) is waited for
    with its blocking ``get()`` in a trio worker thread: correct, but a thread hop.

    Args:
        future: the future to wait for.
        timeout: seconds to wait; None waits forever.

    Returns:
        The future's value.

    Raises:
        AskTimeout: no result within ``timeout``.
        TypeError: ``future`` is not a pykka future.
        Exception: the exception set on the future.

    Cancellation:
        Cancellable. Cancelling the wait on a foreign future abandons its worker thread,
        which stays blocked in ``get()`` until the future resolves (or its timeout ends).
    """
    if isinstance(future, Future):
        return cast("T", await future.aget(timeout=timeout))
    if not isinstance(future, pykka.Future):
        raise TypeError(f"Expected a pykka Future, got {future!r}")
    try:
        result = await trio.to_thread.run_sync(
            functools.partial(future.get, timeout=timeout), abandon_on_cancel=True
        )
    except AskTimeout:
        raise
    except pykka.Timeout as exc:
        raise AskTimeout(f"no result within {timeout} seconds") from exc
    return result
