"""A rate governor for API calls: requests per minute and tokens per minute, shared by every
concurrent worker of one judge, adapting downward on 429s.

    ticket = await governor.acquire(tokens)   # before each HTTP attempt (retries too)
    try: ... send ... finally: governor.release(ticket)

Guarantee: in any window of one period (60 s) of the server's clock, the requests it receives
from this governor number at most `rpm` and their token estimates sum to at most `tpm` (less after
429s, below). Each limit keeps a sliding-window log of admitted calls, not a token bucket: a full
bucket holding a minute's allowance lets it all through at t=0 and refills another minute's worth
by t=60 s, up to twice the limit within one 60 s window. A call leaves the log one period after
its reply arrived, not one period after it was admitted: the server received it at some moment
between the two, and only the reply time bounds that moment whatever the network and event-loop
delays (a first request opening a connection can reach the server 100 ms after admission). A call
still in flight is assumed received within `SEND_BOUND` (a tenth of the period: 6 s) of its
admission, its only assumption, so a very slow call holds its slot at most that long. The price
is each call's latency on top of the period: rpm=600 with 1 s replies admits 590 a minute.

On top of the log, a pacer (GCRA) spreads calls evenly at the limit's rate, bursts at most
`burst` x the period's allowance, because providers often enforce a minute's limit over shorter
slices (e.g. per second).

One call costing more tokens than `tpm` would never fit: it is admitted alone, once the window
holds nothing else, rather than deadlocking (the server may still refuse it).

Adaptation (AIMD): a 429 multiplies the effective rate by `CUT` (floor `FLOOR` of the configured
rate); it then recovers linearly, `RECOVER` of the configured rate per period, never above the
configured rate. A 429 for a call admitted before the last cut is ignored: it was sent at the old
rate, and 64 workers hit by one burst must cut the rate once, not 64 times.

With neither limit set, `acquire` and `release` return at once: no lock, no wait, no record.

`RLAIF_RATE_PERIOD_S` (test-only) shortens the period so tests and benchmarks run in seconds.
"""
from __future__ import annotations

import asyncio
import math
import os
import time
from collections import deque

CUT, FLOOR, RECOVER, SEND_BOUND = 0.7, 0.1, 0.05, 0.1


class _Limit:
    """One limit over a sliding window: a log of [admitted at, cost, leaves window at], plus a pacer."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.log: deque[list] = deque()  # in admission order
        self.used = 0  # sum of the log's costs
        self.tat = -math.inf  # the pacer's theoretical arrival time

    def ready_at(self, cost: int, now: float, limit: float, burst_s: float) -> float:
        # Entries leave in admission order: one that leaves before an older one still in the log
        # keeps counting a little longer, which errs on the safe side.
        while self.log and self.log[0][2] <= now:
            self.used -= self.log.popleft()[1]
        t, need = now, self.used + cost - limit  # cost that must leave the window first
        if need > 0:  # an empty log admits at once, even a call bigger than the limit (then alone)
            freed = 0
            for _, c, leaves in self.log:  # no break: a call bigger than the limit waits for all
                freed += c
                t = max(t, leaves)
                if freed >= need:
                    break
        return max(t, self.tat - burst_s)

    def admit(self, cost: int, now: float, limit: float, period: float) -> list:
        entry = [now, cost, now + (1 + SEND_BOUND) * period]  # in flight: until release()
        self.log.append(entry)
        self.used += cost
        self.tat = max(self.tat, now) + cost * period / limit
        return entry


class Ticket:
    __slots__ = ("admitted", "entries")

    def __init__(self, admitted: float, entries: list) -> None:
        self.admitted, self.entries = admitted, entries


_FREE = Ticket(-math.inf, [])


class RateGovernor:
    def __init__(self, rpm: int | None = None, tpm: int | None = None, period_s: float = 60.0,
                 burst: float = 0.05) -> None:
        self.rpm, self.tpm, self.period, self.burst = rpm, tpm, period_s, burst
        self._limits = [(_Limit(n), kind) for n, kind in ((rpm, "requests"), (tpm, "tokens")) if n]
        self._base, self._cut_at = 1.0, -math.inf  # factor right after the last cut, and when
        self._loop = self._mutex = self._released = None
        # waited_s: seconds calls spent held at the head of the queue, i.e. how long the governor throttled
        self.admitted, self.waited_s, self.cuts, self.min_factor = 0, 0.0, 0, 1.0

    @classmethod
    def from_config(cls, cfg) -> "RateGovernor":
        return cls(cfg.rpm, cfg.tpm, float(os.environ.get("RLAIF_RATE_PERIOD_S") or 60.0))

    @property
    def active(self) -> bool:
        return bool(self._limits)

    def factor(self, now: float | None = None) -> float:
        """The share of the configured rates in force now."""
        if self._base >= 1.0:
            return 1.0
        now = time.monotonic() if now is None else now
        return min(1.0, self._base + RECOVER * (now - self._cut_at) / self.period)

    async def acquire(self, tokens: int = 0) -> Ticket:
        """Wait until one call of `tokens` fits both limits and record it; `release` the ticket
        when the attempt is over, whatever its outcome."""
        if not self._limits:
            return _FREE
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # per event loop: the judge runs one loop per stage step
            self._loop, self._mutex, self._released = loop, asyncio.Lock(), asyncio.Event()
        async with self._mutex:  # FIFO: the head waits for its slot, the others queue behind it
            start = time.monotonic()
            while True:  # re-check after each wake: a reply may free a slot, a 429 cut the rate
                now = time.monotonic()
                f = self.factor(now)
                costs = [(lim, 1 if kind == "requests" else tokens, lim.limit * f) for lim, kind in self._limits]
                t = max(lim.ready_at(c, now, eff, self.burst * self.period) for lim, c, eff in costs)
                if t <= now:
                    break
                self._released.clear()
                try:
                    await asyncio.wait_for(self._released.wait(), t - now)
                except asyncio.TimeoutError:
                    pass
            entries = [lim.admit(c, now, eff, self.period) for lim, c, eff in costs]
            self.admitted += 1
            self.waited_s += now - start
            return Ticket(now, entries)

    def release(self, ticket: Ticket) -> None:
        """The attempt is over (reply, error or cancellation): the server had it by now, so it
        leaves the window one period from now, unless its in-flight bound is sooner."""
        if not ticket.entries:
            return
        leaves = time.monotonic() + self.period
        for e in ticket.entries:
            e[2] = min(e[2], leaves)
        ticket.entries = []
        if self._released is not None:
            self._released.set()

    def on_429(self, ticket: Ticket | None = None) -> None:
        """A rate-limit reply (not insufficient_quota) to the call of `ticket`."""
        if not self._limits or (ticket is not None and ticket.admitted < self._cut_at):
            return
        now = time.monotonic()
        self._base = max(FLOOR, self.factor(now) * CUT)
        self._cut_at = now
        self.cuts += 1
        self.min_factor = min(self.min_factor, self._base)

    def stats(self) -> dict:
        f = self.min_factor
        return {"rpm": self.rpm, "tpm": self.tpm, "period_s": self.period, "calls_admitted": self.admitted,
                "waited_s": round(self.waited_s, 3), "cuts_on_429": self.cuts, "factor_min": round(f, 4),
                "factor_now": round(self.factor(), 4),
                "rpm_effective_min": None if self.rpm is None else round(self.rpm * f, 2),
                "tpm_effective_min": None if self.tpm is None else round(self.tpm * f, 2)}
