"""The dashboard in a real browser: Debian's Chromium driven by Playwright, real daemons."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aiohttp import web

from pimon import dashboard
from pimon.demo import Child
from scripts.screenshot import CHROMIUM_ARGS
from tests.conftest import Procs, get_json, wait_until
from tests.interop import REQUIRE_ENV, require_tool

pytestmark = pytest.mark.interop

BOUND_MS = 30_000  # detection plus rendering, generous: the machine is shared and slow at times
TOKEN = "read-s3cret"


def playwright_api() -> ModuleType:
    """Import Playwright's sync API; skip without it, fail if PIMON_REQUIRE_INTEROP=1."""
    try:
        from playwright import sync_api
    except ImportError:
        message = "playwright is not installed (pip install playwright)"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{message}, and {REQUIRE_ENV}=1 demands every interop tool")
        pytest.skip(message)
    return sync_api


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = require_tool("chromium")
    api = playwright_api()
    with api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Tab:
    """One browser page that keeps screenshots and script errors for the test."""

    def __init__(self, browser: Any, folder: Path, width: int = 1280) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": 800})
        self.page = self.context.new_page()
        self.folder = folder
        self.shots = 0
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.page.on("console", self._console)

    def _console(self, message: Any) -> None:
        # Refused connections while a daemon is down are expected; broken code and CSP are not.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(message.text)

    def shot(self, name: str) -> Path:
        """Save a full-page screenshot into the test's temporary directory."""
        self.shots += 1
        path = self.folder / f"{self.shots:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def wait(self, script: str, arg: Any = None, timeout: float = BOUND_MS) -> Any:
        """Wait until the function ``script`` returns something truthy in the page.

        A function, not an expression: Playwright would eval an expression, which the
        page's Content-Security-Policy rightly forbids.
        """
        return self.page.wait_for_function(script, arg=arg, timeout=timeout)

    def state_of(self, name: str) -> str | None:
        """Return the state a node's tile shows: its word, checked against its colour key."""
        tile = self.page.locator(f'li.node[data-name="{name}"]')
        word = tile.locator(".state").inner_text().strip()
        assert word == tile.get_attribute("data-state"), "the word and the colour agree"
        return str(word)


@pytest.fixture
def tab(browser: Any, tmp_path: Path) -> Iterator[Tab]:
    t = Tab(browser, tmp_path)
    try:
        yield t
    finally:
        t.shot("final")  # kept with the test's tmp_path, so a failure can be looked at
        t.context.close()
    assert not t.errors, t.errors


def restart(child: Child) -> None:
    """Start a stopped daemon again on the same address."""
    listen = child.args.index("--listen") + 1
    child.args[listen] = child.address or ""
    child.start()


def tiles_up(tab: Tab, count: int) -> None:
    tab.wait("n => document.querySelectorAll('li.node[data-state=\"up\"]').length === n", arg=count)


def test_overview_lists_every_node_and_follows_a_kill_and_a_restart_live(
    procs: Procs, tab: Tab
) -> None:
    agents = [procs.agent(f"pi-{i}") for i in range(1, 4)]
    url = procs.monitor(*[f"--node=pi-{i}={a.address}" for i, a in enumerate(agents, 1)])
    tab.page.goto(url)
    tiles_up(tab, 3)
    names = tab.page.eval_on_selector_all("li.node", "els => els.map(e => e.dataset.name)")
    assert names == ["pi-1", "pi-2", "pi-3"]
    assert tab.page.title() == "pimon"
    tab.shot("all-up")

    tab.page.evaluate("window.notReloaded = true")
    agents[1].kill()
    tab.page.wait_for_selector('li.node[data-name="pi-2"][data-state="down"]', timeout=BOUND_MS)
    assert tab.state_of("pi-2") == "down"
    assert tab.page.evaluate("window.notReloaded") is True
    tab.wait("() => document.title === '(1 down) pimon'")
    first = tab.page.eval_on_selector("li.node", "e => e.dataset.name")
    assert first == "pi-2", "the worst state sorts first"
    assert tab.page.locator("#counts [data-state=down] b").inner_text() == "1"
    tab.shot("pi-2-down")

    restart(agents[1])
    tab.page.wait_for_selector('li.node[data-name="pi-2"][data-state="up"]', timeout=BOUND_MS)
    assert tab.page.evaluate("window.notReloaded") is True
    tab.wait("() => document.title === 'pimon'")
    tab.shot("pi-2-back")


