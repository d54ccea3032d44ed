"""The alert outbox: queued alerts and the alerts in force, durable across reopen."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pimon.alertformat import Alert, Event
from pimon.outbox import Outbox
from pimon.store import Store
from tests.conftest import alert


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


async def test_alerts_in_force_survive_reopen_and_change_with_the_queue(tmp_path: Path) -> None:
    db = str(tmp_path / "monitor.db")
    box = Outbox(db)
    await box.open(["hook"], 0.0)
    assert await box.firing() == {}
    down1, down2 = alert("pi1", 10.0), alert("pi2", 11.0)
    await box.add([("hook", down1)], 10.0, deadline=60.0, firing={"pi1": down1, "pi2": down2})
    await box.close()

    box = Outbox(db)
    await box.open(["hook"], 20.0)
    assert await box.firing() == {"pi1": down1, "pi2": down2}
    back = Alert(Event.NODE_RECOVERED, "pi1", "down", "up", "ok", 21.0, "pi1 recovered")
    degraded = Alert(Event.NODE_DEGRADED, "pi2", "down", "degraded", "hot", 22.0, "pi2 hot")
    await box.add([("hook", back)], 21.0, deadline=60.0, firing={"pi2": degraded}, resolved=["pi1"])
    await box.close()

    box = Outbox(db)
    await box.open(["hook"], 30.0)
    assert await box.firing() == {"pi2": degraded}
    await box.close()
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT node, event, since FROM alert_firing").fetchall()
    assert rows == [("pi2", "node_degraded", 22.0)]


async def test_an_unreadable_alert_in_force_is_forgotten(tmp_path: Path) -> None:
    db = str(tmp_path / "monitor.db")
    box = Outbox(db)
    await box.open([], 0.0)
    await box.add([], 0.0, deadline=60.0, firing={"pi1": alert("pi1")})
    await box.close()
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO alert_firing VALUES ('pi2', 'node_exploded', 1.0, "
            """'{"event": "node_exploded", "at": 1.0, "id": "x"}')"""
        )
    box = Outbox(db)
    await box.open([], 1.0)
    assert list(await box.firing()) == ["pi1"]
    await box.close()
