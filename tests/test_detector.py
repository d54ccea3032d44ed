"""Tests for the phi accrual failure detector, all on a fake clock."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pimon.detector import PHI_MAX, DetectorConfig, PhiAccrual, StallGuard, Verdict, phi_of

DEFAULTS = DetectorConfig()


def akka_phi(elapsed: float, mean: float, std: float) -> float:
    """Return phi exactly as Akka's PhiAccrualFailureDetector writes it (the reference)."""
    y = (elapsed - mean) / std
    e = math.exp(-y * (1.5976 + 0.070566 * y * y))
    if elapsed > mean:
        return -math.log10(e / (1.0 + e))
    return -math.log10(1.0 - 1.0 / (1.0 + e))


def predicted_crossing(mean: float, std: float, threshold: float) -> float:
    """Return the silence at which the reference phi reaches `threshold`, by bisection."""
    low, high = mean, mean + 20 * std  # the reference itself overflows further out
    for _ in range(200):
        mid = (low + high) / 2
        if akka_phi(mid, mean, std) >= threshold:
            high = mid
        else:
            low = mid
    return high


def steady(config: DetectorConfig = DEFAULTS, beats: int = 300) -> tuple[PhiAccrual, float]:
    """Return a detector fed `beats` punctual heartbeats, and the time of the last one."""
    detector = PhiAccrual(config)
    for k in range(beats):
        detector.heartbeat(k * config.interval)
    return detector, (beats - 1) * config.interval


def first_crossing(
    phi: Callable[[float], float], start: float, threshold: float, step: float
) -> float:
    """Return the first silence, scanned in `step`s after `start`, at which phi >= threshold."""
    for i in range(1, 1_000_000):
        if phi(start + i * step) >= threshold:
            return i * step
    raise AssertionError("phi never reached the threshold")


def test_steady_heartbeats_keep_phi_low_and_alive() -> None:
    detector = PhiAccrual(DEFAULTS)
    for k in range(300):
        now = float(k)
        if k:
            # Sample the whole gap, up to the instant the next heartbeat lands.
            for offset in (0.0, 0.5, 0.999):
                assert detector.phi(now - 1 + offset) < 1
                assert detector.verdict(now - 1 + offset) is Verdict.ALIVE
            assert detector.phi(now) < 1
        detector.heartbeat(now)
    assert detector.verdict(299.5) is Verdict.ALIVE


def test_silent_node_turns_suspect_then_down_at_the_default_times() -> None:
    detector, last = steady()
    # Punctual heartbeats leave std at its floor, min_std.
    mean, std = DEFAULTS.interval, DEFAULTS.min_std
    suspect_at = predicted_crossing(mean + 2 * DEFAULTS.interval, std, DEFAULTS.threshold)
    down_at = predicted_crossing(mean + 3 * DEFAULTS.interval, std, DEFAULTS.threshold)

    measured_suspect = first_crossing(detector.phi_suspect, last, DEFAULTS.threshold, 0.001)
    measured_down = first_crossing(detector.phi_down, last, DEFAULTS.threshold, 0.001)

    assert measured_suspect == pytest.approx(suspect_at, rel=0.1, abs=0.002)
    assert measured_down == pytest.approx(down_at, rel=0.1, abs=0.002)
    assert measured_suspect == pytest.approx(suspect_at, abs=0.002)
    assert measured_down == pytest.approx(down_at, abs=0.002)
    assert measured_suspect == pytest.approx(3.6, rel=0.1)
    assert measured_down == pytest.approx(4.6, rel=0.1)
    assert detector.verdict(last + measured_suspect - 0.01) is Verdict.ALIVE
    assert detector.verdict(last + measured_suspect + 0.01) is Verdict.SUSPECT
    assert detector.verdict(last + measured_down - 0.01) is Verdict.SUSPECT
    assert detector.verdict(last + measured_down + 0.01) is Verdict.DOWN


@pytest.mark.parametrize(
    "config",
    [
        DetectorConfig(interval=0.5, threshold=3.0, suspect_pause=1.0, down_pause=3.0),
        DetectorConfig(interval=2.0, threshold=12.0, min_std=0.05),
    ],
)
def test_freshly_seeded_node_turns_suspect_then_down_at_the_predicted_times(
    config: DetectorConfig,
) -> None:
    detector = PhiAccrual(config)
    detector.heartbeat(10.0)
    # The bootstrap seeds mean = interval and std = interval / 4.
    mean, std = config.interval, max(config.interval / 4, config.min_std)
    step = config.interval / 1000
    for phi, pause in (
        (detector.phi_suspect, config.suspect_pause),
        (detector.phi_down, config.down_pause),
    ):
        predicted = predicted_crossing(mean + pause * config.interval, std, config.threshold)
        measured = first_crossing(phi, 10.0, config.threshold, step)
        assert measured == pytest.approx(predicted, rel=0.1)
        assert measured == pytest.approx(predicted, abs=2 * step)


