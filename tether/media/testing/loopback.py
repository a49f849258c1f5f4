"""Let aiortc peers of this process offer a loopback host candidate.

aioice never gathers on 127.0.0.1 (``get_host_addresses`` skips it), so an
aiortc client on a machine whose worker announces 127.0.0.1 would offer only
its other interfaces. Inside :func:`loopback_candidates`, aioice gathers on
exactly the given addresses (default ``["127.0.0.1"]``). Process-wide: use it
around the whole lifetime of the test peers, not concurrently with other
aiortc users that need real interfaces.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tether.media.worker import compat


@contextmanager
def loopback_candidates(addresses: list[str] | None = None) -> Iterator[None]:
    """Gather host candidates only on ``addresses`` while the block runs."""
    previous = compat.set_host_addresses(addresses or ["127.0.0.1"])
    try:
        yield
    finally:
        compat.restore_host_addresses(previous)
