"""Process-wide counters of the worker (reported by ``worker.stats``)."""

from __future__ import annotations

import logging
from typing import Any


class Counters:
    """Plain integer attributes: incrementing one is the cheapest thing Python can do."""

    __slots__ = (
        "dropped_packets",
        "hook_errors",
        "nacks_received",
        "plis_sent",
        "rtx_sent",
        "rx_bytes",
        "rx_packets",
        "tx_bytes",
        "tx_packets",
    )

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Zero every counter."""
        self.rx_packets = 0
        self.tx_packets = 0
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.rtx_sent = 0
        self.nacks_received = 0
        self.plis_sent = 0
        self.hook_errors = 0
        self.dropped_packets = 0

    def hook_error(self, log: logging.Logger, message: str, *args: Any) -> None:
        """Count a caught exception in a hook / packet handler and log it (with traceback).

        Logged for the first 10 and then every power of two, so that a handler
        failing on every packet cannot flood stderr.
        """
        self.hook_errors += 1
        n = self.hook_errors
        if n <= 10 or n & (n - 1) == 0:
            log.error(message + " (hook error #%d)", *args, n, exc_info=True)

    def snapshot(self) -> dict[str, int]:
        """All counters as a dict."""
        return {name: int(getattr(self, name)) for name in self.__slots__}


#: The worker's counters (one worker per process).
COUNTERS = Counters()
