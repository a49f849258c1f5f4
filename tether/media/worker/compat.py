"""Every private aiortc/aioice attribute tether relies on, in one place.

The worker uses most of them; the Python call participant
(``tether.media.peer``) uses the few marked "client".

Pinned versions: aiortc 1.16.0, aioice 0.13.0. Each private attribute is reached
through one small function below, and :func:`check` verifies that each exists
with the expected shape (``tests/unit/media/test_compat.py`` runs it), so an
upgrade that changes one fails loudly instead of silently breaking media.

Attributes used (class: attribute — why):

- ``RTCDtlsTransport._handle_rtp_data`` / ``_handle_rtcp_data`` — replaced per
  instance: decrypted RTP/RTCP bytes go to the router instead of aiortc's receivers.
- ``RTCDtlsTransport._tx_srtp`` / ``_rx_srtp`` (pylibsrtp ``Session``) — protect and
  unprotect on the fast path without aiortc's coroutine layers.
- ``RTCIceTransport._connection`` (aioice ``Connection``) — to find the nominated pair.
- ``aioice.Connection._nominated`` — ``{component: CandidatePair}`` once connected.
- ``aioice.Connection._protocols`` — where gathered protocols are registered.
- ``aioice.Connection.get_component_candidates`` — replaced (class level, worker
  process only) so that candidates come from the worker's single UDP socket.
- ``aioice.StunProtocol.transactions`` — pending STUN transactions, to route a
  STUN response to the protocol that sent the request.
- ``aioice.ice.get_host_addresses`` — replaced in test clients to include loopback,
  and wrapped (client) so that 127.0.0.1 is gathered as well.
- ``aioice.Connection.data_received(data, component)`` — wrapped per connection
  (client) for loss injection; ``StunProtocol.datagram_received`` must call it.
- ``RTCRtpReceiver._handle_rtp_packet(packet, arrival_time_ms)`` — wrapped per
  receiver (client) to count packets; ``_handle_rtp_data`` must call it.
- ``RTCRtpSender._ssrc`` / ``_rtx_ssrc`` / ``_stream_id`` / ``_track_id`` — SSRCs the
  worker uses when forwarding, and the msid written into the subscriber offer.
- ``RTCRtpTransceiver._codecs`` / ``_headerExtensions`` — negotiated payload types
  and header-extension ids.
- ``RTCRtpSender.send`` / ``RTCRtpReceiver.receive`` — public, but replaced per
  instance by no-ops so aiortc runs no media pipeline of its own.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import aioice
import aioice.ice
import aiortc
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcicetransport import (
    RTCIceGatherer,
    RTCIceTransport,
)
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtcrtptransceiver import RTCRtpTransceiver

RtpHook = Callable[..., Awaitable[None]]
RtcpHook = Callable[[bytes], Awaitable[None]]


async def _noop(*_args: Any, **_kwargs: Any) -> None:
    """Replacement for aiortc's media coroutines (sender.send / receiver.receive)."""


# --------------------------------------------------------------------------- aiortc


def install_dtls_hooks(dtls: Any, rtp_hook: RtpHook, rtcp_hook: RtcpHook) -> None:
    """Route decrypted RTP/RTCP of ``dtls`` to the hooks.

    aiortc calls ``_handle_rtp_data(data, arrival_time_ms=...)`` and
    ``_handle_rtcp_data(data)``; an exception escaping a hook ends the transport,
    so hooks must catch everything (the router wraps them).
    """
    dtls._handle_rtp_data = rtp_hook
    dtls._handle_rtcp_data = rtcp_hook


def srtp_sessions(dtls: Any) -> tuple[Any, Any] | None:
    """(tx, rx) pylibsrtp sessions of a connected DTLS transport, else None."""
    tx = dtls._tx_srtp
    rx = dtls._rx_srtp
    if tx is None or rx is None:
        return None
    return tx, rx


def ice_connection(dtls: Any) -> Any:
    """The aioice Connection under a DTLS transport."""
    return dtls.transport._connection


def nominated_pair(connection: Any) -> Any:
    """The nominated CandidatePair of component 1, or None."""
    return connection._nominated.get(1)


def connection_protocols(connection: Any) -> list[Any]:
    """The list aioice keeps its StunProtocols in (mutated by the mux)."""
    protocols: list[Any] = connection._protocols
    return protocols


def protocol_transactions(protocol: Any) -> dict[bytes, Any]:
    """Pending STUN transactions of a StunProtocol, by transaction id."""
    transactions: dict[bytes, Any] = protocol.transactions
    return transactions


def sender_ssrcs(sender: Any) -> tuple[int, int]:
    """(ssrc, rtx ssrc) aiortc put into the SDP for this sender."""
    return int(sender._ssrc), int(sender._rtx_ssrc)


