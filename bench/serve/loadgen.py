"""Drive a server with C load generators: h2load for gRPC unary calls, wrk for HTTP POSTs.

Why C tools: the benchmark machine has two cores, one for the server under test and one for
the client. A Python client on the remaining core mostly measures its own interpreter; h2load
and wrk each run on one thread (``-t 1``) and can saturate a server from it.

    from loadgen import ensure_tools, h2load_grpc, wrk_http
    ensure_tools()                          # apt-get install nghttp2-client wrk when missing
    result = h2load_grpc("127.0.0.1", 8500, "/pkg.Service/Method", request.SerializeToString(),
                         concurrency=4, seconds=10, warmup=2, workdir=Path("/tmp/lg"))
    print(result.rps, result.p99_ms)

gRPC caveat: a failed gRPC call is still an HTTP/2 response with ``:status 200``; the failure
is in the ``grpc-status`` trailer, which h2load does not read. h2load therefore counts gRPC
errors as successes. :func:`h2load_grpc` catches part of it (see there), but callers must make
one real call with a gRPC client first and check it succeeds with the expected answer before
measuring.

Standard library only: ``bench/`` scripts run from the developer's venv without extra packages.
One run at a time per ``workdir``: the request, script and log files have fixed names there.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Debian package providing each tool (Debian 12: nghttp2 1.52, wrk 4.1).
PACKAGES: dict[str, str] = {"h2load": "nghttp2-client", "wrk": "wrk"}

# Beyond the run itself: process start-up, connection set-up, writing the log file.
_TIMEOUT_SLACK_S = 60.0
# apt-get may download and unpack; generous, but a hung apt must not hang the benchmark.
_APT_TIMEOUT_S = 900.0
# gRPC length-prefixed message header: compressed flag (1 byte) + length (4 bytes).
_GRPC_PREFIX = struct.Struct(">BI")
# The line the generated wrk script prints in done(): easy to find among wrk's own output.
_WRK_MARKER = "LOADGEN_RESULT "


class LoadgenError(RuntimeError):
    """A load generator is missing, failed, or measured nothing usable."""


@dataclass(frozen=True)
class LoadResult:
    """One measured run. Latencies in milliseconds, over completed requests.

    ``requests`` counts completed requests (responses received, errors included) within the
    measured window of ``seconds``; ``rps`` is ``requests / seconds``, as both tools report
    it. ``errors`` is the part of ``requests`` (plus, for wrk, connection-level failures) that
    did not succeed: check it is 0 before trusting the other numbers.
    """

    tool: str
    concurrency: int
    seconds: float
    requests: int
    errors: int
    rps: float
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)


# --------------------------------------------------------------------------- tools


def _install_command(packages: list[str]) -> list[str]:
    """``apt-get install`` for ``packages``, through ``sudo -n`` when we are not root."""
    prefix: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise LoadgenError(
                f"cannot install {' '.join(packages)}: not root and no sudo; "
                f"run as root: apt-get install -y {' '.join(packages)}")
        # -n: fail at once rather than wait for a password nobody will type
        prefix = ["sudo", "-n"]
    return [*prefix, "apt-get", "install", "-y", "--no-install-recommends", *packages]


def _run_apt(command: list[str]) -> subprocess.CompletedProcess[str]:
    """Run one apt-get command non-interactively, capturing its output."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        return subprocess.run(command, capture_output=True, text=True, env=env,
                              timeout=_APT_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LoadgenError(f"{' '.join(command)} failed: {exc}") from exc


def ensure_tools() -> None:
    """Make sure ``h2load`` and ``wrk`` are on PATH, installing them from Debian if not.

    Installs only the missing tools' packages (nghttp2-client, wrk). If the install fails
    (typically a stale or empty package list in a fresh container), runs ``apt-get update``
    and tries once more. Raises :class:`LoadgenError` naming the packages when that fails.
    """
    missing = [tool for tool in PACKAGES if shutil.which(tool) is None]
    if not missing:
        return
    packages = [PACKAGES[tool] for tool in missing]
    print(f"loadgen: {', '.join(missing)} not found; installing Debian package(s) "
          f"{' '.join(packages)}", file=sys.stderr, flush=True)
    install = _install_command(packages)
    done = _run_apt(install)
    if done.returncode != 0:
        print("loadgen: install failed; running apt-get update and retrying",
              file=sys.stderr, flush=True)
        update = [*install[:install.index("apt-get")], "apt-get", "update"]
        _run_apt(update)  # its failure shows in the retry's output
        done = _run_apt(install)
    still_missing = [tool for tool in missing if shutil.which(tool) is None]
    if done.returncode != 0 or still_missing:
        raise LoadgenError(
            f"could not install {' '.join(packages)} (for {', '.join(missing)}): "
            f"{' '.join(install)} exited {done.returncode}:\n{_tail(done.stdout + done.stderr)}")


