"""MediaPool: the main process's side of the media workers (trio only).

The pool spawns N worker processes (``python -m tether.media.worker ...``),
talks to each over its stdin/stdout with the framing of
:mod:`tether.media.wire`, and supervises them:

* requests carry ids and get exactly one outcome: the result, a
  :class:`MediaError` (the worker answered an error, with its code), or a
  :class:`MediaUnavailable` (no live worker, too many requests in flight, no
  answer within the timeout, or the worker died meanwhile);
* every router (one per call) is placed on the least-loaded live worker and
  has an *owner* (anything with ``tell``, normally a CallActor's ref): the
  worker's events about that router are told to it as :class:`MediaEvent`,
  and when the worker dies each owner on it is told :class:`WorkerLost`
  (the router is gone; open a fresh one);
* a worker that exits or breaks the framing is restarted, with exponential
  backoff while it keeps dying young;
* shutdown (cancel :meth:`MediaPool.run`) closes each worker's stdin, waits
  up to ``stop_timeout`` for it to exit, then kills it.

Nothing here imports asyncio or aiortc: those live in the worker processes.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import trio

from tether.media import wire

if TYPE_CHECKING:
    from tether.config import ServerConfig

log = logging.getLogger("tether.media.pool")

__all__ = [
    "MediaError",
    "MediaEvent",
    "MediaPool",
    "MediaUnavailable",
    "Owner",
    "WorkerLost",
    "default_worker_count",
    "worker_command",
]

#: Seconds a request may wait for its answer before :class:`MediaUnavailable`.
REQUEST_TIMEOUT_S = 10.0
#: Requests in flight per worker; one more is refused at once (backpressure
#: for signaling floods, and the pending table stays bounded).
MAX_PENDING = 1024
#: Restart backoff: first delay, cap; a worker that ran this long resets it.
BACKOFF_FIRST_S = 0.25
BACKOFF_MAX_S = 30.0
BACKOFF_RESET_AFTER_S = 30.0
#: Seconds a worker has to answer ``worker.info`` after it was spawned.
START_TIMEOUT_S = 20.0
#: Seconds a worker has to exit after its stdin closed, before it is killed.
STOP_TIMEOUT_S = 5.0
#: Seconds between two ``worker.stats`` polls of each live worker (for
#: ``/metrics`` and the console; the request costs the worker microseconds).
STATS_INTERVAL_S = 5.0
#: The counters of ``worker.stats`` that ``/metrics`` exports (cumulative
#: over restarts: a dead process's last figures are carried over).
STATS_COUNTERS = (
    "cpu_s",
    "rx_packets",
    "tx_packets",
    "rx_bytes",
    "tx_bytes",
    "rtx_sent",
    "nacks_received",
    "plis_sent",
    "hook_errors",
    "dropped_packets",
)
_READ_CHUNK = 65536


class MediaUnavailable(Exception):
    """No worker could handle the request now (temporary: retry later)."""


class MediaError(Exception):
    """The worker answered the request with an error.

    Attributes:
        code: the wire error code: ``bad_request``, ``bad_sdp``, ``not_found``
            or ``internal`` (other strings are passed through as sent).
        message: the worker's explanation.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Owner(Protocol):
    """Who is told about a router: ``tell`` must not block (an ActorRef's does not)."""

    def tell(self, message: Any) -> None:
        """Deliver ``message`` (may raise if the owner is gone or full)."""
        ...


@dataclass(frozen=True, slots=True)
class MediaEvent:
    """A worker event about ``router`` (``name``: transport, speaker, layers)."""

    router: str
    name: str
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WorkerLost:
    """The worker hosting ``router`` died: the router and its transports are gone."""

    router: str
    worker: int


def worker_command(config: ServerConfig, index: int) -> list[str]:
    """The command line of worker ``index`` for this configuration (see CALLS_SPEC)."""
    port = config.media_udp_port + index if config.media_udp_port else 0
    argv = [
        sys.executable,
        "-m",
        "tether.media.worker",
        "--port",
        str(port),
        "--bind",
        config.media_bind_address,
        "--max-publish-bitrate",
        str(config.media_max_publish_bitrate),
        "--index",
        str(index),
    ]
    for address in config.media_announced_addresses:
        argv += ["--announce", address]
    for server in config.media_stun_servers:
        argv += ["--stun", server]
    return argv


