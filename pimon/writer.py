"""The history writer thread: absorbs queued writes, commits in batches, survives disk trouble.

It keeps the batch in memory and commits it at most once per ``commit_interval``;
when the disk fails it keeps the batch (samples bounded), retries with backoff
and says so through its fields, which ``Store.health()`` reports.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pimon import rollup
from pimon.membership import Transition
from pimon.rollup import Retention

__all__ = ["MAX_BACKOFF_S", "Command", "QueuedSample", "Writer", "backoff_delay"]

# The writer's messages belong to the store, where users look for them.
log = logging.getLogger("pimon.store")

MAX_BACKOFF_S = 60.0
_NO_PAGE_LIMIT = 4294967294

# (node, at, values in rollup.COLUMNS order): a bare tuple, since one is queued per sample.
QueuedSample = tuple[str, float, tuple[float | None, ...]]


@dataclass(slots=True)
class Command:
    """A queued instruction for the writer: node, transition, flush, maintain, limit, stop."""

    kind: str
    arg: Any = None
    done: threading.Event | None = None


def backoff_delay(failures: int) -> float:
    """Return the seconds to wait after ``failures`` failed commits in a row: 1, 2, 4 ... 60."""
    return min(MAX_BACKOFF_S, 2.0 ** (failures - 1))


class Writer:
    """The writer thread's state: the pending batch, the connection, failure bookkeeping."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        inbox: queue.SimpleQueue[QueuedSample | Command],
        *,
        path: str,
        retention: Retention,
        clock: Callable[[], float],
        commit_interval: float,
        maintenance_interval: float,
        max_pending_samples: int,
    ) -> None:
        self.conn = conn
        self.inbox = inbox
        self.path = path
        self.retention = retention
        self.clock = clock
        self.commit_interval = commit_interval
        self.maintenance_interval = maintenance_interval
        self.max_pending_samples = max_pending_samples
        self.nodes: dict[str, tuple[Any, ...] | None] = {}  # last write per name wins
        self.transitions: list[Transition] = []
        self.samples: deque[QueuedSample] = deque()
        self.keys: dict[str, int] = {}
        self.waiters: list[threading.Event] = []
        self.batch_started: float | None = None
        self.retry_at = 0.0
        self.failures = 0
        self.last_maintenance: float | None = None
        self.error: str | None = None
        self.write_errors = 0
        self.commits = 0
        self.dropped_samples = 0
        self.last_commit_at: float | None = None

    def pending(self) -> int:
        """Return the number of writes held in memory, not yet committed."""
        return len(self.nodes) + len(self.transitions) + len(self.samples)

    def run(self) -> None:
        """Absorb queued writes, commit in batches, maintain; until told to stop."""
        try:
            self.maintain()  # catch up on rollups missed while the monitor was down
            while self._step():
                pass
            self.commit()
        except Exception as exc:  # a bug, not the disk: say so in health() and the log
            log.exception("history writer crashed")
            self.error = f"writer crashed: {exc!r}"
        finally:
            self.conn.close()

    def _step(self) -> bool:
        wait = 1.0
        if self.batch_started is not None:
            due = max(self.batch_started + self.commit_interval, self.retry_at)
            wait = min(wait, max(0.0, due - time.monotonic()))
        try:
            item: QueuedSample | Command | None = self.inbox.get(timeout=wait)
        except queue.Empty:
            item = None
        samples, max_samples = self.samples, self.max_pending_samples
        gulp = 0
        while item is not None:
            if isinstance(item, tuple):
                # Inline, not a method call: this runs once per sample.
                if self.batch_started is None:
                    self.batch_started = time.monotonic()
                samples.append(item)
                if len(samples) > max_samples:
                    # Keep the newest; nodes and transitions are never dropped.
                    samples.popleft()
                    self.dropped_samples += 1
            elif not self._command(item):
                return False
            gulp += 1
            if gulp == 10_000:  # bounded, so a flood still commits on time
                break
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                item = None
        now = time.monotonic()
        # A flood half-filling the sample cap commits early rather than drop healthy data.
        if (
            self.batch_started is not None
            and now >= self.retry_at
            and (
                now >= self.batch_started + self.commit_interval or len(samples) > max_samples // 2
            )
        ):
            self.commit()
        last = self.last_maintenance
        if last is None or self.clock() - last >= self.maintenance_interval:
            self.maintain()
        return True

    def _mark_batch(self) -> None:
        if self.batch_started is None:
            self.batch_started = time.monotonic()

    def _command(self, command: Command) -> bool:
        if command.kind == "node":
            name, record = command.arg
            self._mark_batch()
            self.nodes[name] = record
        elif command.kind == "transition":
            self._mark_batch()
            self.transitions.append(command.arg)
        elif command.kind == "flush":
            assert command.done is not None
            self.waiters.append(command.done)
            self.commit()
        elif command.kind == "maintain":
            self.maintain()
        elif command.kind == "limit":
            pages = _NO_PAGE_LIMIT
            if command.arg is not None:
                page_size = self.conn.execute("PRAGMA page_size").fetchone()[0]
                pages = max(1, command.arg // page_size)
            self.conn.execute(f"PRAGMA max_page_count = {int(pages)}")
        elif command.kind == "stop":
            return False
        return True

    def commit(self) -> bool:
        """Write the pending batch in one transaction; keep it in memory if that fails."""
        if self.pending():
            try:
                self.conn.execute("BEGIN")
                self._write_batch()
                self.conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._failed(exc, "write")
                return False
            self.nodes.clear()
            self.transitions.clear()
            self.samples.clear()
            self.commits += 1
            self.last_commit_at = self.clock()
            self._succeeded()
        self.batch_started = None
        for waiter in self.waiters:
            waiter.set()
        self.waiters.clear()
        return True

    def _write_batch(self) -> None:
        conn = self.conn
        for name, row in self.nodes.items():
            if row is None:
                conn.execute("DELETE FROM nodes WHERE name = ?", (name,))
            else:
                conn.execute(
                    "INSERT OR REPLACE INTO nodes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row
                )
        conn.executemany(
            "INSERT INTO transitions (node, old, new, at, reason) VALUES (?, ?, ?, ?, ?)",
            [(t.node, str(t.old), str(t.new), t.at, t.reason) for t in self.transitions],
        )
        keys = self.keys
        conn.executemany(
            rollup.INSERT_RAW,
            [(at, keys.get(name) or self._key(name), *values) for name, at, values in self.samples],
        )

    def _key(self, name: str) -> int:
        key = self.keys.get(name)
        if key is None:
            self.conn.execute("INSERT OR IGNORE INTO node_keys (name) VALUES (?)", (name,))
            key = int(
                self.conn.execute("SELECT key FROM node_keys WHERE name = ?", (name,)).fetchone()[0]
            )
            self.keys[name] = key
        return key

    def maintain(self) -> None:
        """Commit, then roll samples up and apply retention in a transaction of their own."""
        now = self.clock()
        self.last_maintenance = now
        if not self.commit():
            return
        try:
            self.conn.execute("BEGIN")
            rollup.roll_up(self.conn, now)
            rollup.apply_retention(self.conn, now, self.retention)
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._failed(exc, "maintenance")
            return
        self._succeeded()

    def _failed(self, exc: sqlite3.Error, what: str) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        self.keys.clear()  # keys made in the failed transaction are gone with it
        self.write_errors += 1
        self.failures += 1
        self.retry_at = time.monotonic() + backoff_delay(self.failures)
        if self.error is None:  # once per episode, not once per retry
            log.error(
                "history database %s: %s failed (%s); keeping up to %d samples in memory"
                " and retrying with backoff",
                self.path,
                what,
                exc,
                self.max_pending_samples,
            )
        self.error = f"{what} failed: {exc}"

    def _succeeded(self) -> None:
        if self.error is not None:
            log.warning(
                "history database %s writable again after %d failed attempts",
                self.path,
                self.failures,
            )
        self.error = None
        self.failures = 0
        self.retry_at = 0.0
