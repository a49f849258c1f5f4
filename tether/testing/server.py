"""Run a real tether server inside a test (real sockets, real SQLite).

Used by tether's own end-to-end tests and meant for plugin and client authors
too: ``running_server(make_config(tmp_path))`` serves on a free loopback port
with a known secret, and ``token(user)`` mints tokens it accepts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from tether.app import Server, ServerInfo
from tether.config import ServerConfig
from tether.media.pool import MediaPool
from tether.media.testing.fake_worker import fake_command
from tether.transport.auth import mint_token

#: The token secret of servers made by :func:`make_config` (tests only).
SECRET = "tether-testing-secret-not-for-production"


def make_config(data_dir: Path, **overrides: Any) -> ServerConfig:
    """A config for an in-process test server on a free loopback port.

    Calls are off (``media_workers=0``) unless the overrides ask for workers.
    """
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "data_dir": data_dir,
        "secret": SECRET,
        "heartbeat_interval": 10.0,
        "heartbeat_timeout": 25.0,
        "offline_grace": 30.0,
        "media_workers": 0,
    }
    values.update(overrides)
    return ServerConfig(**values)


def token(user: str, *, name: str | None = None, ttl: float | None = 3600) -> str:
    """A valid client token for the test servers."""
    return mint_token(SECRET.encode(), user, name=name, ttl_s=ttl)


def fake_media_pool(config: ServerConfig, workers: int) -> MediaPool:
    """A ``media_pool_factory`` for :func:`running_server`: fake workers, no media.

    Each worker is ``tether.media.testing.fake_worker`` (canned SDP, killable),
    with short restart backoff so crash tests run quickly.
    """
    return MediaPool(workers, command=fake_command, backoff=(0.05, 0.5))


@asynccontextmanager
async def running_server(
    config: ServerConfig,
    *,
    media_pool_factory: Callable[[ServerConfig, int], MediaPool] | None = None,
) -> AsyncIterator[tuple[Server, ServerInfo]]:
    """Run a server for the block; shut it down gracefully afterwards.

    ``media_pool_factory`` replaces the real media workers (see
    :func:`fake_media_pool`); it matters only when ``config.media_workers`` ≠ 0.
    """
    server = Server(config, media_pool_factory=media_pool_factory)
    async with trio.open_nursery() as nursery:
        info: ServerInfo = await nursery.start(_run, server)
        try:
            yield server, info
        finally:
            server.request_shutdown()


async def _run(server: Server, *, task_status: Any) -> None:
    await server.run(task_status=task_status)
