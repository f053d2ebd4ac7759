"""The REST app served by a real uvicorn on a free port, over a real DataPlane and a real
digits bundle; called through httpx (and raw sockets where httpx would tidy the request)."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import http.client
import io
import json
import logging
import re
import socket
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from PIL import Image
from sklearn.datasets import load_digits
from starlette.routing import Mount, Route

from service import bundle
from service.dataplane import DataPlane
from service.metrics import Metrics
from service.repository import ModelRepository
from service.rest import create_app
from service.rest.app import UNKNOWN_ROUTE, add_routes
from service.runtime import runtime_factory
from service.settings import Settings
from service.types import ClusterOptions, ImageInput, ModelRef
from tests.loop_thread import LoopThread
from tests.service.bundles import clone_version

T = TypeVar("T")
MAX_BODY = 1024 * 1024
MAX_IMAGES = 16
MAX_PIXELS = 100_000


class LiveServer(LoopThread):
    """create_app over a real DataPlane, served by uvicorn in a thread with its own loop."""

    def __init__(self, settings: Settings,
                 customize: Callable[[FastAPI], None] | None = None) -> None:
        super().__init__("rest-test-server")
        self.settings = settings
        self.customize = customize
        self.port = 0
        self.metrics = Metrics()

    def _stop(self) -> None:
        self.server.should_exit = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run ``coro`` on the server's loop (where the data plane lives)."""
        assert self.loop is not None, "the server is not running"
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _serve(self) -> None:
        settings = self.settings

        factory = runtime_factory("/CPU:0", settings.batch_sizes())

        repository = ModelRepository(settings, self.metrics, factory)
        await repository.start()
        self.dataplane = DataPlane(repository, settings, self.metrics)
        self.app = create_app(self.dataplane, settings, self.metrics)
        if self.customize is not None:
            self.customize(self.app)
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP;
        # without it, every answer waits ~40 ms for a delayed ACK (Nagle).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_config=None, access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        task = asyncio.create_task(self.server.serve(sockets=[sock]))
        while not self.server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        self._started()
        await task
        await repository.stop(5)


def _settings(repo: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        model_repo=repo, poll_seconds=0, max_batch_size=8, max_batch_delay_ms=2,
        max_body_bytes=MAX_BODY, max_images_per_request=MAX_IMAGES,
        max_image_pixels=MAX_PIXELS, drain_seconds=5,
    )
    values.update(overrides)
    return Settings(**values)


def _boom(app: FastAPI) -> None:
    # A route that fails the way a bug would: what the 500 path exists for.
    async def boom() -> None:
        raise RuntimeError("secret internals: /etc/shadow")

    app.add_api_route("/boom", boom, name="boom")


@pytest.fixture(scope="module")
def live(digits_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    repo = tmp_path_factory.mktemp("rest-repo")
    clone_version(digits_bundle, repo, "digits", 1)
    with LiveServer(_settings(repo), customize=_boom) as server:
        yield server


@pytest.fixture(scope="module")
def client(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=60) as http_client:
        yield http_client


@pytest.fixture(scope="module")
def digits_u8() -> np.ndarray:
    """Real 8x8 digits as uint8 0..255 [N, 8, 8]."""
    images = load_digits().images[:12]
    return np.round(images / 16.0 * 255.0).astype(np.uint8)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode("ascii")}


CLUSTER = "/v1/models/digits:cluster"
PREDICT = "/v1/models/digits:predict"


