"""GET /docs: Swagger UI from the installed swagger-ui-bundle package, not a CDN.

FastAPI's own /docs page loads Swagger UI's script and stylesheet from a CDN, so behind a firewall or on an
offline cluster it is a blank page. Here the same page loads them from /docs/assets, served from the
swagger-ui-bundle wheel's files. ReDoc (another CDN page) is off.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

ASSETS = "/docs/assets"


def install_docs(app: FastAPI) -> None:
    """/docs and its assets; the app must be made with docs_url=None and redoc_url=None."""
    app.mount(ASSETS, StaticFiles(directory=swagger_ui_path), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - API",
                                   swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{ASSETS}/favicon-32x32.png")
