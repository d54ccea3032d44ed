"""Phi accrual failure detection (Hayashibara et al. 2004, as in Akka): pure, clock injected."""

from __future__ import annotations

import functools
import math
from collections import deque
from dataclasses import dataclass, fields
from enum import StrEnum

#: The largest phi ever returned: finite, so JSON and Prometheus consumers always get a number.
PHI_MAX = 1e6
# Above this z, log1p(exp(z)) rounds to z itself in binary64; below it exp() cannot overflow.
_SOFTPLUS_LINEAR_FROM = 36.0
_LN10 = math.log(10.0)


class Verdict(StrEnum):
    """What one detector concludes about its node."""

    NONE = "none"
    ALIVE = "alive"
    SUSPECT = "suspect"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """Tune a phi accrual detector; times are in seconds, pauses in multiples of interval."""

    interval: float = 1.0
    threshold: float = 8.0
    min_std: float = 0.1
    suspect_pause: float = 2.0
    # 3, not 5: bench/detector_sim.py puts the down p99 at 5.8 s with no false down
    # at 5 % loss (5 gave 7.8 s); see docs/performance.md.
    down_pause: float = 3.0
    window: int = 100
    # A property of the monitor's own event loop, not of any node, hence seconds, not intervals.
    # The loop ticks far more often than this, so a longer gap is a stall (swap, GC, a blocked SD
    # card write). Only the excess is forgiven, so it stays below suspect_pause * interval: the
    # unforgiven part of a stall then fits inside the acceptable pause and convicts nobody.
    max_local_pause: float = 1.0

    def __post_init__(self) -> None:
        """Reject settings that would make detection meaningless."""
        for field in fields(self):
            value = getattr(self, field.name)
            if not math.isfinite(value):
                raise ValueError(f"detector setting {field.name} must be finite, got {value}")
        positive = ("interval", "threshold", "min_std", "max_local_pause")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"detector setting {name} must be > 0, got {getattr(self, name)}")
        for name in ("suspect_pause", "down_pause"):
            if getattr(self, name) < 0:
                raise ValueError(f"detector setting {name} must be >= 0, got {getattr(self, name)}")
        if self.window < 2:
            raise ValueError(f"detector setting window must be >= 2, got {self.window}")


def phi_of(elapsed: float, mean: float, std: float) -> float:
    """Return phi for a silence of `elapsed` seconds, given the expected mean and std (> 0)."""
    y = (elapsed - mean) / std
    # Akka's logistic approximation of the normal CDF. Its two branches are both
    # -log10(1 / (1 + exp(z))) = softplus(z) / ln 10; this form cannot overflow or hit log(0),
    # and is a chain of monotonic steps, so phi never decreases as the silence grows.
    z = y * (1.5976 + 0.070566 * (y * y))
    softplus = z if z > _SOFTPLUS_LINEAR_FROM else math.log1p(math.exp(z))
    return min(softplus / _LN10, PHI_MAX)


@functools.cache
def crossing(threshold: float) -> float:
    """Return y = (elapsed - mean) / std at which phi reaches ``threshold``."""
    low, high = -50.0, 50.0  # phi depends on y alone and grows with it: bisect once
    for _ in range(200):
        mid = (low + high) / 2
        if phi_of(mid, 0.0, 1.0) < threshold:
            low = mid
        else:
            high = mid
    return low


