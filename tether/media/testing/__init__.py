"""Test helpers for the media plane (asyncio + aiortc allowed here).

- :mod:`.loopback`: let aiortc test peers gather a 127.0.0.1 host candidate;
- :mod:`.worker_client`: spawn ``python -m tether.media.worker`` and speak wire frames;
- :mod:`.peers`: aiortc publisher / subscriber peers with synthetic media;
- :mod:`.microbench`: CPU per packet of the worker's data path (no network peers);
- :mod:`.fake_worker`: a media-less worker speaking the same pipe protocol.
"""
