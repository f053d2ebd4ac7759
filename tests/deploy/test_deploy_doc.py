"""docs/deploy.md walks through every step the issue lists, with the commands and paths that
exist in this repository, and README.md leads to it."""

from __future__ import annotations

import re

import pytest

from tests.deploy import manifests

PAGE = manifests.ROOT / "docs" / "deploy.md"


def _page() -> str:
    return PAGE.read_text(encoding="utf-8")


@pytest.mark.parametrize("command", [
    "docker build --build-arg VARIANT=gpu",           # build
    "docker push ",                                   # push
    "kubectl apply -k k8s/overlays/gpu",              # deploy
    "kubectl apply -k k8s/monitoring",
    "kubectl create -f k8s/training-job.yaml",        # train a new version
    "kubectl -n aecluster rollout status deployment/aecluster",  # watch the rollout
    "port-forward svc/aecluster 8501:8501 8500:8500",  # call it
    "curl -s localhost:8501/metrics",                 # scrape metrics
    "grpcurl -plaintext",
    "aecluster.v1.ClusterService/Cluster",
])
def test_page_has_the_step(command: str) -> None:
    assert command in _page()


def test_paths_named_on_the_page_exist() -> None:
    paths = set(re.findall(r"`((?:k8s/|Dockerfile|\.dockerignore)[^`\s]*)`", _page()))
    assert paths
    for path in paths:
        assert (manifests.ROOT / path.rstrip("/")).exists(), path


def test_every_component_is_described() -> None:
    for component in sorted((manifests.K8S / "components").iterdir()):
        assert f"`k8s/components/{component.name}/`" in _page(), component.name


def test_the_readme_links_the_page() -> None:
    readme = (manifests.ROOT / "README.md").read_text(encoding="utf-8")
    assert "](docs/deploy.md)" in readme
