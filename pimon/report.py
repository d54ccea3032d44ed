"""Render node views as terminal tables: ``pimon status``."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pimon.client import ApiError, MonitorUnreachable, request

if TYPE_CHECKING:
    from rich.table import Table

STATE_STYLE = {
    "up": "green",
    "degraded": "yellow",
    "suspect": "dark_orange",
    "down": "bold red",
    "left": "dim",
    "unknown": "dim cyan",
}
# Worst first, so trouble sorts to the top.
STATE_ORDER = {"down": 0, "suspect": 1, "degraded": 2, "unknown": 3, "left": 4, "up": 5}
BAD_STATES = frozenset({"down", "suspect"})


def ago(then: float | None, now: float) -> str:
    """Format how long ago ``then`` was: ``3s``, ``5m``, ``2h``, ``4d``."""
    if then is None:
        return "never"
    return duration(max(0.0, now - then))


def duration(seconds: float) -> str:
    """Format a duration compactly."""
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"
    return f"{seconds // 86400:.0f}d{seconds % 86400 // 3600:02.0f}h"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def row(view: dict[str, Any], now: float) -> list[str]:
    """Return the table cells of one node view."""
    m = view.get("metrics") or {}
    rtt = view.get("rtt_ms")
    temp = m.get("temp_c")
    uptime = m.get("uptime_s")
    return [
        view["name"],
        view["state"],
        ago(view.get("since"), now),
        ago(view.get("last_seen"), now),
        "-" if rtt is None else f"{rtt:.1f}ms",
        _pct(m.get("cpu_percent")),
        _pct(m.get("mem_percent")),
        _pct(m.get("disk_percent")),
        "-" if temp is None else f"{temp:.1f}°C",
        "-" if uptime is None else duration(uptime),
        "; ".join(view.get("problems") or []) or (view.get("reason") or "")
        if view["state"] != "up"
        else "",
    ]


HEADERS = ("NODE", "STATE", "SINCE", "SEEN", "RTT", "CPU", "MEM", "DISK", "TEMP", "UPTIME", "NOTE")


def sort_views(views: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sort worst state first, then by name."""
    return sorted(views, key=lambda v: (STATE_ORDER.get(v["state"], 9), v["name"]))


def table(views: Sequence[dict[str, Any]], now: float, title: str | None = None) -> Table:
    """Build a rich table of node views, coloured by state with the state in words."""
    from rich.table import Table

    t = Table(title=title, header_style="bold", expand=False, pad_edge=False)
    rows = [row(v, now) for v in sort_views(views)]
    # Name and state never get truncated; the free-text note gives way first.
    widest = {0: max((len(r[0]) for r in rows), default=4), 1: 8}
    for i, h in enumerate(HEADERS):
        if h == "NOTE" and not any(r[-1] for r in rows):
            continue
        t.add_column(
            h,
            no_wrap=True,
            overflow="ellipsis",
            min_width=widest.get(i),
            justify="right" if h in ("RTT", "CPU", "MEM", "DISK", "TEMP") else "left",
        )
    for cells in rows:
        style = STATE_STYLE.get(cells[1], "")
        shown = cells if len(t.columns) == len(HEADERS) else cells[:-1]
        t.add_row(shown[0], f"[{style}]{shown[1]}[/]", *shown[2:])
    return t


def summary(views: Sequence[dict[str, Any]]) -> str:
    """Count nodes per state, worst first: ``4 up, 1 down``."""
    counts: dict[str, int] = {}
    for v in views:
        counts[v["state"]] = counts.get(v["state"], 0) + 1
    parts = [f"{counts[s]} {s}" for s in sorted(counts, key=lambda s: STATE_ORDER.get(s, 9))]
    return ", ".join(parts) if parts else "no nodes"


def exit_code(views: Sequence[dict[str, Any]]) -> int:
    """Return 1 when any node is down or suspect, else 0."""
    return 1 if any(v["state"] in BAD_STATES for v in views) else 0


def status(monitor: str, token: str | None, *, as_json: bool) -> int:
    """Print the cluster's state; exit 0 all up, 1 trouble, 2 monitor unreachable."""
    try:
        answer = request(monitor, "/v1/nodes", token=token)
    except (MonitorUnreachable, ApiError) as e:
        print(f"pimon status: {e}", file=sys.stderr)
        return 2
    views = answer["nodes"]
    if as_json:
        sys.stdout.write(pretty_json(views) + "\n")
        return exit_code(views)
    if not views:
        print(f"no nodes are watched by {monitor}")
        return 0
    tty = sys.stdout.isatty()
    width = os.get_terminal_size().columns if tty else 160
    colour = tty and "NO_COLOR" not in os.environ
    lines = plain_table(views, answer.get("now") or time.time(), width=width, colour=colour)
    sys.stdout.write("\n".join([*lines, summary(views)]) + "\n")
    return exit_code(views)


def pretty_json(data: Any) -> str:
    """Indent JSON quickly: msgspec when installed (json's indenting encoder is pure Python)."""
    try:
        import msgspec
    except ModuleNotFoundError:
        return json.dumps(data)
    return msgspec.json.format(msgspec.json.encode(data), indent=2).decode()


ANSI = {
    "up": "32",
    "degraded": "33",
    "suspect": "38;5;208",
    "down": "1;31",
    "left": "2",
    "unknown": "2;36",
}
NUMERIC = frozenset({"RTT", "CPU", "MEM", "DISK", "TEMP"})


def plain_table(
    views: Sequence[dict[str, Any]], now: float, *, width: int, colour: bool
) -> list[str]:
    """Lay node views out as aligned text; only the state word is coloured."""
    # rich measures and crops every cell: ~1.8 s for 1,000 nodes, far too slow here.
    rows = [row(v, now) for v in sort_views(views)]
    headers = list(HEADERS)
    if not any(r[-1] for r in rows):
        headers.pop()
        rows = [r[:-1] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    if headers[-1] == "NOTE":
        room = width - sum(widths[:-1]) - 2 * (len(widths) - 1)
        widths[-1] = max(4, min(widths[-1], room))
    lines = []
    for cells in [headers, *rows]:
        out = []
        for i, (cell, w) in enumerate(zip(cells, widths, strict=True)):
            text = cell if len(cell) <= w else cell[: w - 1] + "…"
            text = text.rjust(w) if headers[i] in NUMERIC else text.ljust(w)
            if colour and i == 1 and cells is not headers:
                text = f"\x1b[{ANSI.get(cell, '0')}m{text}\x1b[0m"
            out.append(text)
        lines.append("  ".join(out).rstrip())
    if colour:
        lines[0] = f"\x1b[1m{lines[0]}\x1b[0m"
    return lines