def _assert_error(response: httpx.Response, status: int, *fragments: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    message = body["error"]
    for fragment in fragments:
        assert fragment.lower() in message.lower(), message
    return str(message)


def _still_serving(client: httpx.Client, digits_u8: np.ndarray) -> None:
    response = client.post(CLUSTER, json={"instances": [_b64(_png(digits_u8[0]))]})
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 1


# ---- operations ----------------------------------------------------------------------


def test_health_readiness_and_metrics(client: httpx.Client) -> None:
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "aecluster_requests_total" in metrics.text
    assert 'aecluster_model_info{' in metrics.text
    models = client.get("/v1/models").json()["models"]
    assert [(m["name"], m["version"], m["n_clusters"]) for m in models] == [("digits", 1, 10)]


def test_routes_sit_on_the_app_in_serving_order(live: LiveServer) -> None:
    """No included-router nodes (FastAPI >= 0.137 walks each one twice per request: issue 38
    measured 126 against 73 µs a request), inference routes first, the catch-all last."""
    app = live.app
    assert all(isinstance(route, (APIRoute, Route, Mount)) for route in app.router.routes), \
        [type(route).__name__ for route in app.router.routes]
    names = [route.name for route in app.router.routes if isinstance(route, APIRoute)]
    # The first of the V2, native and TF Serving routes answers inference; "unknown" (every
    # other /v1/models path) comes after all of them, or it would answer their requests.
    model_routes = [i for i, name in enumerate(names)
                    if name.startswith(("v2_", "cluster", "predict", "model_"))]
    assert names[model_routes[0]] == "v2_infer"
    assert names.index(UNKNOWN_ROUTE) > model_routes[-1]
    with pytest.raises(ValueError, match="prefix"):
        add_routes(FastAPI(), [APIRouter(prefix="/x")])


def test_openapi_documents_the_native_endpoint(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/v1/models/{name}:cluster"]["post"]
    content = operation["requestBody"]["content"]
    assert {"application/json", "multipart/form-data", "image/png", "image/jpeg"} <= set(content)
    assert content["application/json"]["schema"]["$ref"] == "#/components/schemas/ClusterRequest"
    components = schema["components"]["schemas"]
    assert "instances" in components["ClusterRequest"]["properties"]
    assert {"cluster_id", "distance", "is_outlier", "label", "reconstruction", "top_k"} <= set(
        components["Prediction"]["properties"])
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["$ref"] == "#/components/schemas/ClusterResponse"
    [timeout] = [p for p in operation["parameters"] if p["name"] == "X-Request-Timeout-Ms"]
    assert timeout["schema"] == {"type": "number", "exclusiveMinimum": 0}  # as the server
    # Every {version} is what the server accepts: a positive integer (issue 39: "string").
    versions = [p["schema"] for path, ops in schema["paths"].items() if "{version}" in path
                for op in ops.values() for p in op.get("parameters", [])
                if p["name"] == "version"]
    assert len(versions) == 9  # native 2, TF Serving 4, V2 3 (metadata, ready, infer)
    assert all(v["type"] == "integer" and v["minimum"] == 1 for v in versions), versions
    assert "PredictRequest" in components
    for path in ("/v1/models/{name}:predict", "/v1/models/{name}/metadata", "/healthz",
                 "/readyz", "/metrics", "/v2", "/v2/models/{name}/versions/{version}/infer"):
        assert path in schema["paths"], path
    # Every $ref points at a component that exists (the injected body schemas included).
    refs = set(re.findall(r'"\$ref": ?"#/components/schemas/([^"]+)"', json.dumps(schema)))
    assert refs <= set(components), refs - set(components)
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_readiness_is_503_without_a_model(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with LiveServer(_settings(tmp_path / "empty")) as server, \
            httpx.Client(base_url=server.url, timeout=30) as http_client:
        assert http_client.get("/healthz").status_code == 200
        _assert_error(http_client.get("/readyz"), 503, "not ready")
        _assert_error(http_client.post(CLUSTER, json={"instances": [[[0.5]]]}), 404,
                      "'digits' is not served")


def test_request_id_is_echoed_or_generated(client: httpx.Client, digits_u8: np.ndarray,
                                           caplog: pytest.LogCaptureFixture) -> None:
    body = {"instances": [_b64(_png(digits_u8[0]))]}
    with caplog.at_level(logging.INFO, logger="service.rest.access"):
        echoed = client.post(CLUSTER, json=body, headers={"X-Request-Id": "trace-42.a:b"})
        deadline = time.monotonic() + 5
        while not any(getattr(r, "request_id", "") == "trace-42.a:b" for r in caplog.records):
            assert time.monotonic() < deadline, "no access log line for the request"
            time.sleep(0.01)
    assert echoed.headers["x-request-id"] == "trace-42.a:b"
    access = next(r for r in caplog.records if getattr(r, "request_id", "") == "trace-42.a:b")
    assert (access.__dict__["status"], access.__dict__["api_method"]) == (200, "cluster")
    generated = client.get("/healthz").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    # An id that could forge log lines or headers is replaced, not echoed.
    forged = client.get("/healthz", headers={"X-Request-Id": "a b\"c" + "x" * 200})
    assert re.fullmatch(r"[0-9a-f]{32}", forged.headers["x-request-id"])


def test_unexpected_errors_are_500_with_a_generic_message(
        client: httpx.Client, digits_u8: np.ndarray, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="service.rest.middleware"):
        response = client.get("/boom")
        deadline = time.monotonic() + 5
        while not caplog.records:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    message = _assert_error(response, 500, "internal server error")
    assert "secret" not in message and response.headers["x-request-id"] in message
    assert caplog.records[0].exc_info is not None
    assert "secret internals" in caplog.text
    _still_serving(client, digits_u8)


# ---- native :cluster -----------------------------------------------------------------


def test_cluster_json_matches_the_data_plane(live: LiveServer, client: httpx.Client,
                                             digits_u8: np.ndarray) -> None:
    pngs = [_png(image) for image in digits_u8]
    response = client.post(CLUSTER, json={
        "instances": [_b64(png) for png in pngs], "return_embedding": True, "top_k": 3,
    })
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["model"], answer["version"]) == ("digits", 1)
    _, expected = live.call(live.dataplane.cluster(
        ModelRef("digits"), [ImageInput(encoded=png) for png in pngs],
        ClusterOptions(return_embedding=True, top_k=3)))
    assert len(answer["predictions"]) == len(expected)
    for got, want in zip(answer["predictions"], expected, strict=True):
        assert got["cluster_id"] == want.cluster_id
        assert got["distance"] == pytest.approx(want.distance, abs=1e-5)
        assert got["is_outlier"] == want.is_outlier
        assert got["label"] == want.label
        assert want.embedding is not None
        np.testing.assert_allclose(got["embedding"], want.embedding, atol=1e-5)
        assert [t["cluster_id"] for t in got["top_k"]] == [c for c, _ in want.top_k]
        assert got["top_k"][0]["cluster_id"] == got["cluster_id"]
        distances = [t["distance"] for t in got["top_k"]]
        assert distances == sorted(distances)
        # Nothing that was not asked for.
        assert not {"reconstruction", "reconstruction_error", "psnr"} & set(got)


def test_cluster_arrays_png_and_other_sizes_agree(client: httpx.Client,
                                                  digits_u8: np.ndarray) -> None:
    image = digits_u8[3]
    forms: list[Any] = [
        _b64(_png(image)),
        image.tolist(),                                   # [H][W] integers 0..255
        (image / 255.0)[..., None].tolist(),              # [H][W][1] floats in [0, 1]
        np.repeat(image[..., None], 3, axis=2).tolist(),  # [H][W][3] gray as RGB
    ]
    answer = client.post(CLUSTER, json={"instances": forms}).json()
    ids = {p["cluster_id"] for p in answer["predictions"]}
    assert len(ids) == 1, answer
    distances = [p["distance"] for p in answer["predictions"]]
    assert max(distances) - min(distances) < 1e-3
    # A 32x32 RGB JPEG is converted to gray and resized to 8x8 as the manifest says.
    big = Image.fromarray(np.repeat(image[..., None], 3, axis=2)).resize((32, 32))
    buffer = io.BytesIO()
    big.save(buffer, format="JPEG")
    resized = client.post(CLUSTER, json={"instances": [_b64(buffer.getvalue())]})
    assert resized.status_code == 200, resized.text


def test_cluster_reconstruction_png_and_array(client: httpx.Client,
                                              digits_u8: np.ndarray) -> None:
    instances = [_b64(_png(digits_u8[0])), _b64(_png(digits_u8[1]))]
    as_png = client.post(CLUSTER, json={"instances": instances,
                                        "return_reconstruction": "png"}).json()
    as_array = client.post(CLUSTER, json={"instances": instances,
                                          "return_reconstruction": "array"}).json()
    for png_pred, array_pred in zip(as_png["predictions"], as_array["predictions"],
                                    strict=True):
        decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(
            png_pred["reconstruction"]["b64"]))))
        array = np.asarray(array_pred["reconstruction"], dtype=np.float32)
        assert decoded.shape == (8, 8) and array.shape == (8, 8, 1)
        assert array.min() >= 0.0 and array.max() <= 1.0
        np.testing.assert_allclose(decoded, np.rint(array[..., 0] * 255.0), atol=1)
        assert png_pred["reconstruction_error"] == pytest.approx(
            array_pred["reconstruction_error"])
        assert 0.0 < array_pred["reconstruction_error"] < 1.0
        assert 0.0 < array_pred["psnr"] <= 100.0


