"""The runtime's own mailbox items (P10: pykka's ``Envelope`` idea, one class per purpose).

A ``tell`` puts the user's message object itself in the mailbox, with no wrapper: it is the
hot path and a wrapper would cost an allocation per message. Everything else the runtime
queues is one of these slotted classes, recognised by exact type.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pykka import messages

if TYPE_CHECKING:
    from .future import Future
    from .reasons import StopReason
    from .ref import ActorRef

__all__: list[str] = []


class _Ask:
    """An ``ask``: the message and the future its reply (or exception) goes to."""

    __slots__ = ("message", "reply")

    def __init__(self, message: Any, reply: Future[Any]) -> None:
        self.message = message
        self.reply = reply

    def __repr__(self) -> str:
        return f"_Ask({self.message!r})"


class _StopRequest:
    """``ref.stop()``: stop once the messages queued before this one are handled.

    ``reply`` (if any) resolves to True once the actor has fully stopped.
    """

    __slots__ = ("reason", "reply")

    def __init__(self, reason: StopReason, reply: Future[bool] | None) -> None:
        self.reason = reason
        self.reply = reply

    def __repr__(self) -> str:
        return f"_StopRequest({self.reason})"


class _ChildStopped:
    """A child has fully stopped; runs the parent's ``on_child_stopped`` hook."""

    __slots__ = ("child", "exc", "reason")

    def __init__(self, child: ActorRef[Any], reason: StopReason, exc: BaseException | None):
        self.child = child
        self.reason = reason
        self.exc = exc

    def __repr__(self) -> str:
        return f"_ChildStopped({self.child}, {self.reason})"


class _ChildrenDone:
    """Sent to a stopping ThreadActor once all of its children have stopped."""

    __slots__ = ()


class _OnStart:
    """What ``ref._busy`` names as the message while an async ``on_start`` runs."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "on_start"


ON_START = _OnStart()


#: Messages that pykka's ``Actor._handle_receive`` routes (proxy calls and attribute access).
_PROXY_MESSAGES: frozenset[type] = frozenset(
    {messages.ProxyCall, messages.ProxyGetAttr, messages.ProxySetAttr}
)

#: Every mailbox item type that is not handled by a plain ``on_receive(message)`` call.
_SPECIAL: frozenset[type] = frozenset(
    {_Ask, _StopRequest, _ChildStopped, _ChildrenDone, messages._ActorStop, *_PROXY_MESSAGES}
)