def _require(tool: str) -> str:
    """The path of ``tool``, or a :class:`LoadgenError` saying how to install it."""
    path = shutil.which(tool)
    if path is None:
        raise LoadgenError(
            f"{tool} not found: install the Debian package {PACKAGES[tool]} "
            f"(apt-get install -y {PACKAGES[tool]}, or call loadgen.ensure_tools())")
    return path


# --------------------------------------------------------------------------- helpers


def _tail(text: str, lines: int = 40) -> str:
    """The end of a tool's output: enough to see the error, not a whole apt log."""
    return "\n".join(text.strip().splitlines()[-lines:])


def _check_args(concurrency: int, seconds: float, warmup: float) -> None:
    """Reject arguments the tools would misread or silently clamp."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    if not warmup >= 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")


def _run_tool(command: list[str], timeout: float) -> str:
    """Run a load generator; its stdout and stderr together, or :class:`LoadgenError`."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        # TimeoutExpired holds bytes even with text=True
        partial = exc.stdout
        text = partial.decode(errors="replace") if isinstance(partial, bytes) else partial or ""
        raise LoadgenError(f"{command[0]} did not finish within {timeout:.0f} s: "
                           f"{' '.join(command)}\n{_tail(text)}") from exc
    except OSError as exc:
        raise LoadgenError(f"cannot run {' '.join(command)}: {exc}") from exc
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise LoadgenError(f"{' '.join(command)} exited {done.returncode}:\n{_tail(output)}")
    return output


