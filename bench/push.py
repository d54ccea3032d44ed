"""Push capacity: the largest N of 1 s pushing nodes one monitor core sustains.

A separate, bounded load-generator process (``python -m bench.push generate``)
simulates N nodes, each POSTing a wire-v1 heartbeat every second, spread evenly
over the second, on keep-alive connections. The monitor is pinned to one core,
the generator to the other. A level passes when, over the measured window, no
node turns suspect or down, the monitor's event-loop lag p99 stays under 100 ms
and the generator kept its schedule. The search starts at the goal, climbs
while levels pass and bisects once one fails.

The generator speaks HTTP/1.1 on asyncio streams rather than through the
aiohttp client: the client costs several times more CPU per request, so at
10,000 requests/s the generator, not the monitor, would be measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import math
import os
import re
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from bench import (
    LOAD_CPU,
    SERVER_CPU,
    Result,
    Row,
    Spawned,
    cpu_seconds,
    fmt,
    http_get,
    median,
    pimon_command,
    profile_tables,
    profiled,
    py_spy,
    python_module,
    quantile,
    rss_bytes,
    start_pimon,
    stop_group,
    wait_log,
)

MAX_NODES = 50_000
MAX_CONNECTIONS = 512
MAX_DURATION_S = 600.0
LAG_GOAL_S = 0.1
GOAL_NODES = 10_000
MISTAKE_RE = re.compile(r": \w+ -> (suspect|down) ")
CONTENT_LENGTH_RE = re.compile(rb"(?i)content-length: *(\d+)")
LAG_RE = re.compile(r"^pimon_monitor_event_loop_lag_seconds(?:\{[^}]*\})? (\S+)$", re.M)


# ---------------------------------------------------------------- the load generator


def heartbeat_body(name: str, node_id: str, boot: str, seq: int, now: float) -> bytes:
    """Return a wire-v1 heartbeat with most metrics left out, as compact JSON."""
    return (
        f'{{"v":1,"name":"{name}","id":"{node_id}","boot":"{boot}","seq":{seq},'
        f'"sent_at":{now:.3f},"interval":1.0,"ok":true,"problems":[],"leaving":false,'
        f'"metrics":{{"cpu_percent":12.5,"mem_percent":40.1,"load1":0.3}}}}'
    ).encode()


@dataclass(slots=True)
class Tally:
    """What the generator did."""

    sent: int = 0
    accepted: int = 0
    failed: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    lates: list[float] = field(default_factory=list)  # seconds behind schedule, per send


class Generator:
    """Push heartbeats on a schedule over keep-alive connections to one monitor."""

    def __init__(self, url: str, token: str, duration: float) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.head = (
            f"POST /v1/heartbeat HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            "Content-Length: "
        ).encode()
        self.duration = duration
        self.tally = Tally()
        self.start = 0.0

    async def drive(self, nodes: list[tuple[str, str, str, float]]) -> None:
        """Push for ``nodes`` (name, id, boot, offset in the second) over one connection."""
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        tally = self.tally
        try:
            for second in range(math.ceil(self.duration)):
                for name, node_id, boot, offset in nodes:
                    delay = self.start + second + offset - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    tally.lates.append(max(0.0, -delay))
                    body = heartbeat_body(name, node_id, boot, second + 1, time.time())
                    writer.write(self.head + str(len(body)).encode() + b"\r\n\r\n" + body)
                    tally.sent += 1
                    answer = await reader.readuntil(b"\r\n\r\n")
                    status = int(answer[9:12])
                    length = CONTENT_LENGTH_RE.search(answer)
                    if length:
                        await reader.readexactly(int(length.group(1)))
                    tally.statuses[status] = tally.statuses.get(status, 0) + 1
                    if status == 202:
                        tally.accepted += 1
                    else:
                        tally.failed += 1
        finally:
            writer.close()

    async def run(self, count: int, connections: int) -> Tally:
        """Push from ``count`` nodes for the duration; return the tally."""
        # Node i speaks at i/N of every second: the load is even, never a burst at the top.
        nodes = [(f"push-{i:05d}", str(uuid.uuid4()), f"{i:016x}", i / count) for i in range(count)]
        lanes = [nodes[c::connections] for c in range(connections)]
        self.start = asyncio.get_running_loop().time() + 0.5
        results = await asyncio.gather(
            *(self.drive(lane) for lane in lanes if lane), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        self.tally.failed += len(errors)
        if errors:
            print(f"{len(errors)} connections failed, first: {errors[0]!r}", file=sys.stderr)
        return self.tally

    async def run_until_stopped(self, count: int, connections: int) -> Tally:
        """Run like ``run``, printing progress each second; SIGTERM ends it early."""
        task = asyncio.ensure_future(self.run(count, connections))
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        reporter = asyncio.ensure_future(self.report_progress())
        with contextlib.suppress(asyncio.CancelledError):
            await task
        reporter.cancel()
        return self.tally

    async def report_progress(self) -> None:
        """Print the accepted count every second, so the bench can count a window's share."""
        while True:
            print(f"progress {self.tally.accepted}", flush=True)
            await asyncio.sleep(1.0)


