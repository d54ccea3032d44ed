"""The agent: heartbeat RPC, persistent id, never waiting on sampling."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pimon.agent import Agent, AgentConfig, node_id
from pimon.poller import decode
from pimon.wire import Metrics


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[Agent, str]]:
    a = Agent(AgentConfig(name="pi-1", listen=("127.0.0.1", 0), state_dir=str(tmp_path)))
    host, port = a.bind()
    thread = threading.Thread(target=a.serve, daemon=True)
    thread.start()
    try:
        yield a, f"http://{host}:{port}"
    finally:
        a.stop()
        thread.join(5)


def fetch(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def test_heartbeat_is_wire_v1_with_metrics(agent: tuple[Agent, str]) -> None:
    a, url = agent
    status, content_type, body = fetch(f"{url}/v1/heartbeat")
    assert status == 200 and content_type == "application/json"
    hb = decode(body)
    assert hb.v == 1 and hb.name == "pi-1" and hb.id == a.id and hb.seq >= 1
    assert hb.address == url.removeprefix("http://")
    m = hb.metrics
    assert m.mem_total_bytes and m.mem_total_bytes > 0
    assert m.uptime_s and m.uptime_s > 0
    assert m.load1 is not None and m.disk_percent is not None
    raw = json.loads(body)["metrics"]
    for key in (
        "cpu_percent",
        "load1",
        "load5",
        "load15",
        "mem_percent",
        "mem_total_bytes",
        "swap_percent",
        "disk_percent",
        "temp_c",
        "throttled",
        "uptime_s",
        "net_rx_bytes",
        "net_tx_bytes",
        "model",
    ):
        assert key in raw, key


def test_sequence_numbers_increase(agent: tuple[Agent, str]) -> None:
    _, url = agent
    seqs = [decode(fetch(f"{url}/v1/heartbeat")[2]).seq for _ in range(3)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3


def test_healthz_and_json_404(agent: tuple[Agent, str]) -> None:
    _, url = agent
    assert fetch(f"{url}/healthz")[::2] == (200, b"ok\n")
    status, _, body = fetch(f"{url}/nope")
    assert status == 404 and json.loads(body) == {"error": "no route /nope", "status": 404}


def test_node_id_is_created_once_and_kept(tmp_path: Path) -> None:
    first = node_id(str(tmp_path / "state"))
    assert node_id(str(tmp_path / "state")) == first
    assert (tmp_path / "state" / "node-id").read_text().strip() == first


def test_corrupt_node_id_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "node-id").write_text("garbage")
    fresh = node_id(str(tmp_path))
    assert fresh != "garbage" and node_id(str(tmp_path)) == fresh


def test_heartbeat_never_waits_for_sampling(tmp_path: Path) -> None:
    a = Agent(AgentConfig(name="pi-1", state_dir=str(tmp_path)))
    release = threading.Event()

    class SlowCollector:
        def sample(self, now: float) -> tuple[Metrics, list[str]]:
            release.wait(10)
            return Metrics(cpu_percent=1.0), []

    a.collector = SlowCollector()  # type: ignore[assignment]
    sampler = threading.Thread(target=a.sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    hb, _ = a.heartbeat()
    assert time.monotonic() - started < 1.0  # generous: it must not wait the 10 s
    assert hb.metrics.cpu_percent is None
    release.set()
    sampler.join(5)
    assert a.heartbeat()[0].metrics.cpu_percent == 1.0


def test_problems_make_heartbeat_not_ok(tmp_path: Path) -> None:
    a = Agent(AgentConfig(name="pi-1", state_dir=str(tmp_path)))

    class HotCollector:
        def sample(self, now: float) -> tuple[Metrics, list[str]]:
            return Metrics(temp_c=85.0), ["temp 85.0°C"]

    a.collector = HotCollector()  # type: ignore[assignment]
    a.sample()
    hb, _ = a.heartbeat()
    assert hb.ok is False and hb.problems == ["temp 85.0°C"]
