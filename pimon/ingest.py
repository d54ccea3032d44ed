"""Take pushed heartbeats over HTTP on a lean path; hand every other request to aiohttp.

aiohttp spends ~0.1 ms of CPU per request building request and response
objects: at 5,000 pushing nodes a second that is most of the monitor's core.
An agent's push is always one shape of request - ``POST /v1/heartbeat`` with a
Content-Length body on a keep-alive connection - so this protocol answers that
shape itself and passes the connection, with its unanswered bytes, to aiohttp
at the first request of any other shape (another route, a chunked body,
``Expect``, HTTP/1.0, an oversized or odd head). The two paths answer a
heartbeat through the same ``accept_push``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast

import msgspec
from aiohttp import web

from pimon import __version__
from pimon.auth import WRITE_TOKEN_NEEDED, may_write
from pimon.monitor import Monitor
from pimon.poller import decode
from pimon.wire import MAX_BODY_BYTES, error_body

log = logging.getLogger("pimon.ingest")

REQUEST_LINE = b"POST /v1/heartbeat HTTP/1.1"
MAX_HEAD_BYTES = 8192  # aiohttp's own limit; a longer head is aiohttp's to refuse
MAX_HEADERS = 32  # an agent sends 5; aiohttp judges a head with more (it refuses over 128)
# A keep-alive connection with no request for this long is closed (aiohttp's default is 75 s).
IDLE_S = 75.0
# Agents that start together (a rack powering up) connect together: 128 pending
# connections overflow and their SYNs are retried for seconds.
BACKLOG = 4096
# Headers that change how the body is framed or answered: aiohttp handles those.
HANDED_OFF = frozenset({b"transfer-encoding", b"expect", b"upgrade"})
# Headers the lean path reads: a request repeating one is aiohttp's to judge.
SINGLE = frozenset({b"content-length", b"authorization", b"connection", b"host"})
# RFC 9110 field line: a token, a colon, then visible bytes, obs-text and inner SP/HTAB.
HEADER_RE = re.compile(
    rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*"
    rb"((?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?)[ \t]*"
)


def accept_push(
    monitor: Monitor, authorization: str | None, body: bytes, now: float
) -> tuple[int, dict[str, Any]]:
    """Authorize, decode and apply one pushed heartbeat; return the HTTP status and answer."""
    if not may_write(authorization, monitor.config.token):
        monitor.stats.heartbeats_rejected += 1
        return 401, error_body(401, WRITE_TOKEN_NEEDED)
    try:
        hb = decode(body)
    except ValueError as e:
        monitor.stats.heartbeats_rejected += 1
        status = 413 if len(body) > MAX_BODY_BYTES else 400
        return status, error_body(status, f"bad heartbeat: {e}")
    result = monitor.receive(hb, now)
    if result.status >= 400:
        return result.status, error_body(result.status, result.message)
    answer: dict[str, Any] = {"accepted": not result.message, "node": hb.name}
    if result.message:
        answer["note"] = result.message
    return 202, answer


def parse_head(head: bytes) -> tuple[int, str | None, bool] | None:
    """Return (body length, Authorization, close) of a plain heartbeat POST head, else None."""
    # Anything llhttp might read differently (odd bytes, repeats, no Host) goes to
    # aiohttp whole, so a proxy in front and the two paths never disagree on a request.
    if len(head) > MAX_HEAD_BYTES:
        return None
    lines = head.split(b"\r\n")
    if lines[0] != REQUEST_LINE or len(lines) > MAX_HEADERS:
        return None
    seen: dict[bytes, bytes] = {}
    for line in lines[1:]:
        match = HEADER_RE.fullmatch(line)
        if match is None:
            return None
        name = match[1].lower()
        if name in SINGLE:
            if name in seen:
                return None
            seen[name] = match[2]
        elif name in HANDED_OFF:
            return None
    length = seen.get(b"content-length", b"")
    if b"host" not in seen or not length.isdigit() or int(length) > MAX_BODY_BYTES:
        return None  # no length, or too long: aiohttp answers 400/413 in the error shape
    authorization = seen.get(b"authorization")
    return (
        int(length),
        None if authorization is None else authorization.decode("latin-1"),
        b"close" in seen.get(b"connection", b"").lower(),
    )


class Ingest:
    """The connections on the lean path, and how each is answered or handed off."""

    def __init__(self, monitor: Monitor, fallback: Callable[[], asyncio.Protocol]) -> None:
        self.monitor = monitor
        self.fallback = fallback
        self.connections: set[HeartbeatProtocol] = set()
        self._date = b""
        self._date_second = -1
        self._sweeper: asyncio.TimerHandle | None = None

    def protocol(self) -> HeartbeatProtocol:
        """Make the protocol for one new connection."""
        return HeartbeatProtocol(self)

    def answer(self, authorization: str | None, body: bytes, close: bool) -> bytes:
        """Return the whole HTTP response to one heartbeat POST."""
        now = time.time()
        try:
            status, payload = accept_push(self.monitor, authorization, body, now)
        except Exception:  # a bug must cost one answer, not the connection or the daemon
            log.exception("POST /v1/heartbeat failed")
            status, payload = 500, error_body(500, "internal error; see the monitor log")
        content = msgspec.json.encode(payload)
        second = int(now)
        if second != self._date_second:
            self._date_second = second
            self._date = f"Date: {formatdate(second, usegmt=True)}\r\n".encode()
        return b"".join(
            (
                STATUS_LINES.get(status) or status_line(status),
                self._date,
                b"Connection: close\r\n" if close else b"",
                b"Content-Type: application/json\r\nContent-Length: ",
                str(len(content)).encode(),
                b"\r\n\r\n",
                content,
            )
        )

    def start(self) -> None:
        """Start closing idle connections."""
        self._sweeper = asyncio.get_running_loop().call_later(IDLE_S, self.sweep)

    def sweep(self) -> None:
        """Close connections that sent nothing since the last sweep."""
        for conn in [c for c in self.connections if not c.active]:
            conn.close()
        for conn in self.connections:
            conn.active = False
        self.start()

    def close(self) -> None:
        """Stop sweeping and close every connection still on the lean path."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            conn.close()


