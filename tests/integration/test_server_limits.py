"""Per-user limits over the wire: documented errors, nothing changed."""

from __future__ import annotations

from pathlib import Path

import trio

from tether.testing import make_config, running_server
from tether.testing.raw import clients


async def test_rooms_per_user_limit(tmp_path: Path) -> None:
    config = make_config(tmp_path, max_rooms_per_user=2)
    with trio.fail_after(20):
        async with (
            running_server(config) as (_, info),
            clients(info.port, ("alice", "a"), ("bob", "b"), ("carol", "c")) as (
                alice,
                bob,
                carol,
            ),
        ):
            assert alice.welcome["limits"]["max_rooms_per_user"] == 2
            assert alice.welcome["limits"]["max_connections_per_user"] > 0
            dm = (await alice.ok("dm.open", user="bob"))["room"]["id"]
            public = (await alice.ok("room.create", name="p", kind="public"))["room"]["id"]
            # alice is in two rooms: a third is refused, whichever way
            error = await alice.fails("room.create", 109, name="x", kind="private")
            assert "alice" in error["reason"]
            await alice.fails("dm.open", 109, user="carol")
            # the direct room that exists is still returned
            assert (await alice.ok("dm.open", user="bob"))["room"]["id"] == dm
            # carol creates a room and invites alice: refused for alice's sake
            own = (await carol.ok("room.create", name="c", kind="private"))["room"]["id"]
            await carol.fails("room.invite", 109, room=own, user="alice")
            # bob (one room) may join the public room, then he is full too
            await bob.ok("room.join", room=public)
            other = (await carol.ok("room.create", name="o", kind="public"))["room"]["id"]
            await bob.fails("room.join", 109, room=other)
            members = await carol.ok("room.members", room=own)
            assert [m["user"] for m in members["members"]] == ["carol"]
            rooms = await alice.ok("room.list")
            assert sorted(r["id"] for r in rooms["rooms"]) == sorted([dm, public])
