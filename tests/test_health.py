from __future__ import annotations

import pytest

from pimon.health import DEFAULT_THRESHOLDS, Thresholds, problems
from pimon.wire import Metrics

T = DEFAULT_THRESHOLDS


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        (Metrics(disk_percent=90.0), ["disk / 90% full"]),
        (Metrics(disk_percent=89.9), []),
        (Metrics(disks={"/data": 90.0}), ["disk /data 90% full"]),
        (Metrics(disks={"/data": 89.9}), []),
        (Metrics(mem_percent=95.0), ["memory 95% used"]),
        (Metrics(mem_percent=94.9), []),
        (Metrics(temp_c=80.0), ["temp 80.0°C"]),
        (Metrics(temp_c=79.9), []),
    ],
)
def test_threshold_is_a_problem_at_and_not_below(metrics, expected):
    assert problems(metrics, T) == expected


def test_problem_strings_show_the_value():
    m = Metrics(disk_percent=93.4, disks={"/data": 91.2}, mem_percent=96.3, temp_c=82.14)
    assert problems(m, T) == [
        "disk / 93% full",
        "disk /data 91% full",
        "memory 96% used",
        "temp 82.1°C",
    ]


def test_heavy_swapping_needs_rate_and_duration_at_threshold():
    m = Metrics()
    assert problems(m, T, swapping_for_s=60.0, swap_pages_per_s=1000.0) == [
        "heavy swapping (1000 pages/s)"
    ]
    assert problems(m, T, swapping_for_s=59.9, swap_pages_per_s=5000.0) == []
    assert problems(m, T, swapping_for_s=600.0, swap_pages_per_s=999.9) == []
    assert problems(m, T) == []


def test_current_throttle_flags_are_problems_and_history_is_not():
    m = Metrics(
        throttled=[
            "under-voltage",
            "arm-frequency-capped",
            "throttled",
            "soft-temp-limit",
            "under-voltage-since-boot",
            "arm-frequency-capped-since-boot",
            "throttled-since-boot",
            "soft-temp-limit-since-boot",
        ]
    )
    assert problems(m, T) == [
        "under-voltage",
        "arm frequency capped",
        "throttled",
        "soft temperature limit",
    ]
    history_only = Metrics(throttled=["under-voltage-since-boot", "throttled-since-boot"])
    assert problems(history_only, T) == []


def test_unknown_metrics_are_never_problems():
    assert problems(Metrics(), Thresholds(disk_percent=0, temp_c=-100, mem_percent=0)) == []


def test_custom_thresholds_apply():
    strict = Thresholds(disk_percent=50.0, temp_c=60.0, mem_percent=70.0)
    m = Metrics(disk_percent=50.0, mem_percent=69.9, temp_c=61.0)
    assert problems(m, strict) == ["disk / 50% full", "temp 61.0°C"]
    assert problems(m, T) == []


def test_every_problem_in_stable_order():
    m = Metrics(
        disk_percent=99.0,
        disks={"/b": 95.0, "/a": 92.0},
        mem_percent=99.0,
        temp_c=85.0,
        throttled=["under-voltage", "throttled"],
    )
    assert problems(m, T, swapping_for_s=61.0, swap_pages_per_s=1234.4) == [
        "disk / 99% full",
        "disk /b 95% full",
        "disk /a 92% full",
        "memory 99% used",
        "heavy swapping (1234 pages/s)",
        "temp 85.0°C",
        "under-voltage",
        "throttled",
    ]
