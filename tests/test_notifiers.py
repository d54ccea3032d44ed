"""Notifier kinds against a real aiohttp receiver on 127.0.0.1 port 0."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pimon.alertconfig import KINDS, parse_notifiers
from pimon.alertformat import Alert, Event, make_test_alert
from pimon.notifiers import NOTIFIERS, Alertmanager, DeliveryError, Notifier, build, send_test
from tests.receivers import Receiver

DOWN = Alert(Event.NODE_DOWN, "pi2", "up", "down", "connection refused", 1.7e9, "pi2 is down: x")


def notifier(
    session: aiohttp.ClientSession | None, table: dict[str, Any], text: str = ""
) -> Notifier:
    [config] = parse_notifiers({"alerts": [table]}, text=text, path="pimon.toml")
    [n] = build([config], session)
    return n


async def test_webhook_posts_the_versioned_payload(receiver: Receiver, session) -> None:
    hook = {"kind": "webhook", "url": receiver.url + "/hook", "headers": {"X-Key": "s3cret"}}
    alert = replace(DOWN, monitor="watcher")
    await notifier(session, hook).send(alert)
    [req] = receiver.requests
    assert (req.method, req.path) == ("POST", "/hook")
    assert req.headers["X-Key"] == "s3cret"
    assert req.headers["Content-Type"] == "application/json"
    body = req.json
    assert body == alert.payload()
    assert body["version"] == 1 and body["event"] == "node_down"
    assert body["severity"] == "critical" and body["node"] == "pi2"
    assert (body["old"], body["new"], body["reason"]) == ("up", "down", "connection refused")
    assert body["text"] == "pi2 is down: x" and body["monitor"] == "watcher"


async def test_ntfy_sets_title_priority_tags_and_token(receiver: Receiver, session) -> None:
    ntfy = {"kind": "ntfy", "url": receiver.url + "/pimon-alerts", "token": "tk_123"}
    n = notifier(session, ntfy)
    await n.send(DOWN)
    recovered = Alert(Event.NODE_RECOVERED, "pi2", "down", "up", "ok", 2e9, "pi2 recovered")
    await n.send(recovered)
    down, up = receiver.requests
    assert down.path == "/pimon-alerts" and down.body == b"pi2 is down: x"
    assert down.headers["Priority"] == "urgent"
    assert down.headers["Title"] == "pimon: pi2 node down"
    assert down.headers["Tags"] == "rotating_light,node_down"
    assert down.headers["Authorization"] == "Bearer tk_123"
    assert up.headers["Priority"] == "default"
    assert up.headers["Tags"].startswith("white_check_mark")


async def test_slack_text_escapes_control_characters(receiver: Receiver, session) -> None:
    alert = replace(DOWN, text="pi2 is down: <b> & co")
    await notifier(session, {"kind": "slack", "url": receiver.url}).send(alert)
    assert receiver.payloads() == [{"text": ":red_circle: pi2 is down: &lt;b&gt; &amp; co"}]


async def test_discord_content_never_mentions(receiver: Receiver, session) -> None:
    alert = replace(DOWN, text="pi2 is down: @everyone " + "x" * 3000)
    await notifier(session, {"kind": "discord", "url": receiver.url}).send(alert)
    [body] = receiver.payloads()
    assert body["allowed_mentions"] == {"parse": []}
    assert body["content"].startswith(":red_circle: pi2 is down: @everyone")
    assert len(body["content"]) == 2000


async def test_alertmanager_fires_then_resolves_with_the_same_labels(
    receiver: Receiver, session
) -> None:
    table = {"kind": "alertmanager", "url": receiver.url, "labels": {"team": "ops"}}
    n = notifier(session, table)
    alert = replace(DOWN, monitor="watcher")
    await n.send(alert)
    recovered = Alert(
        Event.NODE_RECOVERED, "pi2", "down", "up", "ok", 1.7e9 + 60, "pi2 recovered",
        resolves=Event.NODE_DOWN, monitor="watcher",
    )  # fmt: skip
    await n.send(recovered)
    fired, resolved = receiver.payloads("/api/v2/alerts")
    [f], [r] = fired, resolved
    assert f["labels"] == {
        "alertname": "PimonNodeDown",
        "node": "pi2",
        "state": "down",
        "severity": "critical",
        "team": "ops",
        "monitor": "watcher",
    }
    assert f["annotations"]["summary"] == "pi2 is down: x"
    assert f["startsAt"] == "2023-11-14T22:13:20.000Z"
    assert f["endsAt"] > "2025"  # in force until re-sent or resolved
    assert r["labels"] == f["labels"]
    assert r["endsAt"] == "2023-11-14T22:14:20.000Z"


async def test_alertmanager_refresh_resends_what_fires(receiver: Receiver, session) -> None:
    n = notifier(session, {"kind": "alertmanager", "url": receiver.url, "resend": 5})
    assert isinstance(n, Alertmanager) and n.refresh_interval == 5.0
    await n.refresh([DOWN], now=1.7e9 + 100)
    [[item]] = receiver.payloads()
    assert item["labels"]["alertname"] == "PimonNodeDown"
    assert item["endsAt"] == "2023-11-14T22:15:20.000Z"  # now + 4 x resend
    await n.refresh([], now=1.7e9 + 200)
    assert len(receiver.requests) == 1  # nothing firing, nothing sent


async def test_http_error_is_a_delivery_error(receiver: Receiver, session) -> None:
    receiver.status = 500
    with pytest.raises(DeliveryError, match="HTTP 500: broken"):
        await notifier(session, {"kind": "webhook", "url": receiver.url}).send(DOWN)


async def test_hanging_receiver_times_out(receiver: Receiver, session) -> None:
    receiver.delay = 30.0
    n = notifier(session, {"kind": "webhook", "url": receiver.url, "timeout": 0.3})
    started = time.monotonic()
    with pytest.raises(DeliveryError, match=r"no answer within 0.3s"):
        await n.send(DOWN)
    assert time.monotonic() - started < 5.0


async def test_refused_connection_is_a_delivery_error(session) -> None:
    n = notifier(session, {"kind": "webhook", "url": "http://127.0.0.1:1/hook"})
    with pytest.raises(DeliveryError, match="Connect"):
        await n.send(DOWN)


async def test_exec_passes_the_event_in_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIMON_TOKEN", "cluster-secret")
    out = tmp_path / "env.json"
    script = (
        "import json, os, sys;"
        "json.dump({k: v for k, v in os.environ.items() if k.startswith('PIMON_')},"
        " open(sys.argv[1], 'w'))"
    )
    n = notifier(None, {"kind": "exec", "command": [sys.executable, "-c", script, str(out)]})
    alert = Alert(
        Event.NODE_DEGRADED, "pi3", "up", "degraded", "disk / 95% full; hot", 5.0,
        "pi3 is degraded: disk / 95% full; hot", problems=("disk / 95% full", "hot"),
    )  # fmt: skip
    await n.send(alert)
    env = json.loads(out.read_text())
    assert env["PIMON_EVENT"] == "node_degraded" and env["PIMON_SEVERITY"] == "warning"
    assert env["PIMON_NODE"] == "pi3" and env["PIMON_OLD"] == "up"
    assert env["PIMON_NEW"] == "degraded" and env["PIMON_AT"] == "5.0"
    assert env["PIMON_TEXT"] == "pi3 is degraded: disk / 95% full; hot"
    assert env["PIMON_PROBLEMS"] == "disk / 95% full; hot"
    assert env["PIMON_VERSION"] == "1"
    assert json.loads(env["PIMON_PAYLOAD"]) == alert.payload()
    assert "PIMON_TOKEN" not in env


async def test_exec_string_command_is_split_into_words_never_run_by_a_shell(
    tmp_path: Path,
) -> None:
    out = tmp_path / "arg"
    script = "import sys; open(sys.argv[1], 'w').write(sys.argv[2])"
    command = f"{sys.executable} -c \"{script}\" '{out}' '$HOME; echo hi'"
    await notifier(None, {"kind": "exec", "command": command}).send(DOWN)
    assert out.read_text() == "$HOME; echo hi"


async def test_exec_failure_reports_exit_status_and_output() -> None:
    script = "import sys; print('pager unreachable'); sys.exit(3)"
    n = notifier(None, {"kind": "exec", "command": [sys.executable, "-c", script]})
    with pytest.raises(DeliveryError, match="exited with 3: pager unreachable"):
        await n.send(DOWN)


async def test_exec_timeout_kills_the_command_and_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    command = ["sh", "-c", f"sleep 30 & echo $! > {pidfile}; wait"]
    n = notifier(None, {"kind": "exec", "command": command, "timeout": 0.5})
    started = time.monotonic()
    with pytest.raises(DeliveryError, match=r"still running after 0\.5s; killed"):
        await n.send(DOWN)
    assert time.monotonic() - started < 5.0
    child = int(pidfile.read_text())
    for _ in range(50):  # bounded: the kernel needs a moment to tear it down
        if not _alive(child):
            break
        await asyncio.sleep(0.05)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


async def test_send_test_reports_each_notifier(receiver: Receiver) -> None:
    configs = parse_notifiers(
        {
            "alerts": [
                {"kind": "webhook", "url": receiver.url, "name": "good"},
                {"kind": "webhook", "url": "http://127.0.0.1:1", "name": "bad"},
                {"kind": "webhook", "url": receiver.url, "name": "picky", "events": ["node_down"]},
            ]
        }
    )
    results = await send_test(configs, make_test_alert(1.0, "watcher"))
    assert [(n.name, err is None) for n, err in results] == [
        ("good", True),
        ("bad", False),
        ("picky", True),  # a test goes to every notifier, whatever its filters
    ]
    assert [p["event"] for p in receiver.payloads()] == ["test", "test"]


def test_every_kind_of_the_config_has_a_notifier() -> None:
    assert list(NOTIFIERS) == list(KINDS)
