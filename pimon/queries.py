"""History and metric-sample routes: parse the query, read off the event loop."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from aiohttp import web

from pimon import parse
from pimon.api import MONITOR, ApiError, json_response
from pimon.views import transition_view

if TYPE_CHECKING:
    from pimon.store import Store

MAX_LIMIT = 1000


def moment(text: str | None, now: float, name: str) -> float | None:
    """Parse a unix time or a relative age like ``24h`` (meaning 24 h ago)."""
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        try:
            return now - parse.duration(text)
        except ValueError:
            message = f"{name}: expected unix seconds or an age like 24h, got {text!r}"
            raise ApiError(400, message) from None
    if value < 0:
        raise ApiError(400, f"{name}: must be >= 0")
    return value


def whole(text: str | None, name: str, default: int, high: int) -> int:
    """Parse a positive whole number query parameter."""
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"{name}: expected a whole number, got {text!r}") from None
    if not 1 <= value <= high:
        raise ApiError(400, f"{name}: must be between 1 and {high}")
    return value


def store_of(request: web.Request) -> Store:
    """Return the monitor's store or answer 503."""
    store = request.app[MONITOR].store
    if store is None:
        raise ApiError(503, "this monitor keeps no history")
    return store


async def history(request: web.Request) -> web.Response:
    """Return transitions newest first, paged with ``before``."""
    q = request.query
    now = time.time()
    node = q.get("node") or None
    since = moment(q.get("since"), now, "since")
    until = moment(q.get("until"), now, "until")
    limit = whole(q.get("limit"), "limit", 100, MAX_LIMIT)
    before = whole(q.get("before"), "before", 0, 2**62) if q.get("before") else None
    store = store_of(request)
    rows = await asyncio.to_thread(store.transitions, node, since, until, limit, before)
    items = [{"id": i, **transition_view(t)} for i, t in rows]
    return json_response(
        {"transitions": items, "next": rows[-1][0] if len(rows) == limit else None}
    )


async def samples(request: web.Request) -> web.Response:
    """Return a node's metric samples, at the resolution that covers ``since``."""
    name = request.match_info["name"]
    q = request.query
    now = time.time()
    # "is None", not "or": since=0 asks for everything and must not mean "an hour ago".
    since = moment(q.get("since"), now, "since")
    since = now - 3600 if since is None else since
    until = moment(q.get("until"), now, "until")
    until = now if until is None else until
    if since >= until:
        raise ApiError(400, "since must be before until")
    step = None
    if q.get("step"):
        try:
            step = parse.duration(q["step"])
        except ValueError as e:
            raise ApiError(400, f"step: {e}") from None
    store = store_of(request)
    rows = await asyncio.to_thread(store.samples, name, since, until, step)
    age = now - since
    kept = store.retention
    resolution = "raw" if age <= kept.raw_s else "1m" if age <= kept.minute_s else "15m"
    return json_response(
        {
            "node": name,
            "resolution": resolution,
            "step": step,
            "since": since,
            "until": until,
            "samples": rows,
        }
    )
