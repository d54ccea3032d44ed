"""Interop: promtool accepts live /metrics, and a real Prometheus scrapes agent and monitor."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import Procs, states, wait_until
from tests.interop import require_tool

pytestmark = pytest.mark.interop


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return bytes(resp.read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_promtool_accepts_live_agent_and_monitor_metrics(procs: Procs) -> None:
    promtool = require_tool("promtool")
    agent = procs.agent("pi-1")
    url = procs.monitor(f"--node=pi-1={agent.address}")
    wait_until(lambda: states(url).get("pi-1") == "up", 20, "up")
    for target in (f"http://{agent.address}/metrics", f"{url}/metrics"):
        text = fetch(target)
        checked = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, timeout=30, check=False
        )
        assert checked.returncode == 0, (target, checked.stdout, checked.stderr)
        assert checked.stdout.strip() == b"" and checked.stderr.strip() in (b"", b"SUCCESS")


def test_real_prometheus_scrapes_agent_and_monitor(procs: Procs, tmp_path: Path) -> None:
    prometheus = require_tool("prometheus")
    agent = procs.agent("pi-1")
    url = procs.monitor(f"--node=pi-1={agent.address}")
    wait_until(lambda: states(url).get("pi-1") == "up", 20, "up")
    config = tmp_path / "prometheus.yml"
    monitor_target = url.removeprefix("http://")
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        f"  - job_name: pimon-monitor\n    static_configs:\n      - targets: ['{monitor_target}']\n"
        f"  - job_name: pimon-agent\n    static_configs:\n      - targets: ['{agent.address}']\n"
    )
    port = free_port()
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"

    def query(expr: str) -> list[dict[str, object]]:
        answer = json.loads(fetch(f"{base}/api/v1/query?query={urllib.parse.quote(expr)}"))
        assert answer["status"] == "success"
        return list(answer["data"]["result"])

    try:
        up = wait_until(lambda: query('pimon_node_up{node="pi-1"}'), 60, "pimon_node_up")
        assert up[0]["value"][1] == "1"  # type: ignore[index]
        agent_cpu = wait_until(lambda: query("pimon_memory_total_bytes"), 60, "agent metric")
        assert float(agent_cpu[0]["value"][1]) > 0  # type: ignore[index]
        targets = json.loads(fetch(f"{base}/api/v1/targets"))["data"]["activeTargets"]
        assert {t["health"] for t in targets} == {"up"}, targets
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
