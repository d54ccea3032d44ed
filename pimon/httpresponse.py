"""Read one HTTP/1.1 response from a blocking socket, and the errors of an exchange that got none.

Stdlib only and no ``http.client``: the agent reads its plain-http answers here.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

MAX_HEAD = 64 * 1024  # cap on the status line plus headers, and on one chunk-size line
RECV_SIZE = 65536
HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


class HttpError(Exception):
    """A request got no complete answer; the message says why in a few words."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class ConnectionDropped(HttpError):
    """The server closed the connection before sending any byte of an answer."""


class ProtocolError(HttpError):
    """The answer was cut short or is not HTTP/1.x."""


class ResponseTooLarge(HttpError):
    """The answer's body is larger than the cap."""


@dataclass(frozen=True, slots=True)
class Response:
    """One complete answer; header names are lower case, repeated headers joined by ", "."""

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes


class Reader:
    """Buffered reads from a socket whose timeout is already set."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.received = 0

    def _fill(self) -> None:
        chunk = self.sock.recv(RECV_SIZE)
        if not chunk:
            if self.received == 0:
                raise ConnectionDropped("the server closed the connection without answering")
            raise ProtocolError("the server closed the connection before the answer was complete")
        self.buffer += chunk
        self.received += len(chunk)

    def line(self) -> bytes:
        """Return the next line without its line ending."""
        while (end := self.buffer.find(b"\n")) < 0:
            if len(self.buffer) > MAX_HEAD:
                raise ProtocolError(f"a header line is longer than {MAX_HEAD} bytes")
            self._fill()
        line = bytes(self.buffer[:end]).removesuffix(b"\r")
        del self.buffer[: end + 1]
        return line

    def exact(self, size: int) -> bytes:
        """Return exactly ``size`` bytes."""
        if len(self.buffer) < size:
            out = bytearray(size)
            view = memoryview(out)
            have = len(self.buffer)
            view[:have] = self.buffer
            self.buffer.clear()
            while have < size:  # straight into the result: a large body is not copied per recv
                got = self.sock.recv_into(view[have:])
                if not got:
                    raise ProtocolError("the server closed the connection mid-body")
                have += got
                self.received += got
            return bytes(out)
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def until_close(self, cap: int) -> bytes:
        """Return everything up to the end of the stream, at most ``cap`` bytes."""
        while len(self.buffer) <= cap:
            chunk = self.sock.recv(RECV_SIZE)
            if not chunk:
                data = bytes(self.buffer)
                self.buffer.clear()
                return data
            self.buffer += chunk
            self.received += len(chunk)
        raise ResponseTooLarge(f"answer larger than {cap} bytes")


def read_response(reader: Reader, method: str, max_body: int) -> tuple[Response, bool]:
    """Read one answer; return it and whether the connection can carry another request."""
    while True:
        status_line = reader.line()
        version, _, rest = status_line.decode("latin-1").partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise ProtocolError(f"not an HTTP/1.x answer: {status_line[:60]!r}")
        headers = _read_headers(reader)
        status = int(code)
        if not 100 <= status < 200:
            break  # 1xx answers (100 Continue, 103 Early Hints) come before the real one
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    reusable = "close" not in tokens and (version == "HTTP/1.1" or "keep-alive" in tokens)
    if method == "HEAD" or status in (204, 304):
        body = b""
    elif headers.get("transfer-encoding", "").lower().rsplit(",", 1)[-1].strip() == "chunked":
        body = _read_chunked(reader, max_body)
    elif "content-length" in headers:
        length = _content_length(headers["content-length"])
        if length > max_body:
            raise ResponseTooLarge(f"answer larger than {max_body} bytes ({length})")
        body = reader.exact(length)
    else:
        body = reader.until_close(max_body)  # framed by the end of the connection
        reusable = False
    return Response(status, reason.strip(), headers, body), reusable


def _read_headers(reader: Reader) -> dict[str, str]:
    headers: dict[str, str] = {}
    size = 0
    while line := reader.line():
        size += len(line)
        if size > MAX_HEAD:
            raise ProtocolError(f"headers longer than {MAX_HEAD} bytes")
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon:
            raise ProtocolError(f"bad header line {line[:60]!r}")
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return headers


def _content_length(text: str) -> int:
    # Repeated identical values ("12, 12") are allowed; anything else is an error.
    values = {v.strip() for v in text.split(",")}
    if len(values) != 1 or not (value := values.pop()).isdigit():
        raise ProtocolError(f"bad Content-Length {text!r}")
    return int(value)


def _read_chunked(reader: Reader, max_body: int) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        size_text = reader.line().split(b";", 1)[0].strip()
        if not size_text or not HEX_DIGITS.issuperset(size_text):
            raise ProtocolError(f"bad chunk size {size_text[:20]!r}")
        size = int(size_text, 16)
        if size == 0:
            break
        total += size
        if total > max_body:
            raise ResponseTooLarge(f"answer larger than {max_body} bytes")
        parts.append(reader.exact(size))
        if reader.line():
            raise ProtocolError("chunk longer than its size")
    _read_headers(reader)  # trailers: read so the connection stays usable, then ignored
    return b"".join(parts)


def join_headers(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Return ``(name, value)`` pairs as headers: names lower case, repeats joined by ", "."""
    headers: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers
