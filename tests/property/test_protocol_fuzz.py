"""Property tests of the protocol core (P17).

Invariant (after h11's fuzzing): whatever bytes a client sends, in any state,
``ServerConnection.receive_data`` / ``events`` produce validated events or raise
``RemoteProtocolError``, never anything else, and the hint it carries is always
legal to ``send`` right away. The driver below behaves like the adapter: it
answers requests, sends hints, and closes after ``bye``.

Unlike h11, messages are never split: the WebSocket layer hands the core whole
messages, so "one byte at a time" means one-byte messages, which the arbitrary
bytes strategy already covers.

Also: every valid event survives ``encode`` then ``decode`` unchanged. The
strategies cover every v1 frame type, rooms and messages included; a test
below fails when a frame type is added without its strategy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.transport.protocol import (
    CLIENT_EVENT_TYPES,
    MAX_BODY_DEPTH,
    SERVER_EVENT_TYPES,
    Bye,
    CallAnswer,
    CallEnded,
    CallIce,
    CallJoin,
    CallLeave,
    CallMute,
    CallOffer,
    CallParticipant,
    CallPeer,
    CallPublish,
    CallQuality,
    CallRestart,
    CallRestarted,
    CallSpeaker,
    CallTrack,
    ClientEvent,
    ConnectionState,
    DeviceStatus,
    Disconnect,
    DisconnectCode,
    DmOpen,
    Error,
    ErrorCode,
    Hello,
    History,
    Limits,
    MediaKind,
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
    ParticipantAction,
    ParticipantInfo,
    Ping,
    Pong,
    Presence,
    PresenceSet,
    PresenceStatus,
    PresenceSubscribe,
    PresenceUnsubscribe,
    ReadState,
    Receipt,
    ReceiptInfo,
    Receipts,
    Recovered,
    RemoteProtocolError,
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
    ServerConnection,
    TrackAction,
    TrackInfo,
    Typing,
    TypingUsers,
    Welcome,
    decode,
    decode_server_frame,
    encode,
)

S = ConnectionState
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUND_TRIP = settings(max_examples=60, deadline=None)
# Small limits make the limits reachable by generated input.
LIMITS = Limits(max_pending=4, max_in_flight=3, max_depth=4, max_array_len=8, max_map_len=8)

# ---------------------------------------------------------------- strategies

MSGPACK_INTS = st.integers(min_value=-(2**63), max_value=2**64 - 1)
SCALARS = (
    st.none()
    | st.booleans()
    | MSGPACK_INTS
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=12)
)
VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
# The same without NaN, for round trips compared with == (NaN != NaN).
EQ_VALUES = st.recursive(
    SCALARS.filter(lambda v: v == v),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)


def body_depth(value: object) -> int:
    """How many containers deep ``value`` nests (0 for a scalar)."""
    if isinstance(value, dict):
        return 1 + max(map(body_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(body_depth, value), default=0)
    return 0


# Message bodies: any msgpack value but nil, comparable with == (no NaN).
BODIES = EQ_VALUES.filter(lambda v: v is not None and body_depth(v) <= MAX_BODY_DEPTH)
SEQS = st.integers(min_value=1, max_value=2**63 - 1)
POSITIONS = st.integers(min_value=0, max_value=2**63 - 1)
SMALL_SEQS = st.integers(min_value=0, max_value=12)
TIMES = st.integers(min_value=0, max_value=2**63 - 1)
ROOM_IDS = st.text(min_size=1, max_size=64)
USER_IDS = st.text(min_size=1, max_size=128)
SDPS = st.text(min_size=1, max_size=200)
PARTICIPANT_IDS = st.text(alphabet="0123456789abcdef", min_size=12, max_size=12)
TRACK_IDS = st.text(min_size=1, max_size=96)

# Plausible and implausible values for the fields of v1 client frames.
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "ref": st.integers(min_value=0, max_value=5) | MSGPACK_INTS | VALUES,
    "token": st.text(max_size=20) | VALUES,
    "device": st.text(min_size=1, max_size=64) | VALUES,
    "client": st.text(max_size=64) | VALUES,
    "n": MSGPACK_INTS | VALUES,
    "users": st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=4) | VALUES,
    "status": st.sampled_from(["active", "idle", "away"]) | VALUES,
    "room": st.text(min_size=1, max_size=8) | VALUES,
    "user": st.text(min_size=1, max_size=8) | VALUES,
    "name": st.text(min_size=1, max_size=8) | VALUES,
    "kind": st.sampled_from(["public", "private", "direct"]) | VALUES,
    "members": st.lists(st.text(min_size=1, max_size=8), max_size=3) | VALUES,
    "cid": st.text(min_size=1, max_size=8) | VALUES,
    "body": VALUES,
    "seq": SMALL_SEQS | VALUES,
    "before": SMALL_SEQS | VALUES,
    "after": SMALL_SEQS | VALUES,
    "limit": st.integers(min_value=0, max_value=501) | VALUES,
    "delivered": SMALL_SEQS | VALUES,
    "read": SMALL_SEQS | VALUES,
    "typing": st.booleans() | VALUES,
    "session": st.text(min_size=1, max_size=8) | VALUES,
    "resume": st.dictionaries(st.text(min_size=1, max_size=8), SMALL_SEQS | VALUES, max_size=3)
    | VALUES,
    # Calls.
    "sdp": st.sampled_from(["v=0\r\n", "", "x" * 70_000]) | st.text(max_size=20) | VALUES,
    "pc": st.sampled_from(["pub", "sub", "both"]) | VALUES,
    "candidate": st.text(max_size=20) | st.just("c" * 1025) | VALUES,
    "sdp_mid": st.text(max_size=4) | VALUES,
    "sdp_mline_index": st.integers(-1, 1024) | VALUES,
    "muted": st.booleans() | VALUES,
    "track": st.text(min_size=1, max_size=8) | VALUES,
    "width": st.integers(-1, 16385) | VALUES,
    "height": st.integers(-1, 16385) | VALUES,
}
FRAME_TYPES = st.sampled_from([*CLIENT_EVENT_TYPES, "poll.vote", "", "hello "])
SCHEMA_MAPS = st.fixed_dictionaries(
    {"t": FRAME_TYPES},
    optional={**FIELD_VALUES, "extra": VALUES},
)
PAYLOADS = (
    st.binary(max_size=64)
    | VALUES.map(lambda v: msgpack.packb(v, use_bin_type=True))
    | SCHEMA_MAPS.map(lambda m: msgpack.packb(m, use_bin_type=True))
)

REFS = st.integers(min_value=0, max_value=2**32 - 1)
USERS = st.lists(st.text(min_size=1, max_size=128), min_size=1, max_size=8).map(tuple)
CLIENT_EVENTS: st.SearchStrategy[ClientEvent] = st.one_of(
    st.builds(
        Hello,
        ref=REFS,
        token=st.text(max_size=40),
        device=st.none() | st.text(min_size=1, max_size=64),
        client=st.none() | st.text(max_size=64),
        session=st.none() | st.text(min_size=1, max_size=128),
        resume=st.none() | st.dictionaries(ROOM_IDS, POSITIONS, max_size=4),
    ),
    st.builds(Ping, n=st.none() | MSGPACK_INTS),
    st.builds(Pong, n=MSGPACK_INTS),
    st.builds(PresenceSubscribe, ref=REFS, users=USERS),
    st.builds(PresenceUnsubscribe, ref=REFS, users=USERS),
    st.builds(PresenceSet, ref=st.none() | REFS, status=st.sampled_from(DeviceStatus)),
    st.just(Bye()),
    st.builds(
        RoomCreate,
        ref=REFS,
        name=st.text(min_size=1, max_size=128),
        kind=st.sampled_from([RoomKind.PUBLIC, RoomKind.PRIVATE]),
        members=st.lists(USER_IDS, max_size=5).map(tuple),
    ),
    st.builds(RoomJoin, ref=REFS, room=ROOM_IDS),
    st.builds(RoomLeave, ref=REFS, room=ROOM_IDS),
    st.builds(RoomInvite, ref=REFS, room=ROOM_IDS, user=USER_IDS),
    st.builds(RoomRemove, ref=REFS, room=ROOM_IDS, user=USER_IDS),
    st.builds(RoomList, ref=REFS),
    st.builds(RoomMembers, ref=REFS, room=ROOM_IDS),
    st.builds(DmOpen, ref=REFS, user=USER_IDS),
    st.builds(MsgSend, ref=REFS, room=ROOM_IDS, cid=st.text(min_size=1, max_size=64), body=BODIES),
    st.builds(MsgEdit, ref=REFS, room=ROOM_IDS, seq=SEQS, body=BODIES),
    st.builds(MsgDelete, ref=REFS, room=ROOM_IDS, seq=SEQS),
    st.one_of(
        st.builds(History, ref=REFS, room=ROOM_IDS, before=st.none() | SEQS),
        st.builds(History, ref=REFS, room=ROOM_IDS, after=POSITIONS),
    ).flatmap(
        lambda h: st.integers(1, 500).map(
            lambda limit: History(
                ref=h.ref, room=h.room, before=h.before, after=h.after, limit=limit
            )
        )
    ),
    st.one_of(
        st.builds(Receipt, ref=st.none() | REFS, room=ROOM_IDS, delivered=SEQS),
        st.builds(Receipt, ref=st.none() | REFS, room=ROOM_IDS, read=SEQS),
        st.builds(Receipt, ref=st.none() | REFS, room=ROOM_IDS, delivered=SEQS, read=SEQS),
    ),
    st.builds(Typing, room=ROOM_IDS, typing=st.booleans()),
    st.builds(CallJoin, ref=REFS, room=ROOM_IDS),
    st.builds(CallLeave, ref=REFS, room=ROOM_IDS),
    st.builds(CallPublish, ref=REFS, room=ROOM_IDS, sdp=SDPS),
    st.builds(CallAnswer, ref=REFS, room=ROOM_IDS, sdp=SDPS),
    st.builds(
        CallIce,
        room=ROOM_IDS,
        pc=st.sampled_from(CallPeer),
        candidate=st.none() | st.text(max_size=1024),
        sdp_mid=st.none() | st.text(max_size=64),
        sdp_mline_index=st.none() | st.integers(0, 1023),
    ),
    st.builds(
        CallMute, ref=REFS, room=ROOM_IDS, kind=st.sampled_from(MediaKind), muted=st.booleans()
    ),
    st.builds(
        CallQuality,
        room=ROOM_IDS,
        track=TRACK_IDS,
        width=st.integers(0, 16384),
        height=st.integers(0, 16384),
    ),
    st.builds(CallRestart, ref=REFS, room=ROOM_IDS),
)
ROOM_INFOS = st.builds(
    RoomInfo,
    id=ROOM_IDS,
    kind=st.sampled_from(RoomKind),
    name=st.text(max_size=128),
    owner=USER_IDS,
    last_seq=POSITIONS,
    created_at=TIMES,
)
CALL_TRACKS = st.builds(
    TrackInfo,
    id=TRACK_IDS,
    participant=PARTICIPANT_IDS,
    kind=st.sampled_from(MediaKind),
    rids=st.lists(st.text(min_size=1, max_size=16), max_size=4).map(tuple),
    muted=st.booleans(),
)
SERVER_FRAMES = st.one_of(
    st.builds(
        Welcome,
        ref=REFS,
        session=st.text(min_size=1, max_size=128),
        user=st.text(min_size=1, max_size=128),
        name=st.text(max_size=128),
        device=st.text(min_size=1, max_size=64),
        heartbeat_ms=st.integers(1, 2**31 - 1),
        timeout_ms=st.integers(1, 2**31 - 1),
        server=st.text(min_size=1, max_size=64),
        limits=st.fixed_dictionaries(
            {"max_frame_bytes": st.integers(0, 2**31), "max_frames_per_s": st.integers(0, 999)}
        ),
        resumed=st.booleans(),
    ),
    st.builds(Reply, ref=REFS, data=st.dictionaries(st.text(max_size=6), EQ_VALUES, max_size=4)),
    st.builds(
        Error,
        ref=st.none() | REFS,
        code=st.integers(0, 0xFFFF),
        reason=st.text(max_size=100),
        temporary=st.booleans(),
    ),
    st.builds(Ping, n=MSGPACK_INTS),
    st.builds(Pong, n=MSGPACK_INTS),
    st.builds(
        Presence,
        user=st.text(min_size=1, max_size=128),
        status=st.sampled_from(PresenceStatus),
        devices=st.integers(0, 2**31 - 1),
        last_seen=st.none() | st.integers(0, 2**63 - 1),
    ),
    st.builds(
        Message,
        room=ROOM_IDS,
        seq=SEQS,
        cid=st.text(min_size=1, max_size=64),
        sender=USER_IDS,
        body=BODIES,
        ts=TIMES,
        edited_at=st.none() | TIMES,
    ),
    st.builds(
        Message,
        room=ROOM_IDS,
        seq=SEQS,
        cid=st.text(min_size=1, max_size=64),
        sender=USER_IDS,
        body=st.none(),
        ts=TIMES,
        edited_at=TIMES,
        deleted=st.just(True),
    ),
    st.builds(MessageEdited, room=ROOM_IDS, seq=SEQS, body=BODIES, edited_at=TIMES),
    st.builds(MessageDeleted, room=ROOM_IDS, seq=SEQS),
    st.builds(
        Receipts,
        room=ROOM_IDS,
        users=st.lists(
            st.builds(ReceiptInfo, user=USER_IDS, delivered=POSITIONS, read=POSITIONS),
            min_size=1,
            max_size=4,
        ).map(tuple),
    ),
    st.builds(TypingUsers, room=ROOM_IDS, users=st.lists(USER_IDS, max_size=4).map(tuple)),
    st.builds(ReadState, room=ROOM_IDS, seq=POSITIONS, unread=POSITIONS),
    st.builds(MemberEvent, room=ROOM_IDS, user=USER_IDS, action=st.sampled_from(MemberAction)),
    st.builds(RoomAdded, room=ROOM_INFOS, unread=POSITIONS),
    st.builds(
        Recovered,
        room=ROOM_IDS,
        complete=st.booleans(),
        replayed=POSITIONS,
        head=POSITIONS,
        first=st.none() | SEQS,
        code=st.none() | st.integers(100, 999),
    ),
    st.builds(
        CallOffer,
        room=ROOM_IDS,
        sdp=SDPS,
        mids=st.dictionaries(st.text(min_size=1, max_size=4), TRACK_IDS, max_size=4),
    ),
    st.builds(
        CallParticipant,
        room=ROOM_IDS,
        action=st.sampled_from(ParticipantAction),
        participant=st.builds(
            ParticipantInfo,
            id=PARTICIPANT_IDS,
            user=USER_IDS,
            device=st.text(min_size=1, max_size=64),
            tracks=st.lists(CALL_TRACKS, max_size=3).map(tuple),
            audio_muted=st.booleans(),
            video_muted=st.booleans(),
        ),
    ),
    st.builds(CallTrack, room=ROOM_IDS, action=st.sampled_from(TrackAction), track=CALL_TRACKS),
    st.builds(CallSpeaker, room=ROOM_IDS, participant=st.none() | PARTICIPANT_IDS),
    st.builds(CallRestarted, room=ROOM_IDS, reason=st.text(max_size=256)),
    st.builds(CallEnded, room=ROOM_IDS, reason=st.text(max_size=256)),
)

# ---------------------------------------------------------------- the adapter's loop

HELLO = Hello(ref=1, token="t")


def welcome(hello: Hello) -> Welcome:
    return hello.welcome(
        session="s",
        user="u",
        name="",
        device=hello.device or "d",
        heartbeat_ms=1000,
        timeout_ms=3000,
        server="tether/test",
        limits=LIMITS.advertised(max_frames_per_s=10),
    )


def connection_in(state: ConnectionState) -> ServerConnection:
    conn = ServerConnection(LIMITS)
    if state is not S.AWAITING_HELLO:
        conn.receive_data(encode(HELLO))
        assert list(conn.events()) == [HELLO]
    if state in (S.OPEN, S.CLOSING, S.CLOSED):
        conn.send(welcome(HELLO))
    if state is S.CLOSING:
        conn.receive_data(encode(Bye()))
        assert list(conn.events()) == [Bye()]
    if state is S.CLOSED:
        conn.send(Disconnect(DisconnectCode.SHUTDOWN, "draining"))
    assert conn.state is state
    return conn


def room_for(room_id: str, kind: RoomKind) -> RoomInfo:
    return RoomInfo(id=room_id, kind=kind, name="", owner="u", last_seq=0, created_at=0)


def answer_room_request(event: ClientEvent) -> Reply | Error | None:
    """The answer to a rooms-and-messages request, built with its helpers; None for none."""
    result: Reply | Error | None
    if isinstance(event, RoomCreate):
        result = event.reply(room=room_for("new", event.kind))
    elif isinstance(event, RoomJoin):
        result = event.reply(room=room_for(event.room, RoomKind.PUBLIC))
    elif isinstance(event, DmOpen):
        result = event.reply(room=room_for("dm", RoomKind.DIRECT))
    elif isinstance(event, RoomList):
        room = room_for("r", RoomKind.PRIVATE)
        result = event.reply(rooms=[RoomSummaryInfo.of(room, read_seq=0, unread=0)])
    elif isinstance(event, RoomMembers):
        owner = MemberInfo(user="u", role=MemberRole.OWNER, read=0, delivered=0)
        result = event.reply(members=[owner])
    elif isinstance(event, MsgSend):
        result = event.reply(seq=1, ts=0, dup=False)
    elif isinstance(event, MsgEdit):
        result = event.error(ErrorCode.NOT_AUTHOR, "not yours")
    elif isinstance(event, History):
        result = event.reply(messages=[], more=False)
    elif isinstance(event, RoomLeave | RoomInvite | RoomRemove | MsgDelete):
        result = event.reply()
    elif isinstance(event, Receipt):
        result = None if event.ref is None else event.reply()
    elif isinstance(event, CallJoin):
        me = ParticipantInfo(id="0123456789ab", user="u", device="d")
        result = event.reply(participant=me.id, media="new", participants=[me], speaker=None)
    elif isinstance(event, CallPublish):
        track = TrackInfo(id="0123456789ab.0", participant="0123456789ab", kind=MediaKind.AUDIO)
        result = event.reply(sdp="v=0\r\n", tracks=[track])
    elif isinstance(event, CallLeave | CallAnswer | CallMute | CallRestart):
        result = event.reply()
    else:
        # Typing, and frames answered elsewhere. A request forgotten here stays
        # in flight, which drive() detects.
        result = None
    return result


def answer(conn: ServerConnection, event: ClientEvent, deferred: list[Any]) -> None:
    """Answer like the server would; some answers are deferred to test ordering."""
    if isinstance(event, Hello):
        conn.send(welcome(event))
    elif isinstance(event, Ping):
        conn.send(event.response())
    elif isinstance(event, PresenceSubscribe):
        deferred.append(event.reply({"users": []}))
    elif isinstance(event, PresenceUnsubscribe):
        deferred.append(event.error(ErrorCode.UNAVAILABLE, "later"))
    elif isinstance(event, PresenceSet) and event.ref is not None:
        conn.send(event.reply())
    elif isinstance(event, Bye):
        deferred.append(Disconnect(DisconnectCode.NORMAL, "bye"))
    elif (room_answer := answer_room_request(event)) is not None:
        # Rooms answer later than presence, interleaved with a push.
        deferred.append(room_answer)
        deferred.append(TypingUsers(room="r", users=()))


def check_hint(conn: ServerConnection, error: RemoteProtocolError) -> bool:
    """Send the error's hint as the adapter would; return True if the connection ended."""
    assert (error.close_hint is None) != (error.error_hint is None)
    limit = 512 if isinstance(error.hint, Error) else 123
    assert len(error.hint.reason.encode()) <= limit
    sent = conn.send(error.hint)  # must be legal in the state reached
    if error.fatal:
        assert sent == b""
        assert conn.state is S.CLOSED
    return error.fatal


