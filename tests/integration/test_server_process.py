"""The real server process (`python -m service`) on free ports, driven like production.

Batching under concurrency, a version swap under load with zero failed requests,
overload answered with 503 + Retry-After without memory growth, and SIGTERM that loses
no in-flight request.
"""

from __future__ import annotations

import asyncio
import base64
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

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
