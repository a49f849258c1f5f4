"""The storage contract, written once, run against every Store implementation (P15).

Each ``check_*`` coroutine takes a *factory*: a zero-argument callable that
opens the store under test as an async context manager. Calling it again
must reopen the *same* data (for SQL stores, the same database: that is how
``check_dedupe_survives_restart`` simulates a server restart). The checks
are plain functions so that a future public ``tether.testing`` contract
module can take them over unchanged.

Backends: MemoryStore; SqlStore on a SQLite file in ``tmp_path``; SqlStore on
the PostgreSQL server (``postgresql`` marker), each test in a schema of its
own that is dropped afterwards, so that tests can run next to other users of
the same database. Checks that only make sense for SQL stores (group commit,
flush at close) are in ``SQL_CHECKS``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tether.storage import (
    AppendResult,
    Conflict,
    DeviceReceipt,
    LimitExceeded,
    MemberReceipts,
    MemoryStore,
    NotFound,
    SessionRecord,
    SqlStore,
    StorageUnavailable,
    Store,
    default_url,
    open_store,
)

StoreFactory = Callable[[], AbstractAsyncContextManager[Store]]
SqlStoreFactory = Callable[[], AbstractAsyncContextManager[SqlStore]]

T0 = 1_700_000_000_000  # an arbitrary fixed "now" in Unix ms


async def _users(store: Store, *user_ids: str) -> None:
    for user_id in user_ids:
        await store.upsert_user(user_id, user_id.title(), now_ms=T0)


async def check_users(factory: StoreFactory) -> None:
    async with factory() as store:
        created = await store.upsert_user("alice", "Alice", now_ms=T0)
        assert (created.id, created.name, created.created_at_ms, created.last_seen_ms) == (
            "alice",
            "Alice",
            T0,
            None,
        )
        renamed = await store.upsert_user("alice", "Alice L.", now_ms=T0 + 99)
        assert renamed.name == "Alice L."
        assert renamed.created_at_ms == T0  # creation time is kept
        assert await store.get_user("alice") == renamed
        with pytest.raises(NotFound):
            await store.get_user("nobody")

        await store.touch_last_seen("alice", T0 + 10)
        await store.touch_last_seen("alice", T0 + 5)  # older: ignored
        assert (await store.get_user("alice")).last_seen_ms == T0 + 10
        with pytest.raises(NotFound):
            await store.touch_last_seen("nobody", T0)

        await store.upsert_user("bob", "Bob", now_ms=T0)
        seen = await store.get_last_seen(["alice", "bob", "nobody", "alice"])
        assert seen == {"alice": T0 + 10, "bob": None, "nobody": None}
        assert await store.get_last_seen([]) == {}


async def check_online_users(factory: StoreFactory) -> None:
    async with factory() as store:
        await _users(store, "alice", "bob", "carol", "dave")
        assert await store.online_users() == {}
        await store.set_online("alice", 2)
        await store.set_online("bob", 1)
        await store.set_online("carol", 0)  # offline stays absent
        assert await store.online_users() == {"alice": 2, "bob": 1}
        await store.set_online("alice", 3)  # replaced, not added
        await store.set_online("alice", 3)  # unchanged: still fine
        await store.set_online("bob", 0)  # cleared
        assert await store.online_users() == {"alice": 3}
        # An unknown user: no error, and nothing appears.
        await store.set_online("nobody", 5)
        assert await store.online_users() == {"alice": 3}
        with pytest.raises(NotFound):
            await store.get_user("nobody")
        # Neither a later sign-in nor last-seen touches the count.
        await store.upsert_user("alice", "Alice again", now_ms=T0 + 1)
        await store.touch_last_seen("alice", T0 + 2)
        await store.set_online("dave", 2**31 - 1)  # the largest count
        assert await store.online_users() == {"alice": 3, "dave": 2**31 - 1}
    async with factory() as store:  # a restart, for persistent stores
        assert await store.online_users() == {"alice": 3, "dave": 2**31 - 1}
        await store.set_online("dave", 0)
        await store.upsert_user("erin", "Erin", now_ms=T0)  # new users start offline
    async with factory() as store:
        assert await store.online_users() == {"alice": 3}


async def check_online_validation(factory: StoreFactory) -> None:
    async with factory() as store:
        await _users(store, "alice")
        await store.set_online("alice", 1)
        bad: list[tuple[object, str]] = [
            (-1, r"^Expected devices in 0\.\.2147483647, got -1$"),
            (2**31, r"^Expected devices in 0\.\.2147483647, got 2147483648$"),
            (True, r"^Expected devices to be an int, got bool$"),
            (1.0, r"^Expected devices to be an int, got float$"),
            ("2", r"^Expected devices to be an int, got str$"),
        ]
        for devices, message in bad:
            with pytest.raises(ValueError, match=message):
                await store.set_online("alice", devices)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"^Expected a non-empty user_id$"):
            await store.set_online("", 1)
        with pytest.raises(
            ValueError, match=r"^Expected user_id of at most 128 characters, got 129$"
        ):
            await store.set_online("u" * 129, 1)
        # A refused call changed nothing.
        assert await store.online_users() == {"alice": 1}


async def check_rooms_and_membership(factory: StoreFactory) -> None:
    async with factory() as store:
        await _users(store, "alice", "bob", "carol")
        room = await store.create_room("public", "General", "alice", ["bob", "alice"], now_ms=T0)
        assert (room.kind, room.name, room.owner_id, room.last_seq, room.direct_key) == (
            "public",
            "General",
            "alice",
            0,
            None,
        )
        assert await store.get_room(room.id) == room
        members = await store.list_members(room.id)
        assert [(m.user_id, m.role, m.joined_at_ms, m.read_seq) for m in members] == [
            ("alice", "owner", T0, 0),
            ("bob", "member", T0, 0),
        ]

        assert await store.add_member(room.id, "carol", now_ms=T0 + 1) is True
        assert await store.add_member(room.id, "carol", now_ms=T0 + 2) is False
        assert [m.user_id for m in await store.list_members(room.id)] == ["alice", "bob", "carol"]
        assert (await store.list_members(room.id))[2].joined_at_ms == T0 + 1

        assert await store.remove_member(room.id, "bob") is True
        assert await store.remove_member(room.id, "bob") is False
        assert [m.user_id for m in await store.list_members(room.id)] == ["alice", "carol"]
        with pytest.raises(Conflict):
            await store.remove_member(room.id, "alice")  # the owner

        with pytest.raises(NotFound):
            await store.add_member(room.id, "nobody")
        with pytest.raises(NotFound):
            await store.add_member("no-such-room", "bob")
        with pytest.raises(NotFound):
            await store.remove_member("no-such-room", "bob")
        with pytest.raises(NotFound):
            await store.list_members("no-such-room")
        with pytest.raises(NotFound):
            await store.get_room("no-such-room")

        # An unknown member fails the whole creation: nothing is created.
        with pytest.raises(NotFound):
            await store.create_room("private", "Secret", "alice", ["bob", "nobody"], now_ms=T0)
        with pytest.raises(NotFound):
            await store.create_room("private", "Secret", "nobody", [], now_ms=T0)
        assert [s.room.id for s in await store.rooms_for_user("alice")] == [room.id]
        with pytest.raises(
            ValueError, match=r"^Expected kind 'public' or 'private', got 'direct'$"
        ):
            await store.create_room("direct", "x", "alice")

        second = await store.create_room("private", "Later", "bob", now_ms=T0 + 5)
        summaries = await store.rooms_for_user("bob")
        assert [(s.room.id, s.role) for s in summaries] == [(second.id, "owner")]
        await store.add_member(second.id, "alice")
        assert [s.room.id for s in await store.rooms_for_user("alice")] == [room.id, second.id]
        assert await store.rooms_for_user("nobody") == []


async def check_room_mates(factory: StoreFactory) -> None:
    async with factory() as store:
        await _users(store, "alice", "bob", "carol", "dave", "erin")
        assert await store.room_mates("alice") == set()
        await store.create_room("private", "Pair", "alice", ["bob"], now_ms=T0)
        big = await store.create_room("public", "Big", "carol", ["alice", "dave"], now_ms=T0)
        await store.get_or_create_direct("erin", "alice", now_ms=T0)
        assert await store.room_mates("alice") == {"bob", "carol", "dave", "erin"}
        assert await store.room_mates("alice", max_room_members=2) == {"bob", "erin"}
        assert await store.room_mates("dave") == {"alice", "carol"}
        await store.remove_member(big.id, "dave")
        assert await store.room_mates("dave") == set()
        assert await store.room_mates("nobody") == set()


async def check_direct_rooms(factory: StoreFactory) -> None:
    async with factory() as store:
        await _users(store, "alice", "bob", "carol")
        ab = await store.get_or_create_direct("alice", "bob", now_ms=T0)
        assert (ab.kind, ab.name, ab.owner_id) == ("direct", "", "alice")
        assert ab.direct_key is not None
        assert await store.get_or_create_direct("bob", "alice", now_ms=T0 + 9) == ab
        assert [(m.user_id, m.role) for m in await store.list_members(ab.id)] == [
            ("alice", "owner"),
            ("bob", "member"),
        ]
        ac = await store.get_or_create_direct("alice", "carol")
        assert ac.id != ab.id

        with pytest.raises(Conflict):
            await store.add_member(ab.id, "carol")
        with pytest.raises(Conflict):
            await store.remove_member(ab.id, "bob")
        with pytest.raises(NotFound):
            await store.get_or_create_direct("alice", "nobody")

        alone = await store.get_or_create_direct("carol", "carol")
        assert [m.user_id for m in await store.list_members(alone.id)] == ["carol"]

        # Ids that would collide under a naive "a:b" join stay distinct.
        await _users(store, "x:y", "z", "x", "y:z")
        assert (await store.get_or_create_direct("x:y", "z")).id != (
            await store.get_or_create_direct("x", "y:z")
        ).id

        # Many concurrent first calls for one pair: one room.
        await _users(store, "dave", "erin")
        results = []

        async def open_direct(a: str, b: str) -> None:
            results.append(await store.get_or_create_direct(a, b))

        async with trio.open_nursery() as nursery:
            for i in range(20):
                pair = ("dave", "erin") if i % 2 else ("erin", "dave")
                nursery.start_soon(open_direct, *pair)
        assert len({r.id for r in results}) == 1


async def check_append_and_dedupe(factory: StoreFactory) -> None:
    async with factory() as store:
        await _users(store, "alice", "bob")
        room = await store.create_room("public", "r", "alice", ["bob"], now_ms=T0)
        body = {"text": "hi", "n": [1, 2.5, None, True], "raw": b"\x00\xff", 7: "int key"}
        first = await store.append_message(room.id, "alice", "c1", body, T0 + 1)
        assert first == AppendResult(1, T0 + 1, duplicate=False)
        assert await store.append_message(
            room.id, "bob", "c1", "same client id, other sender", T0 + 2
        ) == (AppendResult(2, T0 + 2, duplicate=False))
        # A retry: the original seq and time, nothing written.
        retry = await store.append_message(room.id, "alice", "c1", "different body", T0 + 50)
        assert retry == AppendResult(1, T0 + 1, duplicate=True)
        assert (await store.get_room(room.id)).last_seq == 2
        (stored,) = await store.history(room.id, before_seq=2, limit=10)
        assert stored.body == body
        assert (stored.sender_id, stored.client_id, stored.created_at_ms) == ("alice", "c1", T0 + 1)
        assert (stored.edited_at_ms, stored.deleted) == (None, False)

        with pytest.raises(NotFound, match=r"^No such room: 'nope'$"):
            await store.append_message("nope", "alice", "c2", "x", T0)
        with pytest.raises(NotFound, match=r"^No such user: 'nobody'$"):
            await store.append_message(room.id, "nobody", "c2", "x", T0)
        with pytest.raises(ValueError, match=r"^Expected a msgpack-serialisable body"):
            await store.append_message(room.id, "alice", "c3", {"x": object()}, T0)
        # Failed appends consume no seq.
        assert (await store.append_message(room.id, "alice", "c4", "x", T0)).seq == 3


async def check_concurrent_appends(factory: StoreFactory) -> None:
    rooms_n, producers_n, per_producer = 8, 12, 15
    async with factory() as store:
        users = [f"u{i}" for i in range(producers_n)]
        await _users(store, *users)
        rooms = [
            (await store.create_room("public", f"r{i}", users[0], users, now_ms=T0)).id
            for i in range(rooms_n)
        ]
        acks: dict[tuple[str, str, str], int] = {}

        async def producer(index: int) -> None:
            for n in range(per_producer):
                room_id = rooms[(index + n) % rooms_n]
                client_id = f"p{index}-{n}"
                result = await store.append_message(
                    room_id, users[index], client_id, {"n": n}, T0 + n
                )
                assert not result.duplicate
                acks[(room_id, users[index], client_id)] = result.seq
                # Retrying concurrently with everyone else returns the original.
                again = await store.append_message(room_id, users[index], client_id, {}, T0)
                assert again == AppendResult(result.seq, T0 + n, duplicate=True)

        async with trio.open_nursery() as nursery:
            for index in range(producers_n):
                nursery.start_soon(producer, index)

        total = 0
        for room_id in rooms:
            room = await store.get_room(room_id)
            history = await store.history(room_id, after_seq=0, limit=500)
            # Dense, ordered seqs: 1..last_seq, no gaps, no repeats.
            assert [m.seq for m in history] == list(range(1, room.last_seq + 1))
            for message in history:
                assert acks[(room_id, message.sender_id, message.client_id)] == message.seq
            # Each producer's messages appear in the order it sent them.
            for user in users:
                ns = [m.body["n"] for m in history if m.sender_id == user]  # type: ignore[index]
                assert ns == sorted(ns)
            total += room.last_seq
        assert total == len(acks) == producers_n * per_producer


async def check_concurrent_duplicate_appends(factory: StoreFactory) -> None:
    async with factory() as store:
        await _users(store, "alice")
        room = await store.create_room("public", "r", "alice", now_ms=T0)
        results: list[AppendResult] = []

        async def send(n: int) -> None:
            results.append(await store.append_message(room.id, "alice", "same", n, T0 + n))

        async with trio.open_nursery() as nursery:
            for n in range(30):
                nursery.start_soon(send, n)
        assert sum(not r.duplicate for r in results) == 1
        assert {(r.seq, r.created_at_ms) for r in results} == {
            next((r.seq, r.created_at_ms) for r in results if not r.duplicate)
        }
        assert (await store.get_room(room.id)).last_seq == 1


async def check_dedupe_survives_restart(factory: StoreFactory) -> None:
    async with factory() as store:
        await _users(store, "alice")
        room = await store.create_room("public", "r", "alice", now_ms=T0)
        for n in range(3):
            await store.append_message(room.id, "alice", f"c{n}", n, T0 + n)
    async with factory() as store:  # a restart, for persistent stores
        assert await store.append_message(room.id, "alice", "c1", "retry", T0 + 99) == (
            AppendResult(2, T0 + 1, duplicate=True)
        )
        assert await store.append_message(room.id, "alice", "c3", 3, T0 + 3) == (
            AppendResult(4, T0 + 3, duplicate=False)
        )


async def check_history_paging(factory: StoreFactory) -> None:
    async with factory() as store:
        await _users(store, "alice")
        room = await store.create_room("public", "r", "alice", now_ms=T0)
        assert await store.history(room.id, limit=10) == []
        for n in range(1, 26):
            await store.append_message(room.id, "alice", f"c{n}", n, T0 + n)

        async def seqs(**kwargs: int) -> list[int]:
            return [m.seq for m in await store.history(room.id, **kwargs)]

        assert await seqs(limit=10) == list(range(16, 26))
        assert await seqs(before_seq=16, limit=10) == list(range(6, 16))
        assert await seqs(before_seq=6, limit=10) == list(range(1, 6))
        assert await seqs(before_seq=1, limit=10) == []
        assert await seqs(before_seq=1000, limit=3) == [23, 24, 25]
        assert await seqs(after_seq=0, limit=10) == list(range(1, 11))
        assert await seqs(after_seq=10, limit=10) == list(range(11, 21))
        assert await seqs(after_seq=20, limit=10) == list(range(21, 26))
        assert await seqs(after_seq=25, limit=10) == []
        assert await seqs(after_seq=5, before_seq=12, limit=3) == [6, 7, 8]
        assert await seqs(after_seq=5, before_seq=9, limit=10) == [6, 7, 8]
        assert await seqs(after_seq=5, before_seq=6, limit=10) == []
        assert await seqs(limit=500) == list(range(1, 26))
        assert [m.body for m in await store.history(room.id, after_seq=0, limit=2)] == [1, 2]

        with pytest.raises(ValueError, match=r"^Expected limit in 1\.\.500, got 501$"):
            await store.history(room.id, limit=501)
        with pytest.raises(
            ValueError, match=r"^Expected limit in 1\.\.9223372036854775807, got 0$"
        ):
            await store.history(room.id, limit=0)
        with pytest.raises(ValueError, match=r"^Expected before_seq in 0\.\."):
            await store.history(room.id, before_seq=-1, limit=5)
        with pytest.raises(NotFound):
            await store.history("no-such-room", limit=5)


async def check_edit_and_delete(factory: StoreFactory) -> None:
    async with factory() as store:
        await _users(store, "alice", "bob")
        room = await store.create_room("public", "r", "alice", ["bob"], now_ms=T0)
        await store.append_message(room.id, "alice", "a1", "hello", T0 + 1)
        await store.append_message(room.id, "bob", "b1", "hey", T0 + 2)

        edited = await store.edit_message(room.id, 1, "alice", {"text": "hello!"}, T0 + 10)
        assert (edited.seq, edited.body, edited.edited_at_ms, edited.deleted) == (
            1,
            {"text": "hello!"},
            T0 + 10,
            False,
        )
        assert (edited.created_at_ms, edited.client_id) == (T0 + 1, "a1")
        assert (await store.history(room.id, before_seq=2, limit=1))[0] == edited

        with pytest.raises(Conflict):
            await store.edit_message(room.id, 2, "alice", "not mine", T0 + 11)
        with pytest.raises(Conflict):
            await store.delete_message(room.id, 2, "alice", T0 + 11)
        with pytest.raises(NotFound):
            await store.edit_message(room.id, 3, "alice", "no such seq", T0 + 11)
        with pytest.raises(NotFound):
            await store.delete_message("no-such-room", 1, "alice", T0 + 11)

        tombstone = await store.delete_message(room.id, 1, "alice", T0 + 20)
        assert (tombstone.seq, tombstone.body, tombstone.deleted, tombstone.edited_at_ms) == (
            1,
            None,
            True,
            T0 + 20,
        )
        # Idempotent: a second delete returns the same tombstone.
        assert await store.delete_message(room.id, 1, "alice", T0 + 30) == tombstone
        with pytest.raises(NotFound):
            await store.edit_message(room.id, 1, "alice", "too late", T0 + 31)
        history = await store.history(room.id, limit=10)
        assert [(m.seq, m.deleted, m.body) for m in history] == [(1, True, None), (2, False, "hey")]
        # The dedupe key outlives the deletion.
        assert (await store.append_message(room.id, "alice", "a1", "again", T0)).duplicate


async def check_receipts_and_unread(factory: StoreFactory) -> None:
    async with factory() as store:
        await _users(store, "alice", "bob", "carol")
        room = await store.create_room("public", "r", "alice", ["bob"], now_ms=T0)
        for n in range(1, 6):
            sender = "alice" if n != 3 else "bob"
            await store.append_message(room.id, sender, f"c{n}", n, T0 + n)
        # bob: 4 unread (seq 3 is his own)
        assert await store.unread_count(room.id, "bob") == 4
        assert await store.unread_count(room.id, "alice") == 1

        assert await store.set_read(room.id, "bob", 2) == 2
        assert await store.set_read(room.id, "bob", 1) == 2  # never back
        assert await store.unread_count(room.id, "bob") == 2  # seqs 4, 5
        await store.delete_message(room.id, 5, "alice", T0 + 9)
        assert await store.unread_count(room.id, "bob") == 1  # deleted ones do not count
        assert await store.set_read(room.id, "bob", 99) == 5  # capped at last_seq
        assert await store.unread_count(room.id, "bob") == 0

        assert await store.set_delivered(room.id, "bob", "phone", 3) == 3
        assert await store.set_delivered(room.id, "bob", "phone", 2) == 3
        assert await store.set_delivered(room.id, "bob", "laptop", 99) == 5
        assert await store.set_delivered(room.id, "alice", "web", 0) == 0
        assert await store.receipts(room.id) == [
            MemberReceipts("alice", 0, (DeviceReceipt("web", 0),)),
            MemberReceipts("bob", 5, (DeviceReceipt("laptop", 5), DeviceReceipt("phone", 3))),
        ]

        summaries = await store.rooms_for_user("alice")
        assert [(s.room.id, s.role, s.read_seq, s.unread_count) for s in summaries] == [
            (room.id, "owner", 0, 1)
        ]
        assert summaries[0].room.last_seq == 5

        for call in (
            store.set_read(room.id, "carol", 1),
            store.set_delivered(room.id, "carol", "d", 1),
            store.unread_count(room.id, "carol"),
            store.set_read("no-such-room", "bob", 1),
            store.receipts("no-such-room"),
        ):
            with pytest.raises(NotFound):
                await call

        # Leaving drops the member's markers; rejoining starts afresh.
        await store.remove_member(room.id, "bob")
        assert [r.user_id for r in await store.receipts(room.id)] == ["alice"]
        await store.add_member(room.id, "bob")
        assert await store.receipts(room.id) == [
            MemberReceipts("alice", 0, (DeviceReceipt("web", 0),)),
            MemberReceipts("bob", 0, ()),
        ]
        assert await store.unread_count(room.id, "bob") == 3  # 1, 2, 4 (3 is his, 5 deleted)


async def check_argument_validation(factory: StoreFactory) -> None:
    async with factory() as store:
        await _users(store, "alice")
        room = await store.create_room("public", "r", "alice", now_ms=T0)
        with pytest.raises(
            ValueError, match=r"^Expected user_id of at most 128 characters, got 129$"
        ):
            await store.upsert_user("u" * 129, "x")
        with pytest.raises(ValueError, match=r"^Expected a non-empty user_id$"):
            await store.get_user("")
        with pytest.raises(ValueError, match=r"^Expected name without NUL characters$"):
            await store.upsert_user("alice", "a\x00b")
        with pytest.raises(ValueError, match=r"^Expected client_id to be a str, got int$"):
            await store.append_message(room.id, "alice", 5, "x", T0)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"^Expected seq to be an int, got bool$"):
            await store.set_read(room.id, "alice", True)
        with pytest.raises(ValueError, match=r"^Expected device_id of at most 64 characters"):
            await store.set_delivered(room.id, "alice", "d" * 65, 1)
        with pytest.raises(ValueError, match=r"^Expected members to be a collection of ids"):
            await store.create_room("public", "r", "alice", "bob")
        with pytest.raises(ValueError, match=r"^Expected now_ms in 0\.\."):
            await store.append_message(room.id, "alice", "c", "x", -1)
        # Exactly at the limits is fine.
        await store.upsert_user("u" * 128, "n" * 256)
        await store.append_message(room.id, "alice", "c" * 64, "x", T0)


async def _room_ids(store: Store, user_id: str) -> set[str]:
    return {summary.room.id for summary in await store.rooms_for_user(user_id)}


async def check_room_limit(factory: StoreFactory) -> None:
    async with factory() as store:
        await _users(store, "alice", "bob", "carol", "dave", "erin")
        r1 = await store.create_room("public", "r1", "alice", ["bob"], max_rooms_per_user=2)
        r2 = await store.create_room("public", "r2", "alice", max_rooms_per_user=2)
        assert await _room_ids(store, "alice") == {r1.id, r2.id}

        # The owner at the limit: LimitExceeded names her, nothing is created.
        with pytest.raises(LimitExceeded) as caught:
            await store.create_room("public", "r3", "alice", ["bob"], max_rooms_per_user=2)
        assert (caught.value.user_id, caught.value.limit) == ("alice", 2)
        assert str(caught.value) == "'alice' would be a member of more than 2 rooms"
        assert await _room_ids(store, "alice") == {r1.id, r2.id}
        assert await _room_ids(store, "bob") == {r1.id}
        # A listed member at the limit: the same, and the others are not added.
        with pytest.raises(LimitExceeded) as caught:
            await store.create_room(
                "private", "r3", "carol", ["bob", "alice"], max_rooms_per_user=2
            )
        assert caught.value.user_id == "alice"
        assert await _room_ids(store, "carol") == set()
        assert await _room_ids(store, "bob") == {r1.id}
        # Several at the limit: the owner is named first, then members in order.
        await store.add_member(r2.id, "bob")
        with pytest.raises(LimitExceeded) as caught:
            await store.create_room("public", "r3", "bob", ["alice"], max_rooms_per_user=2)
        assert caught.value.user_id == "bob"
        with pytest.raises(LimitExceeded) as caught:
            await store.create_room("public", "r3", "carol", ["bob", "alice"], max_rooms_per_user=2)
        assert caught.value.user_id == "bob"
        # No limit (the default) and a higher limit let the same call through.
        r3 = await store.create_room("public", "r3", "alice", max_rooms_per_user=3)
        r4 = await store.create_room("public", "r4", "alice")
        assert await _room_ids(store, "alice") == {r1.id, r2.id, r3.id, r4.id}

        # add_member: an existing member stays a no-op, whatever the limit.
        assert await store.add_member(r1.id, "alice", max_rooms_per_user=0) is False
        carols = await store.create_room("public", "c", "carol", max_rooms_per_user=1)
        with pytest.raises(LimitExceeded) as caught:
            await store.add_member(carols.id, "alice", max_rooms_per_user=4)
        assert (caught.value.user_id, caught.value.limit) == ("alice", 4)
        assert [m.user_id for m in await store.list_members(carols.id)] == ["carol"]
        assert "alice" not in await store.room_mates("carol")
        assert await store.add_member(carols.id, "dave", max_rooms_per_user=1) is True
        # Leaving a room makes room under the limit again.
        await store.remove_member(r2.id, "bob")
        assert await store.add_member(r3.id, "bob", max_rooms_per_user=2) is True
        with pytest.raises(LimitExceeded):
            await store.add_member(r4.id, "bob", max_rooms_per_user=2)
        # NotFound and Conflict come before the limit.
        with pytest.raises(NotFound):
            await store.add_member(r1.id, "nobody", max_rooms_per_user=0)
        with pytest.raises(NotFound):
            await store.add_member("no-such-room", "alice", max_rooms_per_user=0)
        with pytest.raises(NotFound):
            await store.create_room("public", "x", "alice", ["nobody"], max_rooms_per_user=0)
        direct = await store.get_or_create_direct("erin", "carol")
        with pytest.raises(Conflict):
            await store.add_member(direct.id, "dave", max_rooms_per_user=0)

        # Direct rooms: a new one counts for both users, a checks first ...
        assert len(await _room_ids(store, "erin")) == 1
        with pytest.raises(LimitExceeded) as caught:
            await store.get_or_create_direct("alice", "erin", max_rooms_per_user=1)
        assert caught.value.user_id == "alice"
        with pytest.raises(LimitExceeded) as caught:
            await store.get_or_create_direct("dave", "erin", max_rooms_per_user=1)
        assert caught.value.user_id == "dave"
        with pytest.raises(LimitExceeded) as caught:
            await store.get_or_create_direct("erin", "dave", max_rooms_per_user=1)
        assert caught.value.user_id == "erin"
        assert await _room_ids(store, "erin") == {direct.id}
        assert len(await _room_ids(store, "dave")) == 1
        with pytest.raises(NotFound):
            await store.get_or_create_direct("alice", "nobody", max_rooms_per_user=0)
        # ... an existing one is returned even past the limit ...
        assert await store.get_or_create_direct("carol", "erin", max_rooms_per_user=0) == direct
        # ... and a room with oneself counts once.
        await _users(store, "frank")
        alone = await store.get_or_create_direct("frank", "frank", max_rooms_per_user=1)
        assert await _room_ids(store, "frank") == {alone.id}
        with pytest.raises(LimitExceeded):
            await store.get_or_create_direct("frank", "erin", max_rooms_per_user=1)

        for call in (
            store.create_room("public", "x", "alice", max_rooms_per_user=-1),
            store.add_member(r1.id, "carol", max_rooms_per_user=-1),
            store.get_or_create_direct("alice", "carol", max_rooms_per_user=-1),
        ):
            with pytest.raises(ValueError, match=r"^Expected max_rooms_per_user in 0\.\."):
                await call
        with pytest.raises(ValueError, match=r"^Expected max_rooms_per_user to be an int"):
            await store.add_member(r1.id, "carol", max_rooms_per_user=True)
        assert await _room_ids(store, "carol") == {carols.id, direct.id}


def _session(
    session_id: str = "s1",
    user_id: str = "alice",
    device_id: str = "phone",
    watching: tuple[str, ...] = ("bob", "carol"),
    updated_at_ms: int = T0,
) -> SessionRecord:
    return SessionRecord(session_id, user_id, device_id, watching, updated_at_ms)


async def check_sessions(factory: StoreFactory) -> None:
    # Ids a JSON (or SQL) encoding must carry through unchanged.
    awkward = ("élodie", "雪", 'quo"te', "back\\slash", "[1]", "null", "a,b", "x" * 128)
    async with factory() as store:
        assert await store.load_session("s1") is None
        # The user need not be stored: sessions are keyed by id alone.
        first = _session()
        await store.save_session(first)
        assert await store.load_session("s1") == first
        # An upsert: same id, every other field replaced.
        replaced = _session(user_id="ghost", device_id="web", watching=(), updated_at_ms=T0 + 5)
        await store.save_session(replaced)
        assert await store.load_session("s1") == replaced
        many = _session("s2", watching=tuple(f"u{n}" for n in range(1000)), updated_at_ms=T0 + 9)
        await store.save_session(many)
        odd = _session("s" * 128, device_id="d" * 64, watching=awkward, updated_at_ms=T0 + 10)
        await store.save_session(odd)
        loaded = await store.load_session("s2")
        assert loaded == many
        assert loaded is not None
        assert loaded.watching[:3] == ("u0", "u1", "u2")  # order is kept
        assert await store.load_session("s" * 128) == odd
    async with factory() as store:  # a restart, for persistent stores
        assert await store.load_session("s1") == replaced
        assert await store.load_session("s" * 128) == odd
        # Strictly before: a session saved at the cut-off stays.
        assert await store.delete_sessions(updated_before_ms=T0 + 9) == 1
        assert await store.load_session("s1") is None
        assert await store.load_session("s2") == many
        assert await store.delete_sessions(updated_before_ms=T0 + 9) == 0
        assert await store.delete_sessions(updated_before_ms=T0 + 11) == 2
        assert await store.load_session("s2") is None
        assert await store.load_session("s" * 128) is None
        # Saving again after a delete inserts afresh.
        await store.save_session(first)
        assert await store.load_session("s1") == first


async def check_session_validation(factory: StoreFactory) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"session_id": ""}, r"^Expected a non-empty session id$"),
        ({"session_id": "s" * 129}, r"^Expected session id of at most 128 characters, got 129$"),
        ({"user_id": ""}, r"^Expected a non-empty user_id$"),
        ({"user_id": "u" * 129}, r"^Expected user_id of at most 128 characters, got 129$"),
        ({"device_id": ""}, r"^Expected a non-empty device_id$"),
        ({"device_id": "d" * 65}, r"^Expected device_id of at most 64 characters, got 65$"),
        ({"watching": ("u",) * 1001}, r"^Expected watching of at most 1000 user ids, got 1001$"),
        ({"watching": ("bob", "")}, r"^Expected a non-empty watching$"),
        ({"watching": ("w" * 129,)}, r"^Expected watching of at most 128 characters, got 129$"),
        ({"watching": ("a\x00b",)}, r"^Expected watching without NUL characters$"),
        ({"watching": ["bob"]}, r"^Expected watching to be a tuple of user ids, got list$"),
        ({"watching": "bob"}, r"^Expected watching to be a tuple of user ids, got str$"),
        ({"updated_at_ms": -1}, r"^Expected updated_at_ms in 0\.\."),
        ({"updated_at_ms": 1.5}, r"^Expected updated_at_ms to be an int, got float$"),
    ]
    for fields, message in cases:
        with pytest.raises(ValueError, match=message):
            _session(**fields)
    async with factory() as store:
        # A record changed behind the frozen dataclass's back is refused too.
        tampered = _session()
        object.__setattr__(tampered, "device_id", "d" * 65)
        with pytest.raises(ValueError, match=r"^Expected device_id of at most 64 characters"):
            await store.save_session(tampered)
        with pytest.raises(ValueError, match=r"^Expected a SessionRecord, got tuple$"):
            await store.save_session(("s1", "alice", "phone", (), T0))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"^Expected a non-empty session id$"):
            await store.load_session("")
        with pytest.raises(ValueError, match=r"^Expected session id of at most 128 characters"):
            await store.load_session("s" * 129)
        with pytest.raises(ValueError, match=r"^Expected updated_before_ms in 0\.\."):
            await store.delete_sessions(updated_before_ms=-1)
        assert await store.load_session("s1") is None  # nothing was saved
        # Exactly at the limits is fine.
        edge = _session("s" * 128, "u" * 128, "d" * 64, ("w" * 128,) * 1000, 2**63 - 1)
        await store.save_session(edge)
        assert await store.load_session("s" * 128) == edge


# ---------------------------------------------------------------------------
# SQL stores only


async def check_group_commit_batches(factory: SqlStoreFactory) -> None:
    async with factory() as store:
        await _users(store, *(f"u{i}" for i in range(40)))
        room = await store.create_room("public", "r", "u0", now_ms=T0)
        before = store.statistics()

        async def producer(i: int) -> None:
            for n in range(10):
                await store.append_message(room.id, f"u{i}", f"c{n}", n, T0)

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(producer, i)
        after = store.statistics()
        assert after.ops_committed - before.ops_committed == 400
        # 40 concurrent writers, one commit at a time: transactions must
        # have carried several appends each.
        assert after.batches - before.batches < 400
        assert after.max_batch_size > 1
        assert after.queue_depth == 0
        assert after.failures == 0
        assert after.commit_latency_ms_last > 0
        assert math.isfinite(after.commit_latency_ms_ewma)


async def check_batch_isolates_failures(factory: SqlStoreFactory) -> None:
    """One op's NotFound/Conflict in a batch must not fail its neighbours."""
    async with factory() as store:
        await _users(store, "alice", "bob")
        room = await store.create_room("public", "r", "alice", now_ms=T0)
        await store.append_message(room.id, "bob", "b1", "x", T0)
        outcomes: dict[str, object] = {}

        async def attempt(name: str, call: Callable[[], Awaitable[object]]) -> None:
            try:
                outcomes[name] = await call()
            except (NotFound, Conflict) as exc:
                outcomes[name] = type(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                attempt, "ok1", lambda: store.append_message(room.id, "alice", "a1", 1, T0)
            )
            nursery.start_soon(
                attempt, "bad-room", lambda: store.append_message("nope", "alice", "a2", 1, T0)
            )
            nursery.start_soon(
                attempt, "bad-user", lambda: store.append_message(room.id, "eve", "a3", 1, T0)
            )
            nursery.start_soon(
                attempt, "dup", lambda: store.append_message(room.id, "bob", "b1", 1, T0)
            )
            nursery.start_soon(
                attempt, "conflict", lambda: store.edit_message(room.id, 1, "alice", "x", T0)
            )
            nursery.start_soon(
                attempt, "ok2", lambda: store.append_message(room.id, "alice", "a4", 1, T0)
            )
            nursery.start_soon(attempt, "read", lambda: store.set_read(room.id, "alice", 9))
        # The seven tasks ran in one scheduling pass and none checkpoints
        # before queueing, so the committer took them as one transaction.
        assert store.statistics().last_batch_size == 7
        assert outcomes["bad-room"] is NotFound
        assert outcomes["bad-user"] is NotFound
        assert outcomes["conflict"] is Conflict
        assert outcomes["dup"] == AppendResult(1, T0, duplicate=True)
        ok1, ok2 = outcomes["ok1"], outcomes["ok2"]
        assert isinstance(ok1, AppendResult)
        assert isinstance(ok2, AppendResult)
        assert {ok1.seq, ok2.seq} == {2, 3}
        # Capped at last_seq as of its place in the batch (trio may run the
        # seven tasks in either order).
        assert outcomes["read"] in {1, 2, 3}
        history = await store.history(room.id, limit=10)
        assert {(m.seq, m.client_id) for m in history} == {
            (1, "b1"),
            (ok1.seq, "a1"),
            (ok2.seq, "a4"),
        }