def status_line(status: int) -> bytes:
    """Return the HTTP/1.1 status line for ``status``."""
    return (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nServer: pimon/{__version__}\r\n".encode()
    )


STATUS_LINES = {s: status_line(s) for s in (202, 400, 401, 403, 409, 413, 500)}


class HeartbeatProtocol(asyncio.Protocol):
    """One connection: answer heartbeat POSTs until a request of another shape arrives."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.transport: asyncio.Transport | None = None
        self.pending = b""
        self.active = True
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Track the new connection."""
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.ingest.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection."""
        self.ingest.connections.discard(self)

    def pause_writing(self) -> None:
        """Stop reading and answering while a client does not read its answers."""
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        """Answer what is pending and read again once the answers drained."""
        self.paused = False
        if self.transport is not None:
            self.transport.resume_reading()
            self.serve()

    def data_received(self, data: bytes) -> None:
        """Take bytes from the client and answer what they complete."""
        self.active = True
        self.pending = self.pending + data if self.pending else data
        self.serve()

    def serve(self) -> None:
        """Answer every complete heartbeat POST pending, in order, while the client reads."""
        transport = self.transport
        assert transport is not None
        buffer, start = self.pending, 0
        # Stopping when paused bounds the answers buffered for a client that does not
        # read, and means a hand-off never happens with the transport paused.
        while not self.paused:
            head_end = buffer.find(b"\r\n\r\n", start)
            if head_end < 0:
                if len(buffer) - start > MAX_HEAD_BYTES:
                    return self.hand_off(buffer[start:])
                break
            request = parse_head(buffer[start:head_end])
            if request is None:
                return self.hand_off(buffer[start:])
            length, authorization, close = request
            body_end = head_end + 4 + length
            if body_end > len(buffer):
                break
            # Writing may pause the transport, which ends the loop.
            transport.write(
                self.ingest.answer(authorization, buffer[head_end + 4 : body_end], close)
            )
            start = body_end
            if close:
                self.pending = b""
                transport.close()
                return
        self.pending = buffer[start:]

    def hand_off(self, unanswered: bytes) -> None:
        """Give the connection and its unanswered bytes to aiohttp for good."""
        transport = self.transport
        assert transport is not None
        self.ingest.connections.discard(self)
        self.ingest.monitor.stats.http_handoffs += 1
        self.pending = b""
        handler = self.ingest.fallback()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        handler.data_received(unanswered)

    def close(self) -> None:
        """Close the connection; drop the answers a client never read."""
        if self.transport is None:
            return
        if self.transport.get_write_buffer_size():
            self.transport.abort()
        else:
            self.transport.close()


class IngestSite(web.TCPSite):
    """A TCP site whose connections start on the lean heartbeat path."""

    def __init__(self, runner: web.AppRunner, monitor: Monitor, host: str, port: int) -> None:
        super().__init__(runner, host, port, backlog=BACKLOG)
        assert runner.server is not None
        self.ingest = Ingest(monitor, runner.server)

    async def start(self) -> None:
        """Listen, with every connection starting on the lean path."""
        await web.BaseSite.start(self)  # registers the site with its runner
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.ingest.protocol, self._host, self._port, backlog=self._backlog
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]
        self.ingest.start()

    async def stop(self) -> None:
        """Stop listening and close the lean path's connections."""
        await super().stop()
        self.ingest.close()
