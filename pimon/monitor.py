"""The monitor daemon: wires poller, receiver, detector ticks, membership, store and events."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
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
from pimon.store import NodeRecord, Store
from pimon.views import node_view
from pimon.wire import Heartbeat

log = logging.getLogger("pimon.monitor")

TICK_S = 0.1
UPTIME_WINDOWS = ("1h", "24h", "7d", "30d")
UPTIME_REFRESH_S = 60.0
UPTIME_DIRTY_S = 2.0
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


@dataclass(slots=True)
class Stats:
    """Counters about the monitor itself, exported in /metrics."""

    started_at: float = field(default_factory=time.time)
    heartbeats_received: int = 0
    heartbeats_rejected: int = 0
    transitions: int = 0
    local_pauses: int = 0
    loop_lag_s: float = 0.0
    loop_lag_max_s: float = 0.0
    # The last minute of tick lags (10 ticks a second), for a p99 that forgets.
    recent_lags: deque[float] = field(default_factory=lambda: deque(maxlen=600))

    def lag_p99(self) -> float:
        """Return the 99th percentile of the event-loop lag over the last minute."""
        if not self.recent_lags:
            return 0.0
        ordered = sorted(self.recent_lags)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


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
        self.uptimes: dict[str, dict[str, float | None]] = {}
        self._stale_uptime: set[str] = set()
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
            self._spawn(self._uptime_refresher(), "uptime")
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
            self._stale_uptime.add(t.node)
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
        uptime = self.uptimes.get(node.name, {})
        for window in UPTIME_WINDOWS:
            view[f"uptime_{window}"] = uptime.get(window)
        return view

    async def _uptime_refresher(self) -> None:
        assert self.store is not None
        cursor = 0
        while True:
            # Off the event loop (uptime reads a month of transitions per node), and a
            # slice at a time: one big sweep over 10,000 nodes in a thread would hold
            # the GIL long enough to stall the loop. Changed nodes go first.
            names = sorted(self.membership.nodes)
            share = max(1, math.ceil(len(names) * UPTIME_DIRTY_S / UPTIME_REFRESH_S))
            batch = set(names[cursor : cursor + share]) | {
                n for n in self._stale_uptime if n in self.membership.nodes
            }
            cursor = cursor + share if cursor + share < len(names) else 0
            if self._stale_uptime:
                self._stale_uptime.clear()
                # The writer commits at most every 2 s: wait for it so the change counts.
                await asyncio.to_thread(self.store.flush)
            if batch:
                fresh = await asyncio.to_thread(self._compute_uptimes, sorted(batch), time.time())
                self.uptimes.update(fresh)
            await asyncio.sleep(UPTIME_DIRTY_S)

    def _compute_uptimes(self, names: list[str], now: float) -> dict[str, dict[str, float | None]]:
        assert self.store is not None
        return {name: self.store.uptime(name, now) for name in names}

    def self_metrics(self) -> dict[str, float]:
        """Return the monitor's own counters under their exposition names."""
        s = self.stats
        stats: dict[str, float] = {
            "pimon_monitor_start_time_seconds": s.started_at,
            "pimon_monitor_heartbeats_received_total": s.heartbeats_received,
            "pimon_monitor_heartbeats_rejected_total": s.heartbeats_rejected,
            "pimon_monitor_polls_total": self.poller.polls,
            "pimon_monitor_poll_errors_total": self.poller.errors,
            "pimon_monitor_transitions_total": s.transitions,
            "pimon_monitor_event_loop_lag_seconds": s.loop_lag_s,
            "pimon_monitor_event_loop_lag_max_seconds": s.loop_lag_max_s,
            "pimon_monitor_event_loop_lag_p99_seconds": s.lag_p99(),
            "pimon_monitor_local_pauses_total": s.local_pauses,
            "pimon_monitor_event_subscribers": self.events.subscribers,
            "pimon_monitor_events_dropped_total": self.events.dropped,
        }
        sent, failed = self.alerts.totals()
        stats["pimon_monitor_alerts_sent_total"] = sent
        stats["pimon_monitor_alert_errors_total"] = failed
        if self.store is not None:
            health = self.store.health()
            stats["pimon_monitor_db_write_errors_total"] = health.write_errors
            stats["pimon_monitor_db_pending_writes"] = health.pending
        return stats

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        expected = loop.time() + TICK_S
        while True:
            await asyncio.sleep(max(0.0, expected - loop.time()))
            lag = max(0.0, loop.time() - expected)
            self.stats.loop_lag_s = lag
            self.stats.recent_lags.append(lag)
            self.stats.loop_lag_max_s = max(self.stats.loop_lag_max_s, lag)
            self.publish(self.membership.tick(time.time()))
            self.stats.local_pauses = self.membership.stalls
            expected = max(expected + TICK_S, loop.time())
