"""SIGKILL the monitor under load and restart it on the same database: only the last batch lost."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import Procs, get_json, states, wait_until

DETECTION_BOUND_S = 20.0
LOAD_NODES = 20
# The writer commits at most every 2 s; a transition older than this at the kill is on disk.
COMMITTED_AFTER_S = 3.5
AWAY_S = 6.0  # systemd's RestartSec is 5 s in many units
REAL_NODES = {"static-1": "static", "api-1": "api", "push-1": "push"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PushLoad:
    """Push heartbeats for many nodes as fast as the monitor takes them, flipping ok each time.

    Every accepted heartbeat after a node's first is one transition (up <-> degraded), so
    ``acked`` tells which transitions the monitor had made, and when.
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.nodes = [(f"load-{i:02d}", str(uuid.uuid4())) for i in range(LOAD_NODES)]
        self.acked: dict[str, list[float]] = {name: [] for name, _ in self.nodes}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def body(self, name: str, node_id: str, seq: int) -> bytes:
        ok = seq % 2 == 1
        return json.dumps(
            {"v": 1, "name": name, "id": node_id, "boot": "load", "seq": seq,
             "sent_at": time.time(), "interval": 0.5, "ok": ok,
             "problems": [] if ok else ["disk / 99% used"], "metrics": {"cpu_percent": 5.0}}
        ).encode()  # fmt: skip

    def run(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
        seq = 0
        try:
            while not self.stop.is_set():
                seq += 1
                for name, node_id in self.nodes:
                    conn.request(
                        "POST",
                        "/v1/heartbeat",
                        self.body(name, node_id, seq),
                        {"Content-Type": "application/json"},
                    )
                    response = conn.getresponse()
                    response.read()
                    if response.status == 202:
                        self.acked[name].append(time.time())
        except (OSError, http.client.HTTPException):
            pass  # the monitor was killed
        finally:
            conn.close()


def history(url: str, **query: object) -> list[dict[str, Any]]:
    """Return every stored transition matching ``query``, newest first."""
    out: list[dict[str, Any]] = []
    before = None
    for _ in range(100):
        params = "&".join(f"{k}={v}" for k, v in {**query, "limit": 1000}.items())
        page = get_json(f"{url}/v1/history?{params}" + (f"&before={before}" if before else ""))
        out += page["transitions"]
        before = page["next"]
        if before is None:
            return out
    raise AssertionError("history did not end within 100 pages")


def start_cluster(procs: Procs) -> tuple[str, dict[str, Any]]:
    """Start a static, an API-registered and a push node around a monitor on a fixed port."""
    static = procs.agent("static-1")
    port = free_port()
    url = procs.monitor("--listen", f"127.0.0.1:{port}", f"--node=static-1={static.address}")
    monitor = procs.last_monitor
    api = procs.agent("api-1")
    added = subprocess.run(
        [
            sys.executable,
            "-m",
            "pimon",
            "nodes",
            "add",
            "api-1",
            api.address or "",
            "--monitor",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    procs.agent("push-1", "--monitor", url)
    wait_until(
        lambda: {n: states(url).get(n) for n in REAL_NODES} == dict.fromkeys(REAL_NODES, "up"),
        DETECTION_BOUND_S,
        "static, registered and pushing nodes up",
    )
    # A crash loses the batch not yet committed, registrations included: wait for the commit.
    wait_until(
        lambda: {t["node"] for t in history(url)} >= set(REAL_NODES), 10, "registrations stored"
    )
    return url, {"monitor": monitor}


@pytest.mark.slow
def test_sigkill_under_load_loses_at_most_the_last_batch(procs: Procs, tmp_path: Path) -> None:
    url, parts = start_cluster(procs)
    monitor = parts["monitor"]
    load = PushLoad(url)
    load.thread.start()
    wait_until(lambda: all(len(a) >= 5 for a in load.acked.values()), 30, "load flowing")
    time.sleep(COMMITTED_AFTER_S)  # let the load run across a few commits before the crash
    stored_before = history(url)
    monitor.kill()
    killed_at = time.time()
    load.stop.set()
    load.thread.join(10)

    monitor.log_path = str(tmp_path / "monitor-restarted.log")
    monitor.start()
    views = {v["name"]: v for v in get_json(f"{url}/v1/nodes")["nodes"]}
    assert {n: views[n]["source"] for n in REAL_NODES} == REAL_NODES
    assert {name for name, _ in load.nodes} <= set(views), "pushed nodes forgotten"
    assert all(views[name]["mode"] == "push" for name, _ in load.nodes)

    def restart_marks() -> dict[str, dict[str, Any]]:
        marks = {t["node"]: t for t in history(url, since=killed_at - 60) if t["new"] == "unknown"}
        return marks if len(marks) == len(REAL_NODES) + LOAD_NODES else {}

    marks = wait_until(restart_marks, 10, "a '-> unknown' transition per node in the history")
    for name in REAL_NODES:
        assert marks[name]["old"] == "up", marks[name]
        assert "monitor restarted" in marks[name]["reason"]
    stored_after = history(url)
    after_ids = {t["id"]: t for t in stored_after}
    assert all(after_ids.get(t["id"]) == t for t in stored_before), "committed history lost"

    lost = []
    for name, acked in load.acked.items():
        kept = [t for t in stored_after if t["node"] == name and t["new"] != "unknown"]
        settled = [at for at in acked if at <= killed_at - COMMITTED_AFTER_S]
        if len(kept) < len(settled):
            lost.append((name, len(settled), len(kept)))
        assert len(kept) <= len(acked)
        assert marks[name]["old"] in ("up", "degraded")
    assert not lost, f"transitions older than {COMMITTED_AFTER_S}s at the kill were lost: {lost}"
    assert sum(map(len, load.acked.values())) > 200, "too little load to mean anything"


@pytest.mark.slow
def test_restarted_monitor_re_evaluates_nodes_without_calling_them_down(
    procs: Procs, tmp_path: Path
) -> None:
    url, parts = start_cluster(procs)
    monitor = parts["monitor"]
    monitor.kill()
    time.sleep(AWAY_S)  # push agents back off while the monitor is away
    monitor.log_path = str(tmp_path / "monitor-restarted.log")
    monitor.start()
    seen: dict[str, set[str]] = {n: set() for n in REAL_NODES}

    def all_up() -> bool:
        now = states(url)
        for name in REAL_NODES:
            seen[name].add(now[name])
        return all(now[n] == "up" for n in REAL_NODES)

    wait_until(all_up, DETECTION_BOUND_S, "every running agent up again", step=0.05)
    for name in ("static-1", "api-1"):  # polled at once after the restart
        assert seen[name] <= {"unknown", "up"}, (name, seen[name])

    def changes() -> dict[str, list[tuple[str, str]]]:
        stored = list(reversed(history(url)))
        found = {n: [(t["old"], t["new"]) for t in stored if t["node"] == n] for n in REAL_NODES}
        return found if all(len(f) >= 3 for f in found.values()) else {}

    expected = [("unknown", "up"), ("up", "unknown"), ("unknown", "up")]
    found = wait_until(changes, 10, "restart committed")
    assert found["static-1"] == found["api-1"] == expected
    # The push agent backs off (up to 30 s) while the monitor is away: never called down.
    assert "down" not in seen["push-1"], seen
    assert found["push-1"] == expected
