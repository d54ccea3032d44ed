"""A small blocking HTTP client for the CLI commands that talk to a monitor."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urljoin, urlsplit

from pimon import __version__, httpresponse, rawhttp

MAX_ANSWER = 64 * 1024 * 1024  # far above any real answer (10,000 nodes is ~10 MB)
MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})


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
    headers = {"Accept": "application/json", "User-Agent": f"pimon/{__version__}"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        answer = _follow(method, base.rstrip("/") + path, headers, data, timeout)
    except httpresponse.HttpError as e:
        # The OS's own words ("[Errno 111] Connection refused") where there are some.
        reason = e.cause if isinstance(e.cause, OSError) else e
        raise MonitorUnreachable(f"cannot reach monitor at {base}: {reason}") from None
    except ValueError as e:  # not an http(s) URL, here or in a redirect
        raise MonitorUnreachable(f"cannot reach monitor at {base}: {e}") from None
    if not 200 <= answer.status < 300:
        raise ApiError(answer.status, error_message(answer))
    return json.loads(answer.body) if answer.body else None


def error_message(answer: httpresponse.Response) -> str:
    """Return the message of an error answer: its JSON ``error``, else its text or reason."""
    try:
        return str(json.loads(answer.body)["error"])
    except (ValueError, KeyError, TypeError):
        return answer.body.decode("utf-8", "replace").strip() or answer.reason


def _follow(
    method: str, url: str, headers: dict[str, str], data: bytes | None, timeout: float
) -> httpresponse.Response:
    """Send the request; follow GET redirects (a proxy moving http to https) like urllib did."""
    for _ in range(MAX_REDIRECTS):
        answer = rawhttp.request(method, url, headers, data, timeout=timeout, max_body=MAX_ANSWER)
        location = answer.headers.get("location")
        if answer.status not in REDIRECTS or not location or method != "GET":
            return answer
        target = urljoin(url, location)
        if urlsplit(target).hostname != urlsplit(url).hostname:
            headers = {k: v for k, v in headers.items() if k != "Authorization"}
        url = target
    return answer  # still redirected: the caller reports the last answer as an error
