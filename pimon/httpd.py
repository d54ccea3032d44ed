"""A minimal HTTP/1.1 server for the agent: GET only, keep-alive, one write per answer.

``http.server`` would pull in ``http.client``, ``ssl`` and ``email`` (about 8 MB
of RSS on this kind of machine) and parse headers slowly; the agent answers
three GET routes, so a small, strict parser is both lighter and faster.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable

log = logging.getLogger("pimon.httpd")

MAX_HEAD = 8192
MAX_CONNECTIONS = 64
IDLE_TIMEOUT_S = 60.0
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    503: "Service Unavailable",
}

# (method, path) -> (status, content type, body)
Handler = Callable[[str, str], tuple[int, str, bytes]]


class HttpServer:
    """Serve ``handler`` on a TCP socket with a thread per connection."""

    def __init__(self, host: str, port: int, handler: Handler, server_name: str) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(64)
        self.sock.settimeout(0.5)  # lets serve_forever notice shutdown()
        self.handler = handler
        self.server_name = server_name
        self._stop = threading.Event()
        self._done = threading.Event()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    @property
    def address(self) -> tuple[str, int]:
        """Return the bound host and port."""
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def serve_forever(self) -> None:
        """Accept connections until shutdown() is called."""
        try:
            while not self._stop.is_set():
                try:
                    conn, peer = self.sock.accept()
                except TimeoutError:
                    continue
                except OSError:
                    if self._stop.is_set():
                        break
                    raise
                if not self._slots.acquire(blocking=False):
                    conn.close()  # a connection flood must not exhaust threads
                    continue
                threading.Thread(
                    target=self._serve_connection, args=(conn, peer), daemon=True
                ).start()
        finally:
            self.sock.close()
            self._done.set()

    def shutdown(self, timeout: float = 2.0) -> None:
        """Stop accepting and wait for serve_forever to return."""
        self._stop.set()
        self._done.wait(timeout)

    def _serve_connection(self, conn: socket.socket, peer: object) -> None:
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(IDLE_TIMEOUT_S)
            buffer = b""
            while not self._stop.is_set():
                head, buffer = _read_head(conn, buffer)
                if head is None:
                    return
                keep_alive, answer = self._answer(head, peer)
                conn.sendall(answer)
                if not keep_alive:
                    return
        except (OSError, ValueError):
            return
        finally:
            conn.close()
            self._slots.release()

    def _answer(self, head: bytes, peer: object) -> tuple[bool, bytes]:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return False, self._response(400, "text/plain", b"bad request line\n", False)
        method, target, version = parts
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip().lower()
        keep_alive = version == "HTTP/1.1" and headers.get("connection") != "close"
        if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
            # The agent takes no bodies; closing is simpler than draining one.
            return False, self._response(413, "text/plain", b"no request bodies\n", False)
        status, content_type, body = self.handler(method, target.split("?", 1)[0])
        log.debug("%s %s %s -> %d", peer, method, target, status)
        return keep_alive, self._response(status, content_type, body, keep_alive)

    def _response(self, status: int, content_type: str, body: bytes, keep_alive: bool) -> bytes:
        head = (
            f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
            f"Server: {self.server_name}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
        )
        return head.encode("latin-1") + body


def _read_head(conn: socket.socket, buffer: bytes) -> tuple[bytes | None, bytes]:
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > MAX_HEAD:
            raise ValueError("request head too large")
        chunk = conn.recv(4096)
        if not chunk:
            return None, b""
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    return head, rest
