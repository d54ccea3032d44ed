"""The history database's schema, its forward migrations and the connection set-up."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

__all__ = [
    "MIGRATIONS",
    "WAL_SIZE_LIMIT",
    "Migration",
    "StoreError",
    "connect",
    "migrate",
    "prepare",
]

WAL_SIZE_LIMIT = 8 * 1024 * 1024


class StoreError(Exception):
    """The history database cannot be used; the message says why, for a human."""


Migration = Callable[[sqlite3.Connection], None]

_SCHEMA_V1 = (
    "CREATE TABLE nodes (name TEXT PRIMARY KEY, id TEXT, address TEXT, mode TEXT NOT NULL,"
    " source TEXT NOT NULL, state TEXT NOT NULL, since REAL NOT NULL, last_seen REAL,"
    " registered_at REAL NOT NULL, extra TEXT NOT NULL DEFAULT '{}')",
    "CREATE TABLE transitions (id INTEGER PRIMARY KEY, node TEXT NOT NULL, old TEXT NOT NULL,"
    " new TEXT NOT NULL, at REAL NOT NULL, reason TEXT NOT NULL DEFAULT '')",
    "CREATE INDEX transitions_node_at ON transitions (node, at)",
    "CREATE INDEX transitions_at ON transitions (at)",
    # Sample rows name nodes by a small integer: 1 byte instead of the name's 5-60.
    "CREATE TABLE node_keys (key INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
    # Keyed by time first so each commit appends; values are integers of 1/100 unit.
    "CREATE TABLE samples_raw (at INTEGER NOT NULL, node INTEGER NOT NULL, cpu_percent INTEGER,"
    " mem_percent INTEGER, swap_percent INTEGER, disk_percent INTEGER, temp_c INTEGER,"
    " load1 INTEGER, load5 INTEGER, load15 INTEGER, rtt_ms INTEGER,"
    " PRIMARY KEY (at, node)) WITHOUT ROWID",
    # Per node, an hour of minute or a day of quarter-hour averages: see rollup.py.
    "CREATE TABLE rollups (tier INTEGER NOT NULL, node INTEGER NOT NULL, start INTEGER NOT NULL,"
    " data BLOB NOT NULL, PRIMARY KEY (tier, node, start))",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value)",
)


def _schema_v1(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA_V1:
        conn.execute(statement)


# MIGRATIONS[i] takes the schema from version i to i + 1 (PRAGMA user_version). Never edit
# a released one: append a new one.
MIGRATIONS: tuple[Migration, ...] = (_schema_v1,)


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply the pending migrations in order, each in its own transaction; return the version."""
    while True:
        # IMMEDIATE, and the version read inside: two monitors opening at once migrate once.
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > len(migrations):
                raise StoreError(
                    f"the history database has schema version {version}, newer than this"
                    f" pimon knows ({len(migrations)}): upgrade pimon or use another database"
                )
            if version == len(migrations):
                conn.execute("COMMIT")
                return version
            migrations[version](conn)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def connect(path: str) -> sqlite3.Connection:
    """Open a connection in autocommit mode that waits up to 5 s for a lock."""
    # check_same_thread=False only so close() may close connections other threads used.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def prepare(conn: sqlite3.Connection, path: str, migrations: Sequence[Migration]) -> None:
    """Switch the writer's connection to WAL and bring the schema up to date."""
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode != "wal":
        raise StoreError(f"the history database {path} cannot use WAL mode ({mode})")
    conn.execute("PRAGMA synchronous = NORMAL")
    # After a big catch-up the WAL would otherwise keep its peak size on disk.
    conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
    migrate(conn, migrations)
