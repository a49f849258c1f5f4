"""``tether console``'s pure parts (rendering, commands) and its HTTP client against a fake API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h11
import pytest
import trio

from tether.console import tui, web
from tether.console.tui import AdminClient, AdminError, Command, CommandError, ConsoleState

SUMMARY = {
    "server": "tether/0.1.0",
    "uptime_s": 3725,
    "kinds": {"connection": 2, "user": 2, "room": 1},
    "connections": 2,
    "users_online": 2,
    "rooms_active": 1,
    "draining": False,
}
ACTORS = {
    "actors": [
        {
            "urn": "room:r-1",
            "kind": "room",
            "key": "r-1",
            "mailbox": 7,
            "mailbox_peak": 12,
            "handled": 1500,
            "rate": 2.25,
            "failures": 1,
            "age_s": 61,
            "state": "running",
            "parent": None,
        },
        {
            "urn": "connection:c-9",
            "kind": "connection",
            "key": "c-9",
            "mailbox": 0,
            "mailbox_peak": 3,
            "handled": 40,
            "rate": 0.0,
            "failures": 0,
            "age_s": 5,
            "state": "running",
            "parent": "user:alice",
        },
    ],
    "total": 5,
}


def test_format_age() -> None:
    assert [tui.format_age(s) for s in (0, 42.9, 60, 423, 3725, 90061, None, -3)] == [
        "0s",
        "42s",
        "1m00s",
        "7m03s",
        "1h02m",
        "1d01h",
        "-",
        "0s",
    ]


def test_snapshot_has_header_and_rows_in_the_given_order() -> None:
    lines = tui.render_snapshot(SUMMARY, ACTORS, sort="mailbox", kind=None, width=200)
    assert lines[0] == "tether/0.1.0  up 1h02m  serving"
    assert lines[1] == "connections 2  users online 2  rooms active 1"
    assert lines[2] == "actors: connection=2  room=1  user=2"
    assert lines[3] == "sort: mailbox  filter: all"
    assert lines[4] == "showing 2 of 5 actors"
    table = lines[lines.index("") + 1 :]
    assert table[0].split() == [
        "URN", "KIND", "KEY", "MBOX", "PEAK", "HANDLED", "RATE", "FAIL", "AGE", "STATE"
    ]  # fmt: skip
    assert table[1].split() == [
        "room:r-1", "room", "r-1", "7", "12", "1500", "2.2", "1", "1m01s", "running"
    ]  # fmt: skip
    assert table[2].split()[:4] == ["connection:c-9", "connection", "c-9", "0"]
    # numbers are right-aligned under their titles
    assert table[0].index("MBOX") + len("MBOX") == table[1].index(" 7") + 2


def test_snapshot_marks_draining_and_cuts_to_width() -> None:
    long = dict(ACTORS["actors"][0], urn="room:" + "x" * 60)  # type: ignore[call-overload]
    lines = tui.render_snapshot(
        {**SUMMARY, "draining": True}, {"actors": [long]}, sort="rate", kind="room", width=50
    )
    assert "DRAINING" in lines[0]
    assert lines[3] == "sort: rate  filter: room"
    assert all(len(line) <= 50 for line in lines)
    assert lines[-1].startswith("…" + "x" * 27)


def test_empty_answers_render() -> None:
    lines = tui.render_snapshot({}, {}, width=80)
    assert lines[2] == "actors: no actors"
    assert lines[4] == "showing 0 of 0 actors"


def test_detail_renders_nested_json_and_waiting_on() -> None:
    payload = {
        "actor": ACTORS["actors"][0],  # type: ignore[index]
        "detail": {"members": ["alice", "bob"], "seq": 42, "subscribers": {"alice": 2}},
        "waiting_on": {"message": "Persist", "since_s": 1.5, "awaiting": "store"},
    }
    lines = tui.render_detail(payload)
    assert lines[0] == "actor room:r-1  (room r-1)"
    assert "waiting on: Persist for 1.5s, awaiting store" in lines
    assert lines[lines.index("detail:") + 1 :] == [
        "  members:",
        "    - alice",
        "    - bob",
        "  seq: 42",
        "  subscribers:",
        "    alice: 2",
    ]
    assert "waiting on: nothing" in tui.render_detail({"actor": {}, "waiting_on": None})


def test_trace_renders_messages() -> None:
    lines = tui.render_trace(
        "room:r-1",
        {
            "tracing": True,
            "until_s": 8,
            "messages": [
                {"ts": 0.25, "type": "Deliver", "repr": "Deliver(seq=3)", "duration_ms": 1.5}
            ],
        },
    )
    assert lines[0] == "trace room:r-1: tracing, 8s left, 1 messages"
    assert lines[-1].endswith("1.5  Deliver                  Deliver(seq=3)")
    assert ".250" in lines[-1]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", None),
        ("   ", None),
        ("q", Command("quit")),
        ("d room:r-1", Command("detail", ("room:r-1",))),
        ("d r-1", Command("detail", ("r-1",))),
        ("t room:r-1", Command("trace", ("room:r-1",))),
        ("t room:r-1 30", Command("trace", ("room:r-1", "30"))),
        ("k c-9", Command("disconnect", ("c-9",))),
        ("stop user:alice", Command("stop", ("user:alice",))),
        ("restart room:r-1", Command("restart", ("room:r-1",))),
        ("drain", Command("drain")),
        ("post r-1 hello   there, all", Command("post", ("r-1", "hello   there, all"))),
        ("s rate", Command("sort", ("rate",))),
        ("f room", Command("filter", ("room",))),
        ("f", Command("filter")),
        ("b", Command("back")),
        ("h", Command("help")),
    ],
)
def test_parse_command(line: str, expected: Command | None) -> None:
    assert tui.parse_command(line) == expected


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("zap", "unknown command 'zap'"),
        ("d", "usage: d <urn|key>"),
        ("d a b", "usage: d <urn|key>"),
        ("s colour", "sort by one of mailbox, handled, rate, age, failures"),
        ("t x soon", "seconds must be a number"),
        ("t x -1", "seconds must be positive"),
        ("post r-1", "usage: post <room> <text>"),
        ("drain now", "usage: drain"),
        ('d "unclosed', "No closing quotation"),
    ],
)
def test_parse_command_errors(line: str, message: str) -> None:
    with pytest.raises(CommandError, match=message):
        tui.parse_command(line)


def test_resolve_urn_by_urn_or_unique_key() -> None:
    actors: list[dict[str, Any]] = ACTORS["actors"]  # type: ignore[assignment]
    assert tui.resolve_urn("room:r-1", actors) == "room:r-1"
    assert tui.resolve_urn("c-9", actors) == "connection:c-9"
    assert tui.resolve_urn("nobody", actors) == "nobody"
    twice = [*actors, {"urn": "user:c-9", "key": "c-9"}]
    assert tui.resolve_urn("c-9", twice) == "c-9"  # ambiguous: left to the server


def test_resolve_token_order(tmp_path: Path) -> None:
    file = tmp_path / "t"
    file.write_text("  from-file \nsecond line\n")
    env = {"TETHER_ADMIN_TOKEN": "from-env"}
    assert tui.resolve_token("given", file, env) == "given"
    assert tui.resolve_token(None, file, env) == "from-file"
    assert tui.resolve_token(None, None, env) == "from-env"
    assert tui.resolve_token(None, None, {}) is None


def test_admin_client_rejects_other_schemes() -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        AdminClient("ftp://x", "t")
    assert AdminClient("127.0.0.1:9", "t").port == 9


def test_page_is_self_contained() -> None:
    html = web.page().decode("utf-8")
    assert html.startswith("<!doctype html>")
    assert "/admin/api/summary" in html
    assert "sessionStorage" in html
    # nothing is fetched from the network: no external scripts, styles, fonts or images
    for needle in ("http://", "https://", "<script src", "<link", "@import", "url("):
        assert needle not in html, needle
    assert "innerHTML" not in html  # API data is only ever set as text


# -- a fake admin API over real HTTP ----------------------------------------------


class FakeApi:
    """A tiny HTTP server answering canned JSON per (method, path); records requests."""

    def __init__(self, routes: dict[tuple[str, str], tuple[int, Any]]) -> None:
        self.routes = routes
        self.requests: list[tuple[str, str, str | None, Any]] = []
        self.port = 0

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self.handle, listeners)

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        body = b""
        async with stream:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            assert request is not None
            method, target = request.method.decode(), request.target.decode()
            auth = dict(request.headers).get(b"authorization")
            self.requests.append(
                (
                    method,
                    target,
                    auth.decode() if auth else None,
                    json.loads(body) if body else None,
                )
            )
            status, payload = self.routes.get(
                (method, target), (404, {"error": "no", "code": "not_found"})
            )
            raw = json.dumps(payload).encode()
            headers = [("Content-Type", "application/json"), ("Content-Length", str(len(raw)))]
            await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
            await stream.send_all(conn.send(h11.Data(data=raw)))
            await stream.send_all(conn.send(h11.EndOfMessage()))


async def test_once_and_commands_against_a_fake_api(nursery: trio.Nursery) -> None:
    api = FakeApi(
        {
            ("GET", "/admin/api/summary"): (200, SUMMARY),
            ("GET", "/admin/api/actors?sort=mailbox&limit=200"): (200, ACTORS),
            ("GET", "/admin/api/actors?sort=rate&limit=200&kind=room"): (
                200,
                {"actors": [], "total": 0},
            ),
            ("POST", "/admin/api/actors/connection:c-9/trace"): (200, {"tracing": True}),
            ("POST", "/admin/api/actors/room:r-1/stop"): (200, {"ok": True}),
            ("POST", "/admin/api/connections/c-9/disconnect"): (200, {"ok": True}),
            ("POST", "/admin/api/rooms/r%201/message"): (200, {"ok": True}),
            ("POST", "/admin/api/drain"): (200, {"ok": True}),
            ("POST", "/admin/api/actors/a%2Fb/restart"): (
                409,
                {"error": "not restartable", "code": "conflict"},
            ),
        }
    )
    await nursery.start(api.serve)
    client = AdminClient(f"http://127.0.0.1:{api.port}", "tok")

    lines = await tui.run_once(client)
    assert lines[0].startswith("tether/0.1.0")
    assert any(line.split()[:2] == ["room:r-1", "room"] for line in lines)
    assert {r[2] for r in api.requests} == {"Bearer tok"}

    state = ConsoleState()
    state.actors = list(ACTORS["actors"])  # type: ignore[call-overload]
    await tui.execute(Command("trace", ("c-9", "5")), client, state)  # key resolved to its URN
    assert (state.view, state.target, state.status) == (
        "trace",
        "connection:c-9",
        "tracing connection:c-9 for 5s",
    )
    assert api.requests[-1][3] == {"seconds": 5.0}
    await tui.execute(Command("stop", ("room:r-1",)), client, state)
    assert state.status == "stop room:r-1: done"
    await tui.execute(Command("disconnect", ("c-9",)), client, state)
    assert state.status == "disconnected c-9"
    await tui.execute(Command("post", ("r 1", "hi all")), client, state)
    assert api.requests[-1][:2] == ("POST", "/admin/api/rooms/r%201/message")
    assert api.requests[-1][3] == {"body": "hi all"}
    await tui.execute(Command("restart", ("a/b",)), client, state)
    assert state.status == "restart failed: 409 conflict: not restartable"

    sent = len(api.requests)
    await tui.execute(Command("drain"), client, state)
    assert state.confirm == "drain"
    assert len(api.requests) == sent  # nothing sent before the answer
    await tui.confirm("n", client, state)
    assert (state.confirm, state.status, len(api.requests)) == (None, "drain cancelled", sent)
    await tui.execute(Command("drain"), client, state)
    await tui.confirm("y", client, state)
    assert state.status == "draining"
    assert api.requests[-1][:2] == ("POST", "/admin/api/drain")

    await tui.execute(Command("sort", ("rate",)), client, state)
    await tui.execute(Command("filter", ("room",)), client, state)
    await tui.execute(Command("back"), client, state)
    lines = await tui.view_lines(client, state, 120)
    assert "showing 0 of 0 actors" in lines
    await tui.execute(Command("quit"), client, state)
    assert not state.running


async def test_api_errors_and_unreachable(nursery: trio.Nursery) -> None:
    api = FakeApi(
        {("GET", "/admin/api/summary"): (401, {"error": "bad token", "code": "unauthorized"})}
    )
    await nursery.start(api.serve)
    with pytest.raises(AdminError, match="401 unauthorized: bad token"):
        await tui.run_once(AdminClient(f"http://127.0.0.1:{api.port}", "nope"))
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    closed_port = listener.socket.getsockname()[1]
    await listener.aclose()
    with pytest.raises(AdminError) as info:
        await tui.run_once(AdminClient(f"http://127.0.0.1:{closed_port}", "t"))
    assert info.value.status == 0
