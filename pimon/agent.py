"""The agent daemon: answers the heartbeat RPC, samples metrics on a timer, pushes."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from pimon import __version__
from pimon.collect import Collector
from pimon.health import Thresholds
from pimon.httpd import HttpServer
from pimon.parse import join_host_port
from pimon.push import LEAVE_TIMEOUT_S, Pusher
from pimon.wire import WIRE_VERSION, Heartbeat, Metrics, encode_heartbeat, error_body, metrics_dict

log = logging.getLogger("pimon.agent")


@dataclass(slots=True)
class AgentConfig:
    """What the agent needs to run."""

    name: str
    listen: tuple[str, int] = ("0.0.0.0", 7071)
    interval: float = 1.0
    state_dir: str = ""
    advertise: str | None = None
    mounts: list[str] = field(default_factory=lambda: ["/"])
    thresholds: Thresholds = field(default_factory=Thresholds)
    monitors: list[str] = field(default_factory=list)
    token: str | None = None
    root: str = "/"


def default_state_dir() -> str:
    """Return /var/lib/pimon as root, else $XDG_STATE_HOME/pimon."""
    if os.geteuid() == 0:
        return "/var/lib/pimon"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "pimon")


def node_id(state_dir: str) -> str:
    """Return the node's persistent UUID, creating it on first use."""
    path = os.path.join(state_dir, "node-id")
    try:
        with open(path, encoding="ascii") as f:
            existing = f.read().strip()
        uuid.UUID(existing)
        return existing
    except (OSError, ValueError):
        pass
    os.makedirs(state_dir, exist_ok=True)
    new = str(uuid.uuid4())
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(new + "\n")
    os.replace(tmp, path)  # atomic, so a crash never leaves a half-written id
    return new


class Agent:
    """Sample metrics on a timer and answer heartbeats from the latest sample."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.id = node_id(config.state_dir)
        self.boot = os.urandom(8).hex()
        self.collector = Collector(
            root=config.root, mounts=config.mounts, thresholds=config.thresholds
        )
        self._seq = 0
        self._lock = threading.Lock()
        self._metrics = Metrics()
        self._metrics_json: dict[str, Any] = metrics_dict(self._metrics)
        self._problems: list[str] = []
        self.leaving = False
        self.stopping = threading.Event()
        self.leave_seen = threading.Event()
        self.server: HttpServer | None = None
        self.address = config.advertise or ""
        self.requests = 0

    def sample(self) -> None:
        """Take one metrics sample and publish it for the next heartbeats."""
        try:
            metrics, problems = self.collector.sample(time.monotonic())
        except Exception:  # a collector bug must not stop the heartbeats
            log.exception("metrics sampling failed")
            return
        converted = metrics_dict(metrics)
        with self._lock:
            self._metrics, self._metrics_json, self._problems = metrics, converted, problems

    def heartbeat(self) -> tuple[Heartbeat, bytes]:
        """Build the next heartbeat and its encoded body."""
        with self._lock:
            self._seq += 1
            hb = Heartbeat(
                v=WIRE_VERSION,
                name=self.config.name,
                id=self.id,
                boot=self.boot,
                seq=self._seq,
                sent_at=time.time(),
                interval=self.config.interval,
                address=self.address or None,
                ok=not self._problems,
                problems=list(self._problems),
                leaving=self.leaving,
                metrics=self._metrics,
            )
            metrics = self._metrics_json
        return hb, encode_heartbeat(hb, metrics)

    def handle(self, method: str, path: str) -> tuple[int, str, bytes]:
        """Answer one HTTP request: the heartbeat RPC, /metrics or /healthz."""
        if method != "GET":
            return _error(405, "the agent only answers GET")
        self.requests += 1
        if path == "/v1/heartbeat":
            hb, body = self.heartbeat()
            if hb.leaving:
                self.leave_seen.set()
            return 200, "application/json", body
        if path == "/metrics":
            from pimon.exposition import CONTENT_TYPE, agent_families, render

            return 200, CONTENT_TYPE, render(agent_families(self.heartbeat()[0])).encode()
        if path == "/healthz":
            return 200, "text/plain; charset=utf-8", b"ok\n"
        return _error(404, f"no route {path}")

    def bind(self) -> tuple[str, int]:
        """Bind the HTTP server and return the bound host and port."""
        host, port = self.config.listen
        self.server = HttpServer(host, port, self.handle, f"pimon-agent/{__version__}")
        bound_host, bound_port = self.server.address
        if not self.address:
            shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
            self.address = join_host_port(shown, int(bound_port))
        return str(bound_host), int(bound_port)

    def _sampler(self) -> None:
        while not self.stopping.wait(self.config.interval):
            self.sample()

    def serve(self) -> None:
        """Sample, serve and push until stopped; pushers say goodbye before it returns."""
        assert self.server is not None
        self.sample()
        threading.Thread(target=self._sampler, name="sampler", daemon=True).start()
        pushers = [self._start_pusher(url) for url in self.config.monitors]
        self.server.serve_forever()
        for thread in pushers:
            thread.join(LEAVE_TIMEOUT_S + 1)

    def _start_pusher(self, url: str) -> threading.Thread:
        pusher = Pusher(
            url, self.config.token, self.config.interval, lambda: self.heartbeat()[1], self.stopping
        )
        thread = threading.Thread(target=pusher.run, name=f"push {url}", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """Stop: push a ``leaving`` heartbeat, or let one poll see it, then shut down."""
        self.leaving = True
        self.stopping.set()
        threading.Thread(target=self._shutdown, daemon=True).start()

    def _shutdown(self) -> None:
        if not self.config.monitors and self.requests:
            # A polled agent cannot push its goodbye: answer polls with
            # leaving=true for a moment so the monitor records `left`, not `down`.
            self.leave_seen.wait(min(2 * self.config.interval, 5.0))
        if self.server is not None:
            self.server.shutdown()


def _error(status: int, message: str) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(error_body(status, message)).encode()


def run(config: AgentConfig) -> int:
    """Run the agent in the foreground until SIGTERM or SIGINT."""
    agent = Agent(config)
    host, port = agent.bind()
    log.info(
        "pimon agent %s listening on http://%s (node %s, id %s)",
        __version__,
        join_host_port(host, port),
        config.name,
        agent.id,
    )

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.serve()
    agent.stopping.set()
    log.info("pimon agent stopped")
    return 0
