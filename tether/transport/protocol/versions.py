"""Protocol versions, negotiated as WebSocket subprotocols.

A version, once shipped, is never changed incompatibly: new frame types and new
optional keys may be added within ``tether.v1`` (clients ignore what they do
not know), anything else becomes ``tether.v2``, offered alongside v1 for as long
as v1 clients are supported. A broadcast is encoded once per version in use.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import LocalProtocolError

__all__ = ["SUBPROTOCOLS", "SUBPROTOCOL_V1", "WS_PATH", "negotiate"]

#: The HTTP path of the WebSocket endpoint.
WS_PATH = "/ws"
#: Subprotocol of protocol version 1 (msgpack frames, see docs/protocol.md).
SUBPROTOCOL_V1 = "tether.v1"
#: Subprotocols this server speaks, most preferred first.
SUBPROTOCOLS: tuple[str, ...] = (SUBPROTOCOL_V1,)


def negotiate(offered: Sequence[str]) -> str | None:
    """Pick the subprotocol for a WebSocket upgrade.

    The server's preference wins over the client's order: the first entry of
    :data:`SUBPROTOCOLS` that the client offered.

    Args:
        offered: the subprotocols from the client's ``Sec-WebSocket-Protocol``
            header(s), already split on commas and stripped.

    Returns:
        The subprotocol to answer with, or None when the client offered none we
        speak (the transport then refuses the upgrade with 400).

    Raises:
        LocalProtocolError: ``offered`` is a single str rather than a sequence of them.
    """
    if isinstance(offered, str):
        raise LocalProtocolError(f"Expected a sequence of subprotocols, got str {offered!r}")
    offered_set = frozenset(offered)
    for subprotocol in SUBPROTOCOLS:
        if subprotocol in offered_set:
            return subprotocol
    return None
