"""Decide which alerts to send from state transitions: pure, every decision takes ``now``.

The engine keeps, per node, the condition it last *reported* (ok, down, degraded,
left, flapping) and reconciles it with the node's state. Down alerts wait for
``alert_after`` and for one detection window (so that a partition can be told
from single failures); a node that flips too often is reported once as flapping
and then kept quiet until it is stable; and when half of the nodes are lost at
once the engine reports one "monitor isolated" event instead of many node alerts
(isolation.py decides when the monitor is isolated).
What is in force survives a restart through ``firing_by_node`` and ``restore``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pimon.alertformat import Alert, Event, flapping_text, node_text
from pimon.detector import DetectorConfig
from pimon.isolation import LOST, Isolation, needed
from pimon.membership import ALIVE, State, Transition

MONITOR = ""  # the key of the monitor's own alert (isolation) among the node names


class Cond(StrEnum):
    """The condition of a node as last reported to the notifiers."""

    OK = "ok"
    DOWN = "down"
    DEGRADED = "degraded"
    LEFT = "left"
    FLAPPING = "flapping"


FIRES = {Cond.DOWN: Event.NODE_DOWN, Cond.DEGRADED: Event.NODE_DEGRADED, Cond.LEFT: Event.NODE_LEFT}
# The conditions whose alert stays in force until resolved, by the event that reported them.
IN_FORCE = {
    Event.NODE_DOWN: Cond.DOWN,
    Event.NODE_DEGRADED: Cond.DEGRADED,
    Event.FLAPPING: Cond.FLAPPING,
}
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
        self.isolation = Isolation(config.window)
        self._held: set[str] = set()  # down alerts waiting for their due time
        self._flapping: set[str] = set()

    @property
    def isolating(self) -> bool:
        """Return whether the monitor has lost most nodes (node alerts are held)."""
        return self.isolation.active

    @property
    def isolated(self) -> Alert | None:
        """Return the isolation alert, once sent."""
        return self.isolation.alert

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
                track = self._adopt(name, state, now)
                if not self.isolating:
                    out += self._reconcile(name, track, now)
            elif track.state is not state:  # a transition we never saw (queue overflow)
                missed = Transition(name, track.state, state, now, "seen in the node list")
                out += self.on_transition(missed, now)
        return out

    def restore(
        self, firing: Mapping[str, Alert], roster: Mapping[str, State], now: float
    ) -> list[Alert]:
        """Adopt ``roster`` knowing what was in force before a restart (``firing_by_node``)."""
        isolated = firing.get(MONITOR)
        if isolated is not None and isolated.event is Event.MONITOR_ISOLATED:
            self.isolation.restore(isolated)
        for name, state in roster.items():
            track = self._adopt(name, state, now)
            alert = firing.get(name)
            cond = IN_FORCE.get(alert.event) if alert is not None else None
            if cond is None:
                continue
            track.reported, track.fired = cond, alert
            if cond is Cond.FLAPPING:
                # What it did while the monitor was away is unknown: stable from now on counts.
                track.flapping = True
                track.flips.append(now)
                self._flapping.add(name)
        out = self._check_isolation(now)
        if not self.isolating:
            for name, track in sorted(self.nodes.items()):
                out += self._reconcile(name, track, now)
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

    def firing_by_node(self) -> dict[str, Alert]:
        """Return the alerts in force by node, the monitor's own under ``MONITOR``."""
        out = {name: t.fired for name, t in self.nodes.items() if t.fired is not None}
        if self.isolated is not None:
            out[MONITOR] = self.isolated
        return out

    # State bookkeeping

    def _adopt(self, name: str, state: State, now: float) -> _Track:
        # Adopt as is: a node restored as left was reported left before the restart.
        reported = Cond.LEFT if state is State.LEFT else Cond.OK
        self.nodes[name] = track = _Track(state, since=now, reported=reported)
        if state in LOST:
            self.isolation.lose(name, now, together=False)
        return track

    def _apply(self, track: _Track, t: Transition) -> None:
        name, at = t.node, t.at
        track.state, track.old, track.reason, track.since = t.new, t.old, t.reason, t.at
        if t.new in LOST:
            # Already reported down (before a restart, say): lost earlier, not together
            # with the others, so it is no sign of a partition.
            self.isolation.lose(name, at, together=track.reported is not Cond.DOWN)
        else:
            self.isolation.regain(name)

    def _forget(self, name: str) -> None:
        del self.nodes[name]
        self.isolation.regain(name)
        for s in (self._held, self._flapping):
            s.discard(name)

    # Decisions

    def _check_isolation(self, now: float) -> list[Alert]:
        isolation, total = self.isolation, len(self.nodes)
        if isolation.begin(now, total):
            self._held.clear()
        if not isolation.active:
            return []
        lost = isolation.out_of_contact(t.state for t in self.nodes.values())
        if lost < needed(total):
            return self._end_isolation(now, lost)
        return isolation.fire(now, lost, total)

    def _end_isolation(self, now: float, lost: int) -> list[Alert]:
        out = self.isolation.end(now, lost, len(self.nodes))
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
        text = flapping_text(name, len(track.flips), self.config.flap_window)
        return [self._report(name, track, Cond.FLAPPING, Event.FLAPPING, text=text, now=now)]

    def _reconcile(self, name: str, track: _Track, now: float) -> list[Alert]:
        want = WANTED.get(track.state)
        if track.flapping or want is None or want is track.reported:
            self._held.discard(name)
            return []
        if want is Cond.DOWN and now < self._due(name, track):
            self._held.add(name)
            return []
        self._held.discard(name)
        old = track.reported
        if want is Cond.OK and old is Cond.LEFT:
            track.reported, track.fired = Cond.OK, None
            return []
        event = Event.NODE_RECOVERED if want is Cond.OK else FIRES[want]
        stable = old is Cond.FLAPPING
        text = node_text(event, name, str(track.state), track.reason, stable=stable)
        return [self._report(name, track, want, event, text=text, now=now)]

    def _due(self, name: str, track: _Track) -> float:
        due = max(track.since + self.config.alert_after, track.grace_until)
        return max(due, self.isolation.hold_until(name, len(self.nodes)))

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
        track.fired = alert if cond in IN_FORCE.values() else None
        return alert
