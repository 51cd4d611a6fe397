"""Admission control: a token-bucket rate limiter per client, a concurrency gate with a bounded wait
queue, and a circuit breaker. Plain asyncio/threading objects with an injectable clock; no HTTP here
(the middleware and the models turn their verdicts into responses through :mod:`serving.errors`).
"""

from __future__ import annotations

import asyncio
import enum
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from serving.errors import CircuitOpen, QueueFull, RateLimited

Clock = Callable[[], float]


# ------------------------------------------------------------------------------------ rate limiting


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token bucket per client key: ``rate`` requests per second sustained, bursts up to ``burst``.

    ``rate <= 0`` disables the limiter. At most ``max_keys`` buckets are kept (least recently used
    evicted), so a flood of distinct keys cannot grow memory without bound.
    """

    def __init__(self, rate: float, burst: int, *, max_keys: int = 10_000, clock: Clock = time.monotonic):
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


# ------------------------------------------------------------------------------------ concurrency


class ConcurrencyGate:
    """At most ``limit`` holders at once; at most ``max_waiting`` callers queue for a slot, the next
    one is refused at once with :class:`QueueFull` (503 + Retry-After)."""

    def __init__(self, limit: int, max_waiting: int, *, retry_after_s: float = 1.0, what: str = "requests"):
        if limit < 1:
            raise ValueError(f"concurrency limit must be >= 1, got {limit}")
        self.limit = limit
        self.max_waiting = max(0, max_waiting)
        self.retry_after_s = retry_after_s
        self.what = what
        self._semaphore = asyncio.Semaphore(limit)
        self.waiting = 0
        self.active = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._semaphore.locked() and self.waiting >= self.max_waiting:
            raise QueueFull(
                f"server busy: {self.active} {self.what} running and {self.waiting} waiting (limit "
                f"{self.max_waiting}); retry after the Retry-After delay",
                retry_after=self.retry_after_s,
            )
        self.waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self.waiting -= 1
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self._semaphore.release()


# ------------------------------------------------------------------------------------ circuit breaker


class BreakerState(enum.IntEnum):
    """Values exported as ``hndsr_circuit_breaker_state``."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    """CLOSED -> OPEN after ``threshold`` consecutive failures; OPEN -> HALF_OPEN after ``reset_s``;
    HALF_OPEN lets one trial through: CLOSED after it succeeds, OPEN again if it fails.

    Call :meth:`allow` before the protected call and then exactly one of :meth:`success`,
    :meth:`failure` or :meth:`release` (the call ended without telling anything about health, e.g. the
    client's input was refused).
    """

    def __init__(
        self,
        threshold: int = 3,
        reset_s: float = 30.0,
        *,
        name: str = "inference",
        clock: Clock = time.monotonic,
    ):
        self.threshold = max(1, threshold)
        self.reset_s = reset_s
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial = False
        self.last_error = ""

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._current()

    def _current(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.reset_s:
            self._state = BreakerState.HALF_OPEN
            self._trial = False
        return self._state

    def retry_after(self) -> float:
        with self._lock:
            if self._current() is BreakerState.OPEN:
                return max(0.0, self.reset_s - (self._clock() - self._opened_at))
            return 1.0

    def allow(self) -> None:
        """Raise :class:`CircuitOpen` unless a call may go ahead now."""
        with self._lock:
            state = self._current()
            if state is BreakerState.CLOSED:
                return
            if state is BreakerState.HALF_OPEN and not self._trial:
                self._trial = True
                return
            wait = (
                max(0.0, self.reset_s - (self._clock() - self._opened_at))
                if state is BreakerState.OPEN
                else 1.0
            )
        raise CircuitOpen(self.open_message(), retry_after=max(wait, 1.0))

    def open_message(self) -> str:
        return (
            f"{self.name} circuit breaker is {self.state.name} after {self.threshold} consecutive failures "
            f"(last: {self.last_error or 'n/a'}); requests fail fast until a trial succeeds — retry later"
        )

    def success(self) -> None:
        with self._lock:
            self._state = BreakerState.CLOSED
            self._failures = 0
            self._trial = False

    def failure(self, reason: str = "") -> None:
        with self._lock:
            self.last_error = reason[:300]
            state = self._current()
            self._trial = False
            if state is BreakerState.OPEN:  # a call that was already in flight when it opened
                return
            if state is BreakerState.HALF_OPEN:
                self._open()
                return
            self._failures += 1
            if self._failures >= self.threshold:
                self._open()

    def release(self) -> None:
        with self._lock:
            self._trial = False

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self._clock()
        self._failures = 0
