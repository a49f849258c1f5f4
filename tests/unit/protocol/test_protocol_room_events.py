"""Rooms and messages frames: validation, wire maps, shapes, and the reply builders."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import msgpack
import pytest

from tether.transport.protocol import (
    CLIENT_EVENT_TYPES,
    DEFAULT_HISTORY_LIMIT,
    MAX_SEQ,
    SERVER_EVENT_TYPES,
    ClientEvent,
    DmOpen,
    ErrorCode,
    Frame,
    History,
    LocalProtocolError,
    MemberAction,
    MemberEvent,
    MemberInfo,
    MemberRole,
    Message,
    MessageDeleted,
    MessageEdited,
    MsgDelete,
    MsgEdit,
    MsgSend,
    ReadState,
    Receipt,
    ReceiptInfo,
    Receipts,
    Reply,
    RoomAdded,
    RoomCreate,
    RoomInfo,
    RoomInvite,
    RoomJoin,
    RoomKind,
    RoomLeave,
    RoomList,
    RoomMembers,
    RoomRemove,
    RoomSummaryInfo,
    Shape,
    Typing,
    TypingUsers,
    decode,
    decode_server_frame,
    encode,
)


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


def brief(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


ROOM: dict[str, Any] = {
    "id": "r1",
    "kind": "public",
    "name": "Lobby",
    "owner": "alice",
    "last_seq": 7,
    "created_at": 1_700_000_000_000,
}
DIRECT: dict[str, Any] = {**ROOM, "id": "d1", "kind": "direct", "name": ""}
SUMMARY: dict[str, Any] = {**ROOM, "read_seq": 5, "unread": 2}
MEMBER: dict[str, Any] = {"user": "bob", "role": "member", "read": 3, "delivered": 4}
RECEIPT: dict[str, Any] = {"user": "bob", "delivered": 4, "read": 3}
MESSAGE: dict[str, Any] = {
    "room": "r1",
    "seq": 8,
    "cid": "c-8",
    "sender": "alice",
    "body": {"text": "hi", "mentions": ["bob"]},
    "ts": 1_700_000_000_123,
}

# One valid set of constructor arguments per class.
VALID: dict[type[Any], dict[str, Any]] = {
    RoomCreate: {"ref": 1, "name": "Lobby", "kind": "public", "members": ("bob", "carol")},
    RoomJoin: {"ref": 2, "room": "r1"},
    RoomLeave: {"ref": 3, "room": "r1"},
    RoomInvite: {"ref": 4, "room": "r1", "user": "bob"},
    RoomRemove: {"ref": 5, "room": "r1", "user": "bob"},
    RoomList: {"ref": 6},
    RoomMembers: {"ref": 7, "room": "r1"},
    DmOpen: {"ref": 8, "user": "bob"},
    MsgSend: {"ref": 9, "room": "r1", "cid": "c-1", "body": "hello"},
    MsgEdit: {"ref": 10, "room": "r1", "seq": 3, "body": {"text": "fixed"}},
    MsgDelete: {"ref": 11, "room": "r1", "seq": 3},
    History: {"ref": 12, "room": "r1", "before": 20, "limit": 30},
    Receipt: {"ref": 13, "room": "r1", "delivered": 9, "read": 8},
    Typing: {"room": "r1", "typing": True},
    Message: MESSAGE,
    MessageEdited: {"room": "r1", "seq": 3, "body": "edited", "edited_at": 5},
    MessageDeleted: {"room": "r1", "seq": 3},
    Receipts: {"room": "r1", "users": (RECEIPT,)},
    TypingUsers: {"room": "r1", "users": ("bob",)},
    ReadState: {"room": "r1", "seq": 8, "unread": 0},
    MemberEvent: {"room": "r1", "user": "bob", "action": "joined"},
    RoomAdded: {"room": ROOM, "unread": 3},
    RoomInfo: ROOM,
    RoomSummaryInfo: SUMMARY,
    MemberInfo: MEMBER,
    ReceiptInfo: RECEIPT,
}

ROOM_TYPES = {
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
}
PUSH_TYPES = {"msg", "msg.edited", "msg.deleted", "receipts", "typing", "read", "member", "room"}


def build(cls: type[Any], **changes: Any) -> Any:
    return cls(**{**VALID[cls], **changes})


def label(cls: type[Any]) -> str:
    """How validation messages name the owner of a field."""
    return f"{cls.TYPE!r}" if hasattr(cls, "TYPE") else cls.NAME


def test_registries_hold_the_room_and_message_frames() -> None:
    assert set(CLIENT_EVENT_TYPES) >= ROOM_TYPES
    assert set(SERVER_EVENT_TYPES) >= PUSH_TYPES
    # "typing" is two classes: the client's flag and the server's list.
    assert CLIENT_EVENT_TYPES["typing"] is Typing
    assert SERVER_EVENT_TYPES["typing"] is TypingUsers
    assert SERVER_EVENT_TYPES["msg"] is Message
    assert SERVER_EVENT_TYPES["room"] is RoomAdded


@pytest.mark.parametrize("cls", list(VALID), ids=lambda c: c.__name__)
def test_valid_values_build_frozen_slotted_objects(cls: type[Any]) -> None:
    obj = build(cls)
    assert not hasattr(obj, "__dict__")
    field = dataclasses.fields(obj)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, field, None)


@pytest.mark.parametrize("cls", list(VALID), ids=lambda c: c.__name__)
def test_wire_map_round_trip(cls: type[Any]) -> None:
    obj = build(cls)
    wire = obj.to_wire()
    assert cls.from_wire(wire) == obj
    if isinstance(obj, Frame):
        assert wire["t"] == cls.TYPE
        # Through msgpack too, in the direction the frame travels.
        if cls in CLIENT_EVENT_TYPES.values():
            assert decode(encode(obj)) == obj
        if cls in SERVER_EVENT_TYPES.values():
            assert decode_server_frame(encode(obj)) == obj
    else:
        assert isinstance(obj, Shape)
        assert "t" not in wire


def test_wire_maps_are_plain_values() -> None:
    create = build(RoomCreate)
    assert create.kind is RoomKind.PUBLIC
    assert create.to_wire() == {
        "t": "room.create",
        "ref": 1,
        "name": "Lobby",
        "kind": "public",
        "members": ["bob", "carol"],
    }
    added = build(RoomAdded)
    assert isinstance(added.room, RoomInfo)
    assert added.to_wire() == {"t": "room", "room": ROOM, "unread": 3}
    receipts = build(Receipts)
    assert receipts.users == (ReceiptInfo(**RECEIPT),)
    assert receipts.to_wire() == {"t": "receipts", "room": "r1", "users": [RECEIPT]}
    member = build(MemberEvent)
    assert member.action is MemberAction.JOINED
    assert member.to_wire() == {"t": "member", "room": "r1", "user": "bob", "action": "joined"}
    assert MemberInfo(**MEMBER).role is MemberRole.MEMBER


def test_optional_fields_default_and_nil_means_absent() -> None:
    assert RoomCreate.from_wire(
        {"t": "room.create", "ref": 1, "name": "x", "kind": "private", "members": None}
    ) == RoomCreate(ref=1, name="x", kind=RoomKind.PRIVATE)
    history = History.from_wire({"t": "history", "ref": 1, "room": "r", "before": None})
    assert (history.before, history.after, history.limit) == (None, None, DEFAULT_HISTORY_LIMIT)
    assert history.to_wire() == {"t": "history", "ref": 1, "room": "r", "limit": 50}
    receipt = Receipt.from_wire({"t": "receipt", "room": "r", "read": 4})
    assert receipt == Receipt(room="r", read=4)
    assert receipt.to_wire() == {"t": "receipt", "room": "r", "read": 4}


# ---------------------------------------------------------------- field validation

I64 = f"0..{MAX_SEQ}"
SEQ = f"1..{MAX_SEQ}"

# (class, field, bad value, expected text after "Expected <owner> field <field> to be ").
INVALID: list[tuple[type[Any], str, object, str]] = [
    (RoomCreate, "ref", -1, "an int in 0..4294967295"),
    (RoomCreate, "name", "", "a str of 1..128 characters"),
    (RoomCreate, "name", "n" * 129, "a str of 1..128 characters"),
    (RoomCreate, "kind", "direct", "one of 'public', 'private'"),
    (RoomCreate, "kind", "open", "one of 'public', 'private'"),
    (RoomCreate, "members", ("u",) * 101, "an array of 0..100 user ids (str of 1..128 characters)"),
    (RoomCreate, "members", ("",), "an array of 0..100 user ids (str of 1..128 characters)"),
    (RoomCreate, "members", "bob", "an array of 0..100 user ids (str of 1..128 characters)"),
    (RoomJoin, "ref", "1", "an int in 0..4294967295"),
    (RoomJoin, "room", "", "a str of 1..64 characters"),
    (RoomJoin, "room", "r" * 65, "a str of 1..64 characters"),
    (RoomLeave, "room", 5, "a str of 1..64 characters"),
    (RoomLeave, "ref", None, "an int in 0..4294967295"),
    (RoomInvite, "room", None, "a str of 1..64 characters"),
    (RoomInvite, "user", "u" * 129, "a str of 1..128 characters"),
    (RoomInvite, "ref", True, "an int in 0..4294967295"),
    (RoomRemove, "user", "", "a str of 1..128 characters"),
    (RoomRemove, "room", ["r"], "a str of 1..64 characters"),
    (RoomRemove, "ref", 2**32, "an int in 0..4294967295"),
    (RoomList, "ref", 1.0, "an int in 0..4294967295"),
    (RoomMembers, "room", "", "a str of 1..64 characters"),
    (RoomMembers, "ref", -2, "an int in 0..4294967295"),
    (DmOpen, "user", "", "a str of 1..128 characters"),
    (DmOpen, "ref", None, "an int in 0..4294967295"),
    (MsgSend, "ref", None, "an int in 0..4294967295"),
    (MsgSend, "room", "", "a str of 1..64 characters"),
    (MsgSend, "cid", "", "a str of 1..64 characters"),
    (MsgSend, "cid", "c" * 65, "a str of 1..64 characters"),
    (MsgSend, "cid", 7, "a str of 1..64 characters"),
    (MsgEdit, "seq", 0, f"an int in {SEQ}"),
    (MsgEdit, "seq", 2**63, f"an int in {SEQ}"),
    (MsgEdit, "room", "", "a str of 1..64 characters"),
    (MsgEdit, "ref", -1, "an int in 0..4294967295"),
    (MsgDelete, "seq", True, f"an int in {SEQ}"),
    (MsgDelete, "room", None, "a str of 1..64 characters"),
    (MsgDelete, "ref", "x", "an int in 0..4294967295"),
    (History, "before", 0, f"an int in {SEQ}"),
    (History, "after", -1, f"an int in {I64}"),
    (History, "limit", 0, "an int in 1..500"),
    (History, "limit", 501, "an int in 1..500"),
    (History, "room", "", "a str of 1..64 characters"),
    (History, "ref", None, "an int in 0..4294967295"),
    (Receipt, "delivered", 0, f"an int in {SEQ}"),
    (Receipt, "read", "3", f"an int in {SEQ}"),
    (Receipt, "room", "", "a str of 1..64 characters"),
    (Receipt, "ref", -1, "an int in 0..4294967295"),
    (Typing, "typing", 1, "a bool"),
    (Typing, "typing", None, "a bool"),
    (Typing, "room", "", "a str of 1..64 characters"),
    (Message, "room", "", "a str of 1..64 characters"),
    (Message, "seq", 0, f"an int in {SEQ}"),
    (Message, "cid", "", "a str of 1..64 characters"),
    (Message, "sender", "", "a str of 1..128 characters"),
    (Message, "ts", -1, f"an int in {I64}"),
    (Message, "edited_at", -1, f"an int in {I64}"),
    (Message, "deleted", 1, "a bool"),
    (MessageEdited, "room", "", "a str of 1..64 characters"),
    (MessageEdited, "seq", 0, f"an int in {SEQ}"),
    (MessageEdited, "edited_at", None, f"an int in {I64}"),
    (MessageDeleted, "room", "r" * 65, "a str of 1..64 characters"),
    (MessageDeleted, "seq", -3, f"an int in {SEQ}"),
    (Receipts, "room", "", "a str of 1..64 characters"),
    (Receipts, "users", (), "an array of 1..1000 receipt maps"),
    (Receipts, "users", (RECEIPT,) * 1001, "an array of 1..1000 receipt maps"),
    (Receipts, "users", RECEIPT, "an array of 1..1000 receipt maps"),
    (TypingUsers, "room", "", "a str of 1..64 characters"),
    (TypingUsers, "users", ("u",) * 101, "an array of 0..100 user ids (str of 1..128 characters)"),
    (TypingUsers, "users", None, "an array of 0..100 user ids (str of 1..128 characters)"),
    (ReadState, "room", "", "a str of 1..64 characters"),
    (ReadState, "seq", -1, f"an int in {I64}"),
    (ReadState, "unread", -1, f"an int in {I64}"),
    (MemberEvent, "room", "", "a str of 1..64 characters"),
    (MemberEvent, "user", "", "a str of 1..128 characters"),
    (MemberEvent, "action", "kicked", "one of 'joined', 'left', 'invited', 'removed'"),
    (RoomAdded, "room", "r1", "a room map"),
    (RoomAdded, "unread", -1, f"an int in {I64}"),
    (RoomInfo, "id", "", "a str of 1..64 characters"),
    (RoomInfo, "kind", "secret", "one of 'public', 'private', 'direct'"),
    (RoomInfo, "name", "n" * 129, "a str of 0..128 characters"),
    (RoomInfo, "owner", "", "a str of 1..128 characters"),
    (RoomInfo, "last_seq", -1, f"an int in {I64}"),
    (RoomInfo, "created_at", None, f"an int in {I64}"),
    (RoomSummaryInfo, "id", None, "a str of 1..64 characters"),
    (RoomSummaryInfo, "kind", None, "one of 'public', 'private', 'direct'"),
    (RoomSummaryInfo, "name", 1, "a str of 0..128 characters"),
    (RoomSummaryInfo, "owner", "", "a str of 1..128 characters"),
    (RoomSummaryInfo, "last_seq", 1.5, f"an int in {I64}"),
    (RoomSummaryInfo, "created_at", -1, f"an int in {I64}"),
    (RoomSummaryInfo, "read_seq", -1, f"an int in {I64}"),
    (RoomSummaryInfo, "unread", -1, f"an int in {I64}"),
    (MemberInfo, "user", "", "a str of 1..128 characters"),
    (MemberInfo, "role", "admin", "one of 'owner', 'member'"),
    (MemberInfo, "read", -1, f"an int in {I64}"),
    (MemberInfo, "delivered", None, f"an int in {I64}"),
    (ReceiptInfo, "user", "", "a str of 1..128 characters"),
    (ReceiptInfo, "delivered", -1, f"an int in {I64}"),
    (ReceiptInfo, "read", True, f"an int in {I64}"),
]


@pytest.mark.parametrize(
    ("cls", "field", "value", "expected"),
    INVALID,
    ids=[f"{c.__name__}.{f}={brief(v)[:12]}" for c, f, v, _ in INVALID],
)
def test_each_invalid_field_is_refused(
    cls: type[Any], field: str, value: object, expected: str
) -> None:
    message = f"Expected {label(cls)} field {field!r} to be {expected}, got {brief(value)}"
    with pytest.raises(LocalProtocolError, match=exact(message)):
        build(cls, **{field: value})


def test_every_field_of_every_class_has_an_invalid_case() -> None:
    covered = {(cls, field) for cls, field, _, _ in INVALID}
    for cls in VALID:
        for field in dataclasses.fields(cls):
            # Bodies are covered by test_invalid_bodies_are_refused.
            if field.name != "body":
                assert (cls, field.name) in covered, f"{cls.__name__}.{field.name}"


@pytest.mark.parametrize("cls", list(VALID), ids=lambda c: c.__name__)
def test_missing_required_field(cls: type[Any]) -> None:
    required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
    wire = build(cls).to_wire()
    del wire[required[0]]
    what = f"{cls.TYPE!r} frame" if issubclass(cls, Frame) else cls.NAME
    with pytest.raises(
        LocalProtocolError, match=exact(f"Expected {what} to have field {required[0]!r}, got none")
    ):
        cls.from_wire(wire)


def test_nested_map_errors_name_the_shape() -> None:
    with pytest.raises(
        LocalProtocolError,
        match=exact(
            "Expected room map field 'kind' to be one of 'public', 'private', 'direct', got 'x'"
        ),
    ):
        RoomAdded(room={**ROOM, "kind": "x"}, unread=0)  # type: ignore[arg-type]
    with pytest.raises(
        LocalProtocolError, match=exact("Expected receipt map to have field 'read', got none")
    ):
        Receipts(room="r", users=({"user": "a", "delivered": 1},))  # type: ignore[arg-type]
    with pytest.raises(
        LocalProtocolError,
        match=exact("Expected 'receipts' field 'users' to be a receipt map, got 'bob'"),
    ):
        Receipts(room="r", users=("bob",))  # type: ignore[arg-type]


def test_bounds_are_inclusive() -> None:
    assert build(RoomCreate, name="n" * 128, members=("u",) * 100).members == ("u",) * 100
    assert build(RoomCreate, members=()).members == ()
    assert build(RoomJoin, room="r" * 64).room == "r" * 64
    assert build(MsgSend, cid="c" * 64).cid == "c" * 64
    assert build(MsgEdit, seq=MAX_SEQ).seq == MAX_SEQ
    assert build(History, limit=500).limit == 500
    assert build(History, before=None, after=0).after == 0
    assert build(TypingUsers, users=()).users == ()
    assert build(TypingUsers, users=("u",) * 100).users == ("u",) * 100
    assert len(build(Receipts, users=(RECEIPT,) * 1000).users) == 1000
    assert build(RoomInfo, name="").name == ""
    assert build(ReadState, seq=0).seq == 0


def test_history_cursors_are_exclusive_of_each_other() -> None:
    with pytest.raises(
        LocalProtocolError,
        match=exact(
            "Expected 'history' frame to have at most one of 'before' and 'after', got both"
        ),
    ):
        build(History, before=9, after=2)
    assert build(History, before=None).forward is False
    assert build(History, before=None, after=3).forward is True


def test_receipt_needs_a_position() -> None:
    with pytest.raises(
        LocalProtocolError,
        match=exact("Expected 'receipt' frame to have field 'delivered' or 'read', got neither"),
    ):
        Receipt(room="r1")
    assert Receipt(room="r1", delivered=1).read is None


# ---------------------------------------------------------------- bodies

BODY_PROBLEMS: list[tuple[object, str]] = [
    (None, "nil"),
    ({1: "x"}, "a map key of type int"),
    ({b"k": "x"}, "a map key of type bytes"),
    ({"a": [{"b": {2: 0}}]}, "a map key of type int"),
    (msgpack.ExtType(1, b"x"), "a value of type ExtType"),
    (msgpack.Timestamp(1, 0), "a value of type Timestamp"),
    ([{1, 2}], "a value of type set"),
    (object(), "a value of type object"),
    (2**64, "an int outside the msgpack range"),
    ([-(2**63) - 1], "an int outside the msgpack range"),
]


def nested(depth: int) -> object:
    value: object = "leaf"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("body", "problem"),
    [*BODY_PROBLEMS, (nested(11), "containers nested deeper than 10")],
    ids=lambda v: brief(v)[:20],
)
@pytest.mark.parametrize("cls", [MsgSend, MsgEdit, MessageEdited, Message])
def test_invalid_bodies_are_refused(cls: type[Any], body: object, problem: str) -> None:
    message = (
        f"Expected {label(cls)} field 'body' to be a non-nil msgpack value with str map keys, "
        f"nested at most 10 deep, got {problem}"
    )
    with pytest.raises(LocalProtocolError, match=exact(message)):
        build(cls, body=body)


@pytest.mark.parametrize(
    "body",
    [
        "text",
        "",
        0,
        -(2**63),
        2**64 - 1,
        1.5,
        True,
        False,
        b"\x00bin",
        [],
        {},
        [None, 1, "x"],
        {"text": "hi", "attachments": [{"url": "u", "size": 3}], "reply_to": None},
        nested(10),
        (1, 2),
    ],
    ids=lambda v: brief(v)[:20],
)
def test_any_msgpack_value_but_nil_is_a_body(body: object) -> None:
    assert build(MsgSend, body=body).body == body


def test_deep_bodies_do_not_exhaust_the_stack() -> None:
    with pytest.raises(LocalProtocolError, match=r"containers nested deeper than 10$"):
        build(MsgSend, body=nested(100_000))


def test_message_tombstones_have_a_nil_body() -> None:
    tomb = build(Message, body=None, deleted=True, edited_at=9)
    assert tomb.to_wire() == {**MESSAGE, "t": "msg", "body": None, "edited_at": 9, "deleted": True}
    assert decode_server_frame(encode(tomb)) == tomb
    with pytest.raises(
        LocalProtocolError,
        match=exact("Expected 'msg' field 'body' to be nil for a deleted message, got 'x'"),
    ):
        build(Message, body="x", deleted=True)
    with pytest.raises(LocalProtocolError, match=r"got nil$"):
        build(Message, body=None)
    # The body is required even though it may be nil.
    wire = build(Message).to_wire()
    del wire["body"]
    with pytest.raises(
        LocalProtocolError, match=exact("Expected 'msg' frame to have field 'body', got none")
    ):
        Message.from_wire(wire)


def test_message_wire_map_omits_unset_optional_fields() -> None:
    message = build(Message)
    assert message.to_wire() == {"t": "msg", **MESSAGE}
    assert list(message.to_wire()) == ["t", "room", "seq", "cid", "sender", "body", "ts"]
    edited = build(Message, edited_at=10)
    assert edited.to_wire()["edited_at"] == 10
    assert "deleted" not in edited.to_wire()
    assert Message.from_wire({**MESSAGE, "edited_at": None, "deleted": None}) == message
    assert message.snapshot() == MESSAGE
    assert Message.from_snapshot(MESSAGE) == message
    with pytest.raises(LocalProtocolError, match=exact("Expected a message map, got 5")):
        Message.from_snapshot(5)  # type: ignore[arg-type]


def test_message_matches_the_generic_wire_rendering() -> None:
    # Message.to_wire is written out for speed; it must say what the generic one says.
    for message in (
        build(Message),
        build(Message, edited_at=3),
        build(Message, body=None, deleted=True),
    ):
        generic = Frame.to_wire(message)
        if not message.deleted:
            del generic["deleted"]  # the generic rendering always sends it
        assert message.to_wire() == generic


# ---------------------------------------------------------------- reply builders


def test_requests_get_their_error_helper() -> None:
    for cls in VALID:
        if issubclass(cls, ClientEvent) and "ref" in cls.wire_keys():
            request = build(cls)
            error = request.error(ErrorCode.NOT_MEMBER, "not a member")
            assert (error.ref, error.code, error.temporary) == (
                request.ref,
                ErrorCode.NOT_MEMBER,
                False,
            )
    assert build(MsgSend).error(ErrorCode.UNAVAILABLE, "storage down").temporary is True
    assert not hasattr(build(Typing), "error")
    assert not hasattr(build(Typing), "reply")


@pytest.mark.parametrize(
    "cls", [RoomLeave, RoomInvite, RoomRemove, MsgDelete, Receipt], ids=lambda c: c.__name__
)
def test_empty_replies(cls: type[Any]) -> None:
    request = build(cls)
    assert request.reply() == Reply(ref=request.ref, data={})


def test_receipt_without_ref_gets_no_reply() -> None:
    quiet = Receipt(room="r1", read=3)
    with pytest.raises(
        LocalProtocolError,
        match=exact(
            "Expected a request with a ref, got "
            "Receipt(ref=None, room='r1', delivered=None, read=3)"
        ),
    ):
        quiet.reply()


@pytest.mark.parametrize("room", [RoomInfo(**ROOM), ROOM], ids=["shape", "map"])
def test_room_replies(room: Any) -> None:
    assert build(RoomCreate).reply(room=room) == Reply(ref=1, data={"room": ROOM})
    assert build(RoomJoin).reply(room=room) == Reply(ref=2, data={"room": ROOM})
    assert build(DmOpen).reply(room={**ROOM, "kind": "direct"}) == Reply(
        ref=8, data={"room": {**ROOM, "kind": "direct"}}
    )


def test_room_replies_check_the_room() -> None:
    with pytest.raises(
        LocalProtocolError, match=r"^Expected 'room.create' reply field 'room' to be a private"
    ):
        build(RoomCreate, kind="private").reply(room=ROOM)
    with pytest.raises(
        LocalProtocolError,
        match=exact("Expected 'room.join' reply field 'room' to be room 'r2', got 'r1'"),
    ):
        build(RoomJoin, room="r2").reply(room=ROOM)
    with pytest.raises(
        LocalProtocolError, match=r"^Expected 'dm.open' reply field 'room' to be a direct room"
    ):
        build(DmOpen).reply(room=ROOM)
    with pytest.raises(
        LocalProtocolError,
        match=exact("Expected 'room.join' reply field 'room' to be a room map, got 'r1'"),
    ):
        build(RoomJoin).reply(room="r1")
    with pytest.raises(LocalProtocolError, match=r"^Expected room map field 'last_seq'"):
        build(RoomJoin).reply(room={**ROOM, "last_seq": -1})


def test_room_list_reply() -> None:
    summary = RoomSummaryInfo(**SUMMARY)
    direct = RoomSummaryInfo.of(RoomInfo(**DIRECT), read_seq=0, unread=7)
    reply = build(RoomList).reply(rooms=[summary, direct.to_wire()])
    assert reply == Reply(ref=6, data={"rooms": [SUMMARY, {**DIRECT, "read_seq": 0, "unread": 7}]})
    assert summary.room() == RoomInfo(**ROOM)
    assert build(RoomList).reply(rooms=iter(())) == Reply(ref=6, data={"rooms": []})
    with pytest.raises(
        LocalProtocolError,
        match=exact("Expected 'room.list' reply field 'rooms' to be a room summary map, got 3"),
    ):
        build(RoomList).reply(rooms=[3])
    with pytest.raises(
        LocalProtocolError,
        match=exact("Expected 'room.list' reply field 'rooms' to be an array, got 'r1'"),
    ):
        build(RoomList).reply(rooms="r1")
    with pytest.raises(
        LocalProtocolError,
        match=exact("Expected room summary map to have field 'read_seq', got none"),
    ):
        build(RoomList).reply(rooms=[ROOM])


def test_room_members_reply() -> None:
    owner = MemberInfo(user="alice", role=MemberRole.OWNER, read=7, delivered=7)
    reply = build(RoomMembers).reply(members=(owner, MEMBER))
    assert reply == Reply(
        ref=7,
        data={"members": [{"user": "alice", "role": "owner", "read": 7, "delivered": 7}, MEMBER]},
    )
    with pytest.raises(LocalProtocolError, match=r"^Expected member map field 'role'"):
        build(RoomMembers).reply(members=[{**MEMBER, "role": "boss"}])
    with pytest.raises(
        LocalProtocolError,
        match=exact("Expected 'room.members' reply field 'members' to be an array, got {}"),
    ):
        build(RoomMembers).reply(members={})


def test_msg_send_reply() -> None:
    send = build(MsgSend)
    assert send.reply(seq=4, ts=1_700_000_000_000, dup=False) == Reply(
        ref=9, data={"seq": 4, "ts": 1_700_000_000_000, "dup": False}
    )
    assert send.reply(seq=1, ts=0, dup=True).data["dup"] is True


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"seq": 0},
            f"Expected 'msg.send' reply field 'seq' to be an int in {SEQ}, got 0",
        ),
        (
            {"ts": -1},
            f"Expected 'msg.send' reply field 'ts' to be an int in {I64}, got -1",
        ),
        ({"dup": 0}, "Expected 'msg.send' reply field 'dup' to be a bool, got 0"),
    ],
)
def test_msg_send_reply_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(LocalProtocolError, match=exact(message)):
        build(MsgSend).reply(**{"seq": 1, "ts": 1, "dup": False, **kwargs})


def test_msg_edit_reply() -> None:
    assert build(MsgEdit).reply(edited_at=5) == Reply(ref=10, data={"edited_at": 5})
    with pytest.raises(
        LocalProtocolError,
        match=exact(f"Expected 'msg.edit' reply field 'edited_at' to be an int in {I64}, got None"),
    ):
        build(MsgEdit).reply(edited_at=None)


def page(*seqs: int, room: str = "r1") -> list[Message]:
    return [
        Message(room=room, seq=s, cid=f"c{s}", sender="alice", body=f"m{s}", ts=s) for s in seqs
    ]


def test_history_reply() -> None:
    back = History(ref=1, room="r1", before=10, limit=3)
    reply = back.reply(messages=page(7, 8, 9), more=True)
    assert reply.data == {"messages": [m.snapshot() for m in page(7, 8, 9)], "more": True}
    # MESSAGE maps are accepted, validated and kept as maps.
    assert back.reply(messages=[m.snapshot() for m in page(7, 8, 9)], more=True) == reply
    assert back.reply(messages=[], more=False).data == {"messages": [], "more": False}
    tomb = Message(room="r1", seq=2, cid="c", sender="a", body=None, ts=1, deleted=True)
    assert History(ref=1, room="r1").reply(messages=[tomb], more=False).data["messages"] == [
        tomb.snapshot()
    ]


@pytest.mark.parametrize(
    ("request_", "messages", "message"),
    [
        (
            History(ref=1, room="r1", limit=2),
            page(1, 2, 3),
            "Expected 'history' reply field 'messages' to hold at most 2 messages, got 3",
        ),
        (
            History(ref=1, room="r1"),
            page(2, 1),
            "Expected 'history' reply field 'messages' to be messages of room 'r1' in "
            "ascending seq within the cursor, got room 'r1' seq 1 after seq 2",
        ),
        (
            History(ref=1, room="r1"),
            page(1, room="r2"),
            "Expected 'history' reply field 'messages' to be messages of room 'r1' in "
            "ascending seq within the cursor, got room 'r2' seq 1 after seq 0",
        ),
        (
            History(ref=1, room="r1", before=5),
            page(4, 5),
            "Expected 'history' reply field 'messages' to be messages of room 'r1' in "
            "ascending seq within the cursor, got room 'r1' seq 5 after seq 4",
        ),
        (
            History(ref=1, room="r1", after=5),
            page(5, 6),
            "Expected 'history' reply field 'messages' to be messages of room 'r1' in "
            "ascending seq within the cursor, got room 'r1' seq 5 after seq 5",
        ),
    ],
)
def test_history_reply_validation(request_: History, messages: list[Message], message: str) -> None:
    with pytest.raises(LocalProtocolError, match=exact(message)):
        request_.reply(messages=messages, more=False)


def test_history_reply_validates_maps_and_more() -> None:
    with pytest.raises(LocalProtocolError, match=r"^Expected 'msg' field 'seq'"):
        History(ref=1, room="r1").reply(messages=[{**MESSAGE, "seq": 0}], more=False)
    with pytest.raises(
        LocalProtocolError,
        match=exact("Expected 'history' reply field 'more' to be a bool, got None"),
    ):
        History(ref=1, room="r1").reply(messages=[], more=None)  # type: ignore[arg-type]
