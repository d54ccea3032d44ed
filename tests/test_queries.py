"""History and sample routes on a real aiohttp app over a real store."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from pimon.api import make_app
from pimon.monitor import Monitor, MonitorConfig
from pimon.store import Store


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, Store]]:
    store = Store(str(tmp_path / "monitor.db"))
    store.open()
    monitor = Monitor(MonitorConfig(listen=("127.0.0.1", 0)), store)
    await monitor.start()
    runner = web.AppRunner(make_app(monitor))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", store
    finally:
        await runner.cleanup()
        await monitor.stop()
        store.close()


async def test_samples_since_zero_means_everything_not_the_last_hour(
    served: tuple[str, Store],
) -> None:
    base, store = served
    store.record_sample("pi-1", time.time() - 2 * 3600, {"cpu_percent": 42.0})
    store.record_sample("pi-1", time.time() - 60, {"cpu_percent": 7.0})
    assert store.flush()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/v1/nodes/pi-1/samples") as resp:
            default = await resp.json()
        async with http.get(f"{base}/v1/nodes/pi-1/samples?since=0") as resp:
            everything = await resp.json()
        async with http.get(f"{base}/v1/nodes/pi-1/samples?since=3h&until=0") as resp:
            assert resp.status == 400  # until=0 is the epoch, before since
    assert [s["cpu_percent"] for s in default["samples"]] == [7.0]
    assert default["resolution"] == "raw"
    assert everything["since"] == 0 and everything["resolution"] == "15m"
    assert sorted(s["cpu_percent"] for s in everything["samples"]) == [7.0, 42.0]
