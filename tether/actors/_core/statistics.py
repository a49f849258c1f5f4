"""Frozen snapshots returned by ``ActorRef.statistics()`` and ``ActorSystem.statistics()`` (P13)."""

from __future__ import annotations

import dataclasses

from .reasons import StopReason

__all__ = ["ActorStatistics", "SystemStatistics"]


@dataclasses.dataclass(frozen=True, slots=True)
class ActorStatistics:
    """A point-in-time snapshot of one actor.

    Attributes:
        urn: the actor's URN (``ActorRef.actor_urn``), unique within the process.
        kind: the actor class's ``kind`` (the class name unless set); the console groups by it.
        alive: False once the actor has begun to stop (``ActorRef.is_alive()``).
        mailbox_depth: messages waiting in the mailbox, including the control messages the
            runtime queues (stop requests, child-stopped notifications). For a trio actor
            the message being handled right now may still be counted.
        mailbox_peak: the highest ``mailbox_depth`` seen since the actor started.
        mailbox_size: the bound: ``tell`` raises ``MailboxFull`` at this depth.
        handled: messages taken from the mailbox and handled (including control messages).
        failures: exceptions raised by the actor's handlers and hooks: those returned to an
            asker, the one that stopped the actor (tell handler, ``on_start``), and those
            raised by ``on_stop``/``on_failure``/observers of the actor's stop.
        last_failure: ``repr()`` of the most recent of those exceptions, or None.
        dropped: messages the runtime had to drop because the mailbox was full when they
            arrived: timer messages, and the rare cross-thread tell that raced a full mailbox.
        started_at: ``trio.current_time()`` when the actor was registered in its system.
        age_s: seconds on the trio clock from ``started_at`` to now, or to the stop if the
            actor has stopped.
        children: live children started with ``start_child()``.
        stop_reason: why the actor stopped (or is stopping), None while it is alive.
        parent_urn: URN of the parent actor, None for a top-level actor.
    """

    urn: str
    kind: str
    alive: bool
    mailbox_depth: int
    mailbox_peak: int
    mailbox_size: int
    handled: int
    failures: int
    last_failure: str | None
    dropped: int
    started_at: float
    age_s: float
    children: int
    stop_reason: StopReason | None
    parent_urn: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class SystemStatistics:
    """A point-in-time snapshot of one actor system.

    Attributes:
        name: the system's name (``open_actor_system(name)``).
        actors: actors registered now (started and not yet fully stopped).
        dispatcher_queue: actors waiting for the dispatcher (they have mail or must start).
        handled_total: messages handled by every actor of the system since it opened.
        timers_pending: timers scheduled and neither fired nor cancelled.
        started_total: actors started since the system opened.
        failures_total: actor failures (actors that stopped with ``StopReason.FAILURE``).
        dropped_total: messages dropped on a full mailbox (see ``ActorStatistics.dropped``).
    """

    name: str
    actors: int
    dispatcher_queue: int
    handled_total: int
    timers_pending: int
    started_total: int
    failures_total: int
    dropped_total: int
