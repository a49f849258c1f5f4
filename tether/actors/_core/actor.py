"""``Actor``: a pykka actor that runs on the system's trio dispatcher.

Subclass it and implement pykka's hooks (``on_start``, ``on_receive``, ``on_stop``,
``on_failure``) plus, for supervision, ``on_child_stopped``. ``on_start`` and message
handlers (``on_receive``, methods called through a proxy) may be ``async def``: the actor
then gets a temporary task while they run and still handles one message at a time, in
order. The other hooks are synchronous.
"""

from __future__ import annotations

import itertools
import math
import secrets
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

import pykka
import trio

from .context import current_system
from .errors import ActorDeadError
from .future import Future
from .reasons import StopReason
from .ref import _STOPPING, ActorRef

if TYPE_CHECKING:
    from .system import ActorSystem
    from .timers import TimerHandle

__all__ = ["Actor"]

B = TypeVar("B", bound=pykka.Actor)

# URNs: a random per-process nonce and a serial number. Unique within the process, and
# (with overwhelming probability) across processes, without a urandom call per actor
# (REPORT.md §1 item 13: uuid4 costs a syscall and ~100 B per actor).
_NONCE = secrets.token_hex(6)
_SERIAL = itertools.count(1)

_get_ident = threading.get_ident


def _new_urn() -> str:
    return f"urn:tether:{_NONCE}:{next(_SERIAL):x}"


