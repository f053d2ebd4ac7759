"""The real server process (`python -m service`) on free ports, driven like production.

Batching under concurrency, a version swap under load with zero failed requests,
overload answered with 503 + Retry-After without memory growth, and SIGTERM that loses
no in-flight request.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from service._generated.aecluster.v1 import cluster_service_pb2 as pb
from service._generated.aecluster.v1 import cluster_service_pb2_grpc as pb_grpc
from tests.integration.server import Server, digit_png, start_server
from tests.service.bundles import clone_version

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[object]:
    started: list[Server] = []

    def start(repo: Path, **settings: str) -> Server:
        server = start_server(sys.executable, repo, tmp_path, REPO_ROOT, **settings)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(timeout=30)


async def _cluster(client: httpx.AsyncClient, png: bytes, model: str = "digits") -> httpx.Response:
    body = {"instances": [{"b64": base64.b64encode(png).decode()}]}
    return await client.post(f"/v1/models/{model}:cluster", json=body)


def test_concurrent_requests_are_batched(server_factory, model_repo: Path) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(model_repo, max_batch_delay_ms="20", max_batch_size="16")
    pngs = [digit_png(i) for i in range(32)]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(*(_cluster(client, png) for png in pngs))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 32
    batches = server.metric("aecluster_batch_size_count", model="digits")
    images = server.metric("aecluster_batch_size_sum", model="digits")
    assert images >= 32
    assert batches < images  # some model calls carried more than one image
    assert server.metric("aecluster_batch_size_bucket", model="digits", le="1.0") < batches


def test_version_swap_under_load_fails_no_request(server_factory, model_repo: Path,  # type: ignore[no-untyped-def]
                                                  digits_bundle: Path) -> None:
    server = server_factory(model_repo)
    pngs = [digit_png(i) for i in range(8)]
    versions: list[int] = []
    failures: list[str] = []

    async def load(stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            async def worker(i: int) -> None:
                while not stop.is_set():
                    response = await _cluster(client, pngs[i % len(pngs)])
                    if response.status_code != 200:
                        failures.append(f"{response.status_code} {response.text}")
                    else:
                        versions.append(response.json()["version"])
            await asyncio.gather(*(worker(i) for i in range(8)))

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(load(stop))
        await asyncio.sleep(1.0)
        await asyncio.to_thread(clone_version, digits_bundle, server.repo, "digits", 2)
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            for _ in range(300):
                status = (await client.get("/v1/models/digits")).json()
                states = {s["version"]: s["state"] for s in status["model_version_status"]}
                if states.get("2") == "AVAILABLE" and states.get("1") == "END":
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"no swap: {states}")
        await asyncio.sleep(1.0)
        stop.set()
        await task

    asyncio.run(scenario())
    assert failures == []
    assert 1 in versions and 2 in versions
    assert versions[-1] == 2


def test_overload_gets_503_at_once_without_memory_growth(server_factory,  # type: ignore[no-untyped-def]
                                                        model_repo: Path) -> None:
    server = server_factory(model_repo, max_queue="8", max_batch_size="4",
                            max_batch_delay_ms="200")
    big = {"instances": [{"b64": base64.b64encode(digit_png(i)).decode()} for i in range(6)]}

    async def flood(n: int) -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=n)
        async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:
            return await asyncio.gather(*(client.post("/v1/models/digits:cluster", json=big)
                                          for _ in range(n)))

    asyncio.run(flood(40))  # warm-up: allocator pools, connections
    before = server.rss_mb()
    for _ in range(3):
        responses = asyncio.run(flood(40))
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 503}
        rejected = [r for r in responses if r.status_code == 503]
        assert rejected, codes
        assert all(int(r.headers["Retry-After"]) >= 1 for r in rejected)
        assert "queue" in rejected[0].json()["error"]
    assert server.rss_mb() - before < 50
    assert httpx.get(f"{server.url}/readyz").status_code == 200


def test_sigterm_drains_in_flight_requests(server_factory, model_repo: Path) -> None:  # type: ignore[no-untyped-def]
    # A long batch delay keeps requests queued when the signal arrives.
    server = server_factory(model_repo, max_batch_delay_ms="1500", max_batch_size="64",
                            drain_seconds="20")
    pngs = [digit_png(i) for i in range(16)]

    async def scenario() -> tuple[list[httpx.Response], int, int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            in_flight = [asyncio.create_task(_cluster(client, png)) for png in pngs]
            await asyncio.sleep(0.5)
            server.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            ready = (await client.get("/readyz")).status_code
            late = (await _cluster(client, pngs[0])).status_code
            return await asyncio.gather(*in_flight), ready, late

    responses, ready, late = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200] * len(pngs)
    assert ready == 503 and late == 503
    assert server.proc.wait(timeout=60) == 0
    log = server.log.read_text()
    assert "draining" in log and "stopped" in log


def _keep_alive_caller(port: int, body: bytes, stop_after_close: list[dict[str, object]],
                       index: int) -> None:
    """One caller on one persistent connection, sending until an answer says to close."""
    record: dict[str, object] = {"statuses": [], "error": None, "closed_by": None}
    stop_after_close[index] = record
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        while True:
            connection.request("POST", "/v1/models/digits:cluster", body=body,
                               headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            assert isinstance(record["statuses"], list)
            record["statuses"].append(response.status)
            if response.getheader("connection", "").lower() == "close":
                record["closed_by"] = response.status
                return
            time.sleep(0.01)
    except OSError as exc:  # ConnectionResetError, RemoteDisconnected, BrokenPipe, refused
        record["error"] = repr(exc)
    finally:
        connection.close()


def test_sigterm_drains_keep_alive_callers_without_a_prestop_hook(
        server_factory, model_repo: Path) -> None:  # type: ignore[no-untyped-def]
    """Issue 39, item 7: under Docker or Compose (no preStop pause, no endpoint removal),
    keep-alive callers got connection resets, because the listeners closed 0.2 s after
    SIGTERM and the 503s did not say `Connection: close`.

    Now every keep-alive caller is told to close by an answer, none sees its connection
    die under a request, gRPC calls in flight finish, and the process exits 0 well inside
    the drain window.
    """
    # A batch delay keeps requests in flight long enough to be sure they are when the
    # signal comes.
    server = server_factory(model_repo, drain_seconds="20", max_batch_delay_ms="300")
    port = int(server.url.rsplit(":", 1)[1])
    body = json.dumps({"instances": [{"b64": base64.b64encode(digit_png(0)).decode()}]}).encode()
    callers = 6
    records: list[dict[str, object]] = [{} for _ in range(callers)]
    threads = [threading.Thread(target=_keep_alive_caller, args=(port, body, records, i))
               for i in range(callers)]
    for thread in threads:
        thread.start()
    channel = grpc.insecure_channel(server.grpc_target)
    stub = pb_grpc.ClusterServiceStub(channel)
    request = pb.ClusterRequest(model="digits", images=[pb.Image(encoded=digit_png(1))])
    assert stub.Cluster(request, timeout=30).predictions[0].cluster_id >= 0
    time.sleep(1.0)
    in_flight = [stub.Cluster.future(request, timeout=30) for _ in range(16)]
    time.sleep(0.1)  # received and queued, well inside the 300 ms batch delay
    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=60)
    grpc_codes = [future.code() for future in in_flight]
    exit_code = server.proc.wait(timeout=60)
    took = time.monotonic() - signalled
    channel.close()

    assert all(record["error"] is None for record in records), records
    assert all(record["closed_by"] in (200, 503) for record in records), records
    assert all(isinstance(r["statuses"], list) and r["statuses"].count(200) >= 2
               for r in records), records
    # Calls in flight when the signal came are answered, never cut off.
    assert grpc_codes == [grpc.StatusCode.OK] * len(in_flight), grpc_codes
    assert exit_code == 0, server.log.read_text()
    # The callers left after their answers: no waiting out the 20 s window.
    assert took < 10, took
    log = server.log.read_text()
    assert "draining" in log and "stopped" in log