def test_cluster_multipart_and_raw_bodies(client: httpx.Client, digits_u8: np.ndarray) -> None:
    pngs = [_png(image) for image in digits_u8[:3]]
    reference = client.post(CLUSTER, json={"instances": [_b64(p) for p in pngs]}).json()
    ids = [p["cluster_id"] for p in reference["predictions"]]
    files = [("file", (f"{i}.png", png, "image/png")) for i, png in enumerate(pngs)]
    form = client.post(CLUSTER, files=files,
                       data={"top_k": "2", "return_reconstruction": "png"})
    assert form.status_code == 200, form.text
    predictions = form.json()["predictions"]
    assert [p["cluster_id"] for p in predictions] == ids
    assert all(len(p["top_k"]) == 2 and "b64" in p["reconstruction"] for p in predictions)
    raw = client.post("/v1/models/digits/versions/1:cluster?return_embedding=true&top_k=1",
                      content=pngs[0], headers={"content-type": "image/png"})
    assert raw.status_code == 200, raw.text
    answer = raw.json()
    assert answer["version"] == 1 and len(answer["predictions"]) == 1
    assert answer["predictions"][0]["cluster_id"] == ids[0]
    assert len(answer["predictions"][0]["embedding"]) == 8


def test_large_json_bodies_are_parsed_off_the_event_loop(client: httpx.Client,
                                                         digits_u8: np.ndarray) -> None:
    # Six 120x120 upscaled digits as integer arrays: a ~500 KB body, parsed on a worker thread.
    big = [np.kron(image, np.ones((15, 15), dtype=np.uint8)).tolist() for image in digits_u8[:6]]
    body = json.dumps({"instances": big}).encode()
    assert len(body) > 256 * 1024
    answer = client.post(CLUSTER, content=body)
    assert answer.status_code == 200, answer.text
    small = client.post(CLUSTER, json={"instances": [image.tolist() for image in digits_u8[:6]]})
    # Bilinear downscaling by 15 samples the centre of each 15x15 block: the originals.
    for a, b in zip(answer.json()["predictions"], small.json()["predictions"], strict=True):
        assert a["cluster_id"] == b["cluster_id"]
        assert a["distance"] == pytest.approx(b["distance"], abs=1e-4)


def test_request_timeout_header(client: httpx.Client, digits_u8: np.ndarray) -> None:
    body = {"instances": [_b64(_png(digits_u8[0]))]}
    ok = client.post(CLUSTER, json=body, headers={"X-Request-Timeout-Ms": "30000"})
    assert ok.status_code == 200, ok.text
    for bad in ("soon", "-5", "0", "nan"):
        _assert_error(client.post(CLUSTER, json=body, headers={"X-Request-Timeout-Ms": bad}),
                      400, "X-Request-Timeout-Ms")


def _bomb_png() -> bytes:
    # 2000 x 2000 black pixels: a few KB on the wire, 4 megapixels decoded.
    return _png(np.zeros((2000, 2000), dtype=np.uint8))


