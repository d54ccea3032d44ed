"""What an alert says: its event and severity, the versioned payload and the human text line."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

PAYLOAD_VERSION = 1


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


def with_monitor(alerts: list[Alert], monitor: str) -> list[Alert]:
    """Stamp alerts with the name of the monitor that sends them."""
    return [replace(a, monitor=monitor) for a in alerts]


def make_test_alert(now: float, monitor: str) -> Alert:
    """Return the event ``pimon alert test`` sends."""
    text = f"test alert from pimon on {monitor}"
    return Alert(Event.TEST, None, None, None, "requested", now, text, monitor=monitor)


# The human text lines, one per kind of event.


def node_text(event: Event, node: str, state: str, reason: str, *, stable: bool = False) -> str:
    """Return the line for a node event; ``stable`` marks the end of flapping."""
    if event is Event.NODE_RECOVERED:
        what = "is stable again" if stable else "recovered"
        return f"{node} {what}: {state} ({reason})"
    if event is Event.NODE_DOWN:
        return f"{node} is down: {reason}"
    if event is Event.NODE_DEGRADED:
        return f"{node} is degraded: {reason}"
    return f"{node} left: {reason}"


def flapping_text(node: str, flips: int, window: float) -> str:
    """Return the line for a node that flipped ``flips`` times within ``window`` seconds."""
    span = duration(window)
    return (
        f"{node} is flapping: {flips} up/down changes in {span};"
        f" its alerts pause until it is stable for {span}"
    )


def isolated_text(lost: int, total: int) -> str:
    """Return the line for a monitor that lost contact with most nodes."""
    return f"monitor isolated: lost contact with {lost} of {total} nodes"


def contact_text(lost: int, total: int) -> str:
    """Return the line for a monitor back in contact after an isolation."""
    return f"monitor recovered: in contact with {total - lost} of {total} nodes"


def duration(seconds: float) -> str:
    """Format a span for people: ``10 min`` or ``45 s``."""
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"
