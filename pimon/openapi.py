"""``GET /v1/openapi.json``: the OpenAPI 3 description of the monitor API."""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec
from aiohttp import web

from pimon import __version__
from pimon.wire import Heartbeat

REF = "#/components/schemas/{name}"
STATES = ["unknown", "up", "degraded", "suspect", "down", "left"]
NUM = {"type": ["number", "null"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(name=name)}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _json(_ref("Error"), "error") for c in codes}


def _query(name: str, description: str, type_: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": type_}}  # fmt: skip


NAME = {"name": "name", "in": "path", "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"}}  # fmt: skip


@cache
def spec() -> dict[str, Any]:
    """Build the OpenAPI document once."""
    (_, components) = msgspec.json.schema_components([Heartbeat], ref_template=REF)
    view = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "state": {"type": "string", "enum": STATES},
            "since": {"type": "number"},
            "reason": {"type": "string"},
            "last_seen": NUM,
            "phi": {"type": "number"},
            "rtt_ms": NUM,
            "clock_offset_s": NUM,
            "mode": {"type": "string", "enum": ["pull", "push"]},
            "source": {"type": "string", "enum": ["static", "api", "push"]},
            "address": {"type": ["string", "null"]},
            "last_error": {"type": ["string", "null"]},
            "problems": {"type": "array", "items": {"type": "string"}},
            "metrics": {"anyOf": [_ref("Metrics"), {"type": "null"}]},
            **{f"uptime_{w}": NUM for w in ("1h", "24h", "7d", "30d")},
        },
        "required": ["name", "state", "since", "phi", "mode", "source"],
    }
    transition = {
        "type": "object",
        "properties": {"id": {"type": "integer"}, "node": {"type": "string"},
                       "old": {"type": "string", "enum": STATES},
                       "new": {"type": "string", "enum": STATES},
                       "at": {"type": "number"}, "reason": {"type": "string"}},
        "required": ["node", "old", "new", "at", "reason"],
    }  # fmt: skip
    error = {
        "type": "object",
        "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
        "required": ["error", "status"],
    }
    components.update(NodeView=view, Transition=transition, Error=error)
    write: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "pimon monitor API", "version": __version__},
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/v1/nodes": {"get": {"summary": "All nodes", "responses": {
                "200": _json({"type": "object", "properties": {
                    "nodes": {"type": "array", "items": _ref("NodeView")},
                    "now": {"type": "number"}}}), **_errors(401)}}},
            "/v1/nodes/{name}": {
                "parameters": [NAME],
                "get": {"summary": "One node and its recent transitions",
                        "responses": {"200": _json(_ref("NodeView")), **_errors(401, 404)}},
                "put": {"summary": "Register a pull node", "security": write,
                        "requestBody": {"required": True, "content": {"application/json": {
                            "schema": {"type": "object", "required": ["address"],
                                       "properties": {"address": {"type": "string"}}}}}},
                        "responses": {"200": _json(_ref("NodeView")),
                                      "201": _json(_ref("NodeView"), "created"),
                                      **_errors(400, 401, 403, 409, 413)}},
                "delete": {"summary": "Deregister a node", "security": write,
                           "responses": {"200": _json({"type": "object"}), **_errors(401, 404)}},
            },
            "/v1/nodes/{name}/samples": {"get": {
                "summary": "Metric samples for charts", "parameters": [
                    NAME, _query("since", "unix seconds or an age like 1h"),
                    _query("until", "unix seconds or an age"), _query("step", "bucket, e.g. 60s")],
                "responses": {"200": _json({"type": "object"}), **_errors(400, 401)}}},
            "/v1/heartbeat": {"post": {
                "summary": "Push a heartbeat; the first one registers the node", "security": write,
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": _ref("Heartbeat")}}},
                "responses": {"202": _json({"type": "object"}, "accepted"),
                              **_errors(400, 401, 403, 409, 413)}}},
            "/v1/history": {"get": {
                "summary": "Transitions, newest first", "parameters": [
                    _query("node", "node name"), _query("since", "unix seconds or an age"),
                    _query("until", "unix seconds or an age"),
                    _query("limit", "page size (1-1000)", "integer"),
                    _query("before", "id from the previous page's next", "integer")],
                "responses": {"200": _json({"type": "object", "properties": {
                    "transitions": {"type": "array", "items": _ref("Transition")},
                    "next": {"type": ["integer", "null"]}}}), **_errors(400, 401)}}},
            "/v1/alerts": {"get": {
                "summary": "Each notifier's counts, last error and the dead-man's switch",
                "responses": {"200": _json({"type": "object"}), **_errors(401)}}},
            "/v1/events": {"get": {"summary": "Server-Sent Events: transition, node, removed",
                                   "responses": {"200": {"description": "text/event-stream"}}}},
            "/metrics": {"get": {"summary": "Prometheus exposition",
                                 "responses": {"200": {"description": "text/plain"}}}},
            "/healthz": {"get": {"summary": "Liveness; 503 while storage fails",
                                 "responses": {"200": {"description": "ok"}, **_errors(503)}}},
        },
    }  # fmt: skip


async def handler(request: web.Request) -> web.Response:
    """Serve the OpenAPI document."""
    return web.Response(body=msgspec.json.encode(spec()), content_type="application/json")