def test_node_page_draws_charts_with_data_and_the_timeline(procs: Procs, tab: Tab) -> None:
    agent = procs.agent("pi-1")
    url = procs.monitor(f"--node=pi-1={agent.address}")
    wait_until(lambda: get_json(f"{url}/v1/nodes/pi-1/samples")["samples"], 30, "a stored sample")
    tab.page.goto(url)
    tiles_up(tab, 1)
    tab.page.focus('li.node[data-name="pi-1"] a')
    tab.page.keyboard.press("Enter")  # tiles are links: the keyboard opens them
    tab.page.wait_for_url(f"{url}/nodes/pi-1")
    for kind in ("cpu", "mem", "load"):
        tab.wait(
            'k => { const f = document.querySelector(`figure[data-chart="${k}"]`);'
            " return f && Number(f.dataset.points) >= 2 && !f.classList.contains('nodata')"
            " && f.querySelector('canvas')?.width > 0; }",
            arg=kind,
        )
    assert tab.page.locator("h1 .state").inner_text() == "up"
    assert agent.address is not None
    assert agent.address in tab.page.locator(".meta").inner_text()
    tab.wait("() => document.querySelector('.timeline li')?.textContent.includes('unknown → up')")
    uptimes = tab.page.eval_on_selector_all(".uptime dd", "els => els.map(e => e.textContent)")
    assert len(uptimes) == 4 and all(re.fullmatch(r"\d+(\.\d+)?%|—", u) for u in uptimes)
    tab.shot("node-page")

    tab.page.click("[data-window='24h']")
    tab.wait("() => document.querySelector('figure[data-chart=\"cpu\"]').dataset.points >= 1")
    assert tab.page.get_attribute("[data-window='24h']", "aria-pressed") == "true"
    tab.page.go_back()
    tiles_up(tab, 1)


def test_monitor_restart_shows_the_banner_then_reconnects(procs: Procs, tab: Tab) -> None:
    agent = procs.agent("pi-1")
    url = procs.monitor(f"--node=pi-1={agent.address}")
    tab.page.goto(url)
    tiles_up(tab, 1)
    tab.page.evaluate("window.notReloaded = true")
    monitor = procs.last_monitor
    monitor.kill()
    banner = tab.page.locator("#banner")
    banner.wait_for(state="visible", timeout=BOUND_MS)
    tab.wait("() => document.getElementById('banner').textContent.includes(' old')")
    assert "Connection to the monitor lost" in banner.inner_text()
    tab.shot("monitor-gone")

    restart(monitor)
    banner.wait_for(state="hidden", timeout=BOUND_MS)
    tab.page.wait_for_selector("#health[data-kind=ok]", timeout=BOUND_MS)
    agent.kill()  # the stream works again: a kill after the restart still shows up live
    tab.page.wait_for_selector('li.node[data-name="pi-1"][data-state="down"]', timeout=BOUND_MS)
    assert tab.page.evaluate("window.notReloaded") is True


