"""Self-stats: the monitor's own counters and event-loop lag, under their exposition names."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pimon.monitor import Monitor


@dataclass(slots=True)
class Stats:
    """Counters about the monitor itself, exported in /metrics."""

    started_at: float = field(default_factory=time.time)
    heartbeats_received: int = 0
    heartbeats_rejected: int = 0
    transitions: int = 0
    local_pauses: int = 0
    http_handoffs: int = 0
    loop_lag_s: float = 0.0
    loop_lag_max_s: float = 0.0
    # The last minute of tick lags (10 ticks a second), for a p99 that forgets.
    recent_lags: deque[float] = field(default_factory=lambda: deque(maxlen=600))

    def record_lag(self, lag: float) -> None:
        """Record how late one detector tick ran."""
        self.loop_lag_s = lag
        self.recent_lags.append(lag)
        self.loop_lag_max_s = max(self.loop_lag_max_s, lag)

    def lag_p99(self) -> float:
        """Return the 99th percentile of the event-loop lag over the last minute."""
        if not self.recent_lags:
            return 0.0
        ordered = sorted(self.recent_lags)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def exported_stats(monitor: Monitor) -> dict[str, float]:
    """Return the monitor's own counters under their exposition names."""
    s = monitor.stats
    stats: dict[str, float] = {
        "pimon_monitor_start_time_seconds": s.started_at,
        "pimon_monitor_heartbeats_received_total": s.heartbeats_received,
        "pimon_monitor_heartbeats_rejected_total": s.heartbeats_rejected,
        "pimon_monitor_polls_total": monitor.poller.polls,
        "pimon_monitor_poll_errors_total": monitor.poller.errors,
        "pimon_monitor_transitions_total": s.transitions,
        "pimon_monitor_event_loop_lag_seconds": s.loop_lag_s,
        "pimon_monitor_event_loop_lag_max_seconds": s.loop_lag_max_s,
        "pimon_monitor_event_loop_lag_p99_seconds": s.lag_p99(),
        "pimon_monitor_local_pauses_total": s.local_pauses,
        "pimon_monitor_http_handoffs_total": s.http_handoffs,
        "pimon_monitor_event_subscribers": monitor.events.subscribers,
        "pimon_monitor_events_dropped_total": monitor.events.dropped,
    }
    sent, failed = monitor.alerts.totals()
    stats["pimon_monitor_alerts_sent_total"] = sent
    stats["pimon_monitor_alert_errors_total"] = failed
    if monitor.store is not None:
        health = monitor.store.health()
        stats["pimon_monitor_db_write_errors_total"] = health.write_errors
        stats["pimon_monitor_db_pending_writes"] = health.pending
    return stats
