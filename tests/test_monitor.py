"""End to end: real agent and monitor processes on loopback."""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import Procs, get_json, states, wait_until

DETECTION_BOUND_S = 20.0  # generous: the machine is shared and slow at times


def test_three_agents_all_up_and_a_killed_one_goes_down_then_recovers(procs: Procs) -> None:
    agents = [procs.agent(f"pi-{i}") for i in range(1, 4)]
    url = procs.monitor(*[f"--node=pi-{i}={a.address}" for i, a in enumerate(agents, 1)])
    wait_until(lambda: set(states(url).values()) == {"up"}, DETECTION_BOUND_S, "all up")

    victim = agents[1]
    victim.kill()
    deadline = time.monotonic() + DETECTION_BOUND_S
    while True:
        seen = states(url)
        assert seen["pi-1"] == "up" and seen["pi-3"] == "up", seen
        if seen["pi-2"] == "down":
            break
        assert time.monotonic() < deadline, f"pi-2 not down in time: {seen}"
        time.sleep(0.1)
    node = get_json(f"{url}/v1/nodes/pi-2")
    assert "connection refused" in node["reason"]
    assert node["transitions"][0]["new"] == "down"

    listen = victim.args.index("--listen") + 1
    victim.args[listen] = victim.address or ""
    victim.start()
    wait_until(lambda: states(url)["pi-2"] == "up", DETECTION_BOUND_S, "pi-2 back up")
    assert states(url) == {"pi-1": "up", "pi-2": "up", "pi-3": "up"}


def test_node_view_carries_heartbeat_and_judgement(procs: Procs) -> None:
    agent = procs.agent("pi-1")
    url = procs.monitor(f"--node=pi-1={agent.address}")
    wait_until(lambda: states(url).get("pi-1") == "up", DETECTION_BOUND_S, "up")
    view = get_json(f"{url}/v1/nodes/pi-1")
    for key in ("state", "since", "last_seen", "phi", "rtt_ms", "clock_offset_s", "mode", "source"):
        assert key in view, key
    assert view["mode"] == "pull" and view["source"] == "static"
    assert view["rtt_ms"] > 0 and abs(view["clock_offset_s"]) < 1.0
    assert view["metrics"]["mem_total_bytes"] > 0
    assert view["v"] == 1 and len(view["id"]) == 36 and view["seq"] >= 1


def test_agent_reporting_problems_is_degraded(procs: Procs, tmp_path: Path) -> None:
    config = tmp_path / "pimon.toml"
    config.write_text("[agent]\ndisk_max_percent = 0.001\n")
    agent = procs.agent("pi-hot", "--config", str(config))
    url = procs.monitor(f"--node=pi-hot={agent.address}")
    wait_until(lambda: states(url).get("pi-hot") == "degraded", DETECTION_BOUND_S, "degraded")
    view = get_json(f"{url}/v1/nodes/pi-hot")
    assert view["ok"] is False
    assert any(p.startswith("disk / ") for p in view["problems"]), view["problems"]


def test_refused_address_is_down_with_reason(procs: Procs) -> None:
    url = procs.monitor("--node=gone=127.0.0.1:1")
    wait_until(lambda: states(url).get("gone") == "down", DETECTION_BOUND_S, "down")
    view = get_json(f"{url}/v1/nodes/gone")
    assert view["reason"] == "connection refused: agent not running"


def test_unresolvable_host_is_down_with_reason_and_monitor_keeps_serving(procs: Procs) -> None:
    agent = procs.agent("pi-1")
    url = procs.monitor("--node=ghost=no-such-host.invalid:7071", f"--node=pi-1={agent.address}")
    wait_until(lambda: states(url).get("ghost") == "down", DETECTION_BOUND_S, "ghost down")
    assert "host not found" in get_json(f"{url}/v1/nodes/ghost")["reason"]
    assert states(url)["pi-1"] == "up"
    assert procs.last_monitor.running


def test_monitor_without_nodes_serves_an_empty_list(procs: Procs) -> None:
    url = procs.monitor()
    assert get_json(f"{url}/v1/nodes")["nodes"] == []
    with __import__("urllib.request").request.urlopen(f"{url}/healthz", timeout=5) as resp:
        assert resp.status == 200


def test_unknown_node_is_a_json_404(procs: Procs) -> None:
    import json
    import urllib.error
    import urllib.request

    url = procs.monitor()
    try:
        urllib.request.urlopen(f"{url}/v1/nodes/nope", timeout=5)
    except urllib.error.HTTPError as e:
        assert e.code == 404
        assert json.loads(e.read()) == {"error": "no node named 'nope'", "status": 404}
    else:
        raise AssertionError("expected 404")


def test_frozen_monitor_convicts_nobody_when_it_wakes(procs: Procs) -> None:
    import os
    import signal

    agents = [procs.agent(f"pi-{i}") for i in range(1, 3)]
    url = procs.monitor(*[f"--node=pi-{i}={a.address}" for i, a in enumerate(agents, 1)])
    wait_until(lambda: set(states(url).values()) == {"up"}, DETECTION_BOUND_S, "all up")
    monitor = procs.last_monitor.proc
    assert monitor is not None
    os.kill(monitor.pid, signal.SIGSTOP)  # like swapping or a stuck SD card write
    time.sleep(8.0)  # longer than the down bound (~3.3 s at 0.5 s)
    os.kill(monitor.pid, signal.SIGCONT)
    time.sleep(2.0)
    for name in ("pi-1", "pi-2"):
        view = get_json(f"{url}/v1/nodes/{name}")
        assert view["state"] == "up", view
        assert [t["new"] for t in view["transitions"]] == ["up"], view["transitions"]
