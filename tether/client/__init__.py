"""tether's Python client SDK (trio, on trio-websocket).

Example::

    from tether.client import connect

    async with connect("ws://127.0.0.1:8740/ws", token) as client:
        await client.subscribe_presence(["bob"])
        async for event in client.events():
            print(event)

The client answers server heartbeats for you, watches the server's liveness
(no frame for ``heartbeat_ms + timeout_ms`` means a dead connection), matches
replies to requests by ``ref``, and turns errors into typed exceptions. It
speaks the protocol exactly as ``docs/protocol.md`` documents it, with plain
msgpack maps: it doubles as a reference client for authors in other languages.
"""

from tether.client._client import (
    AuthenticationError,
    Client,
    ConnectionClosed,
    Event,
    PresenceEvent,
    RequestError,
    ServerError,
    TetherError,
    UnknownEvent,
    Welcome,
    connect,
)

__all__ = [
    "AuthenticationError",
    "Client",
    "ConnectionClosed",
    "Event",
    "PresenceEvent",
    "RequestError",
    "ServerError",
    "TetherError",
    "UnknownEvent",
    "Welcome",
    "connect",
]
