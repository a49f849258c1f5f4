"""Media plane: SFU worker processes (asyncio + aiortc) and their trio-side supervisor.

Only ``tether.media.worker`` and ``tether.media.peer`` (and what they import) touch
asyncio or aiortc; the main process uses ``tether.media.pool`` and
``tether.media.wire``, which are trio/sans-I/O only.
"""
