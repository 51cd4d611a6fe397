"""Per-client rate limiting: a token bucket per client key, with an injectable clock. No HTTP here
(the middleware turns a refusal into a 429 through :mod:`serving.errors`).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from serving.errors import RateLimited


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token bucket per client key: ``rate`` requests per second sustained, bursts up to ``burst``.

    ``rate <= 0`` disables the limiter. At most ``max_keys`` buckets are kept (least recently used
    evicted), so a flood of distinct keys cannot grow memory without bound.
    """

    def __init__(
        self, rate: float, burst: int, *, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic
    ):
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def acquire(self, key: str) -> None:
        """Take one token for ``key`` or raise :class:`RateLimited` with the wait until the next one."""
        if not self.enabled:
            return
        now = self._clock()
        with self._lock:
            bucket = self._buckets.pop(key, None)
            if bucket is None:
                bucket = _Bucket(tokens=float(self.burst), updated=now)
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            self._buckets[key] = bucket
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return
            wait = (1.0 - bucket.tokens) / self.rate
        raise RateLimited(
            f"rate limit of {self.rate:g} requests/s (burst {self.burst}) exceeded for client {key!r}: "
            f"retry after {wait:.1f} s, or spread requests out",
            retry_after=wait,
        )
