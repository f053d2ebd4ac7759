"""README's "Deploy on Kubernetes" walks through every step the issue lists, with the
commands and paths that exist in this repository."""

from __future__ import annotations

import re

import pytest

from tests.deploy import manifests


def _section() -> str:
    readme = (manifests.ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("\n## Deploy on Kubernetes\n")
    end = readme.index("\n## ", start + 1)
    # Placed just before "## Development".
    assert readme[end:].startswith("\n## Development\n")
    return readme[start:end]


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
def test_section_has_the_step(command: str) -> None:
    assert command in _section()


def test_paths_named_in_the_section_exist() -> None:
    for path in set(re.findall(r"`((?:k8s/|Dockerfile|\.dockerignore)[^`\s]*)`", _section())):
        assert (manifests.ROOT / path.rstrip("/")).exists(), path
