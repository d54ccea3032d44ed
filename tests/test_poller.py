"""Polling: bad agents become data (a down node with a reason), never a crash."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pimon.httpclient import ConnectionClosed
from pimon.httpwire import BodyTooLarge, HttpError
from pimon.membership import Failure
from pimon.poller import Poller, PollResult, classify, decode, poll_once
from pimon.wire import MAX_BODY_BYTES, Heartbeat, encode_heartbeat
from tests.conftest import Procs, get_json, states, wait_until
from tests.rawserver import RawServer, hang_first_connection

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


def heartbeat_answer(seq: int) -> bytes:
    body = encode_heartbeat(Heartbeat(v=1, name="x", id="i", seq=seq, sent_at=time.time()))
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def keep_answering(conn: socket.socket, server: RawServer) -> None:
    seq = 0
    while server.read_request(conn) is not None:
        seq += 1
        conn.sendall(heartbeat_answer(seq))


class Deliveries:
    """Poll results by node name, with a way to wait for enough of them."""

    def __init__(self) -> None:
        self.by_node: dict[str, list[PollResult]] = {}
        self.changed = asyncio.Event()

    def __call__(self, name: str, result: PollResult) -> None:
        self.by_node.setdefault(name, []).append(result)
        self.changed.set()

    async def wait(self, enough: Callable[[], bool], seconds: float = 10.0) -> None:
        async with asyncio.timeout(seconds):
            while not enough():
                self.changed.clear()
                await self.changed.wait()


async def test_poller_asks_every_node_each_interval_over_one_connection_each(
    raw_servers: Callable[..., RawServer],
) -> None:
    servers = {f"n{i}": raw_servers(keep_answering) for i in range(3)}
    got = Deliveries()
    poller = Poller(0.1, got)
    await poller.start()
    for name, server in servers.items():
        poller.watch(name, server.address)
    try:
        await got.wait(lambda: all(len(got.by_node.get(n, [])) >= 5 for n in servers))
    finally:
        await poller.close()
    for name, server in servers.items():
        results = got.by_node[name]
        assert all(r.heartbeat is not None and r.failure is None for r in results), results
        assert [r.heartbeat.seq for r in results if r.heartbeat] == list(range(1, len(results) + 1))
        assert all(r.rtt_ms > 0 for r in results)
        assert server.accepts == 1
    assert poller.polls == sum(len(r) for r in got.by_node.values())
    assert poller.errors == 0


async def test_poller_times_out_a_hung_agent_closes_and_reconnects(
    raw_servers: Callable[..., RawServer],
) -> None:
    server = raw_servers(hang_first_connection(keep_answering))
    got = Deliveries()
    poller = Poller(0.2, got)
    await poller.start()
    poller.watch("hung", server.address)
    try:
        await got.wait(lambda: any(r.heartbeat for r in got.by_node.get("hung", [])))
    finally:
        await poller.close()
    first = got.by_node["hung"][0]
    assert (first.failure, first.detail) == (Failure.TIMEOUT, "timeout")
    assert first.rtt_ms >= poller.timeout * 1000 * 0.9
    assert server.client_closed.is_set()
    assert server.accepts == 2


async def test_poller_survives_a_failing_deliver_and_unwatch_closes(
    raw_servers: Callable[..., RawServer],
) -> None:
    server = raw_servers(keep_answering)
    got = Deliveries()

    def deliver(name: str, result: PollResult) -> None:
        got(name, result)
        if len(got.by_node[name]) == 1:
            raise RuntimeError("a bug in the monitor")

    poller = Poller(0.1, deliver)
    await poller.start()
    poller.watch("a", server.address)
    try:
        await got.wait(lambda: len(got.by_node.get("a", [])) >= 3)
        assert "a" in poller.watched
        poller.unwatch("a")
        assert "a" not in poller.watched
        assert await asyncio.to_thread(server.client_closed.wait, 5)
    finally:
        await poller.close()
    assert server.accepts == 1


async def test_probe_classifies_answers_refusals_and_unknown_hosts(
    raw_servers: Callable[..., RawServer],
) -> None:
    server = raw_servers(keep_answering)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        refused = f"127.0.0.1:{s.getsockname()[1]}"
    poller = Poller(1.0, Deliveries())
    await poller.start()
    try:
        answered = await poller.probe(server.address)
        closed = await poller.probe(refused)
        unknown = await poll_once(poller.client, "no-such-host.invalid:7071", 30)
    finally:
        await poller.close()
    assert answered.heartbeat is not None and answered.heartbeat.seq == 1
    assert (closed.failure, closed.detail) == (
        Failure.REFUSED,
        "connection refused: agent not running",
    )
    assert (unknown.failure, unknown.detail) == (
        Failure.UNRESOLVABLE,
        "host not found: no-such-host.invalid",
    )


def test_classify_names_protocol_and_connection_failures() -> None:
    assert classify(BodyTooLarge("body over 64 KiB"), "h") == (
        Failure.BAD,
        "bad heartbeat: body over 64 KiB",
    )
    assert classify(HttpError("not an HTTP/1.x answer: b'SSH'"), "h")[0] is Failure.BAD
    assert classify(ConnectionClosed(), "h") == (Failure.ERROR, "connection closed by agent")
    assert classify(ConnectionResetError(104, "reset"), "h") == (
        Failure.ERROR,
        "connection reset by agent",
    )
    unreachable = OSError(errno.EHOSTUNREACH, "No route to host")
    assert classify(unreachable, "h") == (Failure.ERROR, "cannot connect: No route to host")


def test_a_resolver_outage_is_late_evidence_not_a_conviction() -> None:
    import socket

    from pimon.httpclient import HostNotFound

    failure, detail = classify(HostNotFound(socket.EAI_AGAIN, "try again"), "pi-1.lan")
    assert failure is Failure.ERROR and detail == "name lookup failed for now: pi-1.lan"
    failure, _ = classify(HostNotFound(socket.EAI_NONAME, "unknown"), "pi-1.lan")
    assert failure is Failure.UNRESOLVABLE
