"""Prometheus text exposition (format 0.0.4), by hand so the agent stays stdlib-only.

This module holds the format itself and the agent's families; the monitor's
families, built on the same per-node figures, are in ``pimon.monitormetrics``.

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

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pimon import __version__
from pimon.wire import Heartbeat

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
METRIC_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
TYPES = frozenset({"gauge", "counter", "untyped"})

# Per-node figures shared by agent and monitor: (name suffix, type, help, Metrics field, percent).
METRIC_FIELDS: tuple[tuple[str, str, str, str, bool], ...] = (
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
FS_HELP = "Filesystem space in use as a ratio of its size, per mount point."
THROTTLED_HELP = "1 for each active throttling or under-voltage flag."

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


def single_family(name: str, kind: str, help_text: str, value: float | None) -> Family:
    """Return a family of one unlabelled sample, or of none when the value is missing."""
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
    for suffix, kind, help_text, key, percent in METRIC_FIELDS:
        value = getattr(m, key)
        if value is not None and percent:
            value = value / 100
        families.append(single_family(f"pimon_{suffix}", kind, help_text, value))
    filesystem = Family("pimon_filesystem_used_ratio", "gauge", FS_HELP)
    for mountpoint, percent_used in disk_pairs(m.disk_percent, m.disks):
        filesystem.add(percent_used / 100, mountpoint=mountpoint)
    throttled = Family("pimon_throttled", "gauge", THROTTLED_HELP)
    for flag in sorted(set(m.throttled)):
        throttled.add(1, flag=flag)
    families += [
        filesystem,
        throttled,
        single_family(
            "pimon_health_ok", "gauge", "1 when the agent reports no problems.", int(hb.ok)
        ),
        single_family("pimon_problems", "gauge", "Problems the agent reports.", len(hb.problems)),
        single_family(
            "pimon_agent_heartbeats_total", "counter", "Heartbeats built since start.", hb.seq
        ),
        single_family(
            "pimon_agent_heartbeat_interval_seconds",
            "gauge",
            "Configured heartbeat interval.",
            hb.interval,
        ),
        single_family(
            "pimon_agent_scrape_errors_total",
            "counter",
            "Metric collections that failed since start.",
            scrape_errors,
        ),
    ]
    return families


def disk_pairs(root_percent: float | None, disks: Mapping[str, float]) -> list[tuple[str, float]]:
    """Return (mount point, percent used) pairs, root first, the rest sorted."""
    pairs = [] if root_percent is None else [("/", root_percent)]
    # disk_percent is the root's authoritative figure; never export "/" twice.
    pairs += sorted((mp, pct) for mp, pct in disks.items() if mp != "/" or root_percent is None)
    return pairs
