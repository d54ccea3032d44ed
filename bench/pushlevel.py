"""One level of the push benchmark: a monitor, a load generator, and what the window showed.

The load generator (bench/pushload.py) runs as a separate, bounded process on
one core; the monitor is pinned to the other. A level passes when, over the
measured window, no node turns suspect or down (transitions dated inside the
window: once the generator stops, silence rightly convicts every node), the
monitor's own event-loop lag p99 stays under 100 ms, it lost (almost) nothing
and the generator kept its schedule.
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import json
import math
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from bench import (
    CLOCK_TICKS,
    LOAD_CPU,
    SERVER_CPU,
    Spawned,
    cpu_seconds,
    http_get,
    profile_tables,
    profiled,
    python_module,
    quantile,
    rss_bytes,
    start_pimon,
    stop_group,
    wait_log,
)
from bench.pushload import LEAD_S, heartbeat_body

LAG_GOAL_S = 0.1
# A transition line of the monitor's log, with its time (logging's asctime, local time).
MISTAKE_RE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*?: \w+ -> (?:suspect|down) ", re.M
)
LAG_P99_RE = re.compile(r"^pimon_monitor_event_loop_lag_p99_seconds(?:\{[^}]*\})? (\S+)$", re.M)
RECEIVED_RE = re.compile(r"^pimon_monitor_heartbeats_received_total(?:\{[^}]*\})? (\S+)$", re.M)
# The monitor runs under this prelude, which logs every garbage collection pause of 10 ms or
# more (a full collection over many connections stalls the loop); a None entry for uvloop
# makes its import fail, to run the monitor as if uvloop were not installed.
MONITOR_PRELUDE = """\
import gc, runpy, sys, time
{hide_uvloop}
began = [0.0]
def watch(phase, info):
    if phase == "start":
        began[0] = time.perf_counter()
    elif (took := time.perf_counter() - began[0]) >= 0.01:
        print(f"gc pause {{info['generation']}} {{took:.4f}} {{time.time():.3f}}", file=sys.stderr)
gc.callbacks.append(watch)
runpy.run_module("pimon", run_name="__main__", alter_sys=True)
"""
GC_PAUSE_RE = re.compile(r"^gc pause (\d) (\S+) (\S+)$", re.M)


@dataclass(frozen=True, slots=True)
class Transport:
    """How the nodes push and which event loop the monitor runs."""

    name: str
    udp: bool = False
    uvloop: bool = True  # used when installed
    connections: int = 0  # HTTP: 0 is one per node, as agents do; else nodes share these

    def command(self) -> list[str]:
        """Return the command line that starts pimon (without its arguments)."""
        hide = "" if self.uvloop else "sys.modules['uvloop'] = None"
        return [sys.executable, "-c", MONITOR_PRELUDE.format(hide_uvloop=hide)]


HTTP = Transport("HTTP")
UDP = Transport("UDP", udp=True)
HTTP_ASYNCIO = Transport("HTTP, asyncio loop", uvloop=False)
HTTP_SHARED = Transport("HTTP, 256 shared connections", connections=256)


@dataclass(slots=True)
class Level:
    """What one N produced on one transport."""

    transport: str
    nodes: int
    passed: bool
    mistakes: int
    lag_p99_s: float | None
    probe_p99_s: float
    cpu_share: float
    rss_mb: float
    taken_share: float  # heartbeats the monitor took over the whole run, warm-up included
    lost_share: float  # of those sent in the window: refused (HTTP) or dropped unread (UDP)
    generator_late_s: float
    generator_cpu_share: float
    others_share: float  # the monitor's core busy with other processes (shared machine)
    gc_share: float  # of the window spent in garbage collection pauses of 10 ms or more
    gc_max_s: float
    why: str
    rate: float  # heartbeats per second in the window
    loop: str = "?"  # the monitor's event loop: uvloop or asyncio

    @property
    def cpu_ms_per_heartbeat(self) -> float:
        """Return the monitor's CPU milliseconds per heartbeat in the window."""
        return self.cpu_share * 1000 / self.rate if self.rate > 0 else math.nan

    @property
    def ceiling(self) -> float:
        """Return the N whose heartbeats would take one whole core at this cost."""
        return 1000 / self.cpu_ms_per_heartbeat if self.rate > 0 else math.nan


