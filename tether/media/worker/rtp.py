"""RTP packet helpers (pure functions, RFC 3550 / RFC 8285 / RFC 7741 / RFC 6184).

Everything works on raw ``bytes`` so the forwarding path never builds packet
objects. Functions raise :class:`RtpError` (a ``ValueError``) on truncated input.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import NamedTuple

EXT_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
EXT_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
EXT_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
EXT_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
EXT_REPAIRED_RID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"

ONE_BYTE_PROFILE = 0xBEDE
TWO_BYTE_PROFILE_MASK = 0xFFF0
TWO_BYTE_PROFILE = 0x1000

_HEAD = struct.Struct("!BBHII")
_HEAD_EXT = struct.Struct("!BBHIIHH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


class RtpError(ValueError):
    """The bytes are not a well-formed RTP packet."""


class RtpHeader(NamedTuple):
    """Fixed header fields plus where the extension block and payload are."""

    marker: bool
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    ext_profile: int  # 0 when there is no extension block
    ext_start: int  # offset of the first extension element
    payload_start: int
    payload_end: int  # excludes padding


def parse_header(data: bytes) -> RtpHeader:
    """Parse the RTP header of ``data``.

    Raises:
        RtpError: truncated packet, wrong version or bad padding.
    """
    size = len(data)
    if size < 12 or data[0] >> 6 != 2:
        raise RtpError("Expected an RTP version 2 packet of at least 12 bytes")
    b0, b1, seq, ts, ssrc = _HEAD.unpack_from(data)
    pos = 12 + ((b0 & 0x0F) << 2)
    profile = 0
    ext_start = pos
    if b0 & 0x10:
        if pos + 4 > size:
            raise RtpError("Truncated RTP header extension")
        profile, words = struct.unpack_from("!HH", data, pos)
        ext_start = pos + 4
        pos = ext_start + (words << 2)
    end = size
    if b0 & 0x20:
        if size == 0 or data[-1] == 0:
            raise RtpError("Bad RTP padding")
        end -= data[-1]
    if pos > end:
        raise RtpError("Truncated RTP packet")
    return RtpHeader(bool(b1 & 0x80), b1 & 0x7F, seq, ts, ssrc, profile, ext_start, pos, end)


def parse_extensions(data: bytes, header: RtpHeader) -> dict[int, bytes]:
    """Return ``{id: value}`` of the header extensions (one-byte and two-byte forms)."""
    out: dict[int, bytes] = {}
    profile = header.ext_profile
    i = header.ext_start
    end = header.payload_start
    if profile == ONE_BYTE_PROFILE:
        while i < end:
            b = data[i]
            if b == 0:  # padding byte between elements
                i += 1
                continue
            ext_id = b >> 4
            if ext_id == 15:  # reserved: stop processing (RFC 8285 4.2)
                break
            length = (b & 0x0F) + 1
            out[ext_id] = bytes(data[i + 1 : i + 1 + length])
            i += 1 + length
    elif profile & TWO_BYTE_PROFILE_MASK == TWO_BYTE_PROFILE:
        while i + 1 < end:
            ext_id = data[i]
            if ext_id == 0:
                i += 1
                continue
            length = data[i + 1]
            out[ext_id] = bytes(data[i + 2 : i + 2 + length])
            i += 2 + length
    return out


def find_extension(data: bytes, header: RtpHeader, wanted: int) -> bytes | None:
    """Return the value of extension ``wanted`` or None (cheaper than parse_extensions)."""
    if not wanted or not header.ext_profile:
        return None
    return parse_extensions(data, header).get(wanted)


def audio_level(value: bytes | None) -> int | None:
    """Level in -dBov (0 loud .. 127 silent) from an ssrc-audio-level value (RFC 6464)."""
    if not value:
        return None
    return value[0] & 0x7F


def build_extensions(elements: list[tuple[int, bytes]]) -> bytes:
    """Build a header-extension block (profile + length + elements, padded).

    Uses the one-byte form when every id is 1..14 and every value 1..16 bytes,
    otherwise the two-byte form.
    """
    if not elements:
        return b""
    if all(1 <= i <= 14 and 1 <= len(v) <= 16 for i, v in elements):
        body = b"".join(bytes([(i << 4) | (len(v) - 1)]) + v for i, v in elements)
        profile = ONE_BYTE_PROFILE
    else:
        body = b"".join(bytes([i, len(v)]) + v for i, v in elements)
        profile = TWO_BYTE_PROFILE
    if len(body) & 3:
        body += b"\0" * (4 - (len(body) & 3))
    return struct.pack("!HH", profile, len(body) >> 2) + body


def build_packet(
    *,
    marker: bool,
    payload_type: int,
    sequence: int,
    timestamp: int,
    ssrc: int,
    extensions: bytes,
    payload: bytes,
) -> bytes:
    """Build an RTP packet; ``extensions`` is a block from :func:`build_extensions`."""
    b1 = (0x80 if marker else 0) | payload_type
    if extensions:
        return (
            _HEAD.pack(0x90, b1, sequence & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc)
            + extensions
            + payload
        )
    return _HEAD.pack(0x80, b1, sequence & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc) + payload


def abs_send_time(now: float) -> bytes:
    """abs-send-time value (6.18 fixed point seconds, 24 bits) for wall time ``now``."""
    return (int(now * 262144.0) & 0xFFFFFF).to_bytes(3, "big")


# --------------------------------------------------------------------------- RTX (RFC 4588)


def rtx_original_sequence(payload: bytes) -> int:
    """The original sequence number carried at the start of an RTX payload."""
    if len(payload) < 2:
        raise RtpError("RTX payload shorter than 2 bytes")
    return int(_U16.unpack_from(payload)[0])


# --------------------------------------------------------------------------- VP8 (RFC 7741)


class Vp8Descriptor(NamedTuple):
    """Offsets into a VP8 payload descriptor (-1 when a field is absent)."""

    start_of_partition: bool
    partition_id: int
    picture_id: int  # -1 absent
    picture_id_offset: int
    picture_id_long: bool
    tl0picidx: int  # -1 absent
    tl0picidx_offset: int
    header_size: int


def parse_vp8_descriptor(payload: bytes) -> Vp8Descriptor:
    """Parse the VP8 payload descriptor.

    Raises:
        RtpError: truncated descriptor.
    """
    n = len(payload)
    if n < 1:
        raise RtpError("Empty VP8 payload")
    b = payload[0]
    i = 1
    picture_id = -1
    pid_off = -1
    pid_long = False
    tl0 = -1
    tl0_off = -1
    if b & 0x80:
        if n < 2:
            raise RtpError("Truncated VP8 descriptor")
        x = payload[1]
        i = 2
        if x & 0x80:
            if n <= i:
                raise RtpError("Truncated VP8 picture id")
            pid_off = i
            if payload[i] & 0x80:
                if n <= i + 1:
                    raise RtpError("Truncated VP8 picture id")
                pid_long = True
                picture_id = ((payload[i] & 0x7F) << 8) | payload[i + 1]
                i += 2
            else:
                picture_id = payload[i] & 0x7F
                i += 1
        if x & 0x40:
            if n <= i:
                raise RtpError("Truncated VP8 TL0PICIDX")
            tl0 = payload[i]
            tl0_off = i
            i += 1
        if x & 0x30:
            i += 1
    if i > n:
        raise RtpError("Truncated VP8 descriptor")
    return Vp8Descriptor(bool(b & 0x10), b & 0x07, picture_id, pid_off, pid_long, tl0, tl0_off, i)


def vp8_keyframe(payload: bytes) -> bool:
    """True if this VP8 payload is the first packet of a keyframe."""
    if not payload or payload[0] & 0x17 != 0x10:  # S=1 and partition 0
        return False
    try:
        d = parse_vp8_descriptor(payload)
    except RtpError:
        return False
    return len(payload) > d.header_size and not payload[d.header_size] & 0x01


def vp8_resolution(payload: bytes) -> tuple[int, int] | None:
    """(width, height) from the first packet of a VP8 keyframe, else None."""
    if not vp8_keyframe(payload):
        return None
    h = parse_vp8_descriptor(payload).header_size
    # 3-byte frame tag, 3-byte start code 9d 01 2a, then 14-bit width/height
    if len(payload) < h + 10 or payload[h + 3 : h + 6] != b"\x9d\x01\x2a":
        return None
    width = int.from_bytes(payload[h + 6 : h + 8], "little") & 0x3FFF
    height = int.from_bytes(payload[h + 8 : h + 10], "little") & 0x3FFF
    return width, height


def vp8_rewrite(payload: bytes, picture_id: int, tl0picidx: int) -> bytes:
    """Return ``payload`` with picture id / TL0PICIDX replaced (fields absent stay absent).

    A 7-bit picture id stays 7 bits (value taken mod 128); 15-bit stays 15 bits.
    """
    d = parse_vp8_descriptor(payload)
    if d.picture_id_offset < 0 and d.tl0picidx_offset < 0:
        return payload
    out = bytearray(payload)
    if d.picture_id_offset >= 0:
        if d.picture_id_long:
            out[d.picture_id_offset] = 0x80 | ((picture_id >> 8) & 0x7F)
            out[d.picture_id_offset + 1] = picture_id & 0xFF
        else:
            out[d.picture_id_offset] = picture_id & 0x7F
    if d.tl0picidx_offset >= 0:
        out[d.tl0picidx_offset] = tl0picidx & 0xFF
    return bytes(out)


# --------------------------------------------------------------------------- H264 (RFC 6184)

_H264_KEY_NALS = (5, 7)  # IDR slice, SPS


def h264_keyframe(payload: bytes) -> bool:
    """True if this H264 payload starts a keyframe (IDR or SPS, also inside STAP-A / FU-A)."""
    if not payload:
        return False
    nal = payload[0] & 0x1F
    if nal in _H264_KEY_NALS:
        return True
    if nal == 24:  # STAP-A: 16-bit size + NAL unit, repeated
        i = 1
        while i + 2 < len(payload):
            size = (payload[i] << 8) | payload[i + 1]
            if payload[i + 2] & 0x1F in _H264_KEY_NALS:
                return True
            i += 2 + size
        return False
    if nal == 28 and len(payload) > 1:  # FU-A: only its start fragment
        return bool(payload[1] & 0x80) and payload[1] & 0x1F in _H264_KEY_NALS
    return False


def keyframe_detector(codec: str) -> Callable[[bytes], bool] | None:
    """The keyframe test for a codec name (lowercase 'vp8'/'h264'), else None."""
    if codec == "vp8":
        return vp8_keyframe
    if codec == "h264":
        return h264_keyframe
    return None
