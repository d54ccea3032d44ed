"""Detector quality: a discrete-event simulation of our detector on a virtual clock.

One node pushes a heartbeat every interval over a simulated network (random or
Gilbert-Elliott burst loss, normal or Pareto jitter, sender stalls). The real
``pimon.membership.Membership`` (with ``pimon.detector.PhiAccrual`` inside)
receives the arrivals; instead of ticking every 0.1 s for days, the simulation
ticks only on the monitor's 0.1 s grid right after the instants where phi
crosses the threshold, which it computes from the detector's own mean and std.

Reported per row, after Chen, Toueg and Aguilera (2002): detection time T_D
(crash to ``down``: mean and p99, over many crashes), mistake rate lambda_M per
node-day (false ``suspect`` and false ``down`` separately, over a failure-free
run of at least 5 node-days) and mistake duration T_M. The same message streams
feed a fixed-timeout checker (Uptime Kuma / Gatus: down after 1 or 3 failed
checks, timeout 0.8 interval) and a memberlist-like model (LAN defaults: probe
timeout 0.5 s, 3 indirect probes, suspicion timeout 4 * max(1, log10 N) s).
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import random
import time
from dataclasses import dataclass, field, replace

from bench import Result, Row, fmt, quantile
from pimon.detector import DetectorConfig, phi_of
from pimon.membership import Membership
from pimon.wire import Heartbeat

DAY = 86400.0
TICK_S = 0.1  # pimon.monitor ticks the membership every 0.1 s
UP_S = (150.0, 300.0)  # up time before each crash: enough to fill the 100-sample window
DOWNTIME_S = 60.0  # every detector has convicted long before the node restarts
FIXED_TIMEOUT = 0.8  # Uptime Kuma's default request timeout is 0.8 x interval
MEMBERLIST_PROBE_TIMEOUT = 0.5
MEMBERLIST_INDIRECT = 3
MEMBERLIST_N = 10


@dataclass(frozen=True, slots=True)
class Network:
    """How messages travel: loss, jitter and sender stalls."""

    name: str
    loss: float = 0.0
    # Gilbert-Elliott: P(good -> bad), P(bad -> good), loss when good, loss when bad.
    burst: tuple[float, float, float, float] | None = None
    jitter: str = "normal"  # "normal" (half-normal) or "pareto"
    jitter_s: float = 0.02  # normal: std; pareto: x_m
    pareto_alpha: float = 1.5
    stalls_per_hour: float = 0.0
    stall_median_s: float = 2.0


LOSS_5 = Network("5 % random loss", loss=0.05)
ROWS = (
    Network("no loss, normal jitter 20 ms"),
    Network("1 % random loss", loss=0.01),
    LOSS_5,
    Network("burst loss (Gilbert-Elliott, mean burst 5 s)", burst=(0.005, 0.2, 0.001, 0.5)),
    Network("heavy-tailed jitter (Pareto a=1.5, x_m=10 ms)", jitter="pareto", jitter_s=0.01),
    Network("sender stalls (6/h, median 2 s, lognormal)", stalls_per_hour=6.0),
    Network(
        "5 % loss + Pareto jitter + stalls",
        loss=0.05,
        jitter="pareto",
        jitter_s=0.01,
        stalls_per_hour=6.0,
    ),
)


@dataclass(slots=True)
class Stream:
    """Messages of one simulated node, one slot per interval from time 0."""

    arrival: list[float | None] = field(default_factory=list)  # None: lost, unsent or crashed
    loss_now: list[float] = field(default_factory=list)  # loss probability in that slot
    crashes: list[float] = field(default_factory=list)
    interval: float = 1.0
    end: float = 0.0


def stall_windows(net: Network, end: float, rng: random.Random) -> list[tuple[float, float]]:
    """Return the sender's stalls (start, end) as a Poisson process with lognormal lengths."""
    out: list[tuple[float, float]] = []
    if net.stalls_per_hour <= 0:
        return out
    t = rng.expovariate(net.stalls_per_hour / 3600)
    while t < end:
        length = rng.lognormvariate(math.log(net.stall_median_s), 0.6)
        out.append((t, t + length))
        t += length + rng.expovariate(net.stalls_per_hour / 3600)
    return out


