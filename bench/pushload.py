"""The push load generator: one bounded process simulating N nodes that push every second.

``python -m bench.pushload --url http://HOST:PORT`` POSTs wire-v1 heartbeats on
keep-alive connections; ``--url udp://HOST:PORT`` sends them as signed datagrams
(``pimon.wire.seal_datagram``). Either way node i speaks at i/N of every second,
so the load is even, never a burst at the top of the second. It only targets
loopback, at most 50,000 nodes for at most 600 s.

HTTP goes over asyncio streams rather than the aiohttp client: the client costs
several times more CPU per request, so at 10,000 requests/s the generator, not
the monitor, would be measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import re
import resource
import signal
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from bench import quantile
from pimon.wire import seal_datagram

MAX_NODES = 50_000
MAX_CONNECTIONS = 16_000  # and no more than the file descriptors allow
MAX_DURATION_S = 600.0
LEAD_S = 0.5  # from the end of start-up to the first heartbeat
# Connections opened at once: thousands would overflow the monitor's listen backlog, and
# each SYN retry costs a second.
CONNECTING_AT_ONCE = 64
# Like an agent, a node never catches up on missed pushes: a slot already this late (in
# intervals) is skipped, not sent in a burst with the next one.
SKIP_LATE = 0.5
CONTENT_LENGTH_RE = re.compile(rb"(?i)content-length: *(\d+)")

Node = tuple[str, str, str, float]  # name, id, boot, offset in the second
Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def heartbeat_body(name: str, node_id: str, boot: str, seq: int, now: float) -> bytes:
    """Return a wire-v1 heartbeat with most metrics left out, as compact JSON."""
    return (
        f'{{"v":1,"name":"{name}","id":"{node_id}","boot":"{boot}","seq":{seq},'
        f'"sent_at":{now:.3f},"interval":1.0,"ok":true,"problems":[],"leaving":false,'
        f'"metrics":{{"cpu_percent":12.5,"mem_percent":40.1,"load1":0.3}}}}'
    ).encode()


def make_nodes(count: int) -> list[Node]:
    """Return ``count`` simulated nodes, node i speaking at i/count of every second."""
    return [(f"push-{i:05d}", str(uuid.uuid4()), f"{i:016x}", i / count) for i in range(count)]


@dataclass(slots=True)
class Tally:
    """What the generator did."""

    sent: int = 0
    accepted: int = 0  # HTTP: answered 202; UDP: never known here (the monitor counts)
    failed: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    skipped: int = 0  # pushes not sent: the node was still waiting for an earlier answer
    lates: list[float] = field(default_factory=list)  # seconds behind schedule, per send


class HttpGenerator:
    """Push heartbeats on a schedule over keep-alive connections to one monitor."""

    def __init__(self, url: str, token: str, duration: float) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.head = (
            f"POST /v1/heartbeat HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            "Content-Length: "
        ).encode()
        self.duration = duration
        self.tally = Tally()
        self.start = 0.0

    async def connect(self, gate: asyncio.Semaphore) -> Streams:
        """Open one keep-alive connection, a few at a time."""
        async with gate:
            return await asyncio.open_connection(self.host, self.port)

    async def drive(self, nodes: list[Node], streams: Streams) -> None:
        """Push for ``nodes`` over one connection."""
        loop = asyncio.get_running_loop()
        reader, writer = streams
        tally = self.tally
        try:
            for second in range(math.ceil(self.duration)):
                for name, node_id, boot, offset in nodes:
                    delay = self.start + second + offset - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    elif delay < -SKIP_LATE:
                        tally.skipped += 1
                        continue
                    tally.lates.append(max(0.0, -delay))
                    body = heartbeat_body(name, node_id, boot, second + 1, time.time())
                    writer.write(self.head + str(len(body)).encode() + b"\r\n\r\n" + body)
                    tally.sent += 1
                    answer = await reader.readuntil(b"\r\n\r\n")
                    status = int(answer[9:12])
                    length = CONTENT_LENGTH_RE.search(answer)
                    if length:
                        await reader.readexactly(int(length.group(1)))
                    tally.statuses[status] = tally.statuses.get(status, 0) + 1
                    if status == 202:
                        tally.accepted += 1
                    else:
                        tally.failed += 1
        finally:
            writer.close()

    async def run(self, count: int, connections: int) -> Tally:
        """Push from ``count`` nodes for the duration; return the tally."""
        nodes = make_nodes(count)
        lanes = [lane for c in range(connections) if (lane := nodes[c::connections])]
        gate = asyncio.Semaphore(CONNECTING_AT_ONCE)
        opened = await asyncio.gather(*(self.connect(gate) for _ in lanes), return_exceptions=True)
        self.start = announce_start(self.duration)
        results = await asyncio.gather(
            *(
                self.drive(lane, streams)
                for lane, streams in zip(lanes, opened, strict=True)
                if not isinstance(streams, BaseException)
            ),
            return_exceptions=True,
        )
        errors = [r for r in [*opened, *results] if isinstance(r, BaseException)]
        self.tally.failed += len(errors)
        if errors:
            print(f"{len(errors)} connections failed, first: {errors[0]!r}", file=sys.stderr)
        return self.tally

    def counted(self) -> int:
        """Return the heartbeats known to have arrived: those answered 202."""
        return self.tally.accepted


class DatagramGenerator:
    """Send signed heartbeat datagrams on a schedule from one socket."""

    def __init__(self, url: str, token: str, duration: float) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 7070
        self.token = token
        self.duration = duration
        self.tally = Tally()
        self.start = 0.0

    async def run(self, count: int, connections: int = 1) -> Tally:
        """Send for ``count`` nodes for the duration; return the tally (no answers to count)."""
        loop = asyncio.get_running_loop()
        nodes = make_nodes(count)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        tally = self.tally
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            # Connected, so a monitor not listening on UDP shows up as refused sends.
            sock.connect((self.host, self.port))
            self.start = announce_start(self.duration)
            total = math.ceil(self.duration) * count
            i = 0
            while i < total:
                now = loop.time()
                # Send everything due by now, then sleep until the next one is due.
                while i < total:
                    second, k = divmod(i, count)
                    due = self.start + second + nodes[k][3]
                    if due > now:
                        break
                    name, node_id, boot, _ = nodes[k]
                    body = heartbeat_body(name, node_id, boot, second + 1, time.time())
                    tally.lates.append(now - due)
                    try:
                        sock.send(seal_datagram(self.token, body))
                        tally.sent += 1
                    except OSError:  # refused (nobody listens) or no buffer: lost
                        tally.failed += 1
                    i += 1
                if i < total:
                    second, k = divmod(i, count)
                    await asyncio.sleep(max(0.0, self.start + second + nodes[k][3] - loop.time()))
        return tally

    def counted(self) -> int:
        """Return the heartbeats sent (datagrams have no answer; the monitor counts arrivals)."""
        return self.tally.sent


Generator = HttpGenerator | DatagramGenerator


def announce_start(duration: float) -> float:
    """Return when the schedule starts (loop time); print when it ends (wall clock)."""
    start = asyncio.get_running_loop().time() + LEAD_S
    print(f"ends {time.time() + LEAD_S + math.ceil(duration):.3f}", flush=True)
    return start


def make_generator(url: str, token: str, duration: float) -> Generator:
    """Return the generator for ``url``: ``http://`` posts, ``udp://`` datagrams."""
    if url.startswith("udp://"):
        return DatagramGenerator(url, token, duration)
    return HttpGenerator(url, token, duration)


