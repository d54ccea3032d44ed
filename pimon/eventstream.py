"""A small blocking Server-Sent Events client of ``/v1/events``, for the light CLI.

stdlib only (http.client): a reader thread keeps one stream open, reconnects
with backoff, and hands a fresh ``/v1/nodes`` snapshot then each event to a queue.
"""

from __future__ import annotations

import http.client
import json
import queue
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pimon.client import ApiError, MonitorUnreachable, request

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 45.0  # the monitor sends a keepalive every 15 s: three missed means dead
BACKOFF_CAP_S = 5.0  # a restarting monitor is back in seconds; do not make the user wait
FATAL_STATUSES = frozenset({401, 403, 404})


@dataclass(frozen=True, slots=True)
class Message:
    """One thing the reader thread tells the main thread (kind: snapshot, node, lost ...)."""

    kind: str
    data: Any = None


class SseParser:
    """Turn chunks of a text/event-stream into (event, data) pairs."""

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        """Consume ``chunk``; return the events it completed."""
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        events: list[tuple[str, str]] = []
        for raw in lines:
            line = raw.removesuffix(b"\r").decode("utf-8", "replace")
            if not line:
                if self._data:
                    events.append((self._event or "message", "\n".join(self._data)))
                self._event, self._data = "", []
            elif not line.startswith(":"):  # ":" starts a comment (the keepalives)
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "event":
                    self._event = value
                elif name == "data":
                    self._data.append(value)
        return events


def backoff(failures: int, rng: random.Random) -> float:
    """Return the delay before reconnect attempt ``failures``: 0.5, 1, 2, 4, 5 s, jittered."""
    ceiling = min(BACKOFF_CAP_S, 0.5 * 2 ** min(failures - 1, 8))
    return rng.uniform(ceiling / 2, ceiling)


def open_events(base: str, token: str | None) -> tuple[http.client.HTTPConnection, Any]:
    """Open ``GET /v1/events`` and return the connection and its streaming response."""
    parts = urlsplit(base)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname or "localhost", parts.port, timeout=CONNECT_TIMEOUT_S)
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request("GET", parts.path.rstrip("/") + "/v1/events", headers=headers)
        response = conn.getresponse()
        if response.status != 200:
            body = response.read()
            try:
                message = str(json.loads(body)["error"])
            except (ValueError, KeyError, TypeError):
                message = body.decode("utf-8", "replace").strip() or response.reason
            raise ApiError(response.status, message)
        if conn.sock is not None:
            conn.sock.settimeout(READ_TIMEOUT_S)
    except BaseException:
        conn.close()
        raise
    return conn, response


def events(response: Any) -> Iterator[tuple[str, str]]:
    """Yield the events of an open stream until the monitor closes it."""
    parser = SseParser()
    while chunk := response.read1(65536):
        yield from parser.feed(chunk)
    raise ConnectionError("the monitor closed the event stream")


def read_forever(base: str, token: str | None, inbox: queue.Queue[Message]) -> None:
    """Stream events into ``inbox``, reconnecting with backoff; stop on a fatal answer."""
    rng = random.Random()
    failures = 0
    while True:
        try:
            conn, response = open_events(base, token)
            try:
                stream = events(response)
                for kind, _ in stream:
                    if kind == "hello":  # subscribed: nothing after the snapshot is missed
                        break
                inbox.put(Message("snapshot", request(base, "/v1/nodes", token=token)))
                failures = 0
                for kind, data in stream:
                    if kind in ("node", "transition", "removed"):
                        inbox.put(Message(kind, json.loads(data)))
            finally:
                conn.close()
        except ApiError as e:
            if e.status in FATAL_STATUSES:
                inbox.put(Message("fatal", f"{base}: {e}"))
                return
            why = str(e)
        except MonitorUnreachable as e:
            why = str(e)
        except (OSError, http.client.HTTPException, ValueError) as e:
            why = str(e) or type(e).__name__
        failures += 1
        delay = backoff(failures, rng)
        inbox.put(Message("lost", (why, delay)))
        time.sleep(delay)
