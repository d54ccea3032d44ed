"""``pimon watch``: a live table of node states fed by the monitor's Server-Sent Events.

The reader thread of eventstream.py hands snapshots and events to the main
thread, which draws with rich on a terminal or prints one plain line per state
change otherwise.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pimon.eventstream import Message, read_forever
from pimon.report import STATE_ORDER, STATE_STYLE, ago, summary

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

HIGHLIGHT_S = 5.0
REDRAW_S = 0.5
CHROME_LINES = 4  # title, table header, footer, and one spare so the terminal never scrolls


def change_line(node: str, old: str, new: str, at: float, reason: str) -> str:
    """Format one state change as a plain line."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
    return f"{when} {node} {old} -> {new}" + (f": {reason}" if reason else "")


@dataclass(slots=True)
class Board:
    """What the watcher knows: node views, recent changes and the connection's state."""

    views: dict[str, dict[str, Any]] = field(default_factory=dict)
    changed: dict[str, float] = field(default_factory=dict)  # name -> monotonic time of change
    connected: bool = False
    trouble: str = ""
    loaded: bool = False

    def apply(self, message: Message, mono: float) -> list[str]:
        """Take one message from the reader; return plain lines for the state changes in it."""
        kind, data = message.kind, message.data
        lines: list[str] = []
        if kind == "snapshot":
            fresh = {v["name"]: v for v in data["nodes"]}
            for name, view in fresh.items():
                old = self.views.get(name)
                if self.loaded and (old is None or old["state"] != view["state"]):
                    self.changed[name] = mono
                    if old is not None:  # missed while disconnected
                        lines.append(self._line(old["state"], view))
            self.views, self.loaded, self.connected, self.trouble = fresh, True, True, ""
        elif kind == "transition":
            name = data["node"]
            view = self.views.setdefault(name, {"name": name, "state": data["old"]})
            view.update(state=data["new"], since=data["at"], reason=data["reason"])
            self.changed[name] = mono
            lines.append(change_line(name, data["old"], data["new"], data["at"], data["reason"]))
        elif kind == "node":
            old = self.views.get(data["name"])
            if old is None or old["state"] != data["state"]:
                self.changed[data["name"]] = mono
                if old is not None:  # its transition event was dropped: say it anyway
                    lines.append(self._line(old["state"], data))
            self.views[data["name"]] = data
        elif kind == "removed":
            self.views.pop(data["name"], None)
            self.changed.pop(data["name"], None)
        elif kind == "lost":
            why, delay = data
            self.connected, self.trouble = False, f"{why}; retrying in {delay:.0f}s"
        return lines

    @staticmethod
    def _line(old: str, view: dict[str, Any]) -> str:
        at = view.get("since") or time.time()
        return change_line(view["name"], old, view["state"], at, view.get("reason") or "")

    def ordered(self, mono: float) -> list[dict[str, Any]]:
        """Return the views to show: recent changes first, then worst state first."""

        def key(v: dict[str, Any]) -> tuple[bool, int, str]:
            recent = mono - self.changed.get(v["name"], -HIGHLIGHT_S) < HIGHLIGHT_S
            return (not recent, STATE_ORDER.get(v["state"], 9), v["name"])

        return sorted(self.views.values(), key=key)


