"""The SQLite history: batching, restart, rollups, retention, migrations, disk trouble."""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pimon.membership import State, Transition
from pimon.rollup import COLUMNS, Retention
from pimon.store import (
    MIGRATIONS,
    NodeRecord,
    Store,
    StoreError,
    backoff_delay,
    default_db_path,
)
from tests.conftest import Clock

DAY = 86400.0
T0 = 1_800_000_000.0 - 1_800_000_000.0 % DAY  # midnight UTC: minute, hour and day aligned


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "state" / "monitor.db")


@pytest.fixture
def make_store(db: str, clock: Clock) -> Iterator[Callable[..., Store]]:
    """Open stores on the test database (maintenance only when asked); close them all after."""
    stores: list[Store] = []

    def make(**kwargs: object) -> Store:
        options: dict[str, Any] = {"clock": clock, "maintenance_interval": math.inf, **kwargs}
        store = Store(db, **options)
        store.open()
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def node(name: str, state: str = "up", **extra: object) -> NodeRecord:
    return NodeRecord(name, f"id-{name}", "10.0.0.1:7071", "pull", "static", state, T0, T0,
                      T0 - 100, dict(extra))  # fmt: skip


def query(db: str, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_database_is_in_wal_mode_with_schema_version_1(make_store, db) -> None:
    make_store()
    assert query(db, "PRAGMA journal_mode") == [("wal",)]
    assert query(db, "PRAGMA user_version") == [(len(MIGRATIONS),)]


def test_many_writes_are_committed_in_few_batches(make_store) -> None:
    store = make_store(commit_interval=3600)
    for i in range(5000):
        store.record_sample("pi-01", T0 + i * 0.01, {"cpu_percent": float(i % 100)})
    for i in range(50):
        store.upsert_node(node("pi-01", last_seen=i))
        store.record_transition(Transition("pi-01", State.UP, State.DOWN, T0 + i, "x"))
    assert store.health().commits == 0
    assert store.flush()
    health = store.health()
    assert health.commits == 1
    assert health.pending == 0
    assert health.last_commit_at == T0
    assert len(store.samples("pi-01", T0, T0 + 100)) == 5000
    assert store.load_nodes()[0].extra == {"last_seen": 49}
    assert len(store.transitions(limit=1000)) == 50


def test_an_idle_write_is_committed_after_the_commit_interval_without_flush(make_store) -> None:
    store = make_store(commit_interval=0.05)
    store.record_sample("pi-01", T0, {"cpu_percent": 1.0})
    deadline = time.monotonic() + 10
    while store.health().commits == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # waiting for the writer thread, not standing in for logic
    assert store.health().commits == 1


def test_restart_brings_back_nodes_transitions_and_samples(make_store, db, clock) -> None:
    store = make_store()
    store.upsert_node(node("pi-01"))
    store.upsert_node(node("pi-02", state="down"))
    store.record_transition(Transition("pi-02", State.UP, State.DOWN, T0 + 1, "no heartbeat"))
    store.record_sample("pi-01", T0 + 1, {"cpu_percent": 12.5, "temp_c": 48.25, "rtt_ms": None})
    store.close()
    again = make_store()
    assert again.load_nodes() == [node("pi-01"), node("pi-02", state="down")]
    [(_, transition)] = again.transitions()
    assert transition == Transition("pi-02", State.UP, State.DOWN, T0 + 1, "no heartbeat")
    [sample] = again.samples("pi-01", T0, T0 + 10)
    assert sample["at"] == T0 + 1
    assert (sample["cpu_percent"], sample["temp_c"], sample["rtt_ms"]) == (12.5, 48.25, None)


def test_kill_9_loses_only_the_uncommitted_batch(db, make_store) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal
        from pimon.membership import State, Transition
        from pimon.store import Store
        store = Store({db!r}, commit_interval=3600)
        store.open()
        store.record_transition(Transition("a", State.UNKNOWN, State.UP, 1.0, "committed"))
        store.record_sample("a", 1.0, {{"cpu_percent": 5.0}})
        assert store.flush()
        store.record_transition(Transition("a", State.UP, State.DOWN, 2.0, "lost"))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], timeout=60, check=False)
    assert result.returncode == -9
    store = make_store(clock=lambda: 10.0)
    assert [t.reason for _, t in store.transitions()] == ["committed"]
    assert [s["cpu_percent"] for s in store.samples("a", 0.0, 10.0)] == [5.0]
    assert query(db, "PRAGMA integrity_check") == [("ok",)]


