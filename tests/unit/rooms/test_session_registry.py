"""SessionRegistry: claims, dormancy, expiry and the sweep's view of live sessions."""

from __future__ import annotations

import trio
import trio.testing

from tether.actors.sessions import SessionRegistry
from tether.storage.records import SessionRecord


async def test_claim_is_for_the_same_user_only(autojump_clock: trio.testing.MockClock) -> None:
    registry = SessionRegistry(ttl=60)
    session = registry.new("alice", "phone", connection="conn-1")
    assert registry.claim(session.id, "mallory", "conn-2") == (None, None)
    claimed, previous = registry.claim(session.id, "alice", "conn-2")
    assert (claimed, previous) == (session, "conn-1")
    assert session.connection == "conn-2"


async def test_dormant_sessions_expire_after_the_ttl(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = SessionRegistry(ttl=60)
    session = registry.new("alice", "phone", connection="conn-1")
    registry.release(session, "someone else")  # not the holder: ignored
    assert session.connection == "conn-1"
    registry.release(session, "conn-1")
    await trio.sleep(59)
    assert registry.claim(session.id, "alice", "conn-2")[0] is session
    registry.release(session, "conn-2")
    await trio.sleep(61)
    assert registry.claim(session.id, "alice", "conn-3") == (None, None)
    assert len(registry) == 0


async def test_dormant_sessions_are_bounded(autojump_clock: trio.testing.MockClock) -> None:
    registry = SessionRegistry(ttl=3600, max_dormant=2)
    sessions = [registry.new("u", "d", connection=i) for i in range(3)]
    for i, session in enumerate(sessions):
        registry.release(session, i)
    assert registry.claim(sessions[0].id, "u", "x") == (None, None)  # the oldest went
    assert registry.claim(sessions[2].id, "u", "x")[0] is sessions[2]


def test_sweep_sees_live_sessions_with_old_stored_copies() -> None:
    registry = SessionRegistry(ttl=3600)
    fresh = registry.new("a", "d", connection="c1")
    old = registry.new("b", "d", connection="c2")
    never = registry.new("c", "d", connection="c3")
    fresh.record(now_ms=10_000)
    old.record(now_ms=1_000)
    assert fresh.stored_at_ms == 10_000
    assert set(registry.live_stored_before(5_000)) == {old, never}


def test_adopted_sessions_keep_their_subscriptions() -> None:
    registry = SessionRegistry(ttl=3600)
    record = SessionRecord(
        id="s1", user_id="alice", device_id="phone", watching=("bob",), updated_at_ms=5
    )
    session = registry.adopt(record, "conn")
    assert (session.explicit, session.device, session.connection) == ({"bob"}, "phone", "conn")
