"""Parse HTTP/1.x answers off one keep-alive connection, strictly, for the heartbeat client.

``Wire`` is an ``asyncio.BufferedProtocol``: every connection reads into one
buffer shared with the others, which is safe because the event loop calls
``get_buffer`` and ``buffer_updated`` back to back for one connection at a time.
It reports each answer, protocol error or close to its ``Requester``.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Protocol, cast

MAX_HEAD_BYTES = 8192
HEX_DIGITS = b"0123456789abcdefABCDEF"
STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: [^\r\n]*)?")
# Field names are RFC 9110 tokens, right before the colon: no folding, no spaces, no bare LF.
HEADER = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\r\n]*")
HEADER_LINES = re.compile(rb"(?:\r\n[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\r\n]*)*")
# The fields that frame the body, found in one pass over the lowered header lines.
FRAMING = re.compile(rb"\r\n(content-length|transfer-encoding|connection):([^\r\n]*)")


class HttpError(Exception):
    """The peer answered, but not with an HTTP/1.x answer this client accepts."""


class BodyTooLarge(HttpError):
    """The answer's body is over the client's limit."""


@dataclass(slots=True)
class Response:
    """A complete answer: status and body."""

    status: int
    body: bytes


class Requester(Protocol):
    """What a connection reports to: the side that sends its requests (``Endpoint``)."""

    @property
    def done(self) -> object:
        """Return None when no request is in flight."""

    def answered(self, wire: Wire, response: Response, reusable: bool) -> None:
        """Take a complete answer from the connection."""

    def failed(self, wire: Wire, error: Exception) -> None:
        """Take a protocol error: the connection cannot be trusted any more."""

    def lost(self, wire: Wire, error: Exception | None) -> None:
        """Take the end of a connection."""


class Wire(asyncio.BufferedProtocol):
    """Parse HTTP/1.x answers on one TCP connection and hand them to the endpoint."""

    def __init__(self, endpoint: Requester, scratch: memoryview, limit: int) -> None:
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
