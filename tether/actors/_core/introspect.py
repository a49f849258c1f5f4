"""Introspection for the operator console: what an actor is busy with, and tracing.

``waiting_on(ref)`` reads what the dispatcher records while an ``async def``
handler runs (``ref._busy``: the message, when it began, the coroutine): a
synchronous handler runs to completion on the trio thread, so nothing on that
thread can observe it mid-way and it is not recorded. A ThreadActor records
every message, since its handlers run beside the trio thread.

Tracing (``start_trace``) costs nothing while no actor is traced: it swaps the
traced actor's ``on_receive`` and ``_handle_receive`` for timing wrappers,
stored on the instance (the dispatcher looks them up per slice), and removes
them when the trace expires. The ring of entries is ``ref._trace``.

Trio thread only, except that a ThreadActor's wrappers run on its thread
(they only append to a ``deque`` and read one float).
"""

from __future__ import annotations

import collections
import os
import time
import types
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pykka import messages

from .envelope import _Ask, _ChildStopped, _OnStart, _StopRequest
from .errors import ActorDeadError

if TYPE_CHECKING:
    from .ref import ActorRef

__all__ = ["TraceSnapshot", "WaitingOn", "start_trace", "trace_snapshot", "waiting_on"]

#: Entries kept by one actor's trace (the oldest are dropped).
TRACE_CAPACITY = 200
#: Characters kept of a traced message's ``repr()``.
MAX_REPR = 200

_monotonic = time.monotonic
_perf = time.perf_counter
_CoroutineType = types.CoroutineType
#: Frames from files under this path are the library a handler waits in.
_LIBRARY = f"{os.sep}trio{os.sep}"


@dataclass(frozen=True, slots=True)
class WaitingOn:
    """What a busy actor handles.

    Attributes:
        message: the message's type name (the same for an ask; the method path
            for a proxy call, ``"on_start"`` for an async ``on_start``).
        since_s: seconds (``time.monotonic``) since its handler began.
        awaiting: where the handler's coroutine is suspended (innermost frames),
            or ``"running in its thread"`` for a ThreadActor.
    """

    message: str
    since_s: float
    awaiting: str


@dataclass(frozen=True, slots=True)
class TraceSnapshot:
    """One actor's trace: whether it still records, for how long, and its entries."""

    tracing: bool
    until_s: float
    messages: list[dict[str, Any]]


def _short_repr(obj: Any, limit: int = MAX_REPR) -> str:
    """``repr(obj)`` cut to ``limit`` characters (never raises)."""
    try:
        text = repr(obj)
    except Exception:
        text = f"<{type(obj).__name__} (repr failed)>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _message_name(message: Any) -> str:
    """A short, stable name for a mailbox item (see :class:`WaitingOn`)."""
    cls = type(message)
    if cls is _OnStart:
        return "on_start"
    if cls is _Ask:  # an asked message is named as itself (a ThreadActor's busy item)
        return _message_name(message.message)
    if cls is messages.ProxyCall:
        return ".".join(message.attr_path) + "()"
    if cls is messages.ProxyGetAttr or cls is messages.ProxySetAttr:
        return ".".join(message.attr_path)
    if cls is _StopRequest:
        return f"Stop({message.reason.value})"
    if cls is _ChildStopped:
        return "ChildStopped"
    return cls.__name__


def waiting_on(ref: ActorRef[Any]) -> WaitingOn | None:
    """What ``ref`` is busy with right now, or None when it waits for mail."""
    busy = ref._busy  # one read: the tuple is replaced, never mutated
    if busy is None:
        return None
    message, since, coro = busy
    awaiting = _describe_await(coro) if coro is not None else "running in its thread"
    return WaitingOn(_message_name(message), max(0.0, _monotonic() - since), awaiting)