def generator_main(argv: list[str]) -> int:
    """Run the load generator and print its tally as one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench.push generate")
    parser.add_argument("--url", required=True)
    parser.add_argument("--token-file", required=True)
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--connections", type=int, default=256)
    args = parser.parse_args(argv)
    host = urlsplit(args.url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the generator only targets loopback")
    count = min(max(args.nodes, 1), MAX_NODES)
    duration = min(max(args.duration, 1.0), MAX_DURATION_S)
    connections = min(max(args.connections, 1), MAX_CONNECTIONS, count)
    with open(args.token_file, encoding="utf-8") as f:
        token = f.read().strip()
    print("generating", flush=True)
    tally = asyncio.run(Generator(args.url, token, duration).run_until_stopped(count, connections))
    figures = {
        "sent": tally.sent,
        "accepted": tally.accepted,
        "failed": tally.failed,
        "late_p99_s": quantile(tally.lates, 0.99),
        "statuses": tally.statuses,
    }
    print("tally " + json.dumps(figures), flush=True)
    return 0


# ---------------------------------------------------------------- the search


@dataclass(slots=True)
class Level:
    """What one N produced."""

    nodes: int
    passed: bool
    mistakes: int
    lag_p99_s: float | None
    probe_p99_s: float
    cpu_share: float
    rss_mb: float
    accepted_share: float
    generator_late_s: float
    generator_cpu_share: float
    why: str
    rate: float  # heartbeats accepted per second in the window

    @property
    def cpu_ms_per_heartbeat(self) -> float:
        """Return the monitor's CPU milliseconds per accepted heartbeat in the window."""
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


def sample_lag(url: str) -> float | None:
    """Return the monitor's event-loop lag from its /metrics, if it exports one."""
    try:
        status, body = http_get(f"{url}/metrics", timeout=5)
    except OSError:
        return None
    if status != 200:
        return None
    values = [float(v) for v in LAG_RE.findall(body.decode("utf-8", "replace"))]
    return max(values) if values else None


@dataclass(slots=True)
class Observation:
    """What the bench saw while the generator pushed."""

    cpu_s: float = 0.0
    wall_s: float = 0.0
    rss: int = 0
    accepted: int = 0  # heartbeats the monitor accepted in the window
    generator_cpu_share: float = float("nan")
    probes: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    log_text: str = ""  # the monitor's log over the measured window


def start_monitor(
    args: list[str], log_path: str, profile_path: str, profile_s: float
) -> tuple[Spawned, str]:
    """Start the monitor pinned to its core, under py-spy when ``profile_s`` is set."""
    if not profile_s:
        return start_pimon(args, log_path, SERVER_CPU)
    spy = Spawned(profiled(pimon_command(*args), profile_path, profile_s), log_path, SERVER_CPU)
    text = wait_log(spy, "listening on http://", 60)
    match = re.search(r"listening on http://(\S+)", text)
    assert match is not None
    return spy, match.group(1)


def observe(
    url: str, monitor: Spawned, generator: Spawned, *, nodes: int, warm_s: float, measure_s: float
) -> Observation:
    """Wait out the warm-up, then sample the monitor until the generator ends."""
    wait_log(generator, "generating", 30)
    time.sleep(warm_s + 0.5)
    seen = Observation()
    pid = monitor_pid(monitor)
    cpu0, gen0, t0 = cpu_seconds(pid), cpu_seconds(generator.pid), time.perf_counter()
    mark = len(monitor.log_text())
    accepted0 = progress(generator.log_text())
    gen1, t_gen = gen0, t0
    probe = Prober(url)
    # A generator that fell behind would run on; its lateness is in its tally.
    while generator.proc.poll() is None and time.perf_counter() - t0 < measure_s + 5:
        with contextlib.suppress(OSError):  # it may end between the check and the read
            gen1, t_gen = cpu_seconds(generator.pid), time.perf_counter()
        seen.probes.append(probe())
        # /metrics grows with N: sample it rarely, and only while it stays small.
        lag = sample_lag(url) if nodes <= 2000 and len(seen.probes) % 5 == 0 else None
        if lag is not None:
            seen.lags.append(lag)
        time.sleep(0.2)
    probe.close()
    seen.accepted = progress(generator.log_text()) - accepted0
    seen.wall_s = time.perf_counter() - t0
    seen.cpu_s, seen.rss = cpu_seconds(pid) - cpu0, rss_bytes(pid)
    # Read now: once the generator has stopped, silence convicts every node.
    seen.log_text = monitor.log_text()[mark:]
    seen.generator_cpu_share = (gen1 - gen0) / max(t_gen - t0, 1e-9)
    return seen


