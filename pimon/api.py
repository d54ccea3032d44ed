"""The monitor's HTTP routes and the one JSON error shape."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from pimon.monitor import Monitor
from pimon.views import node_view, transition_view
from pimon.wire import error_body

log = logging.getLogger("pimon.api")

MONITOR: web.AppKey[Monitor] = web.AppKey("monitor", Monitor)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = frozenset({"/healthz", "/metrics", "/v1/openapi.json"})


def json_response(data: Any, status: int = 200) -> web.Response:
    """Encode ``data`` with msgspec into a JSON response."""
    return web.Response(
        body=msgspec.json.encode(data), status=status, content_type="application/json"
    )


def error(status: int, message: str) -> web.Response:
    """Return the one error shape: ``{"error": ..., "status": ...}``."""
    return json_response(error_body(status, message), status)


def bearer(request: web.Request) -> str | None:
    """Return the bearer token of a request, if any."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def token_matches(given: str | None, expected: str) -> bool:
    """Compare tokens in constant time."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into the JSON error shape; never leak a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        message = e.text if e.text and not e.text.startswith(f"{e.status}:") else e.reason
        return error(e.status, message or e.reason)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error(500, "internal error; see the monitor log")


@web.middleware
async def read_auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Require the read token on reads when one is configured."""
    expected = request.app[MONITOR].config.read_token
    if expected and request.method == "GET" and request.path not in OPEN_PATHS:
        given = bearer(request) or request.query.get("token")
        write = request.app[MONITOR].config.token
        if not (token_matches(given, expected) or (write and token_matches(given, write))):
            return error(401, "this monitor needs a read token: Authorization: Bearer <token>")
    return await handler(request)


async def healthz(request: web.Request) -> web.Response:
    """Answer ok while the monitor runs."""
    return web.Response(text="ok\n")


async def list_nodes(request: web.Request) -> web.Response:
    """Return every node's view, sorted by name."""
    monitor = request.app[MONITOR]
    now = time.time()
    nodes = sorted(monitor.membership.nodes.values(), key=lambda n: n.name)
    return json_response({"nodes": [node_view(n, now) for n in nodes], "now": now})


async def get_node(request: web.Request) -> web.Response:
    """Return one node's view with its recent transitions."""
    monitor = request.app[MONITOR]
    name = request.match_info["name"]
    node = monitor.membership.nodes.get(name)
    if node is None:
        return error(404, f"no node named {name!r}")
    view = node_view(node, time.time())
    view["transitions"] = [transition_view(t) for t in reversed(node.history)]
    return json_response(view)


def make_app(monitor: Monitor) -> web.Application:
    """Build the aiohttp application for ``monitor``."""
    app = web.Application(
        middlewares=[errors_middleware, read_auth_middleware], client_max_size=64 * 1024
    )
    app[MONITOR] = monitor
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/nodes", list_nodes)
    app.router.add_get("/v1/nodes/{name}", get_node)
    return app
