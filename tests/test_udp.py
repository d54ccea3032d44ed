"""Signed UDP heartbeats: a cheap push path that never trusts an unsigned datagram."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from pimon.wire import open_datagram, seal_datagram
from tests.conftest import Procs, get_json, heartbeat_fields, states, wait_until

TOKEN = "udp-cluster-token"


def token_file(tmp_path: Path) -> str:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    os.chmod(path, 0o600)
    return str(path)


def test_sealed_datagram_opens_only_with_the_same_token_and_untouched() -> None:
    sealed = seal_datagram(TOKEN, b'{"v":1}')
    assert open_datagram(TOKEN, sealed) == b'{"v":1}'
    assert open_datagram("another-token", sealed) is None
    assert open_datagram(TOKEN, sealed[:-1] + b"]") is None
    assert open_datagram(TOKEN, b"PM1" + b"\0" * 10) is None
    assert open_datagram(TOKEN, b"GET / HTTP/1.1\r\n\r\n") is None


def heartbeat(name: str, seq: int, boot: str = "b1", sent_at: float | None = None) -> bytes:
    sent_at = time.time() if sent_at is None else sent_at
    fields = heartbeat_fields(name, boot=boot, seq=seq, sent_at=sent_at, interval=0.5)
    return json.dumps(fields).encode()


def send(address: str, datagram: bytes) -> None:
    host, port = address.rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(datagram, (host, int(port)))


def test_udp_agents_register_go_down_on_kill_and_leave_on_term(
    procs: Procs, tmp_path: Path
) -> None:
    token = token_file(tmp_path)
    url = procs.monitor("--token-file", token, "--udp")
    udp = url.replace("http://", "udp://")
    agents = [procs.agent(f"u-{i}", "--monitor", udp, "--token-file", token) for i in (1, 2, 3)]
    wait_until(lambda: states(url) == {"u-1": "up", "u-2": "up", "u-3": "up"}, 20, "3 up")
    assert get_json(f"{url}/v1/nodes/u-1")["mode"] == "push"
    agents[0].kill()
    wait_until(lambda: states(url)["u-1"] == "down", 20, "u-1 down through the probe")
    assert get_json(f"{url}/v1/nodes/u-1")["reason"] == "connection refused: agent not running"
    agents[1].stop()
    wait_until(lambda: states(url)["u-2"] == "left", 20, "u-2 left")
    assert states(url)["u-3"] == "up"


def test_unsigned_tampered_and_replayed_datagrams_change_nothing(
    procs: Procs, tmp_path: Path
) -> None:
    url = procs.monitor("--token-file", token_file(tmp_path), "--udp")
    address = url.removeprefix("http://")
    send(address, heartbeat("forged", 1))  # no signature at all
    send(address, seal_datagram("wrong-token", heartbeat("forged", 2)))
    tampered = bytearray(seal_datagram(TOKEN, heartbeat("forged", 3)))
    tampered[-3] ^= 1
    send(address, bytes(tampered))
    send(address, seal_datagram(TOKEN, b"{not json"))
    old = seal_datagram(TOKEN, heartbeat("real", 1, boot="old", sent_at=time.time() - 300))
    send(address, seal_datagram(TOKEN, heartbeat("real", 5, boot="new")))
    wait_until(lambda: states(url).get("real") == "up", 20, "signed datagram accepted")
    send(address, old)  # captured from an earlier boot, replayed now
    time.sleep(1.0)
    assert "forged" not in states(url)
    view = get_json(f"{url}/v1/nodes/real")
    assert view["seq"] == 5 and view["state"] == "up"
    text = get_json_text(f"{url}/metrics")
    rejected = [
        line
        for line in text.splitlines()
        if line.startswith("pimon_monitor_heartbeats_rejected_total")
    ]
    assert rejected and float(rejected[0].split()[-1]) >= 5
    assert procs.last_monitor.running


def get_json_text(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def test_udp_without_a_token_is_refused_at_start() -> None:
    from pimon.cli import main

    assert main(["monitor", "--udp", "--listen", "127.0.0.1:0"]) == 2
    assert main(["agent", "--monitor", "udp://127.0.0.1:7070"]) == 2