def test_deleted_node_leaves_the_live_table_but_keeps_history(make_store) -> None:
    store = make_store()
    store.upsert_node(node("pi-01"))
    store.record_transition(Transition("pi-01", State.UNKNOWN, State.UP, T0, "first"))
    store.record_sample("pi-01", T0, {"cpu_percent": 1.0})
    store.flush()
    store.delete_node("pi-01")
    store.flush()
    assert store.load_nodes() == []
    assert len(store.transitions(node="pi-01")) == 1
    assert len(store.samples("pi-01", T0, T0)) == 1


def test_last_write_per_node_wins_within_a_batch(make_store) -> None:
    store = make_store(commit_interval=3600)
    store.upsert_node(node("pi-01", state="up"))
    store.delete_node("pi-01")
    store.upsert_node(node("pi-01", state="down"))
    store.upsert_node(node("pi-02"))
    store.delete_node("pi-02")
    store.flush()
    assert [(n.name, n.state) for n in store.load_nodes()] == [("pi-01", "down")]


def test_transitions_page_newest_first_with_before_id(make_store) -> None:
    store = make_store()
    for i in range(25):
        store.record_transition(Transition(f"pi-0{i % 2}", State.UP, State.DOWN, T0 + i, str(i)))
    store.flush()
    pages, before = [], None
    while page := store.transitions(limit=10, before_id=before):
        pages.append([t.reason for _, t in page])
        before = page[-1][0]
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [reason for page in pages for reason in page] == [str(i) for i in reversed(range(25))]
    odd = store.transitions(node="pi-01", since=T0 + 10, until=T0 + 20)
    assert [t.reason for _, t in odd] == ["19", "17", "15", "13", "11"]


def write_minutes(store: Store, clock: Clock) -> None:
    """Samples either side of the T0+60 s boundary, some with NULL columns."""
    store.record_sample("pi-01", T0 + 1.0, {"cpu_percent": 10.0, "temp_c": None})
    store.record_sample("pi-01", T0 + 30.0, {"cpu_percent": None, "temp_c": 40.0})
    store.record_sample("pi-01", T0 + 59.9, {"cpu_percent": 30.0, "temp_c": None})
    store.record_sample("pi-01", T0 + 60.0, {"cpu_percent": 90.0, "temp_c": 50.0})
    store.record_sample("pi-02", T0 + 10.0, {"cpu_percent": 99.0})
    clock.now = T0 + 200
    store.maintain()
    assert store.flush()


def test_minute_buckets_split_exactly_at_the_boundary_and_ignore_nulls(make_store, clock) -> None:
    store = make_store()
    write_minutes(store, clock)
    clock.now = T0 + 7 * 3600  # past raw retention's reach: reads come from the minute tier
    minutes = store.samples("pi-01", T0, T0 + 300)
    assert [m["at"] for m in minutes] == [T0, T0 + 60]
    assert minutes[0]["cpu_percent"] == 20.0
    assert minutes[0]["temp_c"] == 40.0
    assert minutes[0]["mem_percent"] is None
    assert (minutes[1]["cpu_percent"], minutes[1]["temp_c"]) == (90.0, 50.0)


