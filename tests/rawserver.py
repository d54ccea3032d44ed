"""A raw TCP server in threads, for HTTP clients facing servers that misbehave on purpose."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

Handler = Callable[[socket.socket, "RawServer"], None]


class RawServer:
    """A TCP server in threads: ``handler`` runs for every accepted connection."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1") -> None:
        self.handler = handler
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        port = self.sock.getsockname()[1]
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.accepts = 0
        self.requests: list[bytes] = []
        self.client_closed = threading.Event()
        self.conns: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepts += 1
            conn.settimeout(10)
            self.conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handler(conn, self)
        except OSError:
            pass
        finally:
            conn.close()

    def read_request(self, conn: socket.socket) -> bytes | None:
        """Return the next request head, or None when the client closed."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                self.client_closed.set()
                return None
            data += chunk
        self.requests.append(data)
        return data

    def wait_client_close(self, conn: socket.socket) -> None:
        """Block until the client closes this connection."""
        while conn.recv(4096):
            pass
        self.client_closed.set()

    def close(self) -> None:
        """Stop accepting, drop every connection, join the threads."""
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in self.threads:
            thread.join(5)


def hang_first_connection(answering: Handler) -> Handler:
    """Return a handler that reads the first connection's request and never answers it."""

    def handler(conn: socket.socket, server: RawServer) -> None:
        if server.accepts == 1:
            server.read_request(conn)
            server.wait_client_close(conn)
        else:
            answering(conn, server)

    return handler
