"""Uptime maths: the share of observed time a node was up, from its transitions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pimon.membership import State, Transition

DEFAULT_WINDOWS: Mapping[str, float] = {
    "1h": 3600.0,
    "24h": 86400.0,
    "7d": 7 * 86400.0,
    "30d": 30 * 86400.0,
}
UP_STATES = frozenset({State.UP, State.DEGRADED})
# No data is not an alarm: time in these states counts neither for nor against a node.
UNOBSERVED_STATES = frozenset({State.UNKNOWN, State.LEFT})


def uptime_fraction(history: Sequence[Transition], start: float, end: float) -> float | None:
    """Return the share of observed time in [start, end] spent up or degraded, None if none.

    ``history`` is one node's transitions, oldest first; those before ``start``
    only set the state in force at ``start``. Before its first transition the
    node was not seen, so that time is not observed.
    """
    state: State | None = None
    cursor = start
    up = observed = 0.0
    for transition in history:
        if transition.at > end:
            break
        if transition.at > cursor:
            up, observed = _account(state, transition.at - cursor, up, observed)
            cursor = transition.at
        state = transition.new
    if end > cursor:
        up, observed = _account(state, end - cursor, up, observed)
    return up / observed if observed > 0 else None


def _account(state: State | None, span: float, up: float, observed: float) -> tuple[float, float]:
    if state is None or state in UNOBSERVED_STATES:
        return up, observed
    return (up + span if state in UP_STATES else up), observed + span


def uptime_by_window(
    history: Sequence[Transition], now: float, windows: Mapping[str, float] = DEFAULT_WINDOWS
) -> dict[str, float | None]:
    """Return the uptime fraction for each named window ending at ``now``."""
    return {label: uptime_fraction(history, now - span, now) for label, span in windows.items()}
