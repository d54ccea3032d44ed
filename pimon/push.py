"""Push heartbeats to monitors: one thread, schedule and connection per monitor.

The agent stays lean: ``rawhttp`` speaks HTTP/1.1 over a plain socket, and
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

from pimon import httpresponse, rawhttp

log = logging.getLogger("pimon.push")

BACKOFF_START_S = 1.0
BACKOFF_CAP_S = 30.0
LEAVE_TIMEOUT_S = 2.0


class PushError(Exception):
    """One push failed; the message says why."""


class Connection:
    """A keep-alive HTTP/1.1 connection to one monitor, reopened on demand."""

    def __init__(self, url: str, token: str | None, timeout: float) -> None:
        self.http = rawhttp.Connection(url, timeout=timeout, max_body=64 * 1024)
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def post(self, body: bytes, timeout: float | None = None) -> int:
        """POST one heartbeat; return the HTTP status."""
        try:
            answer = self.http.request("POST", "/v1/heartbeat", self.headers, body, timeout=timeout)
        except httpresponse.HttpError as e:
            raise PushError(str(e)) from None
        return answer.status

    def close(self) -> None:
        """Drop the connection."""
        self.http.close()


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
            reason = "connection refused" if isinstance(e, ConnectionRefusedError) else str(e)
            raise PushError(reason or type(e).__name__) from None
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
