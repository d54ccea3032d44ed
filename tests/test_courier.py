"""Couriers: each notifier's queue in order, with backoff, until the deadline."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from pimon.alertconfig import parse_notifiers
from pimon.courier import Courier, backoff
from pimon.notifiers import Notifier, build
from pimon.outbox import Outbox
from tests.conftest import Clock, alert
from tests.receivers import Receiver


def webhook(session: aiohttp.ClientSession, url: str, name: str) -> Notifier:
    [n] = build(
        parse_notifiers({"alerts": [{"kind": "webhook", "url": url, "name": name}]}), session
    )
    return n


async def test_backoff_doubles_up_to_five_minutes() -> None:
    assert [backoff(n) for n in (1, 2, 3, 4, 9, 10, 50)] == [1, 2, 4, 8, 256, 300, 300]


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
