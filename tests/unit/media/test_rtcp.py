"""Pure RTCP parse/build: SR, RR, PLI, FIR, NACK, REMB, compound packets."""

from __future__ import annotations

import pytest

from tether.media.worker import rtcp


def block(ssrc: int = 5, lost: int = -3) -> rtcp.ReportBlock:
    return rtcp.ReportBlock(ssrc, 25, lost, 70000, 12, 0xABCD, 99)


def test_sr_rr_roundtrip_in_compound() -> None:
    data = rtcp.build_sr(
        1, ntp=0x0102030405060708, rtp_timestamp=9000, packets=10, octets=2000, reports=[block()]
    ) + rtcp.build_rr(2, [block(6, 40)])
    sr, rr = rtcp.parse(data)
    assert isinstance(sr, rtcp.SenderReport)
    assert isinstance(rr, rtcp.ReceiverReport)
    assert (sr.ssrc, sr.ntp, sr.rtp_timestamp, sr.packets, sr.octets) == (
        1,
        0x0102030405060708,
        9000,
        10,
        2000,
    )
    assert sr.reports == [block()]
    assert rr.ssrc == 2
    assert rr.reports == [block(6, 40)]


def test_rr_with_many_blocks_splits_into_packets() -> None:
    records = rtcp.parse(rtcp.build_rr(1, [block(i) for i in range(40)]))
    assert [len(r.reports) for r in records if isinstance(r, rtcp.ReceiverReport)] == [31, 9]


def test_feedback_messages() -> None:
    pli, fir, remb = rtcp.parse(
        rtcp.build_pli(1, 2) + rtcp.build_fir(1, [(7, 3)]) + rtcp.build_remb(1, 3_000_000, [7, 8])
    )
    assert pli == rtcp.Pli(1, 2)
    assert fir == rtcp.Fir(1, [(7, 3)])
    assert isinstance(remb, rtcp.Remb)
    assert remb.ssrcs == [7, 8]
    assert 3_000_000 - remb.bitrate < 3_000_000 / 100_000  # mantissa rounding only


@pytest.mark.parametrize(
    "lost",
    [[10], [10, 11, 26], [65535, 0, 1], [1, 40, 41, 100], list(range(100, 140))],
)
def test_nack_roundtrip(lost: list[int]) -> None:
    (nack,) = rtcp.parse(rtcp.build_nack(1, 2, lost))
    assert isinstance(nack, rtcp.Nack)
    assert (nack.sender_ssrc, nack.media_ssrc) == (1, 2)
    assert sorted(nack.lost) == sorted(lost)


def test_unknown_types_skipped_and_malformed_rejected() -> None:
    sdes = bytes([0x81, 202, 0, 1]) + b"\0\0\0\1"
    assert rtcp.parse(sdes + rtcp.build_pli(1, 2)) == [rtcp.Pli(1, 2)]
    with pytest.raises(rtcp.RtcpError):
        rtcp.parse(b"\x80\xc9\x00\x05\x00")  # length beyond the data
    with pytest.raises(rtcp.RtcpError):
        rtcp.parse(b"\x40\xc9\x00\x00")  # version 1
    with pytest.raises(rtcp.RtcpError):
        rtcp.parse(bytes([0x81, 200, 0, 1]) + b"\0\0\0\1")  # SR without sender info


def test_helpers() -> None:
    assert rtcp.is_rtcp(rtcp.build_pli(1, 2))
    assert not rtcp.is_rtcp(b"\x80\x60\x00\x01")
    assert rtcp.ntp_time(0.5) == (rtcp.NTP_EPOCH_OFFSET << 32) + (1 << 31)
