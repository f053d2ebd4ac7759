"""The Grafana dashboard of ``k8s/monitoring``: every query parses as PromQL (promql-parser,
the Python binding of GreptimeDB's Rust parser) and names only series and labels that a
running server exports, read from the /metrics of the real app serving a real digits bundle;
kustomize ships it as a ConfigMap for Grafana's dashboard sidecar."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import promql_parser
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_digits

from tests.deploy import manifests
from tests.service.bundles import clone_version
from tests.service.stacks import in_process

DASHBOARD = manifests.K8S / "monitoring" / "grafana" / "aecluster-dashboard.json"
# Grafana's variables, replaced by values that keep the query valid PromQL.
VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h",
             "$job": ".*", "$model": ".*"}
# What operators look for (issue 43): each must be on some panel.
SHOWN = {
    "aecluster_requests_total", "aecluster_request_duration_seconds_bucket",
    "aecluster_inference_duration_seconds_bucket", "aecluster_queue_depth",
    "aecluster_batch_size_bucket", "aecluster_model_info", "aecluster_model_load_failures_total",
    "aecluster_cluster_assignments_total", "aecluster_outliers_total",
    "aecluster_distance_count", "process_resident_memory_bytes", "process_cpu_seconds_total",
}
Exported = dict[str, set[str]]  # series name -> its label names


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # a collapsed row holds its panels


def _queries() -> list[tuple[str, str]]:
    """(panel title, PromQL with the variables replaced) of every target of every panel."""
    found = []
    for panel in _panels(_dashboard()["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"{panel['title']}: an unknown variable in {expr}"
            found.append((panel["title"], expr))
    return found


# ---- a live server's /metrics -----------------------------------------------------------


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def exported(tmp_path_factory: pytest.TempPathFactory,
                   digits_bundle: Path) -> AsyncIterator[Exported]:
    """Series and label names in /metrics of the real app, serving digits version 1 next to a
    version that fails to load, after good, outlying and failing requests."""
    repo = tmp_path_factory.mktemp("dashboard") / "repo"
    clone_version(digits_bundle, repo, "digits", 1)
    broken = repo / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "manifest.json").write_text("{}")
    digits = (load_digits().images[:4] / 16.0)[..., None]
    noise = np.random.default_rng(0).random((8, 8, 8, 1))  # far from every centroid
    async with in_process(repo, max_batch_delay_ms=1) as served, \
            served.client("http://pod") as http:
        for images in (digits, noise):
            answer = await http.post("/v1/models/digits:cluster",
                                     params={"return_reconstruction": "array"},
                                     json={"instances": images.tolist()})
            assert answer.status_code == 200, answer.text
        assert (await http.post("/v1/models/nope:cluster",
                                json={"instances": digits.tolist()})).status_code == 404
        text = (await http.get("/metrics")).text
    series: Exported = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    # The state the dashboard is meant for: otherwise the check below would be too lenient.
    assert {"aecluster_outliers_total", "aecluster_model_load_failures_total",
            "aecluster_reconstruction_error_count"} <= set(series), sorted(series)
    yield series


# ---- the check ----------------------------------------------------------------------------


def _selectors(node: Any) -> list[promql_parser.VectorSelector]:
    """Every vector selector under ``node``; raises on a node kind it does not know, so a
    query using one is not passed unchecked."""
    if isinstance(node, promql_parser.VectorSelector):
        return [node]
    if isinstance(node, promql_parser.MatrixSelector):
        return [node.vector_selector]
    if isinstance(node, promql_parser.NumberLiteral | promql_parser.StringLiteral):
        return []
    if isinstance(node, promql_parser.AggregateExpr):
        return _selectors(node.expr) + (_selectors(node.param) if node.param else [])
    if isinstance(node, promql_parser.Call):
        return [s for arg in node.args for s in _selectors(arg)]
    if isinstance(node, promql_parser.BinaryExpr):
        return _selectors(node.lhs) + _selectors(node.rhs)
    if isinstance(node, promql_parser.ParenExpr | promql_parser.UnaryExpr
                  | promql_parser.SubqueryExpr):
        return _selectors(node.expr)
    raise AssertionError(f"the checker does not know {type(node).__name__}: {node}")


def _grouping(node: Any) -> Iterator[tuple[set[str], list[promql_parser.VectorSelector]]]:
    """(labels named in by/without/on/ignoring/group_x, the selectors they group) of every
    aggregation and binary operation under ``node``."""
    if isinstance(node, promql_parser.AggregateExpr):
        if node.modifier is not None:
            yield set(node.modifier.labels), _selectors(node.expr)
        yield from _grouping(node.expr)
    elif isinstance(node, promql_parser.BinaryExpr):
        modifier = node.modifier
        if modifier is not None:
            labels = set(modifier.group_labels or [])
            if modifier.matching is not None:
                labels |= set(modifier.matching.labels)
            yield labels, _selectors(node)
        yield from _grouping(node.lhs)
        yield from _grouping(node.rhs)
    elif isinstance(node, promql_parser.Call):
        for arg in node.args:
            yield from _grouping(arg)
    elif isinstance(node, promql_parser.ParenExpr | promql_parser.UnaryExpr
                    | promql_parser.SubqueryExpr):
        yield from _grouping(node.expr)
    elif isinstance(node, promql_parser.MatrixSelector):
        yield from _grouping(node.vector_selector)


def check(expr: str, exported: Exported) -> list[str]:
    """What is wrong with one query against ``exported``: empty if nothing."""
    try:
        tree = promql_parser.parse(expr)
    except ValueError as exc:
        return [f"does not parse: {exc}"]
    problems = []
    selectors = _selectors(tree)
    if not selectors:
        problems.append("names no series")
    for selector in selectors:
        name = selector.name
        if name not in exported:
            problems.append(f"{name} is not exported")
            continue
        for matcher in selector.matchers.matchers:
            if matcher.name not in exported[name] | manifests.TARGET_LABELS:
                problems.append(f"{name} has no label {matcher.name}")
    for labels, grouped in _grouping(tree):
        known = set(manifests.TARGET_LABELS).union(
            *(exported.get(s.name, set()) for s in grouped))
        problems += [f"groups by {label}, which none of its series has"
                     for label in sorted(labels - known)]
    return problems


QUERIES = _queries()


@pytest.mark.anyio
@pytest.mark.parametrize(("title", "expr"), QUERIES, ids=[f"{t}-{i}" for i, (t, _) in
                                                          enumerate(QUERIES)])
async def test_every_query_parses_and_names_exported_series(
        exported: Exported, title: str, expr: str) -> None:
    assert check(expr, exported) == [], f"{title}: {expr}"


@pytest.mark.anyio
async def test_the_checker_finds_wrong_names_and_labels(exported: Exported) -> None:
    good = ('sum by (model, le) (rate(aecluster_request_duration_seconds_bucket'
            '{method="cluster"}[5m]))')
    assert check(good, exported) == []
    assert "aecluster_request_duration_seconds_buckets is not exported" in check(
        good.replace("_bucket", "_buckets"), exported)
    assert check(good.replace("method=", "path="), exported) == [
        "aecluster_request_duration_seconds_bucket has no label path"]
    assert check(good.replace("by (model, le)", "by (cluster, le)"), exported) == [
        "groups by cluster, which none of its series has"]
    assert check(good.replace("[5m]))", "[5m])"), exported)[0].startswith("does not parse")


@pytest.mark.anyio
async def test_variables_read_exported_labels(exported: Exported) -> None:
    for variable in _dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"]
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
        assert match, query
        selector = match[1]
        for name, value in VARIABLES.items():
            selector = selector.replace(name, value)
        assert check(selector, exported) == [], query
        series = promql_parser.parse(selector).name
        assert match[2] in exported[series] | manifests.TARGET_LABELS, query


def test_panels_show_what_operators_look_for() -> None:
    named = {name for _, expr in QUERIES for name in re.findall(r"\b[a-z_]+(?=\{)", expr)}
    assert named >= SHOWN, SHOWN - named
    titles = [panel["title"] for panel in _panels(_dashboard()["panels"])]
    assert len(titles) == len(set(titles))
    ids = [panel["id"] for panel in _panels(_dashboard()["panels"])]
    assert len(ids) == len(set(ids))


def test_kustomize_ships_the_dashboard_for_grafanas_sidecar(
        monitoring: list[manifests.Obj]) -> None:
    (configmap,) = [obj for obj in monitoring if obj["kind"] == "ConfigMap"]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["data"] == {DASHBOARD.name: DASHBOARD.read_text()}
    assert _dashboard()["uid"] == "aecluster"