def _describe_await(coro: Any) -> str:
    """Where ``coro`` is suspended: its own frames, then the library call it waits in.

    E.g. ``"Room._store (room.py:120) → Event.wait"``: the chain of application
    coroutines (the first and the innermost two), then the first frame inside
    trio (the public call; the scheduler internals below it say nothing).
    """
    own: list[str] = []
    library = ""
    obj: Any = coro
    for _ in range(64):  # bounded: a chain is never this deep in practice
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None)
        code = getattr(obj, "cr_code", None) or getattr(obj, "gi_code", None)
        if frame is None or code is None:
            if obj is not None and obj is not coro and not library:
                library = type(obj).__name__
            break
        filename = code.co_filename
        if _LIBRARY in filename:
            library = code.co_qualname
            break
        own.append(f"{code.co_qualname} ({filename.rsplit('/', 1)[-1]}:{frame.f_lineno})")
        nxt = getattr(obj, "cr_await", None)
        if nxt is None:
            nxt = getattr(obj, "gi_yieldfrom", None)
        if nxt is None:
            break
        obj = nxt
    shown = own if len(own) <= 3 else [own[0], "…", *own[-2:]]
    if library:
        shown.append(library)
    text = " → ".join(shown) or "not started"
    return text if len(text) <= 400 else text[:399] + "…"


class _TraceRing:
    """One actor's trace: entries and the deadline (``time.monotonic``)."""

    __slots__ = ("entries", "until")

    def __init__(self, until: float) -> None:
        self.entries: collections.deque[dict[str, Any]] = collections.deque(maxlen=TRACE_CAPACITY)
        self.until = until


def start_trace(ref: ActorRef[Any], seconds: float) -> float:
    """Record the messages ``ref`` handles for ``seconds`` from now; return the deadline.

    Tracing an actor already traced moves its deadline (entries are kept).

    Raises:
        ActorDeadError: the actor is not alive.
        TypeError: the actor's class has no instance ``__dict__`` to hold the wrappers.
    """
    actor: Any = ref._actor
    if actor is None or not ref.is_alive():
        raise ActorDeadError(f"{ref} is not alive")
    if not hasattr(actor, "__dict__"):
        raise TypeError(f"{type(actor).__name__} cannot be traced (no instance __dict__)")
    until = _monotonic() + seconds
    ring = ref._trace
    if isinstance(ring, _TraceRing) and "on_receive" in actor.__dict__:
        ring.until = until
        return until
    ring = _TraceRing(until)
    ref._trace = ring
    for name in ("on_receive", "_handle_receive"):
        original = getattr(type(actor), name).__get__(actor)
        actor.__dict__[name] = _wrap(actor, ring, name, original)
    return until


def trace_snapshot(ref: ActorRef[Any]) -> TraceSnapshot:
    """The trace of ``ref`` (empty if it was never traced); expired wrappers are removed."""
    ring = ref._trace
    if not isinstance(ring, _TraceRing):
        return TraceSnapshot(False, 0.0, [])
    remaining = ring.until - _monotonic()
    if remaining <= 0:
        _untrace(ref._actor)
    for _ in range(3):
        try:
            entries = list(ring.entries)
        except RuntimeError:  # a ThreadActor appended meanwhile
            continue
        break
    else:
        entries = []
    return TraceSnapshot(remaining > 0 and ref.is_alive(), max(0.0, remaining), entries)


def _untrace(actor: Any) -> None:
    if actor is None:
        return
    instance = getattr(actor, "__dict__", None)
    if instance is not None:
        instance.pop("on_receive", None)
        instance.pop("_handle_receive", None)


def _wrap(actor: Any, ring: _TraceRing, name: str, original: Any) -> Any:
    def record(message: Any, started: float, error: BaseException | None) -> None:
        ring.entries.append(
            {
                "ts": time.time(),
                "message": _message_name(message),
                "repr": _short_repr(message),
                "duration_ms": round((_perf() - started) * 1000.0, 3),
                "error": None if error is None else _short_repr(error),
            }
        )

    async def timed(message: Any, started: float, coro: Any) -> Any:
        try:
            result = await coro
        except BaseException as exc:
            record(message, started, exc)
            raise
        record(message, started, None)
        return result

    def traced(message: Any) -> Any:
        if _monotonic() >= ring.until:
            _untrace(actor)
            return original(message)
        started = _perf()
        try:
            result = original(message)
        except BaseException as exc:
            record(message, started, exc)
            raise
        if type(result) is _CoroutineType:
            return timed(message, started, result)
        record(message, started, None)
        return result

    traced.__name__ = name
    return traced
