"""Keyed (ephemeral) frames: last write wins while a connection is backed up.

Real socket pairs with small kernel buffers make the connection back up; the
peer is a wsproto client, so every byte the server writes is parsed by an
independent implementation. One test runs the same over TLS.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable
from pathlib import Path

import pytest
import trio
import trio.testing
from wsproto.events import CloseConnection

from tether.testing.tls import OPENSSL, self_signed_certificate
from tether.testing.ws import fill_until_full
from tether.testing.ws import ws_pair as any_ws_pair
from tether.transport.websocket import (
    SendQueueFull,
    WebSocketConnection,
    encode_frame,
    run_websocket,
)

# Every connection here backs up after a few KiB; a reset reads as EOF.
ws_pair = functools.partial(any_ws_pair, small_buffers=True, reset_is_eof=True)


def back_up(connection: WebSocketConnection, size: int = 64 * 1024) -> bytes:
    """Send one ordered message the kernel cannot take at once; return its payload."""
    payload = b"B" * size
    connection.send(payload)
    assert connection.outbound_bytes > 0, "the kernel took the whole frame"
    return payload


def keyed(key: Hashable, value: int, size: int = 20) -> bytes:
    """A recognisable payload for ``key``'s ``value``."""
    return f"{key}={value}:".encode().ljust(size, b".")


# -- write-through -----------------------------------------------------------------


async def test_keyed_frames_write_through_when_nothing_is_queued() -> None:
    with trio.fail_after(5):
        async with ws_pair() as (connection, peer, _):
            connection.send(keyed("typing", 1), key="typing")
            connection.send_frame(encode_frame(keyed("typing", 2)), key="typing")
            stats = connection.statistics()
            # Both written at once, in the caller's task: nothing to coalesce.
            assert (stats.writes, stats.flushes, stats.coalesced) == (2, 0, 0)
            assert stats.frames_out == 2
            assert connection.outbound_bytes == 0
            assert await peer.messages(2) == [keyed("typing", 1), keyed("typing", 2)]


async def test_keyed_frame_larger_than_the_byte_bound_is_refused_either_way() -> None:
    async with ws_pair(max_outbound_bytes=64 * 1024) as (connection, _peer, _):
        with pytest.raises(SendQueueFull) as idle:
            connection.send(b"x" * 70_000, key="k")
        assert (idle.value.size, idle.value.limit, idle.value.unit) == (70_010, 65536, "bytes")
        back_up(connection, 32 * 1024)
        with pytest.raises(SendQueueFull) as backed_up:
            connection.send(b"x" * 70_000, key="k")
        assert (backed_up.value.size, backed_up.value.unit) == (70_010, "bytes")
        assert not connection.closed


# -- ordering and coalescing -------------------------------------------------------


async def test_ordered_frames_queue_and_arrive_in_order() -> None:
    with trio.fail_after(10):
        async with ws_pair() as (connection, peer, _):
            first = back_up(connection)
            writes = connection.statistics().writes
            queued = connection.outbound_bytes
            payloads = [bytes([n]) * 1000 for n in range(50)]
            for payload in payloads:
                connection.send(payload)
                queued += len(encode_frame(payload))
                assert connection.outbound_bytes == queued
            # No write-through behind a queue: that would overtake it.
            assert connection.statistics().writes == writes
            assert await peer.messages(51) == [first, *payloads]
            await trio.testing.wait_all_tasks_blocked()
            assert connection.outbound_bytes == 0


async def test_same_key_while_backed_up_arrives_once_with_the_last_value() -> None:
    with trio.fail_after(10):
        async with ws_pair() as (connection, peer, _):
            first = back_up(connection)
            queued = connection.outbound_bytes
            connection.send(b"ordered 1")
            connection.send(keyed("typing", 1), key="typing")
            connection.send(b"ordered 2")
            connection.send(keyed("typing", 2), key="typing")
            connection.send_frame(encode_frame(keyed("typing", 3)), key="typing")
            # Waiting keyed frames are not in the byte queue.
            assert connection.outbound_bytes == queued + 2 * len(encode_frame(b"ordered 1"))
            stats = connection.statistics()
            assert (stats.coalesced, stats.frames_out) == (2, 6)
            # After every ordered frame queued before it, once, with the last value;
            # nothing else comes before the next frame sent.
            assert await peer.messages(4) == [
                first,
                b"ordered 1",
                b"ordered 2",
                keyed("typing", 3),
            ]
            await trio.testing.wait_all_tasks_blocked()
            assert connection.outbound_bytes == 0
            connection.send(b"sentinel")
            assert await peer.next_message() == b"sentinel"
            assert connection.statistics().coalesced == 2


