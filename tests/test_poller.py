"""Polling: bad agents become data (a down node with a reason), never a crash."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pimon.membership import Failure
from pimon.poller import classify, decode
from pimon.wire import MAX_BODY_BYTES, Heartbeat, encode_heartbeat
from tests.conftest import Procs, get_json, states, wait_until

Answer = Callable[[], tuple[int, bytes]]


def good_body() -> bytes:
    return encode_heartbeat(Heartbeat(v=1, name="x", id="i", seq=1, sent_at=time.time()))


BAD_AGENTS: dict[str, Answer] = {
    "junk": lambda: (200, b"{not json"),
    "error500": lambda: (500, b"oops"),
    "schema": lambda: (
        200,
        json.dumps({"v": 1, "name": "x", "id": "i", "seq": "one", "sent_at": 1}).encode(),
    ),
    "huge": lambda: (200, b'{"v":1,' + b" " * (MAX_BODY_BYTES + 10) + b"}"),
}


def serve(answer: Answer) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            status, body = answer()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def bad_agents() -> Iterator[dict[str, str]]:
    servers = {name: serve(answer) for name, answer in BAD_AGENTS.items()}
    try:
        yield {name: f"127.0.0.1:{s.server_address[1]}" for name, s in servers.items()}
    finally:
        for s in servers.values():
            s.shutdown()
            s.server_close()


def test_bad_heartbeats_make_nodes_down_with_reason_and_monitor_keeps_serving(
    procs: Procs, bad_agents: dict[str, str]
) -> None:
    good = procs.agent("good")
    nodes = [f"--node={name}={addr}" for name, addr in bad_agents.items()]
    url = procs.monitor(*nodes, f"--node=good={good.address}")
    wait_until(lambda: all(states(url)[n] == "down" for n in bad_agents), 20, "bad agents down")
    reasons = {n: get_json(f"{url}/v1/nodes/{n}")["reason"] for n in bad_agents}
    assert reasons["junk"].startswith("bad heartbeat: invalid JSON")
    assert reasons["error500"] == "bad heartbeat: HTTP 500"
    assert reasons["schema"].startswith("bad heartbeat: Expected `int`, got `str`")
    assert "$.seq" in reasons["schema"]
    assert reasons["huge"] == "bad heartbeat: body over 64 KiB"
    assert states(url)["good"] == "up"
    assert procs.last_monitor.running


def test_stopped_agent_goes_suspect_then_down_then_up_after_continue(procs: Procs) -> None:
    agent = procs.agent("frozen")
    url = procs.monitor(f"--node=frozen={agent.address}")
    wait_until(lambda: states(url)["frozen"] == "up", 20, "up")
    assert agent.proc is not None
    os.kill(agent.proc.pid, signal.SIGSTOP)  # the kernel still accepts; nobody answers
    try:
        seen: list[str] = []

        def progressed() -> bool:
            state = states(url)["frozen"]
            if not seen or seen[-1] != state:
                seen.append(state)
            return state == "down"

        wait_until(progressed, 30, "down after timeouts")
        assert seen[:3] == ["up", "suspect", "down"], seen
        assert get_json(f"{url}/v1/nodes/frozen")["reason"].startswith("no heartbeat for")
    finally:
        os.kill(agent.proc.pid, signal.SIGCONT)
    wait_until(lambda: states(url)["frozen"] == "up", 20, "up after SIGCONT")


def test_decode_accepts_a_good_heartbeat_and_names_bad_fields() -> None:
    assert decode(good_body()).name == "x"
    with pytest.raises(ValueError, match=r"\$\.seq"):
        decode(BAD_AGENTS["schema"]()[1])
    with pytest.raises(ValueError, match="invalid JSON"):
        decode(b'{"v":')
    with pytest.raises(ValueError, match="64 KiB"):
        decode(b" " * (MAX_BODY_BYTES + 1))
    with pytest.raises(ValueError, match="missing required field `sent_at`"):
        decode(b'{"v":1,"name":"x","id":"i","seq":1}')
    with pytest.raises(ValueError, match="invalid node name"):
        decode(b'{"v":1,"name":"has space","id":"i","seq":1,"sent_at":1}')


def test_classify_treats_timeouts_as_late_evidence_only() -> None:
    assert classify(TimeoutError(), "h") == (Failure.TIMEOUT, "timeout")
    failure, detail = classify(RuntimeError("boom"), "h")
    assert failure is Failure.ERROR and "boom" in detail