NATIVE_BAD_INPUTS: list[tuple[str, dict[str, Any], int, tuple[str, ...]]] = [
    ("undecodable bytes", {"json": {"instances": [_b64(b"this is not an image")]}}, 400,
     ("image 0", "not a readable")),
    ("truncated png", {"json": {"instances": [_b64(
        _png(np.zeros((8, 8), np.uint8))[:40])]}}, 400, ("image 0",)),
    ("invalid base64", {"json": {"instances": [{"b64": "***"}]}}, 400,
     ("instance 0", "base64")),
    ("pixel bomb", {"json": {"instances": [_b64(_bomb_png())]}}, 413,
     ("image 0", "pixels")),
    ("pixel bomb raw", {"content": _bomb_png(), "headers": {"content-type": "image/png"}},
     413, ("pixels",)),
    ("rank 1", {"json": {"instances": [[0.1, 0.2, 0.3]]}}, 400, ("image 0", "shape")),
    ("rank 4", {"json": {"instances": [[[[[0.5]]]]]}}, 400, ("image 0", "shape")),
    ("two channels", {"json": {"instances": [[[[0.5, 0.5]] * 8] * 8]}}, 400,
     ("image 0", "channels")),
    ("NaN", {"content": b'{"instances": [[[NaN, 0.5], [0.5, 0.5]]]}'}, 400,
     ("image 0", "NaN")),
    ("infinity", {"content": b'{"instances": [[[Infinity, 0.5], [0.5, 0.5]]]}'}, 400,
     ("image 0", "infinite")),
    ("strings", {"json": {"instances": [[["a", "b"], ["c", "d"]]]}}, 400,
     ("instance 0", "non-numeric")),
    ("nulls", {"json": {"instances": [[[None, 1], [1, 1]]]}}, 400,
     ("instance 0", "non-numeric")),
    ("booleans", {"json": {"instances": [[[True, False], [True, True]]]}}, 400,
     ("instance 0", "booleans")),
    ("ragged", {"json": {"instances": [[[0.5, 0.5], [0.5]]]}}, 400,
     ("instance 0", "rectangular")),
    ("out of range ints", {"json": {"instances": [[[300, 0], [0, 0]]]}}, 400,
     ("image 0", "0..255")),
    ("floats above 1", {"json": {"instances": [[[1.5, 0.0], [0.0, 0.0]]]}}, 400,
     ("image 0", "[0, 1]")),
    ("instance neither", {"json": {"instances": ["abc"]}}, 400, ("instance 0", "b64")),
    ("object without b64", {"json": {"instances": [{"png": "abc"}]}}, 400,
     ("instance 0", "b64")),
    ("empty instances", {"json": {"instances": []}}, 400, ("empty",)),
    ("no instances", {"json": {"top_k": 1}}, 400, ("instances",)),
    ("instances not a list", {"json": {"instances": {"b64": "AAAA"}}}, 400,
     ("array of images",)),
    ("too many instances", {"json": {"instances": [[[0.5]]] * (MAX_IMAGES + 1)}}, 413,
     (f"limit is {MAX_IMAGES}",)),
    ("unknown option", {"json": {"instances": [[[0.5]]], "colour": "red"}}, 400,
     ("colour",)),
    ("bad reconstruction format", {"json": {"instances": [[[0.5]]],
                                            "return_reconstruction": "gif"}}, 400,
     ("return_reconstruction",)),
    ("negative top_k", {"json": {"instances": [[[0.5]]], "top_k": -1}}, 400, ("top_k",)),
    ("malformed JSON", {"content": b'{"instances": [', "headers": {
        "content-type": "application/json"}}, 400, ("malformed JSON", "line 1")),
    ("JSON not an object", {"json": [1, 2]}, 400, ("JSON object", "an array")),
    ("empty body", {"content": b""}, 400, ("empty",)),
    ("empty raw body", {"content": b"", "headers": {"content-type": "image/png"}}, 400,
     ("empty",)),
    ("deep nesting", {"content": b"[" * 100_000 + b"]" * 100_000}, 400, ("malformed",)),
    ("multipart without files", {
        "content": b'--xyz\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n1\r\n--xyz--\r\n',
        "headers": {"content-type": "multipart/form-data; boundary=xyz"}}, 400, ("file",)),
    ("urlencoded form", {"data": {"top_k": "1"}}, 400,
     ("malformed JSON", "application/x-www-form-urlencoded")),
    ("multipart without boundary", {"content": b"--x\r\n", "headers": {
        "content-type": "multipart/form-data"}}, 400, ("multipart", "boundary")),
    ("multipart bad option", {"files": [("f", ("a.png", b"x", "image/png"))],
                              "data": {"top_k": "many"}}, 400, ("top_k",)),
    ("too many files", {"files": [("f", (f"{i}.png", b"x", "image/png"))
                                  for i in range(MAX_IMAGES + 3)]}, 413,
     (str(MAX_IMAGES),)),
]


@pytest.mark.parametrize(("request_kwargs", "status", "fragments"),
                         [case[1:] for case in NATIVE_BAD_INPUTS],
                         ids=[case[0] for case in NATIVE_BAD_INPUTS])
def test_cluster_bad_input(client: httpx.Client, digits_u8: np.ndarray,
                           request_kwargs: dict[str, Any], status: int,
                           fragments: tuple[str, ...]) -> None:
    _assert_error(client.post(CLUSTER, **request_kwargs), status, *fragments)
    _still_serving(client, digits_u8)


