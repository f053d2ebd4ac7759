"""/docs works without internet: Swagger UI's files come from this server."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from service.dataplane import DataPlane
from service.metrics import Metrics
from service.repository import ModelRepository
from service.rest import create_app
from service.runtime import runtime_factory
from service.settings import Settings

pytestmark = pytest.mark.anyio


async def test_docs_page_and_its_assets_are_served_locally(tmp_path: Path) -> None:
    settings = Settings(model_repo=tmp_path, poll_seconds=0)
    metrics = Metrics()
    repository = ModelRepository(settings, metrics, runtime_factory("/CPU:0", (1,)))
    app = create_app(DataPlane(repository, settings, metrics), settings, metrics)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://aecluster") as client:
        page = await client.get("/docs")
        assert page.status_code == 200
        urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", page.text)
        assets = [u for u in urls if u.endswith((".js", ".css", ".png"))]
        assert len(assets) >= 3, urls
        for url in urls:
            assert not url.startswith(("http://", "https://", "//")), url
        for url in assets:
            asset = await client.get(url)
            assert asset.status_code == 200, url
            assert asset.content and (not url.endswith(".js") or len(asset.content) > 100_000)
        assert (await client.get("/openapi.json")).json()["info"]["title"] == "aecluster"
