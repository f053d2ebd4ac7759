"""Metrics: every architecture-page name, on a private registry, in a parseable exposition."""

from __future__ import annotations

import itertools

import numpy as np
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service import types
from service.metrics import (
    LATENCY_BUCKETS,
    NO_MODEL,
    Metrics,
    RequestMetrics,
    RequestModel,
    VersionMetrics,
    request_model,
    resolved,
)

# name in the exposition (family name as the parser reports it) -> type
EXPECTED = {
    "aecluster_requests": "counter",
    "aecluster_request_duration_seconds": "histogram",
    "aecluster_queue_depth": "gauge",
    "aecluster_batch_size": "histogram",
    "aecluster_inference_duration_seconds": "histogram",
    "aecluster_cluster_assignments": "counter",
    "aecluster_distance": "histogram",
    "aecluster_outliers": "counter",
    "aecluster_reconstruction_error": "histogram",
    "aecluster_model_info": "gauge",
    "aecluster_model_load_failures": "counter",
}


def _record_one_of_each(metrics: Metrics) -> None:
    metrics.requests_total.labels(protocol="http", method="cluster", code="200",
                                  model="digits", version="1").inc()
    metrics.requests_total.labels(protocol="grpc", method="predict", code="OK",
                                  model="digits", version="1").inc(2)
    metrics.request_duration_seconds.labels(protocol="http", method="cluster",
                                            model="digits", version="1").observe(0.0004)
    metrics.queue_depth.labels(model="digits", version="1").set(7)
    metrics.batch_size.labels(model="digits", version="1").observe(12)
    metrics.inference_duration_seconds.labels(model="digits", version="1").observe(0.003)
    metrics.cluster_assignments_total.labels(model="digits", version="1", cluster="4").inc(3)
    metrics.distance.labels(model="digits", version="1").observe(1.7)
    metrics.outliers_total.labels(model="digits", version="1").inc()
    metrics.reconstruction_error.labels(model="digits", version="1").observe(0.02)
    metrics.model_info.labels(
        model="digits", version="1", latent_dim="8", n_clusters="10", input="8x8x1 gray",
        model_kind="conv",
    ).set(1)
    metrics.model_load_failures_total.labels(model="broken").inc()


def test_exposition_parses_and_names_every_metric() -> None:
    metrics = Metrics()
    _record_one_of_each(metrics)
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain") and "version=" in content_type
    families = {f.name: f for f in text_string_to_metric_families(body.decode("utf-8"))}
    for name, kind in EXPECTED.items():
        assert name in families, f"{name} missing from the exposition"
        assert families[name].type == kind, f"{name} is a {families[name].type}, not a {kind}"

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values() for s in f.samples
    }
    assert samples[("aecluster_requests_total",
                    (("code", "OK"), ("method", "predict"), ("model", "digits"),
                     ("protocol", "grpc"), ("version", "1")))] == 2.0
    assert samples[("aecluster_cluster_assignments_total",
                    (("cluster", "4"), ("model", "digits"), ("version", "1")))] == 3.0
    assert samples[("aecluster_queue_depth", (("model", "digits"), ("version", "1")))] == 7.0
    assert samples[("aecluster_batch_size_count", (("model", "digits"), ("version", "1")))] == 1.0
    assert samples[("aecluster_model_load_failures_total", (("model", "broken"),))] == 1.0
    info = [s for s in families["aecluster_model_info"].samples]
    assert info[0].labels["model_kind"] == "conv" and info[0].value == 1.0


def test_latency_buckets_resolve_the_measured_range() -> None:
    metrics = Metrics()
    metrics.request_duration_seconds.labels(protocol="http", method="cluster", model="digits",
                                            version="1").observe(0.0016)
    body, _ = metrics.render()
    family = next(f for f in text_string_to_metric_families(body.decode())
                  if f.name == "aecluster_request_duration_seconds")
    bounds = [float(s.labels["le"]) for s in family.samples if s.name.endswith("_bucket")]
    assert bounds[:-1] == list(LATENCY_BUCKETS) and bounds[-1] == float("inf")
    # docs/serving.md: 1 to 60 ms at the server from c = 1 to 32 on CPU, model calls from
    # 0.4 ms: no step over 2x between 0.25 ms and 100 ms, and a tail to 30 s for overload.
    fine = [b for b in LATENCY_BUCKETS if 0.00025 <= b <= 0.1]
    assert fine[0] == 0.00025 and fine[-1] == 0.1
    assert all(high / low <= 2.0 for low, high in itertools.pairwise(fine))
    assert max(LATENCY_BUCKETS) >= 30
    # The c = 1 median, 1.6 ms, falls in the 2 ms bucket, not the 1.5 ms one.
    counts = {float(s.labels["le"]): s.value for s in family.samples if s.name.endswith("_bucket")}
    assert counts[0.0015] == 0 and counts[0.002] == 1


def test_process_platform_and_gc_collectors_are_on_the_private_registry() -> None:
    first, second = Metrics(), Metrics()
    for metrics in (first, second):  # each server in a process has its own, both work
        families = {f.name for f in text_string_to_metric_families(metrics.render()[0].decode())}
        assert {"process_resident_memory_bytes", "process_cpu_seconds",
                "process_open_fds", "python_info", "python_gc_collections"} <= families
        assert metrics.registry.get_sample_value("process_resident_memory_bytes")


