"""RTCP parse/build (pure; RFC 3550, RFC 4585, RFC 5104, draft-alvestrand-rmcat-remb).

:func:`parse` splits a compound packet into small typed records; unknown packet
types are skipped. The builders return wire bytes ready for SRTCP protection.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

SR = 200
RR = 201
SDES = 202
BYE = 203
RTPFB = 205
PSFB = 206

NACK_FMT = 1
PLI_FMT = 1
FIR_FMT = 4
AFB_FMT = 15  # application layer feedback: REMB

NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01

_REPORT = struct.Struct("!IB3sIIII")


class RtcpError(ValueError):
    """The bytes are not a well-formed RTCP packet."""


@dataclass(slots=True)
class ReportBlock:
    """One reception report block."""

    ssrc: int
    fraction_lost: int
    packets_lost: int
    highest_sequence: int
    jitter: int
    lsr: int
    dlsr: int


@dataclass(slots=True)
class SenderReport:
    ssrc: int
    ntp: int
    rtp_timestamp: int
    packets: int
    octets: int
    reports: list[ReportBlock] = field(default_factory=list)


@dataclass(slots=True)
class ReceiverReport:
    ssrc: int
    reports: list[ReportBlock] = field(default_factory=list)


@dataclass(slots=True)
class Nack:
    sender_ssrc: int
    media_ssrc: int
    lost: list[int]


@dataclass(slots=True)
class Pli:
    sender_ssrc: int
    media_ssrc: int


@dataclass(slots=True)
class Fir:
    sender_ssrc: int
    entries: list[tuple[int, int]]  # (media ssrc, command sequence number)


@dataclass(slots=True)
class Remb:
    sender_ssrc: int
    bitrate: int
    ssrcs: list[int]


RtcpRecord = SenderReport | ReceiverReport | Nack | Pli | Fir | Remb


def _reports(data: bytes, pos: int, count: int, end: int) -> list[ReportBlock]:
    out = []
    for _ in range(count):
        if pos + 24 > end:
            raise RtcpError("Truncated report block")
        ssrc, fraction, lost3, highest, jitter, lsr, dlsr = _REPORT.unpack_from(data, pos)
        lost = int.from_bytes(lost3, "big", signed=True)
        out.append(ReportBlock(ssrc, fraction, lost, highest, jitter, lsr, dlsr))
        pos += 24
    return out


def parse(data: bytes) -> list[RtcpRecord]:
    """Parse a (compound) RTCP packet into records; unknown types are skipped.

    Raises:
        RtcpError: a header or length is malformed.
    """
    out: list[RtcpRecord] = []
    pos = 0
    size = len(data)
    while pos < size:
        if pos + 4 > size:
            raise RtcpError("Truncated RTCP header")
        b0, pt, words = struct.unpack_from("!BBH", data, pos)
        if b0 >> 6 != 2:
            raise RtcpError("Expected RTCP version 2")
        end = pos + 4 + words * 4
        if end > size:
            raise RtcpError("RTCP length exceeds the packet")
        count = b0 & 0x1F
        body = pos + 4
        if b0 & 0x20 and end > body:
            end -= data[end - 1]  # padding
        if pt == SR:
            if body + 24 > end:
                raise RtcpError("Truncated SR")
            ssrc, ntp, rtp_ts, packets, octets = struct.unpack_from("!IQIII", data, body)
            out.append(
                SenderReport(
                    ssrc, ntp, rtp_ts, packets, octets, _reports(data, body + 24, count, end)
                )
            )
        elif pt == RR:
            if body + 4 > end:
                raise RtcpError("Truncated RR")
            (ssrc,) = struct.unpack_from("!I", data, body)
            out.append(ReceiverReport(ssrc, _reports(data, body + 4, count, end)))
        elif pt in (RTPFB, PSFB):
            if body + 8 > end:
                raise RtcpError("Truncated feedback message")
            sender, media = struct.unpack_from("!II", data, body)
            fci = body + 8
            if pt == RTPFB and count == NACK_FMT:
                lost: list[int] = []
                for i in range(fci, end - 3, 4):
                    pid, blp = struct.unpack_from("!HH", data, i)
                    lost.append(pid)
                    lost.extend((pid + k + 1) & 0xFFFF for k in range(16) if blp >> k & 1)
                out.append(Nack(sender, media, lost))
            elif pt == PSFB and count == PLI_FMT:
                out.append(Pli(sender, media))
            elif pt == PSFB and count == FIR_FMT:
                entries = [
                    (struct.unpack_from("!I", data, i)[0], data[i + 4])
                    for i in range(fci, end - 7, 8)
                ]
                out.append(Fir(sender, entries))
            elif pt == PSFB and count == AFB_FMT and data[fci : fci + 4] == b"REMB":
                if fci + 8 > end:
                    raise RtcpError("Truncated REMB")
                num = data[fci + 4]
                exp = data[fci + 5] >> 2
                mantissa = ((data[fci + 5] & 0x03) << 16) | (data[fci + 6] << 8) | data[fci + 7]
                ssrcs = [
                    struct.unpack_from("!I", data, fci + 8 + 4 * k)[0]
                    for k in range(num)
                    if fci + 12 + 4 * k <= end
                ]
                out.append(Remb(sender, mantissa << exp, ssrcs))
        pos = pos + 4 + words * 4
    return out


def _header(count: int, pt: int, body_len: int) -> bytes:
    return struct.pack("!BBH", 0x80 | count, pt, body_len // 4)


def _report_bytes(r: ReportBlock) -> bytes:
    lost = max(-(1 << 23), min(r.packets_lost, (1 << 23) - 1))
    return _REPORT.pack(
        r.ssrc,
        max(0, min(r.fraction_lost, 255)),
        lost.to_bytes(3, "big", signed=True),
        r.highest_sequence & 0xFFFFFFFF,
        r.jitter & 0xFFFFFFFF,
        r.lsr & 0xFFFFFFFF,
        r.dlsr & 0xFFFFFFFF,
    )


def build_sr(
    ssrc: int,
    *,
    ntp: int,
    rtp_timestamp: int,
    packets: int,
    octets: int,
    reports: list[ReportBlock] | None = None,
) -> bytes:
    """Sender report (at most 31 report blocks)."""
    blocks = (reports or [])[:31]
    body = struct.pack(
        "!IQIII",
        ssrc,
        ntp & 0xFFFFFFFFFFFFFFFF,
        rtp_timestamp & 0xFFFFFFFF,
        packets & 0xFFFFFFFF,
        octets & 0xFFFFFFFF,
    ) + b"".join(_report_bytes(r) for r in blocks)
    return _header(len(blocks), SR, len(body)) + body


def build_rr(ssrc: int, reports: list[ReportBlock]) -> bytes:
    """Receiver report; more than 31 blocks become several RR packets (compound)."""
    out = b""
    for i in range(0, max(len(reports), 1), 31):
        blocks = reports[i : i + 31]
        body = struct.pack("!I", ssrc) + b"".join(_report_bytes(r) for r in blocks)
        out += _header(len(blocks), RR, len(body)) + body
    return out


def build_pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    """Picture loss indication."""
    return _header(PLI_FMT, PSFB, 8) + struct.pack("!II", sender_ssrc, media_ssrc)


def build_fir(sender_ssrc: int, entries: list[tuple[int, int]]) -> bytes:
    """Full intra request; entries are (media ssrc, command sequence number)."""
    fci = b"".join(struct.pack("!IB3x", s, n & 0xFF) for s, n in entries)
    return _header(FIR_FMT, PSFB, 8 + len(fci)) + struct.pack("!II", sender_ssrc, 0) + fci


def build_nack(sender_ssrc: int, media_ssrc: int, lost: list[int]) -> bytes:
    """Generic NACK for the given sequence numbers (packed into PID+BLP pairs)."""
    seqs = sorted({s & 0xFFFF for s in lost}, key=lambda s: (s - lost[0]) & 0xFFFF) if lost else []
    fci = b""
    i = 0
    while i < len(seqs):
        pid = seqs[i]
        blp = 0
        i += 1
        while i < len(seqs):
            d = (seqs[i] - pid) & 0xFFFF
            if not 1 <= d <= 16:
                break
            blp |= 1 << (d - 1)
            i += 1
        fci += struct.pack("!HH", pid, blp)
    return (
        _header(NACK_FMT, RTPFB, 8 + len(fci)) + struct.pack("!II", sender_ssrc, media_ssrc) + fci
    )


def build_remb(sender_ssrc: int, bitrate: int, ssrcs: list[int]) -> bytes:
    """Receiver estimated maximum bitrate for ``ssrcs`` (18-bit mantissa, 6-bit exponent)."""
    bitrate = max(0, bitrate)
    exp = 0
    while bitrate >> exp > 0x3FFFF:
        exp += 1
    mantissa = bitrate >> exp
    fci = (
        b"REMB"
        + bytes(
            [
                len(ssrcs) & 0xFF,
                (exp << 2) | (mantissa >> 16),
                (mantissa >> 8) & 0xFF,
                mantissa & 0xFF,
            ]
        )
        + b"".join(struct.pack("!I", s) for s in ssrcs[:255])
    )
    return _header(AFB_FMT, PSFB, 8 + len(fci)) + struct.pack("!II", sender_ssrc, 0) + fci


def ntp_time(unix_time: float) -> int:
    """64-bit NTP timestamp for a Unix time."""
    return int((unix_time + NTP_EPOCH_OFFSET) * 4294967296.0)


def is_rtcp(data: bytes) -> bool:
    """RTP/RTCP demultiplexing (RFC 5761): RTCP packet types 192..223."""
    return len(data) >= 2 and 192 <= data[1] <= 223
