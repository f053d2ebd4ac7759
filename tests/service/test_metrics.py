"""Metrics: every architecture-page name, on a private registry, in a parseable exposition."""

from __future__ import annotations

import numpy as np
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service import types
from service.metrics import LATENCY_BUCKETS, Metrics, VersionMetrics

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
    metrics.requests_total.labels(protocol="http", method="cluster", code="200").inc()
    metrics.requests_total.labels(protocol="grpc", method="predict", code="OK").inc(2)
    metrics.request_duration_seconds.labels(protocol="http", method="cluster").observe(0.0004)
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
                    (("code", "OK"), ("method", "predict"), ("protocol", "grpc")))] == 2.0
    assert samples[("aecluster_cluster_assignments_total",
                    (("cluster", "4"), ("model", "digits"), ("version", "1")))] == 3.0
    assert samples[("aecluster_queue_depth", (("model", "digits"), ("version", "1")))] == 7.0
    assert samples[("aecluster_batch_size_count", (("model", "digits"), ("version", "1")))] == 1.0
    assert samples[("aecluster_model_load_failures_total", (("model", "broken"),))] == 1.0
    info = [s for s in families["aecluster_model_info"].samples]
    assert info[0].labels["model_kind"] == "conv" and info[0].value == 1.0


def test_latency_buckets_cover_sub_millisecond_to_seconds() -> None:
    metrics = Metrics()
    metrics.request_duration_seconds.labels(protocol="http", method="cluster").observe(0.0002)
    body, _ = metrics.render()
    family = next(f for f in text_string_to_metric_families(body.decode())
                  if f.name == "aecluster_request_duration_seconds")
    bounds = [float(s.labels["le"]) for s in family.samples if s.name.endswith("_bucket")]
    assert min(LATENCY_BUCKETS) < 0.001 and max(LATENCY_BUCKETS) >= 10
    assert bounds[:-1] == list(LATENCY_BUCKETS) and bounds[-1] == float("inf")
    # The 0.2 ms observation falls in the 0.25 ms bucket, not the 0.1 ms one.
    counts = {float(s.labels["le"]): s.value for s in family.samples if s.name.endswith("_bucket")}
    assert counts[0.0001] == 0 and counts[0.00025] == 1


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
    metrics.request_duration_seconds.labels(protocol="http", method="cluster").observe(
        0.0004, {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"})
    body, content_type = metrics.render(accept)
    text = body.decode()
    assert content_type.startswith("application/openmetrics-text" if openmetrics
                                   else "text/plain")
    assert text.endswith("# EOF\n") is openmetrics
    exemplar = ('aecluster_request_duration_seconds_bucket{le="0.0005",method="cluster",'
                'protocol="http"} 1.0 # {span_id="00f067aa0ba902b7",'
                'trace_id="4bf92f3577b34da6a3ce929d0e0e4736"} 0.0004')
    assert (exemplar in text) is openmetrics
    assert "trace_id" not in text or openmetrics