class PhiAccrual:
    """Judge one node from the arrival times of its heartbeats."""

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        self.interval = config.interval
        self.last_arrival: float | None = None
        self._intervals: deque[float] = deque(maxlen=config.window)
        self._sum = 0.0
        self._sum_sq = 0.0
        self._until_resum = config.window
        # Before these moments phi cannot reach the threshold: a tick over thousands
        # of nodes compares one float instead of computing phi.
        self.suspect_at = math.inf
        self.down_at = math.inf

    @property
    def samples(self) -> int:
        """Return how many inter-arrival intervals the window holds."""
        return len(self._intervals)

    @property
    def mean(self) -> float:
        """Return the mean inter-arrival interval of the window."""
        return self._sum / len(self._intervals) if self._intervals else self.interval

    @property
    def std(self) -> float:
        """Return the standard deviation phi uses: the window's, but at least min_std."""
        if not self._intervals:
            return max(self.interval / 4, self.config.min_std)
        variance = self._sum_sq / len(self._intervals) - self.mean**2
        return max(math.sqrt(max(variance, 0.0)), self.config.min_std)

    def heartbeat(self, now: float) -> None:
        """Record a heartbeat the monitor received at `now`."""
        last = self.last_arrival
        if last is None:
            self._seed()
            self.last_arrival = now
            self._refresh()
            return
        # A gap long enough to convict the node down is an outage or a restart, not a sample of
        # its rhythm; recorded, it would inflate mean and std and blunt detection for a whole
        # window. The caller still resets after a `down` verdict; this also covers a missed one.
        if now < self.down_at:  # phi_down below the threshold, without computing phi
            self._record(max(now - last, 0.0))
        self.last_arrival = max(last, now)
        self._refresh()

    def _refresh(self) -> None:
        if self.last_arrival is None:
            self.suspect_at = self.down_at = math.inf
            return
        # Slightly early is harmless (phi is then computed exactly); late would not be.
        base = self.last_arrival + self.mean + self.std * crossing(self.config.threshold) - 1e-6
        self.suspect_at = base + self.config.suspect_pause * self.interval
        self.down_at = base + self.config.down_pause * self.interval

    def phi(self, now: float, pause: float = 0.0) -> float:
        """Return phi at `now`, with `pause` seconds of silence accepted beyond the mean."""
        if self.last_arrival is None:
            return 0.0
        return phi_of(now - self.last_arrival, self.mean + pause, self.std)

    def phi_suspect(self, now: float) -> float:
        """Return phi at `now` with the suspect acceptable pause."""
        return self.phi(now, self.config.suspect_pause * self.interval)

    def phi_down(self, now: float) -> float:
        """Return phi at `now` with the down acceptable pause."""
        return self.phi(now, self.config.down_pause * self.interval)

    def verdict(self, now: float) -> Verdict:
        """Return whether the node is unheard of, alive, suspect or down at `now`."""
        if self.last_arrival is None:
            return Verdict.NONE
        if self.phi_down(now) >= self.config.threshold:
            return Verdict.DOWN
        if self.phi_suspect(now) >= self.config.threshold:
            return Verdict.SUSPECT
        return Verdict.ALIVE

    def shift(self, gap: float, now: float | None = None) -> None:
        """Forgive `gap` seconds of monitor stall, never moving the last arrival past `now`."""
        if gap < 0:
            raise ValueError(f"stall gap must be >= 0, got {gap}")
        if self.last_arrival is None:
            return
        shifted = self.last_arrival + gap
        # A heartbeat handled just after the stall is fresh already; pushing it into the future
        # would hide the node's next silence.
        self.last_arrival = shifted if now is None else max(self.last_arrival, min(shifted, now))
        self._refresh()

    def reset(self) -> None:
        """Forget all history; the next heartbeat bootstraps afresh at the current interval."""
        self.last_arrival = None
        self._clear()
        self._refresh()

    def set_interval(self, interval: float) -> None:
        """Expect heartbeats every `interval` seconds from now on, re-seeding the window."""
        if not (interval > 0 and math.isfinite(interval)):
            raise ValueError(f"heartbeat interval must be > 0 and finite, got {interval}")
        self.interval = interval
        if self.last_arrival is not None:
            self._seed()
        self._refresh()

    def _seed(self) -> None:
        """Fill the window like Akka (mean = interval, std = interval / 4) to detect at once."""
        self._clear()
        spread = self.interval / 4
        self._record(self.interval - spread)
        self._record(self.interval + spread)

    def _clear(self) -> None:
        """Empty the window and its running sums."""
        self._intervals.clear()
        self._sum = self._sum_sq = 0.0
        self._until_resum = self.config.window

    def _record(self, interval: float) -> None:
        """Append one interval to the bounded window in O(1)."""
        if len(self._intervals) == self._intervals.maxlen:
            evicted = self._intervals[0]
            self._sum -= evicted
            self._sum_sq -= evicted * evicted
        self._intervals.append(interval)
        self._sum += interval
        self._sum_sq += interval * interval
        self._until_resum -= 1
        if self._until_resum == 0:
            # Subtracting evicted samples accumulates rounding error; an exact re-sum once per
            # window keeps it bounded at amortised O(1).
            self._sum = math.fsum(self._intervals)
            self._sum_sq = math.fsum(x * x for x in self._intervals)
            self._until_resum = self.config.window


class StallGuard:
    """Measure how much of a gap between monitor ticks was the monitor's own stall."""

    def __init__(self, max_local_pause: float) -> None:
        if not max_local_pause > 0:
            raise ValueError(f"max_local_pause must be > 0, got {max_local_pause}")
        self.max_local_pause = max_local_pause
        self.last_tick: float | None = None

    def observe(self, now: float) -> float:
        """Record a tick at `now`; return the seconds of stall every detector should forgive."""
        last = self.last_tick
        if last is None:
            self.last_tick = now
            return 0.0
        self.last_tick = max(last, now)
        return max(now - last - self.max_local_pause, 0.0)
