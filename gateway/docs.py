"""Serving the OpenAPI document (``GET /openapi.json``) and Swagger UI to read it (``GET /docs``).

Swagger UI's files are the static folder of the ``swagger-ui-py`` package, served from this process, so
``/docs`` works on a machine with no network; the package's Python code is never imported.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.util
from pathlib import Path

from aiohttp import web

from gateway.openapi import build_spec
from shared.errors import NotFound
from shared.web import dumps

#: Swagger UI's files that ``/docs`` uses, by name, with their content types: nothing else is served.
STATIC_FILES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui-standalone-preset.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}

_INIT_JS = """window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
  layout: "StandaloneLayout"
});"""

DOCS_HTML = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Conveyor API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/static/favicon-32x32.png" sizes="32x32">
<link rel="icon" type="image/png" href="/docs/static/favicon-16x16.png" sizes="16x16">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/static/swagger-ui-standalone-preset.js"></script>
<script>{_INIT_JS}</script>
</body>
</html>
"""

#: The page may load nothing from another origin; its one inline script is allowed by its hash.
DOCS_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    f"script-src 'self' 'sha256-{base64.b64encode(hashlib.sha256(_INIT_JS.encode()).digest()).decode()}'; "
    "connect-src 'self'; frame-ancestors 'none'"
)


@functools.cache
def _spec_body() -> bytes:
    return dumps(build_spec())


@functools.cache
def static_dir() -> Path:
    """Swagger UI's files, found without importing ``swagger_ui`` (its Python code is not needed)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package is not installed")
    return Path(spec.submodule_search_locations[0]) / "static"


async def _openapi(request: web.Request) -> web.Response:
    return web.Response(body=_spec_body(), content_type="application/json")


async def _docs(request: web.Request) -> web.Response:
    return web.Response(text=DOCS_HTML, content_type="text/html",
                        headers={"Content-Security-Policy": DOCS_CSP, "Cache-Control": "no-cache"})


async def _static(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    content_type = STATIC_FILES.get(name)
    if content_type is None:
        raise NotFound(f"no file {name}")
    return web.FileResponse(static_dir() / name, headers={
        "Content-Type": content_type, "Cache-Control": "public, max-age=86400"})


def refuse_other_methods(app: web.Application, path: str, *allowed: str) -> None:
    """Answer any method but ``allowed`` on ``path`` with a 405 and its ``Allow`` header. Without it a
    gateway route's other methods would fall through to the catch-all relay, and the receptionist,
    which knows no such path, would call it a 404."""

    async def refuse(request: web.Request) -> web.StreamResponse:
        raise web.HTTPMethodNotAllowed(request.method, allowed)

    app.router.add_route("*", path, refuse)


def add_docs_routes(app: web.Application) -> None:
    """Serve ``GET /openapi.json``, ``GET /docs`` and Swagger UI's files under ``/docs/static/``."""
    for path, handler in (("/openapi.json", _openapi), ("/docs", _docs), ("/docs/static/{name}", _static)):
        app.router.add_get(path, handler)
        refuse_other_methods(app, path, "GET", "HEAD")
