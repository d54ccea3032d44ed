"""Keep-alive HTTP/1.1 GET of a small body: one connection per endpoint, strict parsing.

Built on ``asyncio.BufferedProtocol`` with callbacks instead of a task per
request: the monitor polls thousands of agents a second, and every await, every
timer and every 256 KiB receive buffer (what a plain ``Protocol`` gets from
asyncio) shows in its CPU per check. All connections read into one shared
buffer, which is safe because the event loop calls ``get_buffer`` and
``buffer_updated`` back to back for one connection at a time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

from pimon.parse import split_host_port

MAX_HEAD_BYTES = 8192
READ_BYTES = 65536
DNS_TTL_S = 30.0  # like aiohttp's ttl_dns_cache
RESOLVER_THREADS = 4
HEX_DIGITS = b"0123456789abcdefABCDEF"
STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: [^\r\n]*)?")
# Field names are RFC 9110 tokens, right before the colon: no folding, no spaces, no bare LF.
HEADER = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\r\n]*")
HEADER_LINES = re.compile(rb"(?:\r\n[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\r\n]*)*")
# The fields that frame the body, found in one pass over the lowered header lines.
FRAMING = re.compile(rb"\r\n(content-length|transfer-encoding|connection):([^\r\n]*)")

AddrInfo = tuple[int, int, int, str, tuple[Any, ...]]
Resolver = Callable[..., Sequence[AddrInfo]]


class HttpError(Exception):
    """The peer answered, but not with an HTTP/1.x answer this client accepts."""


class BodyTooLarge(HttpError):
    """The answer's body is over the client's limit."""


class ConnectionClosed(ConnectionError):
    """The peer closed the connection before the answer was complete."""


class HostNotFound(OSError):
    """The host name does not resolve."""


@dataclass(slots=True)
class Response:
    """A complete answer: status and body."""

    status: int
    body: bytes


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


class Wire(asyncio.BufferedProtocol):
    """Parse HTTP/1.x answers on one TCP connection and hand them to the endpoint."""

    def __init__(self, endpoint: Endpoint, scratch: memoryview, limit: int) -> None:
        self.endpoint = endpoint
        self.scratch = scratch
        self.limit = limit
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.received = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0  # 0 until the head is parsed
        self.start = 0  # where the body starts in the buffer
        self.length = -1  # body bytes expected; -1: until the connection closes
        self.chunked = False
        self.keep_alive = True

    def send(self, request: bytes) -> None:
        """Write one request on this connection."""
        assert self.transport is not None
        self.received = False
        self.transport.write(request)

    @property
    def open(self) -> bool:
        """Tell whether a request can be written on this connection."""
        return self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        """Close the connection, dropping whatever is unread."""
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports do not subclass asyncio's.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.status and self.length < 0 and not self.chunked and exc is None:
            body = self.buffer[self.start :]
            self.endpoint.answered(self, Response(self.status, body), False)
            return
        self.endpoint.lost(self, exc)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.scratch

    def buffer_updated(self, nbytes: int) -> None:
        self.received = True
        data = self.scratch[:nbytes].tobytes()
        self.buffer = self.buffer + data if self.buffer else data
        if self.endpoint.done is None:
            self.endpoint.failed(self, HttpError("answer without a request"))
            return
        try:
            answer = self._parse()
        except HttpError as e:
            self.endpoint.failed(self, e)
            return
        if answer is not None:
            reusable = self.keep_alive and not self.buffer  # bytes past the answer: out of step
            self._reset()
            self.endpoint.answered(self, answer, reusable)

    def _parse(self) -> Response | None:
        buf = self.buffer
        if not self.status:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    raise HttpError(f"answer head over {MAX_HEAD_BYTES // 1024} KiB")
                return None
            self._head(buf, end)
            self.start = end + 4
        if self.chunked:
            return self._chunks()
        if self.length < 0:
            if len(buf) - self.start > self.limit:
                raise BodyTooLarge(f"body over {self.limit // 1024} KiB")
            return None  # the body ends when the connection does
        stop = self.start + self.length
        if len(buf) < stop:
            return None
        answer = Response(self.status, buf[self.start : stop])
        self.buffer = buf[stop:]
        return answer

    def _head(self, buf: bytes, end: int) -> None:
        eol = buf.find(b"\r\n", 0, end)
        eol = end if eol < 0 else eol
        status = STATUS_LINE.fullmatch(buf, 0, eol)
        if status is None:
            raise HttpError(f"not an HTTP/1.x answer: {buf[: min(eol, 40)]!r}")
        code = int(status.group(2))
        if code < 200:
            raise HttpError(f"unexpected interim answer HTTP {code}")
        if HEADER_LINES.fullmatch(buf, eol, end) is None:
            lines = buf[eol + 2 : end].split(b"\r\n")
            bad = next((line for line in lines if not HEADER.fullmatch(line)), b"")
            raise HttpError(f"malformed header line {bad[:40]!r}")
        length: int | None = None
        close, keep_alive = False, status.group(1) == b"1"
        for name, raw in FRAMING.findall(buf[eol:end].lower()):
            value = raw.strip()
            if name == b"content-length":
                if not value.isdigit() or (length is not None and int(value) != length):
                    raise HttpError(f"bad Content-Length {value[:20]!r}")
                length = int(value)
            elif name == b"transfer-encoding":
                if value != b"chunked" or self.chunked:
                    raise HttpError(f"unsupported Transfer-Encoding {value[:20]!r}")
                self.chunked, self.chunk_left, self.body = True, -1, bytearray()
            else:
                tokens = {t.strip() for t in value.split(b",")}
                close = close or b"close" in tokens
                keep_alive = keep_alive or b"keep-alive" in tokens
        if self.chunked and length is not None:
            raise HttpError("both Content-Length and chunked")  # ambiguous framing
        self.keep_alive = keep_alive and not close
        if code in (204, 304):
            length = 0
        if length is not None and length > self.limit:
            raise BodyTooLarge(f"body over {self.limit // 1024} KiB")
        self.length = -1 if length is None else length
        self.status = code

    def _chunks(self) -> Response | None:
        buf, pos = self.buffer, self.start
        try:
            while True:
                if self.chunk_left > 0:
                    take = min(self.chunk_left, len(buf) - pos)
                    self.body += buf[pos : pos + take]
                    pos += take
                    self.chunk_left -= take
                    if self.chunk_left:
                        return None
                elif self.chunk_left == 0:
                    if len(buf) - pos < 2:
                        return None
                    if buf[pos : pos + 2] != b"\r\n":
                        raise HttpError("chunk data not followed by CRLF")
                    pos += 2
                    self.chunk_left = -1
                else:
                    eol = buf.find(b"\r\n", pos)
                    if eol < 0:
                        if len(buf) - pos > 256:
                            raise HttpError("chunk size line too long")
                        return None
                    line, pos = buf[pos:eol], eol + 2
                    if self.length == -2:  # trailer section
                        if not line:
                            return Response(self.status, bytes(self.body))
                        continue
                    size = line.split(b";", 1)[0].strip()
                    if not size or len(size) > 8 or size.strip(HEX_DIGITS):
                        raise HttpError(f"bad chunk size {line[:20]!r}")
                    if int(size, 16) == 0:
                        self.length = -2  # the last chunk: trailers until an empty line
                        continue
                    if len(self.body) + int(size, 16) > self.limit:
                        raise BodyTooLarge(f"body over {self.limit // 1024} KiB")
                    self.chunk_left = int(size, 16)
        finally:
            self.buffer, self.start = buf[pos:], 0
