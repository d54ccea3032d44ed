"""Metric samples at three resolutions: compact rows, rollups, retention and reads.

Raw samples are one row each, keyed by time so every commit appends to the
end of the table (few pages written per batch: SD cards wear out). Values are
integers of 1/100 unit, which SQLite stores in 1-3 bytes instead of 8 for a
REAL. Minute and quarter-hour averages are packed per node into blocks (an
hour of minutes, a day of quarters) of half floats, column by column, zlib
compressed: a row per average would cost ~40 bytes and break the size budget.
"""

from __future__ import annotations

import math
import sqlite3
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

COLUMNS = (
    "cpu_percent",
    "mem_percent",
    "swap_percent",
    "disk_percent",
    "temp_c",
    "load1",
    "load5",
    "load15",
    "rtt_ms",
)
SCALE = 100
# Rollups wait this long after a bucket ends, for samples still queued for the writer.
LAG_S = 10.0
_VALUE_LIMIT = 1e13  # scaled, still an exact 64-bit integer
# Half floats keep ~3 significant digits, plenty for averages on a chart.
_HALF_MAX = 65504.0
_CODEC = 1

Sample = dict[str, float | None]
Averages = Sequence[float | None]


@dataclass(frozen=True, slots=True)
class Tier:
    """A rollup resolution: buckets of ``step`` seconds packed in blocks of ``span`` seconds."""

    step: int
    span: int

    @property
    def slots(self) -> int:
        """Return the number of buckets in one block."""
        return self.span // self.step

    @property
    def meta_key(self) -> str:
        """Return the meta key holding the end of the last rolled-up bucket."""
        return f"rolled_{self.step}"


MINUTE = Tier(60, 3600)
QUARTER = Tier(900, 86400)
TIERS = (MINUTE, QUARTER)


@dataclass(frozen=True, slots=True)
class Retention:
    """How long each resolution of samples is kept, in seconds."""

    raw_s: float = 6 * 3600
    minute_s: float = 7 * 86400
    quarter_s: float = 365 * 86400

    def __post_init__(self) -> None:
        if not 0 < self.raw_s <= self.minute_s <= self.quarter_s:
            raise ValueError("retention must satisfy 0 < raw_s <= minute_s <= quarter_s")
        # Both rollups are computed from raw samples, so raw must outlive a quarter bucket.
        if self.raw_s < 2 * QUARTER.step:
            raise ValueError(f"retention raw_s must be at least {2 * QUARTER.step} s")


# Scaling in SQL costs a third of doing it in Python, per sample. Rounded REALs land in
# INTEGER columns as integers (1-3 bytes); NaN, infinities and absurd values become NULL.
INSERT_RAW = (
    "INSERT OR REPLACE INTO samples_raw VALUES (round(?1 * 1000), ?2, "
    + ", ".join(
        f"CASE WHEN abs(?{i}) < {_VALUE_LIMIT:.0e} THEN round(?{i} * {SCALE}) END"
        for i in range(3, 3 + len(COLUMNS))
    )
    + ")"
)


def encode_block(columns: Sequence[Sequence[float | None]]) -> bytes:
    """Pack per-column bucket averages (None = no data) into a compressed blob."""
    flat = [_half(value) for column in columns for value in column]
    packed = struct.pack(f"<{len(flat)}e", *flat)
    # Low bytes first, then high bytes: the slowly changing high bytes compress ~10% better.
    return bytes([_CODEC]) + zlib.compress(packed[0::2] + packed[1::2])


def decode_block(data: bytes, slots: int) -> list[list[float | None]]:
    """Unpack a blob made by encode_block into one list of ``slots`` values per column."""
    if data[0] != _CODEC:
        raise ValueError(f"unknown rollup block codec {data[0]}")
    shuffled = zlib.decompress(data[1:])
    half = len(shuffled) // 2
    packed = bytearray(len(shuffled))
    packed[0::2], packed[1::2] = shuffled[:half], shuffled[half:]
    flat = struct.unpack(f"<{slots * len(COLUMNS)}e", packed)
    return [
        [None if math.isnan(v) else v for v in flat[i * slots : (i + 1) * slots]]
        for i in range(len(COLUMNS))
    ]


def _half(value: float | None) -> float:
    return math.nan if value is None else max(-_HALF_MAX, min(_HALF_MAX, value))