async def check_batch_isolates_limit_exceeded(factory: SqlStoreFactory) -> None:
    """A LimitExceeded fails its op only; the count sees earlier ops of the batch."""
    async with factory() as store:
        await _users(store, "alice", "bob", "carol")
        rooms = [
            (await store.create_room("public", f"r{n}", "alice", now_ms=T0)).id for n in range(3)
        ]
        await store.add_member(rooms[0], "bob")
        outcomes: dict[str, object] = {}

        async def attempt(name: str, call: Callable[[], Awaitable[object]]) -> None:
            try:
                outcomes[name] = await call()
            except LimitExceeded as exc:
                outcomes[name] = exc.user_id

        async with trio.open_nursery() as nursery:
            # bob is in 1 room; with a limit of 2 only one of the two adds fits.
            nursery.start_soon(
                attempt, "bob1", lambda: store.add_member(rooms[1], "bob", max_rooms_per_user=2)
            )
            nursery.start_soon(
                attempt, "bob2", lambda: store.add_member(rooms[2], "bob", max_rooms_per_user=2)
            )
            nursery.start_soon(
                attempt, "append", lambda: store.append_message(rooms[0], "bob", "b1", 1, T0)
            )
            nursery.start_soon(
                attempt,
                "create",
                lambda: store.create_room("public", "x", "carol", ["alice"], max_rooms_per_user=3),
            )
            nursery.start_soon(
                attempt, "carol", lambda: store.add_member(rooms[0], "carol", max_rooms_per_user=1)
            )
        assert store.statistics().last_batch_size == 5
        assert sorted(map(str, (outcomes["bob1"], outcomes["bob2"]))) == ["True", "bob"]
        assert outcomes["append"] == AppendResult(1, T0, duplicate=False)
        assert outcomes["create"] == "alice"
        assert outcomes["carol"] is True
        assert len(await store.rooms_for_user("bob")) == 2
        assert len(await store.rooms_for_user("alice")) == 3
        assert [s.room.id for s in await store.rooms_for_user("carol")] == [rooms[0]]


