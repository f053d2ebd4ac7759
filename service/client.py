"""A small client of the REST API, usable from Python and from the command line.

    python -m service.client cluster digit.png other.jpg --url http://localhost:8501 \\
        --model digits [--version N] [--reconstruction png|array|none] [--embedding] \\
        [--top-k K] [--timeout S] [--save-reconstructions DIR]
    python -m service.client status --model digits [--version N]
    python -m service.client health

Answers are printed as indented JSON on stdout. Any failure (no server, an HTTP error
with the server's ``{"error": ...}`` message, an unreadable image file) is one line on
stderr and exit code 1; a usage mistake is exit code 2.

The client needs only httpx: it sends files as they are, ``{"b64": ...}`` per image,
and leaves decoding, resizing and colour conversion to the server.

This is the project's command line, kept for the docs' and operators' one-liners (status,
health, saving reconstructions). Programs that call the service install the separate
``aecluster-client`` distribution (clients/python, docs/client.md): gRPC and HTTP, asyncio,
deadlines and retries, without this package.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO
from urllib.parse import quote

import httpx

from service.types import ReconstructionFormat

DEFAULT_URL = "http://localhost:8501"
DEFAULT_MODEL = "digits"
DEFAULT_TIMEOUT_S = 30.0
TIMEOUT_HEADER = "X-Request-Timeout-Ms"
_ERROR_BODY_CHARS = 300  # enough of a non-JSON error page to say what it was


class ClientError(Exception):
    """A request failed; ``str(error)`` is one line saying why, fit for a terminal."""


class ServiceClient:
    """Blocking client of one server's REST API (``:cluster``, model status, readiness)."""

    def __init__(self, url: str = DEFAULT_URL, *, timeout: float = DEFAULT_TIMEOUT_S,
                 transport: httpx.BaseTransport | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ClientError(f"url must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.Client(timeout=timeout, transport=transport)

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def cluster(self, images: Sequence[bytes], *, model: str = DEFAULT_MODEL,
                version: int | None = None, reconstruction: ReconstructionFormat = "none",
                embedding: bool = False, top_k: int = 0) -> dict[str, Any]:
        """``POST :cluster`` with encoded images (PNG/JPEG bytes); returns the JSON answer.

        The server is told the client's timeout (``X-Request-Timeout-Ms``), so it drops
        work that would be answered after the client has given up.
        """
        body = {
            "instances": [{"b64": base64.b64encode(data).decode("ascii")} for data in images],
            "return_reconstruction": reconstruction,
            "return_embedding": embedding,
            "top_k": top_k,
        }
        headers = {TIMEOUT_HEADER: f"{self.timeout * 1000:.0f}"}
        return self._call("POST", f"{self._model_path(model, version)}:cluster", json_body=body,
                          headers=headers)

    def model_status(self, model: str = DEFAULT_MODEL,
                     version: int | None = None) -> dict[str, Any]:
        """``GET /v1/models/{model}[/versions/{v}]``: TensorFlow Serving's version status."""
        return self._call("GET", self._model_path(model, version))

    def ready(self) -> dict[str, Any]:
        """``GET /readyz``; raises :class:`ClientError` when the server is not ready."""
        return self._call("GET", "/readyz")

    @staticmethod
    def _model_path(model: str, version: int | None) -> str:
        # Quoted as one path segment: a name like "../x" reaches the server as a name it
        # can refuse, not as a different path.
        path = f"/v1/models/{quote(model, safe='')}"
        return path if version is None else f"{path}/versions/{version}"

    def _call(self, method: str, path: str, *, json_body: dict[str, Any] | None = None,
              headers: dict[str, str] | None = None) -> dict[str, Any]:
        url = self.url + path
        try:
            response = self._http.request(method, url, json=json_body, headers=headers)
        except httpx.TimeoutException as exc:
            raise ClientError(f"no answer from {url} within {self.timeout:g} s") from exc
        except httpx.ConnectError as exc:
            raise ClientError(f"cannot connect to {self.url}: {exc}") from exc
        except httpx.HTTPError as exc:
            raise ClientError(f"{method} {url} failed: {exc}") from exc
        if response.is_error:
            raise ClientError(_describe_error(method, url, response))
        try:
            answer = response.json()
        except ValueError as exc:
            raise ClientError(
                f"{method} {url} answered HTTP {response.status_code} without JSON: "
                f"{_snippet(response.text)}"
            ) from exc
        if not isinstance(answer, dict):
            raise ClientError(f"{method} {url} answered JSON that is not an object")
        return answer


def _describe_error(method: str, url: str, response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        message = body["error"]
    else:
        message = _snippet(response.text) or response.reason_phrase
    text = f"HTTP {response.status_code} from {method} {url}: {message}"
    retry_after = response.headers.get("Retry-After")
    if retry_after:
        text += f" (retry after {retry_after} s)"
    return text


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _ERROR_BODY_CHARS else flat[:_ERROR_BODY_CHARS] + "..."


def read_images(paths: Sequence[Path]) -> list[bytes]:
    """The bytes of every image file; :class:`ClientError` names the first unreadable one."""
    images = []
    for path in paths:
        try:
            images.append(path.read_bytes())
        except OSError as exc:
            raise ClientError(f"cannot read image {path}: {exc.strerror or exc}") from exc
    return images


def save_reconstructions(answer: dict[str, Any], sources: Sequence[Path],
                         directory: Path) -> list[Path]:
    """Write each prediction's PNG reconstruction to ``directory/<index>-<stem>.png``.

    The index keeps files of equal names from different folders apart and sorts like
    the request.
    """
    predictions = answer.get("predictions")
    if not isinstance(predictions, list) or len(predictions) != len(sources):
        raise ClientError(
            f"the answer holds {len(predictions) if isinstance(predictions, list) else 'no'} "
            f"predictions for {len(sources)} images; nothing saved"
        )
    width = len(str(len(sources) - 1))
    pending: list[tuple[Path, bytes]] = []
    for index, (prediction, source) in enumerate(zip(predictions, sources, strict=True)):
        recon = prediction.get("reconstruction") if isinstance(prediction, dict) else None
        if not isinstance(recon, dict) or not isinstance(recon.get("b64"), str):
            raise ClientError(f"prediction {index} has no PNG reconstruction; nothing saved")
        try:
            png = base64.b64decode(recon["b64"], validate=True)
        except ValueError as exc:
            raise ClientError(f"prediction {index}: reconstruction is not base64") from exc
        pending.append((directory / f"{index:0{width}d}-{source.stem}.png", png))
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for path, png in pending:
            path.write_bytes(png)
    except OSError as exc:
        raise ClientError(f"cannot write reconstructions to {directory}: {exc}") from exc
    return [path for path, _ in pending]


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _int_at_least(low: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m service.client`` command line."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=DEFAULT_URL,
                        help=f"base URL of the server's HTTP port (default {DEFAULT_URL})")
    common.add_argument("--timeout", type=_positive_float, default=DEFAULT_TIMEOUT_S,
                        metavar="S", help="seconds to wait for an answer (default %(default)s)")
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--model", default=DEFAULT_MODEL,
                       help="model name (default %(default)s, the bundle `make run` serves)")
    model.add_argument("--version", type=_int_at_least(1), default=None, metavar="N",
                       help="model version (default: the highest ready one)")

    parser = argparse.ArgumentParser(
        prog="python -m service.client",
        description="Call an aecluster server's REST API and print the JSON answer.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cluster = commands.add_parser(
        "cluster", parents=[common, model], help="assign images to clusters",
        description="Send image files (PNG, JPEG, ...) in one :cluster request.",
    )
    cluster.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                         help="image files: PNG, JPEG, GIF, BMP or WebP, any size")
    cluster.add_argument("--reconstruction", choices=("png", "array", "none"), default=None,
                         help="return the autoencoder's reconstruction (default none; png "
                              "with --save-reconstructions)")
    cluster.add_argument("--embedding", action="store_true", help="return the latent vector")
    cluster.add_argument("--top-k", type=_int_at_least(0), default=0, metavar="K",
                         help="return the K nearest clusters (default 0)")
    cluster.add_argument("--save-reconstructions", type=Path, default=None, metavar="DIR",
                         help="write the PNG reconstructions to DIR/<index>-<name>.png")
    commands.add_parser("status", parents=[common, model],
                        help="the model's version status (TensorFlow Serving format)")
    commands.add_parser("health", parents=[common],
                        help="the server's readiness; exit code 1 when not ready")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 failure, 2 usage)."""
    out, err = sys.stdout, sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage message
        return int(exc.code) if isinstance(exc.code, int) else 2
    if args.command == "cluster" and args.save_reconstructions is not None:
        if args.reconstruction not in (None, "png"):
            err.write(f"{parser.prog} cluster: error: --save-reconstructions needs "
                      f"--reconstruction png, not {args.reconstruction}\n")
            return 2
        args.reconstruction = "png"
    try:
        answer = _run(args, err)
    except ClientError as exc:
        err.write(f"error: {exc}\n")
        return 1
    out.write(json.dumps(answer, indent=2) + "\n")
    return 0


def _run(args: argparse.Namespace, err: TextIO) -> dict[str, Any]:
    with ServiceClient(args.url, timeout=args.timeout) as client:
        if args.command == "status":
            return client.model_status(args.model, args.version)
        if args.command == "health":
            return client.ready()
        images = read_images(args.images)
        answer = client.cluster(
            images, model=args.model, version=args.version,
            reconstruction=args.reconstruction or "none", embedding=args.embedding,
            top_k=args.top_k,
        )
    if args.save_reconstructions is not None:
        written = save_reconstructions(answer, args.images, args.save_reconstructions)
        err.write(f"wrote {len(written)} reconstruction(s) to {args.save_reconstructions}\n")
    return answer


if __name__ == "__main__":
    sys.exit(main())
