"""The circuit breaker: fail fast while a protected service keeps failing, and a readiness probe that
closes it as soon as the service is back. Thread-safe, with an injectable clock; no HTTP here (an open
breaker raises :class:`serving.errors.CircuitOpen`).
"""

from __future__ import annotations

import asyncio
import enum
import threading
import time
from collections.abc import Awaitable, Callable

from serving.errors import CircuitOpen


class BreakerState(enum.IntEnum):
    """Values exported as ``hndsr_circuit_breaker_state``."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    """CLOSED -> OPEN after ``threshold`` consecutive failures; OPEN -> HALF_OPEN after ``reset_s``;
    HALF_OPEN lets one trial through: CLOSED after it succeeds, OPEN again if it fails.

    With a readiness probe (:class:`BreakerProbe`), :meth:`probe_ready` closes an OPEN or HALF_OPEN
    breaker as soon as the protected service says it is ready again, instead of waiting ``reset_s``
    for a blind trial (which, fired before the service is back, re-opens the breaker for another
    ``reset_s``). A service that says ready and fails again at once is not believed at once the next
    time: each such relapse doubles the time the breaker stays OPEN before a probe may close it
    (``probe_hold_s`` x 2^relapses, at most ``reset_s``); a trial success resets it.

    Call :meth:`allow` before the protected call and then exactly one of :meth:`success`,
    :meth:`failure` or :meth:`release` (the call ended without telling anything about health, e.g. the
    client's input was refused). ``on_open`` is called (outside the lock) whenever it opens.
    """

    def __init__(
        self,
        threshold: int = 3,
        reset_s: float = 30.0,
        *,
        name: str = "inference",
        probe_hold_s: float = 1.0,
        on_open: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.threshold = max(1, threshold)
        self.reset_s = reset_s
        self.name = name
        self.probe_hold_s = probe_hold_s
        self.on_open = on_open
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial = False
        self._probe_closed_at: float | None = None
        self.relapses = 0
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
            f"(last: {self.last_error or 'n/a'}); requests fail fast until the {self.name} is ready again "
            "— retry later"
        )

    def success(self) -> None:
        with self._lock:
            self._state = BreakerState.CLOSED
            self._failures = 0
            self._trial = False
            if self._probe_closed_at is None or self._clock() - self._probe_closed_at >= self.reset_s:
                self.relapses = 0

    def failure(self, reason: str = "") -> None:
        opened = False
        with self._lock:
            self.last_error = reason[:300]
            state = self._current()
            self._trial = False
            if state is BreakerState.OPEN:  # a call that was already in flight when it opened
                return
            if state is BreakerState.HALF_OPEN:
                self._open()
                opened = True
            else:
                self._failures += 1
                if self._failures >= self.threshold:
                    self._open()
                    opened = True
        if opened and self.on_open is not None:
            self.on_open()

    def release(self) -> None:
        with self._lock:
            self._trial = False

    def probe_hold(self) -> float:
        """Seconds an OPEN breaker stays open before a ready probe may close it."""
        if self.relapses == 0:
            return 0.0
        return min(self.reset_s, self.probe_hold_s * 2.0**self.relapses)

    def probe_ready(self) -> bool:
        """The protected service says it is ready: close (True) unless the relapse hold still runs."""
        with self._lock:
            state = self._current()
            if state is BreakerState.CLOSED:
                return True
            if state is BreakerState.OPEN and self._clock() - self._opened_at < self.probe_hold():
                return False
            self._state = BreakerState.CLOSED
            self._failures = 0
            self._trial = False
            self._probe_closed_at = self._clock()
            return True

    def _open(self) -> None:
        now = self._clock()
        if self._probe_closed_at is not None and now - self._probe_closed_at < self.reset_s:
            self.relapses += 1  # the probe said ready, and it failed again soon after
        self._probe_closed_at = None
        self._state = BreakerState.OPEN
        self._opened_at = now
        self._failures = 0


class BreakerProbe:
    """While ``breaker`` is not CLOSED, ask ``check`` (the protected service's readiness) every
    ``interval_s`` seconds and close the breaker as soon as it says ready.

    :meth:`kick` starts the probe task on the running event loop (it is given to the breaker as its
    ``on_open``, and called by whoever sees the breaker open); the task ends when the breaker closes.
    ``check`` must not raise for an unreachable service — False — though an exception counts as False.
    """

    def __init__(
        self, breaker: CircuitBreaker, check: Callable[[], Awaitable[bool]], *, interval_s: float = 1.0
    ) -> None:
        self.breaker = breaker
        self.check = check
        self.interval_s = max(0.05, interval_s)
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.probes = 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def kick(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called from a worker thread: hand over to the loop it last ran on
            if self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._start)
            return
        self._loop = loop
        self._start()

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.running and self._task is not None and self._task.get_loop() is loop:
            return
        self._task = loop.create_task(self._run())

    async def _run(self) -> None:
        while self.breaker.state is not BreakerState.CLOSED:
            await asyncio.sleep(self.interval_s)
            if self.breaker.state is BreakerState.CLOSED:
                return
            self.probes += 1
            try:
                ready = await self.check()
            except Exception:  # a probe that fails says "not ready", never more
                ready = False
            if ready and self.breaker.probe_ready():
                return


def probed_breaker(
    threshold: int, reset_s: float, probe_s: float, *, name: str, check: Callable[[], Awaitable[bool]]
) -> tuple[CircuitBreaker, BreakerProbe]:
    """A breaker that ``check`` (the service's readiness) closes while it is open, asked every ``probe_s``."""
    breaker = CircuitBreaker(threshold, reset_s, name=name, probe_hold_s=probe_s)
    probe = BreakerProbe(breaker, check, interval_s=probe_s)
    breaker.on_open = probe.kick
    return breaker, probe
