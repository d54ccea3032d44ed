"""Push heartbeats to monitors: one thread, schedule and connection per monitor.

The agent stays lean, so this is a small HTTP/1.1 client over a plain socket;
``http.client`` (and with it ``ssl``) is imported only for https monitors.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

log = logging.getLogger("pimon.push")

BACKOFF_START_S = 1.0
BACKOFF_CAP_S = 30.0
LEAVE_TIMEOUT_S = 2.0


class PushError(Exception):
    """One push failed; the message says why."""


class Connection:
    """A keep-alive HTTP/1.1 connection to one monitor, reopened on demand."""

    def __init__(self, url: str, token: str | None, timeout: float) -> None:
        parts = urlsplit(url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.path = (parts.path.rstrip("/") or "") + "/v1/heartbeat"
        self.token = token
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buffer = b""

    def post(self, body: bytes, timeout: float | None = None) -> int:
        """POST one heartbeat; return the HTTP status."""
        if self.https:
            return self._post_https(body, timeout or self.timeout)
        for attempt in (1, 2):  # a kept-alive socket the monitor closed gets one fresh retry
            fresh = self.sock is None
            try:
                if self.sock is None:
                    self.sock = socket.create_connection(
                        (self.host, self.port), timeout or self.timeout
                    )
                    self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self.buffer = b""
                self.sock.settimeout(timeout or self.timeout)
                self.sock.sendall(self._request(body))
                return self._read_status()
            except (OSError, PushError) as e:
                self.close()
                if fresh or attempt == 2:
                    raise PushError(_describe(e)) from None
        raise AssertionError("unreachable")

    def _request(self, body: bytes) -> bytes:
        auth = f"Authorization: Bearer {self.token}\r\n" if self.token else ""
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{auth}\r\n"
        )
        return head.encode("latin-1") + body

    def _read_status(self) -> int:
        assert self.sock is not None
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise PushError("connection closed by monitor")
            self.buffer += chunk
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])
        }
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise PushError("connection closed by monitor")
            rest += chunk
        self.buffer = rest[length:]
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status

    def _post_https(self, body: bytes, timeout: float) -> int:
        import http.client

        conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout)
        try:
            headers = {"Content-Type": "application/json"}
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            conn.request("POST", self.path, body, headers)
            return conn.getresponse().status
        except OSError as e:
            raise PushError(_describe(e)) from None
        finally:
            conn.close()

    def close(self) -> None:
        """Drop the connection."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class DatagramChannel:
    """Send heartbeats as HMAC-authenticated UDP datagrams: no answer, no connection."""

    def __init__(self, url: str, token: str | None) -> None:
        if not token:
            raise ValueError(
                f"{url}: UDP heartbeats are signed with the cluster token: give --token-file"
            )
        parts = urlsplit(url)
        self.address = (parts.hostname or "", parts.port or 7070)
        self.token = token
        self.sock: socket.socket | None = None

    def post(self, body: bytes, timeout: float | None = None) -> int:
        """Send one datagram; return 202 like the HTTP endpoint would."""
        from pimon.wire import seal_datagram

        try:
            if self.sock is None:
                # Connected, so the kernel reports ICMP "port unreachable" as refused.
                info = socket.getaddrinfo(*self.address, type=socket.SOCK_DGRAM)[0]
                self.sock = socket.socket(info[0], socket.SOCK_DGRAM)
                self.sock.connect(info[4])
            self.sock.send(seal_datagram(self.token, body))
        except OSError as e:
            self.close()
            raise PushError(_describe(e)) from None
        return 202

    def close(self) -> None:
        """Drop the socket."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def channel(url: str, token: str | None, timeout: float) -> Connection | DatagramChannel:
    """Return the channel for a monitor URL: ``http(s)://`` or ``udp://``."""
    if url.startswith("udp://"):
        return DatagramChannel(url, token)
    return Connection(url, token, timeout)


def _describe(e: BaseException) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, TimeoutError):
        return "timeout"
    if isinstance(e, socket.gaierror):
        return "host not found"
    return str(e) or type(e).__name__


class Pusher:
    """Push heartbeats to one monitor on its own schedule until told to stop."""

    def __init__(
        self,
        url: str,
        token: str | None,
        interval: float,
        next_body: Callable[[], bytes],
        stopping: threading.Event,
    ) -> None:
        self.url = url
        self.interval = interval
        self.next_body = next_body
        self.stopping = stopping
        # Below the interval, so one slow monitor never makes pushes pile up.
        self.conn = channel(url, token, timeout=max(0.2, min(interval * 0.8, 5.0)))
        self.reachable: bool | None = None
        self.failures = 0
        self.sent = 0
        self.rng = random.Random()

    def run(self) -> None:
        """Push every interval; back off from an unreachable monitor; say goodbye at the end."""
        delay = self.rng.uniform(0, self.interval)  # agents booted together do not push in lockstep
        while not self.stopping.wait(delay):
            started = time.monotonic()
            ok = self.push_once()
            spent = time.monotonic() - started
            delay = max(0.0, self.interval - spent) if ok else self.backoff()
        self.leave()

    def push_once(self, timeout: float | None = None) -> bool:
        """Send one heartbeat; log only when reachability changes."""
        try:
            status = self.conn.post(self.next_body(), timeout)
        except PushError as e:
            return self._failed(str(e))
        if status == 401:
            return self._failed("rejected: wrong or missing token (HTTP 401)")
        if status >= 400 and status != 409:
            return self._failed(f"rejected with HTTP {status}")
        if status == 409:
            return self._failed("rejected: another node holds this name (HTTP 409)")
        self.sent += 1
        if self.reachable is not True:
            if self.reachable is False:
                log.info("monitor %s reachable again", self.url)
            self.reachable, self.failures = True, 0
        return True

    def _failed(self, why: str) -> bool:
        self.failures += 1
        if self.reachable is not False:
            log.warning(
                "monitor %s unreachable: %s (backing off up to %.0fs)", self.url, why, BACKOFF_CAP_S
            )
            self.reachable = False
        return False

    def backoff(self) -> float:
        """Return the next delay: exponential with full jitter, capped at 30 s."""
        ceiling = min(BACKOFF_CAP_S, BACKOFF_START_S * 2 ** min(self.failures - 1, 10))
        return max(self.interval, self.rng.uniform(ceiling / 2, ceiling))

    def leave(self) -> None:
        """Send the last heartbeat (``leaving: true``) with a short timeout."""
        if self.reachable is not False:
            # A datagram may be lost and nothing tells: say goodbye twice.
            for _ in range(2 if isinstance(self.conn, DatagramChannel) else 1):
                self.push_once(timeout=LEAVE_TIMEOUT_S)
        self.conn.close()