def test_request_metrics_reuse_their_children() -> None:
    metrics = Metrics()
    requests = RequestMetrics(metrics, "http")
    for _ in range(3):
        requests.record("cluster", 200, ("digits", "1"), 0.002)
    requests.record("cluster", 503, NO_MODEL, 0.0001)
    sample = metrics.registry.get_sample_value
    assert sample("aecluster_requests_total", {"protocol": "http", "method": "cluster",
                  "code": "200", "model": "digits", "version": "1"}) == 3
    assert sample("aecluster_requests_total", {"protocol": "http", "method": "cluster",
                  "code": "503", "model": "_none", "version": "_none"}) == 1
    assert sample("aecluster_request_duration_seconds_sum", {
        "protocol": "http", "method": "cluster", "model": "digits", "version": "1"}) \
        == pytest.approx(0.006)
    assert len(requests._children) == 2


def test_resolved_fills_the_slot_of_the_current_request_only() -> None:
    resolved(("digits", "1"))  # outside a request: nothing to fill, no error
    slot = RequestModel()
    assert slot.labels == NO_MODEL
    token = request_model.set(slot)
    try:
        resolved(("digits", "2"))
    finally:
        request_model.reset(token)
    assert slot.labels == ("digits", "2")
    assert request_model.get() is None


def test_registries_are_private() -> None:
    first, second = Metrics(), Metrics()
    first.outliers_total.labels(model="m", version="1").inc()
    assert first.registry is not second.registry
    assert b"aecluster_outliers_total{" not in second.render()[0]
    assert b"aecluster_" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)


def test_explicit_registry_is_used() -> None:
    registry = prometheus_client.CollectorRegistry()
    metrics = Metrics(registry)
    assert metrics.registry is registry
    assert registry.get_sample_value("aecluster_outliers_total", {"model": "m", "version": "1"}) \
        is None
    metrics.outliers_total.labels(model="m", version="1").inc()
    assert registry.get_sample_value("aecluster_outliers_total",
                                     {"model": "m", "version": "1"}) == 1.0
    # A second Metrics on the same registry would register the same names twice.
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Metrics(registry)


def test_version_metrics_record_a_batch_and_create_series_on_first_use() -> None:
    metrics = Metrics()
    version = VersionMetrics(metrics, "digits", 2, np.array([1.0, 1.0, 5.0], np.float32))
    labels = {"model": "digits", "version": "2"}

    def get(name: str, **extra: str) -> float | None:
        return metrics.registry.get_sample_value(name, {**labels, **extra})

    version.observe(types.BatchOutput(
        cluster_id=np.array([0, 0, 2], np.int64), distance=np.array([0.5, 2.0, 3.0], np.float32),
        distances=np.zeros((3, 3), np.float32), embedding=np.zeros((3, 4), np.float32),
        reconstruction=None))
    assert get("aecluster_cluster_assignments_total", cluster="0") == 2
    assert get("aecluster_cluster_assignments_total", cluster="2") == 1
    assert get("aecluster_cluster_assignments_total", cluster="1") is None  # never assigned
    assert get("aecluster_distance_count") == 3 and get("aecluster_distance_sum") == 5.5
    assert get("aecluster_outliers_total") == 1  # 2.0 > 1.0 of cluster 0; 3.0 <= 5.0
    assert get("aecluster_reconstruction_error_count") is None  # the decoder did not run
    version.observe(types.BatchOutput(
        cluster_id=np.array([1], np.int64), distance=np.array([0.1], np.float32),
        distances=np.zeros((1, 3), np.float32), embedding=np.zeros((1, 4), np.float32),
        reconstruction=np.zeros((1, 2, 2, 1), np.float32),
        reconstruction_error=np.array([0.25], np.float32)))
    assert get("aecluster_cluster_assignments_total", cluster="1") == 1
    assert get("aecluster_reconstruction_error_count") == 1
    assert get("aecluster_reconstruction_error_sum") == 0.25


@pytest.mark.parametrize(("accept", "openmetrics"), [
    (None, False),
    ("text/plain", False),
    ("*/*", False),
    ("application/openmetrics-text", True),
    # what Prometheus sends with exemplar storage on
    ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
     "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1", True),
])
def test_openmetrics_when_the_scrape_asks_for_it(accept: str | None, openmetrics: bool) -> None:
    """Exemplars exist only in OpenMetrics; every other scrape gets the text format."""
    metrics = Metrics()
    metrics.request_duration_seconds.labels(
        protocol="http", method="cluster", model="digits", version="1",
    ).observe(0.0004, {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
                       "span_id": "00f067aa0ba902b7"})
    body, content_type = metrics.render(accept)
    text = body.decode()
    assert content_type.startswith("application/openmetrics-text" if openmetrics
                                   else "text/plain")
    assert text.endswith("# EOF\n") is openmetrics
    # The observation's own bucket carries it: 1 observation, then the exemplar.
    exemplar = (' 1.0 # {span_id="00f067aa0ba902b7",'
                'trace_id="4bf92f3577b34da6a3ce929d0e0e4736"} 0.0004 ')
    lines = [line for line in text.splitlines()
             if line.startswith("aecluster_request_duration_seconds_bucket{")
             and 'le="0.0005"' in line and exemplar in line]
    assert len(lines) == (1 if openmetrics else 0)
    assert "trace_id" not in text or openmetrics
