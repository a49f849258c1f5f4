"""``tether console`` against a real server: ``--once`` in a real process, commands in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import trio

from tether.console import tui, web
from tether.console.tui import AdminClient, Command, ConsoleState
from tether.testing.http import http_request
from tether.testing.raw import make_room, raw_client, text_push
from tether.testing.server import SECRET, make_config, running_server
from tether.transport.auth import mint_token


def admin_token() -> str:
    return mint_token(SECRET.encode(), "ops", admin=True, ttl_s=3600)


async def console(*args: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "TETHER_ADMIN_TOKEN"}
    with trio.fail_after(60):
        return await trio.run_process(
            [sys.executable, "-m", "tether", "console", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**env, "COLUMNS": "200"},
        )


async def test_once_prints_the_live_actors(tmp_path: Path) -> None:
    async with running_server(make_config(tmp_path)) as (_server, info):
        async with raw_client(info.port, "alice", "laptop") as alice:
            async with raw_client(info.port, "bob", "phone"):
                room = await make_room(alice, "bob", name="ops-room")
                # a room's actor runs while the room is in use: send to it
                await alice.ok("msg.send", room=room, cid="c1", body="hi")
                url = f"http://127.0.0.1:{info.port}"
                token_file = tmp_path / "admin.token"
                token_file.write_text(admin_token() + "\n")

                result = await console("--url", url, "--token-file", str(token_file), "--once")
                out = result.stdout.decode()
                assert result.returncode == 0, result.stderr.decode()
                lines = out.splitlines()
                assert " up " in lines[0]
                assert lines[3] == "sort: mailbox  filter: all"
                table = lines[lines.index("") + 1 :]
                assert table[0].split()[:3] == ["URN", "KIND", "KEY"]
                kinds = {line.split()[1] for line in table[1:]}
                assert {"connection", "user", "room"} <= kinds, out
                keys = {line.split()[2] for line in table[1:]}
                assert {"alice", "bob", room} <= keys, out
                # sorted by mailbox depth, deepest first
                depths = [int(line.split()[3]) for line in table[1:]]
                assert depths == sorted(depths, reverse=True)

                result = await console(
                    "--url", url, "--token", admin_token(), "--once", "--kind", "room"
                )
                assert result.returncode == 0, result.stderr.decode()
                rows = result.stdout.decode().splitlines()
                rows = rows[rows.index("") + 2 :]
                assert rows, result.stdout.decode()
                assert {row.split()[1] for row in rows} == {"room"}


async def test_once_refuses_bad_or_missing_tokens(tmp_path: Path) -> None:
    async with running_server(make_config(tmp_path)) as (_server, info):
        url = f"http://127.0.0.1:{info.port}"
        user_token = mint_token(SECRET.encode(), "alice", ttl_s=3600)  # not an admin token
        result = await console("--url", url, "--token", user_token, "--once")
        assert result.returncode == 1
        assert result.stderr.decode().startswith("tether console: 40"), result.stderr
        result = await console("--url", url, "--once")
        assert result.returncode == 2
        assert "no admin token" in result.stderr.decode()


async def test_commands_act_on_the_real_server(tmp_path: Path) -> None:
    async with running_server(make_config(tmp_path)) as (_server, info):
        async with raw_client(info.port, "alice", "laptop") as alice:
            async with raw_client(info.port, "bob", "phone") as bob:
                room = await make_room(alice, "bob", name="ops-room")
                # a room's actor runs while the room is in use: send to it
                await alice.ok("msg.send", room=room, cid="c1", body="hi")
                client = AdminClient(f"http://127.0.0.1:{info.port}", admin_token())
                state = ConsoleState()
                lines = await tui.view_lines(client, state, 200)
                assert any(a["key"] == room for a in state.actors), lines

                # d <key>: the room's detail, found by its key
                await tui.execute(Command("detail", (room,)), client, state)
                assert state.view == "detail"
                assert state.target is not None
                assert state.target != room  # resolved to the URN
                detail = "\n".join(await tui.view_lines(client, state, 200))
                assert "alice" in detail
                assert "bob" in detail

                await tui.execute(Command("post", (room, "maintenance at noon")), client, state)
                assert state.status == f"posted to {room}", state.status
                for member in (alice, bob):
                    await text_push(member, "maintenance at noon")

                await tui.execute(Command("trace", (state.target, "5")), client, state)
                assert state.view == "trace", state.status
                trace = await tui.view_lines(client, state, 200)
                assert trace[0].startswith(f"trace {state.target}: tracing")

                await tui.execute(Command("stop", ("no-such-actor",)), client, state)
                assert state.status.startswith("stop failed: 404"), state.status


async def test_the_web_page_is_served_at_admin(tmp_path: Path) -> None:
    async with running_server(make_config(tmp_path)) as (_server, info):
        status, headers, body = await http_request(info.port, "GET", "/admin/")
        assert status == 200, body[:200]
        assert headers["content-type"] == web.CONTENT_TYPE
        assert "connect-src 'self'" in headers["content-security-policy"]
        assert body == web.page()
        assert b"<title>tether console</title>" in body
