"""``python -m service`` / ``aecluster-serve``: every setting is a flag and an ``AEC_`` variable.

Flags are generated from :class:`service.settings.Settings`, so the two forms cannot drift
apart; a flag given on the command line wins over the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.settings import ConfigError, Settings

DESCRIPTION = """\
Serve aecluster model bundles over HTTP (REST, TensorFlow Serving's REST API, /metrics,
/healthz, /readyz, /docs) and gRPC (aecluster.v1.ClusterService, TensorFlow Serving's
PredictionService and ModelService, health, reflection). Example:

  python -m service --model-repo models --http-port 8501 --grpc-port 8500
"""


def _flag_type(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return str
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _flag_type(args[0])
    if annotation in (int, float, str, Path):
        return annotation
    return str


def _is_flag(annotation: Any) -> bool:
    """bool, or bool | None (None: decided from other settings): --x / --no-x."""
    if annotation is bool:
        return True
    args = set(typing.get_args(annotation))
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and (
        args == {bool, type(None)})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = "AEC_" + name.upper()
        # argparse %-formats help text: a literal "%" in a description ("+20 %") must be
        # doubled, or --help fails.
        help_text = f"{field.description} [env {env}; default: {field.default}]".replace(
            "%", "%%")
        if _is_flag(field.annotation):
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
            continue
        choices = None
        if typing.get_origin(field.annotation) is typing.Literal:
            choices = list(typing.get_args(field.annotation))
        parser.add_argument(flag, dest=name, type=_flag_type(field.annotation), choices=choices,
                            default=argparse.SUPPRESS, help=help_text)
    return parser


def load_settings(argv: Sequence[str] | None = None) -> Settings:
    """Settings from the environment, overridden by the flags in ``argv``."""
    args = build_parser().parse_args(argv)
    try:
        return Settings(**vars(args))
    except ValidationError as exc:
        # A check of several settings together has no field to name (loc is empty).
        problems = "; ".join(
            ": ".join(filter(None, (".".join(str(p) for p in err["loc"]), err["msg"])))
            for err in exc.errors()
        )
        raise SystemExit(f"error: invalid settings: {problems}") from None


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    settings = load_settings(argv)
    from service import tracing
    from service.security import Security

    try:
        # Before TensorFlow is imported: a bad certificate or token file fails at once.
        security = Security.from_settings(settings)
        # The OTEL_* variables, not settings: the SDK reads them itself (docs/tracing.md).
        # An exporter that is not installed fails here too, not after the model loads.
        traced = tracing.configure_from_environment()
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    from service.logs import configure_logging
    from service.server import serve

    configure_logging(settings.log_level, json_format=settings.log_json)
    if traced:
        logging.getLogger(__name__).info("tracing on", extra={
            "exporters": os.environ.get("OTEL_TRACES_EXPORTER", ""),
            "endpoint": os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4317"})
    try:
        return asyncio.run(serve(settings, security))
    finally:
        tracing.shutdown()  # exports the spans still buffered


if __name__ == "__main__":
    sys.exit(main())
