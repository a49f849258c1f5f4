"""Wire events: validation, wire maps, and the answer helpers (protocol.events)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from tether.transport.protocol import (
    CLIENT_EVENT_TYPES,
    SERVER_EVENT_TYPES,
    Bye,
    DeviceStatus,
    Disconnect,
    DisconnectCode,
    Error,
    ErrorCode,
    Hello,
    LocalProtocolError,
    Ping,
    Pong,
    Presence,
    PresenceSet,
    PresenceStatus,
    PresenceSubscribe,
    PresenceUnsubscribe,
    Recovered,
    Reply,
    Welcome,
)

WELCOME_FIELDS: dict[str, Any] = {
    "session": "s-1",
    "user": "alice",
    "name": "Alice",
    "device": "laptop-1",
    "heartbeat_ms": 25_000,
    "timeout_ms": 60_000,
    "server": "tether/0.1.0",
    "limits": {"max_frame_bytes": 1 << 20, "max_frames_per_s": 50},
}


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


def brief(value: object) -> str:
    """How messages show a value: its repr, cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def test_registries_hold_exactly_the_v1_frame_types() -> None:
    assert set(CLIENT_EVENT_TYPES) == {
        "hello",
        "ping",
        "pong",
        "presence.subscribe",
        "presence.unsubscribe",
        "presence.set",
        "bye",
        "room.create",
        "room.join",
        "room.leave",
        "room.invite",
        "room.remove",
        "room.list",
        "room.members",
        "dm.open",
        "msg.send",
        "msg.edit",
        "msg.delete",
        "history",
        "receipt",
        "typing",
        "call.join",
        "call.leave",
        "call.publish",
        "call.answer",
        "call.ice",
        "call.mute",
        "call.quality",
        "call.restart",
    }
    assert set(SERVER_EVENT_TYPES) == {
        "welcome",
        "reply",
        "error",
        "ping",
        "pong",
        "presence",
        "msg",
        "msg.edited",
        "msg.deleted",
        "receipts",
        "typing",
        "read",
        "member",
        "room",
        "recovered",
        "call.offer",
        "call.participant",
        "call.track",
        "call.speaker",
        "call.restart",
        "call.ended",
    }
    assert CLIENT_EVENT_TYPES["ping"] is SERVER_EVENT_TYPES["ping"] is Ping


def test_events_are_frozen_and_slotted() -> None:
    hello = Hello(ref=1, token="t")
    with pytest.raises(dataclasses.FrozenInstanceError):
        hello.ref = 2  # type: ignore[misc]
    assert not hasattr(hello, "__dict__")


# ---------------------------------------------------------------- hello


def test_hello_wire_map_and_round_trip() -> None:
    hello = Hello(ref=7, token="tok", device="phone", client="tether-py/0.1")
    wire = hello.to_wire()
    assert wire == {
        "t": "hello",
        "ref": 7,
        "token": "tok",
        "device": "phone",
        "client": "tether-py/0.1",
    }
    assert Hello.from_wire(wire) == hello


def test_hello_optional_fields_are_omitted_and_nil_means_absent() -> None:
    assert Hello(ref=1, token="tok").to_wire() == {"t": "hello", "ref": 1, "token": "tok"}
    body = {"t": "hello", "ref": 1, "token": "tok", "device": None, "client": None}
    assert Hello.from_wire(body) == Hello(ref=1, token="tok")


def test_unknown_extra_keys_are_ignored() -> None:
    body = {"t": "hello", "ref": 1, "token": "tok", "future": {"x": [1, 2]}}
    assert Hello.from_wire(body) == Hello(ref=1, token="tok")


def test_hello_repr_never_shows_the_token() -> None:
    hello = Hello(ref=1, token="secret-jwt")
    assert "secret-jwt" not in repr(hello)
    assert repr(hello) == "Hello(ref=1, device=None, client=None, session=None, resume=None)"


def test_missing_required_field() -> None:
    with pytest.raises(
        LocalProtocolError, match=exact("Expected 'hello' frame to have field 'token', got none")
    ):
        Hello.from_wire({"t": "hello", "ref": 1})


