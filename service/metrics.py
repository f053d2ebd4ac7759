"""Prometheus metrics of one server process, on a registry of its own.

One :class:`Metrics` is built per process and handed to every constructor that records
something; nothing registers on prometheus_client's global registry, so tests (and several
servers in one process) never collide. Every metric is a counter, gauge or histogram
(not a summary): histograms aggregate across replicas. The registry also carries
prometheus_client's process, platform and GC collectors (``process_*``, ``python_info``,
``python_gc_*``), which operators' usual memory, CPU and GC panels read.

Request metrics carry the model and version a request resolved to. The transports count
requests but do not know the model, so the data plane tells them through a slot
(:class:`RequestModel`) that the transport puts in a context variable before the handler runs
and reads after it: :func:`resolved` fills it with the labels of a *loaded* version, so label
values only ever come from loaded models. A request that resolves none (health, metrics,
an unknown model or version, a 404 route) counts under :data:`NO_MODEL`.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any, TypeVar

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics import MetricWrapperBase

from service.types import BatchOutput

M = TypeVar("M", bound=MetricWrapperBase)

# Measured on a 2-core CPU host with the digits bundle (docs/serving.md, "Metrics"): one
# HTTP cluster request takes 1.6 ms at the server at c = 1 (p1 1.05, p99 2.1 ms), 2.3 ms
# at c = 8 (p99 8 ms) and 3.3 ms at c = 32 (p99 14 ms, max 60 ms); a model call of a small
# batch 0.4 to 2.5 ms (mean 0.87 ms). So the buckets are fine (steps of 1.3 to 2x) from
# 0.25 ms to 100 ms, where quantiles of those figures must be told apart, and coarse
# beyond: a queue under overload or a large model up to the 30 s a caller might wait.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01,
    0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
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
# The model and version labels of a request that resolved no loaded model. Model names
# start with a letter or digit (bundle.MODEL_NAME_PATTERN), so no model can be called this.
NO_MODEL: tuple[str, str] = ("_none", "_none")


class RequestModel:
    """The (model, version) labels of the loaded version one request resolved to.

    Mutable on purpose: the transport keeps a reference and reads it after the handler,
    which also sees what a handler running in a copied context (a task, a thread) wrote.
    """

    __slots__ = ("labels",)

    def __init__(self) -> None:
        self.labels = NO_MODEL


request_model: ContextVar[RequestModel | None] = ContextVar("aecluster_request_model",
                                                            default=None)


def resolved(labels: tuple[str, str]) -> None:
    """Called by the data plane with a loaded version's ``(model, version)``: the request
    being served counts under them (no-op outside a transport's request)."""
    slot = request_model.get()
    if slot is not None:
        slot.labels = labels


class Metrics:
    """Every ``aecluster_*`` metric of docs/architecture.md, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        # The metrics labelled by version (filled by _new), whose series go when the version
        # is unloaded, and the RequestMetrics that cache their label children.
        self._by_version: list[MetricWrapperBase] = []
        self._request_caches: weakref.WeakSet[RequestMetrics] = weakref.WeakSet()
        # Collectors of our own (the module's instances sit on the global registry). They
        # read /proc/self and the interpreter at scrape time, so several registries in one
        # process (tests) each report the same process, as they should.
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        GCCollector(registry=reg)
        self.requests_total = self._new(
            Counter,
            "aecluster_requests_total",
            "Requests answered, by protocol (http, grpc), method, status code (HTTP status "
            "or gRPC code name) and the model and version they resolved to (_none: none).",
            ("protocol", "method", "code", *MODEL_LABELS),
        )
        self.request_duration_seconds = self._new(
            Histogram,
            "aecluster_request_duration_seconds",
            "Time from receiving a request to sending its answer.",
            ("protocol", "method", *MODEL_LABELS), buckets=LATENCY_BUCKETS,
        )
        self.queue_depth = self._new(
            Gauge,
            "aecluster_queue_depth",
            "Images waiting in the batcher of a model version.",
            MODEL_LABELS,
        )
        self.batch_size = self._new(
            Histogram,
            "aecluster_batch_size",
            "Images per model call (before padding to an allowed size).",
            MODEL_LABELS, buckets=BATCH_SIZE_BUCKETS,
        )
        self.inference_duration_seconds = self._new(
            Histogram,
            "aecluster_inference_duration_seconds",
            "Time of one model call on the worker thread.",
            MODEL_LABELS, buckets=LATENCY_BUCKETS,
        )
        self.cluster_assignments_total = self._new(
            Counter,
            "aecluster_cluster_assignments_total",
            "Images assigned to each cluster.",
            (*MODEL_LABELS, "cluster"),
        )
        self.distance = self._new(
            Histogram,
            "aecluster_distance",
            "Euclidean distance of each image to its assigned centroid.",
            MODEL_LABELS, buckets=DISTANCE_BUCKETS,
        )
        self.outliers_total = self._new(
            Counter,
            "aecluster_outliers_total",
            "Images farther from their centroid than the cluster's outlier threshold.",
            MODEL_LABELS,
        )
        self.reconstruction_error = self._new(
            Histogram,
            "aecluster_reconstruction_error",
            "Mean squared error between an image and its reconstruction (values in [0, 1]).",
            MODEL_LABELS, buckets=RECONSTRUCTION_ERROR_BUCKETS,
        )
        self.model_info = self._new(
            Gauge,
            "aecluster_model_info",
            "1 for every loaded model version, with what it is in its labels.",
            (*MODEL_LABELS, "latent_dim", "n_clusters", "input", "model_kind"),
        )
        self.model_load_failures_total = self._new(
            Counter,
            "aecluster_model_load_failures_total",
            "Model versions refused because verification or loading failed.",
            ("model",),
        )

    def _new(self, kind: type[M], name: str, documentation: str, labels: Sequence[str],
             **options: Any) -> M:
        """A metric on this registry; one labelled by version is forgotten with the version."""
        metric = kind(name, documentation, labels, registry=self.registry, **options)
        if "version" in labels:
            self._by_version.append(metric)
        return metric

    def add_request_cache(self, cache: RequestMetrics) -> None:
        """Have ``cache`` drop an unloaded version's label children (held weakly)."""
        self._request_caches.add(cache)

    def forget_version(self, model: str, version: int) -> None:
        """Remove every series of an unloaded version from the exposition.

        Without this, each version a long-running server ever loaded kept its few hundred
        series (request counts and latency buckets per method and code, one counter per
        cluster, the per-image histograms) until the process ended, and a model retrained
        hourly added them every hour. Increments made after the last scrape before the
        unload are not seen; the version's series simply stop, as Prometheus expects of a
        target's series that go away. A version loaded again starts from zero.
        """
        labels = {"model": model, "version": str(version)}
        for metric in self._by_version:
            metric.remove_by_labels(labels)
        for cache in list(self._request_caches):
            cache.forget((model, str(version)))

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


class RequestMetrics:
    """``requests_total`` and ``request_duration_seconds`` of one transport.

    The label children are kept in a dict keyed by the label tuple: ``labels()`` costs
    microseconds (it validates and joins the values), a dict lookup a fraction of one. The
    keys are bounded: methods are a fixed set, codes are few, and models are loaded ones.
    """

    def __init__(self, metrics: Metrics, protocol: str) -> None:
        self._metrics = metrics
        self._protocol = protocol
        self._children: dict[tuple[str, object, tuple[str, str]], tuple[Counter, Histogram]] = {}
        metrics.add_request_cache(self)

    def record(self, method: str, code: object, model: tuple[str, str],
               seconds: float, exemplar: dict[str, str] | None = None) -> None:
        """One answered request; ``code`` is an HTTP status (int) or gRPC code name;
        ``exemplar``: its trace's ids when tracing is on (``service/tracing.py``)."""
        key = (method, code, model)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self._metrics.requests_total.labels(self._protocol, method, str(code), *model),
                self._metrics.request_duration_seconds.labels(self._protocol, method, *model),
            )
        children[0].inc()
        children[1].observe(seconds, exemplar)

    def forget(self, model: tuple[str, str]) -> None:
        """Drop the cached children of ``model`` (name, version) after its series went.

        A cached child outlives its removal from the metric: counting on it again would
        count where no scrape looks. The items are copied in one step and the dict is
        replaced, not changed in place: a ``record`` that adds a key meanwhile cannot break
        the loop, and at worst looks its children up again.
        """
        self._children = {key: children for key, children in list(self._children.items())
                          if key[2] != model}


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
