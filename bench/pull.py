"""Pull capacity: the monitor polling N simulated agents at 1 s, against Prometheus.

One simulator process serves the N agents (heartbeat and /metrics on each
port). The pimon monitor polls them for a measured window, then Prometheus
scrapes the same ports at 1 s for a window of the same length. Both servers are
pinned to one core, the simulator to the other. Checks are counted by the
simulator, CPU by /proc; false suspects are the monitor's logged transitions to
suspect or down.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import time
import urllib.parse
from dataclasses import dataclass

from bench import (
    LOAD_CPU,
    SERVER_CPU,
    Result,
    Row,
    Spawned,
    cpu_seconds,
    fmt,
    free_port,
    http_get,
    pimon_command,
    pin,
    profile_tables,
    profiled,
    py_spy,
    python_module,
    rss_bytes,
    start_pimon,
    stop_group,
    wait_http,
    wait_log,
)

MISTAKE_RE = re.compile(r": \w+ -> (suspect|down) ")


@dataclass(slots=True)
class Figures:
    """One server's figures at one N."""

    cpu_per_1000: float
    rss_mb: float
    checks_per_s: float
    mistakes: int
    detail: str


class Fleet:
    """A simulator process serving N agents, with its request counters."""

    def __init__(self, nodes: int, workdir: str, lifetime_s: float, prefix: str = "sim") -> None:
        self.nodes = nodes
        self.nodes_file = os.path.join(workdir, f"nodes-{nodes}.txt")
        args = ["--nodes", str(nodes), "--nodes-file", self.nodes_file]
        args += ["--duration", str(lifetime_s), "--prefix", prefix]
        log_path = os.path.join(workdir, f"simulator-{nodes}.log")
        self.proc = Spawned(python_module("bench.simulator", *args), log_path, LOAD_CPU)
        text = wait_log(self.proc, "ready control=", 120.0)
        match = re.search(r"ready control=(\S+)", text)
        assert match is not None
        self.control = match.group(1)

    def count(self, path: str) -> int:
        """Return how many requests for ``path`` ('heartbeat' or 'metrics') were served."""
        counts: dict[str, int] = json.loads(http_get(f"http://{self.control}/stats")[1])
        return counts.get(path, 0)

    def addresses(self) -> list[str]:
        """Return the ``127.0.0.1:port`` of every simulated agent."""
        with open(self.nodes_file, encoding="ascii") as f:
            return [line.split("=", 1)[1] for line in f.read().split()]

    def stop(self) -> None:
        """Stop the simulator."""
        self.proc.stop()


def states(url: str) -> dict[str, str]:
    """Return every node's state as the monitor sees it."""
    answer = json.loads(http_get(f"{url}/v1/nodes", timeout=30)[1])
    return {n["name"]: n["state"] for n in answer["nodes"]}


def window(pid: int, fleet: Fleet, path: str, seconds: float) -> tuple[float, int, float]:
    """Measure CPU seconds and checks served over ``seconds``; return them and the wall time."""
    cpu0, checks0, t0 = cpu_seconds(pid), fleet.count(path), time.perf_counter()
    time.sleep(seconds)
    cpu1, checks1, t1 = cpu_seconds(pid), fleet.count(path), time.perf_counter()
    return cpu1 - cpu0, checks1 - checks0, t1 - t0


