"""The ``tether`` command as an operator runs it: real processes, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tether.bench._harness import free_port
from tether.client import connect


def tether(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tether", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "TETHER_LOG_LEVEL": "INFO"},
    )


def test_db_upgrade_and_token(tmp_path: Path) -> None:
    result = tether("db", "upgrade", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "database at revision" in result.stdout
    assert (tmp_path / "tether-data" / "tether.db").exists()
    token = tether("token", "--user", "alice", "--name", "Alice", cwd=tmp_path)
    assert token.returncode == 0, token.stderr
    assert token.stdout.count(".") == 2  # a JWT
    bad = tether("token", "--user", "has space", cwd=tmp_path)
    assert bad.returncode == 2
    assert "sub must not contain whitespace" in bad.stderr


def test_configuration_errors_are_reported(tmp_path: Path) -> None:
    (tmp_path / "t.toml").write_text("heartbeat_interval = 30\n")
    result = tether("serve", "--config", "t.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert "configuration error: offline_grace" in result.stderr


@pytest.mark.slow
async def test_serve_then_sigterm_shuts_down_gracefully(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(  # noqa: ASYNC220 - a real process is the point
        [sys.executable, "-m", "tether", "serve", "--port", str(port)],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        token = tether("token", "--user", "alice", cwd=tmp_path).stdout.strip()
        with trio.fail_after(30):
            while True:  # wait until it listens (the process starts in ~1 s)
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                except OSError:
                    await trio.sleep(0.05)
                    continue
                await stream.aclose()
                break
            async with connect(f"ws://127.0.0.1:{port}/ws", token, reconnect=False) as client:
                assert client.user == "alice"
                process.send_signal(signal.SIGTERM)
                closed = await client.wait_closed()
                assert (closed.code, closed.reconnect) == (3000, True)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        with process.stderr:
            log = process.stderr.read()
    assert "listening on ws://127.0.0.1" in log
    assert "shutting down gracefully" in log
    assert "tether stopped" in log
