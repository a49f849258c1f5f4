"""``/metrics`` and ``/readyz`` over real HTTP on a real server (docs/operations.md, "Monitor").

The page is parsed with the strict parser of ``tether.testing.prometheus``
(HELP and TYPE before samples, cumulative histogram buckets up to ``+Inf``
with ``_sum`` and ``_count``); traffic is real WebSocket clients; the storage
outage is another SQLite connection holding the write lock (``BEGIN
EXCLUSIVE``), as in tests/fault/test_storage_outage.py.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import trio

from tether.bench.wsclient import LeanConnection
from tether.media.pool import MediaPool
from tether.media.testing.fake_worker import fake_command
from tether.testing import make_config, running_server
from tether.testing.prometheus import Page, parse_exposition
from tether.testing.raw import clients, make_room, msgs_through

#: Every family the page must have on a SQLite server (docs/operations.md lists them).
FAMILIES = {
    "tether_build_info": "gauge",
    "process_cpu_seconds_total": "counter",
    "process_resident_memory_bytes": "gauge",
    "process_start_time_seconds": "gauge",
    "tether_connections": "gauge",
    "tether_connections_opened_total": "counter",
    "tether_connections_closed_total": "counter",
    "tether_listener_connections": "gauge",
    "tether_http_requests_total": "counter",
    "tether_connections_refused_total": "counter",
    "tether_handshake_failures_total": "counter",
    "tether_users_online": "gauge",
    "tether_rooms_active": "gauge",
    "tether_sessions": "gauge",
    "tether_actors": "gauge",
    "tether_mailbox_messages": "gauge",
    "tether_mailbox_max_messages": "gauge",
    "tether_mailbox_peak_messages": "gauge",
    "tether_actor_failures_total": "counter",
    "tether_actor_dropped_messages_total": "counter",
    "tether_messages_in_total": "counter",
    "tether_messages_out_total": "counter",
    "tether_frames_in_total": "counter",
    "tether_frames_out_total": "counter",
    "tether_presence_events_total": "counter",
    "tether_replayed_messages_total": "counter",
    "tether_sessions_resumed_total": "counter",
    "tether_rooms_resumed_total": "counter",
    "tether_fanout_latency_seconds": "histogram",
    "tether_slow_consumers_total": "counter",
    "tether_heartbeat_timeouts_total": "counter",
    "tether_protocol_errors_total": "counter",
    "tether_auth_failures_total": "counter",
    "tether_plugin_failures_total": "counter",
    "tether_presence_writes_pending": "gauge",
    "tether_presence_write_failures_total": "counter",
    "tether_calls_active": "gauge",
    "tether_call_participants": "gauge",
    "tether_call_joins_total": "counter",
    "tether_call_restarts_total": "counter",
    "tether_media_workers": "gauge",
    "tether_media_workers_live": "gauge",
    "tether_media_worker_restarts_total": "counter",
    "tether_storage_healthy": "gauge",
    "tether_storage_queued_writes": "gauge",
    "tether_storage_batches_total": "counter",
    "tether_storage_batch_failures_total": "counter",
    "tether_storage_writes_committed_total": "counter",
    "tether_storage_commit_duration_seconds": "histogram",
    "tether_storage_batch_writes": "histogram",
}


async def http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """One ``GET`` on a fresh connection: (status, headers, body); checks Content-Length."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, status, _reason = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    assert int(headers["content-length"]) == len(body)
    return int(status), headers, body


async def scrape(port: int) -> tuple[Page, str]:
    status, headers, body = await http_get(port, "/metrics")
    assert status == 200, body
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = body.decode()
    return parse_exposition(text), text