def test_uniform_jitter_of_100ms_never_suspects() -> None:
    rng = random.Random(20040101)
    detector = PhiAccrual(DEFAULTS)
    worst = 0.0
    for k in range(10_000):
        arrival = k + rng.uniform(-0.1, 0.1)
        if k:
            worst = max(worst, detector.phi_suspect(arrival))
            assert detector.verdict(arrival) is Verdict.ALIVE
        detector.heartbeat(arrival)
    assert worst < DEFAULTS.threshold
    assert detector.samples == DEFAULTS.window


@pytest.mark.parametrize("beats", [1, 300])
def test_one_lost_heartbeat_is_neither_suspect_nor_down(beats: int) -> None:
    detector, last = steady(beats=beats)
    # The next heartbeat is lost and the one after is 100 ms late.
    next_arrival = last + 2.1
    for i in range(211):
        assert detector.verdict(last + i * 0.01) is Verdict.ALIVE
    detector.heartbeat(next_arrival)
    assert detector.verdict(next_arrival + 0.5) is Verdict.ALIVE


@pytest.mark.parametrize("threshold", [1.0, 3.0, 8.0, 16.0])
def test_one_lost_heartbeat_never_makes_a_node_down(threshold: float) -> None:
    detector, last = steady(DetectorConfig(threshold=threshold))
    for i in range(211):
        assert detector.verdict(last + i * 0.01) is not Verdict.DOWN


def test_next_heartbeat_after_suspicion_brings_the_node_back_alive() -> None:
    detector, last = steady()
    assert detector.verdict(last + 4.0) is Verdict.SUSPECT
    detector.heartbeat(last + 4.0)
    assert detector.verdict(last + 4.0) is Verdict.ALIVE
    assert detector.verdict(last + 5.0) is Verdict.ALIVE


def test_outage_interval_does_not_poison_the_window() -> None:
    detector, last = steady()
    mean, std = detector.mean, detector.std
    detector.heartbeat(last + 60.0)
    assert (detector.mean, detector.std) == (mean, std)
    assert detector.verdict(last + 61.0) is Verdict.ALIVE
    assert detector.verdict(last + 60.0 + 3.6) is Verdict.SUSPECT


def test_reset_after_down_bootstraps_afresh() -> None:
    detector, last = steady()
    assert detector.verdict(last + 30.0) is Verdict.DOWN
    detector.reset()
    assert detector.verdict(last + 30.0) is Verdict.NONE
    assert detector.samples == 0
    detector.heartbeat(last + 31.0)
    assert detector.verdict(last + 31.0) is Verdict.ALIVE
    assert (detector.mean, detector.std) == (1.0, 0.25)


def test_monitor_stall_forgiven_by_shift_convicts_nobody() -> None:
    guard = StallGuard(DEFAULTS.max_local_pause)
    detectors = []
    for last_arrival in (9.1, 9.5, 10.0):
        detector = PhiAccrual(DEFAULTS)
        for k in range(10, -1, -1):
            detector.heartbeat(last_arrival - k)
        detectors.append(detector)
    for tick in range(101):
        assert guard.observe(tick / 10) == 0.0
    # The event loop freezes for 3 s; no tick and no heartbeat is handled meanwhile.
    after_stall = 13.0
    assert detectors[0].verdict(after_stall) is Verdict.SUSPECT  # what an unguarded monitor sees

    gap = guard.observe(after_stall)
    assert gap == pytest.approx(3.0 - DEFAULTS.max_local_pause)
    for detector in detectors:
        detector.shift(gap, now=after_stall)
    assert [d.verdict(after_stall) for d in detectors] == [Verdict.ALIVE] * 3
    # Detection still works afterwards: a node that stays silent is convicted in due course.
    assert all(d.verdict(after_stall + 10.0) is Verdict.DOWN for d in detectors)


def test_shift_never_moves_a_fresh_arrival_into_the_future() -> None:
    detector, last = steady()
    detector.shift(5.0, now=last + 0.5)
    assert detector.last_arrival == last + 0.5
    detector.shift(5.0, now=last)
    assert detector.last_arrival == last + 0.5
    detector.shift(2.0)
    assert detector.last_arrival == last + 2.5
    with pytest.raises(ValueError, match="gap"):
        detector.shift(-1.0)


def test_stall_guard_returns_the_excess_over_max_local_pause() -> None:
    guard = StallGuard(2.0)
    assert guard.observe(100.0) == 0.0
    assert guard.observe(101.9) == 0.0
    assert guard.observe(106.9) == pytest.approx(3.0)
    assert guard.observe(106.0) == 0.0  # a clock that steps back is no stall
    assert guard.observe(107.0) == 0.0


def test_no_heartbeat_yet_gives_verdict_none() -> None:
    detector = PhiAccrual(DEFAULTS)
    assert detector.verdict(1e6) is Verdict.NONE
    assert detector.verdict(1e6) == "none"
    assert detector.phi(1e6) == 0.0
    assert detector.last_arrival is None
    detector.shift(3.0)
    assert detector.last_arrival is None


