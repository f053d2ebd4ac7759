"""Exemplars round trip: training stores them, the service lists and serves them, verified.

The bundle is the session's ``digits_bundle``, made by ``run_training`` with its defaults
(8 exemplars per cluster); the app is the real one over a real repository and data plane,
called through httpx.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import tensorflow as tf

from service import bundle
from tests.service.stacks import in_process
from training.data import DataOptions, load_dataset, to_numpy
from training.exemplars import decode_png, to_uint8

pytestmark = pytest.mark.anyio

BASE = "/v1/models/digits/versions/1"


@asynccontextmanager
async def _client(repo: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The REST app over ``repo`` (loaded once, no polling), as an httpx client."""
    async with in_process(repo, max_batch_size=1, drain_seconds=1) as served, \
            served.client("http://aecluster") as client:
        yield client


def _nearest_reference(version_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(training images, cluster ids, distances) from the exported encoder and centroids."""
    x, _ = to_numpy(load_dataset("digits", DataOptions(seed=0)).train)  # the bundle's split
    manifest = bundle.read_manifest(version_dir)
    centroids = bundle.load_centroids(version_dir, manifest)
    encoder = tf.saved_model.load(str(version_dir / bundle.ENCODER_DIR))
    z = encoder.signatures[bundle.SIGNATURE](images=tf.constant(x))[bundle.ENCODER_OUTPUT]
    ids, dist = bundle.assign(z.numpy(), centroids)
    return x, ids, dist


async def test_clusters_and_every_exemplar_round_trip(model_repo: Path) -> None:
    version_dir = model_repo / "digits" / "1"
    manifest = bundle.read_manifest(version_dir)
    assert manifest.training.hyperparameters["exemplars"] == 8
    async with _client(model_repo) as client:
        default = await client.get("/v1/models/digits/clusters")
        assert default.status_code == 200, default.text
        answer = default.json()
        assert (await client.get(f"{BASE}/clusters")).json() == answer
        assert {k: answer[k] for k in ("model", "version", "n_clusters", "latent_dim",
                                       "labels")} == {
            "model": "digits", "version": 1, "n_clusters": 10, "latent_dim": 8, "labels": True}
        assert answer["input"] == manifest.input.model_dump(mode="json")
        assert [c["cluster_id"] for c in answer["clusters"]] == list(range(10))
        assert sum(c["size"] for c in answer["clusters"]) == manifest.training.n_train

        x, ids, dist = _nearest_reference(version_dir)
        for cluster in answer["clusters"]:
            c = cluster["cluster_id"]
            stats = manifest.cluster_stats[c]
            assert cluster["size"] == stats.count
            assert cluster["label"] == manifest.cluster_label(c)
            assert (cluster["distance_p50"], cluster["distance_p99"]) == (stats.p50, stats.p99)
            urls = cluster["exemplars"]
            assert urls == [f"{BASE}/exemplars/{c}/{i}.png" for i in range(min(8, stats.count))]
            nearest = np.sort(dist[ids == c])
            for j, url in enumerate(urls):
                got = await client.get(url)
                assert got.status_code == 200, got.text
                assert got.headers["content-type"] == "image/png"
                assert got.content == (version_dir / url.removeprefix(f"{BASE}/")).read_bytes()
                # The j-th exemplar is a training image of this cluster whose distance is
                # the j-th smallest (up to float noise between training and serving runs).
                pixels = decode_png(got.content)
                matches = [k for k in np.flatnonzero(ids == c)
                           if np.array_equal(to_uint8(x[k]), pixels)]
                assert any(abs(dist[k] - nearest[j]) <= 1e-4 for k in matches), (c, j)

        etag = got.headers["etag"]
        again = await client.get(url, headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""

        # Changed on disk after the load: refused with a clear message, never the new bytes.
        first = version_dir / "exemplars" / "0" / "0.png"
        first.write_bytes(b"\x89PNG not what the manifest says")
        changed = await client.get(f"{BASE}/exemplars/0/0.png")
        assert changed.status_code == 404
        assert "no longer matches the bundle's checksum" in changed.json()["error"]
        (version_dir / "exemplars" / "0" / "1.png").unlink()
        removed = await client.get(f"{BASE}/exemplars/0/1.png")
        assert removed.status_code == 404 and "checksum" in removed.json()["error"]
        assert (await client.get(f"{BASE}/exemplars/0/2.png")).status_code == 200


REFUSED = [  # path, status, part of the message; nothing outside the listed files
    (f"{BASE}/exemplars/0/8.png", 404, "exemplar 8 of cluster 0 does not exist"),
    (f"{BASE}/exemplars/10/0.png", 404, "cluster 10 does not exist"),
    (f"{BASE}/exemplars/x/0.png", 404, "cluster must be a non-negative integer"),
    (f"{BASE}/exemplars/0/-1.png", 404, "must be a non-negative integer"),
    (f"{BASE}/exemplars/%2e%2e/%2e%2e.png", 404, "must be a non-negative integer"),
    (f"{BASE}/exemplars/0/..%2F..%2Fcentroids.joblib", 404, "no endpoint"),
    (f"{BASE}/exemplars/0/%2e%2e%2F%2e%2e%2Fcentroids.png", 404, "no endpoint"),
    (f"{BASE}/exemplars/0/0.png%00", 404, "no endpoint"),
    ("/v1/models/%2e%2e/versions/1/exemplars/0/0.png", 404, "not allowed"),
    ("/v1/models/digits/versions/2/exemplars/0/0.png", 404, "version 2 of model"),
    ("/v1/models/digits/versions/one/exemplars/0/0.png", 400, "positive integer"),
    ("/v1/models/nope/clusters", 404, "not served here"),
    ("/v1/models/digits/versions/3/clusters", 404, "version 3 of model"),
]


async def test_only_listed_exemplars_are_served(model_repo: Path) -> None:
    secret = (model_repo / "digits" / "1" / bundle.CENTROIDS_FILE).read_bytes()
    async with _client(model_repo) as client:
        for path, status, message in REFUSED:
            got = await client.get(path)
            assert got.status_code == status, (path, got.text)
            assert message in got.json()["error"], (path, got.text)
            assert secret not in got.content


async def test_tampered_exemplar_fails_the_whole_bundle_at_load(model_repo: Path) -> None:
    version_dir = model_repo / "digits" / "1"
    target = bundle.read_manifest(version_dir).exemplar_paths(3)[-1]
    (version_dir / target).write_bytes(b"tampered")
    async with _client(model_repo) as client:
        got = await client.get("/v1/models/digits/clusters")
        status = await client.get("/v1/models/digits")
    assert got.status_code == 503
    assert f"checksum mismatch ['{target}']" in got.json()["error"]
    rows = status.json()["model_version_status"]
    assert rows[0]["state"] == "END" and target in rows[0]["status"]["error_message"]


async def test_bundle_without_exemplars_lists_none(model_repo: Path) -> None:
    """A bundle written before exemplars existed (no field, no files) is served as before."""
    version_dir = model_repo / "digits" / "1"
    raw = json.loads((version_dir / bundle.MANIFEST_FILE).read_text())
    raw.pop("exemplars")
    raw["files"] = {k: v for k, v in raw["files"].items() if not k.startswith("exemplars/")}
    (version_dir / bundle.MANIFEST_FILE).write_text(json.dumps(raw))
    for png in sorted(version_dir.glob("exemplars/*/*.png")):
        png.unlink()
    async with _client(model_repo) as client:
        answer = (await client.get("/v1/models/digits/clusters")).json()
        missing = await client.get(f"{BASE}/exemplars/0/0.png")
    assert [c["exemplars"] for c in answer["clusters"]] == [[]] * 10
    assert missing.status_code == 404 and "stores no exemplars" in missing.json()["error"]
