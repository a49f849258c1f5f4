"""Drive a real worker process over its pipe from asyncio (tests and tools).

``async with WorkerClient.spawn("--port", "0", "--announce", "127.0.0.1") as w:``
then ``await w.call("router.open", {"router": "r"})``; events accumulate in
``w.events`` (bounded) and can be awaited with :meth:`WorkerClient.wait_event`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

from tether.media import wire

MAX_EVENTS = 10_000


class WorkerCallError(Exception):
    """The worker answered a request with an error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class WorkerClient:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_EVENTS)
        self._next_id = 1
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._event_added = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    @contextlib.asynccontextmanager
    async def spawn(cls, *args: str) -> AsyncIterator[WorkerClient]:
        """Start ``python -m tether.media.worker *args``; stop it (stdin close) on exit."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tether.media.worker",
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        client = cls(process)
        try:
            yield client
        finally:
            await client.close()

    async def _read(self) -> None:
        decoder = wire.FrameDecoder()
        assert self.process.stdout is not None
        while True:
            data = await self.process.stdout.read(65536)
            if not data:
                break
            for message in decoder.feed(data):
                if "ev" in message:
                    self.events.append(message)
                    self._event_added.set()
                    continue
                future = self._pending.pop(message["id"], None)
                if future is None or future.done():
                    continue
                if "e" in message:
                    future.set_exception(
                        WorkerCallError(message["e"]["code"], message["e"]["message"])
                    )
                else:
                    future.set_result(message["r"])
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError("worker exited"))
        self._pending.clear()

    async def call(self, method: str, params: dict[str, Any], timeout: float = 20.0) -> Any:
        """Send a request; return its result or raise :class:`WorkerCallError`."""
        request_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        assert self.process.stdin is not None
        self.process.stdin.write(wire.request(request_id, method, params))
        await self.process.stdin.drain()
        return await asyncio.wait_for(future, timeout)

    async def wait_event(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        """The first accumulated event matching ``predicate`` (waits for it)."""
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                self._event_added.clear()
                await self._event_added.wait()

    async def close(self) -> int:
        """Close stdin and wait for the exit status."""
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()
        try:
            code = await asyncio.wait_for(self.process.wait(), 15.0)
        except TimeoutError:
            self.process.kill()
            code = await self.process.wait()
        await self._reader
        return code
