"""Benchmark plumbing: a server in its own process, load generators in others.

Each scenario starts a fresh ``tether serve`` on a free loopback port with a
throw-away data folder (or targets ``--url``), pins it to CPU 0 and the load
generator to CPU 1 where the machine has two cores, and reads the server's
CPU and RSS from the outside (psutil), so the server is measured, not the
load generator.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit; returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _pin(pid: int, cpu: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        if os.cpu_count() and os.cpu_count() >= 2:  # type: ignore[operator]
            os.sched_setaffinity(pid, {cpu})


@dataclass
class ServerProcess:
    """A running ``tether serve`` subprocess."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    secret: str
    data_dir: Path

    @property
    def url(self) -> str:
        """The WebSocket URL."""
        return f"ws://{self.host}:{self.port}/ws"

    @property
    def ps(self) -> psutil.Process:
        """psutil view of the server process."""
        return psutil.Process(self.process.pid)

    def rss(self) -> int:
        """Resident set size in bytes."""
        return int(self.ps.memory_info().rss)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds used so far."""
        t = self.ps.cpu_times()
        return float(t.user + t.system)


def _wait_healthy(host: str, port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} during start")
        try:
            with socket.create_connection((host, port), timeout=0.5) as s:
                s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("server did not become ready in time")


@contextlib.contextmanager
def run_server(
    settings: Mapping[str, object], *, cpu: int = 0, log: Path | None = None
) -> Iterator[ServerProcess]:
    """Start a server with ``settings`` (config keys) for the block; stop it after."""
    data_dir = Path(tempfile.mkdtemp(prefix="tether-bench-"))
    port = free_port()
    secret = secrets.token_hex(32)
    lines = ['host = "127.0.0.1"', f"port = {port}", f'secret = "{secret}"']
    lines.append(f'data_dir = "{data_dir}"')
    lines.append('log_level = "WARNING"')
    for key, value in settings.items():
        lines.append(f"{key} = {json.dumps(value)}")
    config = data_dir / "bench.toml"
    config.write_text("\n".join(lines) + "\n")
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "tether", "serve", "--config", str(config)],
        stdout=out,
        stderr=out,
        preexec_fn=raise_fd_limit,  # noqa: PLW1509 - only sets a limit
    )
    try:
        _pin(process.pid, cpu)
        _wait_healthy("127.0.0.1", port, process, 30.0)
        yield ServerProcess(process, "127.0.0.1", port, secret, data_dir)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if out is not subprocess.DEVNULL:
            out.close()  # type: ignore[union-attr]
        shutil.rmtree(data_dir, ignore_errors=True)


def start_worker(module: str, params: Mapping[str, Any], *, cpu: int = 1) -> subprocess.Popen[str]:
    """Start ``python -m module`` with ``params`` as JSON on its stdin."""
    process = subprocess.Popen(
        [sys.executable, "-m", module],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=raise_fd_limit,  # noqa: PLW1509
    )
    _pin(process.pid, cpu)
    assert process.stdin is not None
    process.stdin.write(json.dumps(params) + "\n")
    process.stdin.flush()
    return process


def read_json_lines(process: subprocess.Popen[str], timeout: float) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects a worker prints, one per line, until it exits."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    for line in process.stdout:
        if line.strip():
            yield json.loads(line)
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("worker ran past its deadline")
    process.wait(timeout=max(1.0, deadline - time.monotonic()))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return float(ordered[index])


def worker_params() -> dict[str, Any]:
    """In a worker: the parameters the orchestrator sent."""
    params: dict[str, Any] = json.loads(sys.stdin.readline())
    return params


def emit(obj: Mapping[str, Any]) -> None:
    """In a worker: report one JSON object to the orchestrator."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
