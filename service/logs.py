"""Structured logs: one JSON object per line on stderr, carrying the request id.

Each transport sets :data:`request_id` for the duration of a request, so every line logged
while serving it - by the transport, the data plane or the batcher - names the request it
belongs to. With tracing on, a line logged inside a span also carries ``trace_id`` and
``span_id``. ``extra=`` fields given to a logging call become keys of the JSON object.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import random
import re
import sys
from typing import Any

import orjson

from service import tracing

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
"""The id of the request being served ("" outside a request)."""

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))
) | {"message", "asctime", "request_id", "taskName"}
# Marks the handler configure_logging installed, so calling it again replaces only that one.
_HANDLER_NAME = "aecluster"
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
# C0 and C1 control characters, DEL, and the Unicode line and paragraph separators: what a
# caller could use, through a logged path or name, to start a line of its own or send a
# terminal escape (issue 39).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every control character written as an escape (``\\x1b``, ``\\n``)."""
    def escape(match: re.Match[str]) -> str:
        char = match.group()
        if keep_newlines and char == "\n":
            return char
        code = ord(char)
        return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"

    return _CONTROL.sub(escape, text)


def new_request_id() -> str:
    """A fresh request id: 128 random bits as 32 hex digits.

    From Python's Mersenne Twister, as OpenTelemetry's trace ids are, not the OS's entropy:
    an id names a request in the logs and is no secret, and ``uuid.uuid4()`` took 2.1 µs
    against 0.3 µs, on every request's event loop (issue 38). ``random`` re-seeds itself in a
    forked child, so server processes do not repeat each other's ids.
    """
    return f"{random.getrandbits(128):032x}"


class RequestIdFilter(logging.Filter):
    """Copies the current request id onto each record (unless ``extra=`` already set one),
    and with tracing on the current span's ``trace_id`` and ``span_id`` (hex, as trace
    backends show them) when the record is logged inside one.

    Done in a filter rather than in the formatter so the ids are captured in the task that
    logged, even if a handler formats the record later or elsewhere.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", ""):
            record.request_id = request_id.get()
        if tracing.enabled and not hasattr(record, "trace_id"):
            ids = tracing.current_ids()
            if ids is not None:
                record.trace_id, record.span_id = ids
        return True


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: ts, level, logger, message, request_id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", "") or request_id.get()
        if rid:
            entry["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        # default=str: an extra field that JSON cannot hold (a Path, a numpy scalar) must
        # never make a log call fail. orjson writes an access-log line in 0.3 µs against
        # the standard library's 3.7 µs (issue 38: one per request); what orjson
        # refuses even so (an integer past 64 bits) goes through the standard library. JSON
        # escapes C0 controls itself; the rest are escaped here (as JSON \\u escapes, so the
        # value reads back unchanged).
        try:
            line = orjson.dumps(entry, default=str).decode("utf-8")
        except orjson.JSONEncodeError:
            line = json.dumps(entry, default=str, ensure_ascii=False)
        return _CONTROL.sub(lambda match: f"\\u{ord(match.group()):04x}", line)


class PlainFormatter(logging.Formatter):
    """``PLAIN_FORMAT`` lines that a logged value cannot break or forge.

    Control characters in the record's line are escaped. A traceback keeps its lines, each
    continuation prefixed with ``| ``. So every line that starts with a timestamp is a record.
    """

    def __init__(self) -> None:
        super().__init__(PLAIN_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return escape_controls(super().formatException(ei), keep_newlines=True)

    def formatStack(self, stack_info: str) -> str:
        return escape_controls(super().formatStack(stack_info), keep_newlines=True)

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        text = self.formatMessage(record)
        # Formatted here, not taken from record.exc_text: another handler may have cached
        # it there unescaped.
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            text += "\n" + escape_controls(record.exc_text, keep_newlines=True)
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text.replace("\n", "\n| ")


def configure_logging(level: str, *, json_format: bool) -> None:
    """Send every logger's records to stderr, as JSON lines or plain text, at ``level``.

    Idempotent: a second call replaces the handler the first one installed and leaves
    handlers that others (pytest, an embedding application) added alone.
    """
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}: use DEBUG, INFO, WARNING or ERROR")
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
            handler.close()
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if json_format else PlainFormatter())
    root.addHandler(handler)
    root.setLevel(numeric)
    # Servers' own loggers propagate to the root, so they share the format and the id.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "grpc"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
