"""A small blocking HTTP client for the CLI commands that talk to a monitor."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class MonitorUnreachable(Exception):
    """The monitor did not answer at all."""


class ApiError(Exception):
    """The monitor answered with an error shape."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{message} (HTTP {status})")
        self.status = status
        self.message = message


def request(
    base: str,
    path: str,
    *,
    method: str = "GET",
    token: str | None = None,
    body: Any = None,
    timeout: float = 5.0,
) -> Any:
    """Call the monitor API and return the decoded JSON answer."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base.rstrip("/") + path, data=data, method=method)
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            message = json.loads(raw)["error"]
        except (ValueError, KeyError, TypeError):
            message = raw.decode("utf-8", "replace").strip() or e.reason
        raise ApiError(e.code, str(message)) from None
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise MonitorUnreachable(f"cannot reach monitor at {base}: {reason}") from None
    return json.loads(raw) if raw else None
