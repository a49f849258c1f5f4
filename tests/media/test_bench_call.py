"""``tether bench call`` in a tiny configuration: it runs end to end and reports its figures.

Checks the JSON keys and their types, not timings (the CI machine is shared).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tether.bench.call import FIGURES

pytestmark = pytest.mark.slow


def test_the_call_bench_reports_its_six_figures() -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "tether",
            "bench",
            "call",
            "--participants",
            "2",
            "--bitrate",
            "200000",
            "--width",
            "160",
            "--height",
            "120",
            "--fps",
            "15",
            "--duration",
            "1",
            "--warmup",
            "0.5",
            "--no-pin",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    result = json.loads(completed.stdout)
    assert tuple(sorted(result)) == tuple(sorted(FIGURES))
    assert result["participants"] == 2
    assert result["forwarded_packets_per_s"] > 0
    assert result["worker_cpu_fraction"] > 0
    assert isinstance(result["lost_packets"], int)
    for key in ("us_per_forwarded_packet", "us_per_received_packet"):
        assert isinstance(result[key], float)
        assert result[key] > 0