def _cell(value: float | None, unit: str, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def render(board: Board, monitor: str, width: int, height: int, mono: float) -> RenderableType:
    """Draw the title, as many rows as fit in ``height`` lines and the footer."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table

    now = time.time()
    title = Table.grid(expand=True)
    title.add_column(no_wrap=True, overflow="ellipsis")
    title.add_column(justify="right", no_wrap=True, overflow="ellipsis")
    status = (
        "[green]live[/]" if board.connected else f"[yellow]reconnecting… {escape(board.trouble)}[/]"
    )
    title.add_row(f"[bold]pimon watch[/] {escape(monitor)} {time.strftime('%H:%M:%S')}", status)
    rows = board.ordered(mono)
    room = max(1, height - CHROME_LINES)
    shown, hidden = rows[:room], len(rows) - min(room, len(rows))
    table = Table(box=None, header_style="bold", pad_edge=False, width=width)
    for header in ("NODE", "STATE", "SINCE", "SEEN", "RTT", "CPU", "MEM", "TEMP"):
        right = header in ("RTT", "CPU", "MEM", "TEMP")
        minimum = {"NODE": min(16, max([4, *(len(v["name"]) for v in shown)])), "STATE": 8}
        table.add_column(
            header,
            no_wrap=True,
            overflow="ellipsis",
            min_width=minimum.get(header),
            justify="right" if right else "left",
        )
    table.add_column("NOTE", no_wrap=True, overflow="ellipsis", ratio=1)
    for v in shown:
        m = v.get("metrics") or {}
        state = v["state"]
        style = STATE_STYLE.get(state, "")
        if mono - board.changed.get(v["name"], -HIGHLIGHT_S) < HIGHLIGHT_S:
            style += " reverse"
        note = "; ".join(v.get("problems") or []) or v.get("reason") or ""
        table.add_row(
            escape(v["name"]),
            f"[{style}]{state}[/]",
            ago(v.get("since"), now),
            ago(v.get("last_seen"), now),
            _cell(v.get("rtt_ms"), "ms", 1),
            _cell(m.get("cpu_percent"), "%"),
            _cell(m.get("mem_percent"), "%"),
            _cell(m.get("temp_c"), "°C", 1),
            escape(note) if state != "up" else "",
        )
    counts = colored_counts(list(board.views.values()))
    more = f"  [bold]+{hidden} more[/]" if hidden else ""
    footer = Table.grid(expand=True)
    footer.add_column(no_wrap=True, overflow="ellipsis")
    footer.add_column(justify="right", no_wrap=True)
    footer.add_row(counts + more, "[dim]Ctrl-C quits[/]")
    return Group(title, table, footer)


def colored_counts(views: list[dict[str, Any]]) -> str:
    """Count nodes per state, worst first, each coloured like its state."""
    counts = Counter(v["state"] for v in views)
    order = sorted(counts, key=lambda s: STATE_ORDER.get(s, 9))
    parts = [f"[{STATE_STYLE.get(s, '')}]{counts[s]} {s}[/]" for s in order]
    return ", ".join(parts) if parts else "no nodes"


def _start_reader(monitor: str, token: str | None) -> queue.Queue[Message]:
    inbox: queue.Queue[Message] = queue.Queue()
    # A daemon thread: Ctrl-C must not wait for a blocked socket read.
    threading.Thread(
        target=read_forever, args=(monitor, token, inbox), name="pimon-watch", daemon=True
    ).start()
    return inbox


def run(monitor: str, token: str | None) -> int:
    """Watch until Ctrl-C (exit 0); exit 2 when the monitor cannot be reached at start."""
    from rich.console import Console

    console = Console(highlight=False)
    inbox = _start_reader(monitor, token)
    board = Board()
    try:
        first = inbox.get()
        if first.kind != "snapshot":
            why = first.data[0] if first.kind == "lost" else first.data
            if first.kind == "lost" and not why.startswith("cannot reach"):
                why = f"cannot reach monitor at {monitor}: {why}"
            print(f"pimon watch: {why}", file=sys.stderr)
            return 2
        board.apply(first, time.monotonic())
        if console.is_terminal:
            return _live(console, board, inbox, monitor)
        return _plain(board, inbox, monitor)
    except KeyboardInterrupt:
        return 0


def _drain(inbox: queue.Queue[Message], wait: float) -> list[Message]:
    try:
        messages = [inbox.get(timeout=wait)]
    except queue.Empty:
        return []
    while True:
        try:
            messages.append(inbox.get_nowait())
        except queue.Empty:
            return messages


def _live(console: Console, board: Board, inbox: queue.Queue[Message], monitor: str) -> int:
    from rich.live import Live

    with Live(console=console, screen=True, auto_refresh=False) as live:
        while True:
            width, height = console.size
            live.update(render(board, monitor, width, height, time.monotonic()), refresh=True)
            for message in _drain(inbox, REDRAW_S):
                if message.kind == "fatal":
                    live.stop()
                    print(f"pimon watch: {message.data}", file=sys.stderr)
                    return 2
                board.apply(message, time.monotonic())


def _plain(board: Board, inbox: queue.Queue[Message], monitor: str) -> int:
    print(f"pimon watch: {monitor}: {summary(list(board.views.values()))}", file=sys.stderr)
    while True:
        for message in _drain(inbox, 60.0):
            if message.kind == "fatal":
                print(f"pimon watch: {message.data}", file=sys.stderr)
                return 2
            was_connected = board.connected
            for line in board.apply(message, time.monotonic()):
                print(line, flush=True)
            if message.kind == "lost" and was_connected:
                print(f"pimon watch: reconnecting… ({board.trouble})", file=sys.stderr, flush=True)
            elif message.kind == "snapshot" and not was_connected:
                print(f"pimon watch: reconnected to {monitor}", file=sys.stderr, flush=True)
