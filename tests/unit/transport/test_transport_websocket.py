"""WebSocketConnection over a real socket pair, with a wsproto client as the peer.

The server end is a non-blocking stdlib socket, exactly as the server hands it
over after the upgrade; the peer is a plain wsproto client connection (masked
frames), so every byte the connection writes is checked by an independent
parser.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from wsproto.connection import Connection, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    TextMessage,
)

from tether.testing.ws import fill_until_full, ws_pair
from tether.transport.websocket import (
    SendQueueFull,
    WebSocketConnection,
    encode_frame,
    run_websocket,
)

# -- frames ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_encode_frame_is_one_complete_binary_frame(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    frame = encode_frame(payload)
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(frame)
    events = list(client.events())
    assert len(events) == 1
    (event,) = events
    assert isinstance(event, BytesMessage)
    assert event.data == payload
    assert event.message_finished
    assert frame.endswith(payload)


def test_encode_frame_header_lengths() -> None:
    assert encode_frame(b"abc") == b"\x82\x03abc"
    assert encode_frame(b"x" * 126)[:4] == b"\x82\x7e\x00\x7e"
    assert encode_frame(b"x" * 65536)[:10] == b"\x82\x7f" + (65536).to_bytes(8, "big")


# -- sending -----------------------------------------------------------------------


async def test_send_writes_through_without_a_task() -> None:
    with trio.fail_after(5):
        async with ws_pair() as (connection, peer, _):
            connection.send(b"hello")
            frame = encode_frame(b"world")
            connection.send_frame(frame)
            stats = connection.statistics()
            assert stats.writes == 2
            assert stats.flushes == 0
            assert stats.frames_out == 2
            assert stats.bytes_out == len(encode_frame(b"hello")) + len(frame)
            assert connection.outbound_bytes == 0
            assert await peer.next_message() == b"hello"
            assert await peer.next_message() == b"world"


async def test_queue_is_bounded_then_drains_in_order_when_the_peer_reads() -> None:
    limit = 64 * 1024
    frame_payloads = [bytes([n % 256]) * 4000 for n in range(1000)]
    with trio.fail_after(10):
        async with ws_pair(max_outbound_bytes=limit, small_buffers=True) as (connection, peer, _):
            accepted = 0
            refusal: SendQueueFull | None = None
            for payload in frame_payloads:
                before = connection.outbound_bytes
                try:
                    connection.send(payload)
                except SendQueueFull as exc:
                    refusal = exc
                    break
                accepted += 1
            assert refusal is not None, "the queue never filled up"
            # Nothing of the refused frame was queued.
            assert connection.outbound_bytes == before
            assert (refusal.queued, refusal.size, refusal.limit) == (before, 4 + 4000, limit)
            assert 0 < connection.outbound_bytes <= limit
            stats = connection.statistics()
            assert stats.flushes == 1
            assert stats.peak_queued_bytes == connection.outbound_bytes
            for payload in frame_payloads[:accepted]:
                assert await peer.next_message() == payload
            await trio.testing.wait_all_tasks_blocked()
            assert connection.outbound_bytes == 0


async def test_frame_larger_than_the_bound_is_refused() -> None:
    async with ws_pair(max_outbound_bytes=1000) as (connection, _peer, _):
        with pytest.raises(
            SendQueueFull,
            match=r"^outbound queue full: 0 bytes queued, 1004 more would exceed 1000$",
        ):
            connection.send(b"x" * 1000)
        assert connection.statistics().writes == 0


async def test_close_works_on_a_full_queue_and_follows_the_queued_frames() -> None:
    frame = encode_frame(b"z" * 4000)
    with trio.fail_after(10):
        async with ws_pair(max_outbound_bytes=32 * 1024, small_buffers=True) as (
            connection,
            peer,
            server_sock,
        ):
            count = fill_until_full(connection, frame)
            connection.close(4008, "slow consumer")
            assert connection.closed
            assert connection.close_code == 4008
            queued = connection.outbound_bytes
            assert queued > 32 * 1024 - len(frame)
            connection.send_frame(frame)  # ignored once closing
            assert connection.outbound_bytes == queued

            async def peer_reads_then_answers() -> None:
                for _ in range(count):
                    assert await peer.next_message() == b"z" * 4000
                event = await peer.next_event()
                assert isinstance(event, CloseConnection)
                assert (event.code, event.reason) == (4008, "slow consumer")
                await peer.send(event.response())
                await peer.read_until_eof()

            async def handler(ws: WebSocketConnection) -> None:
                assert await ws.receive() is None

            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer_reads_then_answers)
                await run_websocket(connection, handler)
            assert server_sock.fileno() == -1
            assert connection.close_code == 4008


async def test_write_error_closes_with_1006_without_raising() -> None:
    async with ws_pair() as (connection, peer, server_sock):
        peer.sock.close()
        connection.send(b"into the void")
        assert connection.closed
        assert connection.close_code == 1006
        assert server_sock.fileno() == -1
        assert await connection.receive() is None


async def test_flush_error_closes_with_1006() -> None:
    frame = encode_frame(b"q" * 4000)
    with trio.fail_after(5):
        async with ws_pair(max_outbound_bytes=64 * 1024, small_buffers=True) as (
            connection,
            peer,
            server_sock,
        ):
            fill_until_full(connection, frame)
            assert connection.statistics().flushes == 1
            peer.sock.close()
            await trio.testing.wait_all_tasks_blocked()
            assert connection.close_code == 1006
            assert connection.outbound_bytes == 0
            assert server_sock.fileno() == -1


async def test_pong_is_dropped_when_the_queue_is_full() -> None:
    frame = encode_frame(b"p" * 4000)
    with trio.fail_after(5):
        async with ws_pair(max_outbound_bytes=32 * 1024, small_buffers=True) as (
            connection,
            peer,
            _,
        ):
            fill_until_full(connection, frame)
            # Top the queue up with empty messages: no room left for a pong.
            fill_until_full(connection, encode_frame(b""))
            queued = connection.outbound_bytes
            assert queued >= 32 * 1024 - 1
            frames_out = connection.statistics().frames_out
            await peer.send(Ping(payload=b"anyone?"))
            await peer.send(BytesMessage(data=b"after the ping"))
            assert await connection.receive() == b"after the ping"
            assert connection.outbound_bytes == queued
            assert connection.statistics().frames_out == frames_out
            assert not connection.closed


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("short", "short"),
        ("a" * 200, "a" * 123),
        # 2-byte characters: 61 fit in 123 bytes, the 62nd would be split.
        ("é" * 100, "é" * 61),
        # 4-byte characters: 30 fit (120 bytes).
        ("\U0001f600" * 40, "\U0001f600" * 30),
    ],
)
async def test_close_reason_is_truncated_on_a_character_boundary(
    reason: str, expected: str
) -> None:
    with trio.fail_after(5):
        async with ws_pair() as (connection, peer, _):
            connection.close(4000, reason)
            assert connection.close_reason == expected
            assert len(expected.encode()) <= 123
            event = await peer.next_event()
            assert isinstance(event, CloseConnection)
            assert event.reason == expected


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 2000, 2999, 5000])
async def test_close_refuses_codes_that_may_not_be_sent(code: int) -> None:
    async with ws_pair() as (connection, _peer, _):
        with pytest.raises(
            ValueError,
            match=rf"^Expected a close code 1000-1003, 1007-1013 or 3000-4999, got {code}$",
        ):
            connection.close(code)
        assert not connection.closed


async def test_close_is_idempotent() -> None:
    with trio.fail_after(5):
        async with ws_pair() as (connection, peer, _):
            connection.close(4001, "first")
            connection.close(4002, "second")
            connection.close(1000)
            assert (connection.close_code, connection.close_reason) == (4001, "first")
            event = await peer.next_event()
            assert isinstance(event, CloseConnection)
            assert event.code == 4001
            assert connection.statistics().frames_out == 1


# -- receiving ---------------------------------------------------------------------


async def test_fragmented_message_is_reassembled_and_pings_answered() -> None:
    with trio.fail_after(5):
        async with ws_pair() as (connection, peer, _):
            await peer.send(BytesMessage(data=b"one ", message_finished=False))
            await peer.send(Ping(payload=b"p1"))
            await peer.send(BytesMessage(data=b"two ", message_finished=False))
            await peer.send(BytesMessage(data=b"three", message_finished=True))
            await peer.send(BytesMessage(data=b"next", message_finished=True))
            assert await connection.receive() == b"one two three"
            assert await connection.receive() == b"next"
            event = await peer.next_event()
            assert isinstance(event, Pong)
            assert event.payload == b"p1"
            assert connection.statistics().messages_in == 2


async def test_trailing_data_from_the_upgrade_is_delivered_first() -> None:
    client = Connection(ConnectionType.CLIENT)
    early = client.send(BytesMessage(data=b"early"))
    with trio.fail_after(5):
        async with ws_pair(trailing_data=early) as (connection, _peer, _):
            assert await connection.receive() == b"early"
            assert connection.statistics().bytes_in == len(early)


async def test_message_over_the_limit_closes_with_1009() -> None:
    with trio.fail_after(5):
        async with ws_pair(max_message_size=1000) as (connection, peer, server_sock):
            await peer.send(BytesMessage(data=b"x" * 600, message_finished=False))
            await peer.send(BytesMessage(data=b"x" * 600, message_finished=True))
            # Arrives after the server decided to close: discarded.
            await peer.send(BytesMessage(data=b"late"))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer.answer_close, 1009)
                assert await connection.receive() is None
            assert connection.close_code == 1009
            assert server_sock.fileno() == -1


async def test_text_message_closes_with_1003() -> None:
    with trio.fail_after(5):
        async with ws_pair() as (connection, peer, _):
            await peer.send(TextMessage(data="hello"))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer.answer_close, 1003)
                assert await connection.receive() is None
            assert connection.close_code == 1003


async def test_protocol_violation_closes_with_1002_without_waiting() -> None:
    with trio.fail_after(5):
        async with ws_pair() as (connection, peer, server_sock):
            # Client frames must be masked (RFC 6455 §5.1): this one is not.
            await peer.send_raw(b"\x82\x03abc")
            assert await connection.receive() is None
            assert connection.close_code == 1002
            event = await peer.next_event()
            assert isinstance(event, CloseConnection)
            assert event.code == 1002
            # Failing the connection does not wait for the peer's close frame.
            assert server_sock.fileno() == -1
            await peer.read_until_eof()


async def test_peer_initiated_close_is_echoed_and_the_socket_closed() -> None:
    with trio.fail_after(5):
        async with ws_pair() as (connection, peer, server_sock):
            await peer.send(BytesMessage(data=b"last"))
            await peer.send(CloseConnection(code=4000, reason="bye"))
            assert await connection.receive() == b"last"
            assert await connection.receive() is None
            assert (connection.close_code, connection.close_reason) == (4000, "bye")
            event = await peer.next_event()
            assert isinstance(event, CloseConnection)
            assert (event.code, event.reason) == (4000, "bye")
            assert server_sock.fileno() == -1
            assert await peer.next_event() is None
            connection.send(b"ignored")  # closed: a no-op, not an error
            assert await connection.receive() is None


async def test_eof_without_close_frame_gives_1006() -> None:
    with trio.fail_after(5):
        async with ws_pair() as (connection, peer, _):
            peer.sock.close()
            assert await connection.receive() is None
            assert connection.close_code == 1006
            assert connection.closed


async def test_close_from_another_task_ends_a_pending_receive_when_answered() -> None:
    with trio.fail_after(5):
        async with ws_pair() as (connection, peer, server_sock):
            results: list[bytes | None] = []

            async def receiver() -> None:
                results.append(await connection.receive())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receiver)
                await trio.testing.wait_all_tasks_blocked()
                connection.close(4003, "kicked")
                await peer.send(BytesMessage(data=b"in flight"))  # discarded
                await trio.testing.wait_all_tasks_blocked()
                assert results == []
                await peer.answer_close(4003)
            assert results == [None]
            assert server_sock.fileno() == -1


async def test_abort_from_another_task_ends_a_pending_receive() -> None:
    with trio.fail_after(5):
        async with ws_pair() as (connection, _peer, _):
            results: list[bytes | None] = []

            async def receiver() -> None:
                results.append(await connection.receive())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receiver)
                await trio.testing.wait_all_tasks_blocked()
                connection.abort()
            assert results == [None]
            assert connection.close_code == 1006


async def test_unanswered_close_ends_a_pending_receive_after_close_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with ws_pair(close_timeout=7.0) as (connection, _peer, server_sock):
        async with trio.open_nursery() as nursery:

            async def close_later() -> None:
                await trio.sleep(1.0)
                connection.close(4004, "no answer expected")

            nursery.start_soon(close_later)
            start = trio.current_time()
            assert await connection.receive() is None
            assert trio.current_time() - start == pytest.approx(8.0)
        assert server_sock.fileno() == -1
        assert connection.close_code == 4004


async def test_concurrent_receive_is_refused() -> None:
    with trio.fail_after(5):
        async with ws_pair() as (connection, _peer, _), trio.open_nursery() as nursery:
            nursery.start_soon(connection.receive)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(
                trio.BusyResourceError,
                match=r"^another task is already receiving on this WebSocket$",
            ):
                await connection.receive()
            connection.abort()


async def test_abort_drops_without_close_frame() -> None:
    with trio.fail_after(5):
        async with ws_pair() as (connection, peer, server_sock):
            connection.abort()
            connection.abort()
            assert connection.closed
            assert connection.close_code == 1006
            assert server_sock.fileno() == -1
            assert await peer.next_event() is None
            connection.close(1000)  # no-op once closed
            assert connection.close_code == 1006


async def test_handler_returning_closes_with_1000_and_waits_for_the_answer() -> None:
    with trio.fail_after(5):
        async with ws_pair() as (connection, peer, server_sock):

            async def handler(ws: WebSocketConnection) -> None:
                ws.send(b"bye")

            async def peer_side() -> None:
                assert await peer.next_message() == b"bye"
                event = await peer.next_event()
                assert isinstance(event, CloseConnection)
                assert event.code == 1000
                await trio.testing.wait_all_tasks_blocked()
                # The server waits for our answer before closing the socket.
                assert server_sock.fileno() != -1
                await peer.send(event.response())
                await peer.read_until_eof()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer_side)
                await run_websocket(connection, handler)
            assert connection.close_code == 1000
            assert server_sock.fileno() == -1


async def test_handler_exception_closes_with_1011(caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(5):
        async with ws_pair() as (connection, peer, _):

            async def handler(ws: WebSocketConnection) -> None:
                raise RuntimeError("boom")

            async def peer_side() -> None:
                event = await peer.next_event()
                assert isinstance(event, CloseConnection)
                assert event.code == 1011
                await peer.send(event.response())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer_side)
                await run_websocket(connection, handler)
            assert connection.close_code == 1011
    assert "websocket handler failed" in caplog.text


async def test_unanswered_close_is_dropped_after_close_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with ws_pair(close_timeout=5.0) as (connection, _peer, server_sock):

        async def handler(ws: WebSocketConnection) -> None:
            ws.close(4000, "going")

        start = trio.current_time()
        await run_websocket(connection, handler)
        assert trio.current_time() - start == pytest.approx(5.0)
        assert server_sock.fileno() == -1
        assert connection.close_code == 4000
