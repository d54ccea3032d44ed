"""Run alerting beside the monitor: the engine on its transitions, the outbox, the couriers.

The service feeds the monitor's transitions to the alert engine on its own task,
so alerting never delays detection; it queues the engine's alerts in the outbox
for every notifier that wants them, with the alerts then in force, and restores
those at start so that a restart neither repeats nor forgets what was reported.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sqlite3
import time
from collections.abc import Coroutine
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import aiohttp

from pimon.alertformat import Alert, with_monitor
from pimon.alerts import AlertEngine, EngineConfig
from pimon.courier import Courier
from pimon.deadman import DeadMan
from pimon.exposition import Family
from pimon.membership import ALIVE, Transition
from pimon.notifiers import build
from pimon.outbox import Outbox
from pimon.store import default_db_path

if TYPE_CHECKING:
    from pimon.monitor import Monitor

log = logging.getLogger("pimon.alerts")


class AlertService:
    """Run the engine on the monitor's transitions and hand its alerts to the couriers."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self.config = monitor.config.alerts
        self.engine = AlertEngine(
            EngineConfig.from_detector(
                monitor.membership.config,
                alert_after=self.config.alert_after,
                flap_count=self.config.flap_count,
                flap_window=self.config.flap_window,
            )
        )
        self.host = socket.gethostname()
        self.couriers: list[Courier] = []
        self.deadman: DeadMan | None = None
        self._outbox: Outbox | None = None
        self._session: aiohttp.ClientSession | None = None
        self._queue: asyncio.Queue[Transition] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._saved: dict[str, str] = {}  # node -> id of the alert in force, as in the outbox
        self._save_failed = False

    async def start(self) -> None:
        """Open the outbox and start the engine, the couriers and the dead-man's switch."""
        config = self.config
        if not config.notifiers and not config.deadman_url:
            return
        self._session = aiohttp.ClientSession()
        if config.deadman_url:
            self.deadman = DeadMan(
                config.deadman_url,
                config.deadman_interval,
                alive=self._alive_count,
                lag=lambda: self.monitor.stats.loop_lag_s,
                session=self._session,
            )
            self._spawn(self.deadman.run(), "deadman")
        if not config.notifiers:
            return
        notifiers = build(config.notifiers, self._session)
        self._queue = self.monitor.events.subscribe()  # first: keep what changes meanwhile
        self._outbox, pending = await self._open_outbox([n.name for n in notifiers])
        for n in notifiers:
            courier = Courier(n, self._outbox, self._firing)
            courier.stats.pending = pending.get(n.name, 0)
            self.couriers.append(courier)
            self._spawn(courier.run(), f"courier {n.name}")
        await self._restore()
        self._spawn(self._run(self._queue), "alerts")

    async def _restore(self) -> None:
        assert self._outbox is not None
        try:
            firing = await self._outbox.firing()
        except sqlite3.Error as e:
            log.error("alerts in force before the restart unreadable: %s", e)
            firing = {}
        self._saved = {node: a.id for node, a in firing.items()}
        if firing:
            log.info("alerts in force before the restart: %d", len(firing))
        now = time.time()
        roster = {k: n.state for k, n in self.monitor.membership.nodes.items()}
        # Nodes deregistered meanwhile drop out here, and out of the table with this dispatch.
        await self.dispatch(self.engine.restore(firing, roster, now), now)

    async def _open_outbox(self, names: list[str]) -> tuple[Outbox, dict[str, int]]:
        outbox = Outbox(self.monitor.config.db or default_db_path())
        try:
            return outbox, await outbox.open(names, time.time())
        except (OSError, sqlite3.Error) as e:
            # Alerts still go out; they just do not survive a restart.
            log.error("alert outbox in %s unusable (%s); queueing in memory", outbox.path, e)
            await outbox.close()
            outbox = Outbox(":memory:")
            return outbox, await outbox.open(names, time.time())

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    async def stop(self) -> None:
        """Stop every task; what is still queued stays in the outbox for the next start."""
        if self._queue is not None:
            self.monitor.events.unsubscribe(self._queue)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._outbox is not None:
            await self._outbox.close()
        if self._session is not None:
            await self._session.close()

    def _alive_count(self) -> int:
        return sum(1 for n in self.monitor.membership.nodes.values() if n.state in ALIVE)

    def _firing(self) -> list[Alert]:
        return with_monitor(self.engine.firing(), self.host)

    async def _run(self, queue: asyncio.Queue[Transition]) -> None:
        loop = asyncio.get_running_loop()
        period = min(0.5, max(0.1, self.monitor.config.interval / 2))
        next_tick = loop.time()
        while True:
            batch: list[Transition] = []
            try:
                async with asyncio.timeout(max(0.0, next_tick - loop.time())):
                    batch.append(await queue.get())
            except TimeoutError:
                pass
            while not queue.empty():
                batch.append(queue.get_nowait())
            try:
                await self._step(batch, tick=loop.time() >= next_tick)
            except Exception:  # a bug must not end alerting for the monitor's lifetime
                log.exception("alert engine failed; going on")
            if loop.time() >= next_tick:
                next_tick = loop.time() + period

    async def _step(self, batch: list[Transition], *, tick: bool) -> None:
        now = time.time()
        alerts = [a for t in batch for a in self.engine.on_transition(t, now)]
        if tick:
            nodes = self.monitor.membership.nodes
            alerts += self.engine.sync({k: n.state for k, n in nodes.items()}, now)
            alerts += self.engine.tick(now)
        await self.dispatch(alerts, now)

    async def dispatch(self, alerts: list[Alert], now: float) -> None:
        """Queue each alert for every notifier that wants it; save the alerts now in force."""
        assert self._outbox is not None
        stamped = with_monitor(alerts, self.host)
        for a in stamped:
            log.info("alert %s: %s", a.event, a.text)
        rows = [(c.notifier.name, a) for a in stamped for c in self.couriers if c.notifier.wants(a)]
        firing = self.engine.firing_by_node()
        changed = {k: a for k, a in firing.items() if self._saved.get(k) != a.id}
        resolved = [k for k in self._saved if k not in firing]
        if not rows and not changed and not resolved:
            return
        counts = {
            c.notifier.name: sum(1 for n, _ in rows if n == c.notifier.name) for c in self.couriers
        }
        for c in self.couriers:  # counted before the write, as a courier may send at once
            c.stats.pending += counts[c.notifier.name]
        try:
            await self._outbox.add(
                rows, now, self.config.deadline, firing=changed, resolved=resolved
            )
        except sqlite3.Error as e:
            # The alerts in force are tried again with the next step; say so only once.
            if rows or not self._save_failed:
                log.error("alert outbox write failed, %d notifications lost: %s", len(rows), e)
            self._save_failed = True
            for c in self.couriers:
                c.stats.pending -= counts[c.notifier.name]
            return
        self._saved, self._save_failed = {k: a.id for k, a in firing.items()}, False
        for c in self.couriers:
            c.wake.set()

    def snapshot(self) -> dict[str, Any]:
        """Return the body of GET /v1/alerts."""
        notifiers = [
            {"name": c.notifier.name, "kind": c.notifier.kind, **asdict(c.stats)}
            for c in self.couriers
        ]
        deadman = None
        if self.deadman is not None:
            deadman = {"interval": self.deadman.interval, **asdict(self.deadman.stats)}
        return {
            "notifiers": notifiers,
            "deadman": deadman,
            "isolated": self.engine.isolating,
            "flapping": sorted(n for n, t in self.engine.nodes.items() if t.flapping),
        }

    def families(self) -> list[Family]:
        """Return the alerting metric families for /metrics."""
        rows = (
            ("pimon_alerts_sent_total", "counter", "Alert notifications delivered.", "sent"),
            ("pimon_alerts_failed_total", "counter", "Failed alert delivery attempts.", "failed"),
            (
                "pimon_alerts_expired_total",
                "counter",
                "Alerts given up at their deadline.",
                "expired",
            ),
            ("pimon_alerts_pending", "gauge", "Alerts waiting in the outbox.", "pending"),
        )
        out = []
        for name, kind, help_text, key in rows:
            family = Family(name, kind, help_text)
            for c in self.couriers:
                family.add(getattr(c.stats, key), notifier=c.notifier.name, kind=c.notifier.kind)
            out.append(family)
        isolated = Family(
            "pimon_monitor_isolated", "gauge", "1 while the monitor has lost most nodes."
        )
        isolated.add(1.0 if self.engine.isolating else 0.0)
        out.append(isolated)
        if self.deadman is not None:
            for name, help_text, value in (
                (
                    "pimon_deadman_pings_total",
                    "Dead-man's switch requests answered.",
                    self.deadman.stats.sent,
                ),
                (
                    "pimon_deadman_failures_total",
                    "Dead-man's switch requests failed.",
                    self.deadman.stats.failed,
                ),
            ):
                family = Family(name, "counter", help_text)
                family.add(value)
                out.append(family)
        return out

    def totals(self) -> tuple[int, int]:
        """Return (sent, failed) over all notifiers."""
        return sum(c.stats.sent for c in self.couriers), sum(c.stats.failed for c in self.couriers)
