"""Entry point of the gRPC transport for the server's lifecycle (see :mod:`service.grpc`)."""

from __future__ import annotations

from service.grpc.server import GrpcServer, start_grpc_server

__all__ = ["GrpcServer", "start_grpc_server"]