def set_sender_msid(sender: Any, stream_id: str, track_id: str) -> None:
    """Set what aiortc writes as ``a=msid:<stream> <track>`` for this sender."""
    sender._stream_id = stream_id
    sender._track_id = track_id


def transceiver_codecs(transceiver: Any) -> list[Any]:
    """Negotiated codecs (RTCRtpCodecParameters) of a transceiver."""
    codecs: list[Any] = transceiver._codecs
    return codecs


def transceiver_header_extensions(transceiver: Any) -> dict[str, int]:
    """Negotiated header extensions as ``{uri: id}``."""
    return {e.uri: int(e.id) for e in transceiver._headerExtensions}


def silence_receiver(receiver: Any) -> None:
    """Stop aiortc from starting a decoder pipeline / RR task for this receiver."""
    receiver.receive = _noop


def silence_sender(sender: Any) -> None:
    """Stop aiortc from running its RTP/RTCP sender tasks (the router sends instead)."""
    sender.send = _noop


# --------------------------------------------------------------------------- aioice

CandidatesFn = Callable[[Any, int, list[str], int], Awaitable[list[Any]]]


def replace_component_candidates(fn: CandidatesFn) -> None:
    """Replace ``Connection.get_component_candidates`` for the whole process."""
    setattr(aioice.Connection, "get_component_candidates", fn)  # noqa: B010 - typed method


_LOOPBACK = "127.0.0.1"
_loopback_lock = threading.Lock()


def add_loopback_host_address() -> None:
    """Make aioice gather 127.0.0.1 too (process-wide, idempotent; client side).

    aioice's ``get_host_addresses`` skips 127.0.0.1, so a client on the same
    machine as a media worker that announces only 127.0.0.1 never pairs.
    """
    with _loopback_lock:
        current = aioice.ice.get_host_addresses
        if getattr(current, "_tether_loopback", False):
            return

        def with_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
            addresses: list[str] = list(current(use_ipv4, use_ipv6))
            if use_ipv4 and _LOOPBACK not in addresses:
                addresses.append(_LOOPBACK)
            return addresses

        with_loopback._tether_loopback = True  # type: ignore[attr-defined]
        setattr(aioice.ice, "get_host_addresses", with_loopback)  # noqa: B010


def pc_ice_connection(pc: Any) -> Any:
    """The aioice Connection under ``pc``'s (bundled) transport, or None before one exists."""
    transceivers = pc.getTransceivers()
    if not transceivers:
        return None
    return ice_connection(transceivers[0].receiver.transport)


def wrap_receiver_packets(receiver: Any, wrap: Callable[[Any], Any]) -> None:
    """Replace ``receiver._handle_rtp_packet`` by ``wrap(original)`` (client side)."""
    receiver._handle_rtp_packet = wrap(receiver._handle_rtp_packet)


