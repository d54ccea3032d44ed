"""``pimon demo`` comes up and leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import get_json, wait_until


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_demo_with_three_nodes_comes_up_and_shuts_down_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "demo.out"
    with open(out, "wb") as f:
        demo = subprocess.Popen(
            [sys.executable, "-m", "pimon", "demo", "--nodes", "3"],
            stdout=f,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "120"},
        )
    try:
        match = wait_until(
            lambda: re.search(r"monitor at (http://\S+)", out.read_text()), 60, "url"
        )
        url = match.group(1)
        wait_until(
            lambda: [n["state"] for n in get_json(f"{url}/v1/nodes")["nodes"]] == ["up"] * 3,
            30,
            "3 nodes up",
        )
        kids = children_of(demo.pid)
        assert len(kids) == 4, kids  # a monitor and three agents
        names = [n["name"] for n in get_json(f"{url}/v1/nodes")["nodes"]]
        assert names == ["node-1", "node-2", "node-3"]
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(30) == 0
        deadline = time.monotonic() + 10
        while any(alive(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(k) for k in kids)
    finally:
        if demo.poll() is None:
            demo.kill()
