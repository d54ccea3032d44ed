"""Serve N simulated agents from one process: one loopback port per node, asyncio.

Each port answers ``GET /v1/heartbeat`` (a wire-v1 heartbeat with real-looking
metrics and an increasing seq) and ``GET /metrics`` (the same data in the
exposition the real agent serves), so the monitor and Prometheus check the same
fleet. A control port answers ``GET /stats`` with request counts per path.

Run ``python -m bench.simulator --nodes N --nodes-file F --duration S``; it
prints ``ready control=HOST:PORT`` once every port listens and exits after S
seconds (or on SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field

from pimon.exposition import agent_families, render
from pimon.wire import Heartbeat, Metrics, metrics_dict

MAX_HEAD = 8192
MAX_CONNECTIONS_PER_PORT = 16
MAX_NODES = 20000
MAX_DURATION_S = 3600.0


@dataclass(slots=True)
class SimNode:
    """One simulated agent: its identity and its pre-rendered answers."""

    name: str
    heartbeat_template: str  # %-format with (seq, sent_at)
    metrics_body: bytes
    seq: int = 0
    port: int = 0
    connections: int = 0


@dataclass(slots=True)
class Counts:
    """Requests served, per path."""

    by_path: dict[str, int] = field(default_factory=dict)

    def add(self, path: str) -> None:
        """Count one request."""
        self.by_path[path] = self.by_path.get(path, 0) + 1


def make_node(name: str, rng: random.Random, interval: float = 1.0) -> SimNode:
    """Build a node whose metrics look like a busy Raspberry Pi."""
    metrics = Metrics(
        cpu_percent=round(rng.uniform(2, 60), 1),
        load1=round(rng.uniform(0, 3), 2),
        load5=round(rng.uniform(0, 2), 2),
        load15=round(rng.uniform(0, 1.5), 2),
        mem_percent=round(rng.uniform(20, 70), 1),
        mem_total_bytes=8_245_825_536,
        swap_percent=0.0,
        disk_percent=round(rng.uniform(10, 60), 1),
        temp_c=round(rng.uniform(40, 65), 1),
        uptime_s=rng.randrange(1000, 10_000_000),
        net_rx_bytes=rng.randrange(10**6, 10**11),
        net_tx_bytes=rng.randrange(10**6, 10**11),
        model="Raspberry Pi 4 Model B Rev 1.4",
    )
    node_id = str(uuid.UUID(int=rng.getrandbits(128)))
    boot = f"{rng.getrandbits(64):016x}"
    hb = Heartbeat(1, name, node_id, 1, time.time(), interval, None, True, [], False, metrics, boot)
    body = {
        "v": 1,
        "name": name,
        "id": node_id,
        "boot": boot,
        "seq": 1234567890123,
        "sent_at": 9876543210.5,
        "interval": interval,
        "address": None,
        "ok": True,
        "problems": [],
        "leaving": False,
        "metrics": metrics_dict(metrics),
    }
    # Template the two fields that change, so an answer costs one %-format, not a JSON encode.
    text = json.dumps(body, separators=(",", ":")).replace("%", "%%")
    template = text.replace("1234567890123", "%d").replace("9876543210.5", "%.3f")
    return SimNode(name, template, render(agent_families(hb)).encode())


def respond(status: int, content_type: str, body: bytes, keep_alive: bool) -> bytes:
    """Return a complete HTTP/1.1 answer."""
    reason = {200: "OK", 404: "Not Found", 400: "Bad Request", 413: "Payload Too Large"}[status]
    head = (
        f"HTTP/1.1 {status} {reason}\r\nServer: pimon-bench-sim\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class Connection(asyncio.Protocol):
    """One client connection to one simulated agent."""

    def __init__(self, node: SimNode, counts: Counts, open_set: set[Connection]) -> None:
        self.node = node
        self.counts = counts
        self.open_set = open_set
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.open_set.add(self)
        self.node.connections += 1
        if self.node.connections > MAX_CONNECTIONS_PER_PORT:
            transport.close()  # bounded: a misbehaving client cannot exhaust descriptors

    def connection_lost(self, exc: Exception | None) -> None:
        self.node.connections -= 1
        self.open_set.discard(self)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            answer, keep_alive = self.answer(head)
            self.transport.write(answer)
            if not keep_alive:
                self.transport.close()
                return
        if len(self.buffer) > MAX_HEAD:
            self.transport.close()

    def answer(self, head: bytes) -> tuple[bytes, bool]:
        """Return the answer to one request head and whether to keep the connection."""
        lower = head.lower()
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or (b"content-length:" in lower and b"content-length: 0" not in lower):
            return respond(400, "text/plain", b"bad request\n", False), False
        keep_alive = b"connection: close" not in lower and parts[2] == b"HTTP/1.1"
        path = parts[1].split(b"?", 1)[0]
        node = self.node
        if path == b"/v1/heartbeat":
            self.counts.add("heartbeat")
            node.seq += 1
            body = (node.heartbeat_template % (node.seq, time.time())).encode()
            return respond(200, "application/json", body, keep_alive), keep_alive
        if path == b"/metrics":
            self.counts.add("metrics")
            ctype = "text/plain; version=0.0.4; charset=utf-8"
            return respond(200, ctype, node.metrics_body, keep_alive), keep_alive
        self.counts.add("other")
        return respond(404, "text/plain", b"not found\n", keep_alive), keep_alive


class Control(asyncio.Protocol):
    """The control port: ``GET /stats`` answers the request counts."""

    def __init__(self, counts: Counts) -> None:
        self.counts = counts

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        body = json.dumps(self.counts.by_path).encode()
        self.transport.write(respond(200, "application/json", body, False))
        self.transport.close()


class Simulator:
    """N simulated agents on N loopback ports of one event loop."""

    def __init__(self, nodes: int, prefix: str = "sim", seed: int = 1) -> None:
        if not 1 <= nodes <= MAX_NODES:
            raise ValueError(f"nodes must be 1-{MAX_NODES}, got {nodes}")
        rng = random.Random(seed)
        self.nodes = [make_node(f"{prefix}-{i:05d}", rng) for i in range(1, nodes + 1)]
        self.counts = Counts()
        self.servers: list[asyncio.Server] = []
        self.open: set[Connection] = set()

    async def start(self) -> None:
        """Listen on one loopback port per node."""
        loop = asyncio.get_running_loop()
        for node in self.nodes:

            def factory(node: SimNode = node) -> Connection:
                return Connection(node, self.counts, self.open)

            server = await loop.create_server(
                factory,
                "127.0.0.1",
                0,
                backlog=64,
            )
            node.port = server.sockets[0].getsockname()[1]
            self.servers.append(server)

    async def start_control(self) -> tuple[str, int]:
        """Listen for ``GET /stats`` on a loopback port; return its address."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Control(self.counts), "127.0.0.1", 0)
        self.servers.append(server)
        host, port = server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    def node_lines(self) -> list[str]:
        """Return one ``name=127.0.0.1:port`` line per node, as a monitor nodes file wants."""
        return [f"{n.name}=127.0.0.1:{n.port}" for n in self.nodes]

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        for server in self.servers:
            server.close()
        for connection in list(self.open):
            if connection.transport is not None:
                connection.transport.close()
        await asyncio.sleep(0)


def write_lines(path: str, lines: list[str]) -> None:
    """Write one line per item."""
    with open(path, "w", encoding="ascii") as f:
        f.write("\n".join(lines) + "\n")


async def serve(nodes: int, nodes_file: str, duration: float, prefix: str) -> None:
    """Run the simulator until ``duration`` passes or a signal arrives."""
    sim = Simulator(nodes, prefix)
    await sim.start()
    host, port = await sim.start_control()
    await asyncio.to_thread(write_lines, nodes_file, sim.node_lines())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"ready control={host}:{port}", flush=True)
    try:
        await asyncio.wait_for(stop.wait(), duration)
    except TimeoutError:
        print("duration reached, exiting", flush=True)
    await sim.close()


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--nodes-file", required=True)
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--prefix", default="sim")
    args = parser.parse_args(argv)
    duration = min(max(args.duration, 1.0), MAX_DURATION_S)
    asyncio.run(serve(args.nodes, args.nodes_file, duration, args.prefix))
    return 0


if __name__ == "__main__":
    sys.exit(main())
