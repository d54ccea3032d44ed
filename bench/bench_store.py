"""Measure the history store: bytes per node-day, projected 1-year size, write throughput.

Run ``python -m bench.bench_store`` (about a minute) or ``--tiny`` for a smoke test.

1. A day of 1 s samples for a few nodes goes through the real Store with a fake
   clock, rollups and retention every 60 s; dbstat gives bytes per node-day of
   each tier.
2. Raw samples for many nodes are written as fast as the Store commits them:
   samples/s on one writer thread.
3. That database then gets a year of quarter blocks and a week of minute blocks
   made by the real encoder from synthetic series, so the file is the size a
   cluster of that many nodes reaches after a year.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sqlite3
import tempfile
import time
from dataclasses import dataclass

from pimon import rollup
from pimon.rollup import COLUMNS, MINUTE, QUARTER
from pimon.store import Store

DAY = 86400
T0 = 1_800_000_000.0 - 1_800_000_000.0 % DAY  # midnight UTC, so blocks align


class FakeClock:
    """A settable clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Series:
    """Plausible metrics for one node: random walks plus noise, like a busy Pi."""

    rng: random.Random
    cpu: float = 20.0
    mem: float = 40.0
    disk: float = 30.0
    temp: float = 48.0

    def next(self) -> tuple[float | None, ...]:
        """Return the next sample in COLUMNS order."""
        r = self.rng
        self.cpu = min(100.0, max(0.0, self.cpu + r.gauss(0, 3)))
        self.mem = min(100.0, max(0.0, self.mem + r.gauss(0, 0.05)))
        self.disk = min(100.0, self.disk + r.random() * 0.0001)
        self.temp = 40 + self.cpu * 0.2 + r.gauss(0, 0.5)
        cpu = min(100.0, max(0.0, self.cpu + r.gauss(0, 5)))
        load = self.cpu / 25
        return (cpu, self.mem, 0.0, self.disk, self.temp, load, load * 0.9, load * 0.8,
                r.lognormvariate(0, 0.5))  # fmt: skip


def table_bytes(path: str) -> dict[str, int]:
    """Return bytes of pages per table (indexes counted with their table) via dbstat."""
    conn = sqlite3.connect(path)
    try:
        names = dict(conn.execute("SELECT name, tbl_name FROM sqlite_master"))
        out: dict[str, int] = {}
        for name, size in conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"):
            table = names.get(name, name)
            out[table] = out.get(table, 0) + size
        return out
    finally:
        conn.close()


def day_run(directory: str, nodes: int, seconds: int) -> dict[str, float]:
    """Write ``seconds`` of 1 s samples for ``nodes`` via the Store; return bytes per node-day."""
    path = os.path.join(directory, "day.db")
    clock = FakeClock(T0)
    store = Store(path, clock=clock, commit_interval=3600, maintenance_interval=math.inf)
    store.open()
    series = [Series(random.Random(n)) for n in range(nodes)]
    for second in range(seconds):
        at = T0 + second
        for n, s in enumerate(series):
            store.record_sample(f"pi-{n:02d}", at, dict(zip(COLUMNS, s.next(), strict=True)))
        if second % 60 == 59:
            clock.now = at + 1
            store.maintain()
            store.flush(60)
    clock.now = T0 + seconds + 60
    store.maintain()
    store.flush(60)
    store.close()
    sizes = table_bytes(path)
    conn = sqlite3.connect(path)
    blobs = dict(conn.execute("SELECT tier, SUM(length(data)) FROM rollups GROUP BY tier"))
    conn.close()
    days = seconds / DAY
    raw_kept_days = min(seconds, 6 * 3600) / DAY
    rollups = sizes.get("rollups", 0)
    total_blob = sum(blobs.values()) or 1
    # Split the rollups table's pages between tiers in proportion to their blob bytes.
    return {
        "raw": sizes.get("samples_raw", 0) / nodes / raw_kept_days,
        "minute": rollups * blobs.get(MINUTE.step, 0) / total_blob / nodes / days,
        "quarter": rollups * blobs.get(QUARTER.step, 0) / total_blob / nodes / days,
    }


def throughput_run(path: str, nodes: int, seconds: int) -> tuple[int, float]:
    """Write ``seconds`` of samples for ``nodes`` and return (count, committed samples/s)."""
    store = Store(path, clock=lambda: T0 + seconds, maintenance_interval=math.inf)
    store.open()
    rng = random.Random(7)
    values = [dict(zip(COLUMNS, Series(rng).next(), strict=True)) for _ in range(64)]
    names = [f"node-{n:03d}" for n in range(nodes)]
    start = time.perf_counter()
    count = 0
    for second in range(seconds):
        at = T0 + second + 0.001 * rng.random()
        for n, name in enumerate(names):
            store.record_sample(name, at, values[(second + n) % 64])
        count += nodes
        if second % 600 == 599:
            store.flush(120)  # keep the queue (memory) bounded, like a real producer would be
    store.flush(120)
    elapsed = time.perf_counter() - start
    store.close()
    return count, count / elapsed


