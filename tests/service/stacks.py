"""The service in one process for tests: a repository loaded from real bundles, its data
plane and the FastAPI app, reached through httpx without a socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from service.dataplane import DataPlane
from service.metrics import Metrics
from service.repository import ModelRepository
from service.rest import create_app
from service.runtime import runtime_factory
from service.settings import Settings


@dataclass
class InProcess:
    """The parts of one in-process service, for tests that reach past the HTTP API."""

    settings: Settings
    metrics: Metrics
    repository: ModelRepository
    dataplane: DataPlane
    app: FastAPI

    def client(self, base_url: str = "http://test") -> httpx.AsyncClient:
        """An httpx client that calls the app directly (no socket, no server)."""
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=base_url)


@asynccontextmanager
async def in_process(model_repo: Path, **settings: Any) -> AsyncIterator[InProcess]:
    """Serve ``model_repo`` with ``settings`` (loaded once, no polling); stopped on exit."""
    config = Settings(model_repo=model_repo, poll_seconds=0, **settings)
    metrics = Metrics()
    repository = ModelRepository(config, metrics,
                                 runtime_factory("/CPU:0", config.batch_sizes()))
    await repository.start()
    try:
        dataplane = DataPlane(repository, config, metrics)
        yield InProcess(config, metrics, repository, dataplane,
                        create_app(dataplane, config, metrics))
    finally:
        await repository.stop(1)
