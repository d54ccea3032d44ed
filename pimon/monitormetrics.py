"""The monitor's metric families: every watched node under a node label, and itself.

The per-node figures mirror what each agent exports (``pimon_*`` becomes
``pimon_node_*{node=...}``), so both share the field table of ``pimon.exposition``.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping, Sequence
from typing import Any

from pimon.exposition import (
    FS_HELP,
    METRIC_FIELDS,
    THROTTLED_HELP,
    Family,
    disk_pairs,
    render,
    single_family,
)
from pimon.membership import State

UPTIME_WINDOWS = ("1h", "24h", "7d", "30d")
# A node counts as up while heartbeats arrive, even if it reports problems.
UP_STATES = frozenset({State.UP.value, State.DEGRADED.value})
_STATES = tuple(s.value for s in State)

# Monitor self-metrics: the keys of the ``stats`` mapping given to monitor_families.
STAT_HELP: dict[str, tuple[str, str]] = {
    "pimon_monitor_start_time_seconds": ("gauge", "Unix time the monitor started."),
    "pimon_monitor_heartbeats_received_total": ("counter", "Pushed heartbeats accepted."),
    "pimon_monitor_heartbeats_rejected_total": (
        "counter",
        "Pushed heartbeats rejected (malformed, unauthorized or too large).",
    ),
    "pimon_monitor_polls_total": ("counter", "Heartbeat polls of pull-mode nodes."),
    "pimon_monitor_poll_errors_total": ("counter", "Heartbeat polls that failed."),
    "pimon_monitor_transitions_total": ("counter", "Node state transitions recorded."),
    "pimon_monitor_event_loop_lag_seconds": ("gauge", "Latest measured event loop lag."),
    "pimon_monitor_event_loop_lag_max_seconds": ("gauge", "Largest event loop lag since start."),
    "pimon_monitor_event_loop_lag_p99_seconds": (
        "gauge",
        "99th percentile of the event loop lag over the last minute.",
    ),
    "pimon_monitor_local_pauses_total": (
        "counter",
        "Monitor stalls long enough that failure detection was held back.",
    ),
    "pimon_monitor_http_handoffs_total": (
        "counter",
        "Connections passed from the lean push path to the full HTTP stack "
        "(each whose first request is not a plain heartbeat POST).",
    ),
    "pimon_monitor_db_write_errors_total": ("counter", "Failed database write batches."),
    "pimon_monitor_db_pending_writes": ("gauge", "Rows waiting for the next database batch."),
    "pimon_monitor_alerts_sent_total": ("counter", "Alert notifications delivered."),
    "pimon_monitor_alert_errors_total": ("counter", "Alert notifications that failed."),
    "pimon_monitor_event_subscribers": ("gauge", "Clients connected to /v1/events."),
    "pimon_monitor_events_dropped_total": (
        "counter",
        "Events dropped because a /v1/events client read too slowly.",
    ),
}


def render_monitor(
    views: Sequence[Mapping[str, Any]],
    stats: Mapping[str, float],
    *,
    now: float,
    extra: Sequence[Family] = (),
) -> str:
    """Render the monitor's /metrics text with the cyclic garbage collector paused."""
    # Building holds ~30 tracked tuples per node; with 10,000 nodes the collector's
    # full passes over that heap cost more than the build itself. Nothing here makes
    # reference cycles, so everything is freed by refcount before the collector resumes.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return render([*monitor_families(views, stats, now=now), *extra])
    finally:
        if was_enabled:
            gc.enable()


