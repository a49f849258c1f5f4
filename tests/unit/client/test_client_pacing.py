"""The SDK paces what it resends after a reconnect to the server's frame rate."""

from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing

from tether.client._client import _Pacer


async def test_pacer_allows_a_burst_then_the_rate(autojump_clock: trio.testing.MockClock) -> None:
    pacer = _Pacer(50)
    start = trio.current_time()
    times = []
    for _ in range(150):
        await pacer.wait()
        times.append(trio.current_time() - start)
    assert times[49] == 0.0  # one second's worth at once
    assert times[-1] == pytest.approx(100 / 50, abs=0.05)  # then 50 per second
    # never more than 50 in any one-second window after the burst
    later = [t for t in times if t > 0]
    assert all(b - a >= 0.0199 for a, b in itertools.pairwise(later))


async def test_no_limit_means_no_waiting(autojump_clock: trio.testing.MockClock) -> None:
    pacer = _Pacer(0)
    start = trio.current_time()
    for _ in range(1000):
        await pacer.wait()
    assert trio.current_time() == start