def _percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list: a value that was actually measured."""
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


def _ms(duration: float) -> str:
    """A duration for h2load: whole milliseconds with a unit (it takes integers only)."""
    return f"{round(duration * 1000)}ms"


# --------------------------------------------------------------------------- gRPC / h2load


def grpc_frame(message: bytes) -> bytes:
    """``message`` as one gRPC length-prefixed message: flag 0 (not compressed), 4-byte
    big-endian length, payload. This is the whole body of a unary gRPC request."""
    return _GRPC_PREFIX.pack(0, len(message)) + message


_H2LOAD_REQUESTS = re.compile(
    r"requests: (?P<total>\d+) total, (?P<started>\d+) started, (?P<done>\d+) done, "
    r"(?P<succeeded>\d+) succeeded, (?P<failed>\d+) failed, (?P<errored>\d+) errored, "
    r"(?P<timeout>\d+) timeout")
_H2LOAD_DATA = re.compile(r"\((?P<bytes>\d+)\) data")


def h2load_grpc(host: str, port: int, method_path: str, message: bytes, *, concurrency: int,
                seconds: float, warmup: float, workdir: Path) -> LoadResult:
    """Replay one unary gRPC call (``message``, unframed) at ``concurrency`` outstanding calls.

    Runs h2load over HTTP/2 cleartext with prior knowledge (its default for ``http://``),
    ``-c concurrency -m 1`` (one stream per connection, so concurrency = outstanding calls),
    ``-t 1`` (one thread: the server needs the other core), ``--warm-up-time`` then
    ``-D seconds``. Durations are passed in whole milliseconds.

    Latencies come from ``--log-file`` (one row per completed request of the measured
    window; h2load prints no percentiles). ``errors`` counts rows whose HTTP status is not
    2xx (-1 for a failed stream), plus the calls proven to be gRPC errors by the check below.

    gRPC errors: h2load sees HTTP 200 and counts a failed call as a success. What it does
    report is the DATA bytes received, and a successful unary call always returns one
    message of at least 5 bytes (its prefix), whereas an error is usually a trailers-only
    response (no DATA at all: e.g. grpc-status 12 UNIMPLEMENTED for a wrong method path, or
    an error status from the handler). So:

    * no DATA at all while h2load saw 2xx responses: every call failed -> LoadgenError;
    * fewer than 5 bytes per 2xx response: at least ``2xx - bytes // 5`` calls failed, added
      to ``errors``. This is only a lower bound: h2load's byte count includes the warm-up's
      responses, and errors that do carry a message go unseen (grpcio sends the message a
      handler returns after setting an error code, as its health service does for NOT_FOUND).

    Hence callers must still validate one real call with a gRPC client before measuring.

    Raises LoadgenError when h2load is missing, exits non-zero, times out, or reports no
    successful request (e.g. nothing listens on the port: h2load exits 0 then).
    """
    _check_args(concurrency, seconds, warmup)
    h2load = _require("h2load")
    workdir.mkdir(parents=True, exist_ok=True)
    body = workdir / "grpc_request.bin"
    body.write_bytes(grpc_frame(message))
    log = workdir / "h2load.log"
    # h2load appends to an existing log file: a previous run's rows would be mixed in
    log.unlink(missing_ok=True)
    authority = f"[{host}]" if ":" in host else host
    command = [
        h2load,
        "-c", str(concurrency), "-m", "1", "-t", "1",
        "-D", _ms(seconds), f"--warm-up-time={_ms(warmup)}",
        "-H", "content-type: application/grpc",
        # gRPC servers reject requests without it (it says the client understands trailers)
        "-H", "te: trailers",
        "-d", str(body),
        f"--log-file={log}",
        f"http://{authority}:{port}{method_path}",
    ]
    output = _run_tool(command, seconds + warmup + _TIMEOUT_SLACK_S)

    counts = _H2LOAD_REQUESTS.search(output)
    data = _H2LOAD_DATA.search(output)
    if counts is None or data is None:
        raise LoadgenError(f"unexpected h2load output (no requests/traffic summary) from "
                           f"{' '.join(command)}:\n{_tail(output)}")
    if int(counts["succeeded"]) == 0:
        raise LoadgenError(f"h2load completed no successful request against "
                           f"http://{authority}:{port}{method_path}:\n{_tail(output)}")

    statuses, durations_us = _read_h2load_log(log)
    ok = sum(1 for status in statuses if 200 <= status < 300)
    errors = len(statuses) - ok
    data_bytes = int(data["bytes"])
    if ok and data_bytes == 0:
        raise LoadgenError(
            f"h2load got {ok} HTTP 2xx responses but no response data: no call returned a "
            f"gRPC message, i.e. every call failed with a trailers-only gRPC error (wrong "
            f"method path -> grpc-status 12 UNIMPLEMENTED, or the handler's error). Make one "
            f"call to {method_path} with a gRPC client to see the status.\n{_tail(output)}")
    # each successful unary response carries >= 5 bytes (the message prefix)
    errors += max(0, ok - data_bytes // _GRPC_PREFIX.size)
    return _result("h2load", concurrency, seconds, len(statuses), errors, durations_us)


def _read_h2load_log(log: Path) -> tuple[list[int], list[float]]:
    """(HTTP statuses, request durations in us) of h2load's ``--log-file``.

    Columns (nghttp2 1.52): start time (us since epoch), status (-1: failed stream, 0: begun
    in the warm-up, left out), us until
    the end of the response; later versions may add columns, which are ignored. Failed
    streams count as requests (errors) but not in the latencies: they have no response.
    """
    try:
        text = log.read_text(encoding="utf-8")
    except OSError as exc:
        raise LoadgenError(f"h2load wrote no log file {log}: {exc}") from exc
    statuses: list[int] = []
    durations: list[float] = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("\t")
        try:
            status, duration = int(fields[1]), float(fields[2])
        except (IndexError, ValueError) as exc:
            raise LoadgenError(f"{log}:{number}: unexpected h2load log row {line!r}") from exc
        if status == 0:
            # A stream that began in the warm-up and ended in the window: h2load logs it
            # at the window's start with status 0 (seen: at most one per connection, all
            # in the first milliseconds). It belongs to neither period, so it is left out.
            continue
        statuses.append(status)
        if status > 0:
            durations.append(duration)
    return statuses, durations


def _result(tool: str, concurrency: int, seconds: float, requests: int, errors: int,
            durations_us: list[float]) -> LoadResult:
    """A :class:`LoadResult` from per-request durations in microseconds."""
    if not durations_us:
        raise LoadgenError(f"{tool} recorded no response latency")
    ordered = sorted(durations_us)
    return LoadResult(
        tool=tool, concurrency=concurrency, seconds=float(seconds), requests=requests,
        errors=errors,
        rps=requests / seconds,
        mean_ms=sum(ordered) / len(ordered) / 1000.0,
        p50_ms=_percentile(ordered, 50) / 1000.0,
        p90_ms=_percentile(ordered, 90) / 1000.0,
        p99_ms=_percentile(ordered, 99) / 1000.0,
        max_ms=ordered[-1] / 1000.0,
    )


# --------------------------------------------------------------------------- HTTP / wrk


_LUA_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 ./_-:;=,")


def _lua_string(text: str) -> str:
    """A Lua string literal for any text: bytes outside a small safe set become ``\\ddd``
    escapes, so paths and header values cannot break out of the generated script."""
    return '"' + "".join(chr(b) if b in _LUA_SAFE else f"\\{b:03d}"
                         for b in text.encode("utf-8")) + '"'


# done() runs once in wrk's main Lua state after the run. wrk reports latencies in
# microseconds; counts and latencies print as numbers (a NaN mean, seen with no responses,
# becomes -1 so the line stays JSON).
_WRK_DONE = """
local function num(x)
  if x ~= x then return -1 end
  return x
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, '
    .. '"status": %d, "timeout": %d, "mean_us": %.3f, "p50_us": %.3f, "p90_us": %.3f, '
    .. '"p99_us": %.3f, "max_us": %.3f}\\n',
    MARKER, summary.requests, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, num(latency.mean), num(latency:percentile(50)), num(latency:percentile(90)),
    num(latency:percentile(99)), num(latency.max)))
