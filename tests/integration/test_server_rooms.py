"""End to end: rooms and messages over real WebSockets with real SQLite.

These tests speak the wire protocol with plain msgpack maps (a raw client), so
they pin what docs/protocol.md promises client authors.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from tether.testing import make_config, running_server
from tether.testing.raw import RawClient, clients


async def test_create_send_fan_out_and_multi_device(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with (
            running_server(make_config(tmp_path)) as (_, info),
            clients(
                info.port, ("alice", "laptop"), ("alice", "phone"), ("bob", "b"), ("carol", "c")
            ) as (laptop, phone, bob, carol),
        ):
            room = (await laptop.ok("room.create", name="Team", kind="private", members=["bob"]))[
                "room"
            ]
            assert (room["kind"], room["owner"], room["last_seq"]) == ("private", "alice", 0)
            # the other devices learn about the room
            assert (await phone.push("room"))["room"]["id"] == room["id"]
            assert (await bob.push("room"))["room"]["id"] == room["id"]

            ack = await laptop.ok("msg.send", room=room["id"], cid="c1", body="hello")
            assert (ack["seq"], ack["dup"]) == (1, False)
            for device in (phone, bob):
                msg = await device.push("msg")
                assert (msg["seq"], msg["sender"], msg["body"], msg["cid"]) == (
                    1,
                    "alice",
                    "hello",
                    "c1",
                )
            await laptop.nothing("msg")  # the sender's connection got the reply instead
            # a non-member can neither post, read history nor see members
            await carol.fails("msg.send", 120, room=room["id"], cid="x", body="hi")
            await carol.fails("history", 120, room=room["id"])
            await carol.fails("room.members", 120, room=room["id"])
            await carol.fails("room.join", 126, room=room["id"])  # private
            await carol.nothing("msg")


async def test_retry_with_same_cid_is_deduplicated_across_restart(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    with trio.fail_after(30):
        async with running_server(config) as (_, info), clients(info.port, ("alice", "a")) as [a]:
            room = (await a.ok("room.create", name="R", kind="public"))["room"]["id"]
            first = await a.ok("msg.send", room=room, cid="same", body={"text": "once"})
            again = await a.ok("msg.send", room=room, cid="same", body={"text": "once"})
            assert (again["seq"], again["ts"], again["dup"]) == (first["seq"], first["ts"], True)
        async with running_server(config) as (_, info), clients(info.port, ("alice", "a")) as [a]:
            after = await a.ok("msg.send", room=room, cid="same", body={"text": "once"})
            assert (after["seq"], after["dup"]) == (first["seq"], True)
            page = await a.ok("history", room=room)
            assert [m["body"] for m in page["messages"]] == [{"text": "once"}]


async def test_ordering_under_concurrent_senders(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with (
            running_server(make_config(tmp_path)) as (_, info),
            clients(info.port, *((f"u{i}", "d") for i in range(5)), ("watcher", "w")) as people,
        ):
            *senders, watcher = people
            room = (await senders[0].ok("room.create", name="R", kind="public"))["room"]["id"]
            for c in people[1:]:
                await c.ok("room.join", room=room)
            acks: dict[str, list[int]] = {}

            async def send_many(c: RawClient, name: str) -> None:
                acks[name] = []
                for i in range(40):
                    ack = await c.ok("msg.send", room=room, cid=f"{name}-{i}", body=i)
                    acks[name].append(ack["seq"])

            async with trio.open_nursery() as nursery:
                for i, c in enumerate(senders):
                    nursery.start_soon(send_many, c, f"u{i}")
            seen = [(await watcher.push("msg"))["seq"] for _ in range(200)]
            assert seen == list(range(1, 201))  # gapless, in order, once each
            for name, seqs in acks.items():
                assert seqs == sorted(seqs), name  # each sender's order preserved
            all_seqs = sorted(s for seqs in acks.values() for s in seqs)
            assert all_seqs == list(range(1, 201))


async def test_history_paging_and_unread(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            running_server(make_config(tmp_path)) as (_, info),
            clients(info.port, ("alice", "a"), ("bob", "b1"), ("bob", "b2")) as (alice, b1, b2),
        ):
            room = (await alice.ok("room.create", name="R", kind="private", members=["bob"]))[
                "room"
            ]["id"]
            for i in range(1, 26):
                await alice.ok("msg.send", room=room, cid=str(i), body=i)
            latest = await b1.ok("history", room=room, limit=10)
            assert [m["seq"] for m in latest["messages"]] == list(range(16, 26))
            assert latest["more"] is True
            older = await b1.ok("history", room=room, before=16, limit=10)
            assert [m["seq"] for m in older["messages"]] == list(range(6, 16))
            oldest = await b1.ok("history", room=room, before=6, limit=10)
            assert [m["seq"] for m in oldest["messages"]] == [1, 2, 3, 4, 5]
            assert oldest["more"] is False
            forward = await b1.ok("history", room=room, after=20, limit=10)
            assert [m["seq"] for m in forward["messages"]] == [21, 22, 23, 24, 25]
            assert forward["more"] is False
            [summary] = (await b2.ok("room.list"))["rooms"]
            assert (summary["unread"], summary["read_seq"]) == (25, 0)
            # reading on one device syncs the other
            await b1.ok("receipt", room=room, read=20)
            for device in (b1, b2):
                state = await device.push("read")
                assert (state["seq"], state["unread"]) == (20, 5)
            [summary] = (await b2.ok("room.list"))["rooms"]
            assert summary["unread"] == 5


async def test_receipts_per_device_coalesced(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            running_server(make_config(tmp_path)) as (_, info),
            clients(info.port, ("alice", "a"), ("bob", "b1"), ("bob", "b2")) as (alice, b1, b2),
        ):
            room = (await alice.ok("room.create", name="R", kind="private", members=["bob"]))[
                "room"
            ]["id"]
            for i in range(1, 6):
                await alice.ok("msg.send", room=room, cid=str(i), body=i)
            await b1.send_only("receipt", room=room, delivered=3)
            await b2.send_only("receipt", room=room, delivered=5)
            await b1.send_only("receipt", room=room, delivered=2)  # never moves back
            push = await alice.push("receipts")
            [entry] = push["users"]
            assert (entry["user"], entry["delivered"], entry["read"]) == ("bob", 5, 0)
            members = {m["user"]: m for m in (await alice.ok("room.members", room=room))["members"]}
            assert (members["bob"]["delivered"], members["bob"]["read"]) == (5, 0)
            assert members["alice"]["role"] == "owner"
            await b1.ok("receipt", room=room, read=99)  # capped at last_seq
            push = await alice.push("receipts")
            assert (push["users"][0]["read"], push["users"][0]["delivered"]) == (5, 5)


async def test_typing_expires_and_clears_on_send(
    tmp_path: Path, lazy_clock: trio.testing.MockClock, ticking: None
) -> None:
    with trio.fail_after(120):
        async with (
            running_server(make_config(tmp_path)) as (_, info),
            clients(info.port, ("alice", "a"), ("bob", "b"), ("carol", "c")) as (alice, bob, carol),
        ):
            room = (await alice.ok("room.create", name="R", kind="private", members=["bob"]))[
                "room"
            ]["id"]
            await bob.send_only("typing", room=room, typing=True)
            assert (await alice.push("typing"))["users"] == ["bob"]
            start = trio.current_time()
            assert (await alice.push("typing", timeout=30))["users"] == []  # expired by itself
            assert 5.0 <= trio.current_time() - start < 6.0
            await bob.send_only("typing", room=room, typing=True)
            assert (await alice.push("typing"))["users"] == ["bob"]
            await bob.ok("msg.send", room=room, cid="m", body="done typing")
            assert (await alice.push("typing"))["users"] == []
            # a non-member's typing is dropped silently
            await carol.send_only("typing", room=room, typing=True)
            await alice.nothing("typing", within=1.0)


async def test_typing_cleared_when_connection_drops(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            running_server(make_config(tmp_path)) as (_, info),
            clients(info.port, ("alice", "a"), ("bob", "b")) as (alice, bob),
        ):
            room = (await alice.ok("room.create", name="R", kind="private", members=["bob"]))[
                "room"
            ]["id"]
            await bob.send_only("typing", room=room, typing=True)
            assert (await alice.push("typing"))["users"] == ["bob"]
            bob.conn.close()  # vanishes without a close frame
            assert (await alice.push("typing"))["users"] == []


async def test_membership_rules(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            running_server(make_config(tmp_path)) as (_, info),
            clients(info.port, ("alice", "a"), ("bob", "b"), ("carol", "c")) as (alice, bob, carol),
        ):
            public = (await alice.ok("room.create", name="Lobby", kind="public"))["room"]["id"]
            joined = await bob.ok("room.join", room=public)
            assert joined["room"]["id"] == public
            assert (await alice.push("member", user="bob"))["action"] == "joined"
            await bob.fails("room.invite", 122, room=public, user="carol")  # not the owner
            await alice.ok("room.invite", room=public, user="carol")
            assert (await carol.push("room"))["room"]["id"] == public
            await alice.fails("room.leave", 104, room=public)  # the owner stays
            await alice.fails("room.remove", 100, room=public, user="alice")
            await alice.ok("room.remove", room=public, user="bob")
            removed = await bob.push("member", user="bob")
            assert removed["action"] == "removed"
            await bob.fails("msg.send", 120, room=public, cid="x", body="still here?")
            await carol.ok("room.leave", room=public)
            await carol.fails("history", 120, room=public)
            await alice.fails("room.join", 121, room="no-such-room")
            await alice.fails("room.invite", 105, room=public, user="nobody-ever-seen")


async def test_direct_conversations(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            running_server(make_config(tmp_path)) as (_, info),
            clients(info.port, ("alice", "a"), ("bob", "b")) as (alice, bob),
        ):
            dm = (await alice.ok("dm.open", user="bob"))["room"]
            assert dm["kind"] == "direct"
            assert (await bob.push("room"))["room"]["id"] == dm["id"]
            assert (await bob.ok("dm.open", user="alice"))["room"]["id"] == dm["id"]
            await alice.ok("msg.send", room=dm["id"], cid="1", body="psst")
            assert (await bob.push("msg"))["body"] == "psst"
            await bob.fails("room.leave", 104, room=dm["id"])
            await alice.fails("dm.open", 105, user="stranger")


async def test_edit_and_delete_own_messages_only(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            running_server(make_config(tmp_path)) as (_, info),
            clients(info.port, ("alice", "a"), ("bob", "b")) as (alice, bob),
        ):
            room = (await alice.ok("room.create", name="R", kind="private", members=["bob"]))[
                "room"
            ]["id"]
            seq = (await alice.ok("msg.send", room=room, cid="1", body="typo"))["seq"]
            await bob.push("msg")
            await bob.fails("msg.edit", 124, room=room, seq=seq, body="hacked")
            await alice.ok("msg.edit", room=room, seq=seq, body="fixed")
            edited = await bob.push("msg.edited")
            assert (edited["seq"], edited["body"]) == (seq, "fixed")
            await alice.fails("msg.edit", 123, room=room, seq=99, body="x")
            await alice.ok("msg.delete", room=room, seq=seq)
            assert (await bob.push("msg.deleted"))["seq"] == seq
            [message] = (await bob.ok("history", room=room))["messages"]
            assert message["deleted"] is True


async def test_presence_visibility_and_auto_subscription(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            running_server(make_config(tmp_path)) as (_, info),
            clients(info.port, ("alice", "a"), ("bob", "b")) as (alice, _bob),
        ):
            await alice.fails("presence.subscribe", 104, users=["bob"])
            await alice.ok("room.create", name="R", kind="private", members=["bob"])
            data = await alice.ok("presence.subscribe", users=["bob"])
            assert data["users"][0]["status"] == "online"
            # a new device of alice watches her room mates without asking
            async with clients(info.port, ("alice", "a2")) as [tablet]:
                snapshot = await tablet.push("presence", user="bob")
                assert (snapshot["status"], snapshot["devices"]) == ("online", 1)
                async with clients(info.port, ("bob", "b2")):
                    update = await tablet.push("presence", user="bob")
                    assert update["devices"] == 2


async def test_new_room_mates_watch_each_other_at_once(tmp_path: Path) -> None:
    """Joining, creating or opening a DM starts presence watching without a reconnect."""
    with trio.fail_after(30):
        async with (
            running_server(make_config(tmp_path)) as (_, info),
            clients(info.port, ("alice", "a"), ("bob", "b"), ("carol", "c")) as (alice, bob, carol),
        ):
            await alice.ok("room.create", name="R", kind="public", members=["bob"])
            assert (await alice.push("presence", user="bob"))["status"] == "online"
            assert (await bob.push("presence", user="alice"))["status"] == "online"
            await carol.ok("dm.open", user="alice")
            assert (await carol.push("presence", user="alice"))["status"] == "online"
            assert (await alice.push("presence", user="carol"))["status"] == "online"
            await carol.ok("presence.subscribe", users=["alice"])  # now allowed, too


async def test_storage_outage_gives_temporary_error_then_recovers(tmp_path: Path) -> None:
    """A locked SQLite database: sends fail with 108 (temporary), then work again."""
    import sqlite3  # noqa: PLC0415

    config = make_config(tmp_path)
    with trio.fail_after(60):
        async with running_server(config) as (_, info), clients(info.port, ("alice", "a")) as [a]:
            room = (await a.ok("room.create", name="R", kind="public"))["room"]["id"]
            await a.ok("msg.send", room=room, cid="before", body=1)
            blocker = sqlite3.connect(tmp_path / "tether.db", timeout=0)
            blocker.execute("BEGIN EXCLUSIVE")
            try:
                frame = await a.fails("msg.send", 108, room=room, cid="during", body=2)
                assert frame["temporary"] is True
            finally:
                blocker.rollback()
                blocker.close()
            retry = await a.ok("msg.send", room=room, cid="during", body=2)
            assert (retry["seq"], retry["dup"]) == (2, False)


@pytest.mark.postgresql
async def test_messaging_on_postgresql(tmp_path: Path, pg_schema_url: str) -> None:
    """The same server on PostgreSQL: ordering, dedupe, history, receipts."""
    config = make_config(tmp_path, database_url=pg_schema_url)
    with trio.fail_after(60):
        async with (
            running_server(config) as (_, info),
            clients(info.port, ("alice", "a"), ("bob", "b")) as (alice, bob),
        ):
            room = (await alice.ok("room.create", name="R", kind="private", members=["bob"]))[
                "room"
            ]["id"]

            async def burst(c: RawClient, name: str) -> None:
                for i in range(30):
                    await c.ok("msg.send", room=room, cid=f"{name}{i}", body=i)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(burst, alice, "a")
                nursery.start_soon(burst, bob, "b")
            dup = await alice.ok("msg.send", room=room, cid="a0", body=0)
            assert dup["dup"] is True
            page = await bob.ok("history", room=room, limit=100)
            assert [m["seq"] for m in page["messages"]] == list(range(1, 61))
            await bob.ok("receipt", room=room, read=60)
            assert (await bob.push("read"))["unread"] == 0


async def test_idle_room_actor_retires_and_reloads(
    tmp_path: Path, lazy_clock: trio.testing.MockClock, ticking: None
) -> None:
    config = make_config(tmp_path, room_idle_timeout=60.0)
    with trio.fail_after(600):
        async with (
            running_server(config) as (server, info),
            clients(info.port, ("alice", "a"), ("bob", "b")) as (alice, bob),
        ):
            assert server.ctx is not None
            room = (await alice.ok("room.create", name="R", kind="private", members=["bob"]))[
                "room"
            ]["id"]
            await alice.ok("msg.send", room=room, cid="1", body="one")
            await bob.ok("receipt", room=room, read=1)
            assert server.ctx.system.registry.kinds().get("room") == 1
            await trio.sleep(200)
            assert server.ctx.system.registry.kinds().get("room", 0) == 0
            ack = await alice.ok("msg.send", room=room, cid="2", body="two")
            assert ack["seq"] == 2
            assert (await bob.push("msg", seq=2))["body"] == "two"
            members = {m["user"]: m for m in (await alice.ok("room.members", room=room))["members"]}
            assert members["bob"]["read"] == 1  # reloaded from storage
