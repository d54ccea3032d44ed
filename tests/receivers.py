"""A real HTTP receiver on 127.0.0.1 port 0 that records what notifiers send it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web


@dataclass
class Request:
    """One request the receiver got."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        """Return the body decoded as JSON."""
        return json.loads(self.body)


class Receiver:
    """A real HTTP server that records requests; answers ``status`` after ``delay`` seconds."""

    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        self.status = status
        self.delay = delay
        self.requests: list[Request] = []
        self._runner: web.AppRunner | None = None
        self._arrived = asyncio.Event()
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(
            Request(
                request.method,
                request.path,
                dict(request.query),
                dict(request.headers),
                body,
                time.monotonic(),
            )
        )
        self._arrived.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=self.status, text="ok" if self.status < 300 else "broken")

    async def start(self) -> str:
        """Listen on a free loopback port and return the base URL."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def wait(self, count: int) -> list[Request]:
        """Wait (at most 10 s) until ``count`` requests have arrived; return them."""
        async with asyncio.timeout(10):
            while len(self.requests) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return list(self.requests)

    async def close(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()

    def payloads(self, path: str | None = None) -> list[Any]:
        """Return the JSON bodies received (on ``path`` only, if given)."""
        return [r.json for r in list(self.requests) if path is None or r.path == path]


class ThreadedReceiver(Receiver):
    """A Receiver on its own event loop thread, for tests that are not async."""

    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        super().__init__(status, delay)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _shutdown(self) -> None:
        await self.close()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in others:
            t.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def run(self) -> str:
        """Start the loop thread and the server; return the base URL."""
        self._thread.start()
        return asyncio.run_coroutine_threadsafe(self.start(), self.loop).result(10)

    def stop(self) -> None:
        """Stop the server, cancel handlers still waiting, and end the thread."""
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
