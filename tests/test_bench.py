"""Smoke tests: every benchmark runs at a tiny size and yields sane figures (no timing asserts)."""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import shutil
import socket
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from bench import (
    Result,
    Row,
    cli_latency,
    cpu_seconds,
    detector_sim,
    fmt,
    footprint,
    free_port,
    pull,
    push,
    pushlevel,
    pushload,
    quantile,
    rss_bytes,
    top_frames,
)
from bench import __main__ as bench_main
from bench.simulator import Simulator
from pimon.detector import DetectorConfig, phi_of
from pimon.poller import decode
from pimon.wire import open_datagram

# ------------------------------------------------------------------ shared helpers


def test_proc_figures_of_this_process_are_plausible() -> None:
    assert cpu_seconds(os.getpid()) > 0
    assert 1_000_000 < rss_bytes(os.getpid()) < 10_000_000_000


def test_quantile_and_fmt() -> None:
    assert quantile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert quantile([1.0, 2.0, 3.0, 4.0, 100.0], 0.99) == 100.0
    assert math.isnan(quantile([], 0.5))
    assert fmt(None) == "-" and fmt(math.nan) == "-"
    assert fmt(0.04712) == "0.0471" and fmt(21300.4) == "21,300"


def test_top_frames_ranks_own_time(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    raw.write_text(
        "main (a.py:1);hot (a.py:9) 30\nmain (a.py:1);cold (a.py:5) 10\nmain (a.py:1) 10\n"
    )
    frames = top_frames(str(raw))
    assert frames[0] == ("hot (a.py:9)", 60.0, 60.0)
    assert ("main (a.py:1)", 20.0, 100.0) in frames


# ------------------------------------------------------------------ simulator


async def test_simulator_serves_valid_heartbeats_and_metrics() -> None:
    sim = Simulator(3, prefix="t")
    await sim.start()
    try:
        port = sim.nodes[1].port
        async with aiohttp.ClientSession() as session:
            seqs = []
            for _ in range(2):
                async with session.get(f"http://127.0.0.1:{port}/v1/heartbeat") as resp:
                    assert resp.status == 200
                    hb = decode(await resp.read())
                    seqs.append(hb.seq)
            async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                text = await resp.text()
        assert hb.name == "t-00002" and hb.metrics.mem_total_bytes
        assert seqs[1] == seqs[0] + 1
        assert 'pimon_agent_info{name="t-00002"' in text
        assert sim.counts.by_path == {"heartbeat": 2, "metrics": 1}
        assert sim.node_lines()[1] == f"t-00002=127.0.0.1:{port}"
    finally:
        await sim.close()


# ------------------------------------------------------------------ detector simulation


def test_crossing_z_is_where_phi_of_reaches_the_threshold() -> None:
    z = detector_sim.crossing_z(8.0)
    assert phi_of(z + 1e-6, 0.0, 1.0) >= 8.0 > phi_of(z - 1e-3, 0.0, 1.0)


def test_fixed_timeout_convicts_after_the_given_misses() -> None:
    arrivals: list[float | None] = [0.01, 1.01, None, None, None, 5.01, 6.01]
    stream = detector_sim.Stream(arrival=arrivals, loss_now=[0.0] * 7, end=7.0)
    assert detector_sim.run_fixed(stream, 1).changes == [(2.8, "down"), (5.01, "up")]
    assert detector_sim.run_fixed(stream, 3).changes == [(4.8, "down"), (5.01, "up")]
    assert detector_sim.run_fixed(stream, 4).changes == []


def test_detection_times_count_crashes_already_down_as_instant() -> None:
    changes = [(5.0, "down"), (70.0, "up"), (106.0, "down"), (170.0, "up")]
    episodes = detector_sim.Episodes(changes)
    times, censored = detector_sim.detection_times(episodes, [6.0, 100.0, 300.0])
    assert times == [0.0, 6.0] and censored == 1


def test_detector_simulation_yields_sane_figures() -> None:
    net = detector_sim.Network("test", loss=0.01)
    figures = detector_sim.evaluate(net, 0.05, 20, seed=3, configs={"phi": DetectorConfig()})
    phi = figures["phi"]
    # Defaults: down after about 1 + 5 intervals + 5.2 std of silence, minus the part of the
    # interval already gone at the crash.
    assert 4.0 < phi.td_mean < 9.0 and phi.td_p99 >= phi.td_mean
    assert phi.downs_per_day == 0 and phi.td_censored == 0
    fixed = figures["fixed timeout, 1 miss"]
    assert 0.8 <= fixed.td_mean <= 2.0
    memberlist = figures["memberlist LAN (N=10)"]
    assert 5.0 <= memberlist.td_mean <= 6.1


def test_detector_run_renders_tables() -> None:
    result = detector_sim.run(quick=True, days=0.02, crashes=10)
    assert not result.skipped
    assert len(result.tables) == 1 and result.tables[0].count("\n") > 20
    assert {r.metric for r in result.rows} >= {"down T_D p99 at 5 % loss"}
    assert f"| 5 % random loss | {detector_sim.EARLIER} |" in result.tables[0]
    assert "down_pause 3, not the earlier 5" in result.notes[0]


# ------------------------------------------------------------------ push: generator and judge


async def test_generator_pushes_every_node_every_second_with_its_token(tmp_path: Path) -> None:
    seen: dict[str, list[int]] = {}

    async def heartbeat(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer secret"
        hb = decode(await request.read())
        seen.setdefault(hb.name, []).append(hb.seq)
        return web.json_response({"accepted": True}, status=202)

    app = web.Application()
    app.router.add_post("/v1/heartbeat", heartbeat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        tally = await pushload.HttpGenerator(f"http://127.0.0.1:{port}", "secret", 2.0).run(5, 2)
    finally:
        await runner.cleanup()
    assert tally.sent == tally.accepted == 10 and tally.failed == 0
    assert sorted(seen) == [f"push-{i:05d}" for i in range(5)]
    assert all(seqs == [1, 2] for seqs in seen.values())


async def test_datagram_generator_sends_sealed_heartbeats_on_schedule() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        port = receiver.getsockname()[1]
        generator = pushload.DatagramGenerator(f"udp://127.0.0.1:{port}", "secret", 2.0)
        tally = await generator.run(5)
        receiver.setblocking(False)
        datagrams = []
        with contextlib.suppress(BlockingIOError):
            for _ in range(100):
                datagrams.append(receiver.recv(65536))
    assert tally.sent == 10 and tally.failed == 0 and len(datagrams) == 10
    assert all(open_datagram("other", d) is None for d in datagrams)
    seen: dict[str, list[int]] = {}
    for datagram in datagrams:
        body = open_datagram("secret", datagram)
        assert body is not None
        hb = decode(body)
        seen.setdefault(hb.name, []).append(hb.seq)
    assert seen == {f"push-{i:05d}": [1, 2] for i in range(5)}
    assert max(tally.lates) < 0.5


def test_judge_names_every_reason_a_level_fails() -> None:
    seen = pushlevel.Observation(cpu_s=1.0, wall_s=2.0, counted=100, probes=[0.01] * 50 + [0.3])
    seen.mistakes, seen.lag_p99_s = 1, 0.25
    tally = {"accepted": 50, "failed": 50, "late_p99_s": 2.0}
    level = pushlevel.judge(100, seen, tally, scheduled=100)
    assert not level.passed
    assert "1 false suspects" in level.why and "loop lag p99 250 ms" in level.why
    assert "50.0% lost" in level.why and "only 50.0% of the schedule sent" in level.why
    assert "behind schedule" in level.why
    # Without the monitor's own lag figure, the /healthz probes stand in for it.
    seen = pushlevel.Observation(cpu_s=0.5, wall_s=1, counted=100, probes=[0.01, 0.2], received=100)
    assert pushlevel.judge(100, seen, {}, 100).why == "loop lag p99 200 ms"
    # Datagrams dropped unread in the window count against the window's sends.
    seen = pushlevel.Observation(cpu_s=0.5, wall_s=1, counted=100, probes=[0.01], lost=5)
    assert pushlevel.judge(100, seen, {}, 100).why == "5.0% lost"
    seen = pushlevel.Observation(cpu_s=0.5, wall_s=1, counted=100, probes=[0.01], lag_p99_s=0.005)
    ok = pushlevel.judge(100, seen, {"accepted": 100}, 100)
    assert ok.passed and ok.why == "ok"
    assert ok.rate == 100 and ok.cpu_ms_per_heartbeat == 5.0 and ok.ceiling == 200


def test_udp_drops_reads_the_socket_of_a_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        assert pushlevel.udp_drops(sock.getsockname()[1]) == 0


def test_mistakes_count_only_transitions_inside_the_window() -> None:
    def stamp(at: float) -> str:
        return datetime.datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]

    start = 1_800_000_000.0
    log = "".join(
        f"{stamp(start + dt)} INFO pimon.monitor: push-00001: {old} -> {new} (silence)\n"
        for dt, old, new in (
            (-5, "up", "suspect"),  # warm-up
            (10, "up", "suspect"),
            (11, "suspect", "down"),
            (12, "down", "up"),
            (64, "up", "suspect"),  # the generator has stopped
        )
    )
    log += f"{stamp(start + 20)} INFO pimon.monitor: push-00002: registered by its first push\n"
    assert pushlevel.mistakes_between(log, start, start + 60) == 2


def test_generator_lines_give_the_window() -> None:
    log = "generating\nends 1800000061.500\nprogress 0 1800000000.2\nprogress 900 1800000001.25\n"
    assert pushlevel.schedule_end(log) == 1800000061.5
    assert pushlevel.progress(log) == (900, 1800000001.25)
    assert pushlevel.schedule_end("generating\n") == math.inf


def level(transport: str, nodes: int, passed: bool, cpu_share: float) -> pushlevel.Level:
    return pushlevel.Level(
        transport=transport,
        nodes=nodes,
        passed=passed,
        mistakes=0,
        lag_p99_s=0.01,
        probe_p99_s=0.01,
        cpu_share=cpu_share,
        rss_mb=50.0,
        taken_share=1.0,
        lost_share=0.0,
        generator_late_s=0.0,
        generator_cpu_share=0.2,
        others_share=0.0,
        gc_share=0.0,
        gc_max_s=0.0,
        why="ok" if passed else "loop lag p99 150 ms",
        rate=float(nodes),
        loop="uvloop",
    )


def test_report_decides_from_the_figures() -> None:
    result = Result("push", "Push capacity", "-")
    levels = [
        level("HTTP", 5000, False, 0.8),
        level("HTTP", 2500, True, 0.5),
        level("UDP", 10000, True, 0.5),
        level("HTTP, 256 shared connections", 5000, True, 0.6),
        level("HTTP, asyncio loop", 5000, False, 1.0),
    ]
    levels[0].gc_share, levels[0].gc_max_s = 0.15, 0.25
    push.report(result, levels, push.QUICK)
    rows = {r.metric: r for r in result.rows}
    assert rows["largest N sustained over UDP (1 s, one core)"].met is True
    http = rows["largest N sustained over HTTP (1 s, one core)"]
    assert http.pimon == 2500 and http.met is False
    assert rows["monitor CPU per heartbeat, UDP vs HTTP"].ratio == 0.25
    plain = rows["HTTP, asyncio loop: 5,000 nodes sustained"]
    assert plain.pimon == 0 and plain.met is False and plain.goal.startswith("≥ 5,000")
    shared = rows["HTTP, 256 shared connections: 5,000 nodes sustained"]
    assert shared.pimon == 5000 and shared.met is None
    uvloop = rows["HTTP, asyncio loop: CPU per heartbeat at N=5,000, vs HTTP"]
    assert uvloop.ratio == pytest.approx(1.25)
    decision = result.tables[0]
    assert "HTTP alone misses issue 3's 5,000-node target (loop lag p99 150 ms)" in decision
    assert "15% of the window in garbage-collection pauses of up to 250 ms" in decision
    assert (
        "sharing 256 connections HTTP sustains 5,000 nodes, at 0.12 ms per heartbeat "
        "(0.75x HTTP's at that N)" in decision
    )
    assert "HTTP does not sustain 5,000 nodes (loop lag p99 150 ms), at 0.2 ms" in decision
    assert "(meeting issue 8's 10,000)" in decision and "4x cheaper" in decision
    assert "| UDP | uvloop | 10,000 | ok |" in result.tables[1]


@pytest.mark.slow
@pytest.mark.parametrize("transport", [pushlevel.HTTP, pushlevel.UDP], ids=["http", "udp"])
def test_push_level_against_a_real_monitor(tmp_path: Path, transport: pushlevel.Transport) -> None:
    if pushlevel.push_supported(str(tmp_path)) is not None:
        pytest.skip("the monitor does not take pushed heartbeats yet")
    found, frames = pushlevel.run_level(transport, 20, str(tmp_path), warm_s=1.0, measure_s=2.0)
    assert found.transport == transport.name
    assert found.mistakes == 0 and found.taken_share > 0.9 and found.rate > 0
    assert found.lag_p99_s is not None and found.rss_mb > 10 and frames == []


# ------------------------------------------------------------------ real processes


@pytest.mark.slow
def test_footprint_measures_the_agent(tmp_path: Path) -> None:
    port = free_port()
    command = footprint.agent_command(port, str(tmp_path))
    paths = ["/v1/heartbeat", "/metrics"]
    samples = footprint.one_run(command, port, paths, 30, str(tmp_path / "agent.log"))
    heartbeat, metrics = samples
    assert heartbeat.startup_s > 0 and heartbeat.cpu_ms_per_request >= 0
    assert 5 < metrics.rss_mb < 500
    assert 200 < heartbeat.body_bytes < metrics.body_bytes


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("prometheus-node-exporter") is None, reason="no node_exporter")
def test_footprint_run_compares_with_node_exporter() -> None:
    result = footprint.run(quick=True, runs=1, count=20)
    assert result.skipped is None
    rss = result.rows[0]
    assert rss.pimon and rss.anchor and rss.ratio and rss.unit == "MB"


@pytest.mark.slow
def test_pull_measures_the_monitor_on_a_small_fleet(tmp_path: Path) -> None:
    fleet = pull.Fleet(5, str(tmp_path), lifetime_s=60)
    try:
        ours = pull.measure_pimon(fleet, str(tmp_path), warm_s=15.0, measure_s=1.0)
        if shutil.which("prometheus"):
            theirs = pull.measure_prometheus(fleet, str(tmp_path), "prometheus", 15.0, 1.0)
            assert theirs.cpu_per_1000 >= 0 and theirs.rss_mb > 5
    finally:
        fleet.stop()
    assert ours.mistakes == 0, ours.detail
    assert ours.checks_per_s > 0 and ours.rss_mb > 10


@pytest.mark.slow
def test_cli_latency_times_status(tmp_path: Path) -> None:
    result = cli_latency.run(nodes=5, runs=1)
    status = result.rows[0]
    assert status.pimon and status.pimon > 0 and status.anchor and status.anchor > 0
    assert "pimon" in result.tables[0]


def test_import_offenders_lists_top_level_imports() -> None:
    offenders = cli_latency.import_offenders([sys.executable, "-c", "import json"])
    assert "json" in [name for name, _, _ in offenders]


# ------------------------------------------------------------------ the runner and the doc


def test_doc_keeps_results_between_partial_runs(tmp_path: Path) -> None:
    result = Result("cli", "CLI latency", "python -c pass", measured="now by `x`")
    result.rows.append(Row("pimon status", 120.0, 40.0, "ms", "≤ 300 ms", True))
    result.tables.append("| a | b |\n|---|---|\n| 1 | 2 |")
    result.notes.append("a note")
    doc = tmp_path / "performance.md"
    doc.write_text(bench_main.render([result], "python -m bench", "today"))
    text = doc.read_text()
    assert "| CLI latency | pimon status | 120 ms | 40 ms | 3 | ≤ 300 ms | yes |" in text
    assert "CPUs (nproc)" in text and "a note" in text
    kept = bench_main.kept_results(str(doc))
    assert kept["cli"].rows == result.rows and kept["cli"].measured == "now by `x`"


def test_store_benchmark_is_folded_in() -> None:
    result = bench_main.run_store(quick=True)
    assert result.rows and all(isinstance(r.pimon, float) for r in result.rows)
    assert any("raw" in r.metric for r in result.rows)


def test_a_failing_benchmark_becomes_a_skipped_result(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(quick: bool) -> Result:
        raise RuntimeError("boom")

    monkeypatch.setattr(bench_main, "benchmarks", lambda: {"cli": broken})
    result = bench_main.run_one("cli", quick=True)
    assert result.skipped == "failed: RuntimeError: boom"
