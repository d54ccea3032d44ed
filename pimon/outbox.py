"""Keep alerting durable in SQLite: the ``alert_outbox`` queue and the ``alert_firing`` set.

Every alert is written to ``alert_outbox`` (one row per notifier) before anything
is sent, and marked delivered once its notifier accepted it, so a restart neither
loses queued alerts nor re-sends delivered ones. ``alert_firing`` holds, per node,
the alert in force (down, degraded, flapping; the isolation under the empty name),
written in the same transaction as the alerts that change it, so a restarted
monitor still resolves what it had reported. All SQLite work runs on one
dedicated thread; the event loop only awaits it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from pimon.alertformat import Alert

log = logging.getLogger("pimon.alerts")

T = TypeVar("T")
KEEP_FINISHED_S = 7 * 86400.0

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS alert_outbox (id INTEGER PRIMARY KEY, notifier TEXT NOT NULL,"
    " payload TEXT NOT NULL, created REAL NOT NULL, deadline REAL NOT NULL,"
    " attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL,"
    " status TEXT NOT NULL DEFAULT 'pending', finished_at REAL, last_error TEXT)",
    "CREATE INDEX IF NOT EXISTS alert_outbox_pending ON alert_outbox (notifier, status, id)",
    "CREATE TABLE IF NOT EXISTS alert_firing (node TEXT PRIMARY KEY, event TEXT NOT NULL,"
    " since REAL NOT NULL, payload TEXT NOT NULL)",
)


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
    """The alerting tables, used from the event loop through one worker thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="pimon-outbox")
        self._conn: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self, notifiers: Sequence[str], now: float) -> dict[str, int]:
        """Open the tables, drop rows of notifiers no longer configured; return pending counts."""
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

    async def firing(self) -> dict[str, Alert]:
        """Return the alerts in force when the monitor last ran, by node."""
        return await self._run(self._firing)

    def _firing(self) -> dict[str, Alert]:
        assert self._conn is not None
        out = {}
        for node, payload in self._conn.execute("SELECT node, payload FROM alert_firing"):
            try:
                out[node] = Alert.from_payload(json.loads(payload))
            except (ValueError, KeyError, TypeError) as e:  # written by another version, say
                log.warning("alert in force for %r unreadable, forgotten: %s", node, e)
        return out

    async def add(
        self,
        rows: Sequence[tuple[str, Alert]],
        now: float,
        deadline: float,
        *,
        firing: Mapping[str, Alert] = {},
        resolved: Collection[str] = (),
    ) -> None:
        """Queue alerts, each for one notifier, to be delivered before ``now + deadline``.

        In the same transaction, set the alerts in force of ``firing`` and drop ``resolved``.
        """
        data = [(n, json.dumps(a.payload()), now, now + deadline, now) for n, a in rows]
        set_rows = [(k, str(a.event), a.at, json.dumps(a.payload())) for k, a in firing.items()]
        await self._run(self._add, data, set_rows, [(k,) for k in resolved])

    def _add(
        self,
        data: list[tuple[str, str, float, float, float]],
        set_rows: list[tuple[str, str, float, str]],
        resolved: list[tuple[str]],
    ) -> None:
        assert self._conn is not None
        with self._conn:
            self._conn.executemany(
                "INSERT INTO alert_outbox (notifier, payload, created, deadline, next_at)"
                " VALUES (?, ?, ?, ?, ?)",
                data,
            )
            self._conn.executemany("DELETE FROM alert_firing WHERE node = ?", resolved)
            self._conn.executemany(
                "INSERT OR REPLACE INTO alert_firing (node, event, since, payload)"
                " VALUES (?, ?, ?, ?)",
                set_rows,
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
