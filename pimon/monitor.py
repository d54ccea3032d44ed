"""The monitor daemon: wires poller, receiver, detector ticks, membership, store and events."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

from pimon.alertconfig import AlertConfig
from pimon.alertservice import AlertService
from pimon.claims import Claim, claim
from pimon.detector import DetectorConfig
from pimon.events import Events
from pimon.membership import Failure, Membership, Node, State, Transition
from pimon.parse import NodeSpec
from pimon.poller import Poller, PollResult, poll_once
from pimon.rollup import COLUMNS, Retention
from pimon.selfstats import Stats, exported_stats
from pimon.store import NodeRecord, Store
from pimon.uptimecache import UptimeCache
from pimon.views import node_view
from pimon.wire import Heartbeat

log = logging.getLogger("pimon.monitor")

TICK_S = 0.1
SAMPLE_EVERY_S = 10.0
MAX_SAMPLES_PER_S = 200.0  # metric samples kept per node; the detector sees every heartbeat
SAMPLED = tuple(c for c in COLUMNS if c != "rtt_ms")  # read from the heartbeat's metrics


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
    udp: bool = False
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    alerts: AlertConfig = field(default_factory=AlertConfig)
    retention: Retention = field(default_factory=Retention)


class Monitor:
    """Watch nodes: poll the pull ones, receive pushes, judge them all, publish changes."""

    def __init__(self, config: MonitorConfig, store: Store | None = None) -> None:
        self.config = config
        self.membership = Membership(replace(config.detector, interval=config.interval))
        self.poller = Poller(config.interval, self._on_poll)
        self.events = Events()
        self.stats = Stats()
        self.store = store
        self._sampled_at: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.uptime = UptimeCache(self.membership)
        self.alerts = AlertService(self)

    async def start(self) -> None:
        """Restore known nodes, start polling and the detector ticks."""
        await self.poller.start()
        now = time.time()
        if self.store is not None:
            self._restore(await asyncio.to_thread(self.store.load_nodes), now)
        for spec in self.config.nodes:
            self.add_pull_node(spec.name, spec.address, source="static", now=now)
        self._spawn(self._ticker(), "ticker")
        if self.store is not None:
            self._spawn(self.uptime.run(self.store), "uptime")
        await self.alerts.start()

    async def stop(self) -> None:
        """Stop every task and close connections."""
        await self.alerts.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.poller.close()

    def _spawn(self, coro: object, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _restore(self, records: list[NodeRecord], now: float) -> None:
        # Whatever happened while the monitor was away is unknown: say so in the
        # history from the moment it was last alive, then wait for heartbeats.
        away_since = max((r.last_seen or 0.0 for r in records), default=0.0) or now
        configured = {spec.name for spec in self.config.nodes}
        for rec in records:
            if rec.source == "static" and rec.name not in configured:
                assert self.store is not None
                self.store.delete_node(rec.name)  # dropped from the configuration
                log.info("%s: no longer configured; forgotten (its history stays)", rec.name)
                continue
            node = self.membership.add(
                rec.name, mode=rec.mode, source=rec.source, address=rec.address, now=now
            )
            node.id = rec.id
            if rec.id:
                self.membership.by_id[rec.id] = rec.name
            node.last_seen = rec.last_seen
            if rec.state == State.LEFT:
                node.state, node.since, node.reason = State.LEFT, rec.since, "agent shut down"
            elif rec.state != State.UNKNOWN:
                t = Transition(
                    rec.name,
                    State(rec.state),
                    State.UNKNOWN,
                    max(away_since, rec.since),
                    "monitor restarted: state unknown until the next heartbeat",
                )
                node.history.append(t)
                self.publish([t])
            if rec.mode == "pull" and rec.address and rec.source == "api":
                self.poller.watch(rec.name, rec.address)
        log.info("restored %d nodes from the history database", len(records))

    # Membership changes

    def add_pull_node(self, name: str, address: str, *, source: str, now: float) -> Node:
        """Watch a pull node and start polling it."""
        node = self.membership.add(name, mode="pull", source=source, address=address, now=now)
        self.poller.watch(name, address)
        self._persist(node)
        return node

    def remove_node(self, name: str) -> Node | None:
        """Stop watching a node; its history stays."""
        self.poller.unwatch(name)
        node = self.membership.remove(name)
        if node is not None:
            self._sampled_at.pop(name, None)
            self.events.removed(name)
            if self.store is not None:
                self.store.delete_node(name)
            log.info("%s: deregistered", name)
        return node

    def receive(self, hb: Heartbeat, now: float) -> Claim:
        """Take a pushed heartbeat."""
        result = claim(self.membership, hb, now, max_nodes=self.config.max_nodes)
        if result.status >= 400:
            self.stats.heartbeats_rejected += 1
            return result
        self.stats.heartbeats_received += 1
        if result.renamed_from:
            log.info("%s: renamed to %s (same node id %s)", result.renamed_from, hb.name, hb.id)
            self.poller.unwatch(result.renamed_from)
            if self.store is not None:
                self.store.delete_node(result.renamed_from)
            self.events.removed(result.renamed_from)
        if result.replaced:
            log.warning(
                "%s: name taken over by node id %s (was %s)", hb.name, hb.id, result.replaced
            )
        if result.created:
            log.info("%s: registered by its first push (id %s)", hb.name, hb.id)
        node = self.membership.nodes[hb.name]
        if node.mode == "push" and node.address and hb.name in self.poller.watched:
            self.poller.unwatch(hb.name)  # the push path works again: stop the fallback polling
        self._after_heartbeat(node, hb, now, result.transitions, force=result.created)
        return result

    def _on_poll(self, name: str, result: PollResult) -> None:
        node = self.membership.nodes.get(name)
        if node is None:
            return  # deregistered while its poll was in flight
        if result.heartbeat is not None:
            self.stats.heartbeats_received += 1
            changes = self.membership.on_heartbeat(
                name, result.heartbeat, result.received_at, rtt_ms=result.rtt_ms
            )
            self._after_heartbeat(node, result.heartbeat, result.received_at, changes)
        else:
            assert result.failure is not None
            log.debug("%s: poll failed: %s", name, result.detail)
            self.publish(
                self.membership.on_failure(name, result.failure, result.detail, result.received_at)
            )

    def _after_heartbeat(
        self, node: Node, hb: Heartbeat, now: float, changes: list[Transition], force: bool = False
    ) -> None:
        self.publish(changes)
        self.events.touched(node.name)
        if self.store is None:
            return
        # Big clusters are sampled less often, so the writer thread (which shares
        # the GIL and the core with detection) stays at a bounded number of rows.
        every = max(SAMPLE_EVERY_S, len(self.membership.nodes) / MAX_SAMPLES_PER_S)
        if force or changes or now - self._sampled_at.get(node.name, 0.0) >= every:
            self._sampled_at[node.name] = now
            values: dict[str, float | None] = {k: getattr(hb.metrics, k) for k in SAMPLED}
            values["rtt_ms"] = node.rtt_ms
            self.store.record_sample(node.name, now, values)
            self._persist(node)

    def publish(self, transitions: list[Transition]) -> None:
        """Log, store and fan out state changes; probe push nodes that turn suspect."""
        for t in transitions:
            log.info("%s: %s -> %s (%s)", t.node, t.old, t.new, t.reason)
            if self.store is not None:
                self.store.record_transition(t)
                node = self.membership.nodes.get(t.node)
                if node is not None:
                    self._persist(node)
            if t.new is State.SUSPECT:
                self._maybe_probe(t.node)
            self.uptime.mark_stale(t.node)
        self.stats.transitions += len(transitions)
        self.events.publish(transitions)

    def _persist(self, node: Node) -> None:
        if self.store is None:
            return
        self.store.upsert_node(
            NodeRecord(
                node.name,
                node.id,
                node.address,
                node.mode,
                node.source,
                str(node.state),
                node.since,
                node.last_seen,
                node.watched_since,
                {},
            )
        )

    # Probe on suspicion (push nodes)

    def _maybe_probe(self, name: str) -> None:
        node = self.membership.nodes.get(name)
        if node is None or node.mode != "push" or not node.address or name in self.poller.watched:
            return
        self._spawn(self._probe(name, node.address), f"probe {name}")

    async def _probe(self, name: str, address: str) -> None:
        result = await poll_once(self.poller.client, address, self.poller.timeout)
        node = self.membership.nodes.get(name)
        if node is None or node.state is not State.SUSPECT:
            return  # a push arrived meanwhile, or it was deregistered
        if result.heartbeat is not None:
            log.warning(
                "%s: pushes stopped but its agent answers at %s: push path broken; "
                "polling it until pushes resume",
                name,
                address,
            )
            node.push_broken = True
            changes = self.membership.on_heartbeat(
                name,
                result.heartbeat,
                result.received_at,
                rtt_ms=result.rtt_ms,
                reason="push path broken",
            )
            self._after_heartbeat(node, result.heartbeat, result.received_at, changes)
            self.poller.watch(name, address)
        elif result.failure is Failure.REFUSED:
            self.publish(self.membership.convict(name, result.detail, result.received_at))
        else:
            log.info("%s: probe of %s: %s; waiting for the detector", name, address, result.detail)

    # Views and self-metrics

    def view(self, node: Node, now: float) -> dict[str, Any]:
        """Return a node's API view, with its uptime per window."""
        view = node_view(node, now)
        view.update(self.uptime.fields(node.name))
        return view

    def self_metrics(self) -> dict[str, float]:
        """Return the monitor's own counters under their exposition names."""
        return exported_stats(self)

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        expected = loop.time() + TICK_S
        while True:
            await asyncio.sleep(max(0.0, expected - loop.time()))
            self.stats.record_lag(max(0.0, loop.time() - expected))
            self.publish(self.membership.tick(time.time()))
            self.stats.local_pauses = self.membership.stalls
            expected = max(expected + TICK_S, loop.time())
