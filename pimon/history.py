"""``pimon history``: transitions with reasons, each outage's duration, uptime per window."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from pimon.client import ApiError, MonitorUnreachable, request
from pimon.report import STATE_STYLE, duration

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

PAGE_SIZE = 1000
MAX_PAGES = 20  # 20,000 transitions: far more than anyone reads; the rest is left out
OUTAGE_STATES = frozenset({"down", "suspect"})
# "left" ends an outage too: only a reachable agent can announce its own shutdown.
RECOVERED_STATES = frozenset({"up", "degraded", "left"})
WINDOWS = ("1h", "24h", "7d", "30d")


@dataclass(frozen=True, slots=True)
class Outage:
    """A node's time down or suspect, from the first bad transition to its recovery."""

    node: str
    start: float
    end: float | None  # None: still going on
    duration_s: float
    reason: str  # why it began; empty when it began before the window
    began_before: bool  # it began before the window, so it lasted at least duration_s
    start_id: int | None
    end_id: int | None


def find_outages(oldest_first: Sequence[dict[str, Any]], since: float, now: float) -> list[Outage]:
    """Pair each move into down/suspect with the node's next recovery, oldest first."""
    open_: dict[str, tuple[float, str, bool, int | None]] = {}
    seen: set[str] = set()
    found: list[Outage] = []
    for t in oldest_first:
        node, at = t["node"], float(t["at"])
        if node not in seen:
            seen.add(node)
            if t["old"] in OUTAGE_STATES:  # already out when the window opened
                open_[node] = (since, "", True, None)
        if t["new"] in OUTAGE_STATES and node not in open_:
            open_[node] = (at, t["reason"], False, t.get("id"))
        elif t["new"] in RECOVERED_STATES and node in open_:
            start, reason, before, start_id = open_.pop(node)
            found.append(Outage(node, start, at, at - start, reason, before, start_id, t.get("id")))
    for node, (start, reason, before, start_id) in open_.items():
        found.append(
            Outage(node, start, None, max(0.0, now - start), reason, before, start_id, None)
        )
    return sorted(found, key=lambda o: o.start)


def fetch_transitions(
    monitor: str, token: str | None, node: str | None, since: float
) -> tuple[list[dict[str, Any]], bool]:
    """Return the transitions since ``since``, newest first, and whether some were left out."""
    params: dict[str, str] = {"since": f"{since:.3f}", "limit": str(PAGE_SIZE)}
    if node:
        params["node"] = node
    out: list[dict[str, Any]] = []
    for _ in range(MAX_PAGES):
        page = request(monitor, f"/v1/history?{urlencode(params)}", token=token)
        out.extend(page["transitions"])
        if page.get("next") is None:
            return out, False
        params["before"] = str(page["next"])
    return out, True


def percent(fraction: float | None) -> str:
    """Format an uptime fraction; never round a bad one up to 100 %."""
    if fraction is None:
        return "-"
    if fraction >= 1.0:
        return "100%"
    value = fraction * 100
    digits = 2 if value >= 99 else 1
    scale = 10**digits
    return f"{int(value * scale) / scale:.{digits}f}%"


def uptime_style(fraction: float | None) -> str:
    """Colour an uptime: green at three nines, yellow at two, red below."""
    if fraction is None:
        return "dim"
    return "green" if fraction >= 0.999 else "yellow" if fraction >= 0.99 else "red"


def outage_cells(outages: Iterable[Outage]) -> dict[int, str]:
    """Return the OUTAGE cell per transition id: on the recovery, or on the start if ongoing."""
    cells: dict[int, str] = {}
    for o in outages:
        text = ("≥" if o.began_before else "") + duration(o.duration_s)
        if o.end_id is not None:
            cells[o.end_id] = text
        elif o.start_id is not None:
            cells[o.start_id] = f"ongoing {text}"
    return cells


