"""Token-bucket rate limiting (pure; the caller passes the clock)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    """A token bucket: ``rate`` tokens per second, at most ``burst`` saved up.

    Args:
        rate: tokens added per second (> 0).
        burst: bucket capacity (>= 1); also the initial fill.
        now: the clock reading at creation (seconds, any monotonic clock).

    Raises:
        ValueError: for a non-positive rate or a burst below 1.
    """

    rate: float
    burst: float
    now: float
    _tokens: float = -1.0

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError(f"Expected a positive rate, got {self.rate!r}")
        if self.burst < 1:
            raise ValueError(f"Expected a burst of at least 1, got {self.burst!r}")
        self._tokens = self.burst

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens at time ``now``; False (and nothing taken) if short."""
        elapsed = now - self.now
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self.now = now
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False

    @property
    def tokens(self) -> float:
        """Tokens available at the last ``take``."""
        return self._tokens