@pytest.mark.parametrize("ref", [-1, 2**32, True, 1.0, "1", None])
def test_ref_must_be_a_uint32(ref: object) -> None:
    with pytest.raises(
        LocalProtocolError,
        match=exact(f"Expected 'hello' field 'ref' to be an int in 0..4294967295, got {ref!r}"),
    ):
        Hello(ref=ref, token="t")  # type: ignore[arg-type]


def test_ref_bounds_are_inclusive() -> None:
    assert Hello(ref=0, token="t").ref == 0
    assert Hello(ref=2**32 - 1, token="t").ref == 2**32 - 1


def test_token_errors_name_the_type_or_size_never_the_value() -> None:
    with pytest.raises(
        LocalProtocolError,
        match=exact("Expected 'hello' field 'token' to be a str of at most 8192 bytes, got int"),
    ):
        Hello(ref=1, token=12345)  # type: ignore[arg-type]
    with pytest.raises(
        LocalProtocolError,
        match=exact(
            "Expected 'hello' field 'token' to be a str of at most 8192 bytes, got 8193 bytes"
        ),
    ):
        Hello(ref=1, token="x" * 8193)
    # The limit is in bytes of UTF-8: 2731 three-byte characters are 8193 bytes.
    with pytest.raises(LocalProtocolError):
        Hello(ref=1, token="€" * 2731)
    assert Hello(ref=1, token="x" * 8192).token == "x" * 8192


@pytest.mark.parametrize("device", ["", "d" * 65, 5])
def test_hello_device_is_1_to_64_characters(device: object) -> None:
    with pytest.raises(
        LocalProtocolError,
        match=exact(
            f"Expected 'hello' field 'device' to be a str of 1..64 characters, got {brief(device)}"
        ),
    ):
        Hello(ref=1, token="t", device=device)  # type: ignore[arg-type]


def test_hello_client_is_at_most_64_characters() -> None:
    assert Hello(ref=1, token="t", client="").client == ""
    with pytest.raises(LocalProtocolError, match=r"'client' to be a str of 0\.\.64 characters"):
        Hello(ref=1, token="t", client="c" * 65)


def test_long_values_are_abbreviated_in_messages() -> None:
    with pytest.raises(LocalProtocolError) as info:
        Hello(ref=1, token="t", device="d" * 1000)
    assert str(info.value).endswith("got '" + "d" * 36 + "...")


def test_hello_welcome_helper() -> None:
    welcome = Hello(ref=9, token="t").welcome(**WELCOME_FIELDS)
    assert welcome == Welcome(ref=9, **WELCOME_FIELDS)
    assert welcome.to_wire() == {"t": "welcome", "ref": 9, **WELCOME_FIELDS}
    resumed = Hello(ref=9, token="t").welcome(**WELCOME_FIELDS, resumed=True)
    assert resumed.to_wire() == {"t": "welcome", "ref": 9, **WELCOME_FIELDS, "resumed": True}


def test_hello_resume_fields() -> None:
    hello = Hello(ref=1, token="t", session="s1", resume={"r1": 0, "r2": 41})
    assert hello.to_wire()["resume"] == {"r1": 0, "r2": 41}
    assert Hello.from_wire(hello.to_wire()) == hello
    for bad in ({"r1": -1}, {"": 3}, {"r1": "3"}, [1], {f"r{i}": 1 for i in range(1001)}):
        with pytest.raises(LocalProtocolError, match="resume"):
            Hello(ref=1, token="t", resume=bad)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="session"):
        Hello(ref=1, token="t", session="")


def test_recovered_push() -> None:
    full = Recovered(room="r1", complete=True, replayed=3, head=9)
    assert full.to_wire() == {
        "t": "recovered",
        "room": "r1",
        "complete": True,
        "replayed": 3,
        "head": 9,
    }
    partial = Recovered(room="r1", complete=False, replayed=2, head=9, first=8)
    assert partial.to_wire()["first"] == 8
    with pytest.raises(LocalProtocolError):
        Recovered(room="r1", complete=True, replayed=-1, head=9)


def test_request_error_helper_derives_temporary() -> None:
    hello = Hello(ref=3, token="t")
    assert hello.error(ErrorCode.UNAVAILABLE, "storage down") == Error(
        ref=3, code=ErrorCode.UNAVAILABLE, reason="storage down", temporary=True
    )
    assert hello.error(ErrorCode.FORBIDDEN, "no").temporary is False
    assert hello.error(450, "plugin says no").temporary is False
    assert hello.error(450, "plugin says later", temporary=True).temporary is True