class _ActorBase:
    """What ``Actor`` and ``ThreadActor`` share: start, supervision, kind, mailbox bound."""

    __slots__ = ()

    #: Bound of the mailbox: ``tell`` raises ``MailboxFull`` when this many messages wait.
    mailbox_size: ClassVar[int] = 10_000
    #: Name the console and the registry group actors by; defaults to the class name.
    kind: ClassVar[str] = "Actor"
    _explicit_kind: ClassVar[bool] = False
    _ref_class: ClassVar[type[ActorRef[Any]]] = ActorRef

    _actor_ref: ActorRef[Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            if not isinstance(cls.kind, str) or not cls.kind:
                raise TypeError(
                    f"Expected {cls.__name__}.kind to be a non-empty str, got {cls.kind!r}"
                )
            cls._explicit_kind = True
        elif not cls._explicit_kind:
            # An explicit kind is inherited; otherwise each class is its own kind.
            cls.kind = cls.__name__
        size = cls.mailbox_size
        if type(size) is not int or size < 1:
            raise TypeError(
                f"Expected {cls.__name__}.mailbox_size to be a positive int, got {size!r}"
            )

    @classmethod
    def _tether_new(cls, system: ActorSystem, parent: ActorRef[Any] | None) -> Any:
        """Create an instance and its ref, before ``__init__`` runs (system.spawn)."""
        actor: Any = cls.__new__(cls)
        urn = _new_urn()
        actor.actor_urn = urn
        actor._actor_ref = cls._ref_class._create(actor, urn, system, parent)
        return actor

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Accept and ignore pykka's constructor arguments; see ``start()``.

        Raises:
            TypeError: the actor was constructed directly instead of being started.
        """
        try:
            self._actor_ref  # noqa: B018
        except AttributeError:
            name = type(self).__name__
            raise TypeError(
                f"{name} must be started with {name}.start(), system.spawn({name}) or "
                f"start_child({name}), not constructed directly"
            ) from None

    @property
    def ref(self) -> ActorRef[Any]:
        """This actor's own ref, typed as tether's (pykka's ``actor_ref`` is the same object)."""
        return self._actor_ref

    @property
    def system(self) -> ActorSystem:
        """The actor system this actor lives in."""
        return self._actor_ref._system

    @property
    def stop_reason(self) -> StopReason | None:
        """Why the actor is stopping (readable in ``on_stop``); None while it runs."""
        return self._actor_ref._stop_reason

    def start_child(self, actor_class: type[B], /, *args: Any, **kwargs: Any) -> ActorRef[B]:
        """Start an actor linked to this one as its child.

        When this actor stops, its live children are stopped first
        (``StopReason.PARENT_STOPPED``); when a child stops, ``on_child_stopped`` runs in
        this actor.

        Returns:
            The child's ref (``ref.parent`` is this actor's ref).

        Raises:
            ActorDeadError: this actor is stopping or stopped.
            Exception: whatever the child's ``__init__`` raised.
        """
        ref = self._actor_ref
        if ref._state >= _STOPPING:
            raise ref._dead_error()
        return ref._system._spawn(actor_class, args, kwargs, ref)

    def on_child_stopped(
        self, child: ActorRef[Any], reason: StopReason, exc: BaseException | None
    ) -> None:
        """Hook: a child started with ``start_child`` has fully stopped.

        Runs in this actor, as a message (after the messages queued before it), or, if
        this actor is itself stopping and waiting for its children, right before its
        ``on_stop``. ``exc`` is the exception that made the child fail, if it did. An
        exception raised here while handling the message makes this actor fail (like a
        tell handler); during this actor's own stop it is logged.
        """


class _StoppedView:
    """pykka's ``actor_stopped`` flag, read-only: ``is_set()`` once the actor stops."""

    __slots__ = ("_ref",)

    def __init__(self, ref: ActorRef[Any]) -> None:
        self._ref = ref

    def is_set(self) -> bool:
        return not self._ref.is_alive()


class Actor(_ActorBase, pykka.Actor):
    """An actor on the trio dispatcher: no thread and no task of its own.

    Start it with ``Cls.start(*args)``, ``system.spawn(Cls, *args)`` or
    ``self.start_child(Cls, *args)``. Hooks, all run in the actor (one at a time, on the
    trio thread):

    * ``on_start()``: before the first message; may be ``async def``. If it raises, the
      actor stops with ``StopReason.FAILURE`` (logged; neither ``on_failure`` nor
      ``on_stop`` runs, as in pykka).
    * ``on_receive(message)``: every message that is not a proxy call; may be
      ``async def``. Its return value answers an ``ask``. An exception raised while
      handling an ``ask`` goes to the caller and the actor carries on; one raised while
      handling a ``tell`` is logged, ``on_failure`` runs and the actor stops with
      ``StopReason.FAILURE`` (its parent is told).
    * ``on_stop()``: after the last message, after its children stopped; not after a
      failure. Synchronous. ``self.stop_reason`` says why.
    * ``on_failure(exc_type, exc, tb)``: after a failure, instead of ``on_stop``.
    * ``on_child_stopped(child, reason, exc)``: see ``start_child``.

    Class attributes: ``mailbox_size`` (default 10,000) and ``kind`` (default: the class
    name).
    """

    __slots__ = ("_actor_ref", "actor_urn")

    _actor_ref: ActorRef[Any]

    @classmethod
    def start(cls, *args: Any, **kwargs: Any) -> ActorRef[Self]:
        """Start an actor of this class in the current system (see ``current_system()``).

        The arguments go to the class's ``__init__``, which runs now, in the calling
        thread; ``on_start`` runs later, in the actor. Callable from any thread.

        Returns:
            The new actor's ref.

        Raises:
            RuntimeError: no current system (see ``current_system()``).
            ActorDeadError: the system is closed.
            Exception: whatever ``__init__`` raised.
        """
        return current_system()._spawn(cls, args, kwargs, None)

    @staticmethod
    def _create_actor_inbox() -> Any:
        # pykka's ABC requires it; the mailbox of this runtime lives in the ActorRef.
        raise TypeError("tether actors keep their mailbox in their ActorRef")

    @staticmethod
    def _create_future() -> Future[Any]:
        return Future()

    def _start_actor_loop(self) -> None:
        # pykka's ABC requires it; the system registers and schedules the actor instead.
        raise TypeError("tether actors are started by their ActorSystem")

    @property
    def actor_stopped(self) -> _StoppedView:  # type: ignore[override]
        """pykka's stopped flag: ``self.actor_stopped.is_set()`` once the actor stops."""
        return _StoppedView(self._actor_ref)

    def stop(self, reason: StopReason = StopReason.NORMAL) -> None:
        """Stop this actor once the current message is handled.

        Messages still queued are not handled (queued asks fail with ``ActorDeadError``);
        compare ``ref.stop()``, which lets the queued messages through first. Children are
        stopped first, then ``on_stop`` runs.
        """
        ref = self._actor_ref
        if _get_ident() == ref._tid:
            ref._stop_self(reason)
        else:
            ref._system._bridge.call(ref._stop_self, reason)

    def call_later(self, delay: float, message: Any) -> TimerHandle:
        """Tell ``message`` to this actor after ``delay`` seconds of trio time.

        The timer is cancelled if the actor stops first. If the mailbox is full when it
        fires, the message is dropped (logged, counted in ``statistics().dropped``).

        Raises:
            ValueError: ``delay`` is negative or not a number.
            ActorDeadError: the actor is stopping or stopped.
        """
        if not delay >= 0:
            raise ValueError(f"Expected a delay >= 0 seconds, got {delay!r}")
        return self.call_at(trio.current_time() + delay, message)

    def call_at(self, deadline: float, message: Any) -> TimerHandle:
        """Tell ``message`` to this actor at ``deadline`` (a ``trio.current_time()`` value).

        A deadline in the past fires at once. See ``call_later``.

        Raises:
            ValueError: ``deadline`` is not a number.
            ActorDeadError: the actor is stopping or stopped.
        """
        if math.isnan(deadline):
            raise ValueError(f"Expected a deadline on the trio clock, got {deadline!r}")
        ref = self._actor_ref
        if ref._state >= _STOPPING:
            raise ActorDeadError(f"{ref} is not alive; no timer for a stopped actor")
        return ref._system._timers.schedule(ref, deadline, message)

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Hook: a tell handler raised; runs in the actor before it stops (no ``on_stop``).

        The exception is already logged. An exception raised here is logged too.
        """
