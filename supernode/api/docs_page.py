"""The OpenAPI pages, `/docs` (Swagger UI) and `/redoc` (ReDoc), with no internet.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so on a host with no internet
they stay blank. These are the same pages, loading every script, style sheet and icon
from this daemon, under `/docs/assets/`. The files come from the `fastapi-offline`
package (pinned in requirements.txt), which ships Swagger UI 5 (the first major version
that reads OpenAPI 3.1, what FastAPI writes), ReDoc and a favicon.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs/assets"
ASSETS_DIR = Path(str(resources.files("fastapi_offline").joinpath("static")))


def mount_docs(app: FastAPI) -> None:
    """Replace the CDN pages FastAPI made at `/docs` and `/redoc` by pages that load only
    from this daemon, and serve their assets."""
    docs_url, redoc_url = app.docs_url or "/docs", app.redoc_url or "/redoc"
    openapi_url = app.openapi_url or "/openapi.json"
    app.router.routes[:] = [
        r for r in app.router.routes if getattr(r, "path", None) not in (docs_url, redoc_url)
    ]
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            oauth2_redirect_url=app.swagger_ui_oauth2_redirect_url,
            # no online validator badge: it would ask validator.swagger.io
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None},
        )

    @app.get(redoc_url, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