def test_at_375_px_nothing_scrolls_sideways(procs: Procs, browser: Any, tmp_path: Path) -> None:
    names = ["pi-1", "a-rather-long-node-name-that-must-wrap-or-clip-somewhere-1"]
    agents = [procs.agent(n) for n in names]
    url = procs.monitor(*[f"--node={n}={a.address}" for n, a in zip(names, agents, strict=True)])
    narrow = Tab(browser, tmp_path, width=375)
    try:
        narrow.page.goto(url)
        tiles_up(narrow, 2)
        wide = "document.documentElement.scrollWidth"
        assert narrow.page.evaluate(wide) <= 375
        narrow.shot("narrow-tiles")
        narrow.page.click("[data-layout=table]")
        narrow.wait("() => document.querySelectorAll('.row.node').length === 2")
        assert narrow.page.evaluate(wide) <= 375
        narrow.shot("narrow-table")
        narrow.page.click('.row.node[data-name="pi-1"] a')
        narrow.page.wait_for_selector("figure[data-chart=cpu] canvas", timeout=BOUND_MS)
        assert narrow.page.evaluate(wide) <= 375
        narrow.shot("narrow-node")
    finally:
        narrow.context.close()
    assert not narrow.errors, narrow.errors


def test_read_token_is_asked_once_kept_and_sent(procs: Procs, tab: Tab) -> None:
    agent = procs.agent("pi-1")
    url = procs.monitor("--read-token", TOKEN, f"--node=pi-1={agent.address}")
    tab.page.goto(url)
    dialog = tab.page.locator("#token-dialog")
    dialog.wait_for(state="visible", timeout=BOUND_MS)
    tab.shot("token-prompt")
    tab.page.fill("#token-input", TOKEN)
    tab.page.click("#token-form button[type=submit]")
    tiles_up(tab, 1)
    assert tab.page.evaluate("localStorage.getItem('pimon.readToken')") == TOKEN
    tab.page.wait_for_selector("#health[data-kind=ok]", timeout=BOUND_MS)  # the stream is open

    tab.page.reload()
    tiles_up(tab, 1)
    assert not dialog.is_visible(), "a kept token is not asked for again"
    tab.page.evaluate("localStorage.setItem('pimon.readToken', 'wrong')")
    tab.page.reload()
    dialog.wait_for(state="visible", timeout=BOUND_MS)
    assert "refused" in tab.page.locator("#token-why").inner_text()


# --- 1,000 synthetic nodes: render time and diff updates ---------------------------------


def synthetic_view(i: int, now: float, rng: random.Random) -> dict[str, Any]:
    state = rng.choices(["up", "degraded", "suspect", "down", "unknown"], [90, 4, 2, 3, 1])[0]
    problems = ["disk / at 93%"] if state == "degraded" else []
    return {
        "name": f"node-{i:04d}",
        "state": state,
        "since": now - rng.uniform(10, 86400),
        "reason": "connection refused: agent not running" if state == "down" else "heartbeat ok",
        "last_seen": now - rng.uniform(0, 2),
        "phi": 0.2,
        "rtt_ms": 1.5,
        "clock_offset_s": 0.001,
        "mode": "pull",
        "source": "static",
        "address": f"10.0.{i // 250}.{i % 250}:7071",
        "last_error": None,
        "id": f"id-{i}",
        "seq": 100,
        "interval": 1.0,
        "ok": not problems,
        "problems": problems,
        "leaving": False,
        "metrics": {
            "cpu_percent": rng.uniform(0, 100),
            "mem_percent": rng.uniform(10, 90),
            "disk_percent": rng.uniform(10, 95),
            "temp_c": rng.uniform(40, 80),
            "load1": 0.5,
            "model": "Raspberry Pi 4 Model B Rev 1.4",
        },
        "uptime_1h": 1.0,
    }


