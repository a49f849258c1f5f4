"""Fault suite: kill -9 the server under traffic, restart it, lose and duplicate nothing.

The end-to-end test runs ``tether bench recovery`` small: real ``tether serve``
processes on loopback (SQLite in a temporary folder), SIGKILLed three times
while a client process keeps sending, each time restarted on the same data
folder and port. Every client must resume after every restart, and every
acknowledged message must reach every member of its room exactly once
(docs/protocol.md, "Resuming after a reconnect"). A tiny ``resume_max_replay``
makes most resumes incomplete, so the ``history`` path is exercised too, and
each client follows two room mates with ``presence.subscribe``, so its session
is stored and must be resumed after the crash.
Nothing about time is asserted: the run's own bounds (recovery and settling
timeouts) turn a stuck resume into a failure.

The accounting tests pin how the client process tells a server fault (a
duplicate, a loss) from what the protocol allows (a replay of a seq the client
held above a gap), so that the end-to-end assertions can fail.
"""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from tether.bench import recovery
from tether.bench._recovery_client import Client, Pending, Worker


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    recovery.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.slow
def test_kill_9_restarts_lose_and_duplicate_nothing() -> None:
    args = _args(
        "--clients",
        "12",
        "--rooms",
        "3",
        "--rooms-per-client",
        "2",
        "--senders",
        "6",
        "--rate",
        "60",
        "--restarts",
        "3",
        "--kill-min-s",
        "0.3",
        "--kill-max-s",
        "1.0",
        "--warmup-s",
        "0.5",
        "--tail-s",
        "0.5",
        "--resume-max-replay",
        "3",
        "--subscribe",
        "2",
        "--recovery-timeout-s",
        "60",
        "--settle-s",
        "30",
        "--no-pin",
    )
    result = recovery.run(args)
    summary = {k: v for k, v in result.items() if k != "restarts_detail"}
    assert result["restarts"] == 3, summary
    assert result["every_client_resumed"], summary
    assert result["not_live_at_end"] == 0, summary
    assert result["acknowledged"] > 0, summary
    assert result["unanswered_sends"] == 0, summary
    assert result["lost"] == 0, summary
    assert result["duplicated"] == 0, summary
    assert result["mismatched"] == 0, summary
    assert result["seq_conflicts"] == 0, summary
    assert result["out_of_order"] == 0, summary
    # Sessions (with their presence subscriptions) are in storage: a crash
    # keeps them. (Not all: one saved just before a kill may be lost.)
    assert result["sessions_resumed"] > 0, summary
    assert result["sessions_resumed"] + result["sessions_lost"] == result["reconnects"], summary
    # What the server says it replayed is what the clients counted as replayed.
    assert result["server_replayed"] == result["replayed"] + result["redelivered"], summary


# -- the accounting -----------------------------------------------------------------


def _client(rooms: int = 1) -> Client:
    worker = Worker(
        {
            "host": "127.0.0.1",
            "port": 9,
            "secret": "s" * 32,
            "rate": 0,
            "backoff_base": 0.1,
            "backoff_cap": 1.0,
            "settle_s": 1.0,
            "msg_bytes": 10,
            "seed": 1,
            "connect_concurrency": 1,
            "rooms": [f"r{i}" for i in range(rooms)],
            "rooms_per_client": rooms,
            "senders": 1,
            "indices": [0, 1],
        }
    )
    client = worker.clients[0]
    client.joined = True
    return client


def _msg(seq: int, room: str = "r0", cid: str | None = None) -> dict[str, Any]:
    return {"t": "msg", "room": room, "seq": seq, "cid": cid or f"c{seq}"}


def _resume(client: Client) -> None:
    """What a reconnect does to the client's rooms (as in ``_connect_once``/``_serve``)."""
    client.replaying = set(client.rooms)
    for st in client.rooms.values():
        st.resume_pos = st.held
        st.replayed_now = set()
        st.last_push = 0


def test_a_live_push_of_a_held_seq_is_a_duplicate() -> None:
    client = _client()
    for seq in (1, 2, 2):
        client._on_frame(_msg(seq))
    stats = client.w.stats
    assert (stats["received"], stats["duplicated"], stats["out_of_order"]) == (2, 1, 1)
    assert client.rooms["r0"].held == 2


def test_a_replay_may_repeat_what_was_held_above_a_gap_but_nothing_below() -> None:
    client = _client()
    room = client.rooms["r0"]
    client._on_frame(_msg(1))
    # Our own message 3 is answered before the push of 2 arrives; then the drop.
    pending = Pending("mine", "r0", {})
    client.pending["mine"] = pending
    client.inflight[7] = pending
    client._on_frame({"t": "reply", "ref": 7, "data": {"seq": 3, "dup": False}})
    assert (room.held, sorted(room.got)) == (1, [1, 3])
    _resume(client)
    client._on_frame(_msg(2))
    client._on_frame(_msg(3, cid="mine"))
    client._on_frame({"t": "recovered", "room": "r0", "complete": True, "replayed": 2, "head": 3})
    stats = client.w.stats
    assert (stats["replayed"], stats["redelivered"], stats["duplicated"]) == (1, 1, 0)
    assert room.held == 3
    assert client.live
    # A replay that starts at or below the position sent in resume is a duplicate.
    _resume(client)
    client._on_frame(_msg(3, cid="mine"))
    assert stats["duplicated"] == 1


def test_an_incomplete_replay_is_filled_from_history_before_the_client_is_live() -> None:
    client = _client()
    _resume(client)
    client._on_frame(_msg(5))
    client._on_frame(
        {"t": "recovered", "room": "r0", "complete": False, "replayed": 1, "head": 5, "first": 5}
    )
    assert not client.live
    assert client.filling == {"r0"}
    page = [{"seq": s, "cid": f"c{s}"} for s in range(1, 5)]
    client._on_history_answer(
        ("history", "r0", 5, None), {"t": "reply", "data": {"messages": page, "more": False}}
    )
    assert client.live
    assert client.rooms["r0"].held == 5
    assert client.w.stats["history_filled"] == 4


def test_lost_and_mismatched_are_counted_per_member_and_message() -> None:
    client = _client(rooms=2)
    other = client.w.clients[1]
    for c in (client, other):
        for room in ("r0", "r1"):
            c.rooms[room].add(1, "a")
    client.rooms["r0"].add(2, "b")
    other.rooms["r0"].add(2, "not-b")
    lost, mismatched = client.w._missing({"r0": {1: "a", 2: "b", 3: "c"}, "r1": {1: "a"}})
    assert (lost, mismatched) == (2, 1)  # seq 3 at both; seq 2 with another cid at one