def test_cluster_query_options_are_checked_even_when_the_body_sets_them(
        client: httpx.Client, digits_u8: np.ndarray) -> None:
    """Found by the schema fuzzing (issue 39): a bad query value was ignored when the JSON
    body set the same option, and the request answered 200."""
    body = {"instances": _unit_images(digits_u8, 1), "top_k": 3,
            "return_reconstruction": "none"}
    _assert_error(client.post(CLUSTER, json=body, params={"top_k": "-4"}), 400, "top_k")
    _assert_error(client.post(CLUSTER, json=body, params={"return_reconstruction": "gif"}),
                  400, "return_reconstruction")
    answer = client.post(CLUSTER, json=body, params={"top_k": "1"})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["predictions"][0]["top_k"]) == 3  # the body's value wins


@pytest.mark.parametrize(("path", "status", "fragment"), [
    ("/v1/models/nope:cluster", 404, "'nope' is not served"),
    ("/v1/models/digits/versions/7:cluster", 404, "version 7"),
    ("/v1/models/digits/versions/abc:cluster", 400, "positive integer"),
    ("/v1/models/digits/versions/0:cluster", 400, "positive integer"),
    ("/v1/models/digits:classify", 404, "model endpoints"),
    ("/v1/models/digits/labels/stable:cluster", 404, "model endpoints"),
])
def test_cluster_unknown_model_version_or_verb(client: httpx.Client, digits_u8: np.ndarray,
                                               path: str, status: int, fragment: str) -> None:
    _assert_error(client.post(path, json={"instances": [[[0.5]]]}), status, fragment)
    _still_serving(client, digits_u8)


# ---- TensorFlow Serving REST API -----------------------------------------------------

OUTPUTS = {"cluster_id", "distance", "is_outlier", "reconstruction", "embedding"}


def _unit_images(digits_u8: np.ndarray, n: int) -> list[Any]:
    return (digits_u8[:n, :, :, None] / 255.0).astype(np.float32).tolist()


def test_predict_row_and_columnar_formats(client: httpx.Client, digits_u8: np.ndarray) -> None:
    images = _unit_images(digits_u8, 4)
    native = client.post(CLUSTER, json={"instances": images}).json()["predictions"]
    ids = [p["cluster_id"] for p in native]

    rows = client.post(PREDICT, json={"instances": images})
    assert rows.status_code == 200, rows.text
    predictions = rows.json()["predictions"]
    assert set(rows.json()) == {"predictions"} and len(predictions) == 4
    assert all(set(p) == OUTPUTS for p in predictions)
    assert [p["cluster_id"] for p in predictions] == ids
    assert np.asarray(predictions[0]["reconstruction"]).shape == (8, 8, 1)
    assert len(predictions[0]["embedding"]) == 8
    assert all(isinstance(p["is_outlier"], bool) for p in predictions)
    for p, n in zip(predictions, native, strict=True):
        assert p["distance"] == pytest.approx(n["distance"], abs=1e-5)

    columns = client.post("/v1/models/digits/versions/1:predict",
                          json={"signature_name": "serving_default",
                                "inputs": {"images": images}})
    assert columns.status_code == 200, columns.text
    outputs = columns.json()["outputs"]
    assert set(columns.json()) == {"outputs"} and set(outputs) == OUTPUTS
    assert outputs["cluster_id"] == ids
    assert np.asarray(outputs["reconstruction"]).shape == (4, 8, 8, 1)
    # The only input may also be given unnamed.
    unnamed = client.post(PREDICT, json={"inputs": images}).json()["outputs"]
    assert unnamed["cluster_id"] == ids
    named_rows = client.post(PREDICT, json={"instances": [{"images": i} for i in images]})
    assert [p["cluster_id"] for p in named_rows.json()["predictions"]] == ids


def test_predict_output_filter_gives_plain_values(client: httpx.Client,
                                                  digits_u8: np.ndarray) -> None:
    images = _unit_images(digits_u8, 3)
    ids = [p["cluster_id"] for p in
           client.post(CLUSTER, json={"instances": images}).json()["predictions"]]
    rows = client.post(PREDICT, json={"instances": images, "output_filter": ["cluster_id"]})
    assert rows.json() == {"predictions": ids}
    columns = client.post(PREDICT, json={"inputs": images, "output_filter": ["cluster_id"]})
    assert columns.json() == {"outputs": ids}
    two = client.post(PREDICT, json={"inputs": images,
                                     "output_filter": ["cluster_id", "is_outlier"]}).json()
    assert set(two["outputs"]) == {"cluster_id", "is_outlier"}
    two_rows = client.post(PREDICT, json={"instances": images,
                                          "output_filter": ["distance", "embedding"]}).json()
    assert all(set(p) == {"distance", "embedding"} for p in two_rows["predictions"])


def test_predict_bytes_signature(client: httpx.Client, digits_u8: np.ndarray) -> None:
    pngs = [_b64(_png(image)) for image in digits_u8[:3]]
    ids = [p["cluster_id"] for p in
           client.post(CLUSTER, json={"instances": pngs}).json()["predictions"]]
    for body in (
        {"signature_name": "predict_bytes", "instances": pngs},
        {"signature_name": "predict_bytes", "instances": [{"image_bytes": p} for p in pngs]},
        {"signature_name": "predict_bytes", "inputs": pngs},
        {"signature_name": "predict_bytes", "inputs": {"image_bytes": pngs}},
    ):
        body["output_filter"] = ["cluster_id"]
        response = client.post(PREDICT, json=body)
        assert response.status_code == 200, (body, response.text)
        assert next(iter(response.json().values())) == ids


