"""Deliver alerts durably: the service that runs the engine, an SQLite outbox, couriers.

The service feeds the monitor's transitions to the alert engine on its own
task, so alerting never delays detection. Every alert is written to the
``alert_outbox`` table (one row per notifier) before anything is sent, and
marked delivered once its notifier accepted it, so a restart neither loses
queued alerts nor re-sends delivered ones. All
SQLite work runs on one dedicated thread; the event loop only awaits it.
Each notifier has its own courier task: a notifier that hangs or fails holds
up only its own queue, which it sends in order with exponential backoff until
the alert's deadline passes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp

from pimon.alerts import Alert, AlertEngine, EngineConfig, with_monitor
from pimon.deadman import DeadMan
from pimon.exposition import Family
from pimon.membership import ALIVE, Transition
from pimon.notifiers import DeliveryError, Notifier, build
from pimon.store import default_db_path

if TYPE_CHECKING:
    from pimon.monitor import Monitor

log = logging.getLogger("pimon.alerts")

T = TypeVar("T")
MAX_BACKOFF_S = 300.0
IDLE_WAIT_S = 30.0
DB_RETRY_S = 5.0
KEEP_FINISHED_S = 7 * 86400.0

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS alert_outbox (id INTEGER PRIMARY KEY, notifier TEXT NOT NULL,"
    " payload TEXT NOT NULL, created REAL NOT NULL, deadline REAL NOT NULL,"
    " attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL,"
    " status TEXT NOT NULL DEFAULT 'pending', finished_at REAL, last_error TEXT)",
    "CREATE INDEX IF NOT EXISTS alert_outbox_pending ON alert_outbox (notifier, status, id)",
)


def backoff(attempts: int) -> float:
    """Return the seconds to wait after ``attempts`` failures in a row: 1, 2, 4 ... 300."""
    return min(MAX_BACKOFF_S, 2.0 ** (attempts - 1))


@dataclass(frozen=True, slots=True)
class Entry:
    """One queued alert for one notifier."""

    id: int
    notifier: str
    alert: Alert
    deadline: float
    attempts: int
    next_at: float


class Outbox:
    """The ``alert_outbox`` table, used from the event loop through one worker thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="pimon-outbox")
        self._conn: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self, notifiers: Sequence[str], now: float) -> dict[str, int]:
        """Open the table, drop rows of notifiers no longer configured; return pending counts."""
        return await self._run(self._open, list(notifiers), now)

    def _open(self, notifiers: list[str], now: float) -> dict[str, int]:
        if self.path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None)
        self._conn = conn
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA journal_mode = WAL")  # the store does the same; both must agree
        for statement in SCHEMA:
            conn.execute(statement)
        marks = ",".join("?" * len(notifiers))
        with conn:
            conn.execute(
                "UPDATE alert_outbox SET status = 'dropped', finished_at = ?, last_error ="
                f" 'notifier no longer configured' WHERE status = 'pending' AND notifier NOT IN"
                f" ({marks})",
                [now, *notifiers],
            )
            # A restart is a fresh chance: retry what waits for its backoff now.
            conn.execute("UPDATE alert_outbox SET next_at = ? WHERE status = 'pending'", [now])
            conn.execute(
                "DELETE FROM alert_outbox WHERE status != 'pending' AND finished_at < ?",
                [now - KEEP_FINISHED_S],
            )
        rows = conn.execute(
            "SELECT notifier, count(*) FROM alert_outbox WHERE status = 'pending' GROUP BY notifier"
        ).fetchall()
        return {name: int(count) for name, count in rows}

    async def close(self) -> None:
        """Close the connection and stop the thread."""
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=False)

    async def add(self, rows: Sequence[tuple[str, Alert]], now: float, deadline: float) -> None:
        """Queue alerts, each for one notifier, to be delivered before ``now + deadline``."""
        data = [(n, json.dumps(a.payload()), now, now + deadline, now) for n, a in rows]
        await self._run(self._add, data)

    def _add(self, data: list[tuple[str, str, float, float, float]]) -> None:
        assert self._conn is not None
        with self._conn:
            self._conn.executemany(
                "INSERT INTO alert_outbox (notifier, payload, created, deadline, next_at)"
                " VALUES (?, ?, ?, ?, ?)",
                data,
            )

    async def head(self, notifier: str) -> Entry | None:
        """Return the oldest pending entry of a notifier."""
        return await self._run(self._head, notifier)

    def _head(self, notifier: str) -> Entry | None:
        assert self._conn is not None
        row = self._conn.execute(
            "SELECT id, payload, deadline, attempts, next_at FROM alert_outbox"
            " WHERE notifier = ? AND status = 'pending' ORDER BY id LIMIT 1",
            [notifier],
        ).fetchone()
        if row is None:
            return None
        alert = Alert.from_payload(json.loads(row[1]))
        return Entry(row[0], notifier, alert, row[2], row[3], row[4])

    async def finish(self, entry_id: int, status: str, now: float, error: str | None) -> None:
        """Mark an entry ``delivered`` or ``expired``."""
        await self._run(
            self._execute,
            "UPDATE alert_outbox SET status = ?, finished_at = ?, last_error = ? WHERE id = ?",
            [status, now, error, entry_id],
        )

    async def retry(self, entry_id: int, next_at: float, error: str) -> None:
        """Count a failed attempt and schedule the next one."""
        await self._run(
            self._execute,
            "UPDATE alert_outbox SET attempts = attempts + 1, next_at = ?, last_error = ?"
            " WHERE id = ?",
            [next_at, error, entry_id],
        )

    def _execute(self, sql: str, params: list[Any]) -> None:
        assert self._conn is not None
        with self._conn:
            self._conn.execute(sql, params)


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
        stats.sent += 1
        stats.pending -= 1
        stats.last_success_at = now
        await self.outbox.finish(entry.id, "delivered", now, None)

    async def _refresh(self, now: float) -> None:
        try:
            await self.notifier.refresh(self.firing(), now)
        except Exception as e:
            if not isinstance(e, DeliveryError):
                log.exception("notifier %s failed unexpectedly", self.notifier.name)
            self.stats.failed += 1
            self.stats.last_error, self.stats.last_error_at = f"re-send: {e}", now


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
        self._spawn(self._run(self._queue), "alerts")

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
        if alerts:
            await self.dispatch(alerts, now)

    async def dispatch(self, alerts: list[Alert], now: float) -> None:
        """Queue each alert in the outbox for every notifier that wants it."""
        assert self._outbox is not None
        stamped = with_monitor(alerts, self.host)
        for a in stamped:
            log.info("alert %s: %s", a.event, a.text)
        rows = [(c.notifier.name, a) for a in stamped for c in self.couriers if c.notifier.wants(a)]
        if not rows:
            return
        counts = {
            c.notifier.name: sum(1 for n, _ in rows if n == c.notifier.name) for c in self.couriers
        }
        for c in self.couriers:  # counted before the write, as a courier may send at once
            c.stats.pending += counts[c.notifier.name]
        try:
            await self._outbox.add(rows, now, self.config.deadline)
        except sqlite3.Error as e:
            log.error("alert outbox write failed, %d notifications lost: %s", len(rows), e)
            for c in self.couriers:
                c.stats.pending -= counts[c.notifier.name]
            return
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
