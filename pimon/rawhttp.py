"""A small blocking HTTP/1.1 client over a plain socket, for the CLI and the agent.

``http.client`` drags in ``ssl`` and ``email`` (about 25 ms at import, most of a
short CLI command's budget), so http:// URLs go over a bare socket here;
https:// goes through ``http.client.HTTPSConnection``, imported on first use.
Plain-http answers are read by ``httpresponse``.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from pimon.httpresponse import (
    ConnectionDropped,
    HttpError,
    ProtocolError,
    Reader,
    Response,
    ResponseTooLarge,
    join_headers,
    read_response,
)

if TYPE_CHECKING:
    import http.client

MAX_BODY = 64 * 1024 * 1024  # default cap on one answer's body
# Every printable ASCII character passes through unchanged; anything else in a
# request target (spaces, non-ASCII names, CR/LF) is percent-encoded.
TARGET_SAFE = "".join(chr(c) for c in range(33, 127))


class ConnectError(HttpError):
    """The server could not be reached (refused, unresolvable, unroutable): nothing was sent."""


class HttpTimeout(HttpError):
    """The server made no progress for the timeout (it bounds each connect, send and read)."""


class Connection:
    """A keep-alive HTTP/1.1 connection to one server, reopened on demand; one request at a time.

    The URL's path is a prefix of every request path (``http://h/pimon`` + ``/v1/nodes``).
    ``timeout`` bounds each connect, send and read, as in urllib: a large answer that
    keeps arriving is not cut off.
    """

    def __init__(
        self, url: str, *, timeout: float = 5.0, max_body: int = MAX_BODY, context: Any = None
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http:// or https:// URL: {url!r}")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.max_body = max_body
        self.context = context  # an ssl.SSLContext for https; None means the default one
        host = f"[{self.host}]" if ":" in self.host else self.host
        default_port = self.port == (443 if self.https else 80)
        self.host_header = host if default_port else f"{host}:{self.port}"
        self.sock: socket.socket | None = None
        self.tls: http.client.HTTPSConnection | None = None

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        *,
        timeout: float | None = None,
        keep_alive: bool = True,
    ) -> Response:
        """Send one request and return the whole answer.

        A kept-alive connection the server has closed meanwhile gets one retry on a fresh one.
        """
        target = quote(self.prefix + path, safe=TARGET_SAFE) or "/"
        seconds = self.timeout if timeout is None else timeout
        headers = headers or {}
        for attempt in (1, 2):
            reused = self.sock is not None or (self.tls is not None and self.tls.sock is not None)
            try:
                if self.https:
                    return self._exchange_tls(
                        method, target, headers, body, timeout=seconds, keep_alive=keep_alive
                    )
                return self._exchange(
                    method, target, headers, body, timeout=seconds, keep_alive=keep_alive
                )
            except ConnectionDropped:
                self.close()
                if not reused or attempt == 2:
                    raise
            except BaseException:
                self.close()
                raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Drop the connection."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.tls is not None:
            self.tls.close()
            self.tls = None

    def _exchange(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes | None,
        *,
        timeout: float,
        keep_alive: bool,
    ) -> Response:
        if self.sock is None:
            self.sock = self._connect(timeout)
        reader = Reader(self.sock)
        try:
            self.sock.settimeout(timeout)
            self.sock.sendall(self._head(method, target, headers, body, keep_alive) + (body or b""))
            response, reusable = read_response(reader, method, self.max_body)
        except OSError as e:
            raise _failure(e, self.host, timeout, answered=reader.received > 0) from None
        if not (keep_alive and reusable) or reader.buffer:
            self.close()
        return response

    def _connect(self, timeout: float) -> socket.socket:
        try:
            sock = _open_socket(self.host, self.port, timeout)
        except OSError as e:
            raise _connect_failure(e, self.host, timeout) from None
        except UnicodeError as e:  # a non-ASCII name that is not a valid IDNA name
            raise ConnectError(f"bad host name {self.host!r}", e) from None
        # Request and answer are small: send each at once rather than wait on Nagle.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _head(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes | None,
        keep_alive: bool,
    ) -> bytes:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host_header}"]
        names = set()
        for name, value in headers.items():
            if any(c in name + value for c in "\r\n\0") or not name or ":" in name:
                raise ValueError(f"bad header {name!r}")
            lines.append(f"{name}: {value}")
            names.add(name.lower())
        if (body is not None or method in ("POST", "PUT", "PATCH")) and (
            "content-length" not in names
        ):
            lines.append(f"Content-Length: {len(body or b'')}")
        if not keep_alive and "connection" not in names:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _exchange_tls(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes | None,
        *,
        timeout: float,
        keep_alive: bool,
    ) -> Response:
        import http.client

        if self.tls is None:
            self.tls = http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout, context=self.context
            )
        conn = self.tls
        conn.timeout = timeout
        if conn.sock is None:
            try:
                conn.connect()  # here rather than inside request(): to tell connect errors apart
            except OSError as e:
                raise _connect_failure(e, self.host, timeout) from None
        else:
            conn.sock.settimeout(conn.timeout)
        sent = dict(headers)
        if not keep_alive:
            sent.setdefault("Connection", "close")
        answered = False
        try:
            conn.request(method, target, body, sent)
            answer = conn.getresponse()
            answered = True
            if answer.length is not None and answer.length > self.max_body:
                raise ResponseTooLarge(f"answer larger than {self.max_body} bytes")
            data = answer.read(self.max_body + 1)
            if len(data) > self.max_body:
                raise ResponseTooLarge(f"answer larger than {self.max_body} bytes")
        except OSError as e:
            raise _failure(e, self.host, timeout, answered=answered) from None
        except http.client.HTTPException as e:
            raise ProtocolError(str(e) or type(e).__name__, e) from None
        if not keep_alive or not answer.isclosed() or answer.will_close:
            self.close()
        return Response(answer.status, answer.reason, join_headers(answer.getheaders()), data)


def _open_socket(host: str, port: int, timeout: float) -> socket.socket:
    """Connect to the first address of ``host`` that answers, like socket.create_connection.

    The host goes to getaddrinfo as bytes: given a str, it imports the idna codec
    (2-5 ms) even for "127.0.0.1"; only a non-ASCII name needs that codec.
    """
    name = host.encode("ascii") if host.isascii() else host.encode("idna")
    error: OSError | None = None
    for family, kind, proto, _, address in socket.getaddrinfo(name, port, 0, socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
        except OSError as e:
            sock.close()
            error = e
            continue
        return sock
    raise error or OSError(f"no address for {host}")


def _failure(e: OSError, host: str, timeout: float, *, answered: bool) -> HttpError:
    """Return the HttpError that says in a few words why ``e`` ended the exchange."""
    if isinstance(e, TimeoutError):
        return HttpTimeout(f"timed out: no progress for {timeout:g} s", e)
    if isinstance(e, socket.gaierror):
        return ConnectError(f"cannot resolve host {host!r}", e)
    if isinstance(e, ConnectionRefusedError):
        return ConnectError("connection refused", e)
    if not answered and isinstance(e, ConnectionResetError | BrokenPipeError):
        return ConnectionDropped("the server closed the connection without answering", e)
    return HttpError(str(e) or type(e).__name__, e)


def _connect_failure(e: OSError, host: str, timeout: float) -> HttpError:
    """Return the HttpError for a failed connect: a timeout, else a ConnectError."""
    failure = _failure(e, host, timeout, answered=False)
    if isinstance(failure, HttpTimeout | ConnectError):
        return failure
    return ConnectError(str(failure), e)


def request(
    method: str,
    url: str,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    *,
    timeout: float = 5.0,
    max_body: int = MAX_BODY,
    context: Any = None,
) -> Response:
    """Send one request on a fresh connection and return the whole answer."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    origin = f"{parts.scheme}://{parts.netloc}"
    with Connection(origin, timeout=timeout, max_body=max_body, context=context) as conn:
        return conn.request(method, target, headers, body, keep_alive=False)