def push_supported(workdir: str) -> str | None:
    """Return None when the monitor accepts pushed heartbeats, else why not."""
    token_file = write_token(workdir)
    args = ["monitor", "--listen", "127.0.0.1:0", "--token-file", token_file]
    args += ["--db", os.path.join(workdir, "probe.db")]
    monitor, address = start_pimon(args, os.path.join(workdir, "probe.log"))
    try:
        host, port = address.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        body = heartbeat_body("probe", str(uuid.uuid4()), "b", 1, time.time())
        conn.request("POST", "/v1/heartbeat", body, {"Authorization": "Bearer bench-token"})
        status = conn.getresponse().status
        conn.close()
    finally:
        monitor.stop()
    if status == 202:
        return None
    return f"the monitor answers POST /v1/heartbeat with HTTP {status}, not 202: push is not there"


def write_token(workdir: str) -> str:
    """Write the bench's cluster token to a private file; return its path."""
    path = os.path.join(workdir, "token")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write("bench-token\n")
    return path


def monitor_figures(url: str) -> tuple[float | None, int | None]:
    """Return the monitor's loop-lag p99 (last minute) and heartbeats taken, from /metrics."""
    try:
        status, body = http_get(f"{url}/metrics", timeout=30)
    except OSError:
        return None, None
    if status != 200:
        return None, None
    text = body.decode("utf-8", "replace")
    lag, received = LAG_P99_RE.search(text), RECEIVED_RE.search(text)
    return (
        float(lag.group(1)) if lag else None,
        int(float(received.group(1))) if received else None,
    )


def udp_drops(port: int) -> int | None:
    """Return the datagrams the kernel dropped on the UDP socket bound to ``port`` (full buffer)."""
    total, found = 0, False
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError), open(table, encoding="ascii") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if len(fields) >= 13 and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    total, found = total + int(fields[-1]), True
    return total if found else None


def core_busy_seconds(cpu: int) -> float:
    """Return the seconds ``cpu`` spent busy (anything but idle and iowait) since boot."""
    with open("/proc/stat", encoding="ascii") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                ticks = [int(x) for x in line.split()[1:9]]
                return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS
    return math.nan


def mistakes_between(log_text: str, start: float, end: float) -> int:
    """Count transitions to suspect or down logged between two wall-clock times."""
    count = 0
    for stamp in MISTAKE_RE.findall(log_text):
        at = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if start <= at <= end:
            count += 1
    return count


@dataclass(slots=True)
class Observation:
    """What the bench saw while the generator pushed."""

    cpu_s: float = 0.0
    wall_s: float = 0.0
    sent_s: float = 0.0  # the window by the generator's clock, from progress line to its end
    rss: int = 0
    counted: int = 0  # heartbeats answered 202 (HTTP) or sent (UDP) in the window
    generator_cpu_share: float = float("nan")
    probes: list[float] = field(default_factory=list)
    lag_p99_s: float | None = None  # the monitor's own p99 over its last minute
    received: int | None = None  # heartbeats the monitor took over the whole run
    mistakes: int = 0  # transitions to suspect or down dated inside the window
    lost: int = 0  # datagrams dropped unread in the window (UDP)
    others_s: float = 0.0  # CPU seconds other processes took on the monitor's core
    gc_pauses: list[float] = field(default_factory=list)  # seconds, ≥ 10 ms, in the window
    loop: str = "?"


def start_monitor(
    transport: Transport, args: list[str], log_path: str, profile_path: str, profile_s: float
) -> tuple[Spawned, str]:
    """Start the monitor pinned to its core, under py-spy when ``profile_s`` is set."""
    if not profile_s:
        return start_pimon(args, log_path, SERVER_CPU, transport.command())
    command = profiled([*transport.command(), *args], profile_path, profile_s)
    spy = Spawned(command, log_path, SERVER_CPU)
    text = wait_log(spy, "listening on http://", 60)
    match = re.search(r"listening on http://(\S+)", text)
    assert match is not None
    return spy, match.group(1)


def wait_progress(generator: Spawned, timeout: float) -> tuple[int, float]:
    """Wait for the generator's next progress line; return its count and time."""
    before = generator.log_text().count("\nprogress ")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and generator.proc.poll() is None:
        text = generator.log_text()
        if text.count("\nprogress ") > before:
            return progress(text)
        time.sleep(0.01)
    return progress(generator.log_text())


