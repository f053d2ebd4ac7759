"""One error table, two renderers: REST and gRPC must agree with it for every error class."""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from http import HTTPStatus
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from service import errors
from service._generated.aecluster.v1 import cluster_service_pb2 as pb
from service._generated.aecluster.v1 import cluster_service_pb2_grpc as pb_grpc
from service.dataplane import DataPlane, VersionInfo
from service.grpc import start_grpc_server
from service.metrics import Metrics
from service.repository import ModelRepository
from service.rest import create_app
from service.settings import Settings
from service.types import ClusterOptions, ClusterResult, ImageInput, ModelRef

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]

# The table of docs/architecture.md, written out independently of service/errors.py.
TABLE: dict[type[errors.ServiceError], tuple[int, grpc.StatusCode]] = {
    errors.InvalidInput: (400, grpc.StatusCode.INVALID_ARGUMENT),
    # Added with issue 39's authentication.
    errors.Unauthenticated: (401, grpc.StatusCode.UNAUTHENTICATED),
    errors.NotFound: (404, grpc.StatusCode.NOT_FOUND),
    errors.MethodNotAllowed: (405, grpc.StatusCode.UNIMPLEMENTED),
    errors.UnsupportedMediaType: (415, grpc.StatusCode.INVALID_ARGUMENT),
    errors.PayloadTooLarge: (413, grpc.StatusCode.RESOURCE_EXHAUSTED),
    errors.QueueFull: (503, grpc.StatusCode.RESOURCE_EXHAUSTED),
    errors.Unavailable: (503, grpc.StatusCode.UNAVAILABLE),
    errors.DeadlineExceeded: (504, grpc.StatusCode.DEADLINE_EXCEEDED),
    errors.InternalError: (500, grpc.StatusCode.INTERNAL),
}


def test_the_table_covers_every_error_class() -> None:
    assert set(TABLE) == set(errors.ERROR_CLASSES)
    for cls, (status, code) in TABLE.items():
        assert cls.http_status == HTTPStatus(status)
        assert grpc.StatusCode[cls.grpc_code] == code


class _Raising(DataPlane):
    """The real data plane with its cluster call replaced by a chosen failure."""

    error: BaseException | None = None

    async def cluster(self, model: ModelRef, images: Sequence[ImageInput],
                      options: ClusterOptions, *, deadline: float | None = None,
                      ) -> tuple[VersionInfo, list[ClusterResult]]:
        assert self.error is not None
        raise self.error


@pytest.fixture
async def transports(tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = Settings(model_repo=tmp_path, poll_seconds=0, grpc_port=0, host="127.0.0.1")
    metrics = Metrics()
    plane = _Raising(ModelRepository(settings, metrics, lambda *a: None),  # type: ignore[arg-type,return-value]
                     settings, metrics)
    server = await start_grpc_server(plane, settings, metrics)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(plane, settings,
                                                                           metrics)),
                             base_url="http://test")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    yield plane, http, pb_grpc.ClusterServiceStub(channel)
    await channel.close()
    await http.aclose()
    await server.stop(0)


def _make(cls: type[errors.ServiceError]) -> errors.ServiceError:
    if cls is errors.QueueFull:
        return errors.QueueFull("queue of digits:1 is full (8 images)", retry_after=2.0)
    return cls(f"{cls.__name__} happened: a message the caller can act on")


@pytest.mark.parametrize("cls", list(TABLE), ids=lambda c: c.__name__)
async def test_rest_and_grpc_render_the_same_row(transports, cls) -> None:  # type: ignore[no-untyped-def]
    plane, http, stub = transports
    error = _make(cls)
    plane.error = error
    png = base64.b64encode(b"\x89PNG-not-decoded-because-the-plane-fails-first").decode()
    status, code = TABLE[cls]

    response = await http.post("/v1/models/digits:cluster", json={"instances": [{"b64": png}]})
    assert response.status_code == status
    body = response.json()
    if cls is errors.InternalError:
        assert "internal" in body["error"] and error.message not in body["error"]
    else:
        assert body == {"error": error.message}
    if cls is errors.QueueFull:
        assert response.headers["Retry-After"] == "2"
    if cls is errors.Unauthenticated:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    else:
        assert "WWW-Authenticate" not in response.headers

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Cluster(pb.ClusterRequest(model="digits", images=[pb.Image(encoded=b"x")]))
    assert info.value.code() == code
    if cls is not errors.InternalError:
        assert info.value.details() == error.message


async def test_unexpected_exceptions_become_500_and_internal(transports) -> None:  # type: ignore[no-untyped-def]
    plane, http, stub = transports
    plane.error = ZeroDivisionError("secret detail")
    response = await http.post("/v1/models/digits:cluster",
                               json={"instances": [np.zeros((8, 8)).tolist()]})
    assert response.status_code == 500 and "secret" not in response.text
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Cluster(pb.ClusterRequest(model="digits", images=[pb.Image(encoded=b"x")]))
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (info.value.details() or "")


def _documented_rows(text: str) -> set[tuple[int, str]]:
    """(HTTP status, gRPC code) of every row of a markdown error table in ``text``."""
    rows = re.findall(r"^\|[^|\n]+\|\s*(\d{3})\b[^|\n]*\|\s*([A-Z_]+)\s*\|\s*$", text,
                      flags=re.MULTILINE)
    return {(int(status), code) for status, code in rows}


@pytest.mark.parametrize("where", ["docs/serving.md", "service/errors.py"])
def test_the_documented_tables_list_every_row(where: str) -> None:
    """docs/serving.md's "Errors follow one table" and the docstring of service/errors.py hold
    the same rows as the error classes: a new class cannot go undocumented."""
    text = (ROOT / where).read_text(encoding="utf-8")
    if where == "docs/serving.md":
        start = text.index("Errors follow one table")
        text = text[start:text.index("\n\n", text.index("| condition", start))]
    assert _documented_rows(text) == {(status, code.name) for status, code in TABLE.values()}


def test_messages_are_bounded_and_say_so() -> None:
    short = errors.NotFound("model 'x' is not served here")
    assert short.message == str(short) == "model 'x' is not served here"
    long = errors.NotFound(f"model {'a' * 5000!r} is not served here")
    assert len(long.message) < errors.MAX_MESSAGE_CHARS + 50
    assert long.message.endswith("(4027 more characters not shown)")
    assert str(long) == long.message
