"""Uptime cache: each node's uptime per window, refreshed from the store in slices off the loop."""

from __future__ import annotations

import asyncio
import math
import time

from pimon.membership import Membership
from pimon.store import Store

UPTIME_WINDOWS = ("1h", "24h", "7d", "30d")
UPTIME_REFRESH_S = 60.0
UPTIME_DIRTY_S = 2.0


class UptimeCache:
    """Hold every node's uptime per window; nodes whose state changed are refreshed first."""

    def __init__(self, membership: Membership) -> None:
        self.membership = membership
        self.uptimes: dict[str, dict[str, float | None]] = {}
        self.stale: set[str] = set()

    def mark_stale(self, name: str) -> None:
        """Refresh a node's uptime on the next pass."""
        self.stale.add(name)

    def fields(self, name: str) -> dict[str, float | None]:
        """Return a node's uptime per window under its API view keys."""
        uptime = self.uptimes.get(name, {})
        return {f"uptime_{window}": uptime.get(window) for window in UPTIME_WINDOWS}

    async def run(self, store: Store) -> None:
        """Refresh uptimes forever, every node within UPTIME_REFRESH_S."""
        cursor = 0
        while True:
            # Off the event loop (uptime reads a month of transitions per node), and a
            # slice at a time: one big sweep over 10,000 nodes in a thread would hold
            # the GIL long enough to stall the loop. Changed nodes go first.
            names = sorted(self.membership.nodes)
            share = max(1, math.ceil(len(names) * UPTIME_DIRTY_S / UPTIME_REFRESH_S))
            batch = set(names[cursor : cursor + share]) | {
                n for n in self.stale if n in self.membership.nodes
            }
            cursor = cursor + share if cursor + share < len(names) else 0
            if self.stale:
                self.stale.clear()
                # The writer commits at most every 2 s: wait for it so the change counts.
                await asyncio.to_thread(store.flush)
            if batch:
                fresh = await asyncio.to_thread(compute_uptimes, store, sorted(batch), time.time())
                self.uptimes.update(fresh)
            await asyncio.sleep(UPTIME_DIRTY_S)


def compute_uptimes(
    store: Store, names: list[str], now: float
) -> dict[str, dict[str, float | None]]:
    """Read each node's uptime per window from the store (blocking: run it in a thread)."""
    return {name: store.uptime(name, now) for name in names}
