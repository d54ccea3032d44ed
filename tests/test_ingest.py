"""The lean heartbeat path: it answers agents' pushes itself and hands anything else to aiohttp."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import urllib.request
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import pytest

from pimon.demo import Child, agent_args
from pimon.ingest import Ingest, parse_head
from pimon.monitor import Monitor
from pimon.selfstats import Stats
from tests.conftest import heartbeat_fields

TOKEN = "ingest-token"
AGENT_HEAD = (
    b"POST /v1/heartbeat HTTP/1.1\r\nHost: m:7070\r\nContent-Type: application/json\r\n"
    b"Authorization: Bearer t0k\r\nContent-Length: 42"
)


@pytest.fixture(scope="module")
def monitor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Child]:
    workdir = tmp_path_factory.mktemp("ingest")
    token_file = workdir / "token"
    token_file.write_text(TOKEN + "\n")
    os.chmod(token_file, 0o600)
    args = ["monitor", "--listen", "127.0.0.1:0", "--db", str(workdir / "m.db")]
    child = Child([*args, "--token-file", str(token_file)], str(workdir / "monitor.log"))
    child.start()
    try:
        yield child
    finally:
        child.stop()


def connect(monitor: Child) -> socket.socket:
    host, port = (monitor.address or "").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def heartbeat(name: str, seq: Any) -> bytes:
    return json.dumps(heartbeat_fields(name, seq=seq)).encode()


def push(body: bytes, token: str = TOKEN, extra: str = "") -> bytes:
    head = (
        f"POST /v1/heartbeat HTTP/1.1\r\nHost: monitor\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


def chunked_push(body: bytes) -> bytes:
    head = (
        f"POST /v1/heartbeat HTTP/1.1\r\nHost: monitor\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    return head.encode() + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"


class Reader:
    """Read HTTP/1.1 responses one after another from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the monitor")
        self.buffer += chunk

    def response(self) -> tuple[int, dict[str, str], Any]:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        if status == 100:
            return self.response()
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, json.loads(body) if body else None

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


def test_parse_head_reads_an_agents_push() -> None:
    assert parse_head(AGENT_HEAD) == (42, "Bearer t0k", False)
    assert parse_head(AGENT_HEAD + b"\r\nConnection: close") == (42, "Bearer t0k", True)
    assert parse_head(AGENT_HEAD.replace(b"Authorization: Bearer t0k\r\n", b"")) == (
        42,
        None,
        False,
    )


@pytest.mark.parametrize(
    "head",
    [
        AGENT_HEAD.replace(b"HTTP/1.1", b"HTTP/1.0"),
        AGENT_HEAD.replace(b"/v1/heartbeat", b"/v1/heartbeat?x=1"),
        AGENT_HEAD.replace(b"POST", b"PUT"),
        AGENT_HEAD + b"\r\nContent-Length: 42",
        AGENT_HEAD + b"\r\nTransfer-Encoding: chunked",
        AGENT_HEAD + b"\r\nExpect: 100-continue",
        AGENT_HEAD.replace(b"42", b"70000"),
        AGENT_HEAD.replace(b"42", b"-1"),
        AGENT_HEAD.replace(b"Content-Length: 42", b"X-Other: 1"),
        AGENT_HEAD + b"\r\n folded continuation",
        AGENT_HEAD + b"\r\nContent-Length : 42",
        AGENT_HEAD + b"\r\nX-Bad: a\nb",
        AGENT_HEAD + b"\r\nno colon here",
        AGENT_HEAD + b"\r\nX-A: a\rTransfer-Encoding: chunked",
        AGENT_HEAD + b"\r\nX-A: \x01",
        AGENT_HEAD + b"\r\nX@A: 1",
        AGENT_HEAD + b"\r\nX\tA: 1",
        AGENT_HEAD.replace(b"42", b"\x0b42"),
        AGENT_HEAD.replace(b"42", b"42\x0c"),
        AGENT_HEAD + b"\r\nAuthorization: Bearer other",
        AGENT_HEAD + b"\r\nConnection: close\r\nConnection: keep-alive",
        AGENT_HEAD + b"\r\nHost: again",
        AGENT_HEAD.replace(b"Host: m:7070\r\n", b""),
        AGENT_HEAD + b"\r\nX-Long: " + b"x" * 9000,
        AGENT_HEAD + b"".join(b"\r\nX-%d: 1" % i for i in range(40)),
    ],
)
def test_parse_head_leaves_any_other_shape_to_aiohttp(head: bytes) -> None:
    assert parse_head(head) is None