def report(
    transitions: list[dict[str, Any]],
    views: list[dict[str, Any]],
    *,
    node: str | None,
    since: float,
    now: float,
    truncated: bool,
) -> dict[str, Any]:
    """Build the machine-readable answer: transitions, outages and uptime per node."""
    outages = find_outages(list(reversed(transitions)), since, now)
    names = {v["name"] for v in views} | {t["node"] for t in transitions}
    if node is not None:
        names &= {node}
    by_name = {v["name"]: v for v in views}
    nodes = []
    for name in sorted(names):
        view = by_name.get(name)
        own = [o for o in outages if o.node == name]
        nodes.append(
            {
                "name": name,
                "state": view["state"] if view else None,
                "uptime": {w: (view or {}).get(f"uptime_{w}") for w in WINDOWS},
                "outages": len(own),
                "downtime_s": sum(o.duration_s for o in own),
            }
        )
    return {
        "node": node,
        "since": since,
        "now": now,
        "truncated": truncated,
        "transitions": transitions,
        "outages": [asdict(o) for o in outages],
        "nodes": nodes,
    }


def plural(count: int, noun: str) -> str:
    """Return ``1 outage``, ``2 outages``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _state(state: str, color: bool) -> str:
    return f"[{STATE_STYLE.get(state, '')}]{state}[/]" if color else state


def render(answer: dict[str, Any], console: Console) -> list[RenderableType]:
    """Lay out the transitions table, the per-node uptime table and a summary line."""
    from rich.markup import escape
    from rich.table import Table

    color = console.is_terminal
    arrow = "→" if console.encoding.lower().startswith("utf") else "->"
    outages = [Outage(**o) for o in answer["outages"]]
    cells = outage_cells(outages)
    out: list[RenderableType] = []
    changes = Table(box=None, header_style="bold", pad_edge=False)
    for header in ("WHEN", "NODE", "CHANGE", "OUTAGE"):
        changes.add_column(header, no_wrap=True)
    changes.add_column("REASON", overflow="fold")
    for t in answer["transitions"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t["at"]))
        change = f"{_state(t['old'], color)} {arrow} {_state(t['new'], color)}"
        outage = cells.get(t.get("id", -1), "")
        changes.add_row(when, escape(t["node"]), change, outage, escape(t["reason"]))
    since = time.strftime("%Y-%m-%d %H:%M", time.localtime(answer["since"]))
    who = answer["node"] or "any node"
    if answer["transitions"]:
        out.append(changes)
    else:
        out.append(f"no state changes of {escape(who)} since {since}")
    uptime = Table(box=None, header_style="bold", pad_edge=False)
    for header in ("NODE", "STATE", *(w.upper() for w in WINDOWS), "OUTAGES", "DOWNTIME"):
        uptime.add_column(
            header, no_wrap=True, justify="left" if header in ("NODE", "STATE") else "right"
        )
    for n in answer["nodes"]:
        state = _state(n["state"], color) if n["state"] else "gone"
        cells_up = [
            f"[{uptime_style(n['uptime'][w])}]{percent(n['uptime'][w])}[/]"
            if color
            else percent(n["uptime"][w])
            for w in WINDOWS
        ]
        downtime = duration(n["downtime_s"]) if n["outages"] else "-"
        uptime.add_row(escape(n["name"]), state, *cells_up, str(n["outages"]), downtime)
    if answer["nodes"]:
        out.extend(["", uptime])
    total = sum(o.duration_s for o in outages)
    line = (
        f"{plural(len(answer['transitions']), 'state change')} of {escape(who)} since {since}; "
        f"{plural(len(outages), 'outage')}" + (f", {duration(total)} in all" if outages else "")
    )
    if answer["truncated"]:
        line += f"; only the newest {len(answer['transitions'])} shown: narrow --since or NODE"
    out.extend(["", line])
    return out


def run(monitor: str, token: str | None, *, node: str | None, since_s: float, as_json: bool) -> int:
    """Print the history; exit 0, 1 when NODE has neither view nor history, 2 on monitor trouble."""
    try:
        listing = request(monitor, "/v1/nodes", token=token)
        now = float(listing.get("now") or time.time())  # the monitor's clock, not ours
        since = now - since_s
        transitions, truncated = fetch_transitions(monitor, token, node, since)
    except (MonitorUnreachable, ApiError) as e:
        print(f"pimon history: {e}", file=sys.stderr)
        return 2
    answer = report(
        transitions, listing["nodes"], node=node, since=since, now=now, truncated=truncated
    )
    if node is not None and not answer["nodes"]:
        print(f"pimon history: {monitor} knows no node named {node!r}", file=sys.stderr)
        return 1
    if as_json:
        json.dump(answer, sys.stdout, indent=2)
        print()
        return 0
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(width=200, highlight=False)  # whole lines for grep and logs
    for part in render(answer, console):
        console.print(part)
    return 0
