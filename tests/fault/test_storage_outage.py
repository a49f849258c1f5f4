"""Fault injection: storage unavailable for a while, during traffic.

Real server, real WebSockets, real SQLite. The outage is another connection
holding SQLite's write lock (``BEGIN EXCLUSIVE``): every write waits out the
busy timeout, then fails. Sends are answered ``108 UNAVAILABLE`` (temporary)
and retried with the same ``cid``; what was acknowledged is stored exactly
once and delivered exactly once (docs/protocol.md, "Messages: seq, cid and
retries", "Resuming after a reconnect").

In WAL mode the lock stops writers only: readers (history, resume replays)
keep working, so a resume during the outage normally replays as usual; a
``recovered`` with code 108 is accepted too, and the later resume must then
bring everything.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import trio

from tether.testing import make_config, running_server
from tether.testing.raw import (
    RawClient,
    clients,
    make_room,
    msgs_through,
    msgs_until_recovered,
    raw_client,
)


class Sender:
    """Sends messages one after the other, retrying ``108`` with the same cid until acked."""

    def __init__(self, client: RawClient, room: str, prefix: str, refused: trio.Event) -> None:
        self.client = client
        self.room = room
        self.prefix = prefix
        self.refused = refused
        self.acked: dict[str, int] = {}  # cid -> seq
        self.unavailable = 0

    async def run(self, count: int) -> None:
        for i in range(count):
            cid = f"{self.prefix}{i}"
            while True:
                frame = await self.client.request("msg.send", room=self.room, cid=cid, body=cid)
                if frame["t"] == "reply":
                    self.acked[cid] = frame["data"]["seq"]
                    break
                assert (frame["code"], frame["temporary"]) == (108, True), frame
                self.unavailable += 1
                self.refused.set()
                assert self.unavailable < 50, "storage never came back"
                await trio.sleep(0.05)  # a client's pause before retrying, not a sync


async def test_storage_outage_during_traffic_loses_nothing_acknowledged(tmp_path: Path) -> None:
    # resume_buffer_messages=0: every resume reads storage, during the outage too
    config = make_config(tmp_path, resume_buffer_messages=0)
    with trio.fail_after(120):
        async with (
            running_server(config) as (_, info),
            clients(info.port, ("alice", "a"), ("bob", "b")) as (alice, bob),
        ):
            async with raw_client(info.port, "carol", "c") as carol:
                room = await make_room(alice, "bob", "carol")
                for i in range(1, 4):
                    await alice.ok("msg.send", room=room, cid=f"m{i}", body=i)
                assert await msgs_through(carol, room, 3, timeout=30) == [1, 2, 3]
                session = carol.welcome["session"]
            # carol dropped holding 1..3; three more while she is away
            for i in range(4, 7):
                await alice.ok("msg.send", room=room, cid=f"m{i}", body=i)
            assert await msgs_through(bob, room, 6, timeout=30) == [1, 2, 3, 4, 5, 6]

            refused = trio.Event()
            senders = [Sender(alice, room, "a", refused), Sender(bob, room, "b", refused)]
            blocker = sqlite3.connect(tmp_path / "tether.db", timeout=0)
            try:
                blocker.execute("BEGIN EXCLUSIVE")  # storage is down from here
                # carol resumes during the outage, while the senders wait on storage
                async with raw_client(
                    info.port, "carol", "c", session=session, resume={room: 3}
                ) as carol:
                    async with trio.open_nursery() as nursery:
                        for sender in senders:
                            nursery.start_soon(sender.run, 5)
                        replayed, recovered = await msgs_until_recovered(carol, room, timeout=30)
                        if recovered.get("code") is None:
                            assert (replayed, recovered["complete"]) == ([4, 5, 6], True)
                            assert recovered["head"] == 6  # nothing stored meanwhile
                        else:
                            assert (replayed, recovered["code"]) == ([], 108), recovered
                        with trio.fail_after(60):
                            await refused.wait()
                        blocker.rollback()  # storage is back; the senders retry and finish
                    acked = {**senders[0].acked, **senders[1].acked}
                    assert sum(s.unavailable for s in senders) >= 1
                    # each acknowledged once, at its own seq, each sender in its order
                    assert sorted(acked.values()) == list(range(7, 17))
                    for sender in senders:
                        seqs = list(sender.acked.values())
                        assert seqs == sorted(seqs)

                    # delivered exactly once, in order: a last message from each
                    # sender closes the stream of the other
                    end_a = (await alice.ok("msg.send", room=room, cid="end-a", body="end"))["seq"]
                    end_b = (await bob.ok("msg.send", room=room, cid="end-b", body="end"))["seq"]
                    assert (end_a, end_b) == (17, 18)
                    from_alice = sorted(senders[0].acked.values())
                    assert await msgs_through(bob, room, end_a, timeout=30) == [*from_alice, end_a]
                    from_bob = sorted(senders[1].acked.values())
                    assert await msgs_through(alice, room, end_b, timeout=30) == [*from_bob, end_b]
                    # carol got the outage's messages live, after her replay
                    assert await msgs_through(carol, room, end_b, timeout=30) == list(range(7, 19))
            finally:
                blocker.close()

            # stored exactly once each, under its cid
            page = await alice.ok("history", room=room, after=0, limit=500)
            assert [m["seq"] for m in page["messages"]] == list(range(1, 19))
            assert {m["cid"]: m["seq"] for m in page["messages"]} == {
                **{f"m{i}": i for i in range(1, 7)},
                **acked,
                "end-a": 17,
                "end-b": 18,
            }

            # a later resume from before the outage: everything after, once, in order
            async with raw_client(
                info.port, "carol", "c", session=session, resume={room: 3}
            ) as again:
                replayed, recovered = await msgs_until_recovered(again, room, timeout=30)
                assert replayed == list(range(4, 19))
                assert (recovered["complete"], recovered["head"]) == (True, 18)
