"""End to end: real agents and monitors sending alerts to receivers in the test process."""

from __future__ import annotations

import itertools
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pimon.demo import Child
from tests.conftest import Procs, get_json, run_pimon, states, wait_until
from tests.interop import require_tool
from tests.receivers import ThreadedReceiver

BOUND_S = 20.0  # generous: the machine is shared and slow at times
INTERVAL = 0.2


@pytest.fixture
def hooks() -> Iterator[list[ThreadedReceiver]]:
    """Start receivers on demand (``hooks.append(...)``); all are stopped afterwards."""
    started: list[ThreadedReceiver] = []
    try:
        yield started
    finally:
        for r in started:
            r.stop()


def receiver(hooks: list[ThreadedReceiver], status: int = 200, delay: float = 0.0) -> str:
    r = ThreadedReceiver(status, delay)
    url = r.run()
    hooks.append(r)
    return url


def config(tmp_path: Path, *tables: dict[str, Any], monitor: str = "") -> str:
    lines = [f"[monitor]\n{monitor}\n"]
    for table in tables:
        lines.append("[[alerts]]")
        lines += [f"{key} = {toml_value(value)}" for key, value in table.items()]
        lines.append("")
    path = tmp_path / "pimon.toml"
    path.write_text("\n".join(lines))
    return str(path)


def toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)  # strings, numbers, booleans and lists read the same in TOML


def restart(agent: Child) -> None:
    """Start a killed agent again on the same port."""
    listen = agent.args.index("--listen") + 1
    agent.args[listen] = agent.address or ""
    agent.start()


def events(r: ThreadedReceiver, node: str | None = "*") -> list[str]:
    return [p["event"] for p in r.payloads() if node == "*" or p["node"] == node]


def cluster(procs: Procs, n: int, cfg: str, *extra: str, interval: float = INTERVAL) -> str:
    agents = [procs.agent(f"pi-{i}", interval=interval) for i in range(1, n + 1)]
    nodes = [f"--node=pi-{i}={a.address}" for i, a in enumerate(agents, 1)]
    url = procs.monitor(*nodes, "--config", cfg, *extra, interval=interval)
    wait_until(lambda: set(states(url).values()) <= {"up", "degraded"}, BOUND_S, "all seen")
    return url


def agent(procs: Procs, name: str) -> Child:
    """Return the agent process named ``name``."""
    [child] = [c for c in procs.children if c.args[:3] == ["agent", "--name", name]]
    return child


def test_down_recovery_and_degraded_reach_the_webhook(
    procs: Procs, hooks: list[ThreadedReceiver], tmp_path: Path
) -> None:
    url = receiver(hooks)
    hot_cfg = tmp_path / "hot.toml"
    hot_cfg.write_text("[agent]\ndisk_max_percent = 0.001\n")
    hot = procs.agent("pi-hot", "--config", str(hot_cfg), interval=INTERVAL)
    cfg = config(tmp_path, {"kind": "webhook", "url": url + "/hook"})
    mon = cluster(procs, 2, cfg, f"--node=pi-hot={hot.address}")
    [r] = hooks
    wait_until(lambda: "node_degraded" in events(r, "pi-hot"), BOUND_S, "degraded alert")
    [degraded] = [p for p in r.payloads() if p["node"] == "pi-hot"]
    assert degraded["severity"] == "warning" and degraded["version"] == 1
    assert any(p.startswith("disk / ") for p in degraded["problems"]), degraded
    assert degraded["text"].startswith("pi-hot is degraded: disk / ")

    victim = agent(procs, "pi-1")
    victim.kill()
    wait_until(lambda: "node_down" in events(r, "pi-1"), BOUND_S, "down alert")
    down = r.payloads()[-1]
    assert (down["old"], down["new"], down["severity"]) == ("up", "down", "critical")
    assert down["text"] == "pi-1 is down: connection refused: agent not running"
    assert r.requests[-1].path == "/hook"
    restart(victim)
    wait_until(lambda: "node_recovered" in events(r, "pi-1"), BOUND_S, "recovery alert")
    recovered = r.payloads()[-1]
    assert recovered["resolves"] == "node_down" and recovered["new"] == "up"
    assert events(r) == ["node_degraded", "node_down", "node_recovered"]
    assert states(mon)["pi-1"] == "up"