# ---------------------------------------------------------------- ping / pong


def test_ping_and_pong() -> None:
    assert Ping().to_wire() == {"t": "ping"}
    assert Ping(n=5).to_wire() == {"t": "ping", "n": 5}
    assert Ping(n=5).response() == Pong(n=5)
    assert Ping().response() == Pong(n=0)
    assert Pong(n=-(2**63)).n == -(2**63)
    assert Pong(n=2**64 - 1).n == 2**64 - 1


def test_pong_requires_n() -> None:
    with pytest.raises(
        LocalProtocolError, match=exact("Expected 'pong' frame to have field 'n', got none")
    ):
        Pong.from_wire({"t": "pong"})
    with pytest.raises(
        LocalProtocolError,
        match=exact(
            "Expected 'pong' field 'n' to be an int in "
            "-9223372036854775808..18446744073709551615, got 'x'"
        ),
    ):
        Pong.from_wire({"t": "pong", "n": "x"})


# ---------------------------------------------------------------- presence requests


def test_presence_subscribe_round_trip_and_reply() -> None:
    sub = PresenceSubscribe.from_wire({"t": "presence.subscribe", "ref": 4, "users": ["a", "b"]})
    assert sub == PresenceSubscribe(ref=4, users=("a", "b"))
    assert sub.to_wire() == {"t": "presence.subscribe", "ref": 4, "users": ["a", "b"]}
    online = Presence(user="a", status=PresenceStatus.ONLINE, devices=2, last_seen=None)
    offline = Presence(user="b", status="offline", devices=0, last_seen=1_700_000_000_000)  # type: ignore[arg-type]
    expected = Reply(
        ref=4,
        data={
            "users": [
                {"user": "a", "status": "online", "devices": 2, "last_seen": None},
                {"user": "b", "status": "offline", "devices": 0, "last_seen": 1_700_000_000_000},
            ]
        },
    )
    assert sub.reply({"users": [online, offline]}) == expected
    # Snapshot maps are accepted too (validated, and normalized the same way).
    assert sub.reply({"users": [online.snapshot(), offline.snapshot()]}) == expected
    assert sub.reply() == Reply(ref=4, data={"users": []})


class _StateSnapshot:
    """Stands in for the presence state's snapshot type (anything with to_wire())."""

    def to_wire(self) -> dict[str, object]:
        return {"user": "c", "status": "away", "devices": 1, "last_seen": 5}


def test_presence_from_snapshot() -> None:
    expected = Presence(user="c", status="away", devices=1, last_seen=5)  # type: ignore[arg-type]
    assert Presence.from_snapshot(_StateSnapshot()) == expected
    assert Presence.from_snapshot(expected.snapshot()) == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "Expected presence.subscribe reply data to have a 'users' array, got {}"),
        (
            {"users": "a"},
            "Expected presence.subscribe reply data to have a 'users' array, got {'users': 'a'}",
        ),
        (
            {"users": [{"user": "a", "status": "online", "devices": 1}]},
            "Expected 'presence' frame to have field 'last_seen', got none",
        ),
    ],
)
def test_presence_subscribe_reply_validates_snapshots(data: Any, message: str) -> None:
    with pytest.raises(LocalProtocolError, match=exact(message)):
        PresenceSubscribe(ref=1, users=("a",)).reply(data)


@pytest.mark.parametrize(
    "users", [[], ["u"] * 101, [""], ["u" * 129], [1], "alice", None, ("a", 2)]
)
def test_presence_users_validation(users: object) -> None:
    message = (
        "Expected 'presence.subscribe' field 'users' to be an array of 1..100 user ids "
        f"(str of 1..128 characters), got {brief(users)}"
    )
    with pytest.raises(LocalProtocolError, match=exact(message)):
        PresenceSubscribe(ref=1, users=users)  # type: ignore[arg-type]


def test_presence_users_bounds_are_inclusive() -> None:
    assert len(PresenceSubscribe(ref=1, users=("u",) * 100).users) == 100
    assert PresenceUnsubscribe(ref=1, users=("u" * 128,)).users == ("u" * 128,)


