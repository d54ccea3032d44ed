"""Deliver one notifier's queue from the outbox: in order, with backoff, until the deadline.

Each notifier has its own courier task, so a notifier that hangs or fails holds
up only its own queue, which it sends in order with exponential backoff until
the alert's deadline passes.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from pimon.alertformat import Alert
from pimon.notifiers import DeliveryError, Notifier
from pimon.outbox import Entry, Outbox

log = logging.getLogger("pimon.alerts")

MAX_BACKOFF_S = 300.0
IDLE_WAIT_S = 30.0
DB_RETRY_S = 5.0


def backoff(attempts: int) -> float:
    """Return the seconds to wait after ``attempts`` failures in a row: 1, 2, 4 ... 300."""
    return min(MAX_BACKOFF_S, 2.0 ** (attempts - 1))


@dataclass(slots=True)
class NotifierStats:
    """Delivery figures of one notifier, for /v1/alerts and /metrics."""

    sent: int = 0
    failed: int = 0  # failed attempts, each retried until the deadline
    expired: int = 0  # alerts given up on
    pending: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    last_success_at: float | None = None


class Courier:
    """Deliver one notifier's queue in order, retrying with backoff; re-send what is firing."""

    def __init__(
        self,
        notifier: Notifier,
        outbox: Outbox,
        firing: Callable[[], list[Alert]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.notifier = notifier
        self.outbox = outbox
        self.firing = firing
        self.clock = clock
        self.stats = NotifierStats()
        self.wake = asyncio.Event()
        self._refresh_at = clock() + (notifier.refresh_interval or 0.0)

    async def run(self) -> None:
        """Send until cancelled."""
        while True:
            self.wake.clear()  # before looking, so an add while we look is not missed
            try:
                wait = await self._step()
            except sqlite3.Error as e:
                log.error("alert outbox for %s failed: %s; retrying", self.notifier.name, e)
                wait = DB_RETRY_S
            if wait > 0:
                try:
                    async with asyncio.timeout(wait):
                        await self.wake.wait()
                except TimeoutError:
                    pass

    async def _step(self) -> float:
        """Do one unit of work; return how long to wait for the next."""
        now = self.clock()
        wait = IDLE_WAIT_S
        interval = self.notifier.refresh_interval
        if interval is not None:
            if now >= self._refresh_at:
                self._refresh_at = now + interval
                await self._refresh(now)
            wait = min(wait, self._refresh_at - now)
        entry = await self.outbox.head(self.notifier.name)
        if entry is None:
            return wait
        if entry.next_at > now:
            return min(wait, entry.next_at - now)
        await self.deliver(entry)
        return 0.0

    async def deliver(self, entry: Entry) -> None:
        """Try one entry once and record the outcome."""
        name, stats = self.notifier.name, self.stats
        try:
            await self.notifier.send(entry.alert)
        except Exception as e:
            if not isinstance(e, DeliveryError):  # a bug, but one notifier must not stop
                log.exception("notifier %s failed unexpectedly", name)
            now = self.clock()
            stats.failed += 1
            stats.last_error, stats.last_error_at = str(e), now
            next_at = now + backoff(entry.attempts + 1)
            if next_at > entry.deadline:
                log.error("alert %s to %s given up: %s", entry.alert.event, name, e)
                stats.expired += 1
                stats.pending -= 1
                await self.outbox.finish(entry.id, "expired", now, str(e))
            else:
                log.warning("alert %s to %s failed (will retry): %s", entry.alert.event, name, e)
                await self.outbox.retry(entry.id, next_at, str(e))
            return
        now = self.clock()
        await self.outbox.finish(entry.id, "delivered", now, None)
        # Counted once it is on disk: a reader of /v1/alerts sees "sent" only when a
        # restart would no longer send it again.
        stats.sent += 1
        stats.pending -= 1
        stats.last_success_at = now

    async def _refresh(self, now: float) -> None:
        try:
            await self.notifier.refresh(self.firing(), now)
        except Exception as e:
            if not isinstance(e, DeliveryError):
                log.exception("notifier %s failed unexpectedly", self.notifier.name)
            self.stats.failed += 1
            self.stats.last_error, self.stats.last_error_at = f"re-send: {e}", now
