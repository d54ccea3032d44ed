"""Detect the monitor's isolation: most nodes lost together is a partition, not many failures.

A node lost (suspect or down) counts towards a partition for one window after its
loss began; when at least half of the nodes (and two) are lost within a window the
monitor is isolated, and it stays so until it is back in contact with more than
that. Everything here is pure: every decision takes ``now``, none reads a clock.
The alert engine (alerts.py) holds node alerts while the monitor is isolated.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

from pimon.alertformat import Alert, Event, contact_text, isolated_text
from pimon.membership import State

LOST = frozenset({State.SUSPECT, State.DOWN})


def needed(total: int) -> int:
    """Return how many of ``total`` nodes must be lost for the monitor to be isolated."""
    return max(2, math.ceil(total / 2))


class Isolation:
    """Track the nodes lost, and decide when the monitor is isolated and when not."""

    def __init__(self, window: float) -> None:
        self.window = window  # nodes lost within it were lost together
        self.alert: Alert | None = None  # the alert, once sent
        self.due: float | None = None  # set while isolated
        # An isolation restored after a restart ends only once nodes are heard from again.
        self.unknown_is_lost = False
        self.lost_at: dict[str, float] = {}  # suspect or down now, since when
        self.recent: set[str] = set()  # lost within the last window, still lost
        self._recent_order: deque[tuple[float, str]] = deque()

    @property
    def active(self) -> bool:
        """Return whether the monitor has lost most nodes (node alerts are held)."""
        return self.due is not None

    def restore(self, alert: Alert) -> None:
        """Resume the isolation reported by ``alert`` before a restart."""
        self.alert, self.due = alert, alert.at
        self.unknown_is_lost = True

    def lose(self, name: str, at: float, *, together: bool) -> None:
        """Record ``name`` as lost since ``at``; ``together``: it may be part of a partition."""
        if name in self.lost_at:
            return
        self.lost_at[name] = at
        if together:
            self.recent.add(name)
            self._recent_order.append((at, name))

    def regain(self, name: str) -> None:
        """Record ``name`` as in contact again (or gone from the node list)."""
        self.lost_at.pop(name, None)
        self.recent.discard(name)

    def out_of_contact(self, states: Iterable[State]) -> int:
        """Count the nodes out of contact, given the states of all nodes."""
        lost = len(self.lost_at)
        if self.unknown_is_lost:
            lost += sum(1 for s in states if s is State.UNKNOWN)
        return lost

    def hold_until(self, name: str, total: int) -> float:
        """Return when a down alert for ``name`` may go out as far as partitions are concerned."""
        lost_at = self.lost_at.get(name)
        # Hold for one window after the loss began while a partition could still form.
        could_isolate = len(self.recent) + total - len(self.lost_at) >= needed(total)
        if could_isolate and lost_at is not None:
            return lost_at + self.window
        return -math.inf

    def begin(self, now: float, total: int) -> bool:
        """Start an isolation if enough nodes were lost together; return whether it started."""
        self._prune_recent(now)
        if self.due is not None or len(self.recent) < needed(total):
            return False
        # Hold node alerts from now on; send the one alert when the window has filled,
        # so that it counts every node lost together (and not just the first half).
        first = min(self.lost_at.get(n) or now for n in self.recent)
        self.due = first + self.window
        return True

    def fire(self, now: float, lost: int, total: int) -> list[Alert]:
        """Return the isolation alert once it is due and not yet sent."""
        if self.alert is None and self.due is not None and now >= self.due:
            self.alert = Alert(
                Event.MONITOR_ISOLATED,
                None,
                None,
                None,
                f"{lost} of {total} nodes lost within {self.window:g}s",
                now,
                isolated_text(lost, total),
                lost=lost,
                total=total,
            )
            return [self.alert]
        return []

    def end(self, now: float, lost: int, total: int) -> list[Alert]:
        """End the isolation; return its recovery alert if the isolation was reported."""
        out = []
        if self.alert is not None:
            out.append(
                Alert(
                    Event.MONITOR_RECOVERED,
                    None,
                    None,
                    None,
                    "contact restored",
                    now,
                    contact_text(lost, total),
                    resolves=Event.MONITOR_ISOLATED,
                    lost=lost,
                    total=total,
                )
            )
        self.alert, self.due, self.unknown_is_lost = None, None, False
        return out

    def _prune_recent(self, now: float) -> None:
        cutoff = now - self.window
        while self._recent_order and self._recent_order[0][0] < cutoff:
            at, name = self._recent_order.popleft()
            lost_at = self.lost_at.get(name)
            if lost_at is None or lost_at <= at:
                self.recent.discard(name)
