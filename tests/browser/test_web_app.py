"""The web app (GET /) in a real browser: two users in two headless Chromium contexts.

``app.spec.mjs`` drives the pages; this side runs a real server, prepares a
room with some history through the raw protocol, and drops the connections
when the script asks for it. Skipped when ``/usr/bin/chromium`` or
``tests/browser/node_modules`` is missing; ``.ci/run`` installs both.

``TETHER_UPDATE_SCREENSHOT=1`` writes the screenshots into ``docs/``
(``web-app-room.png``, ``web-app-call.png``); otherwise into the test's tmp dir.
"""

from __future__ import annotations

import os
import subprocess
from functools import partial
from pathlib import Path

import trio

from tether.actors import ActorDeadError, MailboxFull
from tether.actors.messages import CloseConnection
from tether.app import Server
from tether.testing.browser import browser_marks
from tether.testing.raw import make_room, raw_client
from tether.testing.server import make_config, running_server, token
from tether.transport.protocol.codes import DisconnectCode

HERE = Path(__file__).parent
DOCS = HERE.parent.parent / "docs"
#: Messages posted before the browsers start (alice and bob in turn, bob first):
#: more than one history page (50).
HISTORY = 60
#: Their texts, in a loop (they show on the screenshots).
LINES = (
    "Are we still on for Saturday?",
    "Yes! Train or car?",
    "Train, the 9:12 from the central station",
    "I'll book two seats",
    "Do we need anything for the hike?",
    "Water, sun cream and the good boots",
    "The forecast says sunny all day",
    "Perfect. Lunch at the lake?",
    "Sure, I'll bring sandwiches",
    "Great, see you at the station",
)

pytestmark = browser_marks(HERE)


def _shots(tmp_path: Path) -> Path:
    return DOCS if os.environ.get("TETHER_UPDATE_SCREENSHOT") == "1" else tmp_path


async def _prepare(port: int) -> str:
    """A private room of alice (owner) and bob with HISTORY messages, half from each."""
    async with raw_client(port, "alice", "setup") as alice, raw_client(port, "bob", "setup") as bob:
        room = await make_room(alice, "bob", name="Weekend trip")
        for n in range(1, HISTORY + 1):
            sender = bob if n % 2 else alice
            text = LINES[(n - 1) % len(LINES)]
            await sender.ok("msg.send", room=room, cid=f"h{n}", body={"text": text})
    return room


def _args(mode: str, port: int, room: str, tmp_path: Path) -> list[str]:
    url = f"http://127.0.0.1:{port}"
    return [mode, url, token("alice", name="Alice"), room, str(_shots(tmp_path))]


def _drop_connections(server: Server) -> int:
    """Close every client connection with 3003 (reconnect): what a server hiccup looks like."""
    assert server.ctx is not None
    dropped = 0
    for ref in server.ctx.system.registry.by_kind("connection"):
        try:
            ref.tell(CloseConnection(DisconnectCode.INTERNAL_ERROR, "dropped by the test"))
            dropped += 1
        except (ActorDeadError, MailboxFull):
            continue
    return dropped


async def _run_spec(server: Server, args: list[str], timeout: float) -> str:
    """Run app.spec.mjs; answer its DROP request; return its output (asserting PASS)."""
    output: list[str] = []
    command = ["node", str(HERE / "app.spec.mjs"), *args]
    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                partial(
                    trio.run_process,
                    command,
                    cwd=HERE,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    check=False,
                )
            )
            assert process.stdout is not None
            assert process.stdin is not None
            pending = b""
            while chunk := await process.stdout.receive_some():
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    line = raw.decode(errors="replace")
                    output.append(line)
                    if line.strip() == "DROP":
                        # Two browsers, three tabs: two connections.
                        assert _drop_connections(server) == 2
                        await process.stdin.send_all(b"dropped\n")
            output.append(pending.decode(errors="replace"))
            await process.wait()
    text = "\n".join(output)
    print(text)  # the steps, shown by pytest -s or on failure
    assert process.returncode == 0, text
    assert text.rstrip().endswith("PASS"), text
    return text


async def test_app_helpers_under_node() -> None:
    """format.js (receipt states, presence text, ...) under Node's test runner."""
    result = await trio.run_process(
        ["node", "--test", str(HERE / "app_format.test.mjs")],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output
    assert "# fail 0" in output, output


async def test_chat_presence_receipts_and_reconnect(tmp_path: Path) -> None:
    # A short offline grace (at least two heartbeats) so that the closed page
    # shows offline quickly; dev mode so that bob signs in with a name.
    config = make_config(
        tmp_path, dev=True, heartbeat_interval=1.0, heartbeat_timeout=5.0, offline_grace=3.0
    )
    async with running_server(config) as (server, info):
        room = await _prepare(info.port)
        await _run_spec(
            server,
            _args("chat", info.port, room, tmp_path),
            timeout=180,
        )
    assert (_shots(tmp_path) / "web-app-room.png").stat().st_size > 10_000


async def test_call_both_decode_video(tmp_path: Path) -> None:
    config = make_config(tmp_path, dev=True, media_workers=1, media_udp_port=0)
    async with running_server(config) as (server, info):
        room = await _prepare(info.port)
        await _run_spec(
            server,
            _args("call", info.port, room, tmp_path),
            timeout=180,
        )
    assert (_shots(tmp_path) / "web-app-call.png").stat().st_size > 10_000