def drain(conn: ServerConnection, deferred: list[Any]) -> RemoteProtocolError | None:
    """Take every queued event, answering each; return the error that stopped it."""
    try:
        for event in conn.events():
            assert isinstance(event, ClientEvent)
            assert type(event) is CLIENT_EVENT_TYPES[event.TYPE]
            answer(conn, event, deferred)
    except RemoteProtocolError as exc:
        return exc
    return None


def drive(conn: ServerConnection, payloads: list[bytes]) -> None:
    deferred: list[Any] = []
    for payload in payloads:
        error: RemoteProtocolError | None = None
        try:
            conn.receive_data(payload)
        except RemoteProtocolError as exc:
            error = exc
        if error is not None:
            assert error.fatal  # receive_data only raises for limits, all fatal
            check_hint(conn, error)
            return
        while (error := drain(conn, deferred)) is not None:
            if check_hint(conn, error):
                return
        for late in deferred:
            if conn.state is not S.CLOSED:
                conn.send(late)
        deferred.clear()
    # Every request got its answer (a connection set up in HELLO_RECEIVED still
    # owes the answer to the set-up hello, which this driver did not see).
    in_flight = conn.statistics().in_flight
    assert in_flight == 0 or (conn.state is S.HELLO_RECEIVED and in_flight == 1)


