"""tether's actor runtime: pykka's vocabulary on trio (see ``docs/actors.md``).

This module only re-exports ``tether.actors._core``; every other package imports the
actor API from here, never from ``_core``.
"""

from ._core.actor import Actor
from ._core.context import current_system
from ._core.errors import ActorDeadError, ActorError, AskTimeout, MailboxFull, WouldDeadlock
from ._core.future import Future, wait
from ._core.introspect import TraceSnapshot, WaitingOn, start_trace, trace_snapshot, waiting_on
from ._core.reasons import StopReason
from ._core.ref import ActorRef
from ._core.registry import Registry, RegistryObserver
from ._core.statistics import ActorStatistics, SystemStatistics
from ._core.system import ActorSystem, open_actor_system
from ._core.thread_actor import ThreadActor
from ._core.timers import TimerHandle

__all__ = [
    "Actor",
    "ActorDeadError",
    "ActorError",
    "ActorRef",
    "ActorStatistics",
    "ActorSystem",
    "AskTimeout",
    "Future",
    "MailboxFull",
    "Registry",
    "RegistryObserver",
    "StopReason",
    "SystemStatistics",
    "ThreadActor",
    "TimerHandle",
    "TraceSnapshot",
    "WaitingOn",
    "WouldDeadlock",
    "current_system",
    "open_actor_system",
    "start_trace",
    "trace_snapshot",
    "wait",
    "waiting_on",
]
