"""Every private aiortc/aioice attribute the worker uses exists on the pinned versions.

If this fails after an upgrade, read tether/media/worker/compat.py: the message
names the attribute whose shape changed.
"""

from __future__ import annotations

import asyncio

import aioice
import aioice.ice
import aiortc
import pytest
from aiortc.rtcdtlstransport import RTCDtlsTransport

from tether.media.worker import compat


def test_pinned_internals_are_what_the_worker_expects() -> None:
    checked = compat.check()
    # one entry per attribute family listed in compat's docstring
    for needle in (
        "_handle_rtp_data",
        "_handle_rtcp_data",
        "_tx_srtp",
        "RTCIceTransport._connection",
        "_nominated",
        "_protocols",
        "get_component_candidates",
        "StunProtocol.transactions",
        "get_host_addresses",
        "RTCRtpSender._ssrc",
        "RTCRtpSender._rtx_ssrc",
        "RTCRtpSender._stream_id",
        "RTCRtpSender._track_id",
        "RTCRtpTransceiver._codecs",
        "RTCRtpTransceiver._headerExtensions",
        "RTCRtpSender.send",
        "RTCRtpReceiver.receive",
    ):
        assert any(needle in c for c in checked), needle


def test_live_objects_have_the_attributes() -> None:
    async def scenario() -> None:
        pc = aiortc.RTCPeerConnection(aiortc.RTCConfiguration(iceServers=[]))
        try:
            transceiver = pc.addTransceiver("video", direction="sendonly")
            ssrc, rtx = compat.sender_ssrcs(transceiver.sender)
            assert ssrc
            assert rtx
            compat.set_sender_msid(transceiver.sender, "stream", "track")
            assert isinstance(compat.transceiver_codecs(transceiver), list)
            assert isinstance(compat.transceiver_header_extensions(transceiver), dict)
            dtls = transceiver.receiver.transport
            assert compat.srtp_sessions(dtls) is None  # not connected yet
            connection = compat.ice_connection(dtls)
            assert isinstance(connection, aioice.Connection)
            assert compat.nominated_pair(connection) is None
            assert compat.connection_protocols(connection) == []
            protocol = compat.new_stun_protocol(connection)
            assert compat.protocol_transactions(protocol) == {}
            for name in ("_handle_rtp_data", "_handle_rtcp_data"):
                assert callable(getattr(dtls, name))
        finally:
            await pc.close()

    asyncio.run(scenario())


def test_host_address_override_is_reversible() -> None:
    original = aioice.ice.get_host_addresses
    previous = compat.set_host_addresses(["127.0.0.1"])
    try:
        assert aioice.ice.get_host_addresses(True, False) == ["127.0.0.1"]
    finally:
        compat.restore_host_addresses(previous)
    assert aioice.ice.get_host_addresses is original


def test_check_fails_loudly_when_an_attribute_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    async def renamed(self: object, data: bytes) -> None:  # lost arrival_time_ms
        return None

    monkeypatch.setattr(RTCDtlsTransport, "_handle_rtp_data", renamed)
    with pytest.raises(compat.CompatError, match="_handle_rtp_data"):
        compat.check()