def judge(nodes: int, seen: Observation, tally: dict[str, float], scheduled: float) -> Level:
    """Decide whether the monitor sustained the level, and say why not."""
    mistakes = len(MISTAKE_RE.findall(seen.log_text))
    accepted_share = tally.get("accepted", 0) / scheduled
    late = float(tally.get("late_p99_s", 0.0))
    lag_p99 = quantile(seen.lags, 0.99) if seen.lags else None
    probe_p99 = quantile(seen.probes, 0.99)
    lag_seen = lag_p99 if lag_p99 is not None else probe_p99
    why = []
    if mistakes:
        why.append(f"{mistakes} false suspects")
    if lag_seen >= LAG_GOAL_S:
        why.append(f"loop lag p99 {lag_seen * 1000:.0f} ms")
    in_window = seen.accepted / max(seen.wall_s * nodes, 1e-9)
    if accepted_share < 0.999 or in_window < 0.95:
        why.append(f"only {min(accepted_share, in_window):.1%} accepted")
    if late > 1.0:
        why.append(f"generator {late:.1f} s behind schedule (p99)")
    return Level(
        nodes=nodes,
        passed=not why,
        mistakes=mistakes,
        lag_p99_s=lag_p99,
        probe_p99_s=probe_p99,
        cpu_share=seen.cpu_s / max(seen.wall_s, 1e-9),
        rss_mb=seen.rss / 1e6,
        accepted_share=accepted_share,
        generator_late_s=late,
        generator_cpu_share=seen.generator_cpu_share,
        why="; ".join(why) or "ok",
        rate=seen.accepted / max(seen.wall_s, 1e-9),
    )


def run_level(
    nodes: int, workdir: str, warm_s: float, measure_s: float, profile_s: float = 0.0
) -> tuple[Level, list[str]]:
    """Run the monitor against ``nodes`` pushing nodes; return the level and profile tables."""
    token_file = write_token(workdir)
    tag = f"{nodes}{'-profiled' if profile_s else ''}"
    args = ["monitor", "--listen", "127.0.0.1:0", "--token-file", token_file]
    args += ["--db", os.path.join(workdir, f"push-{tag}.db"), "--max-nodes", str(nodes + 10)]
    profile_path = os.path.join(workdir, f"profile-{tag}.txt")
    monitor, address = start_monitor(
        args, os.path.join(workdir, f"monitor-{tag}.log"), profile_path, profile_s
    )
    url = f"http://{address}"
    gen_args = ["generate", "--url", url, "--token-file", token_file, "--nodes", str(nodes)]
    gen_args += ["--duration", str(warm_s + measure_s)]
    gen_log = os.path.join(workdir, f"gen-{tag}.log")
    try:
        generator = Spawned(python_module("bench.push", *gen_args), gen_log, LOAD_CPU)
        try:
            seen = observe(url, monitor, generator, nodes=nodes, warm_s=warm_s, measure_s=measure_s)
        finally:
            generator.stop()
    finally:
        if profile_s:
            stop_group(monitor)
        else:
            monitor.stop()
    level = judge(nodes, seen, parse_tally(generator.log_text()), nodes * (warm_s + measure_s))
    what = f"py-spy, monitor taking {nodes:,} pushing nodes"
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


def progress(log_text: str) -> int:
    """Return the generator's latest accepted count from its progress lines."""
    at = log_text.rfind("\nprogress ")
    if at < 0:
        return 0
    line = log_text[at + 1 :].split("\n", 1)[0].split()
    return int(line[1]) if len(line) == 2 and line[1].isdigit() else 0


def parse_tally(log_text: str) -> dict[str, float]:
    """Return the generator's tally line as a dict (empty when it printed none)."""
    for line in reversed(log_text.splitlines()):
        if line.startswith("tally "):
            data: dict[str, float] = json.loads(line[6:])
            return data
    return {}


