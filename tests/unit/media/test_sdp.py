"""SDP munging for simulcast and publisher offer checks."""

from __future__ import annotations

import pytest

from tether.media.worker import sdp
from tether.media.worker.rtp import EXT_REPAIRED_RID, EXT_RID

CHROME_SIMULCAST_OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=mid:0",
        "a=sendonly",
        "a=rtpmap:111 opus/48000/2",
        "a=ssrc:1111 cname:x",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
        "a=mid:1",
        "a=sendonly",
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        f"a=extmap:10 {EXT_RID}",
        f"a=extmap:11 {EXT_REPAIRED_RID}",
        "a=rtpmap:96 VP8/90000",
        "a=rtpmap:97 rtx/90000",
        "a=fmtp:97 apt=96",
        "a=rid:q send",
        "a=rid:h send",
        "a=rid:f send",
        "a=simulcast:send q;h;~f",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "a=mid:2",
        "a=recvonly",
        "a=rtpmap:96 VP9/90000",
        "a=ssrc-group:FID 5 6",
        "",
    ]
)


def test_parse_sections() -> None:
    audio, video, other = sdp.parse_sections(CHROME_SIMULCAST_OFFER)
    assert (audio.kind, audio.mid, audio.direction, audio.codecs, audio.ssrcs) == (
        "audio",
        "0",
        "sendonly",
        ["opus"],
        [1111],
    )
    assert video.rids == ["q", "h", "f"]
    assert video.sending
    assert video.extmap[EXT_RID] == 10
    assert not other.sending
    assert other.fid == (5, 6)
    sdp.check_publish_offer([audio, video, other])  # VP9-only section is not sending


def test_check_publish_offer_rejects_missing_codecs() -> None:
    with pytest.raises(sdp.SdpError, match="Opus"):
        sdp.check_publish_offer([sdp.MediaSection("audio", "0", codecs=["pcmu"])])
    with pytest.raises(sdp.SdpError, match="VP8"):
        sdp.check_publish_offer([sdp.MediaSection("video", "1", codecs=["vp9"])])
    with pytest.raises(sdp.SdpError):
        sdp.parse_sections("hello")
    with pytest.raises(sdp.SdpError):
        sdp.parse_sections("v=0\r\nm=audio\r\n")


def test_munge_simulcast_answer() -> None:
    sections = sdp.parse_sections(CHROME_SIMULCAST_OFFER)
    answer = "\r\n".join(
        ["v=0", "s=-", "m=audio 9 X 111", "a=mid:0", "m=video 9 X 96", "a=mid:1", "a=recvonly", ""]
    )
    munged = sdp.munge_simulcast_answer(answer, sections)
    video = sdp.split_sections(munged)[2]
    assert f"a=extmap:10 {EXT_RID}" in video
    assert f"a=extmap:11 {EXT_REPAIRED_RID}" in video
    assert video[-4:] == ["a=rid:q recv", "a=rid:h recv", "a=rid:f recv", "a=simulcast:recv q;h;f"]
    assert "a=rid" not in "\n".join(sdp.split_sections(munged)[1])
    assert munged.endswith("\r\n")
    plain = "v=0\r\nm=audio 9 X 0\r\na=mid:0\r\n"
    assert sdp.munge_simulcast_answer(plain, sdp.parse_sections(plain)) == plain