def delay(net: Network, rng: random.Random) -> float:
    """Return one message's one-way delay."""
    if net.jitter == "pareto":
        return float(net.jitter_s * (1.0 - rng.random()) ** (-1.0 / net.pareto_alpha))
    return 0.0005 + abs(rng.gauss(0.0, net.jitter_s))


def make_stream(
    net: Network, seconds: float, interval: float, rng: random.Random, crashes: bool
) -> Stream:
    """Simulate the node's messages for ``seconds``; with ``crashes``, crash and restart it."""
    stream = Stream(interval=interval, end=seconds)
    stalls = stall_windows(net, seconds, rng)
    stall_i = 0
    alive_from, alive_until = 0.0, rng.uniform(*UP_S) if crashes else math.inf
    bad = False
    for k in range(int(seconds / interval)):
        due = k * interval
        if due >= alive_until:
            stream.crashes.append(alive_until)
            alive_from = alive_until + DOWNTIME_S
            alive_until = alive_from + rng.uniform(*UP_S)
        if due < alive_from:  # crashed: nothing is sent
            stream.arrival.append(None)
            stream.loss_now.append(1.0)
            continue
        while stall_i < len(stalls) and stalls[stall_i][1] <= due:
            stall_i += 1
        sent = due
        in_stall = stall_i < len(stalls) and stalls[stall_i][0] <= due
        if in_stall:
            # A stalled sender skips its slots and sends once when it wakes up.
            first_slot = due - interval < stalls[stall_i][0]
            sent = stalls[stall_i][1] if first_slot else math.inf
        if net.burst is not None:
            to_bad, to_good, loss_good, loss_bad = net.burst
            bad = (rng.random() >= to_good) if bad else (rng.random() < to_bad)
            p = loss_bad if bad else loss_good
        else:
            p = net.loss
        stream.loss_now.append(1.0 if in_stall else p)
        lost = rng.random() < p or sent >= alive_until
        stream.arrival.append(None if lost else sent + delay(net, rng))
    return stream


def crossing_z(threshold: float) -> float:
    """Return the standardised silence at which phi reaches ``threshold``, from phi_of itself."""
    low, high = -10.0, 100.0
    for _ in range(200):
        mid = (low + high) / 2
        if phi_of(mid, 0.0, 1.0) >= threshold:
            high = mid
        else:
            low = mid
    return high


@dataclass(slots=True)
class Episodes:
    """State changes of one detector over one stream: (time, state) pairs, in order."""

    changes: list[tuple[float, str]] = field(default_factory=list)


def run_phi(stream: Stream, config: DetectorConfig) -> Episodes:
    """Feed the stream's arrivals to the real Membership; return its state changes."""
    # The simulation ticks only where a verdict can change, so the real stall guard would see
    # huge gaps between ticks: switch it off (the monitor's own stalls are not simulated).
    config = replace(config, max_local_pause=1e12)
    membership = Membership(config)
    node = membership.add("sim", mode="push", source="push", address=None, now=0.0)
    detector = node.detector
    hb = Heartbeat(1, "sim", "id", 1, 0.0, config.interval)
    z = crossing_z(config.threshold)
    pauses = (config.suspect_pause * config.interval, config.down_pause * config.interval)
    arrivals = sorted(a for a in stream.arrival if a is not None)
    phase = 0.037  # the monitor's ticks are not aligned with the sender's clock
    out = Episodes()
    for i, at in enumerate(arrivals):
        for t in membership.on_heartbeat("sim", hb, at):
            out.changes.append((at, str(t.new)))
        following = arrivals[i + 1] if i + 1 < len(arrivals) else stream.end
        last = detector.last_arrival
        assert last is not None
        mean, std = detector.mean, detector.std
        for pause in pauses:
            cross = last + mean + pause + z * std
            tick = phase + math.ceil((cross - phase) / TICK_S - 1e-9) * TICK_S
            for _ in range(3):  # rounding can put the crossing one tick later
                if tick >= following:
                    break
                changes = membership.tick(tick)
                if changes:
                    out.changes.extend((tick, str(t.new)) for t in changes)
                    break
                tick += TICK_S
    return out