# ---------------------------------------------------------------- properties


@FUZZ
@given(state=st.sampled_from(S), payloads=st.lists(PAYLOADS, min_size=1, max_size=6))
def test_any_input_gives_events_or_remote_errors(
    state: ConnectionState, payloads: list[bytes]
) -> None:
    drive(connection_in(state), payloads)


@FUZZ
@given(
    state=st.sampled_from(S),
    events=st.lists(CLIENT_EVENTS, min_size=1, max_size=6),
    garbage=st.lists(PAYLOADS, max_size=2),
)
def test_valid_frames_mixed_with_garbage(
    state: ConnectionState, events: list[ClientEvent], garbage: list[bytes]
) -> None:
    drive(connection_in(state), [*map(encode, events), *garbage])


@ROUND_TRIP
@given(event=CLIENT_EVENTS)
def test_client_events_round_trip(event: ClientEvent) -> None:
    assert decode(encode(event)) == event


def test_the_strategies_cover_every_frame_type() -> None:
    def built(strategy: st.SearchStrategy[Any], types: Mapping[str, type[Any]]) -> set[str]:
        # The classes a strategy builds appear by name in its repr.
        text = repr(strategy)
        return {name for name, cls in types.items() if re.search(rf"\b{cls.__name__}\b", text)}

    assert built(CLIENT_EVENTS, CLIENT_EVENT_TYPES) == set(CLIENT_EVENT_TYPES)
    assert built(SERVER_FRAMES, SERVER_EVENT_TYPES) == set(SERVER_EVENT_TYPES)
    wire_keys = {name for cls in CLIENT_EVENT_TYPES.values() for name in cls.wire_keys()}
    assert set(FIELD_VALUES) >= wire_keys


@ROUND_TRIP
@given(frame=SERVER_FRAMES)
def test_server_frames_round_trip(frame: Any) -> None:
    assert decode_server_frame(encode(frame)) == frame
