"""What each cluster looks like: ``GET .../clusters`` and the exemplar thumbnails.

* ``GET /v1/models/{name}[/versions/{v}]/clusters`` - every cluster of the version with its
  training size, label, distance percentiles and the URLs of its exemplars;
* ``GET /v1/models/{name}/versions/{v}/exemplars/{cluster}/{index}.png`` - one exemplar,
  only if the manifest lists it, its bytes re-checked against the manifest's SHA-256.

Exemplar URLs always name the version, so a page that listed them keeps showing the same
pictures while a newer version is rolled out.
"""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.dataplane import ClusterInfo, DataPlane, VersionInfo
from service.errors import NotFound
from service.rest import params
from service.rest.encoding import JSON_MEDIA_TYPE, finite_or_none, json_response
from service.rest.native import ERROR_RESPONSES
from service.rest.params import VersionSegment

PNG_MEDIA_TYPE = "image/png"
# Short: a version directory can be replaced in place (train --overwrite); the ETag lets a
# browser revalidate cheaply after that.
EXEMPLAR_CACHE_CONTROL = "public, max-age=300"
# Cluster ids and exemplar indices are small non-negative integers written in ASCII.
MAX_INDEX_DIGITS = 9

CLUSTERS_EXAMPLE: dict[str, Any] = {
    "model": "digits", "version": 1, "n_clusters": 10, "latent_dim": 8,
    "input": {"height": 8, "width": 8, "channels": 1, "color_mode": "gray",
              "value_scale": "unit", "resize": "bilinear", "preserve_aspect_ratio": False},
    "labels": True,
    "clusters": [{"cluster_id": 0, "size": 180, "label": "0", "distance_p50": 0.42,
                  "distance_p99": 1.3,
                  "exemplars": ["/v1/models/digits/versions/1/exemplars/0/0.png"]}],
}


def clusters_router(dataplane: DataPlane) -> APIRouter:
    """The cluster listing and exemplar routes, bound to one data plane."""
    router = APIRouter(tags=["native"])
    clusters_doc: dict[str, Any] = {
        "name": "model_clusters",
        "responses": {**ERROR_RESPONSES,
                      200: {"content": {JSON_MEDIA_TYPE: {"example": CLUSTERS_EXAMPLE}}}},
    }

    def clusters(request: Request, name: str, version: str | None) -> Response:
        info, rows = dataplane.clusters(params.model_ref(name, version))
        prefix = f"{request.scope.get('root_path', '')}/v1/models/{info.name}/versions/" \
                 f"{info.version}/"
        return json_response(_clusters_answer(info, rows, prefix))

    @router.get("/v1/models/{name}/clusters", summary="Clusters of the default version",
                **clusters_doc)
    async def clusters_default(request: Request, name: str) -> Response:
        """Every cluster with its training size, label, distances and exemplar URLs."""
        return clusters(request, name, None)

    @router.get("/v1/models/{name}/versions/{version}/clusters",
                summary="Clusters of one version", **clusters_doc)
    async def clusters_version(request: Request, name: str, version: VersionSegment) -> Response:
        """As the default-version listing, for ``version``."""
        return clusters(request, name, version)

    @router.get(
        "/v1/models/{name}/versions/{version}/exemplars/{cluster}/{index}.png",
        name="exemplar", summary="One exemplar thumbnail (PNG)", response_class=Response,
        responses={**ERROR_RESPONSES,
                   200: {"content": {PNG_MEDIA_TYPE: {}},
                         "description": "A training image near the cluster's centroid."}},
    )
    async def exemplar(request: Request, name: str, version: VersionSegment, cluster: str,
                       index: str) -> Response:
        """A PNG the bundle's manifest lists, after its SHA-256 was checked again."""
        model = params.model_ref(name, version)
        data = await dataplane.exemplar(model, _number(cluster, "cluster"),
                                        _number(index, "exemplar index"))
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        headers = {"ETag": etag, "Cache-Control": EXEMPLAR_CACHE_CONTROL,
                   "X-Content-Type-Options": "nosniff"}
        if etag in _etags(request.headers.get("if-none-match")):
            return Response(status_code=304, headers=headers)
        return Response(data, media_type=PNG_MEDIA_TYPE, headers=headers)

    return router


def _number(text: str, what: str) -> int:
    """A path segment that must be a non-negative integer; anything else names no file."""
    if not text.isascii() or not text.isdigit() or len(text) > MAX_INDEX_DIGITS:
        raise NotFound(f"{what} must be a non-negative integer, got {text!r}")
    return int(text)


def _etags(header: str | None) -> set[str]:
    if not header:
        return set()
    return {part.strip().removeprefix("W/") for part in header.split(",")}


def _clusters_answer(info: VersionInfo, rows: list[ClusterInfo], prefix: str) -> dict[str, Any]:
    manifest = info.manifest
    return {
        "model": info.name,
        "version": info.version,
        "n_clusters": manifest.n_clusters,
        "latent_dim": manifest.latent_dim,
        "input": manifest.input.model_dump(mode="json"),
        "labels": manifest.label_map is not None,
        "clusters": [
            {"cluster_id": row.cluster_id, "size": row.size, "label": row.label,
             "distance_p50": finite_or_none(row.distance_p50),
             "distance_p99": finite_or_none(row.distance_p99),
             "exemplars": [prefix + path for path in row.exemplars]}
            for row in rows
        ],
    }
