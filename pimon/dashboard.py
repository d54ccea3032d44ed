"""Serve the web dashboard: the page shell and its static assets from ``pimon/web``."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

WEB_DIR = Path(__file__).parent / "web"
CONTENT_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain",
}
TEXT_TYPES = frozenset({"text/javascript", "text/css", "text/html", "image/svg+xml", "text/plain"})
# A versioned URL never changes content, so browsers may keep it for a year;
# anything else (the page itself, unversioned URLs) is revalidated every time.
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
GZIP_MIN_BYTES = 1024
SAFE_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass(frozen=True, slots=True)
class Asset:
    """One static file held in memory, with its precompressed body."""

    body: bytes
    gzipped: bytes | None
    content_type: str
    etag: str


@dataclass(frozen=True, slots=True)
class Site:
    """Everything the dashboard serves, loaded once at start-up."""

    assets: dict[str, Asset]
    version: str
    index: bytes
    csp: str


SITE: web.AppKey[Site] = web.AppKey("dashboard", Site)


def safe_relative(path: str) -> str | None:
    """Return ``path`` if it names a file below the asset root, else None."""
    parts = path.split("/")
    if not path or any(not SAFE_PART.fullmatch(p) for p in parts):
        return None  # rejects "..", ".hidden", empty parts, backslashes, NUL, "%2e"
    return path


def load_assets(root: Path) -> dict[str, Asset]:
    """Read every servable file below ``root`` into memory, keyed by its relative path."""
    assets: dict[str, Asset] = {}
    for file in sorted(root.rglob("*")):
        rel = file.relative_to(root).as_posix()
        kind = CONTENT_TYPES.get(file.suffix)
        if not file.is_file() or kind is None or safe_relative(rel) is None:
            continue
        body = file.read_bytes()
        content_type = f"{kind}; charset=utf-8" if kind in TEXT_TYPES else kind
        squeezed = gzip.compress(body, mtime=0) if len(body) >= GZIP_MIN_BYTES else None
        etag = hashlib.sha256(body).hexdigest()[:16]
        assets[rel] = Asset(body, squeezed, content_type, f'"{etag}"')
    return assets


def assets_version(assets: dict[str, Asset]) -> str:
    """Return a short hash of every asset, so any change busts every cached URL."""
    digest = hashlib.sha256()
    for rel, asset in sorted(assets.items()):
        digest.update(f"{rel}\0{asset.etag}\0".encode())
    return digest.hexdigest()[:12]


def import_map(assets: dict[str, Asset], version: str) -> str:
    """Return an import map that pins every module URL to its versioned form."""
    modules = sorted(rel for rel in assets if rel.endswith(".js") and "/" not in rel)
    imports = {f"/static/{rel}": f"/static/{rel}?v={version}" for rel in modules}
    return json.dumps({"imports": imports}, indent=1)


def build_site(root: Path = WEB_DIR) -> Site:
    """Load the assets and render the page shell with versioned URLs."""
    assets = load_assets(root)
    version = assets_version(assets)
    imports = import_map(assets, version)
    html = (root / "index.html").read_text(encoding="utf-8")
    html = html.replace("{{version}}", version).replace("{{importmap}}", imports)
    # The only inline script is the import map; allow exactly it by hash.
    map_hash = base64.b64encode(hashlib.sha256(imports.encode()).digest()).decode()
    csp = (
        "default-src 'self'; "
        f"script-src 'self' 'sha256-{map_hash}'; "
        "style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
    return Site(assets, version, html.encode(), csp)


def page_headers(site: Site) -> dict[str, str]:
    """Return the headers of the page shell."""
    return {
        "Cache-Control": REVALIDATE,
        "Content-Security-Policy": site.csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


async def page(request: web.Request) -> web.Response:
    """Serve the page shell; the client routes ``/`` and ``/nodes/<name>`` itself."""
    site = request.app[SITE]
    return web.Response(
        body=site.index, content_type="text/html", charset="utf-8", headers=page_headers(site)
    )


async def static(request: web.Request) -> web.Response:
    """Serve one asset from memory, compressed when the client accepts it."""
    site = request.app[SITE]
    rel = safe_relative(request.match_info["path"])
    asset = site.assets.get(rel) if rel is not None else None
    if asset is None:
        raise web.HTTPNotFound(text="no such dashboard asset")
    versioned = request.query.get("v") == site.version
    headers = {
        "Cache-Control": IMMUTABLE if versioned else REVALIDATE,
        "ETag": asset.etag,
        "Vary": "Accept-Encoding",
        "X-Content-Type-Options": "nosniff",
        "Content-Type": asset.content_type,
    }
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    body = asset.body
    if asset.gzipped is not None and "gzip" in request.headers.get("Accept-Encoding", ""):
        body = asset.gzipped
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, headers=headers)


def add_routes(app: web.Application) -> None:
    """Add the dashboard routes (``/``, ``/nodes/{name}``, ``/static/{path}``) to ``app``."""
    app[SITE] = build_site()
    app.router.add_get("/", page)
    app.router.add_get("/nodes/{name}", page)
    app.router.add_get("/static/{path:.+}", static)