def run_fixed(stream: Stream, misses: int) -> Episodes:
    """Check every interval with a fixed timeout; down after ``misses`` failures in a row."""
    out = Episodes()
    failures, down = 0, False
    timeout = FIXED_TIMEOUT * stream.interval
    for k, arrival in enumerate(stream.arrival):
        due = k * stream.interval
        if arrival is not None and arrival - due <= timeout:
            failures = 0
            if down:
                out.changes.append((arrival, "up"))
                down = False
            continue
        failures += 1
        if failures >= misses and not down:
            down = True
            out.changes.append((due + timeout, "down"))
    return out


def run_memberlist(stream: Stream, net: Network, rng: random.Random) -> Episodes:
    """Probe every interval (direct, then 3 indirect); dead after the suspicion timeout."""
    interval = stream.interval
    suspicion = 4 * max(1.0, math.log10(MEMBERLIST_N)) * interval
    out = Episodes()
    state, suspect_at = "up", 0.0
    for k, (arrival, p) in enumerate(zip(stream.arrival, stream.loss_now, strict=True)):
        due = k * interval
        if state == "suspect" and due >= suspect_at + suspicion:
            state = "down"
            out.changes.append((suspect_at + suspicion, "down"))
        ok = arrival is not None and arrival - due <= MEMBERLIST_PROBE_TIMEOUT
        if not ok and p < 1.0:
            # Indirect probes take other paths: independent draws, answered within the round.
            ok = any(
                rng.random() >= p and 2 * delay(net, rng) <= interval
                for _ in range(MEMBERLIST_INDIRECT)
            )
        if ok:
            if state != "up":
                state = "up"  # a live node refutes the suspicion as soon as it is heard
                out.changes.append((arrival if arrival is not None else due + 0.5, "up"))
        elif state == "up":
            state, suspect_at = "suspect", due + interval  # when the probe round ends
            out.changes.append((suspect_at, "suspect"))
    return out


@dataclass(slots=True)
class Quality:
    """The Chen-Toueg-Aguilera figures of one detector on one network."""

    td_mean: float
    td_p99: float
    td_censored: int
    suspects_per_day: float
    downs_per_day: float
    tm_mean: float


def mistakes(episodes: Episodes, days: float) -> tuple[float, float, float]:
    """Return false suspects and false downs per node-day and mean mistake duration."""
    suspects = downs = 0
    durations: list[float] = []
    began: float | None = None
    for at, state in episodes.changes:
        if state == "suspect":
            suspects += 1
        elif state == "down":
            downs += 1
        if state in ("suspect", "down") and began is None:
            began = at
        elif state == "up" and began is not None:
            durations.append(at - began)
            began = None
    mean = sum(durations) / len(durations) if durations else float("nan")
    return suspects / days, downs / days, mean


def detection_times(episodes: Episodes, crashes: list[float]) -> tuple[list[float], int]:
    """Return crash-to-down times; crashes not convicted before the restart are censored."""
    out: list[float] = []
    censored = 0
    changes = episodes.changes
    j = 0
    state = "up"
    for crash in crashes:
        while j < len(changes) and changes[j][0] < crash - 1e-9:
            state = changes[j][1]
            j += 1
        if state == "down":  # already (wrongly) down when it crashed: detected at once
            out.append(0.0)
            continue
        k = j
        while k < len(changes) and changes[k][1] != "down":
            k += 1
        if k < len(changes) and changes[k][0] - crash < DOWNTIME_S:
            out.append(changes[k][0] - crash)
        else:
            censored += 1
    return out, censored