def search(
    start: int, *, warm_s: float, measure_s: float, max_levels: int, workdir: str, budget_s: float
) -> list[Level]:
    """Climb from ``start`` while levels pass, then bisect; stop at the budget."""
    levels: list[Level] = []
    best_pass, first_fail = 0, 0
    nodes = start
    deadline = time.monotonic() + budget_s
    per_level = warm_s + measure_s + 15
    while len(levels) < max_levels and time.monotonic() + per_level < deadline:
        level, _ = run_level(nodes, workdir, warm_s, measure_s)
        levels.append(level)
        print(f"  push N={nodes:,}: {level.why}", flush=True)
        if level.passed:
            best_pass = nodes
            nodes = nodes * 3 // 2 if not first_fail else (nodes + first_fail) // 2
        else:
            first_fail = nodes
            nodes = (best_pass + nodes) // 2 if best_pass else nodes // 2
        if first_fail and first_fail - best_pass <= max(start // 10, 100):
            break
    return levels


def run(quick: bool = False, budget_s: float | None = None) -> Result:
    """Find the largest N of pushing nodes the monitor sustains on one core."""
    result = Result("push", "Push capacity", "goal N ≥ 10,000")
    start, warm_s, measure_s, levels_max = (
        (1000, 3.0, 8.0, 2) if quick else (GOAL_NODES, 10.0, 60.0, 4)
    )
    budget = budget_s or (60.0 if quick else 360.0)
    with tempfile.TemporaryDirectory(prefix="pimon-bench-push-") as workdir:
        reason = push_supported(workdir)
        if reason is not None:
            result.skipped = reason
            return result
        levels = search(
            start,
            warm_s=warm_s,
            measure_s=measure_s,
            max_levels=levels_max,
            workdir=workdir,
            budget_s=budget,
        )
        best = max((lv.nodes for lv in levels if lv.passed), default=0)
        profile: list[str] = []
        if not quick and best < GOAL_NODES and py_spy() is not None:
            _, profile = run_level(GOAL_NODES, workdir, 5.0, 20.0, profile_s=20.0)
    label = "largest N sustained (1 s pushes, one core)"
    result.rows.append(Row(label, best, GOAL_NODES, "nodes", "≥ 10,000", best >= GOAL_NODES))
    if levels:
        cost = median([lv.cpu_ms_per_heartbeat for lv in levels if lv.rate > 0])
        result.rows.append(Row("monitor CPU per pushed heartbeat (median)", cost, None, "ms"))
        result.rows.append(Row("N that would fill one core at that cost", 1000 / cost, None, ""))
    lines = [
        "| N | result | false suspects | loop lag p99 ms (/metrics) | /healthz p99 ms "
        "| monitor CPU (cores) | heartbeats/s | CPU ms / heartbeat | N at one full core | RSS MB "
        "| accepted "
        "| generator late p99 s | generator CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {lv.nodes:,} | {lv.why} | {lv.mistakes} "
        f"| {fmt(lv.lag_p99_s and lv.lag_p99_s * 1000)} | {fmt(lv.probe_p99_s * 1000)} "
        f"| {fmt(lv.cpu_share)} | {fmt(lv.rate)} | {fmt(lv.cpu_ms_per_heartbeat)} "
        f"| {fmt(lv.ceiling)} "
        f"| {fmt(lv.rss_mb)} | {lv.accepted_share:.1%} "
        f"| {fmt(lv.generator_late_s)} | {fmt(lv.generator_cpu_share)} |"
        for lv in levels
    ]
    result.tables.append("\n".join(lines))
    result.tables += profile
    result.notes.append(
        f"Each level: a fresh monitor pinned to CPU {SERVER_CPU}, the generator on CPU "
        f"{LOAD_CPU}, {warm_s:g} s warm-up then {measure_s:g} s measured. Loop lag: the "
        "monitor's own pimon_monitor_event_loop_lag_seconds sampled from /metrics every ~1 s "
        "while N ≤ 2,000 (its /metrics grows with N); above that, GET /healthz on a keep-alive "
        "connection every 0.2 s, whose latency bounds the loop lag from above but also counts "
        "this shared machine's scheduling noise. 'N at one full core' = 1 core / (CPU per "
        "heartbeat): the ceiling on an idle core, less sensitive to other load than the search."
    )
    return result


def main(argv: list[str] | None = None) -> int:
    """Run ``generate`` (the load generator) or the whole search."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["generate"]:
        return generator_main(argv[1:])
    print(json.dumps(run(quick="--quick" in argv).as_json(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
