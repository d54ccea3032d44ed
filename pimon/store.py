"""SQLite history: one writer thread fed by a queue, reads on other threads.

Every write method only enqueues, so the event loop never waits on the disk;
the writer thread (writer.py) batches commits and rides out disk trouble, the
schema and its migrations live in schema.py.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pimon import rollup
from pimon.membership import State, Transition
from pimon.rollup import COLUMNS, Retention
from pimon.schema import MIGRATIONS, Migration, StoreError, connect, migrate, prepare
from pimon.uptime import DEFAULT_WINDOWS, uptime_by_window
from pimon.writer import Command, QueuedSample, Writer, backoff_delay

__all__ = [
    "MIGRATIONS",
    "NodeRecord",
    "Retention",
    "Store",
    "StoreError",
    "StoreHealth",
    "backoff_delay",
    "default_db_path",
    "migrate",
]

log = logging.getLogger(__name__)

DEFAULT_RETENTION = Retention()


@dataclass(slots=True)
class NodeRecord:
    """One row of the live node table."""

    name: str
    id: str | None
    address: str | None
    mode: str
    source: str
    state: str
    since: float
    last_seen: float | None
    registered_at: float
    extra: dict[str, Any] = field(default_factory=dict)  # forward compatible, stored as JSON


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """The writer's state, for logs, /metrics and the dashboard."""

    ok: bool
    error: str | None
    write_errors: int
    pending: int
    last_commit_at: float | None
    commits: int = 0
    dropped_samples: int = 0


def default_db_path() -> str:
    """Return $XDG_STATE_HOME/pimon/monitor.db, else ~/.local/state/pimon/monitor.db."""
    state_home = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(state_home, "pimon", "monitor.db")


@contextmanager
def _read_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.execute("COMMIT")


