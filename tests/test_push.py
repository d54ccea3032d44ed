"""Push mode end to end: self-registration, probe on suspicion, graceful leave, backoff."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pimon.push import BACKOFF_CAP_S, Pusher
from tests.conftest import Procs, get_json, run_pimon, states, wait_until


def nodes(url: str) -> dict[str, dict[str, object]]:
    return {n["name"]: n for n in get_json(f"{url}/v1/nodes")["nodes"]}


def test_push_only_cluster_registers_itself_then_kill_is_down_and_term_is_left(
    procs: Procs,
) -> None:
    url = procs.monitor()
    agents = [procs.agent(f"push-{i}", "--monitor", url) for i in range(1, 4)]
    wait_until(lambda: set(states(url).values()) == {"up"} and len(states(url)) == 3, 20, "3 up")
    assert {n["mode"] for n in nodes(url).values()} == {"push"}
    assert {n["source"] for n in nodes(url).values()} == {"push"}

    agents[0].kill()
    wait_until(lambda: states(url)["push-1"] == "down", 20, "push-1 down")
    reason = get_json(f"{url}/v1/nodes/push-1")["reason"]
    assert reason == "connection refused: agent not running", reason

    agents[1].stop()
    wait_until(lambda: states(url)["push-2"] == "left", 20, "push-2 left")
    time.sleep(2.0)  # a left node stays left: no alarm after its agent is gone
    assert states(url) == {"push-1": "down", "push-2": "left", "push-3": "up"}


def test_agent_with_a_dead_monitor_keeps_pushing_to_the_live_one(procs: Procs) -> None:
    url = procs.monitor()
    procs.agent("twin", "--monitor", "http://127.0.0.1:1", "--monitor", url, interval=0.3)
    wait_until(lambda: states(url).get("twin") == "up", 20, "up")
    first = get_json(f"{url}/v1/nodes/twin")
    time.sleep(3.0)
    later = get_json(f"{url}/v1/nodes/twin")
    assert later["state"] == "up" and later["transitions"][0]["new"] == "up"
    assert len(later["transitions"]) == 1  # never suspect on the way
    assert later["seq"] - first["seq"] >= 6  # about 10 pushes in 3 s at 0.3 s


class Forwarder:
    """A TCP forwarder the test can cut, to break only the push path."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.open = True
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Stop forwarding: existing connections die, new ones are closed at once."""
        self.open = False
        for s in self.conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.cut()
        for s in self.conns:
            s.close()
        self.sock.close()


@pytest.fixture
def forwarder_factory() -> Iterator[list[Forwarder]]:
    made: list[Forwarder] = []
    yield made
    for f in made:
        f.close()


def test_broken_push_path_is_found_by_the_probe_and_polled(
    procs: Procs, forwarder_factory: list[Forwarder]
) -> None:
    url = procs.monitor()
    host, port = url.removeprefix("http://").rsplit(":", 1)
    forward = Forwarder((host, int(port)))
    forwarder_factory.append(forward)
    procs.agent("via-proxy", "--monitor", f"http://127.0.0.1:{forward.port}")
    wait_until(lambda: states(url).get("via-proxy") == "up", 20, "up")
    forward.cut()
    wait_until(
        lambda: get_json(f"{url}/v1/nodes/via-proxy")["reason"] == "push path broken", 20, "probe"
    )
    view = get_json(f"{url}/v1/nodes/via-proxy")
    assert view["state"] == "up"
    assert [t["new"] for t in view["transitions"][:2]] == ["up", "suspect"]
    time.sleep(3.0)  # polled from now on: no flapping back to suspect
    assert states(url)["via-proxy"] == "up"


def test_nodes_add_and_remove_round_trip_with_token(procs: Procs, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("round-trip-token\n")
    os.chmod(token, 0o600)
    url = procs.monitor("--token-file", str(token))
    agent = procs.agent("late")
    denied = run_pimon("nodes", "add", "late", agent.address or "", "--monitor", url)
    assert denied.returncode == 1 and "401" in denied.stderr
    added = run_pimon(
        "nodes", "add", "late", agent.address or "", "--monitor", url, "--token-file", str(token)
    )
    assert added.returncode == 0, added.stderr
    assert "late: registered at" in added.stdout
    wait_until(lambda: states(url).get("late") == "up", 20, "up")
    assert get_json(f"{url}/v1/nodes/late")["source"] == "api"
    removed = run_pimon("nodes", "remove", "late", "--monitor", url, "--token-file", str(token))
    assert removed.returncode == 0 and "late: deregistered" in removed.stdout
    assert "late" not in states(url)
    gone = run_pimon("nodes", "remove", "late", "--monitor", url, "--token-file", str(token))
    assert gone.returncode == 1 and "no node named 'late'" in gone.stderr


def test_removing_a_live_push_node_warns_it_comes_back(procs: Procs) -> None:
    url = procs.monitor()
    procs.agent("stubborn", "--monitor", url)
    wait_until(lambda: states(url).get("stubborn") == "up", 20, "up")
    removed = run_pimon("nodes", "remove", "stubborn", "--monitor", url)
    assert removed.returncode == 0
    assert "comes back with its next one" in removed.stdout and "stop its agent" in removed.stdout
    wait_until(lambda: "stubborn" in states(url), 20, "back")


def test_unreachable_monitor_backs_off_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    stopping = threading.Event()
    pusher = Pusher("http://127.0.0.1:1", None, 0.1, lambda: b"{}", stopping)
    with caplog.at_level(logging.INFO, logger="pimon.push"):
        results = [pusher.push_once() for _ in range(8)]
    assert results == [False] * 8
    assert len([r for r in caplog.records if "unreachable" in r.message]) == 1
    delays = [pusher.backoff() for _ in range(50)]
    assert max(delays) <= BACKOFF_CAP_S and min(delays) >= BACKOFF_CAP_S / 2  # 8 failures: capped
    pusher.failures = 1
    assert all(0.5 <= pusher.backoff() <= 1.0 for _ in range(20))


def test_pusher_says_goodbye_with_leaving_heartbeat_when_stopped() -> None:
    received: list[bytes] = []
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        buffer = b""
        while True:
            data = conn.recv(65536)
            if not data:
                conn.close()
                return
            buffer += data
            while b"\r\n\r\n" in buffer:
                head, _, rest = buffer.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(rest) < length:
                    break
                received.append(rest[:length])
                buffer = rest[length:]
                conn.sendall(b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}")

    threading.Thread(target=serve, daemon=True).start()
    stopping = threading.Event()
    bodies = iter([b'{"n":1}', b'{"n":2}', b'{"leaving":true}'])
    pusher = Pusher(f"http://127.0.0.1:{port}", None, 0.05, lambda: next(bodies), stopping)
    assert pusher.push_once() and pusher.push_once()
    stopping.set()
    pusher.run()
    assert received == [b'{"n":1}', b'{"n":2}', b'{"leaving":true}']
    server.close()


def test_pull_agent_lets_its_poller_see_it_leave(procs: Procs) -> None:
    agent = procs.agent("polled")
    url = procs.monitor(f"--node=polled={agent.address}", interval=0.3)
    wait_until(lambda: states(url).get("polled") == "up", 20, "up")
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: states(url)["polled"] == "left", 20, "left")
    time.sleep(1.5)
    assert states(url)["polled"] == "left"
