"""CLI latency: ``pimon status`` against a monitor holding 1,000 simulated nodes.

Wall time from spawn to exit, median of 10 runs, next to the floor every
Python CLI pays (``python -c pass``) and a bare fetch of the same JSON
(``curl``, or urllib where curl is missing). ``python -X importtime`` names the
imports that cost the most.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from bench import SERVER_CPU, Result, Row, fmt, median, pimon_command, start_pimon
from bench.pull import Fleet, states

GOAL_MS = 300.0
IMPORT_RE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)$")


def wall_ms(command: list[str], runs: int) -> tuple[float, list[int]]:
    """Run ``command`` ``runs`` times; return the median wall milliseconds and exit codes."""
    times, codes = [], []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, timeout=60, check=False)
        times.append((time.perf_counter() - start) * 1000)
        codes.append(done.returncode)
    return median(times), codes


def import_offenders(command: list[str], count: int = 8) -> list[tuple[str, float, float]]:
    """Return the top-level imports with the largest cumulative time: (module, ms, self ms)."""
    done = subprocess.run(
        [command[0], "-X", "importtime", *command[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found: list[tuple[str, float, float]] = []
    for line in done.stderr.splitlines():
        match = IMPORT_RE.match(line)
        if match and len(match.group(3)) <= 1:  # top level: imported by the command itself
            self_us, cumulative_us, _, name = match.groups()
            found.append((name, int(cumulative_us) / 1000, int(self_us) / 1000))
    return sorted(found, key=lambda f: f[1], reverse=True)[:count]


def profile_lines(command: list[str], count: int = 12) -> list[tuple[str, float, float]]:
    """Return where a Python command spends its time: (function, cumulative s, own s)."""
    done = subprocess.run(
        [sys.executable, "-m", "cProfile", "-s", "cumtime", *command],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    found: list[tuple[str, float, float]] = []
    for line in done.stdout.splitlines():
        parts = line.split(None, 5)
        if len(parts) != 6 or not parts[3].replace(".", "", 1).isdigit():
            continue
        where = parts[5]
        if where.startswith(("{", "<")) or "__main__.py" in where or "runpy" in where:
            continue
        found.append((where, float(parts[3]), float(parts[1])))
        if len(found) == count:
            break
    return found


def status_command(url: str) -> list[str]:
    """Return the ``pimon status`` command line, via the console script when installed."""
    script = os.path.join(os.path.dirname(sys.executable), "pimon")
    if os.path.exists(script):
        return [script, "status", "--monitor", url]
    return pimon_command("status", "--monitor", url)


def run(quick: bool = False, nodes: int | None = None, runs: int | None = None) -> Result:
    """Time ``pimon status`` against 1,000 nodes next to its floors."""
    result = Result("cli", "CLI latency", "python -c pass; curl")
    nodes = nodes or (200 if quick else 1000)
    runs = runs or (3 if quick else 10)
    with tempfile.TemporaryDirectory(prefix="pimon-bench-cli-") as workdir:
        fleet = Fleet(nodes, workdir, lifetime_s=300, prefix="cli")
        try:
            args = ["monitor", "--listen", "127.0.0.1:0", "--nodes-file", fleet.nodes_file]
            args += ["--db", os.path.join(workdir, "monitor.db")]
            monitor, address = start_pimon(args, os.path.join(workdir, "monitor.log"), SERVER_CPU)
            url = f"http://{address}"
            try:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and set(states(url).values()) != {"up"}:
                    time.sleep(0.5)
                status = status_command(url)
                pimon_ms, codes = wall_ms(status, runs)
                json_ms, _ = wall_ms([*status, "--json"], runs)
                floor_ms, _ = wall_ms([sys.executable, "-c", "pass"], runs)
                curl = shutil.which("curl")
                fetch = [sys.executable, "-c", f"import urllib.request as u; u.urlopen('{url}')"]
                if curl:
                    fetch = [curl, "-sf", "-o", "/dev/null", f"{url}/v1/nodes"]
                fetch_ms, _ = wall_ms(fetch, runs)
                offenders = import_offenders(pimon_command("status", "--monitor", url))
                hot = profile_lines(["-m", "pimon", "status", "--monitor", url])
            finally:
                monitor.stop()
        finally:
            fleet.stop()
    result.rows = [
        Row(
            f"pimon status, {nodes:,} nodes",
            pimon_ms,
            floor_ms,
            "ms",
            "≤ 300 ms",
            pimon_ms <= GOAL_MS,
        ),
        Row(f"pimon status --json, {nodes:,} nodes", json_ms, floor_ms, "ms"),
        Row("bare fetch of /v1/nodes", fetch_ms, None, "ms"),
    ]
    table = ["| import (top level) | cumulative ms | self ms |", "|---|---|---|"]
    table += [f"| `{name}` | {fmt(cum)} | {fmt(own)} |" for name, cum, own in offenders]
    result.tables.append("\n".join(table))
    table = ["| pimon status: function (cProfile) | cumulative s | own s |", "|---|---|---|"]
    table += [f"| `{where}` | {fmt(cum)} | {fmt(own)} |" for where, cum, own in hot]
    result.tables.append("\n".join(table))
    result.notes.append(
        f"Median of {runs} runs each; anchor = `python -c pass` (the interpreter's floor); "
        f"`pimon status` exit codes {sorted(set(codes))} (0: all up). "
        f"Fetch: `{os.path.basename(fetch[0])}` of /v1/nodes, {fmt(fetch_ms)} ms."
    )
    return result