def metric(monitor: Child, name: str) -> float:
    """Read one monitor metric over a fresh connection (which is itself handed off)."""
    with urllib.request.urlopen(f"http://{monitor.address}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name)))


def test_a_real_agents_pushes_stay_on_the_lean_path(
    monitor: Child, tmp_path_factory: pytest.TempPathFactory
) -> None:
    workdir = tmp_path_factory.mktemp("agent")
    token_file = workdir / "token"
    token_file.write_text(TOKEN + "\n")
    os.chmod(token_file, 0o600)
    args = agent_args(
        "lean-1", str(workdir / "state"), 0.2, "--monitor", f"http://{monitor.address}"
    )
    agent = Child([*args, "--token-file", str(token_file)], str(workdir / "agent.log"))
    reads = 0

    def read(name: str) -> float:
        nonlocal reads
        reads += 1
        return metric(monitor, name)

    received = "pimon_monitor_heartbeats_received_total"
    handed = read("pimon_monitor_http_handoffs_total")
    reads = 0  # that read's own connection is counted in ``handed`` already
    before = read(received)
    agent.start()
    try:
        deadline = time.monotonic() + 30
        while read(received) < before + 10 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        agent.stop()
    assert read(received) >= before + 10
    # Each read opened a connection of its own and was handed off; no push was.
    assert read("pimon_monitor_http_handoffs_total") - handed == reads


def test_pipelined_heartbeats_are_answered_in_order(monitor: Child) -> None:
    with connect(monitor) as sock:
        sock.sendall(b"".join(push(heartbeat("pipe-1", seq)) for seq in range(1, 4)))
        reader = Reader(sock)
        answers = [reader.response() for _ in range(3)]
    assert [(s, b) for s, _, b in answers] == [(202, {"accepted": True, "node": "pipe-1"})] * 3
    assert all(h["content-type"] == "application/json" and "date" in h for _, h, _ in answers)
    assert all(h["server"].startswith("pimon/") for _, h, _ in answers)  # not aiohttp's


def test_a_request_split_into_single_bytes_is_answered(monitor: Child) -> None:
    with connect(monitor) as sock:
        for byte in push(heartbeat("trickle-1", 1)):
            sock.send(bytes([byte]))
        status, _, body = Reader(sock).response()
    assert (status, body) == (202, {"accepted": True, "node": "trickle-1"})


def test_other_requests_on_a_push_connection_reach_the_full_api(monitor: Child) -> None:
    with connect(monitor) as sock:
        reader = Reader(sock)
        sock.sendall(push(heartbeat("mixed-1", 1)))
        assert reader.response()[0] == 202
        get = b"GET /v1/nodes/mixed-1 HTTP/1.1\r\nHost: m\r\nAuthorization: Bearer x\r\n\r\n"
        sock.sendall(get + push(heartbeat("mixed-1", 2)))
        status, _, view = reader.response()
        assert status == 200 and view["name"] == "mixed-1" and view["mode"] == "push"
        assert reader.response()[2] == {"accepted": True, "node": "mixed-1"}


def test_both_paths_give_the_same_answers(monitor: Child) -> None:
    bodies = [
        heartbeat("same-1", 1),
        heartbeat("same-1", 1),  # a replay: accepted: false, with a note
        b"{not json",
        heartbeat("same-1", "seven"),
        heartbeat("bad name!", 1),
    ]
    answers = []
    for framing in (push, chunked_push):
        with connect(monitor) as sock:
            reader = Reader(sock)
            for body in bodies:
                sock.sendall(framing(body))
                status, headers, answer = reader.response()
                answers.append((status, answer))
                assert headers["server"].startswith("pimon/" if framing is push else "Python/")
        if framing is push:
            bodies[0] = heartbeat("same-1", 2)  # the fast path took seq 1
            bodies[1] = heartbeat("same-1", 2)
    lean, full = answers[: len(bodies)], answers[len(bodies) :]
    assert lean == full
    assert [s for s, _ in lean] == [202, 202, 400, 400, 400]
    assert lean[1][1]["accepted"] is False and "stale seq" in lean[1][1]["note"]


def test_a_wrong_token_is_401_and_the_connection_stays_usable(monitor: Child) -> None:
    with connect(monitor) as sock:
        reader = Reader(sock)
        sock.sendall(push(heartbeat("auth-1", 1), token="wrong"))
        status, _, answer = reader.response()
        assert (status, answer["status"]) == (401, 401) and "cluster token" in answer["error"]
        sock.sendall(push(heartbeat("auth-1", 1)))
        assert reader.response()[0] == 202


def test_connection_close_is_honoured(monitor: Child) -> None:
    with connect(monitor) as sock:
        reader = Reader(sock)
        sock.sendall(push(heartbeat("close-1", 1), extra="Connection: close\r\n"))
        status, headers, _ = reader.response()
        assert status == 202 and headers["connection"] == "close"
        assert reader.closed()


def test_expect_continue_is_answered_by_aiohttp(monitor: Child) -> None:
    with connect(monitor) as sock:
        sock.sendall(push(heartbeat("expect-1", 1), extra="Expect: 100-continue\r\n"))
        assert Reader(sock).response()[0] == 202


class Conn:
    """Stands in for a connection in the idle sweep: only ``active`` and ``close`` matter."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.active = True

    def close(self) -> None:
        self.ingest.connections.discard(cast(Any, self))


async def test_sweep_closes_connections_idle_for_a_whole_period() -> None:
    ingest = Ingest(cast(Monitor, None), lambda: cast(Any, None))
    busy, idle = Conn(ingest), Conn(ingest)
    ingest.connections.update(cast(Any, [busy, idle]))
    ingest.sweep()  # both sent something during the first period
    assert ingest.connections == {busy, idle}
    busy.active = True
    ingest.sweep()
    assert ingest.connections == {busy}
    ingest.close()


class Transport:
    """A transport's flow control: buffers answers and pauses its protocol past ``high`` bytes."""

    def __init__(self, high: int) -> None:
        self.high = high
        self.written: list[bytes] = []
        self.buffered = 0
        self.reading = True
        self.paused = False
        self.protocol: Any = None

    def write(self, data: bytes) -> None:
        self.written.append(data)
        self.buffered += len(data)
        if self.buffered > self.high and not self.paused:
            self.paused = True
            self.protocol.pause_writing()

    def drain(self) -> None:
        self.buffered, self.paused = 0, False
        self.protocol.resume_writing()

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_write_buffer_size(self) -> int:
        return self.buffered


class Fallback(asyncio.Protocol):
    """Stands in for aiohttp's protocol: records what it is handed."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.received = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data


class FixedAnswers(Ingest):
    def answer(self, authorization: str | None, body: bytes, close: bool) -> bytes:
        return b"answer-%d;" % len(body)


def test_a_client_that_does_not_read_pauses_answering_and_the_hand_off_waits() -> None:
    handed: list[Fallback] = []
    monitor = cast(Monitor, SimpleNamespace(stats=Stats()))
    ingest = FixedAnswers(monitor, lambda: handed.append(Fallback()) or handed[-1])
    protocol = ingest.protocol()
    transport = Transport(high=25)
    transport.protocol = protocol
    protocol.connection_made(cast(Any, transport))
    get = b"GET /v1/nodes HTTP/1.1\r\nHost: m\r\n\r\n"
    protocol.data_received(push(b"{}") * 5 + get)
    assert transport.written == [b"answer-2;"] * 3  # 27 bytes > 25: paused, nothing more
    assert not transport.reading and not handed
    transport.drain()
    assert transport.written == [b"answer-2;"] * 5 and transport.reading
    assert len(handed) == 1 and handed[0].received == get and handed[0].transport is transport
    assert transport.protocol is handed[0] and protocol not in ingest.connections
    assert monitor.stats.http_handoffs == 1
