"""Client-side rate limiting for external APIs with per-second request limits.

:class:`RateLimiter` lets at most ``limit`` requests start in any window of ``period`` seconds
(a sliding-window log, plus a safety ``margin``) and, when ``smooth`` (the default), spaces
starts at least ``period / limit`` apart. A plain token bucket with capacity *N* and refill
*N*/s admits up to 2*N* requests in some one-second windows (a full bucket plus a second's
refill), which a server counting per window answers with 429; the sliding log never does.
Spacing matters as much: a burst of *N* requests reaches the server spread out by queueing on
the way, and the next burst, sent exactly one window later, arrives on its heels, so the server
sees more than *N* within a second; evenly spaced requests keep their distance.
:meth:`RateLimiter.pause` holds every caller back after the server said 429 (``Retry-After``),
so concurrent tasks sharing one limiter back off together. This module must not do IO besides
sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable


class RateLimiter:
    def __init__(
        self,
        limit: int,
        period: float = 1.0,
        *,
        margin: float = 0.05,
        smooth: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if limit < 1 or period <= 0 or margin < 0:
            raise ValueError("limit must be >= 1, period > 0 and margin >= 0")
        self.limit = limit
        self.window = period + margin
        self.spacing = self.window / limit if smooth else 0.0
        self.clock = clock
        self.sleep = sleep
        self._starts: deque[float] = deque()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    @classmethod
    def per_second(cls, rate: float, *, margin: float = 0.05, smooth: bool = True) -> RateLimiter:
        """``rate`` requests per second; fractional rates become 1 per 1/rate seconds."""
        if rate >= 1:
            return cls(int(rate), 1.0, margin=margin, smooth=smooth)
        return cls(1, 1.0 / rate, margin=margin, smooth=smooth)

    def pause(self, seconds: float) -> None:
        """No request starts for ``seconds`` from now (the server asked us to wait)."""
        self._paused_until = max(self._paused_until, self.clock() + seconds)

    def _delay(self, now: float) -> float:
        if now < self._paused_until:
            return self._paused_until - now
        # (a nanosecond of tolerance: float sums must not leave a zero-length wait forever)
        while self._starts and self._starts[0] + self.window <= now + 1e-9:
            self._starts.popleft()
        delay = 0.0
        if len(self._starts) >= self.limit:
            delay = self._starts[0] + self.window - now
        if self._starts and self.spacing:
            delay = max(delay, self._starts[-1] + self.spacing - now)
        return delay if delay > 1e-9 else 0.0

    async def acquire(self) -> float:
        """Wait for a free slot; returns how long the caller waited (seconds)."""
        waited = 0.0
        async with self._lock:  # FIFO: callers get slots in arrival order
            while True:
                now = self.clock()
                delay = self._delay(now)
                if delay == 0.0:
                    self._starts.append(now)
                    return waited
                delay = max(delay, 0.001)
                await self.sleep(delay)
                waited += delay