def set_host_addresses(addresses: list[str]) -> Callable[[bool, bool], list[str]]:
    """Make aioice gather on exactly ``addresses``; return the previous function."""
    previous: Callable[[bool, bool], list[str]] = aioice.ice.get_host_addresses

    def fixed(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return list(addresses)

    setattr(aioice.ice, "get_host_addresses", fixed)  # noqa: B010 - typed module attribute
    return previous


def restore_host_addresses(previous: Callable[[bool, bool], list[str]]) -> None:
    """Undo :func:`set_host_addresses`."""
    setattr(aioice.ice, "get_host_addresses", previous)  # noqa: B010 - typed module attribute


def new_stun_protocol(connection: Any) -> Any:
    """A StunProtocol bound to ``connection`` (public class, private wiring)."""
    return aioice.ice.StunProtocol(connection)


# --------------------------------------------------------------------------- check


class CompatError(RuntimeError):
    """An aiortc/aioice internal the worker relies on changed."""


def _params(fn: Any) -> list[str]:
    return list(inspect.signature(fn).parameters)


def check() -> list[str]:
    """Verify every private attribute above; return what was checked.

    Raises:
        CompatError: one is missing or has another shape (message says which).
    """
    checked: list[str] = []

    def need(cond: bool, what: str) -> None:
        if not cond:
            raise CompatError(f"aiortc/aioice internals changed: {what}")
        checked.append(what)

    need(aiortc.__version__ == "1.16.0", "aiortc version 1.16.0")
    need(getattr(aioice, "__version__", "") == "0.13.0", "aioice version 0.13.0")
    need(
        _params(RTCDtlsTransport._handle_rtp_data) == ["self", "data", "arrival_time_ms"],
        "RTCDtlsTransport._handle_rtp_data(self, data, arrival_time_ms)",
    )
    need(
        _params(RTCDtlsTransport._handle_rtcp_data) == ["self", "data"],
        "RTCDtlsTransport._handle_rtcp_data(self, data)",
    )
    src = inspect.getsource(RTCDtlsTransport)
    need("self._handle_rtp_data(data, arrival_time_ms=" in src, "DTLS calls _handle_rtp_data")
    need("await self._handle_rtcp_data(data)" in src, "DTLS calls _handle_rtcp_data")
    need("self._tx_srtp" in src and "self._rx_srtp" in src, "RTCDtlsTransport._tx_srtp/_rx_srtp")
    need("self._tx_srtp.protect_rtcp(" in src, "_tx_srtp.protect_rtcp")
    need("self._rx_srtp.unprotect_rtcp(" in src, "_rx_srtp.unprotect_rtcp")
    need(
        "self._connection = gatherer._connection" in inspect.getsource(RTCIceTransport),
        "RTCIceTransport._connection",
    )
    need(
        "self._connection = Connection(" in inspect.getsource(RTCIceGatherer),
        "RTCIceGatherer creates an aioice Connection",
    )
    sender_src = inspect.getsource(RTCRtpSender.__init__)
    for attr in ("_ssrc", "_rtx_ssrc", "_stream_id"):
        need(f"self.{attr} =" in sender_src, f"RTCRtpSender.{attr}")
    need("self._track_id" in inspect.getsource(RTCRtpSender), "RTCRtpSender._track_id")
    need(
        _params(RTCRtpSender.send) == ["self", "parameters"]
        and inspect.iscoroutinefunction(RTCRtpSender.send),
        "async RTCRtpSender.send(self, parameters)",
    )
    need(
        _params(RTCRtpReceiver.receive) == ["self", "parameters"]
        and inspect.iscoroutinefunction(RTCRtpReceiver.receive),
        "async RTCRtpReceiver.receive(self, parameters)",
    )
    tr_src = inspect.getsource(RTCRtpTransceiver.__init__)
    need("self._codecs" in tr_src, "RTCRtpTransceiver._codecs")
    need("self._headerExtensions" in tr_src, "RTCRtpTransceiver._headerExtensions")
    pc_src = inspect.getsource(aiortc.rtcpeerconnection)
    need(
        'media.msid = f"{transceiver.sender._stream_id} {transceiver.sender._track_id}"' in pc_src,
        "msid written from sender._stream_id/_track_id",
    )

    conn_src = inspect.getsource(aioice.Connection.__init__)
    need("self._nominated" in conn_src, "aioice Connection._nominated")
    need("self._protocols" in conn_src, "aioice Connection._protocols")
    need(
        _params(aioice.Connection.get_component_candidates)
        == ["self", "component", "addresses", "timeout"],
        "aioice Connection.get_component_candidates(self, component, addresses, timeout)",
    )
    need(
        "self.get_component_candidates(" in inspect.getsource(aioice.Connection.gather_candidates),
        "gather_candidates calls get_component_candidates",
    )
    need(hasattr(aioice.ice, "get_host_addresses"), "aioice.ice.get_host_addresses")
    need(
        "get_host_addresses(" in inspect.getsource(aioice.Connection.gather_candidates),
        "gather_candidates calls get_host_addresses",
    )
    need(
        "self.transactions" in inspect.getsource(aioice.ice.StunProtocol.__init__),
        "StunProtocol.transactions",
    )
    need(
        _params(aioice.ice.StunProtocol.__init__) == ["self", "receiver"],
        "StunProtocol(receiver)",
    )
    need(
        "self._queue.put_nowait((data, component))"
        in inspect.getsource(aioice.Connection.data_received),
        "Connection.data_received queues datagrams",
    )
    need(
        _params(aioice.Connection.data_received) == ["self", "data", "component"],
        "aioice Connection.data_received(self, data, component)",
    )
    need(
        "self.receiver.data_received("
        in inspect.getsource(aioice.ice.StunProtocol.datagram_received),
        "StunProtocol.datagram_received calls receiver.data_received",
    )
    need(
        _params(RTCRtpReceiver._handle_rtp_packet) == ["self", "packet", "arrival_time_ms"],
        "RTCRtpReceiver._handle_rtp_packet(self, packet, arrival_time_ms)",
    )
    need(
        "receiver._handle_rtp_packet(" in inspect.getsource(RTCDtlsTransport._handle_rtp_data),
        "RTCDtlsTransport._handle_rtp_data calls receiver._handle_rtp_packet",
    )
    pair_src = inspect.getsource(aioice.ice.CandidatePair)
    need("def remote_addr" in pair_src and "self.protocol" in pair_src, "CandidatePair shape")
    return checked
