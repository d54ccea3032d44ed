"""``GET /v1/events``: Server-Sent Events of transitions and fresh node views."""

from __future__ import annotations

import asyncio
import contextlib
import time

import msgspec
from aiohttp import web

from pimon.api import MONITOR
from pimon.membership import Transition
from pimon.views import transition_view

KEEPALIVE_S = 15.0
BATCH_S = 0.25  # transitions go out within this
VIEWS_EVERY_S = 1.0  # a node's fresh view at most this often per stream


def frame(event: str, data: object) -> bytes:
    """Encode one SSE frame."""
    return b"event: " + event.encode() + b"\ndata: " + msgspec.json.encode(data) + b"\n\n"


async def events(request: web.Request) -> web.StreamResponse:
    """Stream transitions and node views until the client goes away."""
    monitor = request.app[MONITOR]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx would otherwise hold events back
        }
    )
    await response.prepare(request)
    queue = monitor.events.subscribe(maxsize=1000)
    watch = monitor.events.watch()
    try:
        await response.write(b"retry: 2000\n" + frame("hello", {"now": time.time()}))
        last_write = last_views = time.monotonic()
        while not monitor.events.closed:
            transitions = _drain(queue)
            fresh: set[str] = set()
            removed: set[str] = set()
            if time.monotonic() - last_views >= VIEWS_EVERY_S:
                fresh, removed = watch.take()
                last_views = time.monotonic()
            else:
                watch.wake.clear()
            chunks = [frame("transition", transition_view(t)) for t in transitions]
            now = time.time()
            for name in sorted(fresh):
                node = monitor.membership.nodes.get(name)
                if node is not None:
                    chunks.append(frame("node", monitor.view(node, now)))
            chunks += [frame("removed", {"name": name}) for name in sorted(removed)]
            if chunks:
                await response.write(b"".join(chunks))
                last_write = time.monotonic()
            elif time.monotonic() - last_write >= KEEPALIVE_S:
                await response.write(b": keepalive\n\n")
                last_write = time.monotonic()
            pending_views = bool(watch.fresh or watch.removed)
            await _wait(watch.wake, VIEWS_EVERY_S if pending_views else KEEPALIVE_S)
            await asyncio.sleep(BATCH_S)  # gather a burst of changes into one write
    except ConnectionResetError:
        pass
    finally:
        monitor.events.unsubscribe(queue)
        monitor.events.unwatch(watch)
    return response


def _drain(queue: asyncio.Queue[Transition]) -> list[Transition]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


async def _wait(wake: asyncio.Event, limit_s: float) -> None:
    if wake.is_set():
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(limit_s):
            await wake.wait()
