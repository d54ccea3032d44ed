"""Decide which alerts to send from state transitions: pure, every decision takes ``now``.

The engine keeps, per node, the condition it last *reported* (ok, down, degraded,
left, flapping) and reconciles it with the node's state. Down alerts wait for
``alert_after`` and for one detection window (so that a partition can be told
from single failures); a node that flips too often is reported once as flapping
and then kept quiet until it is stable; and when half of the nodes are lost at
once the engine reports one "monitor isolated" event instead of many node alerts.
"""

from __future__ import annotations

import math
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pimon.detector import DetectorConfig
from pimon.membership import ALIVE, State, Transition

if TYPE_CHECKING:
    from pimon.notifiers import NotifierConfig

PAYLOAD_VERSION = 1
LOST = frozenset({State.SUSPECT, State.DOWN})


class Severity(StrEnum):
    """How urgent an event is; ``min_severity`` filters compare these."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """Return 0 for info, 1 for warning, 2 for critical."""
        return list(Severity).index(self)


class Event(StrEnum):
    """What an alert is about."""

    NODE_DOWN = "node_down"
    NODE_RECOVERED = "node_recovered"
    NODE_DEGRADED = "node_degraded"
    NODE_LEFT = "node_left"
    MONITOR_ISOLATED = "monitor_isolated"
    MONITOR_RECOVERED = "monitor_recovered"
    FLAPPING = "flapping"
    TEST = "test"


SEVERITY: dict[Event, Severity] = {
    Event.NODE_DOWN: Severity.CRITICAL,
    Event.NODE_RECOVERED: Severity.INFO,
    Event.NODE_DEGRADED: Severity.WARNING,
    Event.NODE_LEFT: Severity.INFO,
    Event.MONITOR_ISOLATED: Severity.CRITICAL,
    Event.MONITOR_RECOVERED: Severity.INFO,
    Event.FLAPPING: Severity.WARNING,
    Event.TEST: Severity.INFO,
}
# node_left is routine (a graceful shutdown) and test is sent only on request.
DEFAULT_EVENTS = frozenset(Event) - {Event.NODE_LEFT, Event.TEST}


@dataclass(frozen=True, slots=True)
class Alert:
    """One event to notify about; ``payload()`` is the versioned webhook body."""

    event: Event
    node: str | None
    old: str | None
    new: str | None
    reason: str
    at: float
    text: str
    problems: tuple[str, ...] = ()
    resolves: Event | None = None  # the earlier event this one ends, e.g. node_down
    lost: int | None = None
    total: int | None = None
    monitor: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def severity(self) -> Severity:
        """Return the severity of this event."""
        return SEVERITY[self.event]

    @property
    def filter_severity(self) -> Severity:
        """Return the severity filters compare: a resolution counts as what it resolves."""
        if self.resolves is not None and self.severity.rank < SEVERITY[self.resolves].rank:
            return SEVERITY[self.resolves]
        return self.severity

    def payload(self) -> dict[str, Any]:
        """Return the webhook payload, version 1 (see docs/alerts.md)."""
        return {
            "version": PAYLOAD_VERSION,
            "id": self.id,
            "event": str(self.event),
            "severity": str(self.severity),
            "node": self.node,
            "old": self.old,
            "new": self.new,
            "reason": self.reason,
            "at": self.at,
            "text": self.text,
            "problems": list(self.problems),
            "resolves": str(self.resolves) if self.resolves else None,
            "lost": self.lost,
            "total": self.total,
            "monitor": self.monitor,
        }

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> Alert:
        """Rebuild an alert from its payload (as kept in the outbox)."""
        return cls(
            event=Event(data["event"]),
            node=data.get("node"),
            old=data.get("old"),
            new=data.get("new"),
            reason=data.get("reason", ""),
            at=float(data["at"]),
            text=data.get("text", ""),
            problems=tuple(data.get("problems") or ()),
            resolves=Event(data["resolves"]) if data.get("resolves") else None,
            lost=data.get("lost"),
            total=data.get("total"),
            monitor=data.get("monitor", ""),
            id=data["id"],
        )


def make_test_alert(now: float, monitor: str) -> Alert:
    """Return the event ``pimon alert test`` sends."""
    text = f"test alert from pimon on {monitor}"
    return Alert(Event.TEST, None, None, None, "requested", now, text, monitor=monitor)


class Cond(StrEnum):
    """The condition of a node as last reported to the notifiers."""

    OK = "ok"
    DOWN = "down"
    DEGRADED = "degraded"
    LEFT = "left"
    FLAPPING = "flapping"


FIRES = {Cond.DOWN: Event.NODE_DOWN, Cond.DEGRADED: Event.NODE_DEGRADED, Cond.LEFT: Event.NODE_LEFT}
# Suspect and unknown are missing on purpose: they keep whatever was reported last.
WANTED = {
    State.UP: Cond.OK,
    State.DOWN: Cond.DOWN,
    State.DEGRADED: Cond.DEGRADED,
    State.LEFT: Cond.LEFT,
}


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Tune the alert engine; times in seconds."""

    alert_after: float = 0.0
    flap_count: int = 5
    flap_window: float = 600.0
    window: float = 6.0  # partition window: nodes lost within it were lost together
    # After an isolation, nodes still down get this long (plus a window) to find us again:
    # agents pushing to an unreachable monitor back off up to 30 s between tries.
    rejoin: float = 30.0

    @classmethod
    def from_detector(cls, detector: DetectorConfig, **kw: Any) -> EngineConfig:
        """Derive the partition window from the detector: the time to convict, plus one poll."""
        return cls(window=(detector.down_pause + 1.0) * detector.interval, **kw)


