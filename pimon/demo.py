"""``pimon demo``: a monitor and N agents on loopback, with optional chaos."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

LISTEN_RE = re.compile(r"listening on http://(\S+)")


class Child:
    """A pimon daemon started as a child process, logging to a file."""

    def __init__(
        self, args: Sequence[str], log_path: str, env: dict[str, str] | None = None
    ) -> None:
        self.args = list(args)
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.address: str | None = None

    def start(self, timeout: float = 20.0) -> str:
        """Start the process and return the address it listens on."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pimon", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(self.env or {})},
                start_new_session=True,  # our Ctrl-C is ours to relay, not theirs to catch twice
            )
        self.address = self.wait_for(LISTEN_RE, timeout).group(1)
        return self.address

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """Wait until the log shows ``pattern`` after this start; fail if the process dies."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                matches = list(pattern.finditer(f.read()))
            match = matches[-1] if matches else None
            if match is not None and self.proc.poll() is None:
                return match
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.args[0]} exited with {self.proc.returncode}: see {self.log_path}"
                )
            time.sleep(0.05)
        raise TimeoutError(f"{self.args[0]} did not start within {timeout}s: see {self.log_path}")

    @property
    def running(self) -> bool:
        """Return whether the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """Kill the process at once (SIGKILL), as a crash would."""
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop the process with SIGTERM, then SIGKILL if it lingers."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def agent_args(name: str, state_dir: str, interval: float, *extra: str) -> list[str]:
    """Return the arguments of a loopback agent on a free port."""
    return [
        "agent",
        "--name",
        name,
        "--listen",
        "127.0.0.1:0",
        "--interval",
        str(interval),
        "--state-dir",
        state_dir,
        *extra,
    ]


class Cluster:
    """A monitor and N agents on loopback, each in its own process."""

    def __init__(self, nodes: int, workdir: str, interval: float = 1.0) -> None:
        self.workdir = workdir
        self.interval = interval
        self.agents: list[Child] = []
        for i in range(1, nodes + 1):
            name = f"node-{i}"
            args = agent_args(name, os.path.join(workdir, name), interval)
            self.agents.append(Child(args, os.path.join(workdir, f"{name}.log")))
        self.monitor: Child | None = None

    def start(self) -> str:
        """Start every agent, then a monitor polling them; return the monitor URL."""
        for agent in self.agents:
            agent.start()
        nodes = [f"{a.args[2]}={a.address}" for a in self.agents]
        args = [
            "monitor",
            "--listen",
            "127.0.0.1:0",
            "--interval",
            str(self.interval),
            "--db",
            os.path.join(self.workdir, "monitor.db"),
        ]
        for node in nodes:
            args += ["--node", node]
        self.monitor = Child(args, os.path.join(self.workdir, "monitor.log"))
        return f"http://{self.monitor.start()}"

    def restart_agent(self, agent: Child) -> None:
        """Start a stopped agent again on the same port."""
        assert agent.address is not None
        listen_index = agent.args.index("--listen") + 1
        agent.args[listen_index] = agent.address
        agent.start()

    def stop(self) -> None:
        """Stop every child, monitor first."""
        for child in [self.monitor, *self.agents]:
            if child is not None:
                child.stop()


def _chaos(cluster: Cluster, stop: threading.Event, say: Callable[..., Any]) -> None:
    rng = random.Random()
    while not stop.wait(rng.uniform(15, 25)):
        victim = rng.choice(cluster.agents)
        say(f"chaos: killing {victim.args[2]} (SIGKILL)")
        victim.kill()
        if stop.wait(rng.uniform(8, 12)):
            return
        say(f"chaos: restarting {victim.args[2]}")
        try:
            cluster.restart_agent(victim)
        except (RuntimeError, TimeoutError) as e:
            say(f"chaos: restart failed: {e}")


def run_demo(nodes: int, *, chaos: bool = False) -> int:
    """Run the demo cluster until Ctrl-C or SIGTERM."""
    from rich.console import Console as RichConsole
    from rich.live import Live

    from pimon.client import MonitorUnreachable, request
    from pimon.report import summary, table

    console = RichConsole()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with tempfile.TemporaryDirectory(prefix="pimon-demo-") as workdir:
        cluster = Cluster(nodes, workdir)
        try:
            url = cluster.start()
            console.print(
                f"[bold]pimon demo[/]: monitor at [link={url}]{url}[/] — logs in {workdir}"
            )
            console.print(f"dashboard: open {url}/ in a browser (it updates live)")
            console.print(
                f"try: pimon status --monitor {url}   or   pimon watch --monitor {url}"
                "    (Ctrl-C stops everything)"
            )
            if chaos:
                threading.Thread(
                    target=_chaos, args=(cluster, stop, console.print), daemon=True
                ).start()
            with Live(console=console, refresh_per_second=2, transient=False) as live:
                while not stop.wait(1.0):
                    try:
                        answer = request(url, "/v1/nodes", timeout=2)
                    except MonitorUnreachable as e:
                        live.update(str(e))
                        continue
                    views = answer["nodes"]
                    live.update(table(views, answer["now"], title=f"{url} — {summary(views)}"))
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()
            console.print("stopping the demo cluster…")
            cluster.stop()
    return 0
