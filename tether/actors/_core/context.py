"""Which actor system the calling code belongs to.

pykka's ``Actor.start()`` takes no system argument, so the system has to come from the
context (REPORT.md §1 item 6): a context variable set by ``open_actor_system`` (inherited by
every task started inside the system, and by ``trio.to_thread`` workers), else the only
system running in the process.
"""

from __future__ import annotations

import contextvars
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .system import ActorSystem

__all__ = ["current_system"]

_current: contextvars.ContextVar[ActorSystem] = contextvars.ContextVar("tether_actor_system")
_running: list[ActorSystem] = []
_running_lock = threading.Lock()


def _add_running(system: ActorSystem) -> None:
    with _running_lock:
        _running.append(system)


def _remove_running(system: ActorSystem) -> None:
    with _running_lock:
        if system in _running:
            _running.remove(system)


def current_system() -> ActorSystem:
    """Return the actor system of the calling code.

    In a trio task started inside ``open_actor_system()`` (or a thread started from one
    with ``trio.to_thread``, or a ``ThreadActor``'s thread) that is its system. Elsewhere,
    for instance in a thread the application started itself, it is the only system
    running in the process.

    Raises:
        RuntimeError: the caller is not inside a system and zero or several are running.
    """
    system = _current.get(None)
    if system is not None and not system._closed:
        return system
    with _running_lock:
        running = list(_running)
    if len(running) == 1:
        return running[0]
    if not running:
        raise RuntimeError(
            "Expected a running actor system, got none; start actors inside "
            "`async with open_actor_system():`"
        )
    names = ", ".join(repr(s.name) for s in running)
    raise RuntimeError(
        f"Expected one running actor system, got {len(running)} ({names}); "
        "use system.spawn() or call from a task inside one of them"
    )
