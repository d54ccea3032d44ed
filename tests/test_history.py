"""``pimon history``: outages with durations and reasons, uptime columns, JSON, exit codes."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest
from rich.console import Console

from pimon import history
from pimon.history import find_outages, percent, render, report
from pimon.report import duration
from tests.conftest import Procs, get_json, run_pimon, states, wait_until

DETECTION_BOUND_S = 20.0
NOW = 1_800_000_000.0
HOUR = 3600.0


def transition(id_: int, node: str, change: str, at: float, reason: str = "") -> dict[str, Any]:
    old, new = change.split(">")
    return {"id": id_, "node": node, "old": old, "new": new, "at": at, "reason": reason}


def plain(answer: dict[str, Any]) -> str:
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None, highlight=False)
    for part in render(answer, console):
        console.print(part)
    return out.getvalue()


def test_outage_runs_from_suspect_through_down_to_the_next_up() -> None:
    newest_first = [
        transition(5, "pi-2", "down>up", NOW - 10 * HOUR + 36 * 60, "heartbeat ok"),
        transition(4, "pi-1", "up>suspect", NOW - 60, "no heartbeat for 2.1s"),
        transition(3, "pi-2", "suspect>down", NOW - 10 * HOUR + 5, "connection refused"),
        transition(2, "pi-2", "up>suspect", NOW - 10 * HOUR, "no heartbeat for 2.0s"),
        transition(1, "pi-3", "down>unknown", NOW - 20 * HOUR, "monitor restarted"),
    ]
    outages = find_outages(list(reversed(newest_first)), NOW - 24 * HOUR, NOW)
    assert [(o.node, o.duration_s, o.end_id, o.began_before) for o in outages] == [
        ("pi-3", 24 * HOUR, None, True),  # down before the window and never back up
        ("pi-2", 36 * 60, 5, False),
        ("pi-1", 60, None, False),
    ]
    assert outages[1].reason == "no heartbeat for 2.0s"


def test_outage_and_uptime_columns_read_like_a_report() -> None:
    transitions = [
        transition(3, "pi-2", "down>up", NOW - 10 * HOUR + 36 * 60, "heartbeat ok"),
        transition(2, "pi-2", "up>down", NOW - 10 * HOUR, "connection refused"),
        transition(1, "pi-1", "up>suspect", NOW - 90, "no heartbeat for 2.1s"),
    ]
    views = [
        {"name": "pi-1", "state": "suspect", "uptime_1h": 0.975, "uptime_24h": 0.99896,
         "uptime_7d": 0.99999, "uptime_30d": 1.0},
        {"name": "pi-2", "state": "up", "uptime_1h": 1.0, "uptime_24h": 0.975,
         "uptime_7d": None, "uptime_30d": None},
    ]  # fmt: skip
    answer = report(transitions, views, node=None, since=NOW - 24 * HOUR, now=NOW, truncated=False)
    lines = plain(answer).splitlines()
    recovery = next(line for line in lines if "pi-2" in line and "heartbeat ok" in line)
    assert re.search(r"down (→|->) up\s+36m00s\s+heartbeat ok", recovery), recovery
    ongoing = next(line for line in lines if "no heartbeat for 2.1s" in line)
    assert "ongoing 1m30s" in ongoing
    header = next(line for line in lines if line.startswith("NODE"))
    assert header.split() == ["NODE", "STATE", "1H", "24H", "7D", "30D", "OUTAGES", "DOWNTIME"]
    rows = {line.split()[0]: line.split() for line in lines[lines.index(header) + 1 :] if line}
    assert rows["pi-1"][1:] == ["suspect", "97.5%", "99.89%", "99.99%", "100%", "1", "1m30s"]
    assert rows["pi-2"][1:] == ["up", "100%", "97.5%", "-", "-", "1", "36m00s"]
    assert "3 state changes of any node" in lines[-1] and "2 outages, 37m30s in all" in lines[-1]


def test_percent_never_rounds_a_bad_uptime_up_to_100() -> None:
    assert [percent(f) for f in (None, 1.0, 0.99999, 0.975, 0.5)] == [
        "-",
        "100%",
        "99.99%",
        "97.5%",
        "50.0%",
    ]


def test_killed_and_restarted_node_shows_an_outage_with_duration_and_reasons(procs: Procs) -> None:
    agent = procs.agent("pi-1")
    other = procs.agent("pi-2")
    url = procs.monitor(f"--node=pi-1={agent.address}", f"--node=pi-2={other.address}")
    wait_until(lambda: set(states(url).values()) == {"up"}, DETECTION_BOUND_S, "all up")
    agent.kill()
    wait_until(lambda: states(url)["pi-1"] == "down", DETECTION_BOUND_S, "pi-1 down")
    listen = agent.args.index("--listen") + 1
    agent.args[listen] = agent.address or ""
    agent.start()
    wait_until(lambda: states(url)["pi-1"] == "up", DETECTION_BOUND_S, "pi-1 back up")

    def stored() -> list[dict[str, Any]]:
        found = get_json(f"{url}/v1/history?node=pi-1")["transitions"]
        return found if found[0]["new"] == "up" and len(found) >= 3 else []

    transitions = wait_until(stored, 10, "the recovery committed to the history")
    down = next(t for t in transitions if t["new"] == "down")
    up = transitions[0]
    assert "connection refused" in down["reason"]

    text = run_pimon("history", "pi-1", "--monitor", url, "--since", "1h")
    assert text.returncode == 0, text.stderr
    assert "pi-2" not in text.stdout
    recovery = next(line for line in text.stdout.splitlines() if re.search(r"down (→|->) up", line))
    start = next(t["at"] for t in reversed(transitions) if t["new"] in ("suspect", "down"))
    assert duration(up["at"] - start) in recovery
    assert "connection refused" in text.stdout
    assert "1 outage" in text.stdout

    as_json = run_pimon("history", "pi-1", "--monitor", url, "--json")
    assert as_json.returncode == 0, as_json.stderr
    answer = json.loads(as_json.stdout)
    assert set(answer) == {"node", "since", "now", "truncated", "transitions", "outages", "nodes"}
    assert answer["node"] == "pi-1" and answer["truncated"] is False
    assert answer["now"] - answer["since"] == pytest.approx(86400)
    assert [t["id"] for t in answer["transitions"]] == sorted(
        (t["id"] for t in answer["transitions"]), reverse=True
    )
    [outage] = answer["outages"]
    assert outage["node"] == "pi-1" and outage["end"] == up["at"]
    assert outage["duration_s"] == pytest.approx(up["at"] - start)
    [node] = answer["nodes"]
    assert node["name"] == "pi-1" and node["state"] == "up" and node["outages"] == 1
    assert set(node["uptime"]) == {"1h", "24h", "7d", "30d"}


def test_history_follows_next_links_and_stops_at_the_page_bound(
    procs: Procs, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = procs.monitor("--node=gone-1=127.0.0.1:1", "--node=gone-2=127.0.0.1:1")

    def both_stored() -> bool:
        return len(get_json(f"{url}/v1/history")["transitions"]) == 2

    wait_until(both_stored, DETECTION_BOUND_S, "two transitions to down committed")
    monkeypatch.setattr(history, "PAGE_SIZE", 1)
    transitions, truncated = history.fetch_transitions(url, None, None, 0.0)
    assert [t["new"] for t in transitions] == ["down", "down"] and not truncated
    assert transitions[0]["id"] > transitions[1]["id"]
    monkeypatch.setattr(history, "MAX_PAGES", 1)
    transitions, truncated = history.fetch_transitions(url, None, None, 0.0)
    assert len(transitions) == 1 and truncated


def test_unknown_node_exits_1_and_bad_since_exits_2(procs: Procs) -> None:
    url = procs.monitor()
    missing = run_pimon("history", "nope", "--monitor", url)
    assert missing.returncode == 1 and "knows no node named 'nope'" in missing.stderr
    bad = run_pimon("history", "--since", "yesterday", "--monitor", url)
    assert bad.returncode == 2 and "--since 'yesterday'" in bad.stderr


def test_history_exits_2_when_monitor_unreachable() -> None:
    result = run_pimon("history", "--monitor", "http://127.0.0.1:1")
    assert result.returncode == 2
    assert "cannot reach monitor at http://127.0.0.1:1" in result.stderr
