"""The console's ``/admin/api/`` over real HTTP on a real server (docs/console.md, "HTTP API").

Clients are real WebSocket connections (``tether.testing.raw``); the API is
called with ``tether.testing.http`` over loopback. A test actor with an async
handler parked on an event provides a deep mailbox and a handler to wait on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tether.actors import Actor, ActorRef
from tether.app import Server
from tether.testing import SECRET, make_config, running_server, token
from tether.testing.http import http_json, http_request
from tether.testing.raw import RawClient, clients, make_room, msgs_through
from tether.transport.auth import mint_token
from tether.transport.http import HttpRequest

ECHO = "tether.plugins.examples.echo_bot:EchoBot"


def admin_token(operator: str = "ops") -> str:
    return mint_token(SECRET.encode(), operator, ttl_s=3600, admin=True)


class Parked(Actor):
    """Every message waits on ``gate``: the mailbox fills up behind the first."""

    kind = "parked"

    def __init__(self, gate: trio.Event) -> None:
        super().__init__()
        self.gate = gate

    async def on_receive(self, message: Any) -> None:
        await self.gate.wait()

    def state_summary(self) -> str:
        return "parked at the gate"


class Nudge:
    """What the parked actor is told."""


async def get(port: int, path: str, *, tok: str | None = None) -> tuple[int, Any]:
    return await http_json(port, "GET", path, token=tok or admin_token())


async def post(
    port: int, path: str, body: Any = None, *, tok: str | None = None
) -> tuple[int, Any]:
    return await http_json(port, "POST", path, token=tok or admin_token(), json_body=body or {})


async def ok_get(port: int, path: str) -> Any:
    status, data = await get(port, path)
    assert status == 200, data
    return data


def by_kind(rows: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["kind"] == kind]


async def next_frame(client: RawClient, kind: str) -> dict[str, Any]:
    with trio.fail_after(10):
        while True:
            frame = await client.pushes.receive()
            if frame["t"] == kind:
                return frame


# -- access ---------------------------------------------------------------------------


async def test_access_needs_an_admin_token_from_loopback(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_server(make_config(tmp_path)) as (server, info):
            port = info.port
            status, headers, _body = await http_request(port, "GET", "/admin/api/summary")
            assert status == 401
            assert headers["content-type"].startswith("application/json")
            status, data = await http_json(port, "GET", "/admin/api/summary")
            assert (status, data["code"]) == (401, 401)
            assert data["error"]
            status, data = await http_json(port, "GET", "/admin/api/summary", token="garbage")
            assert status == 401
            other = mint_token(b"x" * 32, "ops", admin=True)  # signed by another secret
            status, _ = await http_json(port, "GET", "/admin/api/summary", token=other)
            assert status == 401
            status, data = await http_json(port, "GET", "/admin/api/summary", token=token("ops"))
            assert (status, data["code"]) == (403, 403)
            status, data = await http_json(port, "POST", "/admin/api/drain", token=token("ops"))
            assert status == 403
            assert not server.draining
            status, data = await get(port, "/admin/api/summary")
            assert status == 200
            assert data["draining"] is False
            assert (await get(port, "/admin/api/nope"))[0] == 404

            # A non-loopback peer is refused even with an admin token.
            remote = _request("203.0.113.7:40000", admin_token())
            assert (await server.admin.handle(remote)).status == 403
            assert (await server.admin.handle(_request("[::1]:4000", admin_token()))).status == 200


async def test_remote_peers_when_allowed_and_disabled_console(tmp_path: Path) -> None:
    with trio.fail_after(30):
        config = make_config(tmp_path, admin_allow_remote=True)
        async with running_server(config) as (server, _info):
            remote = _request("203.0.113.7:40000", admin_token())
            assert (await server.admin.handle(remote)).status == 200
            assert (await server.admin.handle(_request("203.0.113.7:1", None))).status == 401
        async with running_server(make_config(tmp_path, admin_enabled=False)) as (_, info):
            status, data = await get(info.port, "/admin/api/summary")
            assert (status, data["code"]) == (404, 404)


def _request(remote: str, tok: str | None) -> HttpRequest:
    headers = (("authorization", f"Bearer {tok}"),) if tok else ()
    return HttpRequest(
        method="GET",
        target="/admin/api/summary",
        path="/admin/api/summary",
        query={},
        headers=headers,
        remote=remote,
    )


# -- inspection -------------------------------------------------------------------------


async def test_listing_tree_detail_and_waiting_on(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_server(make_config(tmp_path, plugins=(ECHO,))) as (server, info):
            port = info.port
            assert server.ctx is not None
            async with clients(port, ("alice", "laptop"), ("bob", "phone")) as (alice, bob):
                room = await make_room(alice, "bob")
                await alice.ok("msg.send", room=room, cid="c1", body="hello")
                assert await msgs_through(bob, room, 1) == [1]

                gate = trio.Event()
                parked: ActorRef[Any] = server.ctx.system.spawn(Parked, gate)
                for _ in range(6):
                    parked.tell(Nudge())
                await trio.testing.wait_all_tasks_blocked()

                summary = await ok_get(port, "/admin/api/summary")
                assert summary["connections"] == 2
                assert summary["users_online"] == 2
                assert summary["rooms_active"] == 1
                assert summary["kinds"]["parked"] == 1
                assert summary["kinds"]["plugin"] == 1
                assert summary["uptime_s"] >= 0
                assert summary["draining"] is False

                # Default: deepest mailbox first.
                listing = await ok_get(port, "/admin/api/actors")
                rows = listing["actors"]
                assert listing["total"] == len(rows) == sum(summary["kinds"].values())
                assert rows[0]["urn"] == parked.actor_urn
                assert rows[0]["mailbox"] == 5
                assert rows[0]["mailbox_peak"] >= 5
                assert "parked at the gate" in rows[0]["state"]
                assert "busy with Nudge" in rows[0]["state"]
                depths = [r["mailbox"] for r in rows]
                assert depths == sorted(depths, reverse=True)
                for field in ("urn", "kind", "key", "mailbox", "mailbox_peak", "handled"):
                    assert field in rows[0]
                for field in ("rate", "failures", "age_s", "state", "parent"):
                    assert field in rows[0]

                conns = await ok_get(port, "/admin/api/actors?kind=connection&sort=handled")
                assert conns["total"] == 2
                assert all(r["key"].isdigit() for r in conns["actors"])
                handled = [r["handled"] for r in conns["actors"]]
                assert handled == sorted(handled, reverse=True)
                limited = await ok_get(port, "/admin/api/actors?limit=1&sort=age")
                assert len(limited["actors"]) == 1
                assert limited["total"] == listing["total"]
                assert (await get(port, "/admin/api/actors?sort=color"))[0] == 400
                assert (await get(port, "/admin/api/actors?limit=0"))[0] == 400
                users = (await ok_get(port, "/admin/api/actors?kind=user"))["actors"]
                assert {r["key"] for r in users} == {"alice", "bob"}
                rooms = (await ok_get(port, "/admin/api/actors?kind=room"))["actors"]
                assert [r["key"] for r in rooms] == [room]

                # Supervision tree: the plugin under its supervisor.
                tree = await ok_get(port, "/admin/api/tree")
                roots = tree["roots"]
                supervisor = next(r for r in roots if r["kind"] == "plugin-supervisor")
                assert [(c["kind"], c["key"]) for c in supervisor["children"]] == [
                    ("plugin", "echo")
                ]
                assert not any(r["kind"] == "plugin" for r in roots)
                assert {r["urn"] for r in roots} >= {parked.actor_urn}

                # waiting_on of the parked actor.
                detail = await ok_get(port, f"/admin/api/actors/{parked.actor_urn}")
                waiting = detail["waiting_on"]
                assert waiting["message"] == "Nudge"
                assert waiting["since_s"] >= 0
                assert "Parked.on_receive" in waiting["awaiting"]
                assert "wait" in waiting["awaiting"]

                # Per kind detail.
                alice_urn = next(r["urn"] for r in users if r["key"] == "alice")
                user = await ok_get(port, f"/admin/api/actors/{alice_urn}")
                assert user["waiting_on"] is None
                assert user["actor"]["kind"] == "user"
                assert [c["device"] for c in user["detail"]["connections"]] == ["laptop"]
                assert user["detail"]["connections"][0]["idle"] is False
                assert user["detail"]["presence"]["status"] == "online"
                assert user["detail"]["presence"]["devices"] == 1
                assert "watchers" in user["detail"]

                room_detail = (await ok_get(port, f"/admin/api/actors/{rooms[0]['urn']}"))["detail"]
                assert room_detail["last_seq"] == 1
                members = {m["user"]: m for m in room_detail["members"]}
                assert members["alice"]["role"] == "owner"
                assert members["bob"]["role"] == "member"
                assert {"delivered", "read"} <= members["bob"].keys()
                assert room_detail["typing"] == []
                assert room_detail["pending_sends"] == 0
                assert room_detail["resuming"] == 0

                conn_rows = conns["actors"]
                conn_details = [
                    (await ok_get(port, f"/admin/api/actors/{r['urn']}"))["detail"]
                    for r in conn_rows
                ]
                mine = next(d for d in conn_details if d["user"] == "alice")
                assert mine["device"] == "laptop"
                assert mine["session"] == alice.welcome["session"]
                assert mine["remote"].startswith("127.0.0.1:")
                assert isinstance(mine["outbound_queued_bytes"], int)
                assert isinstance(mine["watching"], int)
                assert mine["state"] == "live"

                plugin_urn = supervisor["children"][0]["urn"]
                plugin = (await ok_get(port, f"/admin/api/actors/{plugin_urn}"))["detail"]
                assert plugin == plugin | {"name": "echo", "version": "1.0", "status": "running"}
                assert (await get(port, "/admin/api/actors/urn:tether:none:1"))[0] == 404

                # Rates are sampled at most once a second: after a second sample,
                # every listed actor has one, never negative.
                rates = [r["rate"] for r in rows]
                assert all(rate >= 0 for rate in rates)

                gate.set()
                await trio.testing.wait_all_tasks_blocked()
                detail = await ok_get(port, f"/admin/api/actors/{parked.actor_urn}")
                assert detail["waiting_on"] is None
                assert detail["actor"]["mailbox"] == 0
                assert detail["actor"]["handled"] == 6


async def test_trace_records_handled_messages(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_server(make_config(tmp_path)) as (_server, info):
            port = info.port
            async with clients(port, ("alice", "laptop"), ("bob", "phone")) as (alice, bob):
                room = await make_room(alice, "bob")
                await alice.ok("msg.send", room=room, cid="c0", body="wake the room")
                rooms = (await ok_get(port, "/admin/api/actors?kind=room"))["actors"]
                urn = rooms[0]["urn"]
                before = await ok_get(port, f"/admin/api/actors/{urn}/trace")
                assert before == {"tracing": False, "until_s": 0.0, "messages": []}
                for bad in (0, 301, "10", True, None):
                    status, data = await post(
                        port, f"/admin/api/actors/{urn}/trace", {"seconds": bad}
                    )
                    assert status == 400, (bad, data)
                status, data = await post(port, f"/admin/api/actors/{urn}/trace", {"seconds": 60})
                assert status == 200
                assert data["tracing"] is True

                for i in range(1, 4):
                    await alice.ok("msg.send", room=room, cid=f"c{i}", body=f"hello {i}")
                assert await msgs_through(bob, room, 4) == [1, 2, 3, 4]

                trace = await ok_get(port, f"/admin/api/actors/{urn}/trace")
                assert trace["tracing"] is True
                assert 0 < trace["until_s"] <= 60
                entries = trace["messages"]
                assert entries, trace
                assert sum("msg.send" in e["repr"] or "MsgSend" in e["repr"] for e in entries) >= 3
                for entry in entries:
                    assert {"ts", "message", "repr", "duration_ms"} <= entry.keys()
                    assert len(entry["repr"]) <= 200
                    assert entry["duration_ms"] >= 0
                status, _ = await post(
                    port, "/admin/api/actors/urn:tether:x:1/trace", {"seconds": 5}
                )
                assert status == 404
                audit = (await ok_get(port, "/admin/api/audit"))["entries"]
                assert [
                    (e["action"], e["target"]) for e in audit if e["result"].startswith("tracing")
                ] == [("trace", urn)]


# -- control ------------------------------------------------------------------------------


async def test_control_actions_are_done_and_audited(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tether.admin")
    with trio.fail_after(30):
        async with running_server(make_config(tmp_path, plugins=(ECHO,))) as (server, info):
            port = info.port
            assert server.ctx is not None
            async with clients(port, ("alice", "laptop"), ("bob", "phone")) as (alice, bob):
                room = await make_room(alice, "bob")

                # System message into the room, as user "system".
                status, data = await post(
                    port, f"/admin/api/rooms/{room}/message", {"body": "maintenance at 5"}
                )
                assert status == 200, data
                assert data["seq"] == 1
                frame = await next_frame(bob, "msg")
                assert (frame["sender"], frame["body"], frame["seq"]) == (
                    "system",
                    "maintenance at 5",
                    1,
                )
                status, _ = await post(port, "/admin/api/rooms/no-such-room/message", {"body": "x"})
                assert status == 404
                assert (await post(port, f"/admin/api/rooms/{room}/message", {}))[0] == 400

                # Disconnect bob's connection: closed with 3504.
                conns = (await ok_get(port, "/admin/api/actors?kind=connection"))["actors"]
                details = {
                    r["key"]: (await ok_get(port, f"/admin/api/actors/{r['urn']}"))["detail"]
                    for r in conns
                }
                bob_conn = next(k for k, d in details.items() if d["user"] == "bob")
                status, data = await post(
                    port, f"/admin/api/connections/{bob_conn}/disconnect", {"reason": "bye"}
                )
                assert status == 200, data
                with trio.fail_after(10):
                    await bob.closed.wait()
                assert bob.conn.close_code == 3504
                assert (await post(port, "/admin/api/connections/99999/disconnect"))[0] == 404

                # Restart the room: stopped, then back from storage on demand.
                room_urn = (await ok_get(port, "/admin/api/actors?kind=room"))["actors"][0]["urn"]
                status, data = await post(port, f"/admin/api/actors/{room_urn}/restart")
                assert status == 200, data
                assert data["stopped"] is True
                assert (await ok_get(port, "/admin/api/actors?kind=room"))["total"] == 0
                await alice.ok("msg.send", room=room, cid="after", body="still here")
                back = (await ok_get(port, "/admin/api/actors?kind=room"))["actors"]
                assert [r["key"] for r in back] == [room]
                assert back[0]["urn"] != room_urn
                room_detail = (await ok_get(port, f"/admin/api/actors/{back[0]['urn']}"))["detail"]
                assert room_detail["last_seq"] == 2

                # Restart the plugin through its supervisor.
                old = (await ok_get(port, "/admin/api/actors?kind=plugin"))["actors"][0]["urn"]
                status, data = await post(port, f"/admin/api/actors/{old}/restart")
                assert status == 200, data
                assert data["restarted"] is True
                new = (await ok_get(port, "/admin/api/actors?kind=plugin"))["actors"]
                assert [r["urn"] for r in new] == [data["new_urn"]]
                assert data["new_urn"] != old

                # A connection cannot be restarted; it can be stopped.
                alice_conn = next(r["urn"] for r in conns if details[r["key"]]["user"] == "alice")
                assert (await post(port, f"/admin/api/actors/{alice_conn}/restart"))[0] == 409
                status, data = await post(port, f"/admin/api/actors/{alice_conn}/stop")
                assert status == 200
                assert data["stopped"] is True
                assert server.ctx.system.registry.get(alice_conn) is None
                assert (await post(port, f"/admin/api/actors/{alice_conn}/stop"))[0] == 404

            audit = (await ok_get(port, "/admin/api/audit"))["entries"]
            actions = [(e["operator"], e["action"]) for e in audit]
            assert ("ops", "message") in actions
            assert ("ops", "disconnect") in actions
            assert actions.count(("ops", "restart")) == 3  # room, plugin, refused connection
            assert ("ops", "stop") in actions
            refused = next(e for e in audit if e["result"].startswith("409"))
            assert refused["target"] == alice_conn
            for entry in audit:
                assert {"ts", "operator", "action", "target", "result"} <= entry.keys()
    logged = [r for r in caplog.records if r.name == "tether.admin"]
    assert len(logged) == len(audit)
    assert all(r.levelno == logging.WARNING and "ops" in r.getMessage() for r in logged)
    assert any("disconnect" in r.getMessage() for r in logged)


async def test_drain_closes_clients_with_3000_and_stops_the_server(tmp_path: Path) -> None:
    with trio.fail_after(30):
        server = Server(make_config(tmp_path))
        async with trio.open_nursery() as nursery:
            info = await nursery.start(server.run)
            async with clients(info.port, ("alice", "laptop")) as (alice,):
                status, data = await post(info.port, "/admin/api/drain")
                assert status == 202
                assert data["draining"] is True
                with trio.fail_after(10):
                    await alice.closed.wait()
                assert alice.conn.close_code == 3000
            # server.run returns by itself: the nursery exits without cancelling it.
        assert server.draining
        assert [e["action"] for e in server.admin.audit] == ["drain"]


# -- rates and the CLI ----------------------------------------------------------------------


class Counter(Actor):
    kind = "counter"

    def on_receive(self, message: Any) -> None:
        return None


class FakeTime:
    """Stands in for the ``time`` module in ``tether.console.api``: a settable clock."""

    now = 5000.0

    @classmethod
    def monotonic(cls) -> float:
        return cls.now

    @staticmethod
    def time() -> float:
        return 1.0


async def test_rate_is_sampled_at_most_once_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tether.console import api  # noqa: PLC0415

    monkeypatch.setattr(api, "time", FakeTime)
    with trio.fail_after(30):
        async with running_server(make_config(tmp_path)) as (server, info):
            assert server.ctx is not None
            ref = server.ctx.system.spawn(Counter)
            first = (await ok_get(info.port, "/admin/api/actors?kind=counter"))["actors"]
            assert first[0]["rate"] == 0.0  # one sample: no rate yet
            for _ in range(10):
                ref.tell("tick")
            await trio.testing.wait_all_tasks_blocked()
            FakeTime.now += 0.5  # within the window: not sampled again
            again = (await ok_get(info.port, "/admin/api/actors?kind=counter"))["actors"]
            assert again[0]["rate"] == 0.0
            FakeTime.now += 1.5  # two seconds after the first sample
            rows = (await ok_get(info.port, "/admin/api/actors?sort=rate"))["actors"]
            assert rows[0]["urn"] == ref.actor_urn
            assert rows[0]["rate"] == 5.0


def test_cli_mints_admin_tokens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tether.__main__ import main  # noqa: PLC0415
    from tether.transport.auth import TokenVerifier  # noqa: PLC0415

    args = ["token", "--data-dir", str(tmp_path), "--user", "ops-alice"]
    assert main([*args, "--admin"]) == 0
    admin = capsys.readouterr().out.strip()
    assert main(args) == 0
    plain = capsys.readouterr().out.strip()
    secret = make_config(tmp_path, secret=None).load_secret()
    verifier = TokenVerifier(secret)
    assert verifier.verify(admin).admin is True
    assert verifier.verify(admin).user_id == "ops-alice"
    assert verifier.verify(plain).admin is False


async def test_storage_is_listed_with_the_actors(tmp_path: Path) -> None:
    async with (
        running_server(make_config(tmp_path)) as (_, info),
        clients(info.port, ("alice", "a"), ("bob", "b")) as (alice, _bob),
    ):
        room = await make_room(alice, "bob")
        await alice.ok("msg.send", room=room, cid="c1", body="hi")
        summary = await ok_get(info.port, "/admin/api/summary")
        assert summary["kinds"]["storage"] == 1
        listed = await ok_get(info.port, "/admin/api/actors?sort=handled")
        [storage] = by_kind(listed["actors"], "storage")
        assert storage["urn"] == "storage"
        assert storage["handled"] >= 3  # users, the room, the message were committed
        assert storage["state"].startswith("ok")
        handled = [row["handled"] for row in listed["actors"]]
        assert handled == sorted(handled, reverse=True)  # in its place in the order
        only = await ok_get(info.port, "/admin/api/actors?kind=storage")
        assert [row["kind"] for row in only["actors"]] == ["storage"]
        detail = await ok_get(info.port, "/admin/api/actors/storage")
        assert detail["detail"]["ops_committed"] >= storage["handled"]
        assert detail["waiting_on"] is None


async def test_calls_and_media_workers_in_the_console(tmp_path: Path) -> None:
    """A call is listed with its participants and its router's figures; workers too."""
    from tether.testing.server import fake_media_pool  # noqa: PLC0415 (only this test)

    config = make_config(tmp_path, media_workers=1, media_udp_port=0)
    with trio.fail_after(40):
        async with (
            running_server(config, media_pool_factory=fake_media_pool) as (server, info),
            clients(info.port, ("alice", "a"), ("bob", "b")) as [alice, bob],
        ):
            assert server.ctx is not None
            assert server.ctx.media is not None
            await server.ctx.media.wait_ready()
            room = await make_room(alice, "bob")
            await alice.ok("call.join", room=room)
            await bob.ok("call.join", room=room)
            summary = await ok_get(info.port, "/admin/api/summary")
            assert summary["calls_active"] == 1
            assert summary["call_participants"] == 2
            assert summary["media_workers_live"] == 1
            listing = await ok_get(info.port, "/admin/api/actors?kind=call")
            [row] = by_kind(listing["actors"], "call")
            detail = (await ok_get(info.port, f"/admin/api/actors/{row['urn']}"))["detail"]
            assert detail["room"] == room
            assert {p["user"] for p in detail["participants"]} == {"alice", "bob"}
            # the router's own figures, straight from the worker
            assert isinstance(detail["media"]["participants"], dict)
            media = await ok_get(info.port, "/admin/api/media")
            [worker] = media["workers"]
            assert worker["live"] is True
            assert worker["routers"] == 1
