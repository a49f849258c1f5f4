"""All ICE connections of a worker on ONE UDP socket (announced host candidates).

aioice binds a new ephemeral socket per interface for every connection and
never offers loopback; neither suits a server behind a fixed, announced port.
:class:`UdpMux` replaces aioice's candidate gathering (process-wide, see
:func:`install`) so that each connection gets one ``StunProtocol`` per announced
address, all sending through the shared socket.

Demultiplexing of incoming datagrams:

1. by remote address, learnt when a connection itself sends to that address
   (it answered an authenticated check, or sent its own check);
2. otherwise only a STUN Binding request may introduce a new address: it is
   routed by the local ufrag at the start of its USERNAME (``local:remote``).

Within a connection, STUN responses go to the protocol whose transaction is
pending; SRTP/SRTCP goes to the connection's fast path when the router has
registered one (skipping aioice's queue and aiortc's coroutine layers),
everything else to aioice as usual. No STUN server is contacted unless
``stun_servers`` is given; then each one is asked once at start for this
socket's mapped address, which is offered as a server-reflexive candidate.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

import ifaddr
from aioice import stun
from aioice.candidate import (
    Candidate,
    candidate_foundation,
    candidate_priority,
)

from tether.media.worker import compat
from tether.media.worker.stats import COUNTERS

log = logging.getLogger("tether.media.worker.netmux")

_STUN_MAGIC = b"\x21\x12\xa4\x42"
#: Remote addresses remembered per connection (candidates of one peer; bounded).
MAX_ADDRESSES_PER_CONNECTION = 64
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
#: Datagrams read per wake-up before yielding to other callbacks.
READ_BATCH = 64
#: Receive buffer per datagram (WebRTC datagrams stay below the path MTU).
MAX_DATAGRAM = 8192

Address = tuple[str, int]
FastPath = Callable[[bytes], None]


class _Entry:
    """Mux state of one aioice Connection."""

    __slots__ = ("addr_protocol", "connection", "fast", "protocols", "ufrag")

    def __init__(self, connection: Any, ufrag: str) -> None:
        self.connection = connection
        self.ufrag = ufrag
        self.protocols: list[Any] = []
        self.addr_protocol: dict[Address, Any] = {}
        self.fast: FastPath | None = None


class _MuxTransport(asyncio.DatagramTransport):
    """What one StunProtocol sees as its socket: a facade over the shared one."""

    def __init__(self, mux: UdpMux, entry: _Entry, protocol: Any) -> None:
        super().__init__()
        self._mux = mux
        self._entry = entry
        self._protocol = protocol
        self._closed = False

    def sendto(self, data: Any, addr: Any = None) -> None:
        """Send through the shared socket; learn ``addr`` for this connection."""
        if self._closed or addr is None:
            return
        key = (addr[0], addr[1])
        entry = self._entry
        if key not in entry.addr_protocol:
            if len(entry.addr_protocol) >= MAX_ADDRESSES_PER_CONNECTION:
                COUNTERS.dropped_packets += 1
                return
            self._mux.by_addr[key] = entry
        entry.addr_protocol[key] = self._protocol
        self._mux.send(data, key)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self._mux.sockname
        return default

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._mux.unregister_protocol(self._entry, self._protocol)
        self._protocol.connection_lost(None)

    def is_closing(self) -> bool:
        return self._closed

    def abort(self) -> None:
        self.close()


class UdpMux:
    """The worker's single UDP socket and its demultiplexer.

    The socket is read directly (``loop.add_reader``), up to :data:`READ_BATCH`
    datagrams per wake-up: asyncio's datagram transport reads one datagram per
    event-loop iteration, which dominated the prototype's ingest cost.
    """

    def __init__(self, announced: list[str]) -> None:
        self.announced = list(announced)
        self.by_addr: dict[Address, _Entry] = {}
        self.by_ufrag: dict[str, _Entry] = {}
        self.by_connection: dict[int, _Entry] = {}
        self.reflexive: list[Address] = []
        self.sockname: Address = ("0.0.0.0", 0)
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sendto: Callable[[bytes, Address], object] | None = None
        self._stun_waiters: dict[bytes, asyncio.Future[Address]] = {}

    # ----------------------------------------------------------------- socket

    async def start(self, bind: str, port: int) -> None:
        """Bind the socket and start reading (no datagram is sent)."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER_BYTES)
                except OSError:  # a capped system limit is not fatal
                    log.warning("could not set socket buffer option %s", opt)
            sock.bind((bind, port))
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._loop = loop
        name = sock.getsockname()
        self.sockname = (name[0], name[1])
        # raw sendto: on a full socket buffer it raises BlockingIOError and the
        # datagram is dropped (counted by the callers) instead of being queued
        self._sendto = sock.sendto
        loop.add_reader(sock.fileno(), self._read_ready)

    def _read_ready(self) -> None:
        sock = self._sock
        if sock is None:
            return
        recvfrom = sock.recvfrom
        for _ in range(READ_BATCH):
            try:
                data, addr = recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. an ICMP error surfaced on the socket
                log.debug("socket error: %s", exc)
                return
            try:
                self.datagram_received(data, addr)
            except Exception:
                COUNTERS.hook_error(log, "datagram handler failed")

    async def discover(self, stun_servers: list[Address]) -> None:
        """Ask each STUN server once for this socket's mapped address (srflx candidates).

        Connections gathered before this finishes offer host candidates only.
        """
        for server in stun_servers:
            mapped = await self._query_stun(server)
            if mapped is not None and mapped not in self.reflexive:
                self.reflexive.append(mapped)

    @property
    def port(self) -> int:
        return self.sockname[1]

    async def _query_stun(self, server: Address) -> Address | None:
        request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        future: asyncio.Future[Address] = asyncio.get_running_loop().create_future()
        self._stun_waiters[request.transaction_id] = future
        try:
            for _ in range(3):
                self.send(bytes(request), server)
                try:
                    return await asyncio.wait_for(asyncio.shield(future), 1.0)
                except TimeoutError:
                    continue
            log.warning("STUN server %s:%s did not answer", *server)
            return None
        finally:
            self._stun_waiters.pop(request.transaction_id, None)

    def close(self) -> None:
        """Stop reading and close the socket (idempotent)."""
        sock, self._sock = self._sock, None
        self._sendto = None
        if sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
            sock.close()

    def send(self, data: bytes, addr: Address) -> None:
        """Send one datagram (counted; dropped if the socket buffer is full)."""
        if self._sendto is None:
            return
        COUNTERS.tx_packets += 1
        COUNTERS.tx_bytes += len(data)
        try:
            self._sendto(data, addr)
        except OSError as exc:
            COUNTERS.dropped_packets += 1
            log.debug("sendto %s failed: %s", addr, exc)

    def sender(self) -> Callable[[bytes, Address], object]:
        """The raw sendto of the socket, for the per-packet fast path (counting is the caller's)."""
        if self._sendto is None:
            raise RuntimeError("UdpMux not started")
        return self._sendto

    # ----------------------------------------------------------------- receive

    def datagram_received(self, data: bytes, addr: Any) -> None:
        COUNTERS.rx_packets += 1
        COUNTERS.rx_bytes += len(data)
        key = (addr[0], addr[1])
        entry = self.by_addr.get(key)
        if entry is not None:
            first = data[0] if data else 0
            if 127 < first < 192:
                fast = entry.fast
                if fast is not None:
                    fast(data)
                    return
            elif first < 2 and len(data) >= 20 and data[4:8] == _STUN_MAGIC:
                self._stun_to_entry(entry, data, key)
                return
            entry.addr_protocol.get(key, entry.protocols[0]).datagram_received(data, key)
            return
        # unknown source: only a STUN request naming one of our ufrags may introduce it
        if len(data) >= 20 and data[0] < 2 and data[4:8] == _STUN_MAGIC:
            try:
                message = stun.parse_message(data)
            except ValueError:
                COUNTERS.dropped_packets += 1
                return
            waiter = self._stun_waiters.get(message.transaction_id)
            if waiter is not None and not waiter.done():
                mapped = message.attributes.get("XOR-MAPPED-ADDRESS")
                if mapped is not None:
                    waiter.set_result((mapped[0], mapped[1]))
                return
            username = message.attributes.get("USERNAME")
            if message.message_class == stun.Class.REQUEST and isinstance(username, str):
                target = self.by_ufrag.get(username.split(":", 1)[0])
                if target is not None and target.protocols:
                    target.protocols[0].datagram_received(data, key)
                    return
        COUNTERS.dropped_packets += 1

    def _stun_to_entry(self, entry: _Entry, data: bytes, key: Address) -> None:
        if data[0] & 0x01:  # class bit C1: success or error response
            tid = bytes(data[8:20])
            for protocol in entry.protocols:
                if tid in compat.protocol_transactions(protocol):
                    protocol.datagram_received(data, key)
                    return
        protocol = entry.addr_protocol.get(key) or (entry.protocols[0] if entry.protocols else None)
        if protocol is None:
            COUNTERS.dropped_packets += 1
            return
        protocol.datagram_received(data, key)

    # ----------------------------------------------------------------- registry

    def candidates_for(self, connection: Any, component: int) -> list[Any]:
        """Register ``connection``; return its local candidates (host per announced address)."""
        ufrag = connection.local_username
        entry = self.by_connection.get(id(connection))
        if entry is None:
            entry = _Entry(connection, ufrag)
            self.by_connection[id(connection)] = entry
            self.by_ufrag[ufrag] = entry
        port = self.sockname[1]
        out = []
        for index, host in enumerate(self.announced):
            protocol = compat.new_stun_protocol(connection)
            protocol.connection_made(_MuxTransport(self, entry, protocol))
            protocol.local_candidate = Candidate(
                foundation=candidate_foundation("host", "udp", host),
                component=component,
                transport="udp",
                priority=candidate_priority(component, "host", 65535 - index),
                host=host,
                port=port,
                type="host",
            )
            entry.protocols.append(protocol)
            compat.connection_protocols(connection).append(protocol)
            out.append(protocol.local_candidate)
        base = self.announced[0] if self.announced else self.sockname[0]
        for host, mapped_port in self.reflexive:
            out.append(
                Candidate(
                    foundation=candidate_foundation("srflx", "udp", base),
                    component=component,
                    transport="udp",
                    priority=candidate_priority(component, "srflx"),
                    host=host,
                    port=mapped_port,
                    type="srflx",
                    related_address=base,
                    related_port=port,
                )
            )
        return out

    def unregister_protocol(self, entry: _Entry, protocol: Any) -> None:
        """Forget ``protocol``; the connection is forgotten with its last protocol."""
        if protocol in entry.protocols:
            entry.protocols.remove(protocol)
        for key in [k for k, p in entry.addr_protocol.items() if p is protocol]:
            del entry.addr_protocol[key]
            if self.by_addr.get(key) is entry:
                del self.by_addr[key]
        if not entry.protocols:
            entry.fast = None
            if self.by_ufrag.get(entry.ufrag) is entry:
                del self.by_ufrag[entry.ufrag]
            self.by_connection.pop(id(entry.connection), None)
            for key in list(entry.addr_protocol):
                if self.by_addr.get(key) is entry:
                    del self.by_addr[key]
            entry.addr_protocol.clear()

    def set_fast_path(self, connection: Any, fast: FastPath | None) -> None:
        """Hand SRTP/SRTCP of ``connection`` straight to ``fast`` (None: back to aioice)."""
        entry = self.by_connection.get(id(connection))
        if entry is not None:
            entry.fast = fast

    @property
    def connections(self) -> int:
        return len(self.by_connection)


def install(mux: UdpMux) -> None:
    """Make every aioice Connection of this process gather from ``mux`` (worker only)."""

    async def get_component_candidates(
        self: Any, component: int, addresses: list[str], timeout: int = 5
    ) -> list[Any]:
        return mux.candidates_for(self, component)

    compat.replace_component_candidates(get_component_candidates)


def parse_stun_url(url: str) -> Address:
    """``stun:host[:port]`` → (host, port) (default port 3478).

    Raises:
        ValueError: not a stun: URL.
    """
    if not url.startswith("stun:"):
        raise ValueError(f"Expected a stun: URL, got {url!r}")
    rest = url[5:].split("?", 1)[0]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return rest, 3478
    return host.strip("[]"), int(port)


def host_addresses() -> list[str]:
    """This host's IPv4 addresses, loopback last (the default announced set)."""
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and ip.ip not in found and ip.ip != "127.0.0.1":
                found.append(ip.ip)
    return [*found, "127.0.0.1"]
