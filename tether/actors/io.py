"""Running storage work from an actor without blocking it.

An actor's handlers are synchronous and must stay quick. :meth:`PipeToSelf._io`
runs an awaitable operation in a task of the system nursery and delivers its
outcome back to the actor as a message, so the continuation (``then``) runs in
the actor, in order with its other mail (akka's "pipe to self").
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tether.actors import Actor, ActorDeadError

log = logging.getLogger("tether.actors")

Then = Callable[[Any, BaseException | None], None]


@dataclass(frozen=True, slots=True)
class IoDone:
    """The outcome of an operation started with ``_io``: run ``then`` in the actor."""

    then: Then
    result: Any
    error: BaseException | None


class PipeToSelf(Actor):
    """Base for actors that start storage operations (see the module docstring).

    Subclasses must route :class:`IoDone` messages to :meth:`_io_done`.
    """

    def _io(self, operation: Callable[[], Awaitable[Any]], then: Then) -> None:
        """Run ``operation()`` in a task; ``then(result, error)`` runs in this actor.

        ``error`` is the operation's exception (any ``Exception``); cancellation
        at server shutdown drops the continuation.
        """
        self.system.nursery.start_soon(self._io_task, operation, then)

    async def _io_task(self, operation: Callable[[], Awaitable[Any]], then: Then) -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = await operation()
        except Exception as exc:
            error = exc
        try:
            # Backpressure: a full mailbox makes this task wait, not drop.
            await self.ref.send(IoDone(then, result, error))
        except ActorDeadError:
            log.debug("%s stopped before a storage result came back", self.ref)

    @staticmethod
    def _io_done(message: IoDone) -> None:
        message.then(message.result, message.error)