def observe(
    url: str,
    monitor: Spawned,
    generator: Spawned,
    *,
    warm_s: float,
    measure_s: float,
    udp: bool = False,
) -> Observation:
    """Wait out the warm-up, then sample the monitor until the generator ends."""
    port = urlsplit(url).port or 0
    wait_log(generator, "generating", 30)
    time.sleep(max(0.0, warm_s + LEAD_S - 1.0))
    seen = Observation()
    # Start the window at a progress line, so the counts cover the window and no more.
    counted0, sent0 = wait_progress(generator, 2.0)
    drops0 = udp_drops(port) if udp else None
    pid = monitor_pid(monitor)
    cpu0, gen0, core0 = cpu_seconds(pid), cpu_seconds(generator.pid), core_busy_seconds(SERVER_CPU)
    t0, wall0 = time.perf_counter(), time.time()
    gen1, t_gen = gen0, t0
    probe = Prober(url)
    # A generator that fell behind would run on; its lateness is in its tally.
    while (
        "\ndone\n" not in generator.log_text()
        and generator.proc.poll() is None
        and time.perf_counter() - t0 < measure_s + 5
    ):
        with contextlib.suppress(OSError):  # it may end between the check and the read
            gen1, t_gen = cpu_seconds(generator.pid), time.perf_counter()
        seen.probes.append(probe())
        time.sleep(0.2)
    probe.close()
    seen.wall_s = time.perf_counter() - t0
    seen.cpu_s, seen.rss = cpu_seconds(pid) - cpu0, rss_bytes(pid)
    seen.others_s = core_busy_seconds(SERVER_CPU) - core0 - seen.cpu_s
    # Nodes on schedule fall silent at the schedule's end even while late ones push on.
    wall1 = min(time.time(), schedule_end(generator.log_text()) + 1.0)
    drops1 = udp_drops(port) if udp else None
    if drops0 is not None and drops1 is not None:
        seen.lost = drops1 - drops0
    generator.stop()
    counted1, sent1 = progress(generator.log_text())
    seen.counted, seen.sent_s = counted1 - counted0, sent1 - sent0
    seen.generator_cpu_share = (gen1 - gen0) / max(t_gen - t0, 1e-9)
    # Only now read /metrics (it costs ~0.5 s of CPU at 10,000 nodes): its p99 spans the
    # last minute, which is the window; its counter, the whole run.
    seen.lag_p99_s, seen.received = monitor_figures(url)
    log_text = monitor.log_text()
    seen.mistakes = mistakes_between(log_text, wall0, wall1)
    seen.gc_pauses = [
        float(took) for _, took, at in GC_PAUSE_RE.findall(log_text) if wall0 <= float(at) <= wall1
    ]
    seen.loop = "uvloop" if "using uvloop" in log_text else "asyncio"
    return seen


def judge(nodes: int, seen: Observation, tally: dict[str, float], scheduled: float) -> Level:
    """Decide whether the monitor sustained the level, and say why not."""
    late = float(tally.get("late_p99_s", 0.0))
    probe_p99 = quantile(seen.probes, 0.99)
    lag_seen = seen.lag_p99_s if seen.lag_p99_s is not None else probe_p99
    taken = seen.received if seen.received is not None else tally.get("accepted", 0)
    taken_share = taken / scheduled
    # HTTP: answers other than 202 and pushes skipped while a node still waited for an answer,
    # over the run; UDP: datagrams dropped unread in the window.
    missed = tally.get("failed", 0) + tally.get("skipped", 0)
    lost_share = missed / scheduled + seen.lost / max(seen.counted, 1)
    why = []
    if seen.mistakes:
        why.append(f"{seen.mistakes} false suspects")
    if lag_seen >= LAG_GOAL_S:
        why.append(f"loop lag p99 {lag_seen * 1000:.0f} ms")
    span = seen.sent_s or seen.wall_s
    in_window = seen.counted / max(span * nodes, 1e-9)
    if lost_share > 0.001:
        why.append(f"{lost_share:.1%} lost")
    if in_window < 0.95:
        why.append(f"only {in_window:.1%} of the schedule sent")
    if late > 1.0:
        why.append(f"generator {late:.1f} s behind schedule (p99)")
    return Level(
        transport="",
        nodes=nodes,
        passed=not why,
        mistakes=seen.mistakes,
        lag_p99_s=seen.lag_p99_s,
        probe_p99_s=probe_p99,
        cpu_share=seen.cpu_s / max(seen.wall_s, 1e-9),
        rss_mb=seen.rss / 1e6,
        taken_share=taken_share,
        lost_share=lost_share,
        generator_late_s=late,
        generator_cpu_share=seen.generator_cpu_share,
        others_share=max(0.0, seen.others_s / max(seen.wall_s, 1e-9)),
        gc_share=sum(seen.gc_pauses) / max(seen.wall_s, 1e-9),
        gc_max_s=max(seen.gc_pauses, default=0.0),
        why="; ".join(why) or "ok",
        rate=seen.counted / max(span, 1e-9),
        loop=seen.loop,
    )


