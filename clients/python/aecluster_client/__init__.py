"""Client of aecluster's native API over gRPC and HTTP, blocking and asyncio.

    from aecluster_client import GrpcClient

    with GrpcClient("localhost:8500", model="digits") as client:
        prediction = client.cluster(open("digit.png", "rb").read())
        print(prediction.cluster_id, prediction.distance, prediction.is_outlier)

Every call has a deadline (``timeout``, retries included) and retries what a later attempt
can answer (a full queue, a server not ready or unreachable) with exponential backoff and
full jitter, never sooner than the server's ``Retry-After`` / ``grpc-retry-pushback-ms``
(:mod:`aecluster_client.retry`). The native API's stubs are public:
``aecluster_client.proto.cluster_service_pb2`` and ``..._pb2_grpc``.
"""

from __future__ import annotations

from aecluster_client._grpc import AsyncGrpcClient, GrpcClient
from aecluster_client._http import AsyncHttpClient, HttpClient
from aecluster_client.errors import ClusterError
from aecluster_client.retry import RetryEvent, RetryPolicy
from aecluster_client.types import ImageInput, NearCluster, Prediction, Reconstruction

__all__ = [
    "AsyncGrpcClient", "AsyncHttpClient", "ClusterError", "GrpcClient", "HttpClient",
    "ImageInput", "NearCluster", "Prediction", "Reconstruction", "RetryEvent", "RetryPolicy",
]
