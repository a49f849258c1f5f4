"""The admin console page in a real browser (headless Chromium via playwright-core on node).

Skipped when ``/usr/bin/chromium`` or ``tests/browser/node_modules`` is missing;
``.ci/run`` installs both, so CI runs it.
"""

from __future__ import annotations

import os
from pathlib import Path

import trio

from tether.testing.browser import browser_marks
from tether.testing.raw import make_room, raw_client, text_push
from tether.testing.server import SECRET, make_config, running_server
from tether.transport.auth import mint_token

HERE = Path(__file__).parent
#: docs/console.png is refreshed only on request (TETHER_UPDATE_SCREENSHOT=1), so a
#: test run leaves the checkout as it was.
DOCS_SCREENSHOT = HERE.parent.parent / "docs" / "console.png"

pytestmark = browser_marks(HERE)


async def test_console_page_in_chromium(tmp_path: Path) -> None:
    async with running_server(make_config(tmp_path)) as (_server, info):
        async with raw_client(info.port, "alice", "laptop") as alice:
            async with raw_client(info.port, "bob", "phone") as bob:
                room = await make_room(alice, "bob", name="ops-room")
                # a room's actor runs while the room is in use: send to it
                await alice.ok("msg.send", room=room, cid="c1", body="hi")
                token = mint_token(SECRET.encode(), "ops", admin=True, ttl_s=3600)
                message = "console says hello"
                screenshot = tmp_path / "console.png"
                if os.environ.get("TETHER_UPDATE_SCREENSHOT") == "1":
                    screenshot = DOCS_SCREENSHOT
                with trio.fail_after(90):
                    result = await trio.run_process(
                        [
                            "node",
                            str(HERE / "console.spec.mjs"),
                            f"http://127.0.0.1:{info.port}",
                            token,
                            room,
                            message,
                            str(screenshot),
                        ],
                        cwd=HERE,
                        capture_stdout=True,
                        capture_stderr=True,
                        check=False,
                    )
                output = result.stdout.decode() + result.stderr.decode()
                assert result.returncode == 0, output
                assert output.rstrip().endswith("PASS"), output
                assert screenshot.stat().st_size > 10_000
                # the system message posted from the page reached both members
                for member in (alice, bob):
                    await text_push(member, message)
