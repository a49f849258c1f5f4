"""msgpack encoding/decoding and Limits (protocol.codec)."""

from __future__ import annotations

import re
from typing import Any

import msgpack
import pytest

from tether.transport.protocol import (
    Disconnect,
    DisconnectCode,
    Error,
    ErrorCode,
    Hello,
    Limits,
    LocalProtocolError,
    Ping,
    Pong,
    Presence,
    PresenceSubscribe,
    RemoteProtocolError,
    Reply,
    Welcome,
    decode,
    decode_frame,
    decode_server_frame,
    encode,
)


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def nested(depth: int) -> dict[str, Any]:
    """A ping frame whose containers nest ``depth`` levels (the map is level 1)."""
    value: Any = 0
    for _ in range(depth - 1):
        value = [value]
    return {"t": "ping", "x": value}


def fatal(payload: bytes, limits: Limits | None = None) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        decode(payload, limits or Limits())
    assert info.value.fatal
    assert info.value.close_hint is not None
    assert len(info.value.close_hint.reason.encode()) <= 123
    return info.value


# ---------------------------------------------------------------- Limits


def test_limits_defaults() -> None:
    limits = Limits()
    assert (limits.max_frame_bytes, limits.max_pending, limits.max_in_flight) == (1 << 20, 64, 128)
    assert (limits.max_depth, limits.max_array_len, limits.max_map_len) == (16, 10_000, 1_000)


@pytest.mark.parametrize(
    ("field", "value", "minimum"),
    [
        ("max_frame_bytes", 16 * 1024 - 1, 16 * 1024),
        ("max_pending", 0, 1),
        ("max_in_flight", 0, 1),
        ("max_depth", 0, 1),
        ("max_array_len", -1, 1),
        ("max_map_len", 0, 1),
        ("max_pending", True, 1),
        ("max_pending", 1.5, 1),
    ],
)
def test_limits_are_validated(field: str, value: object, minimum: int) -> None:
    with pytest.raises(
        ValueError,
        match=re.escape(f"Expected Limits.{field} to be an int >= {minimum}, got {value!r}"),
    ):
        Limits(**{field: value})  # type: ignore[arg-type]


def test_limits_advertised_in_welcome() -> None:
    assert Limits(max_in_flight=32).advertised(max_frames_per_s=20) == {
        "max_frame_bytes": 1 << 20,
        "max_frames_per_s": 20,
        "max_in_flight": 32,
    }


# ---------------------------------------------------------------- encode


def test_encode_is_the_msgpack_of_the_wire_map() -> None:
    hello = Hello(ref=1, token="t")
    payload = encode(hello)
    assert msgpack.unpackb(payload) == {"t": "hello", "ref": 1, "token": "t"}
    # fixmap(3): "t" "hello", "ref" 1, "token" "t"
    assert payload == bytes.fromhex("83 a174 a568656c6c6f a3726566 01 a5746f6b656e a174")


def test_encode_refuses_a_disconnect() -> None:
    with pytest.raises(
        LocalProtocolError,
        match=re.escape(
            "Expected a Frame to encode, got "
            "Disconnect(code=<DisconnectCode.SHUTDOWN: 3000>, reason='x')"
        ),
    ):
        encode(Disconnect(3000, "x"))  # type: ignore[arg-type]


def test_encode_reports_unencodable_reply_data() -> None:
    with pytest.raises(
        LocalProtocolError, match=r"^Cannot encode Reply\(ref=1, data=\{'x': \{1\}\}\): "
    ):
        encode(Reply(ref=1, data={"x": {1}}))


# ---------------------------------------------------------------- decode: fatal


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "Frame is not valid msgpack (ValueError)"),
        (b"\xc1", "Frame is not valid msgpack (FormatError)"),
        (pack({"t": "ping"})[:-1], "Frame is not valid msgpack (ValueError)"),
        (pack({"t": "ping"}) * 2, "Frame is not valid msgpack (ExtraData)"),
        (b"\x81\xa1t\xa2\xff\xfe", "Frame is not valid msgpack (UnicodeDecodeError)"),
        (b"\x81\x01\xa1x", "Frame is not valid msgpack (ValueError)"),  # int key
        (b"\xdd\xff\xff\xff\xff", "Frame is not valid msgpack (ValueError)"),  # huge array header
        (b"\x81\xa1t\xd6\xff\x00", "Frame is not valid msgpack (ValueError)"),  # bad timestamp
        (pack([1, 2]), "Expected a frame to be a msgpack map, got list"),
        (pack("ping"), "Expected a frame to be a msgpack map, got str"),
        (pack(None), "Expected a frame to be a msgpack map, got NoneType"),
        (pack({b"t": "ping"}), "Expected the frame map to have str keys only"),
        (pack({"ref": 1}), "Expected the frame to have a str 't', got none"),
        (pack({"t": 1}), "Expected the frame to have a str 't', got int"),
        (pack({"t": b"ping"}), "Expected the frame to have a str 't', got bytes"),
        (pack({"t": None}), "Expected the frame to have a str 't', got NoneType"),
        (pack(nested(17)), "Frame nests deeper than max_depth=16"),
        (pack({"t": "ping", "x": list(range(10_001))}), "Frame is not valid msgpack (ValueError)"),
        (
            pack({"t": "ping", **{f"k{i}": i for i in range(1_000)}}),
            "Frame is not valid msgpack (ValueError)",
        ),
    ],
)
def test_undecodable_frames_are_fatal_bad_frame(payload: bytes, message: str) -> None:
    error = fatal(payload)
    assert str(error) == message
    assert error.close_hint == Disconnect(DisconnectCode.BAD_FRAME, message)