async def test_distinct_keys_all_arrive_with_their_last_values() -> None:
    keys: list[Hashable] = [("typing", f"room-{n}") for n in range(5)]
    keys += [("presence", n) for n in range(5)]
    with trio.fail_after(10):
        async with ws_pair() as (connection, peer, _):
            first = back_up(connection)
            for value in range(3):
                for key in keys:
                    connection.send(keyed(key, value), key=key)
            connection.send(b"ordered after")
            assert connection.statistics().coalesced == 2 * len(keys)
            received = await peer.messages(2 + len(keys))
            # Keyed frames follow every ordered frame taken in the same write, in
            # the order their keys first appeared.
            assert received == [first, b"ordered after", *(keyed(key, 2) for key in keys)]


async def test_keyed_frames_sent_during_a_write_wait_for_the_next_one() -> None:
    """A keyed frame never overtakes ordered frames queued before it, across writes."""
    with trio.fail_after(10):
        async with ws_pair() as (connection, peer, _):
            first = back_up(connection, 256 * 1024)
            connection.send(keyed("presence", 1), key="presence")
            # The peer reads part of the backlog until the flusher writes some
            # more, taking the keyed frame behind the queue.
            while connection.statistics().writes == 1:
                await peer.read_a_little()
                await trio.testing.wait_all_tasks_blocked()
            assert connection.outbound_bytes > 128 * 1024
            connection.send(b"ordered 1")
            connection.send(keyed("presence", 2), key="presence")
            connection.send(b"ordered 2")
            connection.send(keyed("presence", 3), key="presence")
            assert await peer.messages(5) == [
                first,
                keyed("presence", 1),
                b"ordered 1",
                b"ordered 2",
                keyed("presence", 3),
            ]
            assert connection.statistics().coalesced == 1


async def test_a_slow_reader_never_piles_up_keyed_frames() -> None:
    """Keyed frames taken into a write that is still queued hold the next ones back."""
    with trio.fail_after(10):
        async with ws_pair() as (connection, peer, _):
            first = back_up(connection, 256 * 1024)
            for value in range(1, 7):
                connection.send(keyed("presence", value), key="presence")
                # The peer reads a little until the flusher wrote once more; the
                # value it took first is still far back in the queue.
                writes = connection.statistics().writes
                while connection.statistics().writes == writes:
                    await peer.read_a_little()
                    await trio.testing.wait_all_tasks_blocked()
            assert connection.outbound_bytes > 128 * 1024
            assert await peer.messages(3) == [first, keyed("presence", 1), keyed("presence", 6)]
            assert connection.statistics().coalesced == 4


# -- bounds ------------------------------------------------------------------------


async def test_keyed_frames_never_fill_the_byte_queue() -> None:
    limit = 256 * 1024
    ordered = encode_frame(b"o" * 4000)
    with trio.fail_after(10):
        async with ws_pair(max_outbound_bytes=limit) as (connection, peer, _):
            first = back_up(connection, 16 * 1024)
            count = fill_until_full(connection, ordered)
            queued = connection.outbound_bytes
            # Far more keyed bytes than the byte bound: no refusal, no close.
            keys = [f"k{n}" for n in range(8)]
            for value in range(100):
                for key in keys:
                    connection.send(keyed(key, value, 3000), key=key)
            assert connection.outbound_bytes == queued
            assert not connection.closed
            # The peer reads the first message: the flusher takes the keyed frames
            # behind the queue. They are queued bytes now, still not counted
            # against the bound, so ordered frames fill it up again.
            assert await peer.next_message() == first
            await trio.testing.wait_all_tasks_blocked()
            more = fill_until_full(connection, ordered)
            assert more > 0
            assert connection.outbound_bytes > limit
            expected = [b"o" * 4000] * count + [keyed(key, 99, 3000) for key in keys]
            expected += [b"o" * 4000] * more
            assert await peer.messages(len(expected)) == expected


