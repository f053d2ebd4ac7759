"""Images to requests and answers to :class:`Prediction`, for both transports."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from aecluster_client.errors import ClusterError
from aecluster_client.proto import cluster_service_pb2 as pb
from aecluster_client.types import ImageInput, NearCluster, Prediction, Reconstruction

_RECONSTRUCTION = {"none": pb.ClusterRequest.NONE, "png": pb.ClusterRequest.PNG,
                   "array": pb.ClusterRequest.ARRAY}


def _pixels(image: np.ndarray) -> np.ndarray:
    # The server reads uint8 0..255 or float32 in [0, 1]; other float widths and integer
    # types are converted here, so numpy's defaults (float64, int64) just work.
    if image.dtype == np.uint8:
        return image
    if np.issubdtype(image.dtype, np.floating):
        return image.astype("<f4")
    if np.issubdtype(image.dtype, np.integer) or image.dtype == np.bool_:
        return image.astype(np.uint8)
    raise ClusterError("INVALID_ARGUMENT", f"images must be bytes or a numeric array, "
                                           f"not an array of {image.dtype}")


def image_message(image: ImageInput) -> pb.Image:
    """An encoded file or raw pixels as the native API's ``Image``."""
    if isinstance(image, bytes | bytearray | memoryview):
        return pb.Image(encoded=bytes(image))
    pixels = _pixels(np.asarray(image))
    return pb.Image(tensor=pb.Tensor(shape=list(pixels.shape), dtype=str(pixels.dtype.name),
                                     data=pixels.tobytes()))


def grpc_request(images: Sequence[ImageInput], model: str, version: int | None,
                 reconstruction: Reconstruction, embedding: bool, top_k: int
                 ) -> pb.ClusterRequest:
    """The ``ClusterRequest`` of one call."""
    request = pb.ClusterRequest(model=model, images=[image_message(i) for i in images],
                                return_reconstruction=_RECONSTRUCTION[reconstruction],
                                return_embedding=embedding, top_k=top_k)
    if version is not None:
        request.version = version
    return request


def from_grpc(reply: pb.ClusterResponse) -> list[Prediction]:
    """Every prediction of a ``ClusterResponse``."""
    found = []
    for p in reply.predictions:
        array = None
        if p.HasField("reconstruction_array"):
            tensor = p.reconstruction_array
            array = np.frombuffer(tensor.data, dtype="<f4").reshape(tuple(tensor.shape))
        found.append(Prediction(
            model=reply.model, version=reply.version, cluster_id=p.cluster_id,
            distance=p.distance, is_outlier=p.is_outlier,
            label=p.label if p.HasField("label") else None,
            reconstruction=array,
            reconstruction_png=p.reconstruction_png if p.HasField("reconstruction_png") else None,
            reconstruction_error=(p.reconstruction_error if p.HasField("reconstruction_error")
                                  else None),
            psnr=p.psnr if p.HasField("psnr") else None,
            embedding=np.asarray(p.embedding, dtype=np.float32) if p.embedding else None,
            top_k=tuple(NearCluster(c.cluster_id, c.distance) for c in p.top_k)))
    return found


def http_body(images: Sequence[ImageInput], reconstruction: Reconstruction, embedding: bool,
              top_k: int) -> dict[str, Any]:
    """The JSON body of ``:cluster``: ``{"b64": ...}`` per file, nested lists per array."""
    instances: list[Any] = []
    for image in images:
        if isinstance(image, bytes | bytearray | memoryview):
            instances.append({"b64": base64.b64encode(bytes(image)).decode("ascii")})
        else:
            instances.append(_pixels(np.asarray(image)).tolist())
    return {"instances": instances, "return_reconstruction": reconstruction,
            "return_embedding": embedding, "top_k": top_k}


def from_http(answer: Mapping[str, Any]) -> list[Prediction]:
    """Every prediction of a ``:cluster`` JSON answer."""
    try:
        model, version = str(answer["model"]), int(answer["version"])
        found = []
        for p in answer["predictions"]:
            recon = p.get("reconstruction")
            png = array = None
            if isinstance(recon, dict):
                png = base64.b64decode(recon["b64"])
            elif recon is not None:
                array = np.asarray(recon, dtype=np.float32)
            embedding = p.get("embedding")
            found.append(Prediction(
                model=model, version=version, cluster_id=int(p["cluster_id"]),
                distance=float(p["distance"]), is_outlier=bool(p["is_outlier"]),
                label=p.get("label"), reconstruction=array, reconstruction_png=png,
                reconstruction_error=p.get("reconstruction_error"), psnr=p.get("psnr"),
                embedding=None if embedding is None else np.asarray(embedding, np.float32),
                top_k=tuple(NearCluster(int(c["cluster_id"]), float(c["distance"]))
                            for c in p.get("top_k", ()))))
        return found
    except (KeyError, TypeError, ValueError) as exc:
        raise ClusterError("INTERNAL", f"the server's answer is not a :cluster answer: "
                                       f"{exc!r}") from exc
