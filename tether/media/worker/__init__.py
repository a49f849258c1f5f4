"""SFU media worker process (asyncio + aiortc): ``python -m tether.media.worker``.

Modules: ``__main__`` (entry, pipe I/O), ``rpc`` (method dispatch), ``router``
(forwarding), ``netmux`` (one UDP port for all ICE), ``rtp`` / ``rtcp`` / ``sdp``
(pure packet and SDP helpers), ``compat`` (every private aiortc/aioice attribute).
"""
