"""The call frames: wire maps, bounds (SDP 64 KiB, candidates), ids, reply builders."""

from __future__ import annotations

from typing import Any

import pytest

from tether.transport.protocol import (
    CallEnded,
    CallIce,
    CallJoin,
    CallMute,
    CallOffer,
    CallParticipant,
    CallPeer,
    CallPublish,
    CallQuality,
    CallSpeaker,
    CallTrack,
    LocalProtocolError,
    MediaKind,
    ParticipantInfo,
    TrackInfo,
    decode,
    decode_server_frame,
    encode,
)
from tether.transport.protocol.events import MAX_CANDIDATE_CHARS, MAX_SDP_BYTES

P = "3fa2c1d09e7b"
TRACK = TrackInfo(id=f"{P}.1", participant=P, kind=MediaKind.VIDEO, rids=("q", "h", "f"))


def test_publish_round_trip_and_reply() -> None:
    publish = CallPublish(ref=4, room="r", sdp="v=0\r\n")
    assert decode(encode(publish)) == publish
    assert "v=0" not in repr(publish)  # SDP blobs stay out of logs
    reply = publish.reply(sdp="v=0\r\nanswer", tracks=[TRACK])
    assert reply.data == {
        "sdp": "v=0\r\nanswer",
        "tracks": [
            {
                "id": f"{P}.1",
                "participant": P,
                "kind": "video",
                "rids": ["q", "h", "f"],
                "muted": False,
            }
        ],
    }


@pytest.mark.parametrize("sdp", ["", "x" * (MAX_SDP_BYTES + 1), "é" * (MAX_SDP_BYTES // 2 + 1), 5])
def test_sdp_is_bounded(sdp: object) -> None:
    with pytest.raises(LocalProtocolError, match=r"'call\.publish' field 'sdp'"):
        CallPublish(ref=1, room="r", sdp=sdp)  # type: ignore[arg-type]


def test_sdp_at_the_bound_is_accepted() -> None:
    assert len(CallPublish(ref=1, room="r", sdp="x" * MAX_SDP_BYTES).sdp) == MAX_SDP_BYTES


def test_ice_candidate_bounds_and_end_of_candidates() -> None:
    end = CallIce(room="r", pc=CallPeer.SUB)
    assert end.to_wire() == {"t": "call.ice", "room": "r", "pc": "sub"}
    assert decode(encode(end)).candidate is None  # type: ignore[attr-defined]
    CallIce(room="r", pc="pub", candidate="c" * MAX_CANDIDATE_CHARS)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="candidate"):
        CallIce(room="r", pc="pub", candidate="c" * (MAX_CANDIDATE_CHARS + 1))  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="'pub', 'sub'"):
        CallIce(room="r", pc="both")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "screen", "muted": True},
        {"kind": "audio", "muted": 1},
    ],
)
def test_mute_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(LocalProtocolError):
        CallMute(ref=1, room="r", **kwargs)


def test_quality_sizes() -> None:
    CallQuality(room="r", track=TRACK.id, width=0, height=16384)
    with pytest.raises(LocalProtocolError, match="width"):
        CallQuality(room="r", track=TRACK.id, width=-1, height=10)


@pytest.mark.parametrize("pid", ["3FA2C1D09E7B", "3fa2c1d09e7", "3fa2c1d09e7bb", "zzzzzzzzzzzz"])
def test_participant_ids_are_12_lowercase_hex(pid: str) -> None:
    with pytest.raises(LocalProtocolError, match="12 lowercase hex"):
        ParticipantInfo(id=pid, user="u", device="d")


def test_join_reply() -> None:
    me = ParticipantInfo(id=P, user="alice", device="a", tracks=(TRACK,))
    reply = CallJoin(ref=2, room="r").reply(
        participant=P,
        media="kept",
        participants=[me],
        speaker=None,
        ice_servers=[{"urls": ["stun:example.org:3478"]}],
    )
    assert reply.data["call"] == "r"
    assert reply.data["media"] == "kept"
    assert reply.data["speaker"] is None
    assert reply.data["participants"][0]["tracks"][0]["id"] == TRACK.id
    assert reply.data["ice_servers"] == [{"urls": ["stun:example.org:3478"]}]
    with pytest.raises(LocalProtocolError, match="media"):
        CallJoin(ref=2, room="r").reply(participant=P, media="old", participants=[], speaker=None)
    with pytest.raises(LocalProtocolError, match="ice_servers"):
        CallJoin(ref=2, room="r").reply(
            participant=P, media="new", participants=[], speaker=None, ice_servers=[{"urls": []}]
        )


def test_pushes_round_trip() -> None:
    me = ParticipantInfo(id=P, user="alice", device="a", tracks=(TRACK,), audio_muted=True)
    for frame in (
        CallOffer(room="r", sdp="v=0", mids={"0": TRACK.id}),
        CallParticipant(room="r", action="joined", participant=me),  # type: ignore[arg-type]
        CallTrack(room="r", action="removed", track=TRACK),  # type: ignore[arg-type]
        CallSpeaker(room="r", participant=P),
        CallEnded(room="r", reason="left the room"),
    ):
        assert decode_server_frame(encode(frame)) == frame
    # the speaker is always sent, nil for silence
    assert CallSpeaker(room="r", participant=None).to_wire() == {
        "t": "call.speaker",
        "room": "r",
        "participant": None,
    }
    with pytest.raises(LocalProtocolError, match="mids"):
        CallOffer(room="r", sdp="v=0", mids={"": "x"})