def test_presence_unsubscribe_reply() -> None:
    unsub = PresenceUnsubscribe(ref=8, users=("a",))
    assert unsub.reply() == Reply(ref=8, data={})
    assert unsub.reply({"removed": 1}) == Reply(ref=8, data={"removed": 1})
    assert unsub.to_wire() == {"t": "presence.unsubscribe", "ref": 8, "users": ["a"]}


def test_presence_set_with_and_without_ref() -> None:
    quiet = PresenceSet.from_wire({"t": "presence.set", "status": "idle"})
    assert quiet == PresenceSet(status=DeviceStatus.IDLE)
    assert quiet.status is DeviceStatus.IDLE
    assert quiet.to_wire() == {"t": "presence.set", "status": "idle"}
    with pytest.raises(
        LocalProtocolError,
        match=exact(
            "Expected a request with a ref, got "
            "PresenceSet(ref=None, status=<DeviceStatus.IDLE: 'idle'>)"
        ),
    ):
        quiet.reply()
    assert quiet.error(ErrorCode.BAD_REQUEST, "x").ref is None
    asked = PresenceSet(ref=2, status=DeviceStatus.ACTIVE)
    assert asked.reply() == Reply(ref=2, data={})


def test_hello_is_answered_by_welcome_not_reply() -> None:
    assert not hasattr(Hello(ref=1, token="t"), "reply")


@pytest.mark.parametrize("status", ["away", "ACTIVE", 1, None])
def test_presence_set_status_must_be_active_or_idle(status: object) -> None:
    with pytest.raises(
        LocalProtocolError,
        match=exact(
            f"Expected 'presence.set' field 'status' to be one of 'active', 'idle', got {status!r}"
        ),
    ):
        PresenceSet(status=status)  # type: ignore[arg-type]


def test_bye_has_no_fields() -> None:
    assert Bye().to_wire() == {"t": "bye"}
    assert Bye.from_wire({"t": "bye", "ref": 3}) == Bye()


# ---------------------------------------------------------------- server frames


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "session",
            "",
            "Expected 'welcome' field 'session' to be a str of 1..128 characters, got ''",
        ),
        ("user", "u" * 129, None),
        ("name", "n" * 129, None),
        ("device", "", None),
        (
            "heartbeat_ms",
            0,
            "Expected 'welcome' field 'heartbeat_ms' to be an int in 1..2147483647, got 0",
        ),
        ("timeout_ms", 2**31, None),
        ("server", "", None),
        (
            "limits",
            {"max_frame_bytes": 1},
            "Expected 'welcome' field 'limits' to be a map of str to ints >= 0 with keys "
            "max_frame_bytes, max_frames_per_s, got {'max_frame_bytes': 1}",
        ),
        ("limits", {"max_frame_bytes": 1, "max_frames_per_s": -1}, None),
        ("limits", {"max_frame_bytes": 1, "max_frames_per_s": True}, None),
    ],
)
def test_welcome_validation(field: str, value: object, message: str | None) -> None:
    with pytest.raises(LocalProtocolError) as info:
        Welcome(ref=1, **{**WELCOME_FIELDS, field: value})
    assert f"'welcome' field {field!r}" in str(info.value)
    if message is not None:
        assert str(info.value) == message


def test_welcome_name_may_be_empty_and_limits_may_grow() -> None:
    limits = {"max_frame_bytes": 1, "max_frames_per_s": 2, "max_in_flight": 3}
    welcome = Welcome(ref=1, **{**WELCOME_FIELDS, "name": "", "limits": limits})
    assert welcome.to_wire()["limits"] == limits


def test_reply_data_must_be_a_str_keyed_map() -> None:
    assert Reply(ref=1, data={"a": [1]}).to_wire() == {"t": "reply", "ref": 1, "data": {"a": [1]}}
    with pytest.raises(
        LocalProtocolError,
        match=exact("Expected 'reply' field 'data' to be a map with str keys, got {1: 2}"),
    ):
        Reply(ref=1, data={1: 2})  # type: ignore[dict-item]
    with pytest.raises(LocalProtocolError):
        Reply(ref=1, data=[1])  # type: ignore[arg-type]


