"""Errors raised by the actor runtime.

The hierarchy, as raised to callers::

    ActorError                    every error the runtime itself raises
     ├─ ActorDeadError            tell/ask/send/proxy to an actor that has stopped, an ask that
     │                            was still queued (or in flight) when its actor stopped, a spawn
     │                            into a closed system; also a ``pykka.ActorDeadError``, so
     │                            pykka-style code keeps catching it
     ├─ MailboxFull               ``tell`` (or ``ask``) to an actor whose bounded mailbox is full
     ├─ AskTimeout                no reply within the timeout; also a ``pykka.Timeout``
     └─ WouldDeadlock             a blocking ``Future.get()`` on the trio thread for a future that
                                  is not resolved yet (the reply can only come from that thread)

Exceptions raised by an actor's own handlers are not wrapped: an exception raised while
handling an ``ask`` reaches the caller unchanged (P10).
"""

from __future__ import annotations

import pykka

__all__ = ["ActorDeadError", "ActorError", "AskTimeout", "MailboxFull", "WouldDeadlock"]


class ActorError(Exception):
    """Base class of every error raised by the actor runtime."""


class ActorDeadError(ActorError, pykka.ActorDeadError):
    """The actor has stopped (or its system has closed), so the message cannot be handled."""


class MailboxFull(ActorError):
    """The actor's mailbox holds ``mailbox_size`` messages; the message was not accepted.

    Attributes:
        actor_urn: URN of the actor whose mailbox is full.
        mailbox_size: the bound that was reached.
    """

    def __init__(self, message: str, *, actor_urn: str, mailbox_size: int) -> None:
        super().__init__(message)
        self.actor_urn = actor_urn
        self.mailbox_size = mailbox_size


class AskTimeout(ActorError, pykka.Timeout):
    """No reply arrived within the timeout. The message may still be handled later."""


class WouldDeadlock(ActorError, RuntimeError):
    """A blocking call on the trio thread waited for something only that thread can do.

    Use ``await future`` (or ``await wait(future)``) on the trio thread instead of
    ``future.get()``.
    """