def watermark(conn: sqlite3.Connection, tier: Tier) -> float | None:
    """Return the end of the last bucket of ``tier`` rolled up, or None before the first."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (tier.meta_key,)).fetchone()
    return None if row is None else float(row[0])


_AVERAGES = ", ".join(f"AVG({c})" for c in COLUMNS)


def roll_up(conn: sqlite3.Connection, now: float) -> int:
    """Average raw samples into every tier up to ``now``; return the buckets written."""
    return sum(_roll_tier(conn, tier, now) for tier in TIERS)


def _roll_tier(conn: sqlite3.Connection, tier: Tier, now: float) -> int:
    target = math.floor((now - LAG_S) / tier.step) * tier.step
    done = watermark(conn, tier)
    if done is None:
        first = conn.execute("SELECT MIN(at) FROM samples_raw").fetchone()[0]
        if first is None:
            return 0
        done = math.floor(first / 1000 / tier.step) * tier.step
    if target <= done:
        return 0
    # Integer division puts 59.999 s and 60.000 s in different minute buckets, exactly.
    rows = conn.execute(
        f"SELECT node, at / {tier.step * 1000}, {_AVERAGES} FROM samples_raw"
        " WHERE at >= ? AND at < ? GROUP BY 1, 2",
        (round(done * 1000), round(target * 1000)),
    ).fetchall()
    blocks: dict[tuple[int, int], dict[int, Averages]] = {}
    for node, bucket, *averages in rows:
        start = bucket * tier.step
        block = start - start % tier.span
        blocks.setdefault((node, block), {})[(start - block) // tier.step] = averages
    for (node, block), slots in blocks.items():
        _merge_block(conn, tier, node, block, slots)
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (tier.meta_key, target),
    )
    return len(rows)


def _merge_block(
    conn: sqlite3.Connection, tier: Tier, node: int, block: int, slots: dict[int, Averages]
) -> None:
    found = conn.execute(
        "SELECT data FROM rollups WHERE tier = ? AND node = ? AND start = ?",
        (tier.step, node, block),
    ).fetchone()
    columns: list[list[float | None]] = (
        decode_block(found[0], tier.slots) if found else [[None] * tier.slots for _ in COLUMNS]
    )
    for slot, averages in slots.items():
        for column, value in zip(columns, averages, strict=True):
            column[slot] = None if value is None else value / SCALE
    conn.execute(
        "INSERT INTO rollups (tier, node, start, data) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (tier, node, start) DO UPDATE SET data = excluded.data",
        (tier.step, node, block, encode_block(columns)),
    )


def apply_retention(conn: sqlite3.Connection, now: float, retention: Retention) -> None:
    """Delete samples older than their tier keeps them; raw only once rolled up."""
    marks = [watermark(conn, tier) for tier in TIERS]
    if all(mark is not None for mark in marks):
        rolled = min(mark for mark in marks if mark is not None)
        cutoff = min(now - retention.raw_s, rolled)
        conn.execute("DELETE FROM samples_raw WHERE at < ?", (round(cutoff * 1000),))
    for tier, keep in ((MINUTE, retention.minute_s), (QUARTER, retention.quarter_s)):
        # A block goes once its newest bucket is past retention.
        conn.execute(
            "DELETE FROM rollups WHERE tier = ? AND start <= ?", (tier.step, now - keep - tier.span)
        )


_RAW_SELECT = (
    f"SELECT at, {', '.join(COLUMNS)} FROM samples_raw"
    " WHERE at >= ? AND at <= ? AND node = ? ORDER BY at"
)


def read_samples(
    conn: sqlite3.Connection,
    key: int,
    since: float,
    until: float,
    *,
    now: float,
    retention: Retention,
) -> list[Sample]:
    """Return a node's samples in [since, until] at the finest resolution still covering since."""
    age = now - since
    if age <= retention.raw_s:
        return _raw(conn, key, since, until)
    tier = MINUTE if age <= retention.minute_s else QUARTER
    rolled = watermark(conn, tier)
    out: list[Sample] = []
    if rolled is not None:
        out = _from_blocks(conn, key, tier, since, min(until, rolled))
        since = max(since, rolled)
    # Buckets not rolled up yet come straight from the raw tail, averaged the same way.
    return out + bucket_average(_raw(conn, key, since, until), tier.step)


def _raw(conn: sqlite3.Connection, key: int, since: float, until: float) -> list[Sample]:
    out: list[Sample] = []
    params = (math.ceil(since * 1000), math.floor(until * 1000), key)
    for at, *values in conn.execute(_RAW_SELECT, params):
        sample: Sample = {"at": at / 1000}
        for name, value in zip(COLUMNS, values, strict=True):
            sample[name] = None if value is None else value / SCALE
        out.append(sample)
    return out


def _from_blocks(
    conn: sqlite3.Connection, key: int, tier: Tier, since: float, end: float
) -> list[Sample]:
    """Return bucket averages with since <= at < end (end excluded: rolled buckets stop there)."""
    first = math.floor(since / tier.span) * tier.span
    blocks = conn.execute(
        "SELECT start, data FROM rollups WHERE tier = ? AND node = ? AND start >= ? AND start < ?"
        " ORDER BY start",
        (tier.step, key, first, end),
    )
    out: list[Sample] = []
    for start, data in blocks:
        columns = decode_block(data, tier.slots)
        for slot in range(tier.slots):
            at = start + slot * tier.step
            values = [column[slot] for column in columns]
            if since <= at < end and any(v is not None for v in values):
                sample: Sample = {"at": float(at)}
                sample.update(zip(COLUMNS, values, strict=True))
                out.append(sample)
    return out


def bucket_average(samples: Iterable[Sample], step: float) -> list[Sample]:
    """Average samples into buckets of ``step`` seconds, ignoring missing values."""
    if step <= 0:
        raise ValueError("step must be positive")
    sums: dict[float, list[float]] = {}
    counts: dict[float, list[int]] = {}
    for sample in samples:
        at = sample["at"]
        assert at is not None
        bucket = math.floor(at / step) * step
        if bucket not in sums:
            sums[bucket] = [0.0] * len(COLUMNS)
            counts[bucket] = [0] * len(COLUMNS)
        total, count = sums[bucket], counts[bucket]
        for i, name in enumerate(COLUMNS):
            value = sample.get(name)
            if value is not None:
                total[i] += value
                count[i] += 1
    out: list[Sample] = []
    for bucket in sorted(sums):
        averaged: Sample = {"at": float(bucket)}
        for name, total_, count_ in zip(COLUMNS, sums[bucket], counts[bucket], strict=True):
            averaged[name] = total_ / count_ if count_ else None
        out.append(averaged)
    return out
