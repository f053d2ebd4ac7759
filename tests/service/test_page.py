"""The web page at ``GET /``: served by the real app, every asset it names is there, it
names no other host, and the API routes around it keep working.

The app runs in process around a data plane whose repository holds no model: the page's
routes must not depend on one. The browser test (tests/integration/test_page_browser.py)
drives the page itself over a real bundle.
"""

from __future__ import annotations

import asyncio
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image

from service.dataplane import DataPlane
from service.metrics import Metrics
from service.repository import ModelRepository
from service.rest import create_app
from service.rest.page import STATIC_DIR, add_page
from service.settings import Settings

STATIC_FILES = sorted(p for p in STATIC_DIR.rglob("*") if p.is_file())
TEXT_FILES = [p for p in STATIC_FILES if p.suffix in {".html", ".js", ".css"}]
# A URL with a scheme, or protocol-relative: either could reach another host.
EXTERNAL_URL = re.compile(
    r"""(?i)\b[a-z][a-z0-9+.-]*://"""  # http://, https://, ws://, ftp://...
    r"""|(?:src|href|action)\s*=\s*["']?//"""  # src="//cdn.example"
    r"""|url\(\s*["']?//"""  # CSS url(//cdn.example)
)


class _Refs(HTMLParser):
    """Every src/href of a document, and the tags that need a text alternative or a label."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.images: list[dict[str, str | None]] = []
        self.controls: list[dict[str, str | None]] = []
        self.label_for: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]
        if tag == "img":
            self.images.append(values)
        if tag in ("input", "select", "textarea"):
            self.controls.append(values)
        if tag == "label" and values.get("for"):
            self.label_for.add(str(values["for"]))


def _no_runtime(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("no model is loaded by these tests")


class Client:
    """A synchronous view of the app through httpx's ASGI transport (one request per call)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport,
                                         base_url="http://testserver") as http:
                response = await http.request(method, path, **kwargs)
                await response.aread()
                return response

        return asyncio.run(send())

    def get(self, path: str) -> httpx.Response:
        return self.request("GET", path)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Client:
    settings = Settings(model_repo=tmp_path_factory.mktemp("empty-repo"), poll_seconds=0)
    metrics = Metrics()
    plane = DataPlane(ModelRepository(settings, metrics, _no_runtime), settings, metrics)
    return Client(create_app(plane, settings, metrics))


def _index_refs(client: Client) -> _Refs:
    parser = _Refs()
    parser.feed(client.get("/").text)
    return parser


def test_root_serves_the_page(client: Client) -> None:
    response = client.get("/")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.text == (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    for element in ('id="file-input"', 'id="drop-zone"', 'id="model-select"',
                    'id="version-select"', 'id="view-clusters"', 'role="alert"'):
        assert element in response.text
    # The browser is told the page loads nothing from another origin.
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"


def test_every_referenced_asset_is_served(client: Client) -> None:
    refs = _index_refs(client).refs
    css = (STATIC_DIR / "style.css").read_text(encoding="utf-8")
    refs += [urljoin("/static/style.css", u)
             for u in re.findall(r"""url\(\s*["']?([^"')]+)""", css)]
    local = [r for r in refs if not r.startswith("#")]
    assert {"static/style.css", "static/app.js", "static/favicon.ico", "/docs",
            "/v1/models"} <= set(local)

    for ref in local:
        response = client.get(urljoin("http://testserver/", ref))
        assert response.status_code == 200, f"{ref}: {response.status_code} {response.text}"
    assert client.get("/static/app.js").headers["content-type"].startswith(
        ("text/javascript", "application/javascript"))
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")


@pytest.mark.parametrize("path", STATIC_FILES, ids=lambda p: p.name)
def test_every_static_file_is_served(client: Client, path: Path) -> None:
    response = client.get(f"/static/{path.relative_to(STATIC_DIR).as_posix()}")

    assert response.status_code == 200
    assert response.content == path.read_bytes()


@pytest.mark.parametrize("path", TEXT_FILES, ids=lambda p: p.name)
def test_no_url_to_another_host(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    hits = [m.group(0) for m in EXTERNAL_URL.finditer(text)]
    assert not hits, f"{path.name} names another host: {hits}"
    assert "@import" not in text and "@font-face" not in text


def test_the_script_calls_only_the_public_native_api() -> None:
    script = (STATIC_DIR / "app.js").read_text(encoding="utf-8")
    # Every absolute path the script builds: quoted or the start of a template literal.
    paths = re.findall(r"""["'`](/[^"'`$]*)""", script)
    assert paths, "the script builds no API path"
    for path in paths:
        assert path == "/v1/models" or path.startswith("/v1/models/"), path
    for endpoint in (":cluster", "/clusters", '"return_reconstruction", "png"'):
        assert endpoint in script


def test_accessible_basics(client: Client) -> None:
    refs = _index_refs(client)
    assert refs.images and all(img.get("alt") for img in refs.images)
    for control in refs.controls:
        assert control.get("id") in refs.label_for or control.get("aria-label"), control
    assert '<html lang="en">' in client.get("/").text


def test_api_routes_keep_working_beside_the_page(client: Client) -> None:
    assert client.get("/healthz").json() == {"status": "live"}
    assert client.get("/v1/models").json() == {"models": []}
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")
    assert client.get("/docs").status_code == 200
    assert "/" not in client.get("/openapi.json").json()["paths"]
    unknown = client.get("/v1/models/nope")
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]
    assert client.post("/v1/models/nope:cluster", json={}).json()["error"]
    assert client.get("/v1/models/nope/whatever").status_code == 404


@pytest.mark.parametrize("path", ["/static/missing.js", "/static/../rest/page.py",
                                  "/static/%2e%2e/rest/page.py", "/index.html"])
def test_nothing_else_is_served(client: Client, path: str) -> None:
    response = client.get(path)

    assert response.status_code == 404
    assert "add_page" not in response.text


def test_the_page_needs_its_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"index\.html"):
        add_page(FastAPI(), tmp_path)
    (tmp_path / "index.html").write_text("<!doctype html>", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match=r"favicon\.ico"):
        add_page(FastAPI(), tmp_path)


def test_favicon_is_a_real_icon_served_where_browsers_ask(client: Client) -> None:
    # Browsers request /favicon.ico on their own; a 404 there is a console error on
    # every page of the server (the browser test asserts a clean console).
    response = client.get("/favicon.ico")

    assert response.status_code == 200
    assert response.headers["content-type"] == "image/x-icon"
    assert response.content == client.get("/static/favicon.ico").content
    icon = Image.open(io.BytesIO(response.content))
    assert icon.format == "ICO" and {(16, 16), (32, 32)} <= icon.info["sizes"]
    assert len(response.content) < 8 * 1024  # small: fetched once per browser
    assert "/favicon.ico" not in client.get("/openapi.json").json()["paths"]


@pytest.mark.skipif(shutil.which("node") is None, reason="node not installed: no syntax check")
def test_the_script_parses() -> None:
    result = subprocess.run(["node", "--check", str(STATIC_DIR / "app.js")],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr

