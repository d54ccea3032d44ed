"""The alert outbox and couriers: durable across reopen, in order, with backoff and deadline."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from pimon.alerts import Alert, AlertConfig, Event
from pimon.membership import State, Transition
from pimon.monitor import Monitor, MonitorConfig
from pimon.notifiers import Notifier, build, parse_notifiers
from pimon.outbox import Courier, Outbox, backoff
from pimon.store import Store
from tests.test_notifiers import Receiver


def alert(node: str = "pi1", at: float = 100.0) -> Alert:
    return Alert(Event.NODE_DOWN, node, "up", "down", "refused", at, f"{node} is down: refused")


class Clock:
    """A settable clock."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    try:
        yield r
    finally:
        await r.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def webhook(session: aiohttp.ClientSession, url: str, name: str) -> Notifier:
    [n] = build(
        parse_notifiers({"alerts": [{"kind": "webhook", "url": url, "name": name}]}), session
    )
    return n


async def test_backoff_doubles_up_to_five_minutes() -> None:
    assert [backoff(n) for n in (1, 2, 3, 4, 9, 10, 50)] == [1, 2, 4, 8, 256, 300, 300]


async def test_queued_alert_survives_reopen(tmp_path: Path) -> None:
    db = str(tmp_path / "monitor.db")
    box = Outbox(db)
    assert await box.open(["hook"], 1000.0) == {}
    a = alert()
    await box.add([("hook", a)], 1000.0, deadline=3600.0)
    await box.close()

    box = Outbox(db)
    assert await box.open(["hook"], 1001.0) == {"hook": 1}
    entry = await box.head("hook")
    assert entry is not None and entry.alert == a
    assert (entry.attempts, entry.deadline) == (0, 4600.0)
    await box.close()


