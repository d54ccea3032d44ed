"""Daemon start-up: turn resolved settings into a running ``pimon agent`` or ``pimon monitor``.

``pimon.cli`` imports this module only when a daemon starts, and the daemons'
own modules are imported inside the functions below, so the client commands
(``pimon status`` is benchmarked) never pay for them.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from typing import Any

from pimon.cli import UsageError, read_token, settings
from pimon.config import Resolved


def setup_logging(level: str) -> None:
    """Log one line per event to stderr."""
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def agent(args: argparse.Namespace) -> int:
    """Check the agent's settings and run it until stopped."""
    from pimon.agent import AgentConfig, default_state_dir
    from pimon.agent import run as run_agent
    from pimon.health import Thresholds
    from pimon.wire import check_name

    s = settings(args, "agent")
    setup_logging(s.log_level)
    name = s.name or socket.gethostname().split(".")[0]
    try:
        check_name(name)
    except ValueError as e:
        raise UsageError(f"--name: {e}") from None
    token = read_token(s.token_file)
    if not token and any(url.startswith("udp://") for url in s.monitor):
        raise UsageError(
            "--monitor udp://…: datagrams are signed with the cluster token; give --token-file"
        )
    thresholds = Thresholds(
        disk_percent=s.disk_max_percent,
        temp_c=s.temp_max_c,
        mem_percent=s.mem_max_percent,
        swap_pages_per_s=s.swap_pages_per_s,
        swap_sustain_s=s.swap_sustain_s,
    )
    return run_agent(
        AgentConfig(
            name=name,
            listen=s.listen,
            interval=s.interval,
            state_dir=s.state_dir or default_state_dir(),
            advertise=s.advertise,
            mounts=s.mounts,
            thresholds=thresholds,
            monitors=s.monitor,
            token=token,
        )
    )


def monitor(args: argparse.Namespace) -> int:
    """Check the monitor's settings and run it until stopped."""
    from pimon.alertconfig import alert_config
    from pimon.detector import DetectorConfig
    from pimon.monitor import MonitorConfig
    from pimon.server import run as run_monitor

    s = settings(args, "monitor")
    setup_logging(s.log_level)
    nodes = list(s.node)
    if s.nodes_file:
        nodes += nodes_from_file(s.nodes_file)
    names = [n.name for n in nodes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UsageError(f"--node: duplicate node name(s): {', '.join(duplicates)}")
    detector = DetectorConfig(
        interval=s.interval,
        threshold=s.threshold,
        suspect_pause=s.suspect_pause,
        down_pause=s.down_pause,
    )
    token = read_token(s.token_file)
    if s.udp and not token:
        raise UsageError(
            "--udp: heartbeat datagrams are signed with the cluster token; give --token-file"
        )
    return run_monitor(
        MonitorConfig(
            listen=s.listen,
            nodes=nodes,
            interval=s.interval,
            db=s.db,
            token=token,
            read_token=s.read_token,
            insecure=s.insecure,
            max_nodes=s.max_nodes,
            udp=s.udp,
            detector=detector,
            alerts=alert_config(s, getattr(args, "config", None)),
            retention=retention(s),
        )
    )


def retention(s: Resolved) -> Any:
    """Build the sample retention from the settings, or fail naming them."""
    from pimon.rollup import Retention

    try:
        return Retention(s.retention_raw, s.retention_minute, s.retention_quarter)
    except ValueError as e:
        raise UsageError(f"monitor.retention_raw/_minute/_quarter: {e}") from None


def nodes_from_file(path: str) -> list[Any]:
    """Read one ``[NAME=]HOST[:PORT]`` per line; blank lines and # comments are skipped."""
    from pimon.parse import node_spec

    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise UsageError(f"--nodes-file {path}: {e.strerror}") from e
    out = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if text:
            try:
                out.append(node_spec(text))
            except ValueError as e:
                raise UsageError(f"--nodes-file {path}:{number}: {e} (got {text!r})") from None
    return out
