"""SDP helpers for what aiortc does not handle (pure functions).

aiortc 1.16 ignores ``a=rid`` / ``a=simulcast`` and drops the rtp-stream-id
header extensions from its answer, so a browser would send only its lowest
simulcast layer. :func:`munge_simulcast_answer` adds them back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tether.media.worker.rtp import EXT_REPAIRED_RID, EXT_RID

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


class SdpError(ValueError):
    """The SDP is unusable (message says why)."""


@dataclass
class MediaSection:
    """What the worker needs from one m-section of a remote offer."""

    kind: str
    mid: str | None
    direction: str = "sendrecv"
    codecs: list[str] = field(default_factory=list)  # lowercase encoding names
    rids: list[str] = field(default_factory=list)  # simulcast send rids, in order
    extmap: dict[str, int] = field(default_factory=dict)  # uri -> id
    port: int = 9
    ssrcs: list[int] = field(default_factory=list)  # a=ssrc ids, in order of appearance
    fid: tuple[int, int] | None = None  # (media ssrc, rtx ssrc) from a=ssrc-group:FID

    @property
    def sending(self) -> bool:
        """The remote side sends media in this section."""
        return self.direction in ("sendrecv", "sendonly") and self.port != 0


def split_sections(sdp: str) -> list[list[str]]:
    """Lines of the session part followed by one list per m-section."""
    sections: list[list[str]] = [[]]
    for line in sdp.replace("\r\n", "\n").split("\n"):
        if not line:
            continue
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    return sections


def parse_sections(sdp: str) -> list[MediaSection]:
    """Parse the m-sections of an SDP.

    Raises:
        SdpError: not an SDP (no v= line) or a malformed m= line.
    """
    if not isinstance(sdp, str) or not sdp.lstrip().startswith("v=0"):
        raise SdpError("Expected an SDP starting with v=0")
    out = []
    for lines in split_sections(sdp)[1:]:
        parts = lines[0][2:].split()
        if len(parts) < 3 or not parts[1].split("/")[0].isdigit():
            raise SdpError(f"Malformed m= line: {lines[0][:80]!r}")
        section = MediaSection(kind=parts[0], mid=None, port=int(parts[1].split("/")[0]))
        rids: list[str] = []
        for line in lines[1:]:
            if line.startswith("a=mid:"):
                section.mid = line[6:].strip()
            elif line[2:] in DIRECTIONS and line.startswith("a="):
                section.direction = line[2:]
            elif line.startswith("a=rtpmap:"):
                rest = line[9:].split(None, 1)
                if len(rest) == 2:
                    section.codecs.append(rest[1].split("/")[0].lower())
            elif line.startswith("a=extmap:"):
                rest = line[9:].split()
                if len(rest) >= 2 and rest[0].split("/")[0].isdigit():
                    section.extmap[rest[1]] = int(rest[0].split("/")[0])
            elif line.startswith("a=ssrc:"):
                value = line[7:].split(None, 1)[0]
                if value.isdigit() and int(value) not in section.ssrcs:
                    section.ssrcs.append(int(value) & 0xFFFFFFFF)
            elif line.startswith("a=ssrc-group:FID "):
                items = line[17:].split()
                if len(items) >= 2 and items[0].isdigit() and items[1].isdigit():
                    section.fid = (int(items[0]) & 0xFFFFFFFF, int(items[1]) & 0xFFFFFFFF)
            elif line.startswith("a=simulcast:"):
                words = line[12:].split()
                if len(words) >= 2 and words[0] == "send":
                    # alternatives "a,b" and paused "~a": keep the first, unpaused name
                    for group in words[1].split(";"):
                        rid = group.split(",")[0].lstrip("~")
                        if rid and rid not in rids:
                            rids.append(rid)
        section.rids = rids if len(rids) > 1 else []
        out.append(section)
    return out


def check_publish_offer(sections: list[MediaSection]) -> None:
    """Reject a publisher offer whose sending sections lack a codec the worker forwards.

    Raises:
        SdpError: an audio section without Opus or a video one without VP8/H264.
    """
    for s in sections:
        if not s.sending:
            continue
        if s.kind == "audio" and "opus" not in s.codecs:
            raise SdpError(f"Audio section {s.mid!r} offers no Opus")
        if s.kind == "video" and "vp8" not in s.codecs and "h264" not in s.codecs:
            raise SdpError(f"Video section {s.mid!r} offers neither VP8 nor H264")
        if s.kind == "video" and s.rids and EXT_RID not in s.extmap:
            raise SdpError(f"Simulcast section {s.mid!r} lacks the rtp-stream-id extension")


def munge_simulcast_answer(answer: str, sections: list[MediaSection]) -> str:
    """Add ``a=rid:<r> recv``, ``a=simulcast:recv`` and rid extmaps for simulcast sections."""
    by_mid = {s.mid: s for s in sections if s.rids and s.kind == "video"}
    if not by_mid:
        return answer
    parts = split_sections(answer)
    for lines in parts[1:]:
        mid = next((line[6:].strip() for line in lines if line.startswith("a=mid:")), None)
        section = by_mid.get(mid)
        if section is None:
            continue
        present = {line.split()[1] for line in lines if line.startswith("a=extmap:")}
        for uri in (EXT_RID, EXT_REPAIRED_RID):
            if uri in section.extmap and uri not in present:
                lines.append(f"a=extmap:{section.extmap[uri]} {uri}")
        lines.extend(f"a=rid:{rid} recv" for rid in section.rids)
        lines.append("a=simulcast:recv " + ";".join(section.rids))
    return "\r\n".join(line for lines in parts for line in lines) + "\r\n"