@dataclass(slots=True)
class _Slot:
    """One request waiting for its answer."""

    done: trio.Event = field(default_factory=trio.Event)
    result: Any = None
    error: BaseException | None = None


@dataclass(slots=True)
class _Router:
    worker: _Worker
    owner: Owner


class _Worker:
    """One worker slot: its current process (if any) and what it hosts."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: trio.Process | None = None
        self.live = False
        self.info: dict[str, Any] = {}
        self.pending: dict[int, _Slot] = {}
        self.routers: set[str] = set()
        self.send_lock = trio.Lock()
        self.restarts = 0
        self.started_at = 0.0
        #: The newest ``worker.stats`` answer of the running process.
        self.stats: dict[str, Any] = {}
        #: Counters of earlier processes of this slot (carried over restarts).
        self.carried: dict[str, float] = dict.fromkeys(STATS_COUNTERS, 0.0)

    def fail_pending(self, reason: str) -> None:
        pending, self.pending = self.pending, {}
        for slot in pending.values():
            slot.error = MediaUnavailable(reason)
            slot.done.set()


class MediaPool:
    """Spawns and supervises ``workers`` media worker processes (see the module docstring).

    Args:
        workers: how many processes (≥ 1).
        command: worker index → argv of that worker (see :func:`worker_command`).
        request_timeout: seconds a request waits for its answer.
        max_pending: requests in flight per worker.
        stop_timeout: seconds a worker has to exit once its stdin is closed.
        backoff: (first, max) restart delays in seconds.
        stats_interval: seconds between two ``worker.stats`` polls of a live worker.
    """

    def __init__(
        self,
        workers: int,
        *,
        command: Callable[[int], Sequence[str]],
        request_timeout: float = REQUEST_TIMEOUT_S,
        max_pending: int = MAX_PENDING,
        stop_timeout: float = STOP_TIMEOUT_S,
        backoff: tuple[float, float] = (BACKOFF_FIRST_S, BACKOFF_MAX_S),
        stats_interval: float = STATS_INTERVAL_S,
    ) -> None:
        if workers < 1:
            raise ValueError(f"Expected at least 1 worker, got {workers}")
        if max_pending < 1 or not request_timeout > 0:
            raise ValueError("Expected max_pending >= 1 and a positive request_timeout")
        self._command = command
        self._workers = [_Worker(i) for i in range(workers)]
        self._routers: dict[str, _Router] = {}
        self._ids = itertools.count(1)
        self._live_changed = trio.Event()
        self.request_timeout = request_timeout
        self.max_pending = max_pending
        self.stop_timeout = stop_timeout
        self.backoff = backoff
        self.stats_interval = stats_interval
        #: Worker events with no owner (an unknown or closed router).
        self.orphan_events = 0

    @classmethod
    def from_config(cls, config: ServerConfig, workers: int) -> MediaPool:
        """A pool of ``workers`` real workers configured by ``config``."""
        return cls(workers, command=lambda index: worker_command(config, index))

    # -- running ------------------------------------------------------------------
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run the workers until cancelled; then stop them (bounded, shielded).

        ``task_status.started()`` is called as soon as the workers are being
        spawned: the server does not wait for them (:meth:`wait_ready` does;
        :meth:`open_router` can wait for a live worker).
        """
        async with trio.open_nursery() as nursery:
            for worker in self._workers:
                nursery.start_soon(self._supervise, worker)
            task_status.started()

    async def _poll_stats(self, worker: _Worker) -> None:
        """Refresh ``worker.stats`` every ``stats_interval`` while this process lives."""
        while True:
            try:
                stats = await self.request(worker.index, "worker.stats", {})
            except (MediaError, MediaUnavailable) as exc:
                log.debug("media worker %d: stats not available: %r", worker.index, exc)
            else:
                if isinstance(stats, dict):
                    worker.stats = stats
            await trio.sleep(self.stats_interval)

    def counters(self) -> dict[str, float]:
        """Each of :data:`STATS_COUNTERS` summed over all workers and their restarts.

        As fresh as the last poll (at most :data:`STATS_INTERVAL_S` old).
        """
        totals = dict.fromkeys(STATS_COUNTERS, 0.0)
        for worker in self._workers:
            for name in STATS_COUNTERS:
                value = worker.stats.get(name, 0)
                current = float(value) if isinstance(value, int | float) else 0.0
                totals[name] += worker.carried[name] + current
        return totals

    async def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Return once every worker is live.

        Raises:
            MediaUnavailable: not all became live within ``timeout`` seconds.
        """
        with trio.move_on_after(timeout):
            while not all(w.live for w in self._workers):
                await self._wait_change()
            return
        raise MediaUnavailable(f"not every media worker started within {timeout}s")

    async def _wait_change(self) -> None:
        await self._live_changed.wait()

    def _changed(self) -> None:
        self._live_changed.set()
        self._live_changed = trio.Event()

    async def _supervise(self, worker: _Worker) -> None:
        delay = self.backoff[0]
        while True:
            worker.started_at = trio.current_time()
            try:
                await self._run_process(worker)
            except OSError as exc:
                log.error("media worker %d could not start: %r", worker.index, exc)
            self._lost(worker)
            if trio.current_time() - worker.started_at >= BACKOFF_RESET_AFTER_S:
                delay = self.backoff[0]
            log.warning("media worker %d: restarting in %.2fs", worker.index, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, self.backoff[1])
            worker.restarts += 1

    async def _run_process(self, worker: _Worker) -> None:
        """Spawn the worker, serve its pipe until it ends; always leaves no process behind."""
        process = await trio.lowlevel.open_process(
            list(self._command(worker.index)), stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        worker.process = process
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read, worker, process, nursery.cancel_scope)
                if await self._handshake(worker, process, nursery.cancel_scope):
                    nursery.start_soon(self._poll_stats, worker)
        finally:
            worker.live = False
            worker.fail_pending("media worker lost")
            with trio.CancelScope(shield=True):
                await self._stop_process(process)

    async def _handshake(
        self, worker: _Worker, process: trio.Process, scope: trio.CancelScope
    ) -> bool:
        """Ask ``worker.info``; mark the worker live (True), or end its scope (False)."""
        try:
            with trio.fail_after(START_TIMEOUT_S):
                info = await self._send_request(worker, "worker.info", {}, starting=True)
        except (trio.TooSlowError, MediaError, MediaUnavailable) as exc:
            log.error("media worker %d did not start: %r", worker.index, exc)
            scope.cancel()
            return False
        worker.info = info if isinstance(info, dict) else {}
        worker.live = True
        self._changed()
        log.info(
            "media worker %d up: pid %s, port %s",
            worker.index,
            process.pid,
            worker.info.get("port"),
        )
        return True

    async def _read(self, worker: _Worker, process: trio.Process, scope: trio.CancelScope) -> None:
        """Read frames until EOF or a framing error; then end the process's scope."""
        decoder = wire.FrameDecoder()
        assert process.stdout is not None
        try:
            while True:
                try:
                    data = await process.stdout.receive_some(_READ_CHUNK)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    log.warning("media worker %d: pipe closed", worker.index)
                    return
                try:
                    messages = decoder.feed(bytes(data))
                except wire.WireError as exc:
                    log.error("media worker %d: broken pipe framing: %s", worker.index, exc)
                    return
                for message in messages:
                    self._on_message(worker, message)
        finally:
            scope.cancel()

    def _on_message(self, worker: _Worker, message: dict[str, Any]) -> None:
        if "ev" in message:
            self._on_event(worker, message)
            return
        slot = worker.pending.pop(message.get("id"), None)  # type: ignore[arg-type]
        if slot is None:
            log.debug("media worker %d: answer to no request: %r", worker.index, message)
            return
        error = message.get("e")
        if isinstance(error, dict):
            slot.error = MediaError(str(error.get("code")), str(error.get("message", "")))
        else:
            slot.result = message.get("r")
        slot.done.set()

    def _on_event(self, worker: _Worker, message: dict[str, Any]) -> None:
        params = message.get("p")
        name = message.get("ev")
        router_id = params.get("router") if isinstance(params, dict) else None
        entry = self._routers.get(router_id) if isinstance(router_id, str) else None
        if entry is None or entry.worker is not worker or not isinstance(name, str):
            self.orphan_events += 1
            return
        assert isinstance(params, dict)
        _tell(entry.owner, MediaEvent(router_id, name, params))  # type: ignore[arg-type]

    async def _stop_process(self, process: trio.Process) -> None:
        """Close stdin, wait up to ``stop_timeout``, then kill; reap it."""
        if process.stdin is not None:
            with contextlib.suppress(trio.BrokenResourceError):
                await process.stdin.aclose()
        with trio.move_on_after(self.stop_timeout):
            await process.wait()
        if process.returncode is None:
            log.warning("media worker pid %s did not exit: killing it", process.pid)
            process.kill()
            await process.wait()
        if process.stdout is not None:
            # Closed here, not left to the garbage collector: a server whose
            # workers restart must not accumulate pipe descriptors.
            await process.stdout.aclose()

    def _lost(self, worker: _Worker) -> None:
        """The worker's process is gone: fail its requests, tell its routers' owners."""
        worker.live = False
        worker.process = None
        worker.fail_pending("media worker lost")
        for name in STATS_COUNTERS:
            value = worker.stats.get(name, 0)
            if isinstance(value, int | float):
                worker.carried[name] += float(value)
        worker.stats = {}
        routers, worker.routers = worker.routers, set()
        for router_id in routers:
            entry = self._routers.pop(router_id, None)
            if entry is not None:
                _tell(entry.owner, WorkerLost(router_id, worker.index))
        self._changed()

    # -- requests -----------------------------------------------------------------
    async def request(self, worker_index: int, method: str, params: dict[str, Any]) -> Any:
        """Send ``method(params)`` to worker ``worker_index`` and return its result.

        Raises:
            MediaError: the worker answered an error.
            MediaUnavailable: the worker is not live, too many requests are in
                flight, no answer came within ``request_timeout``, or the
                worker died first.
        """
        return await self._send_request(self._workers[worker_index], method, params)

    async def _send_request(
        self, worker: _Worker, method: str, params: dict[str, Any], *, starting: bool = False
    ) -> Any:
        process = worker.process
        if process is None or process.stdin is None or not (worker.live or starting):
            raise MediaUnavailable(f"media worker {worker.index} is not running")
        if len(worker.pending) >= self.max_pending:
            raise MediaUnavailable(f"media worker {worker.index} is busy")
        request_id = next(self._ids)
        frame = wire.request(request_id, method, params)
        slot = _Slot()
        worker.pending[request_id] = slot
        try:
            with trio.move_on_after(self.request_timeout) as scope:
                async with worker.send_lock:
                    await self._write(worker, process, frame)
                await slot.done.wait()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise MediaUnavailable(f"media worker {worker.index} is gone") from exc
        finally:
            worker.pending.pop(request_id, None)
        if scope.cancelled_caught:
            raise MediaUnavailable(
                f"media worker {worker.index} did not answer {method!r} "
                f"within {self.request_timeout}s"
            )
        if slot.error is not None:
            raise slot.error
        return slot.result

    async def _write(self, worker: _Worker, process: trio.Process, frame: bytes) -> None:
        """Write one whole frame: never cut by a cancellation, bounded by the request timeout.

        A frame half written would desynchronize the pipe for every later
        request; a pipe that does not drain within the timeout means a stuck
        worker, which is killed (and restarted by its supervisor).
        """
        assert process.stdin is not None
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + self.request_timeout
            await process.stdin.send_all(frame)
        if scope.cancelled_caught:
            log.error("media worker %d: pipe stuck, killing it", worker.index)
            process.kill()
            raise MediaUnavailable(f"media worker {worker.index} is stuck")

    # -- routers ------------------------------------------------------------------
    def place(self) -> int:
        """The live worker with the fewest routers (lowest index on a tie).

        Raises:
            MediaUnavailable: no worker is live.
        """
        live = [w for w in self._workers if w.live]
        if not live:
            raise MediaUnavailable("no media worker is running")
        return min(live, key=lambda w: (len(w.routers), w.index)).index

    async def wait_live(self, timeout: float) -> None:
        """Return once some worker is live.

        Raises:
            MediaUnavailable: none became live within ``timeout`` seconds.
        """
        with trio.move_on_after(timeout):
            while not any(w.live for w in self._workers):
                await self._wait_change()
            return
        raise MediaUnavailable(f"no media worker became available within {timeout}s")

    async def open_router(self, router: str, owner: Owner, *, wait: float = 0.0) -> int:
        """Open ``router`` on the least-loaded live worker; its events go to ``owner``.

        Args:
            router: a router id not in use.
            owner: told :class:`MediaEvent` and :class:`WorkerLost` for this router.
            wait: seconds to wait for a live worker (e.g. one restarting).

        Returns:
            The index of the worker hosting it.

        Raises:
            MediaUnavailable, MediaError: as for :meth:`request`.
            ValueError: the router id is already open.
        """
        if router in self._routers:
            raise ValueError(f"Expected a new router id, got {router!r} (already open)")
        if wait > 0:
            await self.wait_live(wait)
        worker = self._workers[self.place()]
        # Registered before the request: events may follow the answer at once.
        self._routers[router] = _Router(worker, owner)
        worker.routers.add(router)
        try:
            await self._send_request(worker, "router.open", {"router": router})
        except BaseException:
            if self._routers.get(router) is not None and self._routers[router].worker is worker:
                del self._routers[router]
                worker.routers.discard(router)
            raise
        return worker.index

    async def call(self, router: str, method: str, params: dict[str, Any]) -> Any:
        """Send ``method`` to the worker hosting ``router`` (``params`` get ``router`` added).

        Raises:
            MediaUnavailable: the router is not open (or its worker was lost),
                or as for :meth:`request`.
            MediaError: the worker answered an error.
        """
        entry = self._routers.get(router)
        if entry is None:
            raise MediaUnavailable(f"router {router!r} is not open")
        return await self._send_request(entry.worker, method, {**params, "router": router})

    async def close_router(self, router: str) -> None:
        """Close ``router`` (idempotent); its owner is told nothing more."""
        entry = self._routers.pop(router, None)
        if entry is None:
            return
        entry.worker.routers.discard(router)
        try:
            await self._send_request(entry.worker, "router.close", {"router": router})
        except (MediaUnavailable, MediaError) as exc:
            # A lost worker took the router with it; anything else is logged.
            log.info("router %s not closed cleanly: %r", router, exc)

    def worker_of(self, router: str) -> int | None:
        """The index of the worker hosting ``router``, or None."""
        entry = self._routers.get(router)
        return None if entry is None else entry.worker.index

    # -- introspection --------------------------------------------------------------
    @property
    def size(self) -> int:
        """Number of worker slots."""
        return len(self._workers)

    @property
    def live_workers(self) -> int:
        """Workers running and answering."""
        return sum(1 for w in self._workers if w.live)

    def pid(self, worker_index: int) -> int | None:
        """The process id of worker ``worker_index``, or None while it is down."""
        process = self._workers[worker_index].process
        return None if process is None else process.pid

    def health(self) -> list[dict[str, Any]]:
        """One map per worker: index, live, pid, port, routers, pending, restarts, stats.

        ``stats`` is the worker's last ``worker.stats`` answer (empty while down).
        """
        return [
            {
                "index": w.index,
                "live": w.live,
                "pid": None if w.process is None else w.process.pid,
                "port": w.info.get("port"),
                "routers": len(w.routers),
                "pending": len(w.pending),
                "restarts": w.restarts,
                "stats": dict(w.stats),
            }
            for w in self._workers
        ]


def default_worker_count(setting: int) -> int:
    """Resolve ``media_workers``: -1 → one per spare core (at least 1); else as given."""
    if setting >= 0:
        return setting
    return max(1, (os.cpu_count() or 1) - 1)


def _tell(owner: Owner, message: Any) -> None:
    try:
        owner.tell(message)
    except Exception as exc:  # a gone or full owner: it no longer cares about the router
        log.info("media: %r not delivered to %r: %r", message, owner, exc)