async def test_new_keys_past_max_ephemeral_keys_are_refused() -> None:
    with trio.fail_after(10):
        async with ws_pair(max_ephemeral_keys=3) as (connection, peer, _):
            first = back_up(connection)
            for key in ("a", "b", "c"):
                connection.send(keyed(key, 1), key=key)
            frames_out = connection.statistics().frames_out
            with pytest.raises(
                SendQueueFull,
                match=r"^outbound queue full: 3 ephemeral keys queued, 1 more would exceed 3$",
            ) as refused:
                connection.send(keyed("d", 1), key="d")
            assert (refused.value.queued, refused.value.limit) == (3, 3)
            assert refused.value.unit == "ephemeral keys"
            assert connection.statistics().frames_out == frames_out
            # Replacing a waiting key is never refused, bound reached or not.
            connection.send(keyed("a", 2), key="a")
            assert not connection.closed
            assert await peer.messages(4) == [
                first,
                keyed("a", 2),
                keyed("b", 1),
                keyed("c", 1),
            ]
            # Written: the bound applies to waiting keys only.
            await trio.testing.wait_all_tasks_blocked()
            back_up(connection)
            connection.send(keyed("d", 1), key="d")


# -- closing -----------------------------------------------------------------------


async def test_waiting_keyed_frames_are_dropped_by_a_local_close() -> None:
    with trio.fail_after(10):
        async with ws_pair() as (connection, peer, server_sock):
            first = back_up(connection)
            connection.send(b"ordered")
            for key in ("typing", "presence"):
                connection.send(keyed(key, 1), key=key)
            connection.close(4008, "slow consumer")
            connection.send(keyed("typing", 2), key="typing")  # ignored once closing
            stats = connection.statistics()
            assert (stats.coalesced, stats.frames_out) == (2, 5)

            async def peer_reads_then_answers() -> None:
                assert await peer.messages(2) == [first, b"ordered"]
                event = await peer.next_event()
                assert isinstance(event, CloseConnection)
                assert event.code == 4008
                await peer.send(event.response())
                # Nothing after the close frame, up to EOF.
                assert await peer.next_event() is None

            async def handler(ws: WebSocketConnection) -> None:
                assert await ws.receive() is None

            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer_reads_then_answers)
                await run_websocket(connection, handler)
            assert server_sock.fileno() == -1
            assert connection.outbound_bytes == 0


async def test_waiting_keyed_frames_are_dropped_when_the_peer_closes() -> None:
    with trio.fail_after(10):
        async with ws_pair() as (connection, peer, server_sock):
            first = back_up(connection)
            connection.send(keyed("typing", 1), key="typing")
            await peer.send(CloseConnection(code=1000, reason="bye"))
            assert await connection.receive() is None
            assert connection.close_code == 1000
            assert connection.statistics().coalesced == 1
            assert await peer.next_message() == first
            event = await peer.next_event()
            assert isinstance(event, CloseConnection)
            assert event.code == 1000
            assert await peer.next_event() is None
            await trio.testing.wait_all_tasks_blocked()
            assert server_sock.fileno() == -1


async def test_abort_clears_waiting_keyed_frames() -> None:
    async with ws_pair() as (connection, _peer, server_sock):
        back_up(connection)
        connection.send(keyed("typing", 1), key="typing")
        connection.abort()
        assert connection.statistics().coalesced == 1
        assert connection.outbound_bytes == 0
        assert server_sock.fileno() == -1
        connection.send(keyed("typing", 2), key="typing")  # a no-op once closed
        await trio.testing.wait_all_tasks_blocked()
        assert connection.statistics().coalesced == 1


# -- TLS ---------------------------------------------------------------------------


@pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")
async def test_keyed_frames_coalesce_behind_a_tls_write(tmp_path: Path) -> None:
    certificate = self_signed_certificate(tmp_path)
    tls = (certificate.server_context(), certificate.client_context())
    with trio.fail_after(10):
        async with ws_pair(tls=tls) as (connection, peer, _):
            # Idle: a keyed frame is queued for the flusher like any frame.
            connection.send(keyed("typing", 0), key="typing")
            assert connection.statistics().coalesced == 0
            big = b"B" * (256 * 1024)
            connection.send(big)
            await trio.testing.wait_all_tasks_blocked()
            # The flusher is stuck in one TLS write the peer does not read.
            assert connection.outbound_bytes > 0
            for value in (1, 2, 3):
                connection.send(keyed("typing", value), key="typing")
            connection.send(b"ordered")
            assert connection.statistics().coalesced == 2
            assert await peer.messages(4) == [
                keyed("typing", 0),
                big,
                b"ordered",
                keyed("typing", 3),
            ]
            # Keyed frames alone keep the flusher going after the write.
            connection.send(big)
            await trio.testing.wait_all_tasks_blocked()
            assert connection.outbound_bytes > 0
            connection.send(keyed("typing", 4), key="typing")
            connection.send(keyed("typing", 5), key="typing")
            assert await peer.messages(2) == [big, keyed("typing", 5)]
            await trio.testing.wait_all_tasks_blocked()
            assert connection.outbound_bytes == 0
            assert connection.statistics().coalesced == 3