def measure_pimon(fleet: Fleet, workdir: str, warm_s: float, measure_s: float) -> Figures:
    """Run the monitor against the fleet and measure it."""
    args = ["monitor", "--listen", "127.0.0.1:0", "--nodes-file", fleet.nodes_file]
    args += ["--db", os.path.join(workdir, f"monitor-{fleet.nodes}.db"), "--interval", "1"]
    monitor, address = start_pimon(
        args, os.path.join(workdir, f"monitor-{fleet.nodes}.log"), SERVER_CPU
    )
    url = f"http://{address}"
    try:
        deadline = time.monotonic() + warm_s
        while time.monotonic() < deadline:
            seen = states(url)
            if len(seen) == fleet.nodes and set(seen.values()) == {"up"}:
                break
            time.sleep(0.5)
        time.sleep(2.0)  # let the first, bursty polls settle into their spread schedule
        mark = len(monitor.log_text())
        cpu, checks, wall = window(monitor.pid, fleet, "heartbeat", measure_s)
        rss = rss_bytes(monitor.pid)
        final = states(url)
        log_text = monitor.log_text()
    finally:
        monitor.stop()
    in_window = len(MISTAKE_RE.findall(log_text[mark:]))
    whole_run = len(MISTAKE_RE.findall(log_text))
    not_up = sum(1 for s in final.values() if s != "up")
    detail = (
        f"{in_window} transitions to suspect/down in the window, {whole_run} in the whole run; "
        f"{not_up} of {fleet.nodes} not up at the end"
    )
    return Figures(
        cpu / max(checks, 1) * 1000, rss / 1e6, checks / wall, in_window + not_up, detail
    )


def profile_pimon(fleet: Fleet, workdir: str, seconds: float) -> list[str]:
    """Run the monitor against the fleet under py-spy; return the profile's tables."""
    args = ["monitor", "--listen", "127.0.0.1:0", "--nodes-file", fleet.nodes_file]
    args += ["--db", os.path.join(workdir, f"profiled-{fleet.nodes}.db"), "--interval", "1"]
    output = os.path.join(workdir, f"profile-pull-{fleet.nodes}.txt")
    command = profiled(pimon_command(*args), output, seconds)
    spy = Spawned(command, os.path.join(workdir, f"profiled-{fleet.nodes}.log"), SERVER_CPU)
    try:
        wait_log(spy, "listening on http://", 60)
        time.sleep(seconds + 2)  # py-spy stops sampling after `seconds` and writes its output
    finally:
        stop_group(spy)
    return profile_tables(output, f"py-spy, monitor polling {fleet.nodes:,} nodes")


def prometheus_config(addresses: list[str], path: str) -> None:
    """Write a Prometheus config scraping every address at 1 s."""
    targets = ",\n".join(f'        "{a}"' for a in addresses)
    with open(path, "w", encoding="ascii") as f:
        f.write(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: sim\n    static_configs:\n"
            f"      - targets: [\n{targets}\n      ]\n"
        )


def query(url: str, promql: str) -> float | None:
    """Return the single value of an instant PromQL query, or None."""
    status, body = http_get(f"{url}/api/v1/query?query={urllib.parse.quote(promql)}", 30)
    if status != 200:
        return None
    data = json.loads(body)["data"]["result"]
    return float(data[0]["value"][1]) if data else None


def measure_prometheus(
    fleet: Fleet, workdir: str, binary: str, warm_s: float, measure_s: float
) -> Figures:
    """Run Prometheus against the fleet's /metrics and measure it."""
    config = os.path.join(workdir, f"prometheus-{fleet.nodes}.yml")
    prometheus_config(fleet.addresses(), config)
    port = free_port()
    args = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={os.path.join(workdir, f'tsdb-{fleet.nodes}')}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    url = f"http://127.0.0.1:{port}"
    with Spawned(args, os.path.join(workdir, f"prometheus-{fleet.nodes}.log"), SERVER_CPU) as prom:
        wait_http(f"{url}/-/ready", 60.0, prom.proc)
        time.sleep(1.0)
        pin(prom.pid, SERVER_CPU)  # Go starts threads late; pin those too
        deadline = time.monotonic() + warm_s
        while time.monotonic() < deadline and (query(url, "count(up == 1)") or 0) < fleet.nodes:
            time.sleep(0.5)
        time.sleep(2.0)
        cpu, checks, wall = window(prom.pid, fleet, "metrics", measure_s)
        rss = rss_bytes(prom.pid)
        span = f"{max(1, round(measure_s))}s"
        failed = query(url, f"sum(count_over_time(up[{span}])) - sum(sum_over_time(up[{span}]))")
        up_now = query(url, "count(up == 1)") or 0
    failures = round(failed or 0)
    detail = f"{failures} failed scrapes in the window; {up_now:.0f} of {fleet.nodes} up at the end"
    mistakes = failures + fleet.nodes - round(up_now)
    return Figures(cpu / max(checks, 1) * 1000, rss / 1e6, checks / wall, mistakes, detail)


