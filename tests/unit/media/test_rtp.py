"""Pure RTP helpers: header parse/build, header extensions, VP8/H264 parsing and rewriting."""

from __future__ import annotations

import struct

import pytest

from tether.media.worker import rtp


def packet(ext: bytes = b"", payload: bytes = b"\x01\x02", padding: int = 0) -> bytes:
    data = rtp.build_packet(
        marker=True,
        payload_type=96,
        sequence=65535,
        timestamp=0xFFFFFFFF,
        ssrc=0x1234,
        extensions=ext,
        payload=payload,
    )
    if padding:
        data = bytes([data[0] | 0x20]) + data[1:] + b"\0" * (padding - 1) + bytes([padding])
    return data


def test_header_roundtrip_with_one_byte_extensions() -> None:
    ext = rtp.build_extensions([(1, b"0"), (3, b"\x01\x02\x03"), (2, b"\x85")])
    data = packet(ext, b"payload")
    h = rtp.parse_header(data)
    assert (h.marker, h.payload_type, h.sequence, h.timestamp, h.ssrc) == (
        True,
        96,
        65535,
        0xFFFFFFFF,
        0x1234,
    )
    assert h.ext_profile == rtp.ONE_BYTE_PROFILE
    assert data[h.payload_start : h.payload_end] == b"payload"
    exts = rtp.parse_extensions(data, h)
    assert exts == {1: b"0", 3: b"\x01\x02\x03", 2: b"\x85"}
    assert rtp.audio_level(exts[2]) == 5
    assert rtp.find_extension(data, h, 3) == b"\x01\x02\x03"
    assert rtp.find_extension(data, h, 9) is None


def test_two_byte_extensions_for_large_ids_and_values() -> None:
    ext = rtp.build_extensions([(20, b"x" * 20), (1, b"h")])
    assert struct.unpack_from("!H", ext)[0] == rtp.TWO_BYTE_PROFILE
    data = packet(ext)
    h = rtp.parse_header(data)
    assert rtp.parse_extensions(data, h) == {20: b"x" * 20, 1: b"h"}


def test_one_byte_parser_skips_padding_and_stops_at_id_15() -> None:
    body = b"\x00\x10a\xf0\x20b"  # pad, id1 len1, reserved id 15 -> stop
    ext = struct.pack("!HH", rtp.ONE_BYTE_PROFILE, 2) + body + b"\0\0"
    data = packet(ext)
    assert rtp.parse_extensions(data, rtp.parse_header(data)) == {1: b"a"}


def test_padding_excluded_and_malformed_rejected() -> None:
    data = packet(payload=b"abc", padding=4)
    h = rtp.parse_header(data)
    assert data[h.payload_start : h.payload_end] == b"abc"
    with pytest.raises(rtp.RtpError):
        rtp.parse_header(b"\x80\x60")
    with pytest.raises(rtp.RtpError):
        rtp.parse_header(b"\x40" + bytes(11))  # version 1
    with pytest.raises(rtp.RtpError):
        rtp.parse_header(b"\x90" + bytes(11) + b"\xbe\xde\x00\x09")  # extension too long


def test_rtx_original_sequence() -> None:
    assert rtp.rtx_original_sequence(b"\x12\x34rest") == 0x1234
    with pytest.raises(rtp.RtpError):
        rtp.rtx_original_sequence(b"\x12")


def vp8_payload(pid: int, tl0: int, key: bool, long_pid: bool = True) -> bytes:
    pid_bytes = bytes([0x80 | (pid >> 8), pid & 0xFF]) if long_pid else bytes([pid & 0x7F])
    descriptor = bytes([0x90, 0xC0]) + pid_bytes + bytes([tl0])
    tag = bytes([0x00 if key else 0x01, 0x00, 0x00])
    frame = tag + b"\x9d\x01\x2a" + (640).to_bytes(2, "little") + (360).to_bytes(2, "little")
    return descriptor + frame + b"data"


def test_vp8_descriptor_keyframe_and_resolution() -> None:
    key = vp8_payload(0x1234, 7, True)
    d = rtp.parse_vp8_descriptor(key)
    assert (d.start_of_partition, d.picture_id, d.picture_id_long, d.tl0picidx) == (
        True,
        0x1234,
        True,
        7,
    )
    assert rtp.vp8_keyframe(key)
    assert rtp.vp8_resolution(key) == (640, 360)
    delta = vp8_payload(0x1235, 7, False)
    assert not rtp.vp8_keyframe(delta)
    assert rtp.vp8_resolution(delta) is None
    continuation = bytes([0x80]) + key[1:]  # S bit cleared
    assert not rtp.vp8_keyframe(continuation)
    with pytest.raises(rtp.RtpError):
        rtp.parse_vp8_descriptor(b"\x90\x80")


def test_vp8_rewrite_keeps_width_of_picture_id() -> None:
    out = rtp.vp8_rewrite(vp8_payload(0x1234, 7, True), 0x0042, 200)
    d = rtp.parse_vp8_descriptor(out)
    assert (d.picture_id, d.picture_id_long, d.tl0picidx) == (0x42, True, 200)
    short = rtp.vp8_rewrite(vp8_payload(5, 1, False, long_pid=False), 0x1FF, 3)
    d = rtp.parse_vp8_descriptor(short)
    assert (d.picture_id, d.picture_id_long, d.tl0picidx) == (0x7F, False, 3)
    plain = b"\x10\x00\x00\x00"
    assert rtp.vp8_rewrite(plain, 1, 1) == plain


def test_h264_keyframes() -> None:
    assert rtp.h264_keyframe(bytes([0x65]))  # IDR
    assert rtp.h264_keyframe(bytes([0x67]))  # SPS
    assert not rtp.h264_keyframe(bytes([0x41]))  # non-IDR slice
    stap = bytes([0x18]) + b"\x00\x02\x41\x00" + b"\x00\x02\x67\x00"
    assert rtp.h264_keyframe(stap)
    assert rtp.h264_keyframe(bytes([0x7C, 0x85]))  # FU-A start of IDR
    assert not rtp.h264_keyframe(bytes([0x7C, 0x05]))  # FU-A continuation
    assert rtp.keyframe_detector("h264") is rtp.h264_keyframe
    assert rtp.keyframe_detector("opus") is None


def test_abs_send_time_is_24_bit_fixed_point() -> None:
    assert rtp.abs_send_time(1.5) == (int(1.5 * 262144) & 0xFFFFFF).to_bytes(3, "big")