def test_error_frame() -> None:
    error = Error(code=101, reason="Unknown frame type 'x'", temporary=False)
    assert error.code is ErrorCode.UNKNOWN_TYPE
    assert error.to_wire() == {
        "t": "error",
        "code": 101,
        "reason": "Unknown frame type 'x'",
        "temporary": False,
    }
    plugin = Error(ref=5, code=4242, reason="r", temporary=True)
    assert type(plugin.code) is int
    assert plugin.to_wire()["ref"] == 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"code": -1}, "Expected 'error' field 'code' to be an int in 0..65535, got -1"),
        ({"code": 65536}, "Expected 'error' field 'code' to be an int in 0..65535, got 65536"),
        ({"temporary": 1}, "Expected 'error' field 'temporary' to be a bool, got 1"),
        (
            {"reason": "x" * 513},
            "Expected 'error' field 'reason' to be a str of at most 512 bytes, got "
            "'" + "x" * 36 + "...",
        ),
    ],
)
def test_error_validation(kwargs: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {"code": 100, "reason": "r", "temporary": False, **kwargs}
    with pytest.raises(LocalProtocolError, match=exact(message)):
        Error(**fields)


def test_error_for_code_cuts_long_reasons() -> None:
    error = Error.for_code(ErrorCode.BAD_REQUEST, "y" * 2000)
    assert len(error.reason.encode()) <= 512
    assert error.reason.endswith("…")


def test_presence_push_and_snapshot() -> None:
    presence = Presence(user="a", status=PresenceStatus.AWAY, devices=1, last_seen=None)
    assert presence.to_wire() == {
        "t": "presence",
        "user": "a",
        "status": "away",
        "devices": 1,
        "last_seen": None,  # required, nullable: always on the wire
    }
    assert presence.snapshot() == {"user": "a", "status": "away", "devices": 1, "last_seen": None}
    with pytest.raises(
        LocalProtocolError,
        match=exact("Expected 'presence' frame to have field 'last_seen', got none"),
    ):
        Presence.from_wire({"t": "presence", "user": "a", "status": "away", "devices": 1})


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"status": "active"}, "field 'status' to be one of 'online', 'away', 'offline'"),
        ({"devices": -1}, "field 'devices' to be an int in 0..2147483647"),
        ({"last_seen": -5}, "field 'last_seen' to be an int in 0..9223372036854775807"),
        ({"user": ""}, "field 'user' to be a str of 1..128 characters"),
    ],
)
def test_presence_validation(kwargs: dict[str, Any], fragment: str) -> None:
    fields: dict[str, Any] = {"user": "a", "status": "online", "devices": 0, "last_seen": 0}
    with pytest.raises(LocalProtocolError, match=re.escape(fragment)):
        Presence(**{**fields, **kwargs})


# ---------------------------------------------------------------- Disconnect


def test_disconnect() -> None:
    disconnect = Disconnect(3000, "server restarting")
    assert disconnect.code is DisconnectCode.SHUTDOWN
    assert disconnect.reconnect is True
    assert Disconnect(DisconnectCode.KICKED, "").reconnect is False
    assert Disconnect(4100, "plugin, reconnect").reconnect is True
    assert type(Disconnect(4100, "").code) is int
    assert Disconnect(1000, "bye").reconnect is False


@pytest.mark.parametrize("code", [1001, 1005, 1006, 2000, 5000, 999, True, "3000"])
def test_disconnect_rejects_codes_that_may_not_be_sent(code: object) -> None:
    with pytest.raises(
        LocalProtocolError,
        match=exact(
            "Expected Disconnect code to be 1000, 1002, 1003, 1007-1009, 1011 "
            f"or 3000..4999, got {code!r}"
        ),
    ):
        Disconnect(code, "")  # type: ignore[arg-type]


def test_disconnect_reason_fits_a_close_frame() -> None:
    assert Disconnect(3000, "x" * 123).reason == "x" * 123
    with pytest.raises(
        LocalProtocolError,
        match=r"^Expected Disconnect reason to be a str of at most 123 bytes of UTF-8, got ",
    ):
        Disconnect(3000, "é" * 62)  # 124 bytes
