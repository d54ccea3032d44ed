"""The alert service inside a real monitor: transitions in, notifications out, restarts."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from pimon.alertconfig import AlertConfig, parse_notifiers
from pimon.alertformat import Alert
from pimon.membership import State, Transition
from pimon.monitor import Monitor, MonitorConfig
from tests.receivers import Receiver


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


# Restarts: what was reported stays reported.


def alerting(db: Path, url: str, **table: object) -> MonitorConfig:
    notifiers = parse_notifiers({"alerts": [{"kind": "webhook", "url": url, **table}]})
    return MonitorConfig(interval=0.2, db=str(db), alerts=AlertConfig(notifiers=notifiers))


async def started(config: MonitorConfig, *nodes: str) -> Monitor:
    """Start a monitor that knows ``nodes`` (unknown), as one restored from its database."""
    monitor = Monitor(config)
    for name in nodes:  # push nodes stay unknown for 40 s: no conviction behind our back
        monitor.membership.add(name, mode="push", source="push", address=None, now=time.time())
    await monitor.start()
    return monitor


def move(monitor: Monitor, node: str, old: State, new: State, reason: str) -> None:
    monitor.membership.nodes[node].state = new
    monitor.publish([Transition(node, old, new, time.time(), reason)])


async def settled(monitor: Monitor, sent: int) -> None:
    """Wait until the couriers have recorded ``sent`` deliveries in all."""
    for _ in range(500):  # the answer is in; its bookkeeping follows on the loop
        if monitor.alerts.totals()[0] >= sent:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never {sent} sent: {monitor.alerts.snapshot()}")


async def test_a_restarted_monitor_resolves_what_it_reported_before(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = alerting(tmp_path / "monitor.db", receiver.url)
    monitor = await started(config, "pi1", "pi2")
    try:
        move(monitor, "pi1", State.UP, State.DOWN, "connection refused")
        await receiver.wait(1)
        await settled(monitor, 1)
    finally:
        await monitor.stop()
    [down] = receiver.payloads()

    monitor = await started(config, "pi1", "pi2")
    try:
        assert monitor.alerts.engine.firing() == [Alert.from_payload({**down, "monitor": ""})]
        move(monitor, "pi1", State.UNKNOWN, State.DOWN, "connection refused")
        move(monitor, "pi2", State.UNKNOWN, State.UP, "heartbeat ok")
        move(monitor, "pi1", State.DOWN, State.UP, "heartbeat ok")
        await receiver.wait(2)
        await settled(monitor, 1)
        assert monitor.alerts.engine.firing() == []
    finally:
        await monitor.stop()
    # Down was not reported twice, and its recovery came after all.
    events = [(p["event"], p["node"], p["resolves"]) for p in receiver.payloads()]
    assert events == [("node_down", "pi1", None), ("node_recovered", "pi1", "node_down")]
    with sqlite3.connect(tmp_path / "monitor.db") as conn:
        assert conn.execute("SELECT count(*) FROM alert_firing").fetchone()[0] == 0


async def test_alertmanager_gets_the_restored_alert_again_then_its_resolution(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = alerting(tmp_path / "monitor.db", receiver.url, kind="alertmanager", resend=0.2)
    monitor = await started(config, "pi1")
    try:
        move(monitor, "pi1", State.UP, State.DOWN, "connection refused")
        [first] = (await receiver.wait(1))[0].json
        await settled(monitor, 1)
    finally:
        await monitor.stop()

    receiver.requests.clear()
    monitor = await started(config, "pi1")
    try:
        # Re-sent as still firing, though this monitor has not seen pi1 down itself.
        [again] = (await receiver.wait(1))[0].json
        assert again["labels"] == first["labels"] and again["startsAt"] == first["startsAt"]
        assert again["endsAt"] > again["startsAt"]
        move(monitor, "pi1", State.UNKNOWN, State.UP, "heartbeat ok")
        for _ in range(50):  # bounded: re-sends of the firing alert may come first
            requests = await receiver.wait(len(receiver.requests) + 1)
            resolved = [b for r in requests for b in r.json if b["endsAt"] == b["startsAt"]]
            if resolved:
                break
        [resolution] = resolved
        assert resolution["labels"] == first["labels"]
    finally:
        await monitor.stop()


async def test_alerts_of_nodes_gone_meanwhile_are_forgotten(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = alerting(tmp_path / "monitor.db", receiver.url)
    monitor = await started(config, "pi1")
    try:
        move(monitor, "pi1", State.UP, State.DOWN, "connection refused")
        await receiver.wait(1)
    finally:
        await monitor.stop()
    monitor = await started(config, "pi2")  # pi1 was deregistered while it was away
    try:
        assert monitor.alerts.engine.firing() == []
    finally:
        await monitor.stop()
    with sqlite3.connect(tmp_path / "monitor.db") as conn:
        assert conn.execute("SELECT count(*) FROM alert_firing").fetchone()[0] == 0
