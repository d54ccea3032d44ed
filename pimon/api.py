"""The monitor's HTTP routes, auth and the one JSON error shape."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from pimon import parse
from pimon.auth import READ_TOKEN_NEEDED, WRITE_TOKEN_NEEDED, bearer, may_write, token_matches
from pimon.ingest import accept_push
from pimon.monitor import Monitor
from pimon.views import transition_view
from pimon.wire import MAX_BODY_BYTES, check_name, error_body

log = logging.getLogger("pimon.api")

MONITOR: web.AppKey[Monitor] = web.AppKey("monitor", Monitor)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = frozenset({"/", "/healthz", "/metrics", "/v1/openapi.json"})
OPEN_PREFIXES: tuple[str, ...] = ("/static/", "/nodes/")  # the page asks for the token itself


class ApiError(Exception):
    """An error to answer with the JSON error shape."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_response(data: Any, status: int = 200) -> web.Response:
    """Encode ``data`` with msgspec into a JSON response."""
    return web.Response(
        body=msgspec.json.encode(data), status=status, content_type="application/json"
    )


def error(status: int, message: str) -> web.Response:
    """Return the one error shape: ``{"error": ..., "status": ...}``."""
    return json_response(error_body(status, message), status)


def require_write(request: web.Request) -> None:
    """Refuse a write without the cluster token (when one is configured)."""
    if not may_write(request.headers.get("Authorization"), request.app[MONITOR].config.token):
        raise ApiError(401, WRITE_TOKEN_NEEDED)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into the JSON error shape; never leak a traceback."""
    try:
        return await handler(request)
    except ApiError as e:
        return error(e.status, e.message)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        if e.status == 413:
            return error(413, f"body over {MAX_BODY_BYTES // 1024} KiB")
        text = e.text or ""
        message = text if text and not text.startswith(f"{e.status}:") else e.reason
        return error(e.status, message or e.reason)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error(500, "internal error; see the monitor log")


@web.middleware
async def read_auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Require the read token on reads when one is configured."""
    config = request.app[MONITOR].config
    path = request.path
    if (
        config.read_token
        and request.method == "GET"
        and path not in OPEN_PATHS
        and not path.startswith(OPEN_PREFIXES)
    ):
        # EventSource cannot send headers, hence the query parameter.
        given = bearer(request.headers.get("Authorization")) or request.query.get("token")
        readers = [t for t in (config.read_token, config.token) if t]
        if not any(token_matches(given, t) for t in readers):
            return error(401, READ_TOKEN_NEEDED)
    return await handler(request)


async def healthz(request: web.Request) -> web.Response:
    """Answer ok, or 503 with the reason while the history database is failing."""
    store = request.app[MONITOR].store
    health = store.health() if store is not None else None
    if health is not None and not health.ok:
        return error(503, f"storage: {health.error}; detection and the API keep working")
    return web.Response(text="ok\n")


async def list_nodes(request: web.Request) -> web.Response:
    """Return every node's view, sorted by name."""
    monitor = request.app[MONITOR]
    now = time.time()
    nodes = sorted(monitor.membership.nodes.values(), key=lambda n: n.name)
    return json_response({"nodes": [monitor.view(n, now) for n in nodes], "now": now})


async def get_node(request: web.Request) -> web.Response:
    """Return one node's view with its recent transitions."""
    monitor = request.app[MONITOR]
    name = request.match_info["name"]
    node = monitor.membership.nodes.get(name)
    if node is None:
        raise ApiError(404, f"no node named {name!r}")
    view = monitor.view(node, time.time())
    view["transitions"] = [transition_view(t) for t in reversed(node.history)]
    return json_response(view)


async def read_json(request: web.Request) -> Any:
    """Read a JSON body of at most 64 KiB or answer 400/413."""
    body = await request.read()
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(413, f"body over {MAX_BODY_BYTES // 1024} KiB")
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError as e:
        raise ApiError(400, f"invalid JSON: {e}") from None


async def durable(monitor: Monitor) -> None:
    """Wait (off the event loop) until a registration change is committed."""
    if monitor.store is not None:
        # The caller was told "registered": a crash a second later must not undo it.
        await asyncio.to_thread(monitor.store.flush)


