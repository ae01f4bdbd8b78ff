"""deploy/: the Grafana dashboard imports as is, the alert rules load, the PromQL name extractor is right."""

from __future__ import annotations

import re

import pytest

from tests.promql import DEPLOY, alert_rules, dashboard, dashboard_exprs, metric_names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("max(alert_queue_depth) > 5000", {"alert_queue_depth"}),
        (
            'histogram_quantile(0.95, max by (le, channel) (rate(x_bucket{channel=~"$channel"}[$__rate_interval])))',
            {"x_bucket"},
        ),
        ("max(a) > 0 and max(delta(b[15m])) > 0", {"a", "b"}),
        ('sum by (c) (max without (instance, pod) (rate(d_total{outcome=~"p|t"}[10m]))) / on(c) e', {"d_total", "e"}),
        ('absent(up{job="alert-worker"} == 1)', {"up"}),
        ("max(a) / clamp_min(max(b), 1) > 0.9", {"a", "b"}),
        ("max(x) > 1e3 or vector(+Inf)", {"x"}),
    ],
    ids=[
        "plain",
        "histogram-quantile",
        "and",
        "grouping-labels-ignored",
        "label-matcher-values-ignored",
        "function-names-ignored",
        "numbers-ignored",
    ],
)
def test_the_extractor_finds_exactly_the_metric_names_an_expression_selects(expr: str, names: set[str]) -> None:
    """Labels, functions, keywords, numbers and Grafana variables are not metric names."""
    assert metric_names(expr) == names


def test_the_dashboard_takes_its_prometheus_datasource_from_a_template_variable() -> None:
    """Importable as is: no datasource uid of ours baked in, every panel and target uses ``${datasource}``."""
    board = dashboard()
    [variable] = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert (variable["name"], variable["query"]) == ("datasource", "prometheus")
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert panels and "__inputs" not in board and "id" not in board
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and all(t["datasource"] == panel["datasource"] for t in panel["targets"])
        assert panel["description"], f"{panel['title']}: an operator needs to know what the panel means"


def test_dashboard_panels_have_unique_ids_and_do_not_overlap() -> None:
    """Grafana silently rearranges overlapping panels and drops duplicate ids."""
    panels = dashboard()["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, p["title"]
                cells.add((x, y))


def test_the_dashboard_covers_what_the_on_call_engineer_asks() -> None:
    """Deliveries/s, latency percentiles, throttles and deferrals, poison, queue, workers, retries by reason."""
    exprs = "\n".join(dashboard_exprs())
    for needle in (
        "rate(alert_delivery_attempts_total",
        "histogram_quantile(0.95, max by (le, channel) (rate(alert_delivery_latency_seconds_bucket",
        "alert_delivery_throttled_total",
        "alert_delivery_deferrals_total",
        "delta(alert_poison_queue_size",
        "alert_queue_depth",
        "alert_oldest_due_pending_age_seconds",
        "alert_workers_live",
        "alert_worker_threads_busy",
        "max by (channel, reason) (rate(alert_delivery_retries_total",
    ):
        assert needle in exprs, needle


def test_every_alert_rule_has_a_name_an_expression_a_severity_and_a_summary() -> None:
    """The rules file loads as YAML and each rule is complete."""
    rules = alert_rules()
    assert len(rules) >= 5
    for rule in rules:
        assert rule["alert"] and rule["expr"] and rule["labels"]["severity"] in {"page", "warn"}
        assert rule["annotations"]["summary"]


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower-cased, punctuation dropped, spaces to hyphens."""
    found = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def test_every_alert_rule_has_a_runbook_annotation_pointing_at_an_existing_anchor_of_the_operations_page() -> None:
    """What docs/operations.md promises: each rule's ``runbook`` is ``docs/operations.md#<anchor>`` and the anchor
    is a heading on that page."""
    anchors = _anchors((DEPLOY.parent / "docs" / "operations.md").read_text())
    for rule in alert_rules():
        page, _, anchor = rule["annotations"].get("runbook", "").partition("#")
        assert page == "docs/operations.md" and anchor in anchors, rule["alert"]


def test_the_down_rule_matches_the_scrape_job_name_the_docs_tell_operators_to_use() -> None:
    """``up{job=...}`` only sees a job by its name: the rule and the documented ``job_name`` agree."""
    [down] = [r for r in alert_rules() if r["alert"] == "AlertWorkerDown"]
    [job] = re.findall(r'job="([^"]+)"', down["expr"])
    assert f"- job_name: {job}\n" in (DEPLOY.parent / "docs" / "operations.md").read_text()