def test_quarter_buckets_average_raw_samples(make_store, clock) -> None:
    store = make_store()
    for i in range(20):  # 10 per quarter: 0..9 in the first, 900..909 s in the second
        at = T0 + (i % 10) * 60 + (i // 10) * 900
        store.record_sample("pi-01", at, {"load1": float(i), "rtt_ms": 0.3})
    clock.now = T0 + 1900
    store.maintain()
    store.flush()
    clock.now = T0 + 8 * DAY  # past the minute tier: reads come from quarters
    quarters = store.samples("pi-01", T0, T0 + 3600)
    assert [q["at"] for q in quarters] == [T0, T0 + 900]
    assert quarters[0]["load1"] == pytest.approx(4.5, rel=1e-3)
    assert quarters[1]["load1"] == pytest.approx(14.5, rel=1e-3)
    assert quarters[1]["rtt_ms"] == pytest.approx(0.3, rel=1e-3)


def test_samples_not_yet_rolled_up_come_from_raw_at_tier_resolution(make_store, clock) -> None:
    store = make_store()
    write_minutes(store, clock)  # rolled up to T0+180
    store.record_sample("pi-01", T0 + 181, {"cpu_percent": 1.0})
    store.record_sample("pi-01", T0 + 200, {"cpu_percent": 3.0})
    store.flush()
    clock.now = T0 + 7 * 3600
    assert [(m["at"], m["cpu_percent"]) for m in store.samples("pi-01", T0, T0 + 300)] == [
        (T0, 20.0),
        (T0 + 60, 90.0),
        (T0 + 180, 2.0),
    ]


def test_rollups_run_every_maintenance_interval_on_the_injected_clock(
    make_store, db, clock
) -> None:
    store = make_store(maintenance_interval=60.0)
    store.record_sample("pi-01", T0 + 1, {"cpu_percent": 50.0})
    store.flush()
    assert query(db, "SELECT COUNT(*) FROM rollups") == [(0,)]
    clock.now = T0 + 100  # the writer maintains after the next thing it handles
    store.flush()
    store.flush()  # handled after that maintenance
    assert query(db, "SELECT value FROM meta WHERE key = 'rolled_60'") == [(T0 + 60,)]
    clock.now = T0 + 7 * 3600
    assert [m["cpu_percent"] for m in store.samples("pi-01", T0, T0 + 60)] == [50.0]


def test_reads_on_many_threads_while_writing(make_store) -> None:
    store = make_store(commit_interval=0.01)

    def read(i: int) -> int:
        store.load_nodes()
        store.transitions(node="pi-01")
        return len(store.samples("pi-01", T0, T0 + 1000))

    with ThreadPoolExecutor(max_workers=4) as pool:
        for i in range(200):
            store.upsert_node(node("pi-01", i=i))
            store.record_sample("pi-01", T0 + i, {"cpu_percent": 1.0})
        counts = list(pool.map(read, range(40)))
    store.flush()
    assert all(0 <= c <= 200 for c in counts)
    assert read(0) == 200


def test_step_averages_samples_into_buckets(make_store) -> None:
    store = make_store()
    for i in range(30):
        store.record_sample("pi-01", T0 + i, {"cpu_percent": float(i), "swap_percent": None})
    store.flush()
    buckets = store.samples("pi-01", T0, T0 + 29, step=10)
    assert [(b["at"], b["cpu_percent"], b["swap_percent"]) for b in buckets] == [
        (T0, 4.5, None),
        (T0 + 10, 14.5, None),
        (T0 + 20, 24.5, None),
    ]
    assert store.samples("nobody", T0, T0 + 29) == []


def test_retention_deletes_each_tier_after_its_time(make_store, db, clock) -> None:
    retention = Retention(raw_s=1800, minute_s=2 * 3600, quarter_s=2 * DAY)
    store = make_store(retention=retention)
    write_minutes(store, clock)

    def counts() -> tuple[object, ...]:
        raw = query(db, "SELECT COUNT(*) FROM samples_raw")[0][0]
        tiers = dict(query(db, "SELECT tier, COUNT(*) FROM rollups GROUP BY tier"))
        return raw, tiers.get(60, 0), tiers.get(900, 0)

    assert counts() == (5, 2, 0)  # a block per node per tier; no quarter has ended yet
    for now, expected in (
        (T0 + 1800 + 100, (0, 2, 2)),  # raw gone once rolled up
        (T0 + 3600 + 2 * 3600, (0, 0, 2)),  # the minute blocks of the first hour
        (T0 + DAY + 2 * DAY, (0, 0, 0)),  # the quarter blocks of the first day
    ):
        clock.now = now
        store.maintain()
        store.flush()
        assert counts() == expected


def test_retention_must_keep_raw_long_enough_to_roll_up_quarters() -> None:
    with pytest.raises(ValueError, match="raw_s must be at least 1800"):
        Retention(raw_s=600)
    with pytest.raises(ValueError, match="raw_s <= minute_s <= quarter_s"):
        Retention(minute_s=DAY, quarter_s=3600)


def test_migrations_run_in_order_once_and_refuse_a_newer_schema(tmp_path, db, clock) -> None:
    Path(db).parent.mkdir()
    Path(db).touch()  # an empty file is schema version 0
    applied: list[int] = []

    def add_notes(conn: sqlite3.Connection) -> None:
        applied.append(int(conn.execute("PRAGMA user_version").fetchone()[0]))
        conn.execute("CREATE TABLE notes (node TEXT, note TEXT)")
        conn.execute("INSERT INTO notes SELECT name, 'migrated' FROM nodes")

    store = Store(db, clock=clock)
    store.open()
    store.upsert_node(node("pi-01"))
    store.close()
    newer = (*MIGRATIONS, add_notes)
    for _ in range(2):
        store = Store(db, clock=clock, migrations=newer)
        store.open()
        store.close()
    assert applied == [1]
    assert query(db, "SELECT * FROM notes") == [("pi-01", "migrated")]
    assert query(db, "PRAGMA user_version") == [(2,)]
    with pytest.raises(StoreError, match="schema version 2, newer than this pimon knows"):
        Store(db, clock=clock).open()


def test_open_fails_clearly_when_the_path_is_unusable(tmp_path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot create the directory"):
        Store(str(blocker / "monitor.db")).open()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite at all, just some text" * 100)
    with pytest.raises(StoreError, match="not a database"):
        Store(str(garbage)).open()


def test_disk_full_keeps_the_batch_logs_once_and_recovers(make_store, caplog) -> None:
    store = make_store(commit_interval=3600, max_pending_samples=1000)
    store.upsert_node(node("pi-01"))
    assert store.flush()
    store.limit_size(1)  # SQLITE_FULL as soon as the file must grow, as on a full disk
    for i in range(3000):
        store.record_sample("pi-01", T0 + i, {"cpu_percent": 1.0, "mem_percent": 2.0})
    store.record_transition(Transition("pi-01", State.UP, State.DOWN, T0 + 1, "kept"))
    with caplog.at_level(logging.WARNING, logger="pimon.store"):
        assert not store.flush(timeout=0.5)
        assert not store.flush(timeout=0.5)
        health = store.health()
        assert not health.ok
        assert health.error is not None and "full" in health.error
        assert health.write_errors >= 2  # flushes retry at once; more retries follow the backoff
        assert health.pending == 1001  # the newest 1000 samples and the transition
        assert health.dropped_samples == 2000
        store.limit_size(None)
        assert store.flush(timeout=5)
    assert store.health().ok
    assert [r.levelname for r in caplog.records if r.name == "pimon.store"] == ["ERROR", "WARNING"]
    samples = store.samples("pi-01", T0, T0 + 3000)
    assert [s["at"] for s in samples] == [T0 + i for i in range(2000, 3000)]
    assert [t.reason for _, t in store.transitions()] == ["kept"]


def test_backoff_doubles_up_to_a_minute() -> None:
    assert [backoff_delay(n) for n in (1, 2, 3, 7, 50)] == [1.0, 2.0, 4.0, 60.0, 60.0]


def test_writes_need_an_open_store_and_do_not_block_the_event_loop(db) -> None:
    store = Store(db)
    with pytest.raises(StoreError, match="not open"):
        store.record_sample("pi-01", T0, {})

    async def main() -> list[NodeRecord]:
        store.open()
        store.upsert_node(node("pi-01"))
        for i in range(1000):
            store.record_sample("pi-01", T0 + i, {"cpu_percent": 1.0})
        await asyncio.to_thread(store.flush)
        return await asyncio.to_thread(store.load_nodes)

    assert [n.name for n in asyncio.run(main())] == ["pi-01"]
    store.close()
    assert not store.health().ok


def test_uptime_reads_transitions_around_the_windows(make_store) -> None:
    store = make_store()
    now = T0 + 30 * DAY
    for at, old, new in (
        (now - 40 * DAY, State.UNKNOWN, State.UP),
        (now - 10 * 3600, State.UP, State.DOWN),
        (now - 10 * 3600 + 36 * 60, State.DOWN, State.UP),
    ):
        store.record_transition(Transition("pi-01", old, new, at, ""))
    store.flush()
    result = store.uptime("pi-01", now)
    assert result["1h"] == 1.0
    assert result["24h"] == pytest.approx(0.975)
    assert store.uptime("nobody", now) == {"1h": None, "24h": None, "7d": None, "30d": None}


def test_default_db_path_follows_xdg_state_home(monkeypatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", "/srv/state")
    assert default_db_path() == "/srv/state/pimon/monitor.db"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", "/home/pi")
    assert default_db_path() == "/home/pi/.local/state/pimon/monitor.db"


def test_columns_cover_the_sample_fields() -> None:
    assert COLUMNS == ("cpu_percent", "mem_percent", "swap_percent", "disk_percent", "temp_c",
                       "load1", "load5", "load15", "rtt_ms")  # fmt: skip