end
"""


def _wrk_script(body_path: Path, content_type: str, headers: dict[str, str]) -> str:
    """The Lua script: POST the body file with the headers, print the result in done()."""
    lines = [
        "-- generated by bench/serve/loadgen.py",
        f"local MARKER = {_lua_string(_WRK_MARKER)}",
        # io.open in binary mode: a Lua literal would need escaping of arbitrary bytes
        f'local body_file = assert(io.open({_lua_string(str(body_path))}, "rb"))',
        'wrk.method = "POST"',
        'wrk.body = body_file:read("*a")',
        "body_file:close()",
        f'wrk.headers["Content-Type"] = {_lua_string(content_type)}',
    ]
    lines += [f"wrk.headers[{_lua_string(name)}] = {_lua_string(value)}"
              for name, value in headers.items()]
    return "\n".join(lines) + "\n" + _WRK_DONE


def wrk_http(url: str, body: bytes, content_type: str, *, concurrency: int, seconds: float,
             warmup: float, workdir: Path, headers: dict[str, str] | None = None) -> LoadResult:
    """POST ``body`` to ``url`` from ``concurrency`` keep-alive connections, one thread.

    A warm-up run of ``warmup`` seconds (results discarded; skipped when 0) precedes the
    measured run ``wrk -t1 -c{concurrency} -d{seconds}s --latency -s wrk.lua url``. wrk takes
    whole seconds only: both durations are rounded up to whole seconds (at least 1), and
    ``seconds`` in the result is the window wrk actually measured.

    ``errors`` = responses other than 2xx/3xx plus connect, read, write errors and timeouts
    (wrk's 2 s default: such requests are not in the latencies). Raises LoadgenError when
    wrk is missing, exits non-zero, times out, or completes no request (e.g. connection
    refused: wrk exits 0 then).
    """
    _check_args(concurrency, seconds, warmup)
    wrk = _require("wrk")
    workdir.mkdir(parents=True, exist_ok=True)
    body_path = workdir / "wrk_body.bin"
    body_path.write_bytes(body)
    script = workdir / "wrk.lua"
    script.write_text(_wrk_script(body_path.resolve(), content_type, headers or {}),
                      encoding="utf-8")

    def command(duration: float) -> list[str]:
        whole = max(1, math.ceil(duration))
        return [wrk, "-t1", f"-c{concurrency}", f"-d{whole}s", "--latency", "-s", str(script),
                url]

    if warmup > 0:
        _run_tool(command(warmup), warmup + _TIMEOUT_SLACK_S)
    measured = command(seconds)
    output = _run_tool(measured, math.ceil(seconds) + _TIMEOUT_SLACK_S)
    lines = [line for line in output.splitlines() if line.startswith(_WRK_MARKER)]
    if len(lines) != 1:
        raise LoadgenError(f"no result line from the wrk script in the output of "
                           f"{' '.join(measured)}:\n{_tail(output)}")
    stats = json.loads(lines[0][len(_WRK_MARKER):])
    requests = int(stats["requests"])
    if requests == 0:
        raise LoadgenError(f"wrk completed no request against {url}:\n{_tail(output)}")
    window = stats["duration_us"] / 1e6
    errors = sum(int(stats[key]) for key in ("connect", "read", "write", "status", "timeout"))
    return LoadResult(
        tool="wrk", concurrency=concurrency, seconds=window, requests=requests, errors=errors,
        rps=requests / window,
        mean_ms=stats["mean_us"] / 1000.0,
        p50_ms=stats["p50_us"] / 1000.0,
        p90_ms=stats["p90_us"] / 1000.0,
        p99_ms=stats["p99_us"] / 1000.0,
        max_ms=stats["max_us"] / 1000.0,
    )
