"""The JavaScript SDK (tether/web/sdk/) under Node's test runner, against a real server.

Starts a tether server, hands its WebSocket URL and tokens to ``node --test
tests/js/`` through the environment (``TETHER_URL``, ``TETHER_TOKENS``: a JSON map
of user → token) and fails with node's output when any JavaScript test fails.
Node 20.10+ provides the WebSocket class behind ``--experimental-websocket``, so
nothing is installed from npm for it; skipped only when ``node`` is missing.
The type check (``tsc``, the one devDependency in tests/js/package.json) is
skipped when ``npm ci --prefix tests/js`` was not run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import trio

from tether.testing.server import make_config, running_server, token

HERE = Path(__file__).parent
USERS = ("alice", "bob", "carol", "dave")
#: The whole node run; each JavaScript test bounds its own waits well below
#: (node's --test-timeout ends a stuck test first, with its output).
NODE_TIMEOUT_S = 150
NODE_TEST_TIMEOUT_MS = 60_000
#: Server settings the JavaScript tests rely on: fast heartbeats so that a
#: silent server is noticed within seconds (heartbeat + timeout = 4 s), and a
#: small replay so that a resume can come back incomplete and be paged.
SERVER_SETTINGS = {"heartbeat_interval": 1.0, "heartbeat_timeout": 3.0, "resume_max_replay": 10}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed"),
]


async def _node_supports_websocket() -> bool:
    check = "process.exit(typeof WebSocket === 'function' ? 0 : 1)"
    probe = await trio.run_process(
        ["node", "--experimental-websocket", "-e", check],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return probe.returncode == 0


async def test_js_sdk_under_node(tmp_path: Path) -> None:
    supported = await _node_supports_websocket()
    assert supported, "node lacks --experimental-websocket (Node 20.10+ needed)"
    tests = sorted(str(path) for path in HERE.glob("*.test.mjs"))
    assert tests, "no JavaScript tests found"
    log = tmp_path / "node-output.txt"
    async with running_server(make_config(tmp_path, **SERVER_SETTINGS)) as (_server, info):
        env = {
            **os.environ,
            "TETHER_URL": info.url,
            "TETHER_TOKENS": json.dumps(
                {
                    **{user: token(user, name=user.title()) for user in USERS},
                    # Expired beyond the server's clock skew tolerance (30 s).
                    "carol-expired": token("carol", ttl=-120),
                }
            ),
            "NODE_NO_WARNINGS": "1",
        }
        command = [
            "node",
            "--experimental-websocket",
            "--test",
            "--test-concurrency=1",
            f"--test-timeout={NODE_TEST_TIMEOUT_MS}",
            *tests,
        ]
        returncode: int | None = None
        with log.open("wb") as sink:
            # Output goes to a file so that it survives a kill on timeout.
            with trio.move_on_after(NODE_TIMEOUT_S):
                result = await trio.run_process(
                    command, env=env, stdout=sink, stderr=subprocess.STDOUT, check=False
                )
                returncode = result.returncode
    output = log.read_text(errors="replace")
    print(output)  # shown with pytest -s
    assert returncode is not None, f"node --test did not finish in {NODE_TIMEOUT_S}s:\n{output}"
    assert returncode == 0, f"node --test failed:\n{output}"


TSC = HERE / "node_modules" / "typescript" / "bin" / "tsc"


@pytest.mark.skipif(
    not TSC.exists(), reason="tests/js/node_modules missing (npm ci --prefix tests/js)"
)
async def test_typescript_declarations_and_jsdoc() -> None:
    """``index.d.ts`` types an app (types/usage.ts); the modules' JSDoc is strict-clean."""
    with trio.fail_after(120):
        result = await trio.run_process(
            ["node", str(TSC), "-p", str(HERE / "tsconfig.json")],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    output = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
    assert result.returncode == 0, f"tsc failed:\n{output}"