def evaluate(
    net: Network, days: float, crashes: int, seed: int, configs: dict[str, DetectorConfig]
) -> dict[str, Quality]:
    """Return the figures of every detector on one network."""
    interval = 1.0
    rng = random.Random(seed)
    calm = make_stream(net, days * DAY, interval, rng, crashes=False)
    crash_span = crashes * (sum(UP_S) / 2 + DOWNTIME_S)
    crashing = make_stream(net, crash_span, interval, rng, crashes=True)
    runs: dict[str, tuple[Episodes, Episodes]] = {}
    for name, config in configs.items():
        runs[name] = (run_phi(calm, config), run_phi(crashing, config))
    for misses in (1, 3):
        runs[f"fixed timeout, {misses} miss{'es' if misses > 1 else ''}"] = (
            run_fixed(calm, misses),
            run_fixed(crashing, misses),
        )
    runs["memberlist LAN (N=10)"] = (
        run_memberlist(calm, net, random.Random(seed + 1)),
        run_memberlist(crashing, net, random.Random(seed + 2)),
    )
    out: dict[str, Quality] = {}
    for name, (calm_run, crash_run) in runs.items():
        suspects, downs, tm = mistakes(calm_run, days)
        tds, censored = detection_times(crash_run, crashing.crashes)
        mean = sum(tds) / len(tds) if tds else float("nan")
        out[name] = Quality(mean, quantile(tds, 0.99), censored, suspects, downs, tm)
    return out


Task = tuple[Network, float, int, int, dict[str, DetectorConfig]]


def evaluate_all(tasks: list[Task], workers: int) -> list[dict[str, Quality]]:
    """Evaluate every task, on ``workers`` processes when more than one."""
    if workers <= 1:
        return [evaluate(*task) for task in tasks]
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        return list(pool.map(evaluate, *zip(*tasks, strict=True)))


SWEEP = ((2.0, 3.0), (2.0, 3.5), (2.0, 4.0), (1.0, 3.0))
OURS = "pimon phi (defaults)"
EARLIER_DOWN_PAUSE = 5.0  # the default before this table moved it to 3
EARLIER = f"pimon phi, down_pause {EARLIER_DOWN_PAUSE:g} (earlier default)"


