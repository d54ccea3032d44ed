"""Nodes and their state machine: pure, every decision takes ``now``."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

from pimon.detector import DetectorConfig, PhiAccrual, StallGuard
from pimon.wire import Heartbeat


class State(StrEnum):
    """The state of one node, as seen by one monitor."""

    UNKNOWN = "unknown"
    UP = "up"
    DEGRADED = "degraded"
    SUSPECT = "suspect"
    DOWN = "down"
    LEFT = "left"


@dataclass(frozen=True, slots=True)
class Transition:
    """One recorded state change of one node."""

    node: str
    old: State
    new: State
    at: float
    reason: str


class Failure(StrEnum):
    """Why a poll got no heartbeat; the first three are definitive evidence."""

    REFUSED = "refused"
    BAD = "bad"
    UNRESOLVABLE = "unresolvable"
    TIMEOUT = "timeout"
    ERROR = "error"


DEFINITIVE = frozenset({Failure.REFUSED, Failure.BAD, Failure.UNRESOLVABLE})
# Definitive evidence must repeat on this many consecutive polls before it
# convicts: one refused connect can be an agent restarting under systemd.
DEFINITIVE_STREAK = 2
ALIVE = frozenset({State.UP, State.DEGRADED})
HISTORY_KEPT = 50
# A push node restored after a monitor restart may be backing off (the agent
# waits up to 30 s between tries to an unreachable monitor): give it that long.
PUSH_PATIENCE_S = 40.0


@dataclass(slots=True)
class Node:
    """One watched node: identity, last heartbeat, detector and state."""

    name: str
    mode: str  # "pull" or "push"
    source: str  # "static", "api" or "push"
    address: str | None
    detector: PhiAccrual
    state: State = State.UNKNOWN
    since: float = 0.0
    reason: str = "registered"
    watched_since: float = 0.0
    first_seen: float | None = None
    last_seen: float | None = None
    last: Heartbeat | None = None
    rtt_ms: float | None = None
    clock_offset_s: float | None = None
    last_error: str | None = None
    streak: int = 0
    id: str | None = None
    boot: str = ""
    seq: int = -1
    push_broken: bool = False
    history: deque[Transition] = field(default_factory=lambda: deque(maxlen=HISTORY_KEPT))


class Membership:
    """Every node's state machine, fed with heartbeats, failures and ticks."""

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        self.nodes: dict[str, Node] = {}
        self.by_id: dict[str, str] = {}  # node id -> name, so a renamed node stays one node
        self.stall = StallGuard(config.max_local_pause)
        self.stalls = 0

    def add(self, name: str, *, mode: str, source: str, address: str | None, now: float) -> Node:
        """Watch a node (or update the address of a known one) starting ``now``."""
        node = self.nodes.get(name)
        if node is None:
            node = Node(
                name, mode, source, address, PhiAccrual(self.config), since=now, watched_since=now
            )
            self.nodes[name] = node
        else:
            node.mode, node.source, node.address = mode, source, address
        return node

    def remove(self, name: str) -> Node | None:
        """Stop watching a node; its history stays in the store."""
        node = self.nodes.pop(name, None)
        if node is not None and node.id is not None and self.by_id.get(node.id) == name:
            del self.by_id[node.id]
        return node

    @staticmethod
    def is_stale(node: Node, hb: Heartbeat) -> bool:
        """Return whether ``hb`` is a replay or reordering from the same agent boot."""
        return bool(hb.boot) and hb.boot == node.boot and hb.seq <= node.seq

    def rename(self, old: str, new: str) -> Node:
        """Carry a node, its detector and its history over to a new name."""
        node = self.nodes.pop(old)
        node.name = new
        self.nodes[new] = node
        if node.id is not None:
            self.by_id[node.id] = new
        return node

    def convict(self, name: str, reason: str, now: float) -> list[Transition]:
        """Mark a node down on definitive evidence (a refused probe)."""
        node = self.nodes[name]
        node.last_error = reason
        return self._move(node, State.DOWN, reason, now)

    def on_heartbeat(
        self,
        name: str,
        hb: Heartbeat,
        now: float,
        *,
        rtt_ms: float | None = None,
        reason: str | None = None,
    ) -> list[Transition]:
        """Take a heartbeat received at ``now`` (monitor time, never the sender's)."""
        node = self.nodes[name]
        if self.is_stale(node, hb):
            return []
        if node.id != hb.id:
            if node.id is not None:
                self.by_id.pop(node.id, None)
            self.by_id[hb.id] = name
        node.id, node.boot, node.seq = hb.id, hb.boot, hb.seq
        if node.state in (State.DOWN, State.LEFT, State.UNKNOWN):
            # A long silence is not a sample of the inter-arrival distribution.
            node.detector.reset()
        if hb.interval != node.detector.interval:
            node.detector.set_interval(hb.interval)
        node.detector.heartbeat(now)
        node.last, node.last_seen, node.rtt_ms = hb, now, rtt_ms
        node.first_seen = node.first_seen or now
        transit = (rtt_ms or 0.0) / 2000.0
        node.clock_offset_s = round(hb.sent_at - (now - transit), 3)
        node.last_error, node.streak = None, 0
        if hb.leaving:
            return self._move(node, State.LEFT, "agent shut down", now)
        if not hb.ok:
            return self._move(node, State.DEGRADED, "; ".join(hb.problems) or "agent not ok", now)
        if reason is None:
            fresh = node.state in (State.UNKNOWN, State.DEGRADED)
            reason = "heartbeat ok" if fresh else "heartbeat received"
        return self._move(node, State.UP, reason, now)

    def on_failure(self, name: str, kind: Failure, detail: str, now: float) -> list[Transition]:
        """Take a failed poll; definitive evidence convicts once it repeats."""
        node = self.nodes[name]
        node.last_error = detail
        if node.state is State.LEFT:
            return []  # it said goodbye: an absent agent is expected
        if kind not in DEFINITIVE:
            node.streak = 0
            return []
        node.streak += 1
        if node.streak >= DEFINITIVE_STREAK:
            return self._move(node, State.DOWN, detail, now)
        return []

    def tick(self, now: float) -> list[Transition]:
        """Re-evaluate every node's detector at ``now``."""
        gap = self.stall.observe(now)
        if gap > 0:
            self.stalls += 1
            for node in self.nodes.values():
                node.detector.shift(gap, now=now)
                node.watched_since += gap
        out: list[Transition] = []
        for node in self.nodes.values():
            state = node.state
            if state in ALIVE and now < node.detector.suspect_at:
                continue
            if state is State.SUSPECT and now < node.detector.down_at:
                continue
            out.extend(self._evaluate(node, now))
        return out

    def _evaluate(self, node: Node, now: float) -> list[Transition]:
        if node.state in (State.DOWN, State.LEFT):
            return []
        if node.state is State.UNKNOWN:
            patience = (self.config.down_pause + 1) * self.config.interval
            if node.mode == "push":
                patience = max(patience, PUSH_PATIENCE_S)
            if now - node.watched_since >= patience:
                return self._move(node, State.DOWN, node.last_error or "no heartbeat yet", now)
            return []
        verdict = node.detector.verdict(now)
        if verdict == "down":
            return self._move(node, State.DOWN, self._silence(node, now), now)
        if verdict == "suspect" and node.state in ALIVE:
            return self._move(node, State.SUSPECT, self._silence(node, now), now)
        return []

    @staticmethod
    def _silence(node: Node, now: float) -> str:
        last = node.detector.last_arrival
        silent = f"no heartbeat for {now - last:.1f}s" if last is not None else "no heartbeat"
        return f"{silent} ({node.last_error})" if node.last_error else silent

    @staticmethod
    def _move(node: Node, new: State, reason: str, now: float) -> list[Transition]:
        if node.state is new:
            node.reason = reason if new is State.DEGRADED else node.reason
            return []
        t = Transition(node.name, node.state, new, now, reason)
        node.state, node.since, node.reason = new, now, reason
        node.history.append(t)
        return [t]