def run(
    quick: bool = False, sizes: list[int] | None = None, measure_s: float | None = None
) -> Result:
    """Measure pull capacity for each N against Prometheus."""
    result = Result("pull", "Pull capacity", "Prometheus")
    binary = shutil.which("prometheus")
    sizes = sizes or ([50, 200] if quick else [100, 1000, 2000])
    warm_s = 15.0 if quick else 30.0
    measure_s = measure_s or (5.0 if quick else 20.0)
    lines = [
        "| N | pimon CPU s / 1,000 checks | Prometheus CPU s / 1,000 scrapes | ratio "
        "| pimon RSS MB | Prometheus RSS MB | pimon checks/s | Prometheus scrapes/s "
        "| pimon mistakes | Prometheus failed scrapes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    mistakes, missed = 0, False
    profile: list[str] = []
    with tempfile.TemporaryDirectory(prefix="pimon-bench-pull-") as workdir:
        for n in sizes:
            fleet = Fleet(n, workdir, lifetime_s=4 * (warm_s + measure_s) + 120)
            try:
                ours = measure_pimon(fleet, workdir, warm_s, measure_s)
                theirs = (
                    measure_prometheus(fleet, workdir, binary, warm_s, measure_s)
                    if binary
                    else None
                )
                missed = missed or bool(theirs and ours.cpu_per_1000 > theirs.cpu_per_1000 / 2)
                if n == sizes[-1] and missed and not quick and py_spy() is not None:
                    profile = profile_pimon(fleet, workdir, 20.0)
            finally:
                fleet.stop()
            mistakes += ours.mistakes
            ratio = ours.cpu_per_1000 / theirs.cpu_per_1000 if theirs else None
            result.rows.append(
                Row(
                    f"CPU s per 1,000 checks, N={n}",
                    ours.cpu_per_1000,
                    theirs.cpu_per_1000 if theirs else None,
                    "s",
                    "≤ 0.5x Prometheus",
                    ratio <= 0.5 if ratio is not None else None,
                )
            )
            result.rows.append(
                Row(f"RSS, N={n}", ours.rss_mb, theirs.rss_mb if theirs else None, "MB")
            )
            if theirs is None:
                theirs = Figures(math.nan, math.nan, math.nan, -1, "not run")
            lines.append(
                f"| {n:,} | {fmt(ours.cpu_per_1000)} | {fmt(theirs.cpu_per_1000)} "
                f"| {fmt(ratio)} | {fmt(ours.rss_mb)} | {fmt(theirs.rss_mb)} "
                f"| {fmt(ours.checks_per_s)} | {fmt(theirs.checks_per_s)} "
                f"| {ours.mistakes} | {theirs.mistakes} |"
            )
            result.notes.append(f"N={n:,}: pimon: {ours.detail}.")
            if binary:
                result.notes.append(f"N={n:,}: Prometheus: {theirs.detail}.")
    result.rows.append(Row("false suspects (all N)", mistakes, None, "", "0", mistakes == 0))
    result.tables.append("\n".join(lines))
    result.tables += profile
    result.notes.append(
        f"Each N: warm-up until every node is up (≤ {warm_s:g} s), then a {measure_s:g} s "
        f"window per server; servers pinned to CPU {SERVER_CPU}, simulator to CPU {LOAD_CPU}."
    )
    if binary is None:
        result.notes.append("prometheus not installed (apt-get install -y prometheus): no anchor.")
    return result
