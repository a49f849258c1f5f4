"""The per-system registry of live actors (P10: never pykka's process-global one).

pykka's ``ActorRegistry`` is one global list under a lock: removal and lookup by URN are
O(n), so stopping 100k actors took 165 s (REPORT.md §1 item 8). This registry keeps a dict
by URN (insertion order is start order, used for shutdown) and a dict per kind, so
register, unregister and ``get`` are O(1) and ``by_kind`` is O(k).

It is only touched on the system's trio thread (registration from other threads goes
through the bridge), so it needs no lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from .reasons import StopReason

if TYPE_CHECKING:
    from .ref import ActorRef

__all__ = ["Registry", "RegistryObserver"]

logger = logging.getLogger("tether.actors")


class RegistryObserver(Protocol):
    """Receives the start and stop of every actor of a system (the console uses this).

    Both methods run on the trio thread, synchronously, inside the runtime: keep them
    short and never block. An observer that raises is logged and unsubscribed.
    """

    def actor_started(self, ref: ActorRef[Any]) -> None:
        """``ref`` was registered; its ``on_start`` may not have run yet."""

    def actor_stopped(self, ref: ActorRef[Any], reason: StopReason) -> None:
        """``ref`` has fully stopped (``on_stop`` ran, children stopped) for ``reason``."""


class Registry:
    """Live actors of one system, by URN and by kind. Use ``system.registry``.

    Iteration yields a snapshot (a list), so actors may start and stop meanwhile.
    """

    __slots__ = ("_by_kind", "_by_urn", "_observers")

    def __init__(self) -> None:
        self._by_urn: dict[str, ActorRef[Any]] = {}
        self._by_kind: dict[str, dict[str, ActorRef[Any]]] = {}
        self._observers: list[RegistryObserver] = []

    def __len__(self) -> int:
        return len(self._by_urn)

    def __iter__(self) -> Iterator[ActorRef[Any]]:
        return iter(list(self._by_urn.values()))

    def __contains__(self, ref: object) -> bool:
        urn = getattr(ref, "actor_urn", None)
        return urn is not None and self._by_urn.get(urn) is ref

    def get(self, urn: str) -> ActorRef[Any] | None:
        """Return the live actor with this URN, or None."""
        return self._by_urn.get(urn)

    def by_kind(self, kind: str) -> list[ActorRef[Any]]:
        """Return the live actors of this kind, in start order."""
        refs = self._by_kind.get(kind)
        return list(refs.values()) if refs else []

    def kinds(self) -> dict[str, int]:
        """Return the number of live actors per kind."""
        return {kind: len(refs) for kind, refs in self._by_kind.items()}

    def children_of(self, ref: ActorRef[Any]) -> list[ActorRef[Any]]:
        """Return the live children of ``ref`` (started with ``start_child``)."""
        children = ref._children
        return list(children.values()) if children else []

    def subscribe(self, observer: RegistryObserver) -> Callable[[], None]:
        """Call ``observer`` for every actor started or stopped from now on.

        Returns:
            A function that unsubscribes the observer (idempotent).
        """
        self._observers.append(observer)

        def unsubscribe() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return unsubscribe

    # ------------------------------------------------------------- runtime side

    def _add(self, ref: ActorRef[Any]) -> None:
        urn = ref.actor_urn
        self._by_urn[urn] = ref
        kind = self._by_kind.get(ref.kind)
        if kind is None:
            self._by_kind[ref.kind] = {urn: ref}
        else:
            kind[urn] = ref
        if self._observers:
            self._notify("actor_started", ref)

    def _remove(self, ref: ActorRef[Any], reason: StopReason) -> None:
        urn = ref.actor_urn
        if self._by_urn.pop(urn, None) is None:
            return
        kind = self._by_kind.get(ref.kind)
        if kind is not None:
            kind.pop(urn, None)
            if not kind:
                del self._by_kind[ref.kind]
        if self._observers:
            self._notify("actor_stopped", ref, reason)

    def _notify(self, event: str, *args: Any) -> None:
        for observer in list(self._observers):
            try:
                getattr(observer, event)(*args)
            except Exception:
                logger.exception("registry observer %r failed on %s; unsubscribed", observer, event)
                if observer in self._observers:
                    self._observers.remove(observer)
