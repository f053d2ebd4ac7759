"""ServiceMonitor and PrometheusRule: the fields their CRDs require (kubernetes-validate has
no schema for them), and alerts built only from metrics and labels the service exports."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from prometheus_client import Counter, Gauge, Histogram

from service.metrics import Metrics
from tests.deploy import manifests

Rendered = dict[str, list[manifests.Obj]]
TARGET_LABELS = manifests.TARGET_LABELS
# prometheus-operator's pattern for durations (PrometheusRule `for`, scrape intervals).
DURATION = re.compile(
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?"
    r"(([0-9]+)ms)?)$")
PROMQL_WORDS = {"sum", "max", "min", "avg", "count", "by", "without", "rate", "increase",
                "histogram_quantile", "and", "or", "unless", "on", "ignoring", "bool"}


def _exported_series() -> dict[str, set[str]]:
    """Series name -> label names, for every metric of :class:`service.metrics.Metrics`,
    named as Prometheus stores them (counters end in _total, histograms have _bucket with
    `le`, _count and _sum)."""
    series: dict[str, set[str]] = {}
    for metric in vars(Metrics()).values():
        if not isinstance(metric, Counter | Gauge | Histogram):
            continue
        # prometheus_client keeps the label names only in this attribute.
        labels = set(metric._labelnames)
        (family,) = metric.describe()
        if isinstance(metric, Counter):
            series[family.name + "_total"] = labels
        elif isinstance(metric, Histogram):
            series[family.name + "_bucket"] = labels | {"le"}
            series[family.name + "_count"] = labels
            series[family.name + "_sum"] = labels
        else:
            series[family.name] = labels
    return series


def _rules(monitoring: list[manifests.Obj]) -> list[manifests.Obj]:
    rule = manifests.one(monitoring, "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def _alert(monitoring: list[manifests.Obj], uses: str) -> manifests.Obj:
    """The one alert whose expression uses the series ``uses``."""
    found = [r for r in _rules(monitoring)
             if re.search(rf"\b{uses}\b", r["expr"]) and "alert" in r]
    assert len(found) == 1, f"expected one alert on {uses}, found {[r.get('alert') for r in found]}"
    return found[0]


def test_service_monitor_scrapes_the_metrics_endpoint(
    monitoring: list[manifests.Obj], rendered: Rendered, http_get: Callable[[str], int]
) -> None:
    monitor = manifests.one(monitoring, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["name"]
    spec = monitor["spec"]
    # `selector` is the CRD's one required field of the spec.
    assert spec["selector"]["matchLabels"]
    for overlay in manifests.OVERLAYS:
        service = manifests.one(rendered[overlay], "Service")
        assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
        assert manifests.selects(spec["selector"]["matchLabels"], service["metadata"]["labels"])
        ports = {p["name"] for p in service["spec"]["ports"]}
        assert spec["endpoints"], "no endpoint to scrape"
        for endpoint in spec["endpoints"]:
            assert endpoint["port"] in ports
    for endpoint in spec["endpoints"]:
        assert endpoint["path"] == "/metrics"
        assert DURATION.match(endpoint["interval"]) and DURATION.match(endpoint["scrapeTimeout"])
    assert http_get("/metrics") == 200


def test_prometheus_rule_has_the_required_fields(monitoring: list[manifests.Obj]) -> None:
    rule = manifests.one(monitoring, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    groups = rule["spec"]["groups"]
    assert groups and len({g["name"] for g in groups}) == len(groups)  # names unique
    alerts = []
    for group in groups:
        assert group["name"] and group["rules"], group
        for r in group["rules"]:
            assert isinstance(r["expr"], str) and r["expr"].strip()
            # Exactly one of alert / record, as the CRD's validation webhook demands.
            assert ("alert" in r) != ("record" in r), r
            if "alert" in r:
                alerts.append(r["alert"])
                assert DURATION.match(r.get("for", "0")), r.get("for")
                assert r["labels"]["severity"] in {"critical", "warning", "info"}
                assert r["annotations"]["summary"] and r["annotations"]["description"]
    assert len(set(alerts)) == len(alerts)


@pytest.mark.parametrize("series", [
    "aecluster_requests_total",                 # error ratio
    "aecluster_request_duration_seconds_bucket",  # p99 latency
    "aecluster_queue_depth",                    # queue saturation
    "aecluster_model_load_failures_total",      # model load failures
    "aecluster_outliers_total",                 # outlier ratio (drift)
])
def test_each_promised_alert_exists(monitoring: list[manifests.Obj], series: str) -> None:
    _alert(monitoring, series)


def test_latency_alert_is_a_p99_of_the_histogram(monitoring: list[manifests.Obj]) -> None:
    expr = _alert(monitoring, "aecluster_request_duration_seconds_bucket")["expr"]
    assert "histogram_quantile(0.99" in expr.replace(" ", "")
    assert re.search(r"by \([^)]*\ble\b", expr), "the quantile needs `le` kept"


def test_error_ratio_counts_server_errors_of_both_protocols(
    monitoring: list[manifests.Obj],
) -> None:
    expr = _alert(monitoring, "aecluster_requests_total")["expr"]
    codes = re.search(r'code=~"([^"]+)"', expr)
    assert codes
    pattern = re.compile(f"^(?:{codes[1]})$")
    for code in ("500", "503", "504", "INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED"):
        assert pattern.match(code), code
    for code in ("200", "400", "404", "413", "OK", "INVALID_ARGUMENT", "NOT_FOUND"):
        assert not pattern.match(code), code


def test_outlier_ratio_divides_by_all_assigned_images(monitoring: list[manifests.Obj]) -> None:
    expr = _alert(monitoring, "aecluster_outliers_total")["expr"]
    # Every image assigned to a cluster is observed once in the distance histogram.
    assert "aecluster_distance_count" in expr


def test_queue_threshold_follows_the_configured_queue(
    monitoring: list[manifests.Obj], rendered: Rendered
) -> None:
    expr = _alert(monitoring, "aecluster_queue_depth")["expr"]
    limit = re.search(r">\s*0\.8\s*\*\s*(\d+)", expr)
    assert limit, expr
    for overlay in manifests.OVERLAYS:
        configmap = manifests.one(rendered[overlay], "ConfigMap")
        assert int(limit[1]) == int(configmap["data"]["AEC_MAX_QUEUE"]), overlay


def test_expressions_use_only_exported_series_and_labels(
    monitoring: list[manifests.Obj],
) -> None:
    exported = _exported_series()
    for rule in _rules(monitoring):
        expr = rule["expr"]
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}")
        used = set(re.findall(r"\baecluster_[a-z_]+\b", expr))
        assert used, rule.get("alert")
        unknown = used - set(exported)
        assert not unknown, f"{rule.get('alert')}: not exported by service.metrics: {unknown}"
        known_labels = set().union(*(exported[s] for s in used)) | TARGET_LABELS
        # Matchers: aecluster_x{label="..", label=~".."}
        for series, matchers in re.findall(r"\b(aecluster_[a-z_]+)\{([^}]*)\}", expr):
            for label in re.findall(r"([a-zA-Z_]+)\s*[=!]~?", matchers):
                assert label in exported[series] | TARGET_LABELS, (rule.get("alert"), label)
        # Grouping: by (a, b)
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            for label in (x.strip() for x in group.split(",")):
                assert label in known_labels, (rule.get("alert"), label)
        # Anything else that looks like a name is a PromQL keyword or function.
        words = set(re.findall(r"\b([a-z_]+)\s*\(", expr)) - used
        assert words <= PROMQL_WORDS, words