class Store:
    """The monitor's history: nodes, transitions and metric samples in one SQLite file."""

    def __init__(
        self,
        path: str,
        *,
        retention: Retention = DEFAULT_RETENTION,
        commit_interval: float = 2.0,
        clock: Callable[[], float] = time.time,
        maintenance_interval: float = 60.0,
        max_pending_samples: int = 100_000,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> None:
        self.path = path
        self._retention = retention
        self._clock = clock
        self._migrations = migrations
        self._queue: queue.SimpleQueue[QueuedSample | Command] = queue.SimpleQueue()
        self._writer: Writer | None = None
        self._thread: threading.Thread | None = None
        self._commit_interval = commit_interval
        self._maintenance_interval = maintenance_interval
        self._max_pending_samples = max_pending_samples
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()

    def open(self) -> None:
        """Create the directory, open and migrate the database, start the writer thread."""
        if self._thread is not None:
            raise StoreError("the history database is already open")
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the directory {directory} for the history database: {exc.strerror}"
            ) from exc
        conn: sqlite3.Connection | None = None
        try:
            conn = connect(self.path)
            prepare(conn, self.path, self._migrations)
        except (sqlite3.Error, StoreError) as exc:
            if conn is not None:
                conn.close()
            raise StoreError(f"cannot open the history database {self.path}: {exc}") from exc
        self._writer = Writer(
            conn,
            self._queue,
            path=self.path,
            retention=self._retention,
            clock=self._clock,
            commit_interval=self._commit_interval,
            maintenance_interval=self._maintenance_interval,
            max_pending_samples=self._max_pending_samples,
        )
        self._local = threading.local()
        self._thread = threading.Thread(target=self._writer.run, name="pimon-store", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is pending and stop the writer, waiting at most ``timeout`` seconds."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(Command("stop"))
        thread.join(timeout)
        if thread.is_alive():
            log.warning("history writer did not stop within %.0f s; pending writes lost", timeout)
        self._local = threading.local()
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()

    # Writes: each only enqueues, safe on the event loop thread.

    def upsert_node(self, rec: NodeRecord) -> None:
        """Insert or replace a node in the live node table."""
        # A row made now, not at commit time: the caller may change rec (and its extra) later.
        row = (rec.name, rec.id, rec.address, rec.mode, rec.source, rec.state, rec.since,
               rec.last_seen, rec.registered_at, json.dumps(rec.extra))  # fmt: skip
        self._put(Command("node", (rec.name, row)))

    def delete_node(self, name: str) -> None:
        """Remove a node from the live node table; its history stays."""
        self._put(Command("node", (name, None)))

    def record_transition(self, t: Transition) -> None:
        """Append a state change to the history."""
        self._put(Command("transition", t))

    def record_sample(self, node: str, at: float, values: Mapping[str, float | None]) -> None:
        """Append one metric sample; missing columns are stored as NULL."""
        self._put((node, at, tuple(map(values.get, COLUMNS))))

    def maintain(self) -> None:
        """Ask the writer to roll up and apply retention now (it also does so periodically)."""
        self._put(Command("maintain"))

    def limit_size(self, max_bytes: int | None) -> None:
        """Cap the database file at ``max_bytes`` (never below its current size); None lifts it."""
        self._put(Command("limit", max_bytes))

    @property
    def retention(self) -> Retention:
        """Return how long each resolution of samples is kept."""
        return self._retention

    def flush(self, timeout: float = 5.0) -> bool:
        """Block until everything enqueued so far is committed; never call on the event loop."""
        done = threading.Event()
        self._put(Command("flush", done=done))
        return done.wait(timeout)

    def _put(self, item: QueuedSample | Command) -> None:
        if self._thread is None:
            raise StoreError("the history database is not open")
        self._queue.put(item)

    # Reads: blocking, each thread on its own connection (call via asyncio.to_thread).

    def load_nodes(self) -> list[NodeRecord]:
        """Return the live node table, sorted by name."""
        rows = self._reader().execute(
            "SELECT name, id, address, mode, source, state, since, last_seen, registered_at, extra"
            " FROM nodes ORDER BY name"
        )
        return [_node_record(row) for row in rows]

    def transitions(
        self,
        node: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[tuple[int, Transition]]:
        """Return up to ``limit`` transitions, newest first; page with the last id as before_id."""
        clauses: list[str] = []
        params: list[object] = []
        for clause, value in (
            ("node = ?", node),
            ("at >= ?", since),
            ("at <= ?", until),
            ("id < ?", before_id),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._reader().execute(
            f"SELECT id, node, old, new, at, reason FROM transitions {where}"
            " ORDER BY id DESC LIMIT ?",
            (*params, limit),
        )
        return [(row[0], _transition(row[1:])) for row in rows]

    def samples(
        self, node: str, since: float, until: float, step: float | None = None
    ) -> list[dict[str, float | None]]:
        """Return a node's samples in [since, until], averaged into ``step`` buckets if given."""
        with _read_transaction(self._reader()) as conn:
            found = conn.execute("SELECT key FROM node_keys WHERE name = ?", (node,)).fetchone()
            if found is None:
                return []
            rows = rollup.read_samples(
                conn, found[0], since, until, now=self._clock(), retention=self._retention
            )
        return rows if step is None else rollup.bucket_average(rows, step)

    def uptime(
        self, node: str, now: float, windows: Mapping[str, float] = DEFAULT_WINDOWS
    ) -> dict[str, float | None]:
        """Return the fraction of observed time up or degraded, per named window ending at now."""
        if not windows:
            return {}
        start = now - max(windows.values())
        select = "SELECT node, old, new, at, reason FROM transitions WHERE node = ?"
        with _read_transaction(self._reader()) as conn:
            before = conn.execute(
                f"{select} AND at < ? ORDER BY at DESC, id DESC LIMIT 1", (node, start)
            ).fetchall()
            inside = conn.execute(
                f"{select} AND at >= ? AND at <= ? ORDER BY at, id", (node, start, now)
            ).fetchall()
        history = [_transition(row) for row in (*before, *inside)]
        return uptime_by_window(history, now, windows)

    def health(self) -> StoreHealth:
        """Return the writer's health: ok, last error, failed commits, pending writes."""
        writer = self._writer
        if writer is None:
            return StoreHealth(False, "not open", 0, 0, None)
        alive = self._thread is not None and self._thread.is_alive()
        error = writer.error if alive else (writer.error or "the writer is stopped")
        return StoreHealth(
            ok=error is None,
            error=error,
            write_errors=writer.write_errors,
            pending=self._queue.qsize() + writer.pending(),
            last_commit_at=writer.last_commit_at,
            commits=writer.commits,
            dropped_samples=writer.dropped_samples,
        )

    def _reader(self) -> sqlite3.Connection:
        if self._thread is None:
            raise StoreError("the history database is not open")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn


def _node_record(row: Sequence[Any]) -> NodeRecord:
    name, id_, address, mode, source, state, since, last_seen, registered_at, extra = row
    return NodeRecord(
        name, id_, address, mode, source, state, since, last_seen, registered_at, json.loads(extra)
    )


def _transition(row: Sequence[Any]) -> Transition:
    node, old, new, at, reason = row
    return Transition(node, State(old), State(new), at, reason)
