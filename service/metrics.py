"""Prometheus metrics of one server process, on a registry of its own.

One :class:`Metrics` is built per process and handed to every constructor that records
something; nothing registers on prometheus_client's global registry, so tests (and several
servers in one process) never collide. Every metric is a counter, gauge or histogram
(not a summary): histograms aggregate across replicas.
"""

from __future__ import annotations

import threading

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import choose_encoder

from service.types import BatchOutput

# Sub-millisecond (a cached tiny model on a GPU) up to tens of seconds (a queue under
# overload): the range a request or a model call can take.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
)
# Batch sizes are padded to powers of two, so power-of-two buckets show the real sizes.
BATCH_SIZE_BUCKETS: tuple[float, ...] = (
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096,
)
# Euclidean distances in embedding space: the scale depends on the model, so the buckets
# grow geometrically over several decades.
DISTANCE_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0,
)
# Mean squared error of images scaled to [0, 1]: at most 1.
RECONSTRUCTION_ERROR_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)

MODEL_LABELS: tuple[str, ...] = ("model", "version")
OPENMETRICS = "application/openmetrics-text"


class Metrics:
    """Every ``aecluster_*`` metric of docs/architecture.md, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self.requests_total = Counter(
            "aecluster_requests_total",
            "Requests answered, by protocol (http, grpc), method and status code "
            "(HTTP status or gRPC code name).",
            ("protocol", "method", "code"), registry=reg,
        )
        self.request_duration_seconds = Histogram(
            "aecluster_request_duration_seconds",
            "Time from receiving a request to sending its answer.",
            ("protocol", "method"), buckets=LATENCY_BUCKETS, registry=reg,
        )
        self.queue_depth = Gauge(
            "aecluster_queue_depth",
            "Images waiting in the batcher of a model version.",
            MODEL_LABELS, registry=reg,
        )
        self.batch_size = Histogram(
            "aecluster_batch_size",
            "Images per model call (before padding to an allowed size).",
            MODEL_LABELS, buckets=BATCH_SIZE_BUCKETS, registry=reg,
        )
        self.inference_duration_seconds = Histogram(
            "aecluster_inference_duration_seconds",
            "Time of one model call on the worker thread.",
            MODEL_LABELS, buckets=LATENCY_BUCKETS, registry=reg,
        )
        self.cluster_assignments_total = Counter(
            "aecluster_cluster_assignments_total",
            "Images assigned to each cluster.",
            (*MODEL_LABELS, "cluster"), registry=reg,
        )
        self.distance = Histogram(
            "aecluster_distance",
            "Euclidean distance of each image to its assigned centroid.",
            MODEL_LABELS, buckets=DISTANCE_BUCKETS, registry=reg,
        )
        self.outliers_total = Counter(
            "aecluster_outliers_total",
            "Images farther from their centroid than the cluster's outlier threshold.",
            MODEL_LABELS, registry=reg,
        )
        self.reconstruction_error = Histogram(
            "aecluster_reconstruction_error",
            "Mean squared error between an image and its reconstruction (values in [0, 1]).",
            MODEL_LABELS, buckets=RECONSTRUCTION_ERROR_BUCKETS, registry=reg,
        )
        self.model_info = Gauge(
            "aecluster_model_info",
            "1 for every loaded model version, with what it is in its labels.",
            (*MODEL_LABELS, "latent_dim", "n_clusters", "input", "model_kind"), registry=reg,
        )
        self.model_load_failures_total = Counter(
            "aecluster_model_load_failures_total",
            "Model versions refused because verification or loading failed.",
            ("model",), registry=reg,
        )

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition text of every metric and the content type to send it with.

        OpenMetrics when ``accept`` (the scrape's Accept header) asks for it: only that
        format carries the latency histogram's exemplars (trace ids, with tracing on).
        Anything else gets Prometheus' text format, as before.
        """
        if accept is not None and OPENMETRICS in accept:
            encoder, content_type = choose_encoder(accept)
            return encoder(self.registry), content_type
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class VersionMetrics:
    """The per-image metrics of one model version, recorded once per computed batch.

    Label children are looked up once and kept (a ``labels()`` call per image was a
    measurable share of a request). A series appears on its first observation, as before:
    no reconstruction error is reported for a version whose decoder never ran.
    """

    def __init__(self, metrics: Metrics, model: str, version: int,
                 outlier_threshold: np.ndarray) -> None:
        self._metrics = metrics
        self._labels = {"model": model, "version": str(version)}
        self._threshold = outlier_threshold
        self._lock = threading.Lock()
        self._clusters: dict[int, Counter] = {}
        self._distance = metrics.distance.labels(**self._labels)
        self._outliers: Counter | None = None
        self._reconstruction: Histogram | None = None

    def observe(self, output: BatchOutput) -> None:
        """Assignments, distances, outliers and reconstruction errors of one batch."""
        with self._lock:  # children are created lazily; batches of one version are serial
            counts = np.bincount(output.cluster_id, minlength=len(self._threshold))
            for cluster in np.flatnonzero(counts).tolist():
                count = int(counts[cluster])
                child = self._clusters.get(cluster)
                if child is None:
                    child = self._metrics.cluster_assignments_total.labels(
                        **self._labels, cluster=str(cluster))
                    self._clusters[cluster] = child
                child.inc(count)
            for value in output.distance.tolist():
                self._distance.observe(value)
            outliers = int(np.count_nonzero(
                output.distance > self._threshold[output.cluster_id]))
            if outliers:
                if self._outliers is None:
                    self._outliers = self._metrics.outliers_total.labels(**self._labels)
                self._outliers.inc(outliers)
            if output.reconstruction_error is not None:
                if self._reconstruction is None:
                    self._reconstruction = self._metrics.reconstruction_error.labels(
                        **self._labels)
                for value in output.reconstruction_error.tolist():
                    self._reconstruction.observe(value)
