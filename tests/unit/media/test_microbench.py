"""The data-path micro-benchmark still runs (figures are not asserted, only its invariants)."""

from __future__ import annotations

from tether.media.testing import microbench


def test_microbench_forwards_every_packet_to_every_consumer() -> None:
    figures = microbench.measure(packets=300)  # asserts tx == consumers x packets inside
    assert set(figures["us_per_ingress_packet_by_consumers"]) == {"0", "1", "5", "10"}
    assert figures["us_per_received_packet"] > 0
