"""``pimon watch``: SSE parsing, an 80x24 table under a pseudo-terminal, plain lines, reconnects."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from pimon.eventstream import Message, SseParser, backoff
from pimon.watch import Board, render
from tests.conftest import Procs, get_json, states, wait_until

DETECTION_BOUND_S = 20.0
ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][0-9A-Za-z]|[=>78])")
CURSOR_HOME = re.compile(r"\x1b\[(\d*;\d*)?H")
PLAIN_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (\S+) (\w+) -> (\w+)(: .*)?$")


def view(name: str, state: str, **extra: object) -> dict[str, Any]:
    return {"name": name, "state": state, "since": time.time() - 5, "last_seen": time.time(),
            "reason": "", "metrics": None, "problems": [], **extra}  # fmt: skip


def test_sse_parser_joins_split_chunks_and_skips_comments() -> None:
    parser = SseParser()
    stream = (
        b'retry: 2000\nevent: hello\ndata: {"now": 1}\n\n: keepalive\n\n'
        b'event: transition\r\ndata: {"node":\r\ndata:  "pi-1"}\r\n\r\n'
        b"data: plain\n\n"
    )
    events = [e for i in range(0, len(stream), 7) for e in parser.feed(stream[i : i + 7])]
    assert events == [
        ("hello", '{"now": 1}'),
        ("transition", '{"node":\n "pi-1"}'),
        ("message", "plain"),
    ]
    assert parser.feed(b"event: node\ndata: {}") == []  # incomplete until the blank line


def test_reconnect_backoff_grows_to_five_seconds() -> None:
    rng = __import__("random").Random(1)
    ceilings = [max(backoff(n, rng) for _ in range(50)) for n in (1, 2, 3, 4, 9)]
    assert all(c <= cap for c, cap in zip(ceilings, (0.5, 1, 2, 4, 5), strict=True))
    assert ceilings[-1] > 2.5


def test_board_applies_events_and_reports_changes_missed_while_away() -> None:
    board = Board()
    assert board.apply(Message("snapshot", {"nodes": [view("a", "up"), view("b", "up")]}), 0) == []
    [line] = board.apply(
        Message("transition", {"node": "a", "old": "up", "new": "down", "at": 0.0, "reason": "x"}),
        1.0,
    )
    assert line.endswith(" a up -> down: x")
    assert board.views["a"]["state"] == "down" and board.changed == {"a": 1.0}
    board.apply(Message("lost", ("connection refused", 2.0)), 2.0)
    assert not board.connected and "retrying in 2s" in board.trouble
    lines = board.apply(
        Message("snapshot", {"nodes": [view("a", "down"), view("b", "unknown", reason="back")]}),
        3.0,
    )
    assert [line.split(" ", 2)[2] for line in lines] == ["b up -> unknown: back"]
    assert board.connected
    board.apply(Message("removed", {"name": "b"}), 4.0)
    assert list(board.views) == ["a"]


def test_table_fits_80x24_worst_and_recent_first_with_a_count_of_the_rest() -> None:
    board = Board()
    views = [view(f"node-{i:02d}", "up", rtt_ms=0.4) for i in range(40)]
    views[30]["state"] = "down"
    views[31]["state"] = "suspect"
    board.apply(Message("snapshot", {"nodes": views}), 0.0)
    board.changed["node-39"] = 99.0  # just changed: shown even though it is up
    board.apply(Message("lost", ("connection refused", 1.0)), 100.0)
    out = io.StringIO()
    console = Console(file=out, width=80, height=24, color_system=None)
    console.print(render(board, "http://127.0.0.1:7070", 80, 24, 100.0))
    lines = out.getvalue().splitlines()
    assert len(lines) <= 23 and max(len(line) for line in lines) <= 80
    assert "reconnecting…" in lines[0]
    names = [line.split()[0] for line in lines[2:-1]]
    assert names[:3] == ["node-39", "node-30", "node-31"]
    assert lines[-1].startswith("1 down, 1 suspect, 38 up  +20 more")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def watch_cmd(url: str) -> list[str]:
    return [sys.executable, "-m", "pimon", "watch", "--monitor", url]


class Terminal:
    """``pimon watch`` on the slave side of a pseudo-terminal of 80x24; we read the master."""

    def __init__(self, url: str) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        env = {**os.environ, "COLUMNS": "80", "LINES": "24", "TERM": "xterm-256color"}
        self.proc = subprocess.Popen(
            watch_cmd(url), stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True
        )
        os.close(slave)
        self.master = master
        self.raw = b""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            self.raw += data

    def lines(self) -> list[str]:
        """Return every line drawn so far, without escape codes."""
        text = self.raw.decode("utf-8", "replace")
        text = ANSI.sub("", CURSOR_HOME.sub("\n", text))  # each frame starts at the top left
        return [line for chunk in text.split("\r\n") for line in chunk.split("\n")]

    def shows(self, pattern: str) -> bool:
        return any(re.match(pattern, line) for line in self.lines())

    def close(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(10)
        self.reader.join(5)
        os.close(self.master)
        return code


@pytest.fixture
def terminal() -> Iterator[list[Terminal]]:
    started: list[Terminal] = []
    yield started
    for t in started:
        if t.proc.poll() is None:
            t.proc.kill()
            t.close()


def test_watch_in_a_terminal_shows_a_killed_agent_go_down_and_exits_0_on_ctrl_c(
    procs: Procs, terminal: list[Terminal]
) -> None:
    agents = [procs.agent(f"pi-{i}") for i in (1, 2)]
    url = procs.monitor(*[f"--node=pi-{i}={a.address}" for i, a in enumerate(agents, 1)])
    wait_until(lambda: set(states(url).values()) == {"up"}, DETECTION_BOUND_S, "all up")
    term = Terminal(url)
    terminal.append(term)
    wait_until(lambda: term.shows(r"pi-2\s+up\s"), DETECTION_BOUND_S, "pi-2 up on screen")
    assert term.shows(r"2 up\s+Ctrl-C quits")
    agents[1].kill()
    wait_until(lambda: term.shows(r"pi-2\s+down\s"), DETECTION_BOUND_S, "pi-2 down on screen")
    wait_until(lambda: term.shows(r"1 down, 1 up\s"), 5, "the footer counting per state")
    assert term.close() == 0
    assert max(len(line) for line in term.lines()) <= 80


class Piped:
    """``pimon watch`` with stdout and stderr on pipes, collected line by line."""

    def __init__(self, url: str) -> None:
        self.proc = subprocess.Popen(
            watch_cmd(url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [
            threading.Thread(target=self._collect, args=(stream, lines), daemon=True)
            for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _collect(stream: io.TextIOBase, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def changes(self) -> list[tuple[str, str, str]]:
        found = []
        for line in self.out:
            match = PLAIN_LINE.match(line)
            assert match, f"not a plain transition line: {line!r}"
            node, old, new = match.group(1, 2, 3)
            found.append((node, old, new))
        return found


@pytest.fixture
def piped() -> Iterator[list[Piped]]:
    started: list[Piped] = []
    yield started
    for p in started:
        p.proc.kill()
        p.proc.wait(10)
        for reader in p.readers:
            reader.join(5)
        for stream in (p.proc.stdout, p.proc.stderr):
            if stream is not None:
                stream.close()


def test_watch_without_a_terminal_prints_a_line_per_transition_and_survives_a_restart(
    procs: Procs, piped: list[Piped], tmp_path: Path
) -> None:
    agent = procs.agent("pi-1")
    port = free_port()
    url = procs.monitor("--listen", f"127.0.0.1:{port}", f"--node=pi-1={agent.address}")
    monitor = procs.last_monitor
    wait_until(lambda: states(url) == {"pi-1": "up"}, DETECTION_BOUND_S, "pi-1 up")
    watcher = Piped(url)
    piped.append(watcher)
    wait_until(lambda: any("1 up" in line for line in watcher.err), 20, "watch connected")
    watched_from = time.time()

    agent.kill()
    wait_until(lambda: ("pi-1", "down") in {(c[0], c[2]) for c in watcher.changes()}, 20, "down")

    def stored() -> list[dict[str, Any]]:
        found = get_json(f"{url}/v1/history?since={watched_from}")["transitions"]
        return found if found and found[0]["new"] == "down" else []

    transitions = wait_until(stored, 10, "the transitions committed")
    assert watcher.changes() == [(t["node"], t["old"], t["new"]) for t in reversed(transitions)]

    monitor.kill()
    wait_until(lambda: any("reconnecting…" in line for line in watcher.err), 20, "reconnecting")
    agent.args[agent.args.index("--listen") + 1] = agent.address or ""
    agent.start()
    monitor.log_path = str(tmp_path / "monitor-restarted.log")
    monitor.start()
    wait_until(lambda: any("reconnected" in line for line in watcher.err), 30, "reconnected")
    wait_until(
        lambda: watcher.changes()[-1][0::2] == ("pi-1", "up"), DETECTION_BOUND_S, "pi-1 up line"
    )
    assert watcher.proc.poll() is None


def test_watch_exits_2_when_the_monitor_is_unreachable() -> None:
    result = subprocess.run(
        watch_cmd("http://127.0.0.1:1"), capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "cannot reach monitor at http://127.0.0.1:1" in result.stderr
    assert result.stdout == ""
