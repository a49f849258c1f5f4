"""Run a real tether server inside a test (real sockets, real SQLite).

Used by tether's own end-to-end tests and meant for plugin and client authors
too: ``running_server(make_config(tmp_path))`` serves on a free loopback port
with a known secret, and ``token(user)`` mints tokens it accepts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from tether.app import Server, ServerInfo
from tether.config import ServerConfig
from tether.transport.auth import mint_token

#: The token secret of servers made by :func:`make_config` (tests only).
SECRET = "tether-testing-secret-not-for-production"


def make_config(data_dir: Path, **overrides: Any) -> ServerConfig:
    """A config for an in-process test server on a free loopback port."""
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "data_dir": data_dir,
        "secret": SECRET,
        "heartbeat_interval": 10.0,
        "heartbeat_timeout": 25.0,
        "offline_grace": 30.0,
    }
    values.update(overrides)
    return ServerConfig(**values)


def token(user: str, *, name: str | None = None, ttl: float | None = 3600) -> str:
    """A valid client token for the test servers."""
    return mint_token(SECRET.encode(), user, name=name, ttl_s=ttl)


@asynccontextmanager
async def running_server(config: ServerConfig) -> AsyncIterator[tuple[Server, ServerInfo]]:
    """Run a server for the block; shut it down gracefully afterwards."""
    server = Server(config)
    async with trio.open_nursery() as nursery:
        info: ServerInfo = await nursery.start(_run, server)
        try:
            yield server, info
        finally:
            server.request_shutdown()


async def _run(server: Server, *, task_status: Any) -> None:
    await server.run(task_status=task_status)
