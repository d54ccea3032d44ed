"""Uptime maths: observed time only, up and degraded count as up."""

from __future__ import annotations

import pytest

from pimon.membership import State, Transition
from pimon.uptime import uptime_by_window, uptime_fraction

NOW = 1_800_000_000.0
H = 3600.0
U, UP, DG, SU, DN, LF = (State.UNKNOWN, State.UP, State.DEGRADED, State.SUSPECT, State.DOWN,
                         State.LEFT)  # fmt: skip


def history(*steps: tuple[float, State]) -> list[Transition]:
    """Build transitions from (at, new state) pairs, each old state being the previous new."""
    out: list[Transition] = []
    old = U
    for at, new in steps:
        out.append(Transition("pi-01", old, new, at, "test"))
        old = new
    return out


def test_36_minute_outage_in_24h_is_97_5_percent() -> None:
    h = history((NOW - 48 * H, UP), (NOW - 10 * H, DN), (NOW - 10 * H + 36 * 60, UP))
    assert uptime_fraction(h, NOW - 24 * H, NOW) == pytest.approx(0.975)


def test_window_starting_mid_outage_counts_the_outage_from_the_window_start() -> None:
    h = history((NOW - 5 * H, UP), (NOW - 2 * H, DN), (NOW - 0.5 * H, UP))
    assert uptime_fraction(h, NOW - H, NOW) == pytest.approx(0.5)


def test_time_before_the_node_was_first_seen_is_not_counted() -> None:
    h = history((NOW - 6 * H, UP), (NOW - 2 * H, DN), (NOW - H, UP))
    assert uptime_fraction(h, NOW - 24 * H, NOW) == pytest.approx(5 / 6)


def test_unknown_and_left_are_excluded_suspect_and_down_count_against() -> None:
    h = history(
        (NOW - 10 * H, UP),  # 1 h up
        (NOW - 9 * H, LF),  # 2 h left: not observed
        (NOW - 7 * H, U),  # 1 h unknown: not observed
        (NOW - 6 * H, DG),  # 2 h degraded: up
        (NOW - 4 * H, SU),  # 1 h suspect: not up
        (NOW - 3 * H, DN),  # 1 h down: not up
        (NOW - 2 * H, UP),  # 2 h up
    )
    assert uptime_fraction(h, NOW - 10 * H, NOW) == pytest.approx(5 / 7)


def test_no_observed_time_gives_none() -> None:
    assert uptime_fraction([], NOW - H, NOW) is None
    assert uptime_fraction(history((NOW - 2 * H, U)), NOW - H, NOW) is None
    assert uptime_fraction(history((NOW - 2 * H, UP), (NOW - 1.5 * H, LF)), NOW - H, NOW) is None


def test_transitions_after_the_window_end_are_ignored() -> None:
    h = history((NOW - 2 * H, UP), (NOW + H, DN))
    assert uptime_fraction(h, NOW - H, NOW) == 1.0


def test_node_that_came_up_inside_a_window_is_measured_from_then() -> None:
    h = history((NOW - 0.5 * H, DN), (NOW - 0.25 * H, UP))
    assert uptime_fraction(h, NOW - H, NOW) == pytest.approx(0.5)


def test_each_window_is_measured_separately() -> None:
    h = history((NOW - 40 * 86400, UP), (NOW - 3 * 86400, DN), (NOW - 3 * 86400 + 3 * H, UP))
    result = uptime_by_window(h, NOW)
    assert result["1h"] == 1.0
    assert result["24h"] == 1.0
    assert result["7d"] == pytest.approx(1 - 3 / (7 * 24))
    assert result["30d"] == pytest.approx(1 - 3 / (30 * 24))
