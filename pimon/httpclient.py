"""Keep-alive HTTP/1.1 GET of a small body: one connection per endpoint, strict parsing.

Built on ``asyncio.BufferedProtocol`` with callbacks instead of a task per
request: the monitor polls thousands of agents a second, and every await, every
timer and every 256 KiB receive buffer (what a plain ``Protocol`` gets from
asyncio) shows in its CPU per check. All connections read into one shared
buffer, which is safe because the event loop calls ``get_buffer`` and
``buffer_updated`` back to back for one connection at a time. The answers are
parsed by ``pimon.httpwire``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pimon.httpwire import Response, Wire
from pimon.parse import split_host_port

READ_BYTES = 65536
DNS_TTL_S = 30.0  # like aiohttp's ttl_dns_cache
RESOLVER_THREADS = 4

AddrInfo = tuple[int, int, int, str, tuple[Any, ...]]
Resolver = Callable[..., Sequence[AddrInfo]]


class ConnectionClosed(ConnectionError):
    """The peer closed the connection before the answer was complete."""


class HostNotFound(OSError):
    """The host name does not resolve."""


Done = Callable[[Response | Exception], None]


class HttpClient:
    """Make endpoints that share a name cache, a receive buffer and a body limit."""

    def __init__(
        self,
        body_limit: int,
        user_agent: str = "pimon",
        dns_ttl: float = DNS_TTL_S,
        resolver: Resolver = socket.getaddrinfo,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.body_limit = body_limit
        self.user_agent = user_agent
        self.dns_ttl = dns_ttl
        self.resolver = resolver
        self.clock = clock
        self.scratch = memoryview(bytearray(READ_BYTES))
        self.endpoints: set[Endpoint] = set()
        self._names: dict[str, tuple[float, list[AddrInfo]]] = {}
        self._resolving: dict[str, asyncio.Future[list[AddrInfo]]] = {}
        # Own threads, so a dead DNS server cannot queue up the store's work in the default pool.
        self._threads: ThreadPoolExecutor | None = None

    def endpoint(self, address: str, path: str) -> Endpoint:
        """Return a new endpoint for GET ``path`` at ``address`` (``HOST:PORT``, ``[V6]:PORT``)."""
        endpoint = Endpoint(self, address, path)
        self.endpoints.add(endpoint)
        return endpoint

    async def get(self, address: str, path: str, budget_s: float) -> Response:
        """GET once over a fresh connection; raise on failure, TimeoutError after ``budget_s``."""
        future: asyncio.Future[Response | Exception] = asyncio.get_running_loop().create_future()

        def done(result: Response | Exception) -> None:
            if not future.done():
                future.set_result(result)

        endpoint = self.endpoint(address, path)
        try:
            async with asyncio.timeout(budget_s):
                endpoint.get(done)
                result = await future
        finally:
            endpoint.close()
        if isinstance(result, Exception):
            raise result
        return result

    async def resolve(self, host: str, port: int) -> list[AddrInfo]:
        """Return the addresses of ``host``, from a cache kept ``dns_ttl`` seconds."""
        now = self.clock()
        cached = self._names.get(host)
        if cached is None or cached[0] <= now:
            if _is_literal(host):  # numeric: libc answers at once, no thread needed
                infos = self._getaddrinfo(host, socket.AI_NUMERICHOST)
            else:
                infos = await asyncio.shield(self._lookup(host))
            cached = (now + self.dns_ttl, infos)
            self._names[host] = cached
        return [(f, t, p, c, (a[0], port, *a[2:])) for f, t, p, c, a in cached[1]]

    def _lookup(self, host: str) -> asyncio.Future[list[AddrInfo]]:
        # One lookup per name at a time: polls that time out leave it running for the next.
        pending = self._resolving.get(host)
        if pending is None:
            if self._threads is None:
                self._threads = ThreadPoolExecutor(RESOLVER_THREADS, "pimon-resolve")
            loop = asyncio.get_running_loop()
            pending = loop.run_in_executor(self._threads, self._getaddrinfo, host, 0)
            self._resolving[host] = pending
            pending.add_done_callback(lambda f: self._forget(host, f))
        return pending

    def _getaddrinfo(self, host: str, flags: int) -> list[AddrInfo]:
        try:
            return list(self.resolver(host, 0, type=socket.SOCK_STREAM, flags=flags))
        except socket.gaierror as e:
            raise HostNotFound(e.errno, e.strerror) from None

    def _forget(self, host: str, future: asyncio.Future[list[AddrInfo]]) -> None:
        self._resolving.pop(host, None)
        if not future.cancelled():
            future.exception()  # retrieved: every waiter may have timed out already

    async def connect(
        self, host: str, port: int, factory: Callable[[], Wire]
    ) -> tuple[asyncio.BaseTransport, Wire]:
        """Open a TCP connection to the first address of ``host`` that accepts."""
        loop = asyncio.get_running_loop()
        errors: list[OSError] = []
        for family, kind, proto, _, sockaddr in await self.resolve(host, port):
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                await loop.sock_connect(sock, sockaddr)
                return await loop.create_connection(factory, sock=sock)
            except OSError as e:
                sock.close()
                errors.append(e)
            except BaseException:
                sock.close()
                raise
        if not errors:
            raise HostNotFound(socket.EAI_NONAME, f"no address for {host}")
        # Refused only when every address refused: refused is definitive evidence.
        raise next((e for e in errors if not isinstance(e, ConnectionRefusedError)), errors[0])

    def close(self) -> None:
        """Close every endpoint and stop the resolver threads."""
        for endpoint in list(self.endpoints):
            endpoint.close()
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Endpoint:
    """One address: at most one connection and one GET in flight; the connection is kept."""

    def __init__(self, client: HttpClient, address: str, path: str) -> None:
        self.client = client
        self.address = address
        self.invalid: ValueError | None = None
        try:
            self.host, self.port = split_host_port(address, None)
        except ValueError as e:
            self.host, self.port, self.invalid = "", 0, e
        head = (
            f"GET {path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: {client.user_agent}\r\n"
            "Accept: application/json\r\nConnection: keep-alive\r\n\r\n"
        )
        self.request = head.encode("ascii", "replace")
        self.wire: Wire | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.done: Done | None = None
        self.reused = False

    def get(self, done: Done) -> None:
        """Send the GET; ``done`` is called once, with the response or the error."""
        if self.done is not None:
            raise RuntimeError(f"a GET to {self.address} is already in flight")
        self.done = done
        if self.invalid is not None:
            self._finish(self.invalid)
        elif self.wire is not None and self.wire.open:
            self.reused = True
            self.wire.send(self.request)
        else:
            self._connect()

    def abort(self, error: Exception) -> None:
        """Drop the connection, so a half-read answer is never reused; fail the GET."""
        self._drop()
        self._finish(error)

    def close(self) -> None:
        """Drop the connection without calling back."""
        self.done = None
        self._drop()
        self.client.endpoints.discard(self)

    def _connect(self) -> None:
        self.reused = False
        self.connecting = asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        try:
            _, wire = await self.client.connect(self.host, self.port, self._wire)
        except Exception as e:
            self.connecting = None
            self._finish(e)
            return
        self.connecting = None
        self.wire = wire
        wire.send(self.request)

    def _wire(self) -> Wire:
        return Wire(self, self.client.scratch, self.client.body_limit)

    def _drop(self) -> None:
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        wire, self.wire = self.wire, None
        if wire is not None:
            wire.close()

    def _finish(self, result: Response | Exception) -> None:
        done, self.done = self.done, None
        if done is not None:
            done(result)

    def answered(self, wire: Wire, response: Response, reusable: bool) -> None:
        """Take a complete answer from the connection."""
        if wire is not self.wire:
            return  # from a connection dropped already (timed out, closed)
        if not reusable:
            self._drop()
        self._finish(response)

    def failed(self, wire: Wire, error: Exception) -> None:
        """Take a protocol error: the connection cannot be trusted any more."""
        if wire is not self.wire:
            return
        self._drop()
        self._finish(error)

    def lost(self, wire: Wire, error: Exception | None) -> None:
        """Take the end of a connection."""
        if wire is not self.wire:
            return
        self.wire = None
        if self.done is None:
            return  # an idle connection closed: the next GET reconnects
        if self.reused and not wire.received:
            self._connect()  # the peer closed an idle connection as we sent: try a fresh one
            return
        self._finish(error or ConnectionClosed("connection closed by peer"))
