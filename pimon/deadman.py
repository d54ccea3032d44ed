"""Dead-man's switch: request a URL on schedule while the monitor is healthy and reaches a node.

An outside service (healthchecks.io, an Uptime Kuma push monitor) expects the
request every interval and raises the alarm when it stops: when the monitor,
its machine or its network dies, or when the monitor can reach no node at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

log = logging.getLogger("pimon.deadman")

# Beyond this the monitor's own loop is too stalled to vouch for anything.
LAG_BOUND_S = 1.0
TIMEOUT_S = 10.0


def health(alive: int, lag: float, bound: float = LAG_BOUND_S) -> str | None:
    """Return why the monitor may not vouch for the cluster now, or None when it may."""
    if lag >= bound:
        return f"event loop lag {lag:.1f}s"
    if alive == 0:
        return "no node reachable"
    return None


def due(now: float, last: float | None, interval: float) -> bool:
    """Return whether a ping is due at ``now``."""
    return last is None or now - last >= interval


@dataclass(slots=True)
class DeadManStats:
    """What the switch did, for /v1/alerts and /metrics."""

    sent: int = 0
    failed: int = 0
    last_error: str | None = None
    last_success_at: float | None = None
    holding: str | None = None  # why pings are held back right now


class DeadMan:
    """Request ``url`` every ``interval`` seconds while ``alive()`` > 0 and the loop is healthy."""

    def __init__(
        self,
        url: str,
        interval: float,
        *,
        alive: Callable[[], int],
        lag: Callable[[], float],
        session: aiohttp.ClientSession,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.interval = interval
        self.alive = alive
        self.lag = lag
        self.session = session
        self.clock = clock
        self.stats = DeadManStats()
        self.last: float | None = None

    async def run(self) -> None:
        """Check often, ping when due and healthy, until cancelled."""
        loop = asyncio.get_running_loop()
        step = min(1.0, self.interval / 4)  # check often so pings resume promptly
        while True:
            expected = loop.time() + step
            await asyncio.sleep(step)
            own_lag = max(0.0, loop.time() - expected)
            now = self.clock()
            why = health(self.alive(), max(own_lag, self.lag()))
            if why != self.stats.holding:
                if why:
                    log.warning("dead-man's switch held: %s", why)
                else:
                    log.info("dead-man's switch resumed")
                self.stats.holding = why
            if why is None and due(now, self.last, self.interval):
                self.last = now
                await self.ping()

    async def ping(self) -> None:
        """Request the URL once and record the outcome."""
        timeout = aiohttp.ClientTimeout(total=min(TIMEOUT_S, max(self.interval, 1.0)))
        try:
            async with self.session.get(self.url, timeout=timeout) as resp:
                await resp.read()
                if resp.status >= 300:
                    raise aiohttp.ClientResponseError(
                        resp.request_info, (), status=resp.status, message=resp.reason or ""
                    )
        except (aiohttp.ClientError, TimeoutError) as e:
            self.stats.failed += 1
            self.stats.last_error = (
                f"HTTP {e.status}"
                if isinstance(e, aiohttp.ClientResponseError)
                else f"{type(e).__name__}: {e}"
            )
            log.warning("dead-man's switch request failed: %s", self.stats.last_error)
            return
        self.stats.sent += 1
        self.stats.last_success_at = self.clock()
