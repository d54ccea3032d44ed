"""Health rules: turn a node's metrics into short, human problem strings.

A value exactly at its threshold is a problem (``>=``), so "90% full" with the
default 90% disk threshold is reported. Values are compared as reported (the
collector rounds percents and temperatures to one decimal), so the message
always shows the number that tripped the rule.

Throttling flags (see ``pimon.pisys.THROTTLE_FLAGS``) become problems only
while the condition holds *now*; the ``*-since-boot`` flags are history and
stay in ``Metrics.throttled`` for the curious without degrading the node.
"""

from __future__ import annotations

from dataclasses import dataclass

from pimon.wire import Metrics

# Current-condition throttle flags and the problem string each one raises.
THROTTLE_PROBLEMS: dict[str, str] = {
    "under-voltage": "under-voltage",
    "throttled": "throttled",
    "arm-frequency-capped": "arm frequency capped",
    "soft-temp-limit": "soft temperature limit",
}


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Limits at which a metric becomes a problem."""

    disk_percent: float = 90.0
    temp_c: float = 80.0
    mem_percent: float = 95.0
    # "Sustained heavy swapping": pswpin + pswpout pages per second ...
    swap_pages_per_s: float = 1000.0
    # ... held at or above the rate for at least this long.
    swap_sustain_s: float = 60.0


DEFAULT_THRESHOLDS = Thresholds()


def problems(
    metrics: Metrics,
    thresholds: Thresholds,
    *,
    swapping_for_s: float = 0.0,
    swap_pages_per_s: float = 0.0,
) -> list[str]:
    """Return the problems these metrics show, in a stable order."""
    out: list[str] = []
    if metrics.disk_percent is not None and metrics.disk_percent >= thresholds.disk_percent:
        out.append(f"disk / {metrics.disk_percent:.0f}% full")
    for mount, percent in metrics.disks.items():
        if percent >= thresholds.disk_percent:
            out.append(f"disk {mount} {percent:.0f}% full")
    if metrics.mem_percent is not None and metrics.mem_percent >= thresholds.mem_percent:
        out.append(f"memory {metrics.mem_percent:.0f}% used")
    if (
        swapping_for_s >= thresholds.swap_sustain_s
        and swap_pages_per_s >= thresholds.swap_pages_per_s
    ):
        out.append(f"heavy swapping ({swap_pages_per_s:.0f} pages/s)")
    if metrics.temp_c is not None and metrics.temp_c >= thresholds.temp_c:
        out.append(f"temp {metrics.temp_c:.1f}°C")
    out.extend(THROTTLE_PROBLEMS[f] for f in metrics.throttled if f in THROTTLE_PROBLEMS)
    return out