async def test_delivered_is_not_resent_after_reopen(
    tmp_path: Path, receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    db = str(tmp_path / "monitor.db")
    box = Outbox(db)
    await box.open(["hook"], 1000.0)
    await box.add([("hook", alert("pi1")), ("hook", alert("pi2"))], 1000.0, deadline=60.0)
    courier = Courier(webhook(session, receiver.url, "hook"), box, list, clock=Clock())
    courier.stats.pending = 2
    entry = await box.head("hook")
    assert entry is not None
    await courier.deliver(entry)
    assert [p["node"] for p in receiver.payloads()] == ["pi1"]
    assert (courier.stats.sent, courier.stats.pending) == (1, 1)
    assert courier.stats.last_success_at == 1000.0
    await box.close()

    box = Outbox(db)
    assert await box.open(["hook"], 1001.0) == {"hook": 1}
    entry = await box.head("hook")
    assert entry is not None and entry.alert.node == "pi2"
    await box.close()


async def test_failures_back_off_then_expire_at_the_deadline(
    tmp_path: Path, receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    receiver.status = 500
    clock = Clock(1000.0)
    box = Outbox(str(tmp_path / "monitor.db"))
    await box.open(["hook"], clock.now)
    await box.add([("hook", alert())], clock.now, deadline=5.0)
    courier = Courier(webhook(session, receiver.url, "hook"), box, list, clock=clock)
    courier.stats.pending = 1
    schedule = []
    for _ in range(3):
        entry = await box.head("hook")
        assert entry is not None
        clock.now = max(clock.now, entry.next_at)
        schedule.append(entry.next_at - 1000.0)
        await courier.deliver(entry)
    # Tried at +0, +1 and +3; the next try (+7) would be past the deadline (+5): given up.
    assert schedule == [0.0, 1.0, 3.0]
    assert await box.head("hook") is None
    assert (courier.stats.failed, courier.stats.expired, courier.stats.pending) == (3, 1, 0)
    assert courier.stats.last_error == "HTTP 500: broken"
    assert len(receiver.requests) == 3
    await box.close()


async def test_a_failing_notifier_holds_up_only_its_own_queue(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    good, bad = Receiver(), Receiver(status=500)
    await good.start()
    await bad.start()
    box = Outbox(str(tmp_path / "monitor.db"))
    await box.open(["good", "bad"], time.time())
    rows = [(name, alert(f"pi{i}")) for i in range(3) for name in ("good", "bad")]
    await box.add(rows, time.time(), deadline=3600.0)
    couriers = [
        Courier(webhook(session, r.url, name), box, list)
        for name, r in (("good", good), ("bad", bad))
    ]
    tasks = [asyncio.create_task(c.run()) for c in couriers]
    try:
        await good.wait(3)
        assert [p["node"] for p in good.payloads()] == ["pi0", "pi1", "pi2"]  # in order
        # The bad one keeps retrying its head and never skips ahead.
        assert {p["node"] for p in bad.payloads()} == {"pi0"}
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await good.close()
        await bad.close()
        await box.close()


async def test_rows_of_removed_notifiers_are_dropped(tmp_path: Path) -> None:
    db = str(tmp_path / "monitor.db")
    box = Outbox(db)
    await box.open(["old", "kept"], 0.0)
    await box.add([("old", alert()), ("kept", alert())], 0.0, deadline=60.0)
    await box.close()
    box = Outbox(db)
    assert await box.open(["kept"], 1.0) == {"kept": 1}
    await box.close()
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT notifier, status FROM alert_outbox ORDER BY id").fetchall()
    assert rows == [("old", "dropped"), ("kept", "pending")]


async def test_shares_the_database_with_the_history_store(tmp_path: Path) -> None:
    db = str(tmp_path / "monitor.db")
    box = Outbox(db)
    await box.open(["hook"], 0.0)  # the table first, the store's schema after
    store = Store(db)
    store.open()
    store.close()
    await box.add([("hook", alert())], 0.0, deadline=60.0)
    await box.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT count(*) FROM alert_outbox").fetchone()[0] == 1


async def test_monitor_turns_a_transition_into_a_webhook_post(
    tmp_path: Path, receiver: Receiver
) -> None:
    notifiers = parse_notifiers({"alerts": [{"kind": "webhook", "url": receiver.url}]})
    config = MonitorConfig(
        interval=0.2, db=str(tmp_path / "monitor.db"), alerts=AlertConfig(notifiers=notifiers)
    )
    monitor = Monitor(config)
    await monitor.start()
    try:
        monitor.membership.add("pi1", mode="pull", source="api", address=None, now=0.0)
        monitor.membership.nodes["pi1"].state = State.DOWN
        monitor.publish([Transition("pi1", State.UP, State.DOWN, 1.0, "connection refused")])
        await receiver.wait(1)
        [courier] = monitor.alerts.couriers
        for _ in range(500):  # the answer is in; its bookkeeping follows on the loop
            if courier.stats.sent:
                break
            await asyncio.sleep(0.01)
        [payload] = receiver.payloads()
        assert (
            payload["event"] == "node_down" and payload["text"] == "pi1 is down: connection refused"
        )
        assert payload["monitor"]
        snapshot = monitor.alerts.snapshot()
        [stats] = snapshot["notifiers"]
        assert (stats["name"], stats["kind"], stats["sent"], stats["pending"]) == (
            "webhook",
            "webhook",
            1,
            0,
        )
        assert snapshot["isolated"] is False and snapshot["deadman"] is None
        families = {f.name: f for f in monitor.alerts.families()}
        [(labels, value)] = families["pimon_alerts_sent_total"].samples
        assert labels == {"notifier": "webhook", "kind": "webhook"} and value == 1
    finally:
        await monitor.stop()


async def test_unusable_database_still_delivers_from_memory(
    tmp_path: Path, receiver: Receiver
) -> None:
    notifiers = parse_notifiers({"alerts": [{"kind": "webhook", "url": receiver.url}]})
    # A directory is no database: the outbox falls back to memory and says so.
    config = MonitorConfig(db=str(tmp_path), alerts=AlertConfig(notifiers=notifiers))
    monitor = Monitor(config)
    await monitor.start()
    try:
        monitor.membership.add("pi1", mode="pull", source="api", address=None, now=0.0)
        monitor.membership.nodes["pi1"].state = State.DEGRADED
        monitor.publish([Transition("pi1", State.UP, State.DEGRADED, 1.0, "disk / 99% full")])
        await receiver.wait(1)
        assert receiver.payloads()[0]["problems"] == ["disk / 99% full"]
    finally:
        await monitor.stop()
