"""JSON logs on stderr with the request id of the request being served."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from service import logs


@pytest.fixture
def restore_root() -> Iterator[None]:
    """configure_logging changes the root logger: put it back for the rest of the suite."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def _lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_new_request_ids_are_32_hex_digits_and_do_not_repeat() -> None:
    ids = [logs.new_request_id() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in ids)
    assert len(set(ids)) == len(ids)
    # Leading zeros are kept: every id has the same length.
    assert any(rid.startswith("0") for rid in ids)


def test_json_lines_hold_values_that_orjson_refuses_or_changes(
        capsys: pytest.CaptureFixture[str], restore_root: None) -> None:
    logs.configure_logging("INFO", json_format=True)
    log = logging.getLogger("aecluster.test")
    log.info("big", extra={"count": 2**70, "ratio": float("nan"), "where": Path("/m")})
    log.info("keys", extra={"by_version": {1: "ready"}})
    big, keys = _lines(capsys.readouterr().err)
    # An integer past 64 bits or a non-string key: the standard library writes the line.
    assert big["count"] == 2**70 and big["where"] == "/m"
    assert keys["by_version"] == {"1": "ready"}


def test_json_lines_carry_request_id_extras_and_tracebacks(
        capsys: pytest.CaptureFixture[str], restore_root: None) -> None:
    logs.configure_logging("INFO", json_format=True)
    log = logging.getLogger("aecluster.test")
    log.info("outside any request")
    token = logs.request_id.set("req-1")
    try:
        log.warning("queue %s is full", "digits/1",
                    extra={"queued": 7, "path": Path("/models/digits")})
        try:
            raise ValueError("bad pixel")
        except ValueError:
            log.exception("request failed")
    finally:
        logs.request_id.reset(token)
    log.debug("below the level: dropped")
    outside, warning, failure = _lines(capsys.readouterr().err)
    assert set(outside) == {"ts", "level", "logger", "message"}
    assert outside["message"] == "outside any request"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", str(outside["ts"]))
    assert warning["level"] == "WARNING" and warning["logger"] == "aecluster.test"
    assert warning["message"] == "queue digits/1 is full"
    assert warning["request_id"] == "req-1"
    assert warning["queued"] == 7 and warning["path"] == "/models/digits"
    assert failure["request_id"] == "req-1"
    assert "ValueError: bad pixel" in str(failure["exc_info"])
    assert "Traceback" in str(failure["exc_info"])


def test_request_id_follows_each_asyncio_task(capsys: pytest.CaptureFixture[str],
                                              restore_root: None) -> None:
    logs.configure_logging("INFO", json_format=True)
    log = logging.getLogger("aecluster.test")

    async def serve(rid: str) -> None:
        logs.request_id.set(rid)
        await asyncio.sleep(0.01)  # interleave with the other request
        log.info("answered %s", rid)

    async def main() -> None:
        await asyncio.gather(serve("a"), serve("b"))

    asyncio.run(main())
    lines = _lines(capsys.readouterr().err)
    assert {(line["message"], line["request_id"]) for line in lines} == {
        ("answered a", "a"), ("answered b", "b")}


def test_plain_text_and_reconfiguration(capsys: pytest.CaptureFixture[str],
                                        restore_root: None) -> None:
    logs.configure_logging("WARNING", json_format=True)
    logs.configure_logging("DEBUG", json_format=False)  # replaces, does not add
    ours = [h for h in logging.getLogger().handlers if h.get_name() == "aecluster"]
    assert len(ours) == 1
    token = logs.request_id.set("r-9")
    try:
        logging.getLogger("aecluster.test").debug("plain %d", 5)
    finally:
        logs.request_id.reset(token)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert re.fullmatch(r"\S+ \S+ DEBUG aecluster\.test \[r-9\] plain 5", err[0]), err


def test_unknown_level_is_refused(restore_root: None) -> None:
    with pytest.raises(ValueError, match="unknown log level 'LOUD'"):
        logs.configure_logging("LOUD", json_format=True)


HOSTILE = ("/v1/models/a\n2026-12-06 00:00:00,000 INFO service.rest.access [x] "
           "FORGED\x1b[2J\u2028\x85:cluster")


def test_plain_text_lines_cannot_be_forged(capsys: pytest.CaptureFixture[str],
                                           restore_root: None) -> None:
    # Issue 39: with AEC_LOG_JSON=false a decoded request path was written raw.
    logs.configure_logging("INFO", json_format=False)
    logger = logging.getLogger("service.rest.access")
    logger.info("POST %s 404", HOSTILE)
    try:
        raise ValueError(f"bad name {HOSTILE}")
    except ValueError:
        logger.exception("failed")
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\u2028" not in err and "\x85" not in err
    records = [line for line in err.splitlines() if not line.startswith("| ")]
    # Two records, two lines: the traceback's lines all carry the continuation mark.
    assert len(records) == 2 and all(re.match(r"\d{4}-\d\d-\d\d ", r) for r in records)
    assert "FORGED\\x1b[2J\\u2028\\x85:cluster 404" in records[0]


def test_json_lines_escape_every_control_character(capsys: pytest.CaptureFixture[str],
                                                   restore_root: None) -> None:
    logs.configure_logging("INFO", json_format=True)
    logging.getLogger("service.rest.access").info("POST %s", HOSTILE)
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\u2028" not in err and "\x85" not in err
    [entry] = _lines(err)
    assert entry["message"] == f"POST {HOSTILE}"  # escaped on the wire, exact once parsed
