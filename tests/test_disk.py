"""Disk trouble: an unusable --db exits 2 at start; a full disk never stops detection or the API."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from pimon.api import make_app
from pimon.monitor import Monitor, MonitorConfig
from pimon.store import Store
from tests.conftest import Procs, get_json, states, wait_until

DETECTION_BOUND_S = 20.0
WRITE_ERRORS = re.compile(r"^pimon_monitor_db_write_errors_total (\d+)", re.MULTILINE)


def run_monitor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pimon", "monitor", "--listen", "127.0.0.1:0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_unusable_database_path_exits_2_with_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    under_file = run_monitor("--db", str(blocker / "monitor.db"))
    assert under_file.returncode == 2
    assert (
        f"pimon monitor: error: cannot create the directory {blocker} for the history database:"
        in under_file.stderr
    ), under_file.stderr
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite at all, just some text" * 100)
    not_sqlite = run_monitor("--db", str(garbage))
    assert not_sqlite.returncode == 2
    assert f"cannot open the history database {garbage}: file is not a database" in (
        not_sqlite.stderr
    )


def healthz(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def write_errors(url: str) -> int:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        match = WRITE_ERRORS.search(resp.read().decode())
    assert match, "pimon_monitor_db_write_errors_total missing from /metrics"
    return int(match.group(1))


def fill(directory: Path) -> Path:
    """Write a file until the file system is full; return it."""
    filler = directory / "filler"
    chunk = b"\0" * 4096
    with open(filler, "wb", buffering=0) as f:
        try:
            for _ in range(100_000):
                f.write(chunk)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
            return filler
    raise AssertionError("the file system never filled up")


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """Mount a 600 KiB tmpfs, or skip where this sandbox may not mount."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; test_full_disk_in_process covers the behaviour")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); in-process test covers")
    try:
        yield disk
    finally:
        if subprocess.run(["umount", str(disk)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
def test_full_disk_keeps_the_monitor_detecting_and_serving_then_recovers(
    procs: Procs, tiny_disk: Path
) -> None:
    agents = [procs.agent(f"pi-{i}") for i in (1, 2)]
    url = procs.monitor(
        "--db",
        str(tiny_disk / "monitor.db"),
        *[f"--node=pi-{i}={a.address}" for i, a in enumerate(agents, 1)],
    )
    monitor = procs.last_monitor
    try:
        wait_until(lambda: set(states(url).values()) == {"up"}, DETECTION_BOUND_S, "all up")
        assert healthz(url) == (200, "ok\n")
        filler = fill(tiny_disk)
        agents[0].kill()  # a transition to write, on a disk with no room left

        def failing() -> bool:
            status, body = healthz(url)
            return status == 503 and write_errors(url) >= 2 and "full" in json.loads(body)["error"]

        wait_until(failing, DETECTION_BOUND_S, "503 from /healthz and write errors counted")
        assert json.loads(healthz(url)[1]) == {
            "error": "storage: write failed: database or disk is full;"
            " detection and the API keep working",
            "status": 503,
        }
        agents[1].kill()
        wait_until(lambda: states(url)["pi-2"] == "down", DETECTION_BOUND_S, "pi-2 down")
        assert "transitions" in get_json(f"{url}/v1/history")  # reads still served
        log = Path(monitor.log_path).read_text()
        assert len(re.findall(r"ERROR pimon.store: .* failed", log)) == 1, log

        filler.unlink()
        wait_until(lambda: healthz(url)[0] == 200, 40, "/healthz ok again after the backoff")
        news = {(t["node"], t["new"]) for t in get_json(f"{url}/v1/history")["transitions"]}
        assert {("pi-1", "down"), ("pi-2", "down")} <= news  # kept in memory, then written
        assert "writable again" in Path(monitor.log_path).read_text()
    finally:
        monitor.stop(timeout=10)  # before the unmount: it holds the database open


def heartbeat(seq: int, node_id: str) -> dict[str, object]:
    ok = seq % 2 == 0
    return {"v": 1, "name": "pi-1", "id": node_id, "boot": "b", "seq": seq,
            "sent_at": time.time(), "interval": 0.2, "ok": ok,
            "problems": [] if ok else ["disk / 99% used"]}  # fmt: skip


async def test_full_disk_in_process(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = Store(str(tmp_path / "monitor.db"), commit_interval=0.1)
    store.open()
    monitor = Monitor(MonitorConfig(listen=("127.0.0.1", 0), interval=0.2), store)
    await monitor.start()
    runner = web.AppRunner(make_app(monitor))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    base = f"http://127.0.0.1:{port}"
    node_id = str(uuid.uuid4())
    try:
        async with aiohttp.ClientSession() as http:

            async def get(path: str) -> tuple[int, str]:
                async with http.get(base + path) as resp:
                    return resp.status, await resp.text()

            async def until(what: str, check: object, limit: float = 15.0) -> None:
                deadline = time.monotonic() + limit
                while not await check():  # type: ignore[operator]
                    assert time.monotonic() < deadline, f"timed out waiting for {what}"
                    await asyncio.sleep(0.05)

            with caplog.at_level(logging.WARNING, logger="pimon.store"):
                store.limit_size(1)  # SQLITE_FULL as soon as the file must grow
                for seq in range(1, 400):  # up <-> degraded: a transition per heartbeat
                    async with http.post(f"{base}/v1/heartbeat", json=heartbeat(seq, node_id)) as r:
                        assert r.status == 202

                async def failing() -> bool:
                    status, _ = await get("/healthz")
                    return status == 503 and store.health().write_errors >= 2

                await until("503 and two failed commits", failing)
                _, body = await get("/healthz")
                assert "storage: write failed: database or disk is full" in body
                _, text = await get("/metrics")
                match = WRITE_ERRORS.search(text)
                assert match and int(match.group(1)) >= 2

                async def down() -> bool:  # no more heartbeats: the detector still judges
                    _, listing = await get("/v1/nodes")
                    return bool(json.loads(listing)["nodes"][0]["state"] == "down")

                await until("pi-1 down while the disk is full", down)
                errors = [r for r in caplog.records if r.levelno == logging.ERROR]
                assert len(errors) == 1 and "disk is full" in errors[0].getMessage()

                store.limit_size(None)

                async def healthy() -> bool:
                    return (await get("/healthz"))[0] == 200

                await until("recovery after the backoff", healthy)
            _, history = await get("/v1/history?node=pi-1&limit=1")
            assert json.loads(history)["transitions"][0]["new"] == "down"
            assert any("writable again" in r.getMessage() for r in caplog.records)
    finally:
        await runner.cleanup()
        await monitor.stop()
        store.close()
