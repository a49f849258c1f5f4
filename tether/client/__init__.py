"""tether's Python client SDK (trio, on trio-websocket).

Example::

    from tether.client import Message, connect

    async with connect("ws://127.0.0.1:8740/ws", token) as client:
        room = await client.open_dm("bob")
        await client.send(room.id, {"text": "Train at 9?"})
        async for event in client.events():
            if isinstance(event, Message):
                print(event.sender, event.body)
                await client.ack(event.room, delivered=event.seq, wait=False)

The client answers server heartbeats for you, watches the server's liveness
(no frame for ``heartbeat_ms + timeout_ms`` means a dead connection), matches
replies to requests by ``ref``, turns pushes into typed events and errors into
typed exceptions, and resends a message whose send failed temporarily with
the same ``cid`` (the server stores it once). When the connection drops it
reconnects by itself (backoff with full jitter) and resumes: missed messages
arrive as events, once each and in order, unanswered sends are resent with
their ``cid``, and ``Reconnecting`` / ``Reconnected`` events tell the
application. It speaks the protocol exactly as ``docs/protocol.md`` documents
it, with plain msgpack maps: it doubles as a reference client for authors in
other languages. The user guide is ``docs/client.md``.
"""

from tether.client._client import (
    AuthenticationError,
    CallEnded,
    CallEvent,
    CallJoined,
    CallMedia,
    CallOffer,
    CallParticipant,
    CallParticipantEvent,
    CallRestart,
    CallSpeaker,
    CallTrack,
    CallTrackEvent,
    CallWatch,
    Client,
    ConnectionClosed,
    Event,
    HandshakeError,
    HistoryPage,
    IceServer,
    MalformedReply,
    Member,
    MemberEvent,
    Message,
    MessageDeletedEvent,
    MessageEditedEvent,
    MessageEvent,
    PresenceEvent,
    PublishResult,
    ReadStateEvent,
    ReceiptEntry,
    ReceiptsEvent,
    ReconnectCallback,
    Reconnected,
    Reconnecting,
    Recovered,
    RequestError,
    RequestInterrupted,
    ResyncFailed,
    Room,
    RoomAddedEvent,
    RoomKind,
    RoomSummary,
    SendResult,
    ServerError,
    TetherError,
    TokenProvider,
    TypingEvent,
    UnknownEvent,
    Welcome,
    connect,
    new_cid,
)

__all__ = [
    "AuthenticationError",
    "CallEnded",
    "CallEvent",
    "CallJoined",
    "CallMedia",
    "CallOffer",
    "CallParticipant",
    "CallParticipantEvent",
    "CallRestart",
    "CallSpeaker",
    "CallTrack",
    "CallTrackEvent",
    "CallWatch",
    "Client",
    "ConnectionClosed",
    "Event",
    "HandshakeError",
    "HistoryPage",
    "IceServer",
    "MalformedReply",
    "Member",
    "MemberEvent",
    "Message",
    "MessageDeletedEvent",
    "MessageEditedEvent",
    "MessageEvent",
    "PresenceEvent",
    "PublishResult",
    "ReadStateEvent",
    "ReceiptEntry",
    "ReceiptsEvent",
    "ReconnectCallback",
    "Reconnected",
    "Reconnecting",
    "Recovered",
    "RequestError",
    "RequestInterrupted",
    "ResyncFailed",
    "Room",
    "RoomAddedEvent",
    "RoomKind",
    "RoomSummary",
    "SendResult",
    "ServerError",
    "TetherError",
    "TokenProvider",
    "TypingEvent",
    "UnknownEvent",
    "Welcome",
    "connect",
    "new_cid",
]