def test_flapping_node_gets_one_flapping_alert_then_silence(
    procs: Procs, hooks: list[ThreadedReceiver], tmp_path: Path
) -> None:
    url = receiver(hooks)
    cfg = config(tmp_path, {"kind": "webhook", "url": url}, monitor="flap_count = 3\n")
    mon = cluster(procs, 3, cfg, "--flap-window", "120")
    [r] = hooks
    victim = agent(procs, "pi-2")
    for _ in range(3):  # two kill/restart cycles are four flips, one more than allowed
        victim.kill()
        wait_until(lambda: states(mon)["pi-2"] == "down", BOUND_S, "pi-2 down")
        restart(victim)
        wait_until(lambda: states(mon)["pi-2"] == "up", BOUND_S, "pi-2 up")
    wait_until(lambda: "flapping" in events(r, "pi-2"), BOUND_S, "flapping alert")
    seen = events(r, "pi-2")
    assert seen.count("flapping") == 1
    after = seen[seen.index("flapping") + 1 :]
    assert after == [], seen
    flapping = next(p for p in r.payloads() if p["event"] == "flapping")
    assert flapping["text"].startswith("pi-2 is flapping: 4 up/down changes in 2 min")
    assert get_json(f"{mon}/v1/alerts")["flapping"] == ["pi-2"]


def test_killing_all_but_one_of_five_is_one_isolation_alert_then_recovery(
    procs: Procs, hooks: list[ThreadedReceiver], tmp_path: Path
) -> None:
    url = receiver(hooks)
    cfg = config(tmp_path, {"kind": "webhook", "url": url})
    # 0.5 s polls: the partition window is 3 s, room for four agents to restart in.
    mon = cluster(procs, 5, cfg, interval=0.5)
    [r] = hooks
    victims = [agent(procs, f"pi-{i}") for i in range(2, 6)]
    for victim in victims:
        victim.kill()
    wait_until(lambda: "monitor_isolated" in events(r), BOUND_S, "isolation alert")
    wait_until(lambda: list(states(mon).values()).count("down") == 4, BOUND_S, "four nodes down")
    isolated = r.payloads()[0]
    assert isolated["text"] == "monitor isolated: lost contact with 4 of 5 nodes", isolated
    assert isolated["severity"] == "critical" and isolated["node"] is None
    time.sleep(4.0)  # well past the 3 s window: node alerts would have gone out by now
    assert events(r) == ["monitor_isolated"]
    assert get_json(f"{mon}/v1/alerts")["isolated"] is True

    threads = [threading.Thread(target=restart, args=(a,)) for a in victims]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_until(lambda: set(states(mon).values()) == {"up"}, BOUND_S, "all up again")
    wait_until(lambda: "monitor_recovered" in events(r), BOUND_S, "recovery alert")
    time.sleep(3.5)  # one window more: nothing else may follow
    assert events(r) == ["monitor_isolated", "monitor_recovered"]
    recovered = r.payloads()[1]
    assert recovered["resolves"] == "monitor_isolated"
    assert recovered["text"].startswith("monitor recovered: in contact with ")


def test_deadman_pings_on_schedule_and_stop_while_no_node_is_reachable(
    procs: Procs, hooks: list[ThreadedReceiver], tmp_path: Path
) -> None:
    url = receiver(hooks)
    cfg = config(tmp_path)
    mon = cluster(procs, 1, cfg, "--deadman-url", url + "/ping/abc", "--deadman-interval", "0.5")
    [r] = hooks
    wait_until(lambda: len(r.requests) >= 5, BOUND_S, "five pings")
    pings = list(r.requests)
    assert {(p.method, p.path) for p in pings} == {("GET", "/ping/abc")}
    gaps = [b.at - a.at for a, b in itertools.pairwise(pings)]
    assert all(0.45 <= g <= 2.0 for g in gaps), gaps
    assert sum(gaps) / len(gaps) < 1.2, gaps

    procs.children[0].kill()
    wait_until(lambda: states(mon)["pi-1"] == "down", BOUND_S, "pi-1 down")
    time.sleep(0.5)  # a ping in flight may still land
    held = len(r.requests)
    time.sleep(2.5)  # five intervals
    assert len(r.requests) == held
    assert get_json(f"{mon}/v1/alerts")["deadman"]["holding"] == "no node reachable"

    restart(procs.children[0])
    wait_until(lambda: len(r.requests) >= held + 2, BOUND_S, "pings resume")


