"""Errors of the protocol core.

::

    ProtocolError                  base; never raised itself
     ├─ LocalProtocolError         our code misused the API (a bug): let it propagate
     └─ RemoteProtocolError        the client misbehaved; carries what to answer
          .close_hint: Disconnect  fatal: send this close, the connection is CLOSED
          .error_hint: Error       recoverable: send this error frame, carry on

Strategy (the shape follows h11): validation code raises
:class:`LocalProtocolError`, because an invalid event must be unconstructible
whoever builds it. Where the data came from the peer, the single entry point
(``codec.decode_frame`` / ``codec.event_from_frame``, used by
``ServerConnection.events``) converts it to :class:`RemoteProtocolError` with a
hint. Foreign exceptions (msgpack's many types) are translated at the one decode
choke point in ``codec.py``. Anything else escaping ``receive_data`` or
``events`` is a bug in this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Runtime import would be circular: events.py raises LocalProtocolError.
    from .events import Disconnect, Error

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """Base class of the protocol core's errors; catch a subclass instead."""


class LocalProtocolError(ProtocolError):
    """Our own code broke the protocol or misused the API.

    Examples: constructing an event with invalid fields, sending ``welcome`` twice,
    answering a ref that is not in flight. It is a bug; do not catch it to carry on.
    """


class RemoteProtocolError(ProtocolError):
    """The client sent something the protocol does not allow.

    Exactly one hint is set:

    * ``close_hint`` (fatal): the adapter sends this ``Disconnect`` as the
      WebSocket close and stops reading; the connection is already CLOSED.
    * ``error_hint`` (recoverable): the adapter sends this ``error`` frame through
      ``ServerConnection.send`` and keeps reading.

    Attributes:
        close_hint: the close to send, or None.
        error_hint: the error frame to send, or None.
    """

    close_hint: Disconnect | None
    error_hint: Error | None

    def __init__(
        self,
        message: str,
        *,
        close_hint: Disconnect | None = None,
        error_hint: Error | None = None,
    ) -> None:
        """Create the error.

        Args:
            message: what the client did wrong (for logs; may name the frame type).
            close_hint: the close to send when the error is fatal.
            error_hint: the error frame to send when it is recoverable.

        Raises:
            LocalProtocolError: not exactly one of the hints was given.
        """
        if (close_hint is None) == (error_hint is None):
            raise LocalProtocolError(
                "Expected exactly one of close_hint and error_hint, "
                f"got close_hint={close_hint!r}, error_hint={error_hint!r}"
            )
        super().__init__(message)
        self.close_hint = close_hint
        self.error_hint = error_hint

    @property
    def fatal(self) -> bool:
        """True when the connection must be closed (``close_hint`` is set)."""
        return self.close_hint is not None

    @property
    def hint(self) -> Disconnect | Error:
        """The event to hand to ``ServerConnection.send``: the close or the error."""
        if self.close_hint is not None:
            return self.close_hint
        assert self.error_hint is not None  # guaranteed by __init__
        return self.error_hint
