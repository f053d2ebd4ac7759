"""A stand-in for ``grpcurl`` with the arguments the docs' examples use, for the test that
runs them (grpcurl is not in Debian, and its release binaries are not in a registry).

It does what grpcurl does for a unary call: asks the server's reflection service for the
method's descriptors, parses ``-d`` as the request's protobuf JSON (unknown fields are an
error, as in grpcurl), calls the method and prints the answer as JSON. A failed call prints
``ERROR:`` with the code and message and exits 1, as grpcurl does. Supported:
``[-plaintext] [-d JSON] [-H 'key: value']... HOST:PORT SERVICE/METHOD`` and ``HOST:PORT list``.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="grpcurl")
    parser.add_argument("-plaintext", action="store_true")
    parser.add_argument("-d", dest="data", default="{}")
    parser.add_argument("-H", dest="headers", action="append", default=[])
    parser.add_argument("target")
    parser.add_argument("method")
    args = parser.parse_args(argv)
    if not args.plaintext:
        raise SystemExit("this stand-in speaks plaintext only (-plaintext)")
    metadata = [tuple(part.strip() for part in h.split(":", 1)) for h in args.headers]

    with grpc.insecure_channel(args.target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        if args.method == "list":
            print("\n".join(sorted(database.get_services())))
            return 0
        service_name, _, method_name = args.method.replace("/", ".").rpartition(".")
        pool = descriptor_pool.DescriptorPool(database)
        method = pool.FindServiceByName(service_name).FindMethodByName(method_name)
        if method.client_streaming or method.server_streaming:
            raise SystemExit(f"{args.method} streams: this stand-in makes unary calls only")
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        request = json_format.Parse(args.data, request_class())
        call = channel.unary_unary(f"/{service_name}/{method_name}",
                                   request_serializer=request_class.SerializeToString,
                                   response_deserializer=response_class.FromString)
        try:
            response = call(request, timeout=30, metadata=metadata or None)
        except grpc.RpcError as exc:
            print(f"ERROR:\n  Code: {exc.code().name}\n  Message: {exc.details()}",
                  file=sys.stderr)
            return 1
        print(json_format.MessageToJson(response, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
