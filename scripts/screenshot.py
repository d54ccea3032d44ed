"""Photograph the dashboard of a real demo cluster for the README: docs/img/*.png.

Run: .venv/bin/python scripts/screenshot.py [--warmup 90] [--out docs/img] [--node-page]
Needs Debian's Chromium (/usr/bin/chromium) and `pip install playwright`; it downloads
no browser. One agent is configured to report a problem (degraded) and one is killed
(down), so the picture shows the states a user meets, all produced by pimon itself.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from pimon.demo import Cluster

# Headless, offline and quiet: shared with the browser tests (tests/test_web.py).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def states(url: str) -> dict[str, str]:
    """Return node name -> state from the monitor."""
    with urllib.request.urlopen(f"{url}/v1/nodes", timeout=5) as resp:
        return {n["name"]: n["state"] for n in json.loads(resp.read())["nodes"]}


def wait_for(url: str, want: dict[str, str], timeout: float) -> None:
    """Wait until the named nodes are in the wanted states."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = states(url)
        if all(seen.get(name) == state for name, state in want.items()):
            return
        time.sleep(0.5)
    raise SystemExit(f"nodes never reached {want}: {states(url)}")


def photograph(
    url: str, out: Path, warmup: float, kill: Callable[[], None], node_page: bool
) -> list[Path]:
    """Open the dashboard, let live data gather, and save the pictures."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    shots = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium, args=[*CHROMIUM_ARGS, "--hide-scrollbars"]
        )
        page = browser.new_page(
            viewport={"width": 1200, "height": 640}, device_scale_factor=1, color_scheme="light"
        )
        page.goto(url)
        page.wait_for_selector("li.node[data-state=up]")
        print(f"gathering live data for {warmup:.0f}s …", flush=True)
        time.sleep(warmup * 0.7)
        kill()
        page.wait_for_selector("li.node[data-state=down]", timeout=30_000)
        time.sleep(warmup * 0.3)
        shots.append(out / "dashboard.png")
        page.screenshot(path=str(shots[-1]))
        if not node_page:
            browser.close()
            return shots
        page.click("li.node[data-name=node-1] a")
        page.wait_for_selector("figure[data-chart=cpu] canvas")
        page.wait_for_timeout(1500)
        page.set_viewport_size({"width": 1200, "height": 900})
        shots.append(out / "node.png")
        page.screenshot(path=str(shots[-1]))
        browser.close()
    return shots


def main(argv: list[str] | None = None) -> int:
    """Run a demo cluster, photograph its dashboard and stop it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--warmup", type=float, default=90.0, help="seconds of live data")
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    parser.add_argument("--node-page", action="store_true", help="also write node.png")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pimon-shot-") as workdir:
        hot = Path(workdir) / "hot.toml"
        hot.write_text("[agent]\ndisk_max_percent = 1\n")
        cluster = Cluster(args.nodes, workdir)
        cluster.agents[3].args += ["--config", str(hot)]  # node-4 reports a full disk
        try:
            url = cluster.start()
            print(f"demo cluster at {url}", flush=True)
            want = {f"node-{i}": "up" for i in range(1, args.nodes + 1)}
            want["node-4"] = "degraded"
            wait_for(url, want, 60)
            kill = cluster.agents[5].kill  # node-6 crashes: a down tile
            shots = photograph(url, args.out, args.warmup, kill, args.node_page)
        finally:
            cluster.stop()
    for shot in shots:
        print(f"wrote {shot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
