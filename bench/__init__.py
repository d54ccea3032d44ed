"""Benchmarks for pimon, each against an anchor (node_exporter, Prometheus, ...).

This module holds what every benchmark shares: the result shape, process
figures read from /proc, loopback ports and child processes.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
# Pin the measured server to one core and its load (simulator, generator) to the other,
# so they do not fight for the same core and CPU figures stay comparable.
SERVER_CPU = 1 if (os.cpu_count() or 1) > 1 else 0
LOAD_CPU = 0


@dataclass(slots=True)
class Row:
    """One figure of a benchmark: pimon against its anchor, with the goal."""

    metric: str
    pimon: float | None
    anchor: float | None = None
    unit: str = ""
    goal: str = ""
    met: bool | None = None

    @property
    def ratio(self) -> float | None:
        """Return pimon / anchor, when both are known and the anchor is not zero."""
        if self.pimon is None or not self.anchor:
            return None
        return self.pimon / self.anchor


@dataclass(slots=True)
class Result:
    """What one benchmark measured: rows for the summary, prose and tables for the doc."""

    name: str
    title: str
    anchor: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)  # markdown, already rendered
    skipped: str | None = None
    seconds: float = 0.0
    measured: str = ""  # when and with which command

    def as_json(self) -> dict[str, Any]:
        """Return the result as plain JSON data, to keep it in the doc between runs."""
        return {
            "name": self.name,
            "title": self.title,
            "anchor": self.anchor,
            "rows": [
                {
                    "metric": r.metric,
                    "pimon": r.pimon,
                    "anchor": r.anchor,
                    "unit": r.unit,
                    "goal": r.goal,
                    "met": r.met,
                }
                for r in self.rows
            ],
            "notes": self.notes,
            "tables": self.tables,
            "skipped": self.skipped,
            "seconds": self.seconds,
            "measured": self.measured,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Result:
        """Rebuild a result kept in the doc."""
        rows = [Row(**r) for r in data.get("rows", [])]
        return cls(
            name=data["name"],
            title=data["title"],
            anchor=data["anchor"],
            rows=rows,
            notes=list(data.get("notes", [])),
            tables=list(data.get("tables", [])),
            skipped=data.get("skipped"),
            seconds=float(data.get("seconds", 0.0)),
            measured=str(data.get("measured", "")),
        )


def median(values: Sequence[float]) -> float:
    """Return the median, or NaN for no values."""
    return statistics.median(values) if values else float("nan")


def quantile(values: Sequence[float], q: float) -> float:
    """Return the q-quantile (nearest rank) of ``values``, or NaN for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def cpu_seconds(pid: int) -> float:
    """Return user + system CPU seconds of a process (all its threads) from /proc."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        stat = f.read()
    # The command name may hold spaces and parentheses; fields resume after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Return the resident set size of a process."""
    with open(f"/proc/{pid}/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * PAGE_BYTES


def pin(pid: int, cpu: int) -> None:
    """Pin every thread of a process to one CPU; threads made later inherit it."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return
    for tid in tids:
        with contextlib.suppress(OSError):  # a thread that just ended
            os.sched_setaffinity(int(tid), {cpu})


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET a loopback URL; return the status and body (errors included)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> float:
    """Poll ``url`` until it answers 200; return the seconds it took."""
    start = time.perf_counter()
    deadline = start + timeout
    while time.perf_counter() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            if http_get(url, timeout=1.0)[0] == 200:
                return time.perf_counter() - start
        except (OSError, ValueError):
            pass
        time.sleep(0.005)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


class Spawned:
    """A child process with its output in a log file, stopped for sure on exit."""

    def __init__(self, args: Sequence[str], log_path: str, cpu: int | None = None) -> None:
        self.args = list(args)
        self.log_path = log_path
        self.log_start = os.path.getsize(log_path) if os.path.exists(log_path) else 0
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        if cpu is not None:
            pin(self.proc.pid, cpu)

    @property
    def pid(self) -> int:
        """Return the process id."""
        return self.proc.pid

    def log_text(self) -> str:
        """Return what this process logged so far (not earlier processes on the same log)."""
        with open(self.log_path, "rb") as f:
            f.seek(self.log_start)
            return f.read().decode("utf-8", "replace")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop with SIGTERM, then SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Spawned:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def python_module(module: str, *args: str) -> list[str]:
    """Return the command line running ``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def pimon_command(*args: str) -> list[str]:
    """Return the command line of a pimon subcommand."""
    return python_module("pimon", *args)


def wait_log(spawned: Spawned, needle: str, timeout: float) -> str:
    """Wait until the log of ``spawned`` contains ``needle``; return the log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = spawned.log_text()
        at = text.find(needle)
        if at >= 0 and "\n" in text[at:]:  # the whole line, not a half-written one
            return text
        if spawned.proc.poll() is not None:
            raise RuntimeError(f"{spawned.args[:4]} exited: {text[-2000:]}")
        time.sleep(0.05)
    raise TimeoutError(f"{spawned.args[:4]}: no {needle!r} in the log within {timeout}s")


def fmt(value: float | None, digits: int = 3) -> str:
    """Format a figure with ``digits`` significant digits; '-' when unknown."""
    if value is None or math.isnan(value):
        return "-"
    if value == 0:
        return "0"
    if abs(value) >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def start_pimon(
    args: Sequence[str],
    log_path: str,
    cpu: int | None = None,
    command: Sequence[str] | None = None,
) -> tuple[Spawned, str]:
    """Start a pimon daemon (``command``, else python -m pimon); return it and its address."""
    from pimon.demo import LISTEN_RE

    spawned = Spawned([*(command or pimon_command()), *args], log_path, cpu)
    try:
        text = wait_log(spawned, "listening on http://", 60.0)
    except BaseException:
        spawned.stop()
        raise
    if cpu is not None:
        pin(spawned.pid, cpu)  # threads started during start-up
    match = LISTEN_RE.search(text)
    assert match is not None
    return spawned, match.group(1)


def py_spy() -> str | None:
    """Return the py-spy executable (on PATH or beside this interpreter), if installed."""
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return shutil.which("py-spy") or (beside if os.path.exists(beside) else None)


def profiled(command: Sequence[str], output: str, seconds: float) -> list[str]:
    """Return ``command`` run under py-spy, sampling ``seconds`` into raw collapsed stacks.

    py-spy cannot attach to a running process here (it fails to read the interpreter
    version), so it starts the process itself; stop it with ``stop_group``.
    """
    spy = py_spy()
    if spy is None:
        raise FileNotFoundError("py-spy is not installed: .venv/bin/pip install py-spy")
    return [spy, "record", "--rate", "200", "--format", "raw", "--output", output,
            "--duration", str(round(seconds)), "--", *command]  # fmt: skip


def stop_group(spawned: Spawned, timeout: float = 20.0) -> None:
    """Interrupt a process group (py-spy and its target) so py-spy writes its output.

    The group outlives py-spy when it stops sampling first, so signal the group, not the pid.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(spawned.pid, signal.SIGINT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        spawned.proc.poll()
        try:
            os.killpg(spawned.pid, 0)
        except ProcessLookupError:
            break  # every member has exited
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(spawned.pid, signal.SIGKILL)
    spawned.proc.wait()


def top_frames(
    raw_path: str, count: int = 12, within: str | None = None
) -> list[tuple[str, float, float]]:
    """Return the hottest frames of a py-spy raw profile: (frame, self %, total %).

    Ranked by own time; with ``within`` (e.g. ``"pimon/"``), only frames of that code,
    ranked by total time, which shows what each of our functions costs with its callees.
    """
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    with open(raw_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            stack, _, number = line.rstrip("\n").rpartition(" ")
            if not stack or not number.isdigit():
                continue
            n = int(number)
            samples += n
            frames = stack.split(";")
            own[frames[-1]] = own.get(frames[-1], 0) + n
            for frame in set(frames):
                total[frame] = total.get(frame, 0) + n
    if not samples:
        return []
    if within is None:
        hottest = sorted(own, key=lambda k: own[k], reverse=True)[:count]
    else:
        ours = [k for k in total if within in k and "__main__" not in k]
        hottest = sorted(ours, key=lambda k: total[k], reverse=True)[:count]
    return [(k, 100 * own.get(k, 0) / samples, 100 * total[k] / samples) for k in hottest]


def profile_tables(raw_path: str, what: str) -> list[str]:
    """Return markdown tables of a py-spy profile: hottest frames, then our functions."""
    if not os.path.exists(raw_path):
        return []
    tables = []
    for title, frames in (
        (f"hottest frames by own time ({what})", top_frames(raw_path)),
        (f"pimon functions by total time ({what})", top_frames(raw_path, within="pimon/")),
    ):
        if frames:
            lines = [f"| {title} | own % | total % |", "|---|---|---|"]
            lines += [f"| `{name}` | {own:.1f} | {total:.1f} |" for name, own, total in frames]
            tables.append("\n".join(lines))
    return tables