class _NodeFamilies:
    """The per-node families of the monitor, filled one node view at a time."""

    def __init__(self) -> None:
        self.up = Family("pimon_node_up", "gauge", "1 while heartbeats arrive (up or degraded).")
        self.state = Family("pimon_node_state", "gauge", "1 for the node's current state, else 0.")
        self.phi = Family("pimon_node_phi", "gauge", "Phi accrual suspicion level.")
        self.age = Family(
            "pimon_node_last_seen_age_seconds", "gauge", "Seconds since the last heartbeat."
        )
        self.since = Family(
            "pimon_node_state_since_timestamp_seconds", "gauge", "Unix time the state began."
        )
        self.rtt = Family("pimon_node_rtt_seconds", "gauge", "Round-trip time of the last poll.")
        self.offset = Family(
            "pimon_node_clock_offset_seconds", "gauge", "Node clock minus monitor clock."
        )
        self.info = Family(
            "pimon_node_info", "gauge", "Node mode (pull or push) and model; always 1."
        )
        self.health = Family(
            "pimon_node_health_ok", "gauge", "1 when the node reports no problems."
        )
        self.problems = Family("pimon_node_problems", "gauge", "Problems the node reports.")
        self.figures = [
            (Family(f"pimon_node_{suffix}", kind, help_text), key, percent)
            for suffix, kind, help_text, key, percent in METRIC_FIELDS
        ]
        self.filesystem = Family("pimon_node_filesystem_used_ratio", "gauge", FS_HELP)
        self.throttled = Family("pimon_node_throttled", "gauge", THROTTLED_HELP)
        self.uptime = Family(
            "pimon_node_uptime_ratio",
            "gauge",
            "Fraction of the window the node was up or degraded.",
        )

    def families(self) -> list[Family]:
        """Return the families in exposition order."""
        head = [self.up, self.state, self.phi, self.age, self.since, self.rtt, self.offset]
        head += [self.info, self.health, self.problems]
        return (
            head + [f for f, _, _ in self.figures] + [self.filesystem, self.throttled, self.uptime]
        )

    def add_liveness(self, view: Mapping[str, Any], labels: dict[str, str], now: float) -> None:
        """Add what the monitor itself knows of the node: state, phi, timings."""
        node = labels["node"]
        current = view.get("state")
        self.up.samples.append((labels, 1 if current in UP_STATES else 0))
        self.state.samples += [({"node": node, "state": s}, int(s == current)) for s in _STATES]
        _append(self.phi, labels, view.get("phi"))
        last_seen = view.get("last_seen")
        if last_seen is not None:
            self.age.samples.append((labels, max(0.0, now - last_seen)))
        _append(self.since, labels, view.get("since"))
        rtt_ms = view.get("rtt_ms")
        if rtt_ms is not None:
            self.rtt.samples.append((labels, rtt_ms / 1000))
        _append(self.offset, labels, view.get("clock_offset_s"))
        for window in UPTIME_WINDOWS:
            ratio = view.get(f"uptime_{window}")
            if ratio is not None:
                self.uptime.samples.append(({"node": node, "window": window}, ratio))

    def add_report(self, view: Mapping[str, Any], labels: dict[str, str]) -> None:
        """Add what the node's last heartbeat reported, if it ever sent one."""
        node = labels["node"]
        metrics = view.get("metrics")
        model = (metrics or {}).get("model") or ""
        self.info.samples.append(
            ({"node": node, "mode": view.get("mode") or "", "model": model}, 1)
        )
        if metrics is None:
            return
        ok = view.get("ok")
        if ok is not None:
            self.health.samples.append((labels, int(ok)))
        self.problems.samples.append((labels, len(view.get("problems") or ())))
        for family, key, percent in self.figures:
            value = metrics.get(key)
            if value is not None:
                family.samples.append((labels, value / 100 if percent else value))
        disks = disk_pairs(metrics.get("disk_percent"), metrics.get("disks") or {})
        for mountpoint, used in disks:
            self.filesystem.samples.append(({"node": node, "mountpoint": mountpoint}, used / 100))
        for flag in sorted(set(metrics.get("throttled") or ())):
            self.throttled.samples.append(({"node": node, "flag": flag}, 1))


def monitor_families(
    views: Sequence[Mapping[str, Any]], stats: Mapping[str, float], *, now: float
) -> list[Family]:
    """Return per-node and monitor families from node views as served by the API."""
    unknown = set(stats) - STAT_HELP.keys()
    if unknown:
        raise ValueError(f"unknown monitor stats {sorted(unknown)}: add them to STAT_HELP")
    nodes = _NodeFamilies()
    for view in views:
        # One dict per node, shared by all its single-label samples: fewer allocations.
        labels = {"node": view["name"]}
        nodes.add_liveness(view, labels, now)
        nodes.add_report(view, labels)
    families = nodes.families()
    families.append(
        single_family("pimon_monitor_nodes", "gauge", "Nodes being watched.", len(views))
    )
    families += [
        single_family(name, kind, h, stats.get(name)) for name, (kind, h) in STAT_HELP.items()
    ]
    return families


def _append(family: Family, labels: dict[str, str], value: float | None) -> None:
    if value is not None:
        family.samples.append((labels, value))
