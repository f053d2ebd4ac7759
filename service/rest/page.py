"""The service's own web page: ``GET /``, its static files under ``/static/`` and the
site icon at ``/favicon.ico``.

Plain files from ``service/static/`` (no build step, nothing fetched from another host);
the page talks to the public native API only (``/v1/models``, ``:cluster``, ``/clusters``).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
STATIC_PREFIX = "/static"
INDEX_FILE = "index.html"
FAVICON_FILE = "favicon.ico"

# The page needs nothing from another origin: say so to the browser, so an injected
# script or a stray external URL cannot load anything. Reconstructions arrive as data:
# URLs and the chosen image is shown through a blob: URL.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Small and changing with each release: revalidate rather than serve a stale page.
    "Cache-Control": "no-cache",
}


def add_page(app: FastAPI, static_dir: Path = STATIC_DIR) -> None:
    """Serve the page at ``/``, its assets at ``/static/`` and its icon at ``/favicon.ico``.

    Raises FileNotFoundError at start-up, not on the first visit, when the files are
    missing (e.g. a wheel built without its package data).
    """
    index, favicon = static_dir / INDEX_FILE, static_dir / FAVICON_FILE
    for required in (index, favicon):
        if not required.is_file():
            raise FileNotFoundError(f"the service's page is missing: {required} does not exist")

    async def page() -> Response:
        """The web page: inspect an image, browse the clusters of a model."""
        return FileResponse(index, media_type="text/html; charset=utf-8",
                            headers=PAGE_HEADERS)

    async def icon() -> Response:
        """The site icon. The page links it from /static/; browsers also ask for it here
        unprompted (any page of the server, /docs and /metrics included), and a 404 there
        is an error in every browser console."""
        return FileResponse(favicon, media_type="image/x-icon",
                            headers={"Cache-Control": "public, max-age=86400"})

    app.add_api_route("/", page, methods=["GET"], name="page", include_in_schema=False)
    app.add_api_route("/favicon.ico", icon, methods=["GET"], name="favicon",
                      include_in_schema=False)
    app.mount(STATIC_PREFIX, StaticFiles(directory=static_dir), name="static")