async def post_heartbeat(request: web.Request) -> web.Response:
    """Take a pushed heartbeat; the first one registers the node.

    Agents' pushes are answered by ``pimon.ingest`` without reaching aiohttp;
    requests of any other shape (chunked bodies, Expect, HTTP/1.0) land here.
    """
    body = await request.read()
    monitor = request.app[MONITOR]
    status, answer = accept_push(monitor, request.headers.get("Authorization"), body, time.time())
    return json_response(answer, status)


async def put_node(request: web.Request) -> web.Response:
    """Register a pull node at runtime (the seed's Register RPC)."""
    require_write(request)
    monitor = request.app[MONITOR]
    name = request.match_info["name"]
    try:
        check_name(name)
    except ValueError as e:
        raise ApiError(400, str(e)) from None
    body = await read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("address"), str):
        raise ApiError(400, 'expected {"address": "host:port"}')
    try:
        address = parse.address(7071)(body["address"])
    except ValueError as e:
        raise ApiError(400, f"address: {e}") from None
    existing = monitor.membership.nodes.get(name)
    if existing is not None and existing.source == "static":
        raise ApiError(409, f"node {name!r} is configured statically; change the monitor's --node")
    if existing is not None and existing.mode == "push":
        raise ApiError(409, f"node {name!r} registered itself by pushing; stop its agent first")
    if existing is None and len(monitor.membership.nodes) >= monitor.config.max_nodes:
        raise ApiError(403, f"node limit reached ({monitor.config.max_nodes} nodes)")
    if existing is not None and existing.address == address:
        return json_response(monitor.view(existing, time.time()), 200)
    node = monitor.add_pull_node(name, address, source="api", now=time.time())
    log.info("%s: registered at %s through the API", name, address)
    await durable(monitor)
    return json_response(monitor.view(node, time.time()), 201 if existing is None else 200)


async def delete_node(request: web.Request) -> web.Response:
    """Deregister a node (the seed's Deregister RPC); its history stays."""
    require_write(request)
    monitor = request.app[MONITOR]
    name = request.match_info["name"]
    node = monitor.remove_node(name)
    if node is None:
        raise ApiError(404, f"no node named {name!r}")
    await durable(monitor)
    answer: dict[str, Any] = {"deleted": name, "mode": node.mode, "source": node.source}
    if node.mode == "push" and node.state.value not in ("down", "left"):
        answer["note"] = (
            f"{name} pushes heartbeats: it comes back with its next one; "
            "stop its agent (systemctl stop pimon-agent) to keep it away"
        )
    elif node.source == "static":
        answer["note"] = f"{name} is in the monitor's configuration: it returns on restart"
    return json_response(answer)


async def metrics(request: web.Request) -> web.Response:
    """Serve the Prometheus exposition of every node and of the monitor itself."""
    from pimon.exposition import CONTENT_TYPE
    from pimon.monitormetrics import render_monitor

    monitor = request.app[MONITOR]
    now = time.time()
    views = [monitor.view(n, now) for n in monitor.membership.nodes.values()]
    text = render_monitor(views, monitor.self_metrics(), now=now, extra=monitor.alerts.families())
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})


async def list_alerts(request: web.Request) -> web.Response:
    """Return each notifier's delivery figures and the dead-man's switch state."""
    return json_response(request.app[MONITOR].alerts.snapshot())


def make_app(monitor: Monitor) -> web.Application:
    """Build the aiohttp application for ``monitor``."""
    from pimon import dashboard, openapi, queries, sse

    app = web.Application(
        middlewares=[errors_middleware, read_auth_middleware], client_max_size=MAX_BODY_BYTES
    )
    app[MONITOR] = monitor

    async def end_streams(app: web.Application) -> None:
        monitor.events.close()  # open /v1/events streams would otherwise hold shutdown

    app.on_shutdown.append(end_streams)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/nodes", list_nodes)
    app.router.add_get("/v1/nodes/{name}", get_node)
    app.router.add_put("/v1/nodes/{name}", put_node)
    app.router.add_delete("/v1/nodes/{name}", delete_node)
    app.router.add_post("/v1/heartbeat", post_heartbeat)
    app.router.add_get("/v1/history", queries.history)
    app.router.add_get("/v1/nodes/{name}/samples", queries.samples)
    app.router.add_get("/v1/events", sse.events)
    app.router.add_get("/v1/openapi.json", openapi.handler)
    app.router.add_get("/v1/alerts", list_alerts)
    dashboard.add_routes(app)
    return app