async def run_until_stopped(generator: Generator, count: int, connections: int) -> Tally:
    """Run the generator, printing progress each second; SIGTERM ends it early."""
    task = asyncio.ensure_future(generator.run(count, connections))
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    reporter = asyncio.ensure_future(report_progress(generator))
    with contextlib.suppress(asyncio.CancelledError):
        await task
    reporter.cancel()
    print(f"progress {generator.counted()} {time.time():.3f}", flush=True)
    print("done", flush=True)
    return generator.tally


async def report_progress(generator: Generator) -> None:
    """Print the count of arrived (HTTP) or sent (UDP) heartbeats and the time, every second."""
    while True:
        print(f"progress {generator.counted()} {time.time():.3f}", flush=True)
        await asyncio.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    """Run the load generator and print its tally as one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench.pushload")
    parser.add_argument("--url", required=True, help="http://HOST:PORT or udp://HOST:PORT")
    parser.add_argument("--token-file", required=True)
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument(
        "--connections", type=int, default=0, help="HTTP only; 0: one per node, like agents"
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    host = urlsplit(args.url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the generator only targets loopback")
    count = min(max(args.nodes, 1), MAX_NODES)
    duration = min(max(args.duration, 1.0), MAX_DURATION_S)
    descriptors = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 64
    connections = min(args.connections or count, MAX_CONNECTIONS, descriptors, count)
    connections = max(connections, 1)
    with open(args.token_file, encoding="utf-8") as f:
        token = f.read().strip()
    print("generating", flush=True)
    generator = make_generator(args.url, token, duration)
    tally = asyncio.run(run_until_stopped(generator, count, connections))
    figures = {
        "sent": tally.sent,
        "accepted": tally.accepted,
        "failed": tally.failed,
        "skipped": tally.skipped,
        "late_p99_s": quantile(tally.lates, 0.99),
        "statuses": tally.statuses,
    }
    print("tally " + json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
