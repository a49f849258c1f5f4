"""Load generator of ``tether bench call``: call participants in one process.

Reads its parameters as one JSON line on stdin (see :func:`tether.bench._harness.
start_worker`), then commands, one JSON line each; answers with JSON lines on
stdout:

- at start: connects ``len(tokens)`` clients to ``url``, joins ``room`` and its
  call with each (a :class:`tether.media.peer.CallPeer` publishing pre-encoded
  audio+video, ``media="replay"``, receiving in sink mode: RTP counted from
  the clear header and dropped), then prints ``{"phase": "ready"}``;
- ``{"cmd": "snapshot"}`` → ``{"phase": "snapshot", "packets": int, "lost": int,
  "tracks": [int per participant: remote tracks with packets], "rebuilds": int}``
  (totals over its participants since the start; ``rebuilds``: media published
  afresh after a restart or a failed connection);
- ``{"cmd": "mute", "muted": bool}`` → every participant mutes or unmutes
  audio and video; ``{"phase": "muted"}``;
- ``{"cmd": "stop"}`` (or end of stdin) → leaves and exits.
"""

from __future__ import annotations

import json
import sys
from contextlib import AsyncExitStack
from typing import Any

import trio

from tether.bench._harness import emit, worker_params
from tether.client import connect
from tether.media.peer import CallPeer, open_call_peer
from tether.media.synthetic import VideoSpec

#: A command line from the orchestrator is at most this long.
_MAX_LINE = 4096


def _snapshot(peers: list[CallPeer]) -> dict[str, Any]:
    packets = lost = 0
    tracks = []
    for peer in peers:
        stats = peer.track_stats()
        packets += sum(s.packets for s in stats.values())
        lost += sum(s.lost for s in stats.values())
        own = peer.participant
        tracks.append(sum(1 for t, s in stats.items() if s.packets and not t.startswith(f"{own}.")))
    return {
        "phase": "snapshot",
        "packets": packets,
        "lost": lost,
        "tracks": tracks,
        "rebuilds": sum(p.rebuilds for p in peers),
    }


async def _commands(peers: list[CallPeer]) -> None:
    stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
    buffer = b""
    while True:
        chunk = await stdin.receive_some(_MAX_LINE)
        if not chunk:
            return
        buffer += chunk
        if len(buffer) > _MAX_LINE:
            raise RuntimeError("command line too long")
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            command = json.loads(line)
            if command["cmd"] == "stop":
                return
            if command["cmd"] == "snapshot":
                emit(_snapshot(peers))
            elif command["cmd"] == "mute":
                muted = bool(command["muted"])
                async with trio.open_nursery() as nursery:
                    for peer in peers:
                        nursery.start_soon(peer.mute, "audio", muted)
                        nursery.start_soon(peer.mute, "video", muted)
                emit({"phase": "muted", "muted": muted})


async def main(params: dict[str, Any]) -> None:
    """Run the participants until told to stop."""
    spec = VideoSpec(**params["video"])
    async with AsyncExitStack() as stack:
        peers: list[CallPeer] = []
        for index, token in enumerate(params["tokens"]):
            client = await stack.enter_async_context(connect(params["url"], token))
            await client.join_room(params["room"])
            peer = await stack.enter_async_context(
                open_call_peer(
                    client,
                    params["room"],
                    media="replay",
                    sink=True,
                    video_spec=spec,
                    tone_hz=300.0 + 50 * index,
                    join_timeout=60.0,
                )
            )
            peers.append(peer)
        emit({"phase": "ready"})
        await _commands(peers)


if __name__ == "__main__":
    trio.run(main, worker_params())