def test_set_interval_scales_detection_times() -> None:
    fresh = PhiAccrual(DEFAULTS)
    fresh.heartbeat(0.0)
    slow, last = steady()
    slow.set_interval(5.0)
    announced_before_first = PhiAccrual(DEFAULTS)
    announced_before_first.set_interval(5.0)
    announced_before_first.heartbeat(last)
    for a, b in ((fresh.phi_suspect, slow.phi_suspect), (fresh.phi_down, slow.phi_down)):
        at_one = first_crossing(a, 0.0, DEFAULTS.threshold, 0.001)
        at_five = first_crossing(b, last, DEFAULTS.threshold, 0.005)
        assert at_five == pytest.approx(5 * at_one, rel=0.01)
    assert slow.verdict(last + 9.0) is Verdict.ALIVE
    assert announced_before_first.phi_down(last + 30) == slow.phi_down(last + 30)
    with pytest.raises(ValueError, match="interval"):
        slow.set_interval(0.0)


def test_window_is_bounded_and_its_statistics_exact() -> None:
    config = DetectorConfig(window=10)
    detector = PhiAccrual(config)
    rng = random.Random(7)
    now, intervals = 0.0, []
    detector.heartbeat(now)
    for _ in range(1000):
        gap = rng.uniform(0.5, 1.5)
        now += gap
        intervals.append(gap)
        detector.heartbeat(now)
        assert detector.samples <= config.window
    assert detector.samples == config.window
    assert detector.mean == pytest.approx(statistics.fmean(intervals[-10:]), rel=1e-12)
    assert detector.std == pytest.approx(statistics.pstdev(intervals[-10:]), rel=1e-9)


def test_phi_matches_akkas_formula() -> None:
    for elapsed in (0.0, 0.5, 0.99, 1.0, 1.01, 1.3, 2.0, 3.0, 4.0):
        assert phi_of(elapsed, 1.0, 0.25) == pytest.approx(akka_phi(elapsed, 1.0, 0.25), rel=1e-9)


def test_phi_is_capped_where_akkas_formula_breaks() -> None:
    with pytest.raises(ValueError):
        akka_phi(1e6, 1.0, 0.1)  # log10(0)
    assert phi_of(1e6, 1.0, 0.1) == PHI_MAX
    assert phi_of(math.inf, 1.0, 0.1) == PHI_MAX
    assert phi_of(-1e6, 1.0, 0.1) == 0.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("interval", 0.0),
        ("threshold", -1.0),
        ("min_std", 0.0),
        ("window", 1),
        ("down_pause", -1.0),
        ("max_local_pause", 0.0),
        ("interval", math.nan),
    ],
)
def test_config_rejects_meaningless_settings(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        settings: dict[str, Any] = {field: value}
        DetectorConfig(**settings)


finite_seconds = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False)


@given(
    intervals=st.lists(st.floats(min_value=0.0, max_value=1e5, allow_nan=False), max_size=300),
    pause=st.floats(min_value=0.0, max_value=1e5, allow_nan=False),
    first=finite_seconds,
    second=finite_seconds,
)
def test_phi_is_monotonic_finite_and_non_negative(
    intervals: list[float], pause: float, first: float, second: float
) -> None:
    detector = PhiAccrual(DetectorConfig(window=50))
    now = 0.0
    detector.heartbeat(now)
    for gap in intervals:
        now += gap
        detector.heartbeat(now)
    early, late = sorted((now + first, now + second))
    phi_early, phi_late = detector.phi(early, pause), detector.phi(late, pause)
    assert 0.0 <= phi_early <= phi_late <= PHI_MAX
    assert math.isfinite(phi_late)


@given(
    elapsed=st.lists(finite_seconds, min_size=2, max_size=2),
    mean=st.floats(min_value=0.0, max_value=1e9),
    std=st.floats(min_value=1e-6, max_value=1e9),
)
def test_phi_of_is_monotonic_finite_and_non_negative(
    elapsed: list[float], mean: float, std: float
) -> None:
    early, late = sorted(elapsed)
    assert 0.0 <= phi_of(early, mean, std) <= phi_of(late, mean, std) <= PHI_MAX


def test_precomputed_deadlines_match_the_exact_phi_crossings() -> None:
    detector = PhiAccrual(DetectorConfig())
    rng = random.Random(7)
    t = 0.0
    for _ in range(200):
        t += 1.0 + rng.uniform(-0.1, 0.1)
        detector.heartbeat(t)
    assert detector.verdict(detector.suspect_at - 1e-3) is Verdict.ALIVE
    assert detector.verdict(detector.suspect_at + 1e-3) is Verdict.SUSPECT
    assert detector.verdict(detector.down_at - 1e-3) is Verdict.SUSPECT
    assert detector.verdict(detector.down_at + 1e-3) is Verdict.DOWN
    detector.reset()
    assert detector.suspect_at == math.inf and detector.down_at == math.inf
