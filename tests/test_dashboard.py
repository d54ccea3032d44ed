"""The dashboard routes: page shell, static assets, caching, traversal and read auth."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from pimon import dashboard
from pimon.api import make_app
from pimon.monitor import Monitor, MonitorConfig

WEB = Path(dashboard.__file__).parent / "web"
READ_TOKEN = "read-s3cret"
Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    app = web.Application()
    dashboard.add_routes(app)
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as c:
        yield c


@pytest.fixture
async def guarded() -> AsyncIterator[Client]:
    monitor = Monitor(MonitorConfig(listen=("127.0.0.1", 0), read_token=READ_TOKEN))
    async with TestClient(TestServer(make_app(monitor), host="127.0.0.1", port=0)) as c:
        yield c


async def raw_get(client: Client, target: str) -> tuple[int, str]:
    """Send a request line exactly as written: no client-side path normalisation."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode("utf-8", "replace")


def version_of(page: str) -> str:
    match = re.search(r'/static/app\.js\?v=([0-9a-f]+)"', page)
    assert match, "the page must load app.js with a version query"
    return match.group(1)


async def test_page_is_served_at_root_and_at_node_paths(client: Client) -> None:
    for path in ("/", "/nodes/pi-01", "/nodes/a.b_c-d"):
        resp = await client.get(path)
        assert resp.status == 200, path
        assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
        assert resp.headers["Cache-Control"] == "no-cache"
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
        page = await resp.text()
        assert "{{" not in page, "every placeholder is filled in"
        assert version_of(page)


async def test_assets_have_their_content_types(client: Client) -> None:
    expected = {
        "app.js": "text/javascript; charset=utf-8",
        "overview.js": "text/javascript; charset=utf-8",
        "app.css": "text/css; charset=utf-8",
        "vendor/uplot-1.6.32/uPlot.iife.min.js": "text/javascript; charset=utf-8",
        "vendor/uplot-1.6.32/uPlot.min.css": "text/css; charset=utf-8",
    }
    for rel, content_type in expected.items():
        resp = await client.get(f"/static/{rel}")
        assert resp.status == 200, rel
        assert resp.headers["Content-Type"] == content_type, rel
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert await resp.read() == (WEB / rel).read_bytes()


async def test_versioned_urls_are_cached_for_a_year_and_others_revalidated(
    client: Client,
) -> None:
    version = version_of(await (await client.get("/")).text())
    pinned = await client.get(f"/static/app.css?v={version}")
    assert pinned.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    for url in ("/static/app.css", "/static/app.css?v=stale0000000"):
        assert (await client.get(url)).headers["Cache-Control"] == "no-cache", url


async def test_an_unchanged_asset_answers_not_modified(client: Client) -> None:
    first = await client.get("/static/app.js")
    etag = first.headers["ETag"]
    again = await client.get("/static/app.js", headers={"If-None-Match": etag})
    assert again.status == 304
    assert await again.read() == b""


async def test_large_assets_are_sent_gzipped_when_accepted(client: Client) -> None:
    rel = "vendor/uplot-1.6.32/uPlot.iife.min.js"
    resp = await client.get(
        f"/static/{rel}", headers={"Accept-Encoding": "gzip"}, auto_decompress=False
    )
    assert resp.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(await resp.read()) == (WEB / rel).read_bytes()
    plain = await client.get(f"/static/{rel}", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers


@pytest.mark.parametrize(
    "target",
    [
        "/static/../dashboard.py",
        "/static/../../pyproject.toml",
        "/static/%2e%2e/dashboard.py",
        "/static/..%2fdashboard.py",
        "/static/vendor/../../dashboard.py",
        "/static/vendor/%2e%2e/%2e%2e/api.py",
        "/static//etc/passwd",
        "/static/%2fetc%2fpasswd",
        "/static/..\\dashboard.py",
        "/static/.hidden",
        "/static/app.js%00.css",
    ],
)
async def test_paths_outside_the_asset_directory_are_refused(
    client: Client,
    target: str,
) -> None:
    status, body = await raw_get(client, target)
    assert 400 <= status < 500, (target, status)
    assert "add_routes" not in body and "root:" not in body and "[project]" not in body


def test_safe_relative_accepts_plain_paths_and_rejects_escapes() -> None:
    assert dashboard.safe_relative("vendor/uplot-1.6.32/uPlot.min.css") is not None
    for bad in ["", "..", "../x", "a/../b", "/etc/passwd", "a//b", ".env", "a\\b", "a\0b", "~x"]:
        assert dashboard.safe_relative(bad) is None, bad


async def test_unknown_asset_is_a_json_404_in_the_monitor(guarded: Client) -> None:
    resp = await guarded.get("/static/nope.js")
    assert resp.status == 404
    assert (await resp.json()) == {"error": "no such dashboard asset", "status": 404}


async def test_page_and_assets_load_without_the_read_token_but_the_api_needs_it(
    guarded: Client,
) -> None:
    for path in ("/", "/nodes/pi-01", "/static/app.js", "/static/app.css"):
        assert (await guarded.get(path)).status == 200, path
    assert (await guarded.get("/v1/nodes")).status == 401
    assert (await guarded.get("/v1/nodes?token=wrong")).status == 401
    bearer = {"Authorization": f"Bearer {READ_TOKEN}"}
    assert (await guarded.get("/v1/nodes", headers=bearer)).status == 200
    assert (await guarded.get(f"/v1/nodes?token={READ_TOKEN}")).status == 200


async def test_csp_allows_exactly_the_inline_import_map(client: Client) -> None:
    resp = await client.get("/")
    page = await resp.text()
    found = re.search(r'<script type="importmap">(.*?)</script>', page, re.S)
    assert found
    digest = base64.b64encode(hashlib.sha256(found.group(1).encode()).digest()).decode()
    csp = resp.headers["Content-Security-Policy"]
    assert f"'sha256-{digest}'" in csp
    assert "unsafe-inline" not in csp
    assert page.count("<script>") == 0, "no other inline script"


async def test_everything_the_page_and_modules_reference_is_served(
    client: Client,
) -> None:
    page = await (await client.get("/")).text()
    urls = set(re.findall(r'"(/static/[^"]+)"', page))
    for module in WEB.glob("*.js"):
        imports = re.findall(r'^import .* from "\./([^"]+)";$', module.read_text(), re.M)
        urls |= {f"/static/{name}" for name in imports}
    assert len(urls) > 10
    for url in sorted(urls):
        assert (await client.get(url)).status == 200, url


def test_vendored_uplot_carries_its_licence_and_is_recorded() -> None:
    vendor = WEB / "vendor"
    assert "MIT License" in (vendor / "uplot-1.6.32" / "LICENSE").read_text()
    readme = (vendor / "README.md").read_text()
    assert "uPlot" in readme and "1.6.32" in readme and "MIT" in readme
