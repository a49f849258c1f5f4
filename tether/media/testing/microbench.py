"""CPU per packet of the worker's data path, without network peers.

``python -m tether.media.testing.microbench [--packets 20000]`` feeds SRTP-protected
1.1 kB VP8 packets through the mux's fast path (``UdpMux.datagram_received`` →
unprotect → ingress bookkeeping → per-consumer rewrite → protect → ``sendto`` on
loopback) with 0, 1, 5 and 10 consumers, and prints JSON: ``us_per_received_packet``
(0 consumers; excludes the event loop's per-datagram ``recvfrom``) and
``us_per_forwarded_packet`` (slope 0 → 10 consumers). Real aiortc transports are
created (for their transceivers) but no ICE/DTLS runs: the SRTP sessions are
made here and the transports are marked connected.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import time
from typing import Any

import pylibsrtp
from aiortc import RTCRtpCodecParameters

from tether.media.worker import router as r
from tether.media.worker import rtp
from tether.media.worker.netmux import UdpMux
from tether.media.worker.stats import COUNTERS

_KEY = os.urandom(30)


def _session(kind: int) -> Any:
    policy = pylibsrtp.Policy(key=_KEY, ssrc_type=kind)
    policy.allow_repeat_tx = True
    return pylibsrtp.Session(policy)


async def _run(consumers: int, packets: int) -> float:
    mux = UdpMux(["127.0.0.1"])
    await mux.start("127.0.0.1", 0)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    worker = r.Worker(mux, lambda name, params: None, 1_000_000)
    router = r.Router(worker, "bench")
    publisher = router.participant("p", create=True)
    publisher.pub = r.Publisher(worker, publisher)
    codec = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    track = r.Track(publisher, "0", "video", codec, 97, {rtp.EXT_MID: 1}, [])
    publisher.tracks["0"] = track
    router.tracks[track.id] = track
    publisher.pub._bind(track.producers[0], 1234, False)
    rx = _session(pylibsrtp.Policy.SSRC_ANY_INBOUND)
    tx = _session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    publisher.pub._link = r._Link(tx, rx, mux.sender(), sink.getsockname())
    subscribers = []
    for i in range(consumers):
        participant = router.participant(f"s{i}", create=True)
        sub = participant.sub = r.Subscriber(worker, participant)
        sub.state = "connected"
        sub._link = r._Link(
            _session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND),
            _session(pylibsrtp.Policy.SSRC_ANY_INBOUND),
            mux.sender(),
            sink.getsockname(),
        )
        transceiver = sub.pc.addTransceiver("video", direction="sendonly")
        await sub.pc.setLocalDescription(await sub.pc.createOffer())
        consumer = r.Consumer(sub, track, transceiver)
        sub.consumers[track.id] = consumer
        track.consumers.append(consumer)
        consumer.arm()
        subscribers.append(sub)
    ext = rtp.build_extensions([(1, b"0"), (3, b"\x00\x00\x01")])
    feeder = _session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    data = []
    for i in range(packets):
        frame = b"\x00\x00\x00\x9d\x01\x2a\x40\x01\xf0\x00" if i == 0 else b"\x01\x00\x00"
        descriptor = bytes([0x90, 0x80, 0x80 | ((i >> 8) & 0x7F), i & 0xFF])
        payload = descriptor + frame + os.urandom(1100)
        packet = rtp.build_packet(
            marker=False,
            payload_type=96,
            sequence=i & 0xFFFF,
            timestamp=i * 3000,
            ssrc=1234,
            extensions=ext,
            payload=payload,
        )
        data.append(feeder.protect(packet))
    source = ("127.0.0.1", 5555)
    fake = _FakeConnection()
    mux.candidates_for(fake, 1)
    mux.by_addr[source] = mux.by_connection[id(fake)]
    mux.set_fast_path(fake, publisher.pub.on_datagram)
    COUNTERS.reset()
    start = time.process_time()
    for i, datagram in enumerate(data):
        mux.datagram_received(datagram, source)
        if i % 64 == 0:
            _drain(sink)
    elapsed = time.process_time() - start
    assert COUNTERS.hook_errors == 0
    assert COUNTERS.tx_packets == consumers * packets
    _drain(sink)
    sink.close()
    for sub in subscribers:
        await sub.close()
    await publisher.pub.close()
    mux.close()
    return elapsed / packets


class _FakeConnection:
    """Stands for an aioice Connection in the mux registry."""

    def __init__(self) -> None:
        self.local_username = "bench"
        self._protocols: list[Any] = []


def _drain(sock: socket.socket) -> None:
    try:
        while True:
            sock.recv(2048, socket.MSG_DONTWAIT)
    except BlockingIOError:
        pass


def measure(packets: int = 20000) -> dict[str, Any]:
    """Run the four cases; return the figures printed by :func:`main`."""
    results = {n: asyncio.run(_run(n, packets)) for n in (0, 1, 5, 10)}
    return {
        "us_per_received_packet": round(results[0] * 1e6, 2),
        "us_per_forwarded_packet": round((results[10] - results[0]) / 10 * 1e6, 2),
        "us_per_ingress_packet_by_consumers": {
            str(n): round(v * 1e6, 2) for n, v in results.items()
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=20000)
    args = ap.parse_args()
    print(json.dumps(measure(args.packets)))


if __name__ == "__main__":
    main()
