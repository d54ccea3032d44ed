"""Agent footprint against Debian's prometheus-node-exporter, both on loopback.

Per run and per server: start-up time (spawn to first 200), CPU per request
over 1,000 keep-alive requests from /proc/PID/stat (minus the idle CPU of the
same duration), RSS after those requests and bytes per answer. Medians of
several runs; servers alternate so drift on a shared machine hits both.
"""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass

from bench import (
    SERVER_CPU,
    Result,
    Row,
    Spawned,
    cpu_seconds,
    fmt,
    free_port,
    median,
    pimon_command,
    rss_bytes,
    wait_http,
)

NODE_EXPORTER = "prometheus-node-exporter"


@dataclass(slots=True)
class Sample:
    """What one run measured of one server and one path."""

    startup_s: float
    cpu_ms_per_request: float
    rss_mb: float
    body_bytes: int


def hammer(port: int, path: str, count: int) -> tuple[float, int]:
    """Send ``count`` GETs over one keep-alive connection; return wall seconds and body size."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    size = 0
    start = time.perf_counter()
    try:
        for _ in range(count):
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"GET {path} answered {resp.status}")
            size = len(body)
    finally:
        conn.close()
    return time.perf_counter() - start, size


def measure(proc: subprocess.Popen[bytes], port: int, path: str, count: int) -> Sample:
    """Measure CPU per request and RSS of a running server for one path."""
    hammer(port, path, 10)  # warm caches and lazy imports, as a long-running server would be
    before = cpu_seconds(proc.pid)
    wall, size = hammer(port, path, count)
    busy = cpu_seconds(proc.pid) - before
    rss = rss_bytes(proc.pid)
    # Idle work (the agent's sampler, node_exporter's GC) over the same duration is not the
    # requests' cost.
    idle_for = max(wall, 1.0)
    before = cpu_seconds(proc.pid)
    time.sleep(idle_for)
    idle = (cpu_seconds(proc.pid) - before) * wall / idle_for
    return Sample(0.0, max(busy - idle, 0.0) * 1000 / count, rss / 1e6, size)


def agent_command(port: int, state_dir: str) -> list[str]:
    """Return the command line of a pimon agent on a loopback port."""
    return pimon_command(
        "agent",
        "--listen",
        f"127.0.0.1:{port}",
        "--name",
        "bench",
        "--state-dir",
        state_dir,
        "--log-level",
        "warning",
    )


def one_run(
    command: list[str], port: int, paths: list[str], count: int, log_path: str
) -> list[Sample]:
    """Start one server, time its start-up, measure each path; return one sample per path."""
    start = time.perf_counter()
    with Spawned(command, log_path, SERVER_CPU) as server:
        wait_http(f"http://127.0.0.1:{port}{paths[0]}", 30.0, server.proc)
        startup = time.perf_counter() - start
        samples = [measure(server.proc, port, path, count) for path in paths]
    for s in samples:
        s.startup_s = startup
    return samples


def run(quick: bool = False, runs: int | None = None, count: int | None = None) -> Result:
    """Measure the agent and node_exporter side by side."""
    result = Result("footprint", "Agent footprint", "prometheus-node-exporter")
    exporter = shutil.which(NODE_EXPORTER)
    if exporter is None:
        result.skipped = f"{NODE_EXPORTER} not installed: apt-get install -y {NODE_EXPORTER}"
        return result
    runs = runs or (2 if quick else 5)
    count = count or (200 if quick else 1000)
    # /proc counts CPU in 10 ms ticks: the agent's cheap answers need more requests to resolve.
    agent_count = count * 5
    agent: dict[str, list[Sample]] = {"/v1/heartbeat": [], "/metrics": []}
    exported: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="pimon-bench-footprint-") as tmp:
        for i in range(runs):
            port = free_port()
            for path, sample in zip(
                agent,
                one_run(
                    agent_command(port, tmp),
                    port,
                    list(agent),
                    agent_count,
                    os.path.join(tmp, "agent.log"),
                ),
                strict=True,
            ):
                agent[path].append(sample)
            port = free_port()
            command = [exporter, f"--web.listen-address=127.0.0.1:{port}"]
            log_path = os.path.join(tmp, "node_exporter.log")
            exported += one_run(command, port, ["/metrics"], count, log_path)
            if i == 0:
                result.notes.append(f"node_exporter: `{' '.join(command[:1])}` (Debian defaults)")

    def med(samples: list[Sample], key: str) -> float:
        return median([getattr(s, key) for s in samples])

    hb, metrics = agent["/v1/heartbeat"], agent["/metrics"]
    ne_rss, ne_cpu = med(exported, "rss_mb"), med(exported, "cpu_ms_per_request")
    rss = max(med(hb, "rss_mb"), med(metrics, "rss_mb"))  # after both bursts: the steady RSS
    cpu = med(hb, "cpu_ms_per_request")
    result.rows = [
        Row("RSS after requests", rss, ne_rss, "MB", "≤ node_exporter", rss <= ne_rss),
        Row(
            "CPU per heartbeat vs per scrape",
            cpu,
            ne_cpu,
            "ms",
            "≤ 1/10 node_exporter",
            cpu <= ne_cpu / 10,
        ),
        Row("CPU per /metrics scrape", med(metrics, "cpu_ms_per_request"), ne_cpu, "ms"),
        Row(
            "bytes per answer (heartbeat vs scrape)",
            med(hb, "body_bytes"),
            med(exported, "body_bytes"),
            "B",
        ),
        Row(
            "bytes per /metrics answer",
            med(metrics, "body_bytes"),
            med(exported, "body_bytes"),
            "B",
        ),
        Row(
            "start-up (spawn to first 200)",
            med(hb, "startup_s") * 1000,
            med(exported, "startup_s") * 1000,
            "ms",
        ),
    ]
    lines = [
        "| run | agent RSS MB | agent ms/heartbeat | agent ms per /metrics "
        "| node_exporter RSS MB | node_exporter ms/scrape |",
        "|---|---|---|---|---|---|",
    ]
    for i in range(runs):
        lines.append(
            f"| {i + 1} | {fmt(metrics[i].rss_mb)} | {fmt(hb[i].cpu_ms_per_request)} "
            f"| {fmt(metrics[i].cpu_ms_per_request)} | {fmt(exported[i].rss_mb)} "
            f"| {fmt(exported[i].cpu_ms_per_request)} |"
        )
    result.tables.append("\n".join(lines))
    result.notes.append(
        f"{runs} runs of {agent_count} (agent) and {count} (node_exporter) keep-alive GETs per "
        "path, medians (the agent needs more: /proc counts CPU in 10 ms ticks); the server is "
        f"pinned to CPU {SERVER_CPU}, the client is this process; idle CPU over the same "
        "duration is subtracted."
    )
    return result
