"""The monitor daemon: wires poller, detector ticks, membership, events and the API."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from aiohttp import web

from pimon import __version__
from pimon.detector import DetectorConfig
from pimon.membership import Membership, Transition
from pimon.parse import NodeSpec, join_host_port
from pimon.poller import Poller, PollResult

log = logging.getLogger("pimon.monitor")

TICK_S = 0.1
LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(slots=True)
class MonitorConfig:
    """What the monitor needs to run."""

    listen: tuple[str, int] = ("0.0.0.0", 7070)
    nodes: list[NodeSpec] = field(default_factory=list)
    interval: float = 1.0
    db: str | None = None
    token: str | None = None
    read_token: str | None = None
    insecure: bool = False
    max_nodes: int = 10000
    detector: DetectorConfig = field(default_factory=DetectorConfig)


@dataclass(slots=True)
class Stats:
    """Counters about the monitor itself, exported in /metrics."""

    started_at: float = field(default_factory=time.time)
    heartbeats_received: int = 0
    transitions: int = 0
    loop_lag_s: float = 0.0
    loop_lag_max_s: float = 0.0


class Events:
    """Fan transitions out to subscribers; a slow subscriber loses events, never blocks."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[Transition]] = set()
        self.dropped = 0

    def subscribe(self, maxsize: int = 10000) -> asyncio.Queue[Transition]:
        """Return a new queue that receives every future transition."""
        queue: asyncio.Queue[Transition] = asyncio.Queue(maxsize)
        self.queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Transition]) -> None:
        """Stop delivering to ``queue``."""
        self.queues.discard(queue)

    def publish(self, transitions: Iterable[Transition]) -> None:
        """Deliver transitions to every subscriber without waiting."""
        for t in transitions:
            for queue in self.queues:
                try:
                    queue.put_nowait(t)
                except asyncio.QueueFull:
                    self.dropped += 1


class Monitor:
    """Watch nodes: poll the pull ones, judge them all, publish what changes."""

    def __init__(self, config: MonitorConfig) -> None:
        self.config = config
        detector = config.detector
        if detector.interval != config.interval:
            detector = replace(detector, interval=config.interval)
        self.membership = Membership(detector)
        self.poller = Poller(config.interval, self._on_poll)
        self.events = Events()
        self.stats = Stats()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Start polling the static nodes and the detector ticks."""
        await self.poller.start()
        now = time.time()
        for spec in self.config.nodes:
            self.add_pull_node(spec.name, spec.address, source="static", now=now)
        self._tasks.append(asyncio.create_task(self._ticker(), name="ticker"))

    async def stop(self) -> None:
        """Stop every task and close connections."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.poller.close()

    def add_pull_node(self, name: str, address: str, *, source: str, now: float) -> None:
        """Watch a pull node and start polling it."""
        self.membership.add(name, mode="pull", source=source, address=address, now=now)
        self.poller.watch(name, address)

    def remove_node(self, name: str) -> bool:
        """Stop watching a node; return whether it was known."""
        self.poller.unwatch(name)
        return self.membership.remove(name) is not None

    def _on_poll(self, name: str, result: PollResult) -> None:
        if name not in self.membership.nodes:
            return  # deregistered while its poll was in flight
        if result.heartbeat is not None:
            self.stats.heartbeats_received += 1
            changes = self.membership.on_heartbeat(
                name, result.heartbeat, result.received_at, rtt_ms=result.rtt_ms
            )
        else:
            assert result.failure is not None
            log.debug("%s: poll failed: %s", name, result.detail)
            changes = self.membership.on_failure(
                name, result.failure, result.detail, result.received_at
            )
        self.publish(changes)

    def publish(self, transitions: list[Transition]) -> None:
        """Log and fan out state changes."""
        for t in transitions:
            log.info("%s: %s -> %s (%s)", t.node, t.old, t.new, t.reason)
        self.stats.transitions += len(transitions)
        self.events.publish(transitions)

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        expected = loop.time() + TICK_S
        while True:
            await asyncio.sleep(max(0.0, expected - loop.time()))
            lag = max(0.0, loop.time() - expected)
            self.stats.loop_lag_s = lag
            self.stats.loop_lag_max_s = max(self.stats.loop_lag_max_s, lag)
            self.publish(self.membership.tick(time.time()))
            expected = max(expected + TICK_S, loop.time())


def bind_host(config: MonitorConfig) -> str:
    """Return the host to bind: loopback when no token protects a public listen."""
    host = config.listen[0]
    if config.token or config.insecure or host in LOOPBACK:
        return host
    log.warning(
        "no token configured: listening on loopback only; set --token-file or pass --insecure"
    )
    return "::1" if ":" in host else "127.0.0.1"


async def serve(config: MonitorConfig, ready: asyncio.Event | None = None) -> None:
    """Run the monitor until cancelled or signalled."""
    from pimon.api import make_app

    monitor = Monitor(config)
    await monitor.start()
    app = make_app(monitor)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, bind_host(config), config.listen[1])
    await site.start()
    server = getattr(site, "_server", None)
    sockets = getattr(server, "sockets", None) or []
    host, port = sockets[0].getsockname()[:2] if sockets else config.listen
    if config.insecure and not config.token:
        log.warning("--insecure: the API accepts writes from anyone who can reach it")
    log.info(
        "pimon monitor %s listening on http://%s (%d nodes, interval %ss)",
        __version__,
        join_host_port(host, port),
        len(config.nodes),
        config.interval,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
        log.info("stopping")
    finally:
        await runner.cleanup()
        await monitor.stop()
        log.info("pimon monitor stopped")


def run(config: MonitorConfig) -> int:
    """Run the monitor in the foreground."""
    asyncio.run(serve(config))
    return 0