def test_hanging_and_failing_notifiers_delay_neither_detection_nor_the_others(
    procs: Procs, hooks: list[ThreadedReceiver], tmp_path: Path
) -> None:
    hang = receiver(hooks, delay=60.0)
    fail = receiver(hooks, status=500)
    good = receiver(hooks)
    cfg = config(
        tmp_path,
        {"kind": "webhook", "url": hang, "name": "hang", "timeout": 5},
        {"kind": "webhook", "url": fail, "name": "fail"},
        {"kind": "webhook", "url": good, "name": "good"},
    )
    mon = cluster(procs, 1, cfg)
    r_hang, r_fail, r_good = hooks
    victim = procs.children[0]
    killed = time.monotonic()
    victim.kill()
    wait_until(lambda: states(mon)["pi-1"] == "down", BOUND_S, "pi-1 down")
    detected = time.monotonic() - killed
    wait_until(lambda: r_good.requests, BOUND_S, "good notifier called")
    delivered = r_good.requests[0].at - killed
    assert detected < 5.0, detected  # two refused polls at 0.2 s, with slack for a busy machine
    # Had the notifiers waited for each other, the good one would have waited out the hang (5 s).
    assert delivered < detected + 3.0, (detected, delivered)
    assert r_hang.requests and r_fail.requests  # all three were tried at once
    assert r_hang.requests[0].at - killed < detected + 3.0

    restart(victim)
    wait_until(lambda: states(mon)["pi-1"] == "up", BOUND_S, "pi-1 up")
    wait_until(lambda: len(r_good.requests) == 2, BOUND_S, "recovery sent past the stuck ones")
    assert [p["event"] for p in r_good.payloads()] == ["node_down", "node_recovered"]

    def stats() -> dict[str, Any]:
        return {n["name"]: n for n in get_json(f"{mon}/v1/alerts")["notifiers"]}

    wait_until(lambda: stats()["hang"]["last_error"], BOUND_S, "the hang timed out")
    s = stats()
    assert s["hang"]["last_error"] == "no answer within 5s"
    assert s["fail"]["last_error"] == "HTTP 500: broken" and s["fail"]["failed"] >= 1
    assert s["fail"]["pending"] == 2 and s["fail"]["sent"] == 0
    assert s["good"]["sent"] == 2 and s["good"]["pending"] == 0 and s["good"]["failed"] == 0
    assert s["good"]["last_success_at"] > 0


def test_queued_alert_survives_a_sigkill_of_the_monitor(
    procs: Procs, hooks: list[ThreadedReceiver], tmp_path: Path
) -> None:
    good = receiver(hooks)
    later = receiver(hooks, status=500)
    cfg = config(
        tmp_path,
        {"kind": "webhook", "url": good, "name": "good"},
        {"kind": "webhook", "url": later, "name": "later"},
    )
    mon = cluster(procs, 1, cfg)
    r_good, r_later = hooks
    pi1 = agent(procs, "pi-1")
    pi1.kill()
    wait_until(lambda: r_good.requests and r_later.requests, BOUND_S, "both tried")
    wait_until(
        lambda: get_json(f"{mon}/v1/alerts")["notifiers"][1]["pending"] == 1,
        BOUND_S,
        "one pending",
    )
    [down] = r_good.payloads()
    procs.last_monitor.kill()

    restart(pi1)
    r_later.status = 200
    attempts = len(r_later.requests)
    procs.monitor(f"--node=pi-1={pi1.address}", "--config", cfg, interval=INTERVAL)
    wait_until(lambda: len(r_later.requests) > attempts, BOUND_S, "queued alert delivered")
    assert r_later.payloads()[attempts] == down  # the very alert, not a new one
    # pi-1 is back: its recovery follows, to both, as the down alert is still in force.
    wait_until(lambda: len(r_later.requests) == attempts + 2, BOUND_S, "recovery to later")
    wait_until(lambda: len(r_good.requests) == 2, BOUND_S, "recovery to good")
    time.sleep(1.0)
    first, recovered = r_good.payloads()
    assert first == down  # delivered before the kill: not sent again
    assert recovered["event"] == "node_recovered" and recovered["resolves"] == "node_down"
    assert r_later.payloads()[attempts:] == [down, recovered]


