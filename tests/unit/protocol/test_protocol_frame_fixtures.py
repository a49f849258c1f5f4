"""Malformed-frame fixtures: tests/data/frames/*.bin, one file per case.

Each file is one WebSocket message as a client could send it. EXPECTED names the
state it is fed in and the outcome: a fatal close code, or a recoverable error
code with the ref the error must carry. A new fixture without an expectation
(or the reverse) fails the suite. Add one per bug found, named after the case.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest

from tether.transport.protocol import (
    ConnectionState,
    DisconnectCode,
    ErrorCode,
    Hello,
    RemoteProtocolError,
    ServerConnection,
    encode,
)

FRAMES_DIR = Path(__file__).resolve().parents[2] / "data" / "frames"
S = ConnectionState


class Fatal(NamedTuple):
    code: DisconnectCode
    state: ConnectionState = S.AWAITING_HELLO


class Refused(NamedTuple):
    code: ErrorCode
    ref: int | None
    state: ConnectionState = S.AWAITING_HELLO


BAD_FRAME = Fatal(DisconnectCode.BAD_FRAME)

EXPECTED: dict[str, Fatal | Refused] = {
    # Not one msgpack map with a str "t": fatal 3500 whatever the state.
    "truncated_msgpack": BAD_FRAME,
    "array_instead_of_map": BAD_FRAME,
    "missing_t": BAD_FRAME,
    "int_t": BAD_FRAME,
    "bin_t": BAD_FRAME,
    "nil_t": BAD_FRAME,
    "nested_100_deep": BAD_FRAME,
    "huge_array_header": BAD_FRAME,
    "huge_map_header": BAD_FRAME,
    "huge_str_header": BAD_FRAME,
    "non_str_map_keys": BAD_FRAME,
    "bytes_map_keys": BAD_FRAME,
    "trailing_data": BAD_FRAME,
    "empty": BAD_FRAME,
    "nil": BAD_FRAME,
    "reserved_byte_c1": BAD_FRAME,
    "invalid_utf8_str": BAD_FRAME,
    "timestamp_ext_bad_length": BAD_FRAME,
    # A known frame with missing or ill-typed fields: error 100, the ref kept if valid.
    "hello_int_token": Refused(ErrorCode.BAD_REQUEST, 1),
    "hello_missing_token": Refused(ErrorCode.BAD_REQUEST, 1),
    "hello_token_too_long": Refused(ErrorCode.BAD_REQUEST, 1),
    "hello_device_too_long": Refused(ErrorCode.BAD_REQUEST, 1),
    "hello_float_ref": Refused(ErrorCode.BAD_REQUEST, None),
    "hello_bool_ref": Refused(ErrorCode.BAD_REQUEST, None),
    "hello_ref_out_of_range": Refused(ErrorCode.BAD_REQUEST, None),
    "ping_str_n": Refused(ErrorCode.BAD_REQUEST, None),
    "subscribe_101_users": Refused(ErrorCode.BAD_REQUEST, 3, S.OPEN),
    "subscribe_users_not_array": Refused(ErrorCode.BAD_REQUEST, 3, S.OPEN),
    "presence_set_bad_status": Refused(ErrorCode.BAD_REQUEST, 4, S.OPEN),
    # Frames illegal in the state.
    "subscribe_before_hello": Fatal(DisconnectCode.NOT_AUTHENTICATED),
    "unknown_type_before_hello": Fatal(DisconnectCode.NOT_AUTHENTICATED),
    "second_hello": Fatal(DisconnectCode.PROTOCOL_VIOLATION, S.HELLO_RECEIVED),
    "hello_when_open": Refused(ErrorCode.ALREADY_AUTHENTICATED, 5, S.OPEN),
    "unknown_type_when_open": Refused(ErrorCode.UNKNOWN_TYPE, 7, S.OPEN),
    # Rooms and messages: only after welcome, every field validated.
    "msg_send_before_hello": Fatal(DisconnectCode.NOT_AUTHENTICATED),
    "msg_send_nil_body": Refused(ErrorCode.BAD_REQUEST, 10, S.OPEN),
    "msg_send_missing_cid": Refused(ErrorCode.BAD_REQUEST, 11, S.OPEN),
    "msg_send_cid_too_long": Refused(ErrorCode.BAD_REQUEST, 12, S.OPEN),
    "msg_send_ext_body": Refused(ErrorCode.BAD_REQUEST, 13, S.OPEN),
    "msg_send_bin_map_key_body": Refused(ErrorCode.BAD_REQUEST, 14, S.OPEN),
    "msg_send_body_11_deep": Refused(ErrorCode.BAD_REQUEST, 15, S.OPEN),
    "msg_edit_seq_zero": Refused(ErrorCode.BAD_REQUEST, 16, S.OPEN),
    "history_before_and_after": Refused(ErrorCode.BAD_REQUEST, 17, S.OPEN),
    "history_limit_501": Refused(ErrorCode.BAD_REQUEST, 18, S.OPEN),
    "receipt_without_positions": Refused(ErrorCode.BAD_REQUEST, None, S.OPEN),
    "typing_str_flag": Refused(ErrorCode.BAD_REQUEST, None, S.OPEN),
    "room_create_direct_kind": Refused(ErrorCode.BAD_REQUEST, 19, S.OPEN),
    "room_create_101_members": Refused(ErrorCode.BAD_REQUEST, 20, S.OPEN),
    "room_join_room_id_too_long": Refused(ErrorCode.BAD_REQUEST, 21, S.OPEN),
}


def connection_in(state: ConnectionState) -> ServerConnection:
    conn = ServerConnection()
    if state is S.AWAITING_HELLO:
        return conn
    hello = Hello(ref=1, token="t")
    conn.receive_data(encode(hello))
    assert list(conn.events()) == [hello]
    if state is S.OPEN:
        conn.send(
            hello.welcome(
                session="s",
                user="u",
                name="",
                device="d",
                heartbeat_ms=1000,
                timeout_ms=3000,
                server="tether/test",
                limits={"max_frame_bytes": 1 << 20, "max_frames_per_s": 10},
            )
        )
    assert conn.state is state
    return conn


def test_every_fixture_has_an_expectation() -> None:
    assert sorted(p.stem for p in FRAMES_DIR.glob("*.bin")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture(name: str) -> None:
    expected = EXPECTED[name]
    conn = connection_in(expected.state)
    conn.receive_data((FRAMES_DIR / f"{name}.bin").read_bytes())
    with pytest.raises(RemoteProtocolError) as info:
        list(conn.events())
    error = info.value
    if isinstance(expected, Fatal):
        assert error.close_hint is not None, error
        assert error.close_hint.code is expected.code
        assert conn.state is S.CLOSED
    else:
        assert error.error_hint is not None, error
        assert (error.error_hint.code, error.error_hint.ref) == (expected.code, expected.ref)
        assert conn.state is expected.state
        conn.send(error.error_hint)  # the hint is legal to send right away