async def check_batch_with_set_online(factory: SqlStoreFactory) -> None:
    """set_online ops share a transaction with failing ops and are unaffected."""
    async with factory() as store:
        await _users(store, "alice", "bob")
        outcomes: dict[str, object] = {}

        async def attempt(name: str, call: Callable[[], Awaitable[object]]) -> None:
            try:
                outcomes[name] = await call()
            except NotFound as exc:
                outcomes[name] = type(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(attempt, "alice", lambda: store.set_online("alice", 2))
            nursery.start_soon(attempt, "touch", lambda: store.touch_last_seen("nobody", T0))
            nursery.start_soon(attempt, "ghost", lambda: store.set_online("ghost", 1))
            nursery.start_soon(attempt, "bob", lambda: store.set_online("bob", 1))
            nursery.start_soon(attempt, "room", lambda: store.add_member("no-room", "bob"))
        assert store.statistics().last_batch_size == 5
        assert outcomes == {
            "alice": None,
            "touch": NotFound,
            "ghost": None,
            "bob": None,
            "room": NotFound,
        }
        assert await store.online_users() == {"alice": 2, "bob": 1}


async def check_writes_flushed_on_close(factory: SqlStoreFactory) -> None:
    async with factory() as store:
        await _users(store, "alice")
        room = await store.create_room("public", "r", "alice", now_ms=T0)
    # Writes queued by tasks that are cancelled with the store's owner are
    # still committed by the shutdown flush.
    with trio.CancelScope() as scope:
        async with factory() as store, trio.open_nursery() as nursery:
            for n in range(50):
                nursery.start_soon(store.append_message, room.id, "alice", f"c{n}", n, T0)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
    assert scope.cancelled_caught
    async with factory() as store:
        assert (await store.get_room(room.id)).last_seq == 50
    with pytest.raises(StorageUnavailable, match=r"^store is closed$"):
        await store.append_message(room.id, "alice", "late", 0, T0)
    with pytest.raises(StorageUnavailable, match=r"^store is closed$"):
        await store.get_room(room.id)


#: Checks every Store implementation must pass.
CHECKS = [
    check_users,
    check_online_users,
    check_online_validation,
    check_rooms_and_membership,
    check_room_mates,
    check_direct_rooms,
    check_append_and_dedupe,
    check_concurrent_appends,
    check_concurrent_duplicate_appends,
    check_dedupe_survives_restart,
    check_history_paging,
    check_edit_and_delete,
    check_receipts_and_unread,
    check_argument_validation,
    check_room_limit,
    check_sessions,
    check_session_validation,
]

#: Checks for SQL stores (group commit and its failure semantics).
SQL_CHECKS = [
    check_group_commit_batches,
    check_batch_isolates_failures,
    check_batch_isolates_limit_exceeded,
    check_batch_with_set_online,
    check_writes_flushed_on_close,
]


# ---------------------------------------------------------------------------
# Backends and runners

TIMEOUT_S = 60


def _sql_factory(url: str) -> SqlStoreFactory:
    def factory() -> AbstractAsyncContextManager[SqlStore]:
        return open_store(url)

    return factory


def _memory_factory() -> StoreFactory:
    store = MemoryStore()

    @asynccontextmanager
    async def factory() -> AsyncIterator[Store]:
        yield store

    return factory


SQL_BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)]


def _factory_for(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if backend == "memory":
        return _memory_factory()
    if backend == "sqlite":
        return _sql_factory(default_url(tmp_path / "data"))
    return _sql_factory(request.getfixturevalue("pg_schema_url"))


@pytest.fixture(params=["memory", *SQL_BACKENDS])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Opens the store under test (again and again, on the same data)."""
    factory: StoreFactory = _factory_for(request.param, request, tmp_path)
    return factory


@pytest.fixture(params=SQL_BACKENDS)
def sql_store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> SqlStoreFactory:
    """Opens a SqlStore under test."""
    factory: SqlStoreFactory = _factory_for(request.param, request, tmp_path)
    return factory


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__.removeprefix("check_"))
async def test_store(check: Callable[[StoreFactory], Any], store_factory: StoreFactory) -> None:
    with trio.fail_after(TIMEOUT_S):
        await check(store_factory)


@pytest.mark.parametrize(
    "check", SQL_CHECKS, ids=lambda check: check.__name__.removeprefix("check_")
)
async def test_sql_store(
    check: Callable[[SqlStoreFactory], Any], sql_store_factory: SqlStoreFactory
) -> None:
    with trio.fail_after(TIMEOUT_S):
        await check(sql_store_factory)