def run_level(
    transport: Transport,
    nodes: int,
    workdir: str,
    warm_s: float,
    measure_s: float,
    *,
    profile: bool = False,
) -> tuple[Level, list[str]]:
    """Run the monitor against ``nodes`` pushing nodes; return the level and profile tables."""
    # py-spy samples until the monitor stops, so the profile covers the whole load.
    profile_s = warm_s + measure_s + 60 if profile else 0.0
    token_file = write_token(workdir)
    slug = re.sub(r"\W+", "-", transport.name.lower())
    tag = f"{slug}-{nodes}{'-profiled' if profile_s else ''}"
    args = ["monitor", "--listen", "127.0.0.1:0", "--token-file", token_file]
    args += ["--db", os.path.join(workdir, f"push-{tag}.db"), "--max-nodes", str(nodes + 10)]
    args += ["--udp"] if transport.udp else []
    profile_path = os.path.join(workdir, f"profile-{tag}.txt")
    monitor_log = os.path.join(workdir, f"monitor-{tag}.log")
    monitor, address = start_monitor(transport, args, monitor_log, profile_path, profile_s)
    url = f"http://{address}"
    target = f"udp://{address}" if transport.udp else url
    duration = warm_s + measure_s
    gen_args = ["--url", target, "--token-file", token_file, "--nodes", str(nodes)]
    gen_args += ["--duration", str(duration), "--connections", str(transport.connections)]
    gen_log = os.path.join(workdir, f"gen-{tag}.log")
    try:
        generator = Spawned(python_module("bench.pushload", *gen_args), gen_log, LOAD_CPU)
        try:
            seen = observe(
                url, monitor, generator, warm_s=warm_s, measure_s=measure_s, udp=transport.udp
            )
        finally:
            generator.stop()
    finally:
        if profile_s:
            stop_group(monitor)
        else:
            monitor.stop()
    level = judge(nodes, seen, parse_tally(generator.log_text()), nodes * math.ceil(duration))
    level.transport = transport.name
    what = f"py-spy, monitor taking {nodes:,} nodes over {transport.name}"
    return level, profile_tables(profile_path, what) if profile_s else []


def monitor_pid(spawned: Spawned) -> int:
    """Return the pid of the monitor itself, also when py-spy started it."""
    if "py-spy" not in os.path.basename(spawned.args[0]):
        return spawned.pid
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat", encoding="ascii") as f:
                stat = f.read()
                if int(stat[stat.rindex(")") + 2 :].split()[1]) == spawned.pid:
                    return int(entry)
    return spawned.pid


class Prober:
    """Time GET /healthz on one keep-alive connection: event-loop lag plus a tiny request."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.conn: http.client.HTTPConnection | None = None

    def __call__(self) -> float:
        """Return the seconds one probe took (5 s when it failed)."""
        start = time.perf_counter()
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
            self.conn.request("GET", "/healthz")
            self.conn.getresponse().read()
        except (OSError, http.client.HTTPException):
            self.close()
            return 5.0
        return time.perf_counter() - start

    def close(self) -> None:
        """Close the connection."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def progress(log_text: str) -> tuple[int, float]:
    """Return the generator's latest count and its time, from its progress lines."""
    at = log_text.rfind("\nprogress ")
    line = log_text[at + 1 :].split("\n", 1)[0].split() if at >= 0 else []
    if len(line) != 3 or not line[1].isdigit():
        return 0, 0.0
    return int(line[1]), float(line[2])


def schedule_end(log_text: str) -> float:
    """Return when the generator's schedule ends (wall clock), from its "ends" line."""
    at = log_text.find("\nends ")
    line = log_text[at + 1 :].split("\n", 1)[0].split() if at >= 0 else []
    return float(line[1]) if len(line) == 2 else math.inf


def parse_tally(log_text: str) -> dict[str, float]:
    """Return the generator's tally line as a dict (empty when it printed none)."""
    for line in reversed(log_text.splitlines()):
        if line.startswith("tally "):
            data: dict[str, float] = json.loads(line[6:])
            return data
    return {}
