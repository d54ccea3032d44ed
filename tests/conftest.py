"""Shared fixtures: real agent and monitor processes, alert receivers, all on loopback port 0."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pimon.alertformat import Alert, Event
from pimon.demo import Child, agent_args
from tests.rawserver import Handler, RawServer
from tests.receivers import Receiver


@pytest.fixture
def raw_servers() -> Iterator[Callable[..., RawServer]]:
    """Start raw TCP servers on loopback; close them after the test."""
    started: list[RawServer] = []

    def start(handler: Handler, host: str = "127.0.0.1") -> RawServer:
        started.append(RawServer(handler, host))
        return started[-1]

    yield start
    for server in started:
        server.close()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # the server may be restarting
            last_error = e
        time.sleep(step)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what} (last error: {last_error})"
    )


def get_json(url: str, token: str | None = None, timeout: float = 5.0) -> Any:
    """GET a URL and decode its JSON body."""
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def heartbeat_fields(name: str = "pi-1", **over: Any) -> dict[str, Any]:
    """Return a valid wire-v1 heartbeat as a dict, with ``over`` replacing fields."""
    body: dict[str, Any] = {
        "v": 1,
        "name": name,
        "id": f"id-{name}",
        "boot": "b",
        "seq": int(time.time() * 1000),
        "sent_at": time.time(),
        "interval": 1.0,
        "ok": True,
        "problems": [],
        "leaving": False,
        "metrics": {},
    }
    body.update(over)
    return body


def states(monitor_url: str) -> dict[str, str]:
    """Return node name -> state from a monitor."""
    return {n["name"]: n["state"] for n in get_json(f"{monitor_url}/v1/nodes")["nodes"]}


def run_pimon(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the pimon CLI in a child process and return its exit status and output."""
    return subprocess.run(
        [sys.executable, "-m", "pimon", *args],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
        env=env,
    )


class Procs:
    """Start pimon daemons as real child processes and stop them all afterwards."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[Child] = []

    def agent(
        self, name: str, *extra: str, interval: float = 0.5, env: dict[str, str] | None = None
    ) -> Child:
        """Start an agent on a free loopback port."""
        args = agent_args(name, str(self.workdir / name), interval, *extra)
        child = Child(args, str(self.workdir / f"{name}.log"), env=env)
        child.start()
        self.children.append(child)
        return child

    def monitor(
        self,
        *extra: str,
        interval: float = 0.5,
        env: dict[str, str] | None = None,
        db: str | None = None,
    ) -> str:
        """Start a monitor on a free loopback port and return its URL."""
        args = [
            "monitor",
            "--listen",
            "127.0.0.1:0",
            "--interval",
            str(interval),
            "--db",
            db or str(self.workdir / "monitor.db"),
            *extra,
        ]
        child = Child(args, str(self.workdir / f"monitor-{len(self.children)}.log"), env=env)
        child.start()
        self.children.append(child)
        self.last_monitor = child
        return f"http://{child.address}"

    def stop(self) -> None:
        """Stop every child still running."""
        for child in reversed(self.children):
            child.stop(timeout=5)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    """Start real daemons; every one is stopped at the end of the test."""
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """Record requests on a real loopback server; it stops at the end of the test."""
    r = Receiver()
    await r.start()
    try:
        yield r
    finally:
        await r.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """Open an aiohttp client session for the test."""
    async with aiohttp.ClientSession() as s:
        yield s


class Clock:
    """A settable clock."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def alert(node: str = "pi1", at: float = 100.0) -> Alert:
    """Return a node-down alert for ``node`` at ``at``."""
    return Alert(Event.NODE_DOWN, node, "up", "down", "refused", at, f"{node} is down: refused")
