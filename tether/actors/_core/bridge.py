"""Cross-thread delivery into a system's trio thread, batched.

``TrioToken.run_sync_soon`` takes a lock and writes to a wake-up socket on every call:
~53k messages/s when used per message (REPORT.md §1 item 12). The bridge queues what
foreign threads send and calls ``run_sync_soon`` once per burst; the trio thread then
delivers the whole batch. Items keep their order (one FIFO), so an actor spawned from a
thread is registered before the messages that thread tells it afterwards.

The mailbox bound is enforced for foreign senders too: a message told from a thread is
counted as "in flight" against the target's mailbox until the trio thread delivers it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from .errors import ActorDeadError

if TYPE_CHECKING:
    from .ref import ActorRef

__all__: list[str] = []

logger = logging.getLogger("tether.actors")


class _Bridge:
    """FIFO of work that foreign threads hand to one system's trio thread."""

    __slots__ = ("_closed", "_items", "_lock", "_name", "_scheduled", "_token")

    def __init__(self, token: trio.lowlevel.TrioToken, name: str) -> None:
        self._token = token
        self._name = name
        self._lock = threading.Lock()
        # (ref, item) to deliver to ref's mailbox, or (None, (fn, args)) to call.
        self._items: list[tuple[Any, Any]] = []
        self._scheduled = False
        self._closed = False

    def _submit(self, entry: tuple[Any, Any]) -> None:
        # Caller holds the lock and has checked _closed.
        self._items.append(entry)
        if self._scheduled:
            return
        self._scheduled = True
        try:
            self._token.run_sync_soon(self._drain)
        except trio.RunFinishedError:
            # The trio run ended without closing the system (it cannot happen through
            # open_actor_system, which closes the bridge first); nothing would ever
            # drain the queue, so refuse new work from now on.
            self._closed = True
            self._scheduled = False

    def tell(self, ref: ActorRef[Any], item: Any) -> None:
        """Foreign thread: queue ``item`` for ``ref``'s mailbox.

        Raises:
            ActorDeadError: the system has closed.
            MailboxFull: the mailbox plus the messages in flight to it reach the bound.
        """
        with self._lock:
            if self._closed:
                raise ActorDeadError(f"actor system {self._name!r} is closed; {ref} is gone")
            if ref._depth + ref._inflight >= ref._size:
                raise ref._full_error()
            ref._inflight += 1
            self._submit((ref, item))

    def call(self, fn: Callable[..., object], *args: Any) -> bool:
        """Any thread: run ``fn(*args)`` on the trio thread soon; False if closed.

        ``fn`` must not raise (an exception is logged and dropped).
        """
        with self._lock:
            if self._closed:
                return False
            self._submit((None, (fn, args)))
        return True

    def _drain(self) -> None:
        """Trio thread (run_sync_soon callback): deliver everything queued so far.

        Never raises: an exception escaping a run_sync_soon callback is a
        TrioInternalError that kills the whole run.
        """
        with self._lock:
            items = self._items
            self._items = []
            self._scheduled = False
        self._deliver(items)

    def _deliver(self, items: list[tuple[Any, Any]]) -> None:
        delivered: list[ActorRef[Any]] = []
        for ref, item in items:
            try:
                if ref is None:
                    fn, args = item
                    fn(*args)
                else:
                    # Deliver first, un-count the in-flight message after: a reader on
                    # another thread may briefly count it twice, never zero times.
                    delivered.append(ref)
                    ref._deliver_foreign(item)
            except Exception:
                logger.exception("delivering cross-thread work to system %r failed", self._name)
        if delivered:
            with self._lock:
                for ref in delivered:
                    ref._inflight -= 1

    def close(self) -> None:
        """Trio thread, at system close: deliver what is queued, refuse anything later."""
        with self._lock:
            self._closed = True
            items = self._items
            self._items = []
        self._deliver(items)
