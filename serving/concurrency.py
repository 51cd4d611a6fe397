"""Concurrency admission: a gate with a bounded wait queue that admits by expected latency, from the
service cost and drain rate a :class:`DrainMeter` measures. Plain asyncio objects with an injectable
clock; no HTTP here (a refusal is a :class:`serving.errors.QueueFull`).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

from serving.errors import QueueFull


@dataclass(eq=False)
class Ticket:
    """One admitted request. The model that serves it sets :meth:`plan` (its size and cost class) once
    it knows them and :meth:`progress` as its parts finish; the gate does the rest."""

    admitted: float
    started: float | None = None  # when it got a processing slot
    size: float | None = None  # work units, e.g. output tile megapixels
    cls: Hashable = None  # cost class, e.g. the diffusion steps
    done: float = 0.0  # fraction finished, 0..1
    shared_s: float = 0.0  # integral of the number of running requests over its service time
    alone: bool = True  # no other request ran at any time during its service
    ok: bool = False  # set by the model when it finished without error
    client: str | None = None  # who sent it (serving.middleware.ClientIdentity)
    ahead: float | None = None  # unloaded seconds in the system ahead of it when admitted
    rate: float | None = None  # the drain rate it was admitted at (None: nothing measured yet)

    def plan(self, size: float, cls: Hashable = None) -> None:
        self.size = max(0.0, float(size))
        self.cls = cls

    def progress(self, fraction: float) -> None:
        self.done = min(1.0, max(self.done, float(fraction)))


class DrainMeter:
    """Measured service cost and drain rate, for admission by expected wait.

    Work is counted in *unloaded seconds*: what a request would take on an idle server. Per cost class,
    seconds per work unit are an EWMA of requests that ran alone (exact) or, until one has, of loaded
    requests divided by the number running beside them (the processor-sharing estimate: on a
    compute-bound server four requests at once each take four times as long). The drain rate is the
    unloaded seconds finished per busy second (about 1 on a saturated CPU, more where the device
    overlaps requests), an EWMA over windows of at least ``window_s`` busy seconds.
    """

    def __init__(
        self,
        *,
        alpha: float = 0.25,
        window_s: float = 1.0,
        max_classes: int = 64,
        calibration_n: int = 20,
        calibration_q: float = 0.9,
    ) -> None:
        self.alpha = alpha
        self.window_s = window_s
        self.max_classes = max_classes
        self._alone: OrderedDict[Hashable, float] = OrderedDict()
        self._shared: OrderedDict[Hashable, float] = OrderedDict()
        self._any: float | None = None  # seconds per unit, any class (fallback for unseen classes)
        self.rate: float | None = None  # unloaded seconds drained per busy second
        self.mean_work: float | None = None  # unloaded seconds of a typical request
        self._window_work = 0.0
        self._window_busy = 0.0
        self._ratios: deque[float] = deque(maxlen=calibration_n)
        self.calibration_q = calibration_q

    def _ewma(self, old: float | None, new: float) -> float:
        return new if old is None else old + self.alpha * (new - old)

    def cost(self, cls: Hashable) -> float | None:
        """Unloaded seconds per work unit of ``cls`` (None: nothing measured yet)."""
        if cls in self._alone:
            return self._alone[cls]
        if cls in self._shared:
            return self._shared[cls]
        return self._any

    def work(self, ticket: Ticket) -> float | None:
        """The ticket's unloaded service time (None: its size or its class's cost is unknown)."""
        if ticket.size is None:
            return None
        cost = self.cost(ticket.cls)
        return None if cost is None else ticket.size * cost

    def record(self, ticket: Ticket, now: float) -> None:
        """A request finished: learn from it (a failed one only adds busy time to the window)."""
        if not ticket.ok or ticket.started is None or not ticket.size:
            return
        elapsed = max(1e-6, now - ticket.started)
        sharing = max(1.0, ticket.shared_s / elapsed)
        per_unit = (elapsed if ticket.alone else elapsed / sharing) / ticket.size
        table = self._alone if ticket.alone else self._shared
        table[ticket.cls] = self._ewma(table.pop(ticket.cls, None), per_unit)
        while len(table) > self.max_classes:
            table.popitem(last=False)
        self._any = self._ewma(self._any, per_unit)
        work = self.work(ticket)
        if work is None:
            return
        self.mean_work = self._ewma(self.mean_work, work)
        self._window_work += work
        # Close a rate window once it spans enough busy time (the finished work includes this one's);
        # the first one at the first finished request, so that admission has a rate to go by.
        if self._window_busy > 0.0 and (self.rate is None or self._window_busy >= self.window_s):
            self.rate = self._ewma(self.rate, self._window_work / self._window_busy)
            self._window_work = 0.0
            self._window_busy = 0.0

    def busy(self, seconds: float) -> None:
        """``seconds`` passed with at least one request running."""
        self._window_busy += seconds

    def calibrate(self, ticket: Ticket, now: float) -> None:
        """A request finished: compare its latency with what the rule predicted when it was admitted."""
        work = self.work(ticket)
        if not ticket.ok or ticket.ahead is None or not ticket.rate or not work:
            return
        predicted = (ticket.ahead + work) / ticket.rate
        self._ratios.append(max(1e-6, now - ticket.admitted) / predicted)

    def calibration(self) -> float:
        """How much longer than predicted admitted requests took: the ``calibration_q`` quantile of the
        last ``calibration_n`` (1 until 5 have finished). It absorbs what the work/rate model misses —
        cores shared with other processes, pipelines that overlap worse than assumed, a rate that lags —
        and, taken at a high quantile, turns the rule's bound on the expected latency into one on the
        tail."""
        if len(self._ratios) < 5:
            return 1.0
        ordered = sorted(self._ratios)
        return ordered[min(len(ordered) - 1, int(self.calibration_q * len(ordered)))]


@dataclass(frozen=True)
class Verdict:
    admit: bool
    expected_s: float | None = None  # calibrated expected latency of a typical request admitted now
    unloaded_s: float | None = None  # its unloaded latency
    retry_after_s: float | None = None
    budget_s: float | None = None  # max_latency_factor x unloaded_s
    in_system: float = 0.0  # unloaded seconds still to do of the admitted requests (queued or running)
    turns_ahead: int = 0  # refused clients whose turn comes before this one's
    rate: float | None = None  # the drain rate it went by
    calibration: float = 1.0
    wait_s: float | None = None  # refused: (expected_s - budget_s) / calibration, before the 1 s floor
    turn_kept: bool = False  # refused again before its turn: told the rest of the same wait

    def figures(self) -> dict[str, float | int | bool | None]:
        """What a refusal says of the rule (the 503 body's ``admission``), so a client can check it."""
        r = 6
        return {
            "expected_s": _round(self.expected_s, r),
            "budget_s": _round(self.budget_s, r),
            "unloaded_s": _round(self.unloaded_s, r),
            "in_system_s": round(self.in_system, r),
            "turns_ahead": self.turns_ahead,
            "drain_rate": _round(self.rate, r),
            "calibration": round(self.calibration, r),
            "wait_s": _round(self.wait_s, r),
            "turn_kept": self.turn_kept,
        }


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


class ConcurrencyGate:
    """At most ``limit`` holders at once and at most ``max_waiting`` callers queued for a slot.

    With a :class:`DrainMeter` (``max_latency_factor`` > 0) admission is also by expected latency. For
    a typical request (its size is not known before its body is read) admitted now::

        expected = calibration x (ahead + typical) / rate   <=   budget = max_latency_factor x typical

    - ``typical``: the unloaded seconds of a typical request (what it takes on an idle server);
    - ``ahead``: the unloaded seconds still to do of every admitted request, in service or queued,
      plus one typical request per refused client whose turn comes before this one;
    - ``rate``: the drain rate, unloaded seconds finished per busy second, measured at the concurrency
      the server actually runs at (requests slowing each other down on shared cores read as a lower
      rate, not as capacity);
    - ``calibration``: how much longer than predicted recent admitted requests took, at a high
      quantile (:meth:`DrainMeter.calibration`), so the bound holds for the tail, not only the mean.

    A refusal is :class:`QueueFull` (503) with ``Retry-After`` from the same estimate: the time for
    the excess to drain, ``(expected - budget) / calibration`` seconds (at least 1 s). It gives the
    client a *turn* at that time: until it comes back (or ``turn_grace_s`` after), every other request
    counts it ahead of itself, so refused clients are not overtaken by those sending again straight
    after an answer; a client back before its turn is told the rest of the same wait (not a later
    one), and one back on time that still finds no room keeps its place before later turns. Clients
    are who :class:`serving.middleware.ClientIdentity` vouches for. Without measurements yet only the
    queue length bounds admission; with nothing admitted a request always is (the server never idles
    while someone asks).
    """

    def __init__(
        self,
        limit: int,
        max_waiting: int,
        *,
        retry_after_s: float = 1.0,
        what: str = "requests",
        meter: DrainMeter | None = None,
        max_latency_factor: float = 0.0,
        max_retry_after_s: float = 60.0,
        turn_grace_s: float = 10.0,
        max_turns: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ):
        if limit < 1:
            raise ValueError(f"concurrency limit must be >= 1, got {limit}")
        self.limit = limit
        self.max_waiting = max(0, max_waiting)
        self.retry_after_s = retry_after_s
        self.what = what
        self.meter = meter
        self.max_latency_factor = max_latency_factor
        self.max_retry_after_s = max_retry_after_s
        self.turn_grace_s = turn_grace_s
        self.max_turns = max_turns
        self._clock = clock
        self._semaphore = asyncio.Semaphore(limit)
        self.waiting = 0
        self.active = 0
        self._tickets: list[Ticket] = []  # admitted: waiting for a slot or running
        self._last = clock()
        self._turns: dict[str, float] = {}  # refused client -> when it was told to come back
        self._anonymous = 0
        self.refused = 0

    # -- accounting (event-driven: called at every admission, start and finish)

    def _advance(self, now: float) -> None:
        dt = max(0.0, now - self._last)
        self._last = now
        running = [t for t in self._tickets if t.started is not None]
        if not running or dt == 0.0:
            return
        n = len(running)
        for t in running:
            t.shared_s += n * dt
            if n > 1:
                t.alone = False
        if self.meter is not None:
            self.meter.busy(dt)

    def _remaining(self, ticket: Ticket, typical: float) -> float:
        """Unloaded seconds still to do: its work less the parts that came back. Not less by the time
        it has run: requests admitted later share the device with it (processor sharing), so counting
        the work in the system, not a FIFO queue's remaining time, is what bounds everyone's latency."""
        assert self.meter is not None
        work = self.meter.work(ticket)
        if work is None:
            return typical
        return work * (1.0 - ticket.done)

    def verdict(self, client: str | None = None) -> Verdict:
        """Would a typical request from ``client`` be admitted now, and if not, when to come back (a
        refusal gives ``client`` its turn then)."""
        now = self._clock()
        self._advance(now)
        meter = self.meter
        if meter is None or self.max_latency_factor <= 0:
            return Verdict(True)
        typical, rate = meter.mean_work, meter.rate
        if typical is None or rate is None or typical <= 0 or rate <= 0:
            return Verdict(True)
        self._turns = {c: t for c, t in self._turns.items() if t + self.turn_grace_s >= now}
        held = self._turns.get(client) if client is not None else None
        turns = sum(1 for c, t in self._turns.items() if c != client and (held is None or t <= held))
        in_system = sum(self._remaining(t, typical) for t in self._tickets)
        k = meter.calibration()
        expected = k * (in_system + turns * typical + typical) / rate
        budget = self.max_latency_factor * typical
        admit = Verdict(
            True,
            expected_s=expected,
            unloaded_s=typical,
            budget_s=budget,
            in_system=in_system,
            turns_ahead=turns,
            rate=rate,
            calibration=k,
        )
        if not self._tickets or expected <= budget:
            return admit
        wait = (expected - budget) / k  # the excess, drained at the measured rate
        kept = held is not None and held > now
        retry = held - now if kept and held is not None else wait
        retry = min(self.max_retry_after_s, max(1.0, retry))
        if client is None:  # no identity: each refusal a turn of its own
            self._anonymous += 1
            client = f"#{self._anonymous}"
        if not kept and len(self._turns) < self.max_turns:  # bounded, whatever the flood
            self._turns[client] = now + retry
        return replace(admit, admit=False, retry_after_s=retry, wait_s=wait, turn_kept=kept)

    @asynccontextmanager
    async def slot(self, client: str | None = None) -> AsyncIterator[Ticket]:
        """Admit (or raise :class:`QueueFull`), wait for a slot, and hold it: the :class:`Ticket`."""
        if self._semaphore.locked() and self.waiting >= self.max_waiting:
            self.refused += 1
            verdict = self.verdict(client)
            raise QueueFull(
                f"server busy: {self.active} {self.what} running and {self.waiting} waiting (limit "
                f"{self.max_waiting}); retry after the Retry-After delay",
                retry_after=verdict.retry_after_s or self._drain_wait(),
            )
        verdict = self.verdict(client)
        if not verdict.admit:
            self.refused += 1
            raise QueueFull(
                f"server busy: a request admitted now would take about {verdict.expected_s:.1f} s, over "
                f"{self.max_latency_factor:g}x its unloaded {verdict.unloaded_s:.1f} s ({self.active} "
                f"{self.what} running, {self.waiting} waiting, {verdict.turns_ahead} refused clients "
                "due back before you); retry after the Retry-After delay",
                retry_after=verdict.retry_after_s or self._drain_wait(),
                admission=verdict.figures(),
            )
        if client is not None:
            self._turns.pop(client, None)  # its turn, used
        ticket = Ticket(admitted=self._last, client=client, ahead=verdict.in_system, rate=verdict.rate)
        self._tickets.append(ticket)
        self.waiting += 1
        try:
            await self._semaphore.acquire()
        except BaseException:
            self._tickets.remove(ticket)
            raise
        finally:
            self.waiting -= 1
        now = self._clock()
        self._advance(now)
        ticket.started = now
        self.active += 1
        try:
            yield ticket
        finally:
            now = self._clock()
            self._advance(now)
            self.active -= 1
            self._tickets.remove(ticket)
            if self.meter is not None:
                self.meter.calibrate(ticket, now)  # against the cost known before it finished
                self.meter.record(ticket, now)
            self._semaphore.release()

    def snapshot(self) -> dict[str, float | int | None]:
        """The figures admission goes by (for /health)."""
        meter = self.meter
        return {
            "max_latency_factor": self.max_latency_factor,
            "drain_rate": None if meter is None or meter.rate is None else round(meter.rate, 4),
            "typical_unloaded_s": None
            if meter is None or meter.mean_work is None
            else round(meter.mean_work, 4),
            "calibration": None if meter is None else round(meter.calibration(), 4),
            "turns_pending": len(self._turns),
            "refused": self.refused,
        }

    def _drain_wait(self) -> float:
        """Seconds until one slot frees, at the measured drain rate (the fixed delay before any)."""
        meter = self.meter
        if meter is None or not meter.mean_work or not meter.rate:
            return self.retry_after_s
        return min(self.max_retry_after_s, max(1.0, meter.mean_work / meter.rate))
