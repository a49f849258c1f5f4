"""The single-socket ICE mux: announced host candidates, demultiplexing, STUN discovery."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from aioice import stun

from tether.media.worker import netmux
from tether.media.worker.stats import COUNTERS


class FakeConnection:
    """What the mux and aioice's StunProtocol use of an aioice Connection."""

    def __init__(self, ufrag: str) -> None:
        self.local_username = ufrag
        self._protocols: list[Any] = []
        self.requests: list[tuple[str, tuple[str, int]]] = []
        self.data: list[bytes] = []

    def request_received(self, message: Any, addr: tuple[str, int], protocol: Any) -> None:
        self.requests.append((message.attributes["USERNAME"], addr))

    def data_received(self, data: bytes, component: int) -> None:
        self.data.append(data)

    def protocol_lost(self, protocol: Any) -> None:
        pass


def binding_request(username: str) -> bytes:
    msg = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    msg.attributes["USERNAME"] = username
    return bytes(msg)


def test_default_announced_addresses_end_with_loopback() -> None:
    addresses = netmux.host_addresses()
    assert addresses[-1] == "127.0.0.1"
    assert len(set(addresses)) == len(addresses)


def test_parse_stun_url() -> None:
    assert netmux.parse_stun_url("stun:example.org") == ("example.org", 3478)
    assert netmux.parse_stun_url("stun:10.0.0.1:19302") == ("10.0.0.1", 19302)
    with pytest.raises(ValueError, match="stun:"):
        netmux.parse_stun_url("turn:x")


def test_candidates_demux_and_fast_path() -> None:
    async def scenario() -> None:
        mux = netmux.UdpMux(["127.0.0.1", "192.0.2.7"])
        COUNTERS.reset()
        await mux.start("127.0.0.1", 0)
        try:
            assert COUNTERS.tx_packets == 0  # no STUN server contacted
            a, b = FakeConnection("ua"), FakeConnection("ub")
            cands = mux.candidates_for(a, 1)
            mux.candidates_for(b, 1)
            assert [(c.host, c.port, c.type) for c in cands] == [
                ("127.0.0.1", mux.port, "host"),
                ("192.0.2.7", mux.port, "host"),
            ]
            assert cands[0].priority > cands[1].priority
            assert len(a._protocols) == 2
            peer = ("127.0.0.1", 40999)
            mux.datagram_received(b"\x80" + bytes(30), peer)  # unknown source, not STUN
            assert COUNTERS.dropped_packets == 1
            mux.datagram_received(binding_request("ub:remote"), peer)
            assert b.requests == [("ub:remote", peer)]
            assert a.requests == []
            # once A sent to the peer, the peer's datagrams belong to A
            a._protocols[0].transport.sendto(b"check", peer)
            mux.datagram_received(b"\x17dtls", peer)
            assert a.data == [b"\x17dtls"]
            fast: list[bytes] = []
            mux.set_fast_path(a, fast.append)
            mux.datagram_received(b"\x80srtp", peer)
            assert fast == [b"\x80srtp"]
            for protocol in list(a._protocols):
                protocol.transport.close()
            assert mux.connections == 1
            mux.datagram_received(b"\x80srtp", peer)
            assert fast == [b"\x80srtp"]  # forgotten with its connection
        finally:
            mux.close()

    asyncio.run(scenario())


def test_stun_server_gives_a_reflexive_candidate() -> None:
    class StunServer(asyncio.DatagramProtocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: Any) -> None:
            request = stun.parse_message(data)
            response = stun.Message(
                message_method=stun.Method.BINDING,
                message_class=stun.Class.RESPONSE,
                transaction_id=request.transaction_id,
            )
            response.attributes["XOR-MAPPED-ADDRESS"] = ("198.51.100.4", 61000)
            self.transport.sendto(bytes(response), addr)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        server, _ = await loop.create_datagram_endpoint(StunServer, local_addr=("127.0.0.1", 0))
        port = server.get_extra_info("sockname")[1]
        mux = netmux.UdpMux(["127.0.0.1"])
        try:
            await mux.start("127.0.0.1", 0)
            await mux.discover([("127.0.0.1", port)])
            assert mux.reflexive == [("198.51.100.4", 61000)]
            cands = mux.candidates_for(FakeConnection("u"), 1)
            srflx = cands[-1]
            assert (srflx.type, srflx.host, srflx.port) == ("srflx", "198.51.100.4", 61000)
            assert srflx.related_port == mux.port
        finally:
            mux.close()
            server.close()

    asyncio.run(scenario())


def test_socket_is_shared() -> None:
    async def scenario() -> None:
        mux = netmux.UdpMux(["127.0.0.1"])
        await mux.start("127.0.0.1", 0)
        try:
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with pytest.raises(OSError):
                probe.bind(("127.0.0.1", mux.port))
            probe.close()
        finally:
            mux.close()

    asyncio.run(scenario())
