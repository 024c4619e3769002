"""Interactive API docs served from this package, with no CDN.

`HTML` is the page at `/api/docs`; its script and style live in `api/static/` and are served under
`/api/docs/static/`. The script renders the page from `/api/openapi.json`, so the docs follow the
routes without a build step. The Content-Security-Policy in the page lets it reach only this origin.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from api.errors import ApiError, error_response

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_PREFIX = "/api/docs/static"
# Only these files are served: a name in the URL never becomes an arbitrary path.
ASSETS = {
    "docs.js": "text/javascript; charset=utf-8",
    "docs.css": "text/css; charset=utf-8",
}

HTML = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'self'; img-src 'self' data:">
<title>Agent Control Plane API docs</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{STATIC_PREFIX}/docs.css">
<script src="{STATIC_PREFIX}/docs.js" defer></script>
</head>
<body>
<header>
<h1 id="title">Agent Control Plane API</h1>
<input id="filter" type="search" placeholder="Filter operations" aria-label="Filter operations">
<input id="api-key" type="password" placeholder="API key (sent as Bearer)"
 aria-label="API key" autocomplete="off">
<button id="show-key" type="button" class="secondary">Show</button>
</header>
<main>
<div id="intro"></div>
<div id="content"><p class="muted">Loading <code>/api/openapi.json</code>…</p></div>
<noscript>This page needs JavaScript; the raw description is at
<a href="/api/openapi.json">/api/openapi.json</a>.</noscript>
</main>
</body>
</html>
"""


@cache
def _asset(name: str) -> tuple[bytes, str]:
    body = (STATIC_DIR / name).read_bytes()
    return body, '"' + hashlib.sha256(body).hexdigest()[:16] + '"'


async def _serve_asset(request: Request) -> Response:
    request.scope["route_template"] = STATIC_PREFIX + "/{name}"
    name = request.path_params["name"]
    media_type = ASSETS.get(name)
    if media_type is None:
        return error_response(ApiError(404, f"No route for {request.url.path}"))
    body, etag = _asset(name)
    headers = {"ETag": etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


def asset_routes() -> list[BaseRoute]:
    return [Route(STATIC_PREFIX + "/{name}", _serve_asset, methods=["GET", "HEAD"])]