async def test_metrics_page_is_valid_and_moves_with_traffic(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_server(make_config(tmp_path)) as (_, info):
            before, _ = await scrape(info.port)
            kinds = {name: f.kind for name, f in before.families.items()}
            assert FAMILIES.items() <= kinds.items()
            assert set(kinds) - set(FAMILIES) <= {"process_open_fds"}  # POSIX only
            assert before.value("tether_connections") == 0
            assert before.value("tether_messages_in_total") == 0
            assert before.histogram_count("tether_fanout_latency_seconds") == 0
            assert before.value("tether_storage_healthy") == 1

            refused = await LeanConnection.open("127.0.0.1", info.port, "mallory")
            try:
                await refused.hello("not-a-token")
                raise AssertionError("a bad token was welcomed")
            except OSError:
                pass
            finally:
                refused.close()

            async with clients(info.port, ("alice", "a"), ("bob", "b")) as (alice, bob):
                room = await make_room(alice, "bob")
                for i in range(1, 6):
                    await alice.ok("msg.send", room=room, cid=f"m{i}", body=f"hello {i}")
                assert await msgs_through(bob, room, 5) == [1, 2, 3, 4, 5]
                after, text = await scrape(info.port)

    assert after.value("tether_connections") == 2
    assert after.value("tether_connections_opened_total") == 3  # the refused one too
    assert after.value("tether_auth_failures_total") == 1
    assert after.value("tether_users_online") == 2
    assert after.value("tether_rooms_active") == 1
    assert after.value("tether_actors", kind="room") == 1
    assert after.value("tether_actors", kind="connection") == 2
    assert after.value("tether_sessions", state="live") == 2
    assert after.value("tether_sessions", state="dormant") == 0
    assert after.value("tether_messages_in_total") == 5
    assert after.value("tether_messages_out_total") == 5
    # every pushed message is observed once, after its push
    assert after.histogram_count("tether_fanout_latency_seconds") == 5
    assert 0 <= after.value("tether_fanout_latency_seconds_sum") < 5.0
    assert after.value("tether_frames_in_total") > before.value("tether_frames_in_total")
    batches = after.value("tether_storage_batches_total")
    assert batches > before.value("tether_storage_batches_total")
    # committed and failed transactions are both timed and sized
    timed = batches + after.value("tether_storage_batch_failures_total")
    assert after.histogram_count("tether_storage_commit_duration_seconds") == timed
    assert after.histogram_count("tether_storage_batch_writes") == timed
    assert after.value("tether_storage_writes_committed_total") >= 5 + 1  # messages, room
    assert after.value("tether_storage_healthy") == 1
    assert after.value("tether_http_requests_total") >= 2
    assert after.value("process_resident_memory_bytes") > 0
    # no user data: neither user ids, device ids nor room ids appear anywhere
    for secret in ("alice", "bob", "mallory", room):
        assert secret not in text


async def test_readyz_follows_storage_health(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with (
            running_server(make_config(tmp_path)) as (_, info),
            clients(info.port, ("alice", "a")) as [alice],
        ):
            room = await make_room(alice)
            status, _, body = await http_get(info.port, "/readyz")
            assert (status, body) == (200, b"ready\n")

            blocker = sqlite3.connect(tmp_path / "tether.db", timeout=0)
            try:
                blocker.execute("BEGIN EXCLUSIVE")  # storage is down from here
                await alice.fails("msg.send", 108, room=room, cid="during", body=1)
                status, _, body = await http_get(info.port, "/readyz")
                assert status == 503, body
                assert body.startswith(b"not ready: storage unavailable: "), body
                assert (await http_get(info.port, "/healthz"))[0] == 200  # still alive
                page, _ = await scrape(info.port)
                assert page.value("tether_storage_healthy") == 0
                assert page.value("tether_storage_batch_failures_total") >= 1
            finally:
                blocker.rollback()
                blocker.close()

            # No client writes anything: /readyz's own probe finds storage back.
            # Each attempt waits for that probe for at most half a second.
            for _attempt in range(10):
                status, _, body = await http_get(info.port, "/readyz")
                if status == 200:
                    break
            assert (status, body) == (200, b"ready\n")
            page, _ = await scrape(info.port)
            assert page.value("tether_storage_healthy") == 1
            retry = await alice.ok("msg.send", room=room, cid="during", body=1)
            assert retry["seq"] == 1


async def test_metrics_disabled_is_not_found(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_server(make_config(tmp_path, metrics_enabled=False)) as (_, info):
            status, _, _ = await http_get(info.port, "/metrics")
            assert status == 404
            assert (await http_get(info.port, "/healthz"))[0] == 200
            assert (await http_get(info.port, "/readyz"))[0] == 200


MEDIA_PACKET_FAMILIES = (
    "tether_media_cpu_seconds_total",
    "tether_media_received_packets_total",
    "tether_media_sent_packets_total",
    "tether_media_retransmitted_packets_total",
    "tether_media_keyframe_requests_total",
)


async def test_call_and_media_worker_metrics(tmp_path: Path) -> None:
    """Calls and worker families follow joins, leaves and a worker crash (fake workers)."""

    def pool(_config: Any, workers: int) -> MediaPool:
        return MediaPool(workers, command=fake_command, backoff=(0.05, 0.5), stats_interval=0.05)

    config = make_config(tmp_path, media_workers=1, media_udp_port=0)
    with trio.fail_after(40):
        async with (
            running_server(config, media_pool_factory=pool) as (server, info),
            clients(info.port, ("alice", "a"), ("bob", "b")) as [alice, bob],
        ):
            assert server.ctx is not None
            assert server.ctx.media is not None
            await server.ctx.media.wait_ready()
            room = await make_room(alice, "bob")
            await alice.ok("call.join", room=room)
            await bob.ok("call.join", room=room)
            page, _ = await scrape(info.port)
            assert page.value("tether_calls_active") == 1
            assert page.value("tether_call_participants") == 2
            assert page.value("tether_call_joins_total") == 2
            assert page.value("tether_media_workers") == 1
            assert page.value("tether_media_workers_live") == 1
            for name in MEDIA_PACKET_FAMILIES:
                assert page.families[name].kind == "counter"

            await bob.ok("call.leave", room=room)
            page, _ = await scrape(info.port)
            assert page.value("tether_call_participants") == 1

            pid = server.ctx.media.pid(0)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            await alice.push("call.restart", room=room)
            page, _ = await scrape(info.port)
            assert page.value("tether_media_worker_restarts_total") == 1
            assert page.value("tether_call_restarts_total") == 1
            await alice.ok("call.leave", room=room)
            page, _ = await scrape(info.port)
            assert page.value("tether_call_participants") == 0
