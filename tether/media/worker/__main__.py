"""Media worker process: ``python -m tether.media.worker``.

::

    python -m tether.media.worker --port 40000 --bind 0.0.0.0 --announce 127.0.0.1
        [--announce 10.0.0.5 ...] [--stun stun:host:3478 ...]
        [--max-publish-bitrate 3000000] [--index 0]

Reads request frames (:mod:`tether.media.wire`) on stdin, writes responses and
events on stdout, logs to stderr. Exits with status 0 when stdin closes (after
closing every PeerConnection), 2 on a pipe protocol error, 3 when the pinned
aiortc/aioice internals are not what :mod:`compat` expects.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

from tether.media import wire
from tether.media.worker import compat, netmux, rpc
from tether.media.worker.router import Worker

log = logging.getLogger("tether.media.worker")

#: Requests handled concurrently; stdin is not read while this many are running.
MAX_IN_FLIGHT = 64
#: Bytes of output buffered towards the main process before events are dropped.
MAX_OUTPUT_BUFFER = 8 * 1024 * 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tether.media.worker")
    ap.add_argument("--port", type=int, default=40000, help="UDP port (0 = ephemeral)")
    ap.add_argument("--bind", default="0.0.0.0", help="address the UDP socket binds")
    ap.add_argument(
        "--announce", action="append", default=[], help="host candidate address (repeatable)"
    )
    ap.add_argument("--stun", action="append", default=[], help="stun:host[:port] (repeatable)")
    ap.add_argument("--max-publish-bitrate", type=int, default=3_000_000)
    ap.add_argument("--index", type=int, default=0, help="worker number (for logs)")
    args = ap.parse_args(argv)
    if not args.announce:
        # CALLS_SPEC: no announced address = this host's IPv4 addresses incl. 127.0.0.1
        args.announce = netmux.host_addresses() if args.bind in ("0.0.0.0", "") else [args.bind]
    return args


class _Output:
    """Frames towards the main process over the stdout pipe."""

    def __init__(self, transport: asyncio.WriteTransport) -> None:
        self._transport = transport
        self.dropped_events = 0

    def event(self, name: str, params: dict[str, Any]) -> None:
        if self._transport.is_closing():
            return
        if self._transport.get_write_buffer_size() > MAX_OUTPUT_BUFFER:
            self.dropped_events += 1
            return
        self._transport.write(wire.event(name, params))

    def response(self, request_id: Any, ok: bool, value: Any) -> None:
        if self._transport.is_closing():
            return
        if ok:
            frame = wire.result(request_id, value)
        else:
            frame = wire.error(request_id, value["code"], value["message"])
        self._transport.write(frame)


class _StdinProtocol(asyncio.Protocol):
    def __init__(self, server: _Server) -> None:
        self.server = server
        self.transport: asyncio.ReadTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.server.feed(data)

    def eof_received(self) -> bool | None:
        self.server.stop(0)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.stop(0)


class _Server:
    def __init__(self, worker: Worker, output: _Output) -> None:
        self.worker = worker
        self.output = output
        self.decoder = wire.FrameDecoder()
        self.stdin: _StdinProtocol | None = None
        self.in_flight: set[asyncio.Task[None]] = set()
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._paused = False

    def feed(self, data: bytes) -> None:
        try:
            messages = self.decoder.feed(data)
        except wire.WireError as exc:
            log.error("pipe protocol error: %s", exc)
            self.stop(2)
            return
        for message in messages:
            request_id = message.get("id")
            if not isinstance(request_id, int):
                log.error("request without an integer id: %r", message)
                self.stop(2)
                return
            task = asyncio.get_running_loop().create_task(
                self._handle(request_id, message.get("m"), message.get("p"))
            )
            self.in_flight.add(task)
            task.add_done_callback(self._finished)
        if len(self.in_flight) >= MAX_IN_FLIGHT and not self._paused and self.stdin:
            assert self.stdin.transport is not None
            self.stdin.transport.pause_reading()
            self._paused = True

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        if self._paused and len(self.in_flight) < MAX_IN_FLIGHT // 2 and self.stdin:
            assert self.stdin.transport is not None
            self.stdin.transport.resume_reading()
            self._paused = False

    async def _handle(self, request_id: int, method: Any, params: Any) -> None:
        ok, value = await rpc.dispatch(self.worker, method, params)
        try:
            self.output.response(request_id, ok, value)
        except wire.WireError as exc:
            self.output.response(request_id, False, {"code": "internal", "message": str(exc)})

    def stop(self, code: int) -> None:
        if not self.done.done():
            self.done.set_result(code)


async def run(args: argparse.Namespace) -> int:
    """Run the worker until stdin closes; return the exit status."""
    try:
        compat.check()
    except compat.CompatError as exc:
        log.critical("%s", exc)
        return 3
    loop = asyncio.get_running_loop()
    mux = netmux.UdpMux(args.announce)
    stun_servers = [netmux.parse_stun_url(u) for u in args.stun]
    await mux.start(args.bind, args.port)
    netmux.install(mux)
    # in the background: the worker answers worker.info while STUN servers are asked
    discovery = loop.create_task(mux.discover(stun_servers)) if stun_servers else None
    write_transport, _ = await loop.connect_write_pipe(
        asyncio.Protocol, os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    )
    output = _Output(write_transport)
    worker = Worker(mux, output.event, args.max_publish_bitrate)
    server = _Server(worker, output)
    stdin_protocol = _StdinProtocol(server)
    server.stdin = stdin_protocol
    await loop.connect_read_pipe(
        lambda: stdin_protocol, os.fdopen(os.dup(sys.stdin.fileno()), "rb", buffering=0)
    )
    worker.start()
    log.info(
        "worker %d listening on %s:%d announcing %s",
        args.index,
        args.bind,
        mux.port,
        ",".join(args.announce),
    )
    code = await server.done
    for task in list(server.in_flight):
        task.cancel()
    try:
        await asyncio.wait_for(worker.close(), 3.0)  # the pool kills after 5 s
    except TimeoutError:
        log.warning("closing PeerConnections timed out")
    if discovery is not None:
        discovery.cancel()
    mux.close()
    write_transport.close()
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("TETHER_WORKER_LOG", "WARNING").upper(),
        stream=sys.stderr,
        format=f"worker[{args.index}] %(levelname)s %(name)s: %(message)s",
    )
    profile_path = os.environ.get("TETHER_WORKER_PROFILE")
    if not profile_path:
        return asyncio.run(run(args))
    # cProfile of the whole run, written at exit (performance work only)
    import cProfile  # noqa: PLC0415 - only when profiling

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        return asyncio.run(run(args))
    finally:
        profiler.disable()
        profiler.dump_stats(profile_path)


if __name__ == "__main__":
    sys.exit(main())
