"""The gRPC transport: native ``aecluster.v1.ClusterService`` and TensorFlow Serving's API.

Thin adapters over :class:`service.dataplane.DataPlane`: servicers parse protobuf, call the
data plane and encode the answer; one interceptor renders errors, request ids and metrics.
"""

from __future__ import annotations

from service.grpc.server import GrpcServer, start_grpc_server

__all__ = ["GrpcServer", "start_grpc_server"]
