"""client.request against a real HTTP server on loopback: answers, error shapes, failures."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from pimon import client
from pimon.client import ApiError, MonitorUnreachable, request
from tests.httpserver import LoopbackServer, QuietHandler, serving


class Handler(QuietHandler):
    """A fake monitor API: fixed answers per path; records the headers it was sent."""

    server: Server

    def _route(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        sent = json.loads(self.rfile.read(length)) if length else None
        self.server.seen.append((self.command, self.path, dict(self.headers.items()), sent))
        port = self.server.server_address[1]
        routes: dict[str, tuple[int, bytes, dict[str, str]]] = {
            "/v1/nodes": (200, b'{"nodes": [{"name": "pi-1"}]}', {}),
            "/v1/nodes/pi-1": (200, json.dumps({"got": sent}).encode(), {}),
            "/v1/gone": (204, b"", {}),
            "/v1/missing": (404, b'{"error": "no node named \'x\'"}', {}),
            "/v1/broken": (500, b"database is locked\n", {}),
            "/v1/silent": (503, b"", {}),
            "/v1/odd": (400, b'["not", "a", "shape"]', {}),
            "/v1/moved": (302, b"", {"Location": "/v1/nodes"}),
            "/v1/away": (307, b"", {"Location": f"http://localhost:{port}/v1/nodes"}),
            "/v1/loop": (302, b"", {"Location": "/v1/loop"}),
        }
        status, body, headers = routes.get(self.path, (404, b'{"error": "no route"}', {}))
        self._send(status, body, **headers)

    do_GET = do_PUT = do_DELETE = _route


class Server(LoopbackServer):
    """A threaded fake monitor that remembers each request."""

    def __init__(self) -> None:
        super().__init__(Handler)
        self.seen: list[tuple[str, str, dict[str, str], Any]] = []


@pytest.fixture
def monitor() -> Iterator[Server]:
    srv = Server()
    with serving(srv):
        yield srv


def test_get_returns_decoded_json_and_sends_token(monitor: Server) -> None:
    assert request(monitor.url + "/", "/v1/nodes", token="s3cret") == {"nodes": [{"name": "pi-1"}]}
    _, path, headers, _ = monitor.seen[0]
    assert path == "/v1/nodes"
    assert headers["Authorization"] == "Bearer s3cret"
    assert headers["Accept"] == "application/json"
    assert "Content-Type" not in headers


def test_put_sends_json_body_and_delete_without_body_returns_none(monitor: Server) -> None:
    answer = request(monitor.url, "/v1/nodes/pi-1", method="PUT", body={"address": "h:7071"})
    assert answer == {"got": {"address": "h:7071"}}
    assert monitor.seen[0][2]["Content-Type"] == "application/json"
    assert request(monitor.url, "/v1/gone", method="DELETE") is None
    assert monitor.seen[1][:2] == ("DELETE", "/v1/gone")


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/v1/missing", 404, "no node named 'x'"),
        ("/v1/broken", 500, "database is locked"),
        ("/v1/silent", 503, "Service Unavailable"),
        ("/v1/odd", 400, '["not", "a", "shape"]'),
    ],
)
def test_error_answers_become_api_errors(
    monitor: Server, path: str, status: int, message: str
) -> None:
    with pytest.raises(ApiError) as caught:
        request(monitor.url, path)
    assert (caught.value.status, caught.value.message) == (status, message)
    assert str(caught.value) == f"{message} (HTTP {status})"


def test_get_follows_redirects_and_drops_token_for_another_host(monitor: Server) -> None:
    assert request(monitor.url, "/v1/moved", token="t")["nodes"][0]["name"] == "pi-1"
    assert monitor.seen[1][2]["Authorization"] == "Bearer t"  # same host keeps it
    assert request(monitor.url, "/v1/away", token="t")["nodes"][0]["name"] == "pi-1"
    assert monitor.seen[3][2]["Host"].startswith("localhost:")
    assert "Authorization" not in monitor.seen[3][2]


def test_redirects_are_not_followed_for_writes_or_forever(monitor: Server) -> None:
    with pytest.raises(ApiError) as caught:
        request(monitor.url, "/v1/moved", method="PUT", body={})
    assert caught.value.status == 302 and len(monitor.seen) == 1
    with pytest.raises(ApiError) as looped:
        request(monitor.url, "/v1/loop")
    assert looped.value.status == 302 and len(monitor.seen) == 1 + client.MAX_REDIRECTS


def test_refused_keeps_the_os_words() -> None:
    with socket.socket() as held:  # bound, not listening: connecting is refused
        held.bind(("127.0.0.1", 0))
        base = f"http://127.0.0.1:{held.getsockname()[1]}"
        with pytest.raises(MonitorUnreachable) as caught:
            request(base, "/v1/nodes")
    assert str(caught.value).startswith(f"cannot reach monitor at {base}: [Errno ")
    assert str(caught.value).endswith("Connection refused")


def test_unresolvable_and_timeout_are_unreachable() -> None:
    with pytest.raises(MonitorUnreachable, match=r"cannot reach monitor at http://x\.invalid: "):
        request("http://x.invalid", "/v1/nodes")
    with socket.create_server(("127.0.0.1", 0)) as silent:
        base = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(MonitorUnreachable) as caught:
            request(base, "/v1/nodes", timeout=0.2)
    assert str(caught.value) == f"cannot reach monitor at {base}: timed out"


def test_oversized_answer_and_bad_url_are_unreachable(
    monitor: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "MAX_ANSWER", 10)
    with pytest.raises(MonitorUnreachable, match="answer larger than 10 bytes"):
        request(monitor.url, "/v1/nodes")
    with pytest.raises(MonitorUnreachable, match="cannot reach monitor at ftp://h: not an http"):
        request("ftp://h", "/v1/nodes")
