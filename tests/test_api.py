"""The monitor API under hostile and broken input: clear errors, never a 5xx, never a crash."""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pimon.demo import Child
from tests.conftest import heartbeat_fields as heartbeat

TOKEN = "s3cret-cluster-token"


@pytest.fixture(scope="module")
def monitor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Child]:
    workdir = tmp_path_factory.mktemp("api")
    token_file = workdir / "token"
    token_file.write_text(TOKEN + "\n")
    os.chmod(token_file, 0o600)
    child = Child(
        [
            "monitor",
            "--listen",
            "127.0.0.1:0",
            "--db",
            str(workdir / "m.db"),
            "--token-file",
            str(token_file),
            "--max-nodes",
            "50",
        ],
        str(workdir / "monitor.log"),
    )
    child.start()
    try:
        yield child
    finally:
        child.stop()


def call(
    monitor: Child, method: str, path: str, body: bytes | None = None, token: str | None = TOKEN
) -> tuple[int, Any]:
    host, port = (monitor.address or "").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw)
    except ValueError:
        return resp.status, raw


def post(monitor: Child, body: Any, token: str | None = TOKEN) -> tuple[int, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return call(monitor, "POST", "/v1/heartbeat", raw, token)


def test_push_needs_the_token(monitor: Child) -> None:
    assert post(monitor, heartbeat(), token=None) == (
        401,
        {"error": "this needs the cluster token: Authorization: Bearer <token>", "status": 401},
    )
    assert post(monitor, heartbeat(), token="wrong-token")[0] == 401
    assert post(monitor, heartbeat())[0] == 202


def test_register_and_deregister_need_the_token(monitor: Child) -> None:
    body = json.dumps({"address": "127.0.0.1:1"}).encode()
    assert call(monitor, "PUT", "/v1/nodes/reg-1", body, token=None)[0] == 401
    assert call(monitor, "DELETE", "/v1/nodes/reg-1", token="nope")[0] == 401
    status, view = call(monitor, "PUT", "/v1/nodes/reg-1", body)
    assert status == 201 and view["mode"] == "pull" and view["source"] == "api"
    assert call(monitor, "PUT", "/v1/nodes/reg-1", body)[0] == 200
    status, answer = call(monitor, "DELETE", "/v1/nodes/reg-1")
    assert status == 200 and answer["deleted"] == "reg-1"
    assert call(monitor, "DELETE", "/v1/nodes/reg-1")[0] == 404


def test_body_over_64_kib_is_413(monitor: Child) -> None:
    status, answer = post(monitor, b"{" + b" " * (70 * 1024) + b"}")
    assert status == 413 and answer == {"error": "body over 64 KiB", "status": 413}


@pytest.mark.parametrize(
    ("body", "names"),
    [
        (b"{not json", "invalid JSON"),
        (heartbeat(seq="seven"), "$.seq"),
        ({k: v for k, v in heartbeat().items() if k != "id"}, "`id`"),
        (heartbeat(name="bad name!"), "invalid node name"),
        (heartbeat(name="x" * 64), "invalid node name"),
        (heartbeat(v=2), "unsupported wire version 2"),
        (heartbeat(metrics={"cpu_percent": "hot"}), "$.metrics.cpu_percent"),
        (heartbeat(interval=0), "interval"),
        ([1, 2, 3], "Expected `object`"),
    ],
)
def test_bad_heartbeats_are_400_naming_the_field(monitor: Child, body: Any, names: str) -> None:
    status, answer = post(monitor, body)
    assert status == 400, answer
    assert names in answer["error"] and answer["status"] == 400


def test_bad_registrations_are_400(monitor: Child) -> None:
    for path, body in [
        ("/v1/nodes/bad%20name", {"address": "h:1"}),
        ("/v1/nodes/ok", {"address": "h:99999"}),
        ("/v1/nodes/ok", {"addr": "h:1"}),
        ("/v1/nodes/ok", ["h:1"]),
    ]:
        status, answer = call(monitor, "PUT", path, json.dumps(body).encode())
        assert status == 400 and answer["status"] == 400, (path, body, answer)


def test_node_limit_answers_403(monitor: Child) -> None:
    status = 202
    for i in range(60):
        status, answer = post(monitor, heartbeat(f"flood-{i}"))
        if status != 202:
            break
    assert status == 403 and answer["error"].startswith("node limit reached")
    _, nodes = call(monitor, "GET", "/v1/nodes")
    assert len(nodes["nodes"]) == 50
    for node in nodes["nodes"]:  # leave room for the other tests
        if node["name"].startswith("flood-"):
            assert call(monitor, "DELETE", f"/v1/nodes/{node['name']}")[0] == 200


def test_hijack_of_a_live_name_is_409(monitor: Child) -> None:
    assert post(monitor, heartbeat("owned"))[0] == 202
    status, answer = post(monitor, heartbeat("owned", id="someone-else"))
    assert status == 409 and "held by another live node" in answer["error"]


def test_unknown_route_and_method_use_the_error_shape(monitor: Child) -> None:
    status, answer = call(monitor, "GET", "/v1/nope")
    assert status == 404 and set(answer) == {"error", "status"}
    status, answer = call(monitor, "PATCH", "/v1/nodes/x", b"{}")
    assert status == 405 and answer["status"] == 405


def test_openapi_describes_the_routes(monitor: Child) -> None:
    status, spec = call(monitor, "GET", "/v1/openapi.json", token=None)
    assert status == 200 and spec["openapi"].startswith("3.")
    for path in ("/v1/nodes", "/v1/nodes/{name}", "/v1/heartbeat", "/v1/history", "/v1/events"):
        assert path in spec["paths"]
    assert "Heartbeat" in spec["components"]["schemas"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
fields = st.fixed_dictionaries({}, optional={k: json_values for k in heartbeat()})


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.one_of(
        st.binary(max_size=300),
        json_values.map(lambda v: json.dumps(v).encode()),
        fields.map(lambda v: json.dumps(v).encode()),
    )
)
def test_random_bodies_never_cause_a_5xx(monitor: Child, body: bytes) -> None:
    status, _ = post(monitor, body)
    assert status < 500
    status, _ = call(monitor, "PUT", "/v1/nodes/fuzz", body)
    assert status < 500
    assert monitor.running