def test_depth_limit_is_inclusive() -> None:
    assert decode(pack(nested(16))) == Ping()
    assert str(fatal(pack(nested(3)), Limits(max_depth=2))) == "Frame nests deeper than max_depth=2"
    assert decode(pack(nested(2)), Limits(max_depth=2)) == Ping()


def test_deep_nesting_beyond_msgpack_own_stack_is_bad_frame() -> None:
    payload = b"\x82\xa1t\xa4ping\xa1x" + b"\x91" * 5000 + b"\x00"
    assert fatal(payload).close_hint == Disconnect(
        DisconnectCode.BAD_FRAME, "Frame is not valid msgpack (StackError)"
    )


def test_container_limits_are_inclusive() -> None:
    assert decode(pack({"t": "ping", "x": list(range(10_000))})) == Ping()
    assert decode(pack({"t": "ping", **{f"k{i}": i for i in range(999)}})) == Ping()


def test_frame_over_max_frame_bytes_is_message_too_large() -> None:
    limits = Limits(max_frame_bytes=16 * 1024)
    payload = pack({"t": "ping", "pad": "x" * (16 * 1024)})
    error = fatal(payload, limits)
    assert error.close_hint is not None
    assert error.close_hint.code is DisconnectCode.MESSAGE_TOO_LARGE
    assert str(error) == f"Frame of {len(payload)} bytes exceeds max_frame_bytes=16384"


def test_decode_frame_returns_type_and_whole_map() -> None:
    assert decode_frame(pack({"t": "x.y", "ref": 1, "z": [b"\x00"]})) == (
        "x.y",
        {"t": "x.y", "ref": 1, "z": [b"\x00"]},
    )


def test_ext_values_in_unknown_keys_are_tolerated() -> None:
    payload = pack({"t": "ping", "n": 1, "later": msgpack.ExtType(5, b"abc")})
    assert decode(payload) == Ping(n=1)


# ---------------------------------------------------------------- decode: recoverable


def recoverable(payload: bytes) -> Error:
    with pytest.raises(RemoteProtocolError) as info:
        decode(payload)
    assert not info.value.fatal
    assert info.value.error_hint is not None
    return info.value.error_hint


def test_unknown_type_is_recoverable_and_keeps_the_ref() -> None:
    assert recoverable(pack({"t": "poll.vote", "ref": 12})) == Error(
        ref=12,
        code=ErrorCode.UNKNOWN_TYPE,
        reason="Unknown frame type 'poll.vote'",
        temporary=False,
    )
    assert recoverable(pack({"t": "poll.vote", "ref": "12"})).ref is None


def test_invalid_field_is_bad_request_with_the_ref_when_valid() -> None:
    error = recoverable(pack({"t": "hello", "ref": 5, "token": 42}))
    assert error == Error(
        ref=5,
        code=ErrorCode.BAD_REQUEST,
        reason="Expected 'hello' field 'token' to be a str of at most 8192 bytes, got int",
        temporary=False,
    )
    assert recoverable(pack({"t": "hello", "ref": -5, "token": "t"})).ref is None


def test_bad_request_on_a_ref_less_frame_has_no_ref() -> None:
    # "ref" is not a field of ping: it is an unknown key and must not be echoed.
    error = recoverable(pack({"t": "ping", "ref": 3, "n": "x"}))
    assert error.ref is None
    assert error.code is ErrorCode.BAD_REQUEST


def test_bad_request_reason_is_cut_to_the_error_limit() -> None:
    error = recoverable(pack({"t": "pong", "n": "x" * 5000}))
    assert len(error.reason.encode()) <= 512


# ---------------------------------------------------------------- server frames (client side)


SERVER_FRAMES = [
    Welcome(
        ref=1,
        session="s",
        user="u",
        name="",
        device="d",
        heartbeat_ms=1,
        timeout_ms=2,
        server="tether/0",
        limits={"max_frame_bytes": 1, "max_frames_per_s": 2},
    ),
    Reply(ref=2, data={"users": [{"user": "a"}]}),
    Error(ref=None, code=ErrorCode.INTERNAL, reason="oops", temporary=True),
    Ping(n=3),
    Pong(n=4),
    Presence(user="a", status="online", devices=1, last_seen=None),  # type: ignore[arg-type]
]


@pytest.mark.parametrize("frame", SERVER_FRAMES, ids=lambda f: type(f).__name__)
def test_server_frames_round_trip(frame: Any) -> None:
    assert decode_server_frame(encode(frame)) == frame


def test_client_ignores_unknown_server_frame_types() -> None:
    assert decode_server_frame(pack({"t": "poll.offer", "x": 1})) is None


def test_invalid_server_frame_is_fatal_for_the_client() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_server_frame(pack({"t": "presence", "user": "a"}))
    assert info.value.close_hint is not None
    assert info.value.close_hint.code is DisconnectCode.PROTOCOL_VIOLATION


def test_client_frames_are_not_server_frames() -> None:
    assert decode_server_frame(encode(PresenceSubscribe(ref=1, users=("a",)))) is None