def run(quick: bool = False, days: float | None = None, crashes: int | None = None) -> Result:
    """Run every network row for every detector and tabulate the figures."""
    result = Result("detector", "Detector quality", "fixed timeout, memberlist")
    days = days or (0.5 if quick else 5.0)
    crashes = crashes or (150 if quick else 1000)
    started = time.perf_counter()
    base = DetectorConfig()
    default = {OURS: base}
    if base.down_pause != EARLIER_DOWN_PAUSE:
        default[EARLIER] = replace(base, down_pause=EARLIER_DOWN_PAUSE)
    tasks: list[Task] = [(net, days, crashes, 100 + i, default) for i, net in enumerate(ROWS)]
    hardest = [n for n in ROWS if n.loss >= 0.05 or n.burst] if not quick else []
    variants = {f"{s}/{d}": DetectorConfig(suspect_pause=s, down_pause=d) for s, d in SWEEP}
    tasks += [(net, days, crashes, 200 + i, variants) for i, net in enumerate(hardest)]
    workers = 1 if days * len(tasks) < 2 else min(2, os.cpu_count() or 1)
    figures = evaluate_all(tasks, workers)
    lines = [
        "| network | detector | T_D mean s | T_D p99 s | false suspects / node-day "
        "| false downs / node-day | T_M mean s |",
        "|---|---|---|---|---|---|---|",
    ]
    for net, row in zip(ROWS, figures, strict=False):
        lines += [_line(net.name, name, q) for name, q in row.items()]
    result.tables.append("\n".join(lines))
    ours = figures[ROWS.index(LOSS_5)][OURS]
    result.rows += [
        Row("down T_D p99 at 5 % loss", ours.td_p99, None, "s", "≤ 6 s", ours.td_p99 <= 6.0),
        Row(
            "false downs per node-day at 5 % loss",
            ours.downs_per_day,
            None,
            "",
            "0",
            ours.downs_per_day == 0,
        ),
        Row("false suspects per node-day at 5 % loss", ours.suspects_per_day, None, ""),
    ]
    if hardest:
        lines = [
            "| network | suspect_pause | down_pause | T_D mean s | T_D p99 s "
            "| false suspects / node-day | false downs / node-day | T_M mean s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for net, row in zip(hardest, figures[len(ROWS) :], strict=True):
            for name, q in row.items():
                if name not in variants:
                    continue  # the baselines, already in the first table
                s, d = name.split("/")
                lines.append(
                    f"| {net.name} | {s} | {d} | {fmt(q.td_mean)} | {fmt(q.td_p99)} "
                    f"| {fmt(q.suspects_per_day)} | {fmt(q.downs_per_day)} | {fmt(q.tm_mean)} |"
                )
        result.tables.append("\n".join(lines))
        loss_row = figures[len(ROWS) + hardest.index(LOSS_5)]
        fits = [
            name.replace("/", " / ")
            for name, q in loss_row.items()
            if name in variants and q.td_p99 <= 6.0 and q.downs_per_day == 0
        ]
        result.notes.append(
            "suspect_pause / down_pause pairs meeting the 5 % loss goal (down p99 T_D ≤ 6 s, no "
            f"false down): {', '.join(fits) or 'none of those tried'}."
        )
    result.notes.insert(0, defaults_note(base, figures))
    result.notes += [
        f"Each row: a failure-free run of {days:g} node-days for lambda_M and T_M, and "
        f"{crashes} crashes (after {UP_S[0]:g}-{UP_S[1]:g} s up, so uniformly between "
        f"heartbeats) for T_D; interval 1 s; {time.perf_counter() - started:.0f} s wall on "
        f"{workers} process(es). A T_D of 0 means the detector already (wrongly) had the node "
        "down when it crashed; 'missed' counts crashes not convicted within 60 s.",
        "Fixed timeout: a check per interval, failed when the heartbeat is lost or later than "
        "0.8 s; down after 1 (Uptime Kuma's default) or 3 (Gatus') failures in a row.",
        "memberlist: each node probed every interval (the real one probes one member per "
        "interval, so each only every N intervals: its T_D is longer by up to N s); indirect "
        "probes draw independent losses; the suspicion timeout is the brief's 4 s, the "
        "minimum, reached only with enough confirmations (up to 6x longer without).",
    ]
    return result


def defaults_note(base: DetectorConfig, figures: list[dict[str, Quality]]) -> str:
    """Say which defaults ran and what the earlier down_pause would give, from the figures."""
    said = (
        f"Defaults in this run (pimon.detector.DetectorConfig): threshold {base.threshold:g}, "
        f"suspect_pause {base.suspect_pause:g}, down_pause {base.down_pause:g} intervals."
    )
    by_name = {net.name: row for net, row in zip(ROWS, figures, strict=False)}
    if EARLIER not in by_name[LOSS_5.name]:
        return said
    ours, old = by_name[LOSS_5.name][OURS], by_name[LOSS_5.name][EARLIER]
    burst = next(row for net, row in zip(ROWS, figures, strict=False) if net.burst)
    stalls = next(
        row for net, row in zip(ROWS, figures, strict=False) if net.stalls_per_hour and not net.loss
    )
    return (
        f"{said} down_pause {base.down_pause:g}, not the earlier {EARLIER_DOWN_PAUSE:g}, comes "
        f"from this table: at 5 % loss it brings the down p99 T_D from {fmt(old.td_p99)} s to "
        f"{fmt(ours.td_p99)} s with {fmt(ours.downs_per_day)} false downs per node-day (earlier: "
        f"{fmt(old.downs_per_day)}). The price is paid where silence lasts seconds: false downs "
        f"per node-day {fmt(burst[OURS].downs_per_day)} against {fmt(burst[EARLIER].downs_per_day)}"
        f" under burst loss and {fmt(stalls[OURS].downs_per_day)} against "
        f"{fmt(stalls[EARLIER].downs_per_day)} with sender stalls; suspect (suspect_pause "
        f"{base.suspect_pause:g}) is unchanged."
    )


def _line(network: str, detector: str, q: Quality) -> str:
    censored = f" ({q.td_censored} missed)" if q.td_censored else ""
    return (
        f"| {network} | {detector} | {fmt(q.td_mean)} | {fmt(q.td_p99)}{censored} "
        f"| {fmt(q.suspects_per_day)} | {fmt(q.downs_per_day)} | {fmt(q.tm_mean)} |"
    )
