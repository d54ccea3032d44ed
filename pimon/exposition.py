"""Prometheus text exposition (format 0.0.4), by hand so the agent stays stdlib-only.

Naming follows the Prometheus conventions: base units in names (``_bytes``,
``_seconds``, ``_celsius``, ``_ratio``), counters end in ``_total``, HELP and
TYPE on every family. The agent exports ``pimon_*`` without a node label
(Prometheus adds ``instance``); the monitor exports ``pimon_node_*{node=...}``
for every node it watches plus ``pimon_monitor_*`` about itself.

Throttle flags and problems are exported as 1 per *active* flag and as a count
of problems: the flag vocabulary belongs to the collector, and problem texts
carry changing numbers ("disk 91% full") that would churn series.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pimon import __version__
from pimon.membership import State
from pimon.wire import Heartbeat

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
METRIC_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
TYPES = frozenset({"gauge", "counter", "untyped"})
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

# Per-node figures shared by agent and monitor: (name suffix, type, help, Metrics field, percent).
_METRIC_FIELDS: tuple[tuple[str, str, str, str, bool], ...] = (
    ("cpu_usage_ratio", "gauge", "CPU busy time as a ratio of all CPU time.", "cpu_percent", True),
    ("load1", "gauge", "Load average over 1 minute.", "load1", False),
    ("load5", "gauge", "Load average over 5 minutes.", "load5", False),
    ("load15", "gauge", "Load average over 15 minutes.", "load15", False),
    ("memory_used_ratio", "gauge", "Memory in use as a ratio of total.", "mem_percent", True),
    ("memory_total_bytes", "gauge", "Total physical memory.", "mem_total_bytes", False),
    ("swap_used_ratio", "gauge", "Swap in use as a ratio of total.", "swap_percent", True),
    ("temperature_celsius", "gauge", "SoC or CPU temperature.", "temp_c", False),
    ("uptime_seconds", "gauge", "Seconds since the machine booted.", "uptime_s", False),
    (
        "network_receive_bytes_total",
        "counter",
        "Bytes received on the network interfaces since boot.",
        "net_rx_bytes",
        False,
    ),
    (
        "network_transmit_bytes_total",
        "counter",
        "Bytes sent on the network interfaces since boot.",
        "net_tx_bytes",
        False,
    ),
)
_FS_HELP = "Filesystem space in use as a ratio of its size, per mount point."
_THROTTLED_HELP = "1 for each active throttling or under-voltage flag."

_valid_label_names: set[str] = set()
_SPECIAL_VALUES = {"inf": "+Inf", "-inf": "-Inf", "nan": "NaN", "True": "1", "False": "0"}


@dataclass(slots=True)
class Family:
    """One metric family: a name, its type and help, and its samples."""

    name: str
    type: str
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not METRIC_NAME_RE.fullmatch(self.name):
            raise ValueError(f"invalid metric name {self.name!r}")
        if self.type not in TYPES:
            raise ValueError(f"metric {self.name}: type must be one of {sorted(TYPES)}")
        if (self.type == "counter") != self.name.endswith("_total"):
            raise ValueError(f"metric {self.name}: counters, and only counters, end in _total")

    def add(self, value: float, **labels: str) -> None:
        """Append one sample with the given labels."""
        _check_label_names(labels)
        self.samples.append((labels, value))


def _check_label_names(labels: Mapping[str, str]) -> None:
    for key in labels:
        if key not in _valid_label_names:
            # Names starting with __ are reserved for Prometheus itself.
            if not LABEL_NAME_RE.fullmatch(key) or key.startswith("__"):
                raise ValueError(f"invalid label name {key!r}")
            _valid_label_names.add(key)


def escape_label_value(value: str) -> str:
    """Escape a label value: backslash, double quote and newline."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def escape_help(text: str) -> str:
    """Escape HELP text: backslash and newline."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """Spell a sample value as Prometheus does: exact ints bare, +Inf, -Inf, NaN."""
    # repr is the shortest round-trip spelling; integral floats below 1e16 end in ".0"
    # and are exact, larger ones switch to exponent form, which Prometheus parses.
    text = repr(value)
    if text[-2:] == ".0":
        return text[:-2]
    return _SPECIAL_VALUES.get(text, text)


def _format_labels(labels: Mapping[str, str]) -> str:
    text = ""
    for key, raw in labels.items():
        if key not in _valid_label_names:
            _check_label_names({key: raw})
        value = escape_label_value(raw) if "\\" in raw or '"' in raw or "\n" in raw else raw
        text = f'{text},{key}="{value}"' if text else f'{key}="{value}"'
    return text


def render(families: Iterable[Family]) -> str:
    """Render families, in the order given, as one exposition text."""
    out: list[str] = []
    seen: set[str] = set()
    special = _SPECIAL_VALUES
    for family in families:
        name = family.name
        if name in seen:
            raise ValueError(f"metric family {name} rendered twice")
        seen.add(name)
        out.append(f"# HELP {name} {escape_help(family.help)}\n# TYPE {name} {family.type}\n")
        for labels, value in family.samples:
            # format_value inlined: this loop runs once per series on every scrape.
            number = repr(value)
            if number[-2:] == ".0":
                number = number[:-2]
            elif number in special:
                number = special[number]
            if labels:
                out.append(f"{name}{{{_format_labels(labels)}}} {number}\n")
            else:
                out.append(f"{name} {number}\n")
    return "".join(out)


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


def _single(name: str, kind: str, help_text: str, value: float | None) -> Family:
    family = Family(name, kind, help_text)
    if value is not None:
        family.samples.append(({}, value))
    return family


def agent_families(hb: Heartbeat, *, scrape_errors: int = 0) -> list[Family]:
    """Return the agent's own families, built from its latest heartbeat."""
    m = hb.metrics
    info = Family("pimon_agent_info", "gauge", "Agent identity; the value is always 1.")
    info.add(1, name=hb.name, id=hb.id, model=m.model or "", version=__version__)
    families = [info]
    for suffix, kind, help_text, key, percent in _METRIC_FIELDS:
        value = getattr(m, key)
        if value is not None and percent:
            value = value / 100
        families.append(_single(f"pimon_{suffix}", kind, help_text, value))
    filesystem = Family("pimon_filesystem_used_ratio", "gauge", _FS_HELP)
    for mountpoint, percent_used in _disks(m.disk_percent, m.disks):
        filesystem.add(percent_used / 100, mountpoint=mountpoint)
    throttled = Family("pimon_throttled", "gauge", _THROTTLED_HELP)
    for flag in sorted(set(m.throttled)):
        throttled.add(1, flag=flag)
    families += [
        filesystem,
        throttled,
        _single("pimon_health_ok", "gauge", "1 when the agent reports no problems.", int(hb.ok)),
        _single("pimon_problems", "gauge", "Problems the agent reports.", len(hb.problems)),
        _single("pimon_agent_heartbeats_total", "counter", "Heartbeats built since start.", hb.seq),
        _single(
            "pimon_agent_heartbeat_interval_seconds",
            "gauge",
            "Configured heartbeat interval.",
            hb.interval,
        ),
        _single(
            "pimon_agent_scrape_errors_total",
            "counter",
            "Metric collections that failed since start.",
            scrape_errors,
        ),
    ]
    return families


def _disks(root_percent: float | None, disks: Mapping[str, float]) -> list[tuple[str, float]]:
    """Return (mount point, percent used) pairs, root first, the rest sorted."""
    pairs = [] if root_percent is None else [("/", root_percent)]
    # disk_percent is the root's authoritative figure; never export "/" twice.
    pairs += sorted((mp, pct) for mp, pct in disks.items() if mp != "/" or root_percent is None)
    return pairs


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
            for suffix, kind, help_text, key, percent in _METRIC_FIELDS
        ]
        self.filesystem = Family("pimon_node_filesystem_used_ratio", "gauge", _FS_HELP)
        self.throttled = Family("pimon_node_throttled", "gauge", _THROTTLED_HELP)
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
        disks = _disks(metrics.get("disk_percent"), metrics.get("disks") or {})
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
    families.append(_single("pimon_monitor_nodes", "gauge", "Nodes being watched.", len(views)))
    families += [_single(name, kind, h, stats.get(name)) for name, (kind, h) in STAT_HELP.items()]
    return families


def _append(family: Family, labels: dict[str, str], value: float | None) -> None:
    if value is not None:
        family.samples.append((labels, value))