@dataclass(slots=True)
class _Track:
    state: State = State.UNKNOWN
    old: State = State.UNKNOWN
    reason: str = ""
    since: float = 0.0
    lost_at: float | None = None
    reported: Cond = Cond.OK
    fired: Alert | None = None
    flips: deque[float] = field(default_factory=deque)
    flapping: bool = False
    grace_until: float = 0.0


class AlertEngine:
    """Turn transitions into alerts with holds, flap control and partition awareness."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.nodes: dict[str, _Track] = {}
        self.isolated: Alert | None = None  # the alert, once sent
        self._isolation_due: float | None = None  # set while isolated
        self._lost: set[str] = set()  # suspect or down now
        self._recent: set[str] = set()  # lost within the last window, still lost
        self._recent_order: deque[tuple[float, str]] = deque()
        self._held: set[str] = set()  # down alerts waiting for their due time
        self._flapping: set[str] = set()

    @property
    def isolating(self) -> bool:
        """Return whether the monitor has lost most nodes (node alerts are held)."""
        return self._isolation_due is not None

    def on_transition(self, t: Transition, now: float) -> list[Alert]:
        """Take one transition (published at ``t.at``) and return the alerts it causes."""
        track = self.nodes.setdefault(t.node, _Track(since=t.at))
        flip = (t.new is State.DOWN and t.old in ALIVE | {State.SUSPECT}) or (
            t.old is State.DOWN and t.new in ALIVE
        )
        self._apply(track, t)
        out: list[Alert] = []
        if flip:
            out += self._flip(t.node, track, t.at, now)
        out += self._check_isolation(now)
        if not self.isolating:
            out += self._reconcile(t.node, track, now)
        return out

    def sync(self, roster: Mapping[str, State], now: float) -> list[Alert]:
        """Align with the monitor's node list: add the unseen, drop the deregistered."""
        for name in [n for n in self.nodes if n not in roster]:
            self._forget(name)
        out: list[Alert] = []
        for name, state in roster.items():
            track = self.nodes.get(name)
            if track is None:
                # Adopt as is: a node restored as left was reported left before the restart.
                reported = Cond.LEFT if state is State.LEFT else Cond.OK
                self.nodes[name] = track = _Track(state, since=now, reported=reported)
                if state in LOST:
                    track.lost_at = now
                    self._lost.add(name)
                if not self.isolating:
                    out += self._reconcile(name, track, now)
            elif track.state is not state:  # a transition we never saw (queue overflow)
                missed = Transition(name, track.state, state, now, "seen in the node list")
                out += self.on_transition(missed, now)
        return out

    def tick(self, now: float) -> list[Alert]:
        """Release due alerts, end isolation or flapping; call every fraction of a second."""
        out = self._check_isolation(now)
        for name in sorted(self._flapping):
            track = self.nodes[name]
            if not track.flips or now - track.flips[-1] >= self.config.flap_window:
                track.flapping = False
                track.flips.clear()
                self._flapping.discard(name)
                if not self.isolating:
                    out += self._reconcile(name, track, now)
        if not self.isolating:
            for name in sorted(self._held):
                out += self._reconcile(name, self.nodes[name], now)
        return out

    def firing(self) -> list[Alert]:
        """Return the alerts still in force (for notifiers that re-send, like Alertmanager)."""
        out = [t.fired for t in self.nodes.values() if t.fired is not None]
        return [*out, self.isolated] if self.isolated else out

    # State bookkeeping

    def _apply(self, track: _Track, t: Transition) -> None:
        name, at = t.node, t.at
        track.state, track.old, track.reason, track.since = t.new, t.old, t.reason, t.at
        if t.new in LOST:
            if track.lost_at is None:
                track.lost_at = at
                self._lost.add(name)
                self._recent.add(name)
                self._recent_order.append((at, name))
        else:
            track.lost_at = None
            self._lost.discard(name)
            self._recent.discard(name)

    def _forget(self, name: str) -> None:
        del self.nodes[name]
        for s in (self._lost, self._recent, self._held, self._flapping):
            s.discard(name)

    def _prune_recent(self, now: float) -> None:
        cutoff = now - self.config.window
        while self._recent_order and self._recent_order[0][0] < cutoff:
            at, name = self._recent_order.popleft()
            track = self.nodes.get(name)
            if track is None or track.lost_at is None or track.lost_at <= at:
                self._recent.discard(name)

    def _needed(self) -> int:
        return max(2, math.ceil(len(self.nodes) / 2))

    # Decisions

    def _check_isolation(self, now: float) -> list[Alert]:
        self._prune_recent(now)
        total, lost = len(self.nodes), len(self._lost)
        if self._isolation_due is None and len(self._recent) >= self._needed():
            # Hold node alerts from now on; send the one alert when the window has filled,
            # so that it counts every node lost together (and not just the first half).
            first = min(self.nodes[n].lost_at or now for n in self._recent)
            self._isolation_due = first + self.config.window
            self._held.clear()
        if self._isolation_due is None:
            return []
        if lost < self._needed():
            return self._end_isolation(now)
        if self.isolated is None and now >= self._isolation_due:
            self.isolated = Alert(
                Event.MONITOR_ISOLATED,
                None,
                None,
                None,
                f"{lost} of {total} nodes lost within {self.config.window:g}s",
                now,
                f"monitor isolated: lost contact with {lost} of {total} nodes",
                lost=lost,
                total=total,
            )
            return [self.isolated]
        return []

    def _end_isolation(self, now: float) -> list[Alert]:
        total, lost = len(self.nodes), len(self._lost)
        out = []
        if self.isolated is not None:
            out.append(
                Alert(
                    Event.MONITOR_RECOVERED,
                    None,
                    None,
                    None,
                    "contact restored",
                    now,
                    f"monitor recovered: in contact with {total - lost} of {total} nodes",
                    resolves=Event.MONITOR_ISOLATED,
                    lost=lost,
                    total=total,
                )
            )
        self.isolated, self._isolation_due = None, None
        for name, track in sorted(self.nodes.items()):
            if track.state in LOST:
                track.grace_until = now + self.config.window + self.config.rejoin
            out += self._reconcile(name, track, now)
        return out

    def _flip(self, name: str, track: _Track, at: float, now: float) -> list[Alert]:
        track.flips.append(at)
        while track.flips and track.flips[0] < at - self.config.flap_window:
            track.flips.popleft()
        if track.flapping:
            return []
        if len(track.flips) <= self.config.flap_count or self.isolating:
            return []
        track.flapping = True
        self._flapping.add(name)
        self._held.discard(name)
        window = _duration(self.config.flap_window)
        text = (
            f"{name} is flapping: {len(track.flips)} up/down changes in {window};"
            f" its alerts pause until it is stable for {window}"
        )
        return [self._report(name, track, Cond.FLAPPING, Event.FLAPPING, text=text, now=now)]

    def _reconcile(self, name: str, track: _Track, now: float) -> list[Alert]:
        want = WANTED.get(track.state)
        if track.flapping or want is None or want is track.reported:
            self._held.discard(name)
            return []
        if want is Cond.DOWN and now < self._due(track):
            self._held.add(name)
            return []
        self._held.discard(name)
        old = track.reported
        if want is Cond.OK:
            if old is Cond.LEFT:
                track.reported, track.fired = Cond.OK, None
                return []
            what = "is stable again" if old is Cond.FLAPPING else "recovered"
            text = f"{name} {what}: {track.state} ({track.reason})"
            return [self._report(name, track, want, Event.NODE_RECOVERED, text=text, now=now)]
        event = FIRES[want]
        if want is Cond.DOWN:
            text = f"{name} is down: {track.reason}"
        elif want is Cond.DEGRADED:
            text = f"{name} is degraded: {track.reason}"
        else:
            text = f"{name} left: {track.reason}"
        return [self._report(name, track, want, event, text=text, now=now)]

    def _due(self, track: _Track) -> float:
        due = max(track.since + self.config.alert_after, track.grace_until)
        # Hold for one window after the loss began while a partition could still form.
        could_isolate = len(self._recent) + len(self.nodes) - len(self._lost) >= self._needed()
        if could_isolate and track.lost_at is not None:
            due = max(due, track.lost_at + self.config.window)
        return due

    def _report(
        self, name: str, track: _Track, cond: Cond, event: Event, *, text: str, now: float
    ) -> Alert:
        previous = track.fired.event if track.fired is not None else None
        degraded = track.state is State.DEGRADED
        alert = Alert(
            event,
            name,
            str(track.old),
            str(track.state),
            track.reason,
            now,
            text,
            problems=tuple(track.reason.split("; ")) if degraded else (),
            resolves=previous,
        )
        track.reported = cond
        track.fired = alert if cond in (Cond.DOWN, Cond.DEGRADED, Cond.FLAPPING) else None
        return alert


def _duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def with_monitor(alerts: list[Alert], monitor: str) -> list[Alert]:
    """Stamp alerts with the name of the monitor that sends them."""
    return [replace(a, monitor=monitor) for a in alerts]


@dataclass(frozen=True, slots=True)
class AlertConfig:
    """The monitor's alerting settings: notifiers, engine tuning and the dead-man's switch."""

    notifiers: Sequence[NotifierConfig] = ()
    alert_after: float = 0.0
    flap_count: int = 5
    flap_window: float = 600.0
    deadline: float = 3600.0
    deadman_url: str | None = None
    deadman_interval: float = 60.0
