"""Poll pull-mode nodes: one task and one keep-alive connection per node."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import msgspec

from pimon.membership import Failure
from pimon.wire import MAX_BODY_BYTES, Heartbeat

log = logging.getLogger("pimon.poller")

_decoder = msgspec.json.Decoder(Heartbeat)


@dataclass(slots=True)
class PollResult:
    """What one poll of one node produced: a heartbeat or a failure."""

    heartbeat: Heartbeat | None
    failure: Failure | None
    detail: str
    rtt_ms: float
    received_at: float


def decode(body: bytes) -> Heartbeat:
    """Decode and validate a heartbeat body; raise ValueError naming the problem."""
    if len(body) > MAX_BODY_BYTES:
        raise ValueError(f"body over {MAX_BODY_BYTES // 1024} KiB")
    try:
        return _decoder.decode(body)
    except msgspec.ValidationError as e:
        raise ValueError(str(e)) from None
    except msgspec.DecodeError as e:
        raise ValueError(f"invalid JSON: {e}") from None


def classify(exc: BaseException, host: str) -> tuple[Failure, str]:
    """Turn a client exception into failure evidence and a human reason."""
    if isinstance(exc, TimeoutError):
        return Failure.TIMEOUT, "timeout"
    dns_error = getattr(aiohttp, "ClientConnectorDNSError", None)
    if dns_error is not None and isinstance(exc, dns_error):
        return Failure.UNRESOLVABLE, f"host not found: {host}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        if isinstance(os_error, ConnectionRefusedError):
            return Failure.REFUSED, "connection refused: agent not running"
        if "Name or service not known" in str(exc) or "nodename nor servname" in str(exc):
            return Failure.UNRESOLVABLE, f"host not found: {host}"
        return Failure.ERROR, f"cannot connect: {os_error.strerror or os_error}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return Failure.ERROR, "connection closed by agent"
    return Failure.ERROR, f"{type(exc).__name__}: {exc}".rstrip(": ")


async def poll_once(session: aiohttp.ClientSession, address: str, budget_s: float) -> PollResult:
    """Ask one agent for a heartbeat."""
    url = f"http://{address}/v1/heartbeat"
    start = time.perf_counter()
    try:
        async with asyncio.timeout(budget_s):
            async with session.get(url, allow_redirects=False) as resp:
                body = await resp.content.read(MAX_BODY_BYTES + 1)
                status = resp.status
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        failure, detail = classify(e, address.rpartition(":")[0])
        return PollResult(None, failure, detail, _ms(start), time.time())
    rtt = _ms(start)
    if status != 200:
        return PollResult(None, Failure.BAD, f"bad heartbeat: HTTP {status}", rtt, time.time())
    try:
        hb = decode(body)
    except ValueError as e:
        return PollResult(None, Failure.BAD, f"bad heartbeat: {e}", rtt, time.time())
    return PollResult(hb, None, "", rtt, time.time())


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


class Poller:
    """Run one polling task per pull node, each on its own schedule."""

    def __init__(self, interval: float, deliver: Callable[[str, PollResult], None]) -> None:
        self.interval = interval
        # Below the interval, so a hung node never makes its own polls pile up.
        self.timeout = max(0.05, min(interval * 0.8, 5.0))
        self.deliver = deliver
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.session: aiohttp.ClientSession | None = None
        self.polls = 0
        self.errors = 0

    async def start(self) -> None:
        """Open the shared client session."""
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=1, ttl_dns_cache=30)
        self.session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": "pimon-monitor"},
            raise_for_status=False,
        )

    def watch(self, name: str, address: str) -> None:
        """Start (or restart, at a new address) polling one node."""
        self.unwatch(name)
        self.tasks[name] = asyncio.create_task(self._loop(name, address), name=f"poll {name}")

    def unwatch(self, name: str) -> None:
        """Stop polling one node."""
        task = self.tasks.pop(name, None)
        if task is not None:
            task.cancel()

    async def _loop(self, name: str, address: str) -> None:
        assert self.session is not None
        loop = asyncio.get_running_loop()
        # Spread the first polls so a thousand nodes are not asked in one burst.
        next_at = loop.time() + random.uniform(0, min(self.interval, 1.0))
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += self.interval
            result = await poll_once(self.session, address, self.timeout)
            self.polls += 1
            if result.failure is not None:
                self.errors += 1
            self.deliver(name, result)
            # A slow poll skips slots instead of bursting to catch up.
            next_at = max(next_at, loop.time())

    async def close(self) -> None:
        """Stop every task and close the session."""
        for name in list(self.tasks):
            self.unwatch(name)
        await asyncio.sleep(0)
        if self.session is not None:
            await self.session.close()