def test_recovery_after_a_sigkill_of_the_monitor_resolves_the_down_alert(
    procs: Procs, hooks: list[ThreadedReceiver], tmp_path: Path
) -> None:
    url = receiver(hooks)
    cfg = config(tmp_path, {"kind": "webhook", "url": url})
    first = cluster(procs, 2, cfg)
    [r] = hooks
    pi1, pi2 = agent(procs, "pi-1"), agent(procs, "pi-2")
    pi1.kill()
    wait_until(lambda: "node_down" in events(r, "pi-1"), BOUND_S, "down alert")
    [down] = r.payloads()
    # The webhook has it; wait until the monitor has recorded the delivery too, or
    # the SIGKILL lands in the few milliseconds between the two and it is re-sent.
    sent = lambda: get_json(f"{first}/v1/alerts")["notifiers"][0]["sent"] == 1  # noqa: E731
    wait_until(sent, BOUND_S, "delivery recorded")
    procs.last_monitor.kill()

    nodes = [f"--node=pi-1={pi1.address}", f"--node=pi-2={pi2.address}"]
    mon = procs.monitor(*nodes, "--config", cfg, interval=INTERVAL)
    wait_until(lambda: states(mon) == {"pi-1": "down", "pi-2": "up"}, BOUND_S, "pi-1 down again")
    restart(pi1)
    wait_until(lambda: "node_recovered" in events(r, "pi-1"), BOUND_S, "recovery alert")
    recovered = r.payloads()[-1]
    assert recovered["resolves"] == "node_down" and recovered["new"] == "up"
    assert recovered["text"].startswith("pi-1 recovered: up")
    assert r.payloads()[0] == down  # and no second down alert from the new monitor
    assert events(r) == ["node_down", "node_recovered"]


def test_alert_test_command_reports_each_notifier(
    hooks: list[ThreadedReceiver], tmp_path: Path
) -> None:
    good = receiver(hooks)
    cfg = config(
        tmp_path,
        {"kind": "webhook", "url": good, "name": "good"},
        {"kind": "slack", "url": "http://127.0.0.1:1/services/x", "name": "broken"},
    )
    done = run_pimon("alert", "test", "--config", cfg)
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "ok    good (webhook)"
    assert lines[1].startswith("FAIL  broken (slack): ClientConnectorError")
    [payload] = hooks[0].payloads()
    assert payload["event"] == "test" and payload["severity"] == "info"


def test_bad_alerts_table_stops_the_monitor_at_start(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"kind": "webhook", "url": "http://x", "min_severity": "loud"})
    for command in (["monitor", "--listen", "127.0.0.1:0"], ["alert", "test"]):
        done = run_pimon(*command, "--config", cfg)
        assert done.returncode == 2
        assert f"{cfg}:7: [[alerts]] #1, key min_severity: must be info" in done.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.interop
def test_alertmanager_receives_the_alert_and_its_resolution(procs: Procs, tmp_path: Path) -> None:
    binary = require_tool("prometheus-alertmanager")
    am_cfg = tmp_path / "am.yml"
    am_cfg.write_text('route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n')
    port = free_port()
    am_url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "alertmanager.log", "wb")  # noqa: SIM115 - closed below
    am = subprocess.Popen(
        [
            binary,
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--config.file={am_cfg}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: get_json(f"{am_url}/api/v2/status"), BOUND_S, "alertmanager up")
        cfg = config(
            tmp_path, {"kind": "alertmanager", "url": am_url, "labels": {"cluster": "lab"}}
        )
        mon = cluster(procs, 1, cfg)

        def ours() -> list[dict[str, Any]]:
            alerts = get_json(f"{am_url}/api/v2/alerts")
            return [a for a in alerts if a["labels"].get("node") == "pi-1"]

        procs.children[0].kill()
        [firing] = wait_until(ours, BOUND_S, "the alert in alertmanager")
        assert firing["labels"] == {
            "alertname": "PimonNodeDown",
            "node": "pi-1",
            "state": "down",
            "severity": "critical",
            "cluster": "lab",
            "monitor": socket.gethostname(),
        }
        assert firing["status"]["state"] == "active"
        assert firing["annotations"]["summary"].startswith("pi-1 is down: ")

        restart(procs.children[0])
        wait_until(lambda: states(mon)["pi-1"] == "up", BOUND_S, "pi-1 up")
        # Resolved alerts leave the list; without the resolution it would stay for minutes.
        wait_until(lambda: ours() == [], BOUND_S, "the alert resolved")
    finally:
        am.terminate()
        am.wait(10)
        log.close()