def test_model_status(client: httpx.Client) -> None:
    expected = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}
    assert client.get("/v1/models/digits").json() == expected
    assert client.get("/v1/models/digits/versions/1").json() == expected
    _assert_error(client.get("/v1/models/digits/versions/9"), 404, "version 9")
    _assert_error(client.get("/v1/models/nope"), 404, "'nope'")
    _assert_error(client.get("/v1/models/digits/versions/x"), 400, "positive integer")


def test_model_metadata(client: httpx.Client, digits_bundle: Path) -> None:
    for path in ("/v1/models/digits/metadata", "/v1/models/digits/versions/1/metadata"):
        answer = client.get(path).json()
        assert answer["model_spec"] == {"name": "digits", "signature_name": "", "version": "1"}
        signatures = answer["metadata"]["signature_def"]["signature_def"]
        assert set(signatures) == {"serving_default", "predict_bytes"}
        images = signatures["serving_default"]["inputs"]["images"]
        assert images["dtype"] == "DT_FLOAT"
        assert [d["size"] for d in images["tensor_shape"]["dim"]] == ["-1", "8", "8", "1"]
        assert signatures["predict_bytes"]["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
        outputs = signatures["serving_default"]["outputs"]
        assert set(outputs) == OUTPUTS and outputs["cluster_id"]["dtype"] == "DT_INT64"
        assert outputs["is_outlier"]["dtype"] == "DT_BOOL"
        assert signatures["serving_default"]["method_name"] == "tensorflow/serving/predict"
        manifest = bundle.read_manifest(digits_bundle)
        assert answer["aecluster"]["n_clusters"] == manifest.n_clusters
        assert answer["aecluster"]["files"] == manifest.files
        # Library versions only when asked for (issue 39: they told callers what to attack).
        assert "library_versions" not in answer["aecluster"]
    asked = client.get("/v1/models/digits/metadata",
                       params={"include_library_versions": "true"}).json()
    assert asked["aecluster"]["library_versions"] == manifest.library_versions
    _assert_error(client.get("/v1/models/nope/metadata"), 404, "'nope'")
    _assert_error(client.get("/v1/models/digits/versions/3/metadata"), 404, "version 3")


PREDICT_BAD_INPUTS: list[tuple[str, dict[str, Any], int, tuple[str, ...]]] = [
    ("both instances and inputs", {"instances": [[[[0.5]]]], "inputs": [[[[0.5]]]]}, 400,
     ("both", "instances", "inputs")),
    ("neither", {"signature_name": "serving_default"}, 400, ("instances", "inputs")),
    ("unknown signature", {"signature_name": "classify", "instances": [[[[0.5]]]]}, 404,
     ("classify", "serving_default", "predict_bytes")),
    ("signature not a string", {"signature_name": 3, "instances": [[[[0.5]]]]}, 400,
     ("signature_name",)),
    ("unknown input name", {"inputs": {"pixels": [[[[0.5]]]]}}, 400, ("pixels", "images")),
    ("mixed named rows", {"instances": [{"images": [[[0.5]]]}, [[[0.5]]]]}, 400, ("mix",)),
    ("rows naming different inputs", {"signature_name": "predict_bytes", "instances": [
        {"image_bytes": {"b64": "AAAA"}}, {"other": {"b64": "AAAA"}}]}, 400,
     ("same inputs",)),
    ("unknown output", {"instances": [[[[0.5]]]], "output_filter": ["logits"]}, 400,
     ("logits", "cluster_id")),
    ("output_filter not a list", {"instances": [[[[0.5]]]], "output_filter": "cluster_id"},
     400, ("output_filter",)),
    ("wrong shape", {"instances": [[[0.5] * 8] * 8]}, 400, ("shape", "8, 8, 1")),
    ("wrong channels", {"inputs": [[[[0.5, 0.5, 0.5]] * 8] * 8]}, 400, ("shape",)),
    ("out of range", {"inputs": [[[[2.0]] * 8] * 8]}, 400, ("[0, 1]",)),
    ("non-numeric", {"inputs": [[[["x"]] * 8] * 8]}, 400, ("non-numeric",)),
    ("empty instances", {"instances": []}, 400, ("empty",)),
    ("instances not a list", {"instances": 3}, 400, ("array",)),
    ("undecodable bytes", {"signature_name": "predict_bytes",
                           "instances": [_b64(b"GIF89a-but-not-really")]}, 400, ("image 0",)),
    ("pixel bomb bytes", {"signature_name": "predict_bytes",
                          "instances": [_b64(_bomb_png())]}, 413, ("pixels",)),
    ("bad base64", {"signature_name": "predict_bytes", "instances": [{"b64": "%%%"}]}, 400,
     ("base64",)),
    ("too many", {"inputs": [[[[0.5]] * 8] * 8] * (MAX_IMAGES + 1)}, 413,
     (f"limit is {MAX_IMAGES}",)),
]


@pytest.mark.parametrize(("body", "status", "fragments"),
                         [case[1:] for case in PREDICT_BAD_INPUTS],
                         ids=[case[0] for case in PREDICT_BAD_INPUTS])
def test_predict_bad_input(client: httpx.Client, digits_u8: np.ndarray, body: dict[str, Any],
                           status: int, fragments: tuple[str, ...]) -> None:
    _assert_error(client.post(PREDICT, json=body), status, *fragments)
    _still_serving(client, digits_u8)


def test_predict_nan_and_malformed_json(client: httpx.Client, digits_u8: np.ndarray) -> None:
    row = "[" + ",".join(["[0.5]"] * 7 + ["[NaN]"]) + "]"
    image = "[" + ",".join([row] * 8) + "]"
    _assert_error(client.post(PREDICT, content=f'{{"instances": [{image}]}}'.encode()), 400,
                  "NaN")
    _assert_error(client.post(PREDICT, content=b'{"instances": [[[0.5]]'), 400, "malformed JSON")
    _assert_error(client.post(PREDICT, content=b'"instances"'), 400, "JSON object")
    _assert_error(client.post("/v1/models/nope:predict", json={"instances": [[[[0.5]]]]}), 404,
                  "'nope'")
    _still_serving(client, digits_u8)


# ---- limits, paths and unknown endpoints ---------------------------------------------


def _raw_exchange(port: int, head: bytes, body_chunks: list[bytes]) -> tuple[int, dict[str, Any]]:
    """Send a request by hand (no client normalises it) and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(head)
        for chunk in body_chunks:
            sock.sendall(chunk)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, json.loads(response.read())


def test_body_over_the_limit_by_content_length_is_refused_unread(
        live: LiveServer, digits_u8: np.ndarray, client: httpx.Client) -> None:
    declared = MAX_BODY * 40
    head = (f"POST {CLUSTER} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\n\r\n").encode()
    started = time.monotonic()
    # Not one byte of the body is sent: the answer can only come from the header.
    status, body = _raw_exchange(live.port, head, [])
    assert status == 413 and str(declared) in body["error"], body
    assert time.monotonic() - started < 10
    big = client.post(CLUSTER, content=b" " * (MAX_BODY + 1),
                      headers={"content-type": "application/json"})
    _assert_error(big, 413, str(MAX_BODY))
    _still_serving(client, digits_u8)


def test_chunked_body_over_the_limit_is_refused_while_streaming(
        live: LiveServer, digits_u8: np.ndarray, client: httpx.Client) -> None:
    head = (f"POST {CLUSTER} HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    chunk = b"\0" * 16384
    framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    # Just past the limit, and the body is never finished (no terminating chunk): a server
    # that read the whole body before checking would wait here until the timeout.
    count = MAX_BODY // len(chunk) + 1
    status, body = _raw_exchange(live.port, head, [framed] * count)
    assert status == 413, body
    assert "over the limit" in body["error"]
    _still_serving(client, digits_u8)


@pytest.mark.parametrize("target", [
    "/v1/models/..:cluster",
    "/v1/models/%2e%2e:cluster",
    "/v1/models/..%2F..%2Fetc%2Fpasswd:cluster",
    "/v1/models/../../etc/passwd:cluster",
    "/v1/models/%2e%2e%2fdigits/metadata",
    "/v1/models/..%2f..%2fetc/versions/1:predict",
    "/v1/models/.hidden:predict",
])
def test_path_traversal_is_never_a_file_access(live: LiveServer, client: httpx.Client,
                                               digits_u8: np.ndarray, target: str) -> None:
    method = "GET" if target.endswith("metadata") else "POST"
    connection = http.client.HTTPConnection("127.0.0.1", live.port, timeout=20)
    try:
        connection.request(method, target, body=b'{"instances": [[[0.5]]]}',
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        status, body = response.status, json.loads(response.read())
    finally:
        connection.close()
    assert status in (400, 404), body
    assert set(body) == {"error"}
    assert "passwd" not in body["error"] or "not allowed" in body["error"] \
        or "no endpoint" in body["error"]
    _still_serving(client, digits_u8)


def test_unknown_endpoints_answer_json(client: httpx.Client) -> None:
    _assert_error(client.get("/nowhere"), 404, "no endpoint GET /nowhere")
    # A path served for other methods: 405 with Allow (issue 39: it was 404).
    deleted = client.delete("/v1/models/digits")
    _assert_error(deleted, 405, "DELETE is not allowed on /v1/models/digits; allowed: GET")
    assert deleted.headers["allow"] == "GET"
    put = client.put("/v1/models/digits:predict", json={})
    _assert_error(put, 405, "allowed: POST")
    assert put.headers["allow"] == "POST"
    _assert_error(client.delete("/v1/models/digits/versions/1/nothing/here"), 404,
                  "model endpoints")
    _assert_error(client.post("/healthz"), 405, "not allowed")
    # A GET of a POST verb: 405 with Allow (issue 39: it was 404 from the status route,
    # and 400 "bad version" under /versions/{v}).
    for path in ("/v1/models/digits:cluster", "/v1/models/digits/versions/1:predict"):
        got = client.get(path)
        _assert_error(got, 405, "served for POST only")
        assert got.headers["allow"] == "POST"
    _assert_error(client.get("/v1/models/digits:explain"), 404, "POST :cluster")


@pytest.mark.parametrize("path", [PREDICT, "/v1/models/digits:cluster"])
def test_json_endpoints_refuse_other_media_types(client: httpx.Client, digits_u8: np.ndarray,
                                                  path: str) -> None:
    """Issue 39: ``:predict`` parsed JSON sent as image/png; now 415 names what it reads."""
    body = json.dumps({"instances": _unit_images(digits_u8, 1)}).encode()
    for media in ("text/plain", "application/xml", "application/x-ndjson"):
        _assert_error(client.post(path, content=body, headers={"content-type": media}), 415,
                      f"does not read a {media} body", "application/json")
    if path == PREDICT:
        _assert_error(client.post(path, content=body, headers={"content-type": "image/png"}),
                      415, "image/png")
    # What JSON may be labelled: JSON, nothing, or curl -d's form type (TF Serving's
    # examples post that way); all answer.
    for media in ("application/json; charset=utf-8", "application/vnd.api+json",
                  "application/x-www-form-urlencoded", None):
        headers = {} if media is None else {"content-type": media}
        answer = client.post(path, content=body, headers=headers)
        assert answer.status_code == 200, (media, answer.text)


def test_request_metrics_use_api_methods(client: httpx.Client, digits_u8: np.ndarray) -> None:
    _still_serving(client, digits_u8)
    client.post(CLUSTER, json={"instances": []})
    client.post(CLUSTER, json={"instances": [[[0.5]]] * (MAX_IMAGES + 1)})
    client.post(PREDICT, json={"instances": _unit_images(digits_u8, 1)})
    client.post(PREDICT, json={"signature_name": "nope", "instances": [[[[0.5]]]]})
    client.get("/v1/models/digits")
    client.get("/v1/models/digits/metadata")
    client.get("/v1/models/never/heard/of/it")
    text = client.get("/metrics").text
    # Requests refused before a model is resolved (and routes of no model) count under
    # model="_none"; the others under the loaded version that answered (the unknown
    # signature is looked up in the resolved model's metadata).
    digits, none = ("digits", "1"), ("_none", "_none")
    for method, code, (model, version) in (
            ("cluster", "200", digits), ("cluster", "400", none), ("cluster", "413", none),
            ("predict", "200", digits), ("predict", "404", digits), ("model_status", "200", none),
            ("model_metadata", "200", digits), ("unknown", "404", none)):
        line = (f'aecluster_requests_total{{code="{code}",method="{method}",model="{model}",'
                f'protocol="http",version="{version}"}}')
        assert line in text, line
    assert 'aecluster_request_duration_seconds_bucket{le="0.005",method="cluster",' \
           'model="digits",protocol="http",version="1"}' in text
    methods = set(re.findall(r'aecluster_requests_total\{[^}]*method="([^"]+)"', text))
    assert not any("/" in m for m in methods), methods


# ---- backpressure and deadlines (a server with a small queue and a long batch delay) -----


def _batches_run(text: str) -> float:
    match = re.search(r'aecluster_batch_size_count\{model="digits",version="1"\} (\S+)', text)
    return float(match.group(1)) if match else 0.0


def test_queue_full_is_503_with_retry_after_and_deadlines_are_504(
        digits_bundle: Path, tmp_path: Path, digits_u8: np.ndarray) -> None:
    clone_version(digits_bundle, tmp_path, "digits", 1)
    settings = _settings(tmp_path, max_batch_size=8, max_queue=4, max_batch_delay_ms=1500)
    three = {"instances": [_b64(_png(image)) for image in digits_u8[:3]]}
    with LiveServer(settings) as server, \
            httpx.Client(base_url=server.url, timeout=30) as http_client, \
            concurrent.futures.ThreadPoolExecutor(2) as pool:
        # 3 images wait for the batch delay; 3 more do not fit a queue of 4 images.
        first = pool.submit(http_client.post, CLUSTER, json=three)
        deadline = time.monotonic() + 10
        while "aecluster_queue_depth{model=\"digits\",version=\"1\"} 3.0" not in \
                http_client.get("/metrics").text:
            assert time.monotonic() < deadline, "the first request never queued"
            time.sleep(0.01)
        refused = http_client.post(CLUSTER, json=three)
        _assert_error(refused, 503, "queue", "full")
        assert int(refused.headers["retry-after"]) >= 1
        assert first.result(30).status_code == 200

        # Alone in the queue, a request waits for the batch delay; its deadline comes first.
        before = _batches_run(http_client.get("/metrics").text)
        started = time.monotonic()
        late = http_client.post(CLUSTER, json=three, headers={"X-Request-Timeout-Ms": "200"})
        _assert_error(late, 504, "deadline")
        assert time.monotonic() - started < 1.2
        time.sleep(1.6)  # past the batch delay: a withdrawn request must not have run
        assert _batches_run(http_client.get("/metrics").text) == before
        # A deadline that has passed before the request is queued.
        _assert_error(http_client.post(CLUSTER, json=three,
                                       headers={"X-Request-Timeout-Ms": "0.0001"}),
                      504, "deadline")
        assert http_client.post(CLUSTER, json=three).status_code == 200

        # Draining: readiness turns false and new requests are refused with 503 at once.
        server.call(server.dataplane.drain(2))
        _assert_error(http_client.get("/readyz"), 503, "draining")
        _assert_error(http_client.post(CLUSTER, json=three), 503, "shutting down")
        assert http_client.get("/healthz").status_code == 200