def fill_rollups(path: str, nodes: int, minute_days: int, quarter_days: int) -> None:
    """Add blocks made by the real encoder: a week of minutes, a year of quarters, per node."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    keys = [row[0] for row in conn.execute("SELECT key FROM node_keys")][:nodes]
    for tier, days in ((MINUTE, minute_days), (QUARTER, quarter_days)):
        # Distinct blocks from noisy 1 s-like series (averages are smoother, so this
        # overstates the size a little), reused round-robin: only their sizes matter here.
        pool = []
        for seed in range(97):
            series = Series(random.Random(seed))
            slots = [series.next() for _ in range(tier.slots)]
            pool.append(rollup.encode_block([[s[i] for s in slots] for i in range(len(COLUMNS))]))
        blocks = days * DAY // tier.span
        conn.executemany(
            "INSERT INTO rollups (tier, node, start, data) VALUES (?, ?, ?, ?)",
            (
                (tier.step, key, T0 - (b + 1) * tier.span, pool[(b * len(keys) + n) % len(pool)])
                for b in range(blocks)
                for n, key in enumerate(keys)
            ),
        )
    # Mark the blocks as rolled up to the newest raw sample, as a running monitor would.
    newest = conn.execute("SELECT MAX(at) FROM samples_raw").fetchone()[0] / 1000
    conn.executemany(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
        [(tier.meta_key, newest - newest % tier.step) for tier in (MINUTE, QUARTER)],
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def read_run(path: str, node: str, now: float) -> list[tuple[str, float]]:
    """Time one node's chart reads at each resolution; return (label, milliseconds)."""
    store = Store(path, clock=lambda: now, maintenance_interval=math.inf)
    store.open()
    out = []
    for label, span, step in (
        ("1 h raw", 3600, None),
        ("6 h raw, 60 s steps", 6 * 3600 - 60, 60),
        ("7 d minutes, 1 h steps", 7 * DAY, 3600),
        ("365 d quarters, 1 d steps", 365 * DAY, DAY),
    ):
        started = time.perf_counter()
        rows = store.samples(node, now - span, now, step)
        out.append((f"{label} ({len(rows)} points)", (time.perf_counter() - started) * 1000))
    store.close()
    return out


def main() -> None:
    """Run the three measurements and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a few seconds' smoke test")
    args = parser.parse_args()
    day_nodes, day_s = (2, 3600) if args.tiny else (3, DAY)
    nodes, raw_s = (5, 600) if args.tiny else (100, 6 * 3600)
    minute_days, quarter_days = (1, 3) if args.tiny else (7, 365)

    with tempfile.TemporaryDirectory() as directory:
        started = time.perf_counter()
        per_day = day_run(directory, day_nodes, day_s)
        path = os.path.join(directory, "year.db")
        count, rate = throughput_run(path, nodes, raw_s)
        fill_rollups(path, nodes, minute_days, quarter_days)
        file_bytes = os.path.getsize(path)  # the WAL is gone once the last connection closed
        sizes = table_bytes(path)
        reads = read_run(path, f"node-{nodes // 2:03d}", T0 + raw_s)
        elapsed = time.perf_counter() - started

    # Steady state after a year: 6 h of raw, 7 days of minutes, 365 days of quarters.
    projected = 100 * (per_day["raw"] / 4 + per_day["minute"] * 7 + per_day["quarter"] * 365)
    rows = [
        (f"day through the Store, {day_nodes} nodes x {day_s} s: bytes per node-day", ""),
        *((f"  {tier}", f"{bytes_:,.0f}") for tier, bytes_ in per_day.items()),
        (
            "projected after 1 year, 100 nodes at 1 s (MB)",
            "(tiny run)" if args.tiny else f"{projected / 1e6:.1f}",
        ),
        (f"write throughput, {count:,} samples of {nodes} nodes (samples/s)", f"{rate:,.0f}"),
        (f"built file: {nodes} nodes, {raw_s / 3600:g} h raw, {minute_days} d minutes,", ""),
        (f"  {quarter_days} d quarters (MB)", f"{file_bytes / 1e6:.1f}"),
        *(
            (f"  {table} (MB)", f"{bytes_ / 1e6:.1f}")
            for table, bytes_ in sorted(sizes.items())
            if bytes_ > 100_000
        ),
        (f"read one node of {nodes} (ms):", ""),
        *((f"  {label}", f"{ms:.0f}") for label, ms in reads),
        ("bench time (s)", f"{elapsed:.0f}"),
    ]
    for label, value in rows:
        print(f"{label:<66} {value:>12}")


if __name__ == "__main__":
    main()