class Synthetic:
    """A fake monitor API in a thread, serving the real dashboard assets."""

    def __init__(self, count: int) -> None:
        rng = random.Random(7)
        now = time.time()
        self.views = [synthetic_view(i, now, rng) for i in range(1, count + 1)]
        self.sample_requests = 0
        self.streams: set[asyncio.Queue[bytes]] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None

    async def nodes(self, request: web.Request) -> web.Response:
        return web.json_response({"nodes": self.views, "now": time.time()})

    async def samples(self, request: web.Request) -> web.Response:
        self.sample_requests += 1
        now = time.time()
        rows = [
            {"at": now - 3600 + 60 * k, "cpu_percent": 50 + 40 * math.sin(k / 6)} for k in range(60)
        ]
        return web.json_response({"node": request.match_info["name"], "step": 60, "samples": rows})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.streams.add(queue)
        try:
            await response.write(b'event: hello\ndata: {"now": %f}\n\n' % time.time())
            while True:
                try:
                    chunk = await asyncio.wait_for(queue.get(), 0.5)
                except TimeoutError:
                    chunk = b": keepalive\n\n"
                await response.write(chunk)
        except ConnectionResetError:
            return response
        finally:
            self.streams.discard(queue)

    def send(self, event: str, data: dict[str, Any]) -> None:
        """Send one event to every open stream."""
        chunk = f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()

        def deliver() -> None:
            for queue in self.streams:
                queue.put_nowait(chunk)

        self.loop.call_soon_threadsafe(deliver)

    async def _start(self) -> str:
        app = web.Application()
        dashboard.add_routes(app)
        app.router.add_get("/v1/nodes", self.nodes)
        app.router.add_get("/v1/nodes/{name}/samples", self.samples)
        app.router.add_get("/v1/events", self.events)
        app.router.add_get("/healthz", self.healthz)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    def start(self) -> str:
        self.thread.start()
        return asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def synthetic() -> Iterator[Synthetic]:
    s = Synthetic(1000)
    try:
        yield s
    finally:
        s.stop()


def expected_order(views: list[dict[str, Any]]) -> list[str]:
    rank = {s: i for i, s in enumerate(["down", "suspect", "degraded", "unknown", "up", "left"])}
    return [v["name"] for v in sorted(views, key=lambda v: (rank[v["state"]], v["name"]))]


def test_a_thousand_nodes_render_once_then_update_by_diff(
    synthetic: Synthetic, tab: Tab, record_property: Any
) -> None:
    url = synthetic.start()
    tab.page.goto(url)
    tab.wait("() => document.documentElement.dataset.rendered === '1000'")
    tiles_ms = float(tab.page.evaluate("document.documentElement.dataset.renderMs"))
    order = tab.page.eval_on_selector_all("li.node", "els => els.map(e => e.dataset.name)")
    assert order == expected_order(synthetic.views)
    tab.shot("thousand-tiles")

    # Tag every tile; a diff update must keep them all (no full re-render).
    tab.page.evaluate("document.querySelectorAll('li.node').forEach(e => { e.tagged = true; })")
    changed = next(v for v in synthetic.views if v["name"] == "node-0500")
    changed = {**changed, "state": "down", "since": time.time(), "reason": "test"}
    synthetic.send("node", changed)
    tab.page.wait_for_selector('li.node[data-name="node-0500"][data-state="down"]')
    assert tab.page.evaluate("[...document.querySelectorAll('li.node')].every(e => e.tagged)")
    synthetic.views = [changed if v["name"] == "node-0500" else v for v in synthetic.views]
    order = tab.page.eval_on_selector_all("li.node", "els => els.map(e => e.dataset.name)")
    assert order == expected_order(synthetic.views), "the changed tile moved to its sorted place"

    # Sparklines load only for tiles on screen.
    tab.wait("() => document.querySelectorAll('.spark[data-points=\"60\"]').length >= 4")
    assert 0 < synthetic.sample_requests < 200, synthetic.sample_requests

    tab.page.click("[data-layout=table]")
    tab.wait("() => document.querySelectorAll('.row.node').length === 1000")
    table_ms = float(tab.page.evaluate("document.documentElement.dataset.renderMs"))
    record_property("render_1000_tiles_ms", tiles_ms)
    record_property("render_1000_rows_ms", table_ms)
    print(f"\n1,000 nodes: tiles rendered in {tiles_ms:.1f} ms, table in {table_ms:.1f} ms")
