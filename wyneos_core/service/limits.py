"""Rate limits of ``wyneos serve``: token buckets per key, with bounded memory.

Each key (a client address for enrolment, a node id for heartbeats) has a bucket of
``burst`` tokens refilled at ``rate`` per second; a request takes one token or is
refused (429). At most ``max_keys`` buckets are kept: past that the bucket unused the
longest is dropped (a key seen again starts with a full bucket), so a flood of new
keys costs a fixed amount of memory, never more.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

__all__ = ["RateLimiter"]


class RateLimiter:
    """Token buckets by key; thread-safe."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, key: str, now: float) -> bool:
        """Take one token from ``key``'s bucket; False when it is empty."""
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= self.max_keys:
                    self._buckets.popitem(last=False)
                bucket = self._buckets[key] = [self.burst, now]
            else:
                self._buckets.move_to_end(key)
                elapsed = now - bucket[1]
                if elapsed > 0:
                    bucket[0] = min(self.burst, bucket[0] + elapsed * self.rate)
                    bucket[1] = now
            if bucket[0] >= 1.0:
                bucket[0] -= 1.0
                return True
            return False

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` has a token again (0 when it has one)."""
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None or bucket[0] >= 1.0:
                return 0.0
            return (1.0 - bucket[0]) / self.rate

    def __len__(self) -> int:
        return len(self._buckets)
