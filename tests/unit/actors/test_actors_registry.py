"""The per-system registry, its observers, and several systems in one process."""

from __future__ import annotations

from typing import Any

import pykka
import pytest
import trio

from tether.actors import (
    Actor,
    ActorRef,
    Registry,
    StopReason,
    current_system,
    open_actor_system,
)


class User(Actor):
    kind = "user"


class Room(Actor):
    kind = "room"


class Observer:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, StopReason | None]] = []

    def actor_started(self, ref: ActorRef[Any]) -> None:
        self.events.append(("started", ref.actor_urn, None))

    def actor_stopped(self, ref: ActorRef[Any], reason: StopReason) -> None:
        self.events.append(("stopped", ref.actor_urn, reason))


async def test_lookup_by_urn_and_kind() -> None:
    async with open_actor_system() as system:
        registry = system.registry
        assert isinstance(registry, Registry)
        users = [User.start() for _ in range(5)]
        rooms = [Room.start() for _ in range(3)]
        assert len(registry) == 8
        assert registry.get(users[2].actor_urn) is users[2]
        assert registry.get("urn:tether:nope:1") is None
        assert registry.by_kind("user") == users
        assert registry.by_kind("room") == rooms
        assert registry.by_kind("nobody") == []
        assert registry.kinds() == {"user": 5, "room": 3}
        assert list(registry) == [*users, *rooms]
        assert users[0] in registry
        await users[1].stop()
        assert registry.get(users[1].actor_urn) is None
        assert users[1] not in registry
        assert registry.kinds() == {"user": 4, "room": 3}
        for room in rooms:
            await room.stop()
        assert registry.kinds() == {"user": 4}
        # iteration is a snapshot: stopping while iterating is fine
        for ref in registry:
            await ref.stop()
        assert len(registry) == 0
        assert pykka.ActorRegistry.get_all() == [], "pykka's global registry stays empty"


async def test_registry_scales_to_many_actors() -> None:
    # Not a timing assertion: with pykka's O(n) list this would be ~10^9 steps.
    async with open_actor_system() as system:
        refs = [User.start() for _ in range(20_000)]
        for ref in refs[::-1]:
            assert system.registry.get(ref.actor_urn) is ref
        for ref in refs:
            await ref.stop()
        assert len(system.registry) == 0


async def test_observers_see_starts_and_stops(caplog: pytest.LogCaptureFixture) -> None:
    good = Observer()

    class Broken:
        def __init__(self) -> None:
            self.calls = 0

        def actor_started(self, ref: ActorRef[Any]) -> None:
            self.calls += 1
            raise RuntimeError("observer bug")

        def actor_stopped(self, ref: ActorRef[Any], reason: StopReason) -> None:
            self.calls += 1

    broken = Broken()
    async with open_actor_system() as system:
        unsubscribe = system.registry.subscribe(good)
        system.registry.subscribe(broken)
        first = User.start()
        second = Room.start()
        await first.stop(StopReason.CLIENT_LEFT)
        unsubscribe()
        unsubscribe()  # idempotent
        await second.stop()
    assert good.events == [
        ("started", first.actor_urn, None),
        ("started", second.actor_urn, None),
        ("stopped", first.actor_urn, StopReason.CLIENT_LEFT),
    ]
    assert broken.calls == 1, "an observer that raises is removed"
    assert any(
        "observer" in r.getMessage() and "unsubscribed" in r.getMessage() for r in caplog.records
    )


async def test_two_systems_in_one_process_are_independent() -> None:
    results: dict[str, Any] = {}

    async def run_server(name: str, ready: trio.Event, done: trio.Event) -> None:
        async with open_actor_system(name) as system:
            assert current_system() is system
            refs = [User.start() for _ in range(3)]
            ready.set()
            await done.wait()
            results[name] = (system, refs, len(system.registry))

    async with trio.open_nursery() as nursery:
        ready_a, ready_b, done = trio.Event(), trio.Event(), trio.Event()
        nursery.start_soon(run_server, "a", ready_a, done)
        nursery.start_soon(run_server, "b", ready_b, done)
        await ready_a.wait()
        await ready_b.wait()
        with pytest.raises(RuntimeError, match=r"^Expected one running actor system, got 2"):
            current_system()
        done.set()
    system_a, refs_a, count_a = results["a"]
    system_b, refs_b, count_b = results["b"]
    assert count_a == count_b == 3
    assert system_a is not system_b
    assert all(ref.system is system_a for ref in refs_a)
    assert not set(refs_a) & set(refs_b)
    assert system_a.name == "a"
    assert repr(system_a).startswith("<ActorSystem 'a' closed")
