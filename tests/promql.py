"""Metric names used by the PromQL in deploy/ (Grafana dashboard, Prometheus alert rules).

Not a PromQL parser: it removes what cannot be a metric name (strings, label matchers, ranges,
grouping clauses, function calls, keywords, numbers, Grafana variables) and keeps the rest.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
KEYWORDS = frozenset({"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool"})
# Prometheus makes `up` for every scrape target; the worker does not (and cannot) export it.
PROMETHEUS_SERIES = frozenset({"up"})

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_VARIABLE = re.compile(r"\$\{?\w+\}?")
_NAME = re.compile(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")
_LABEL_VALUES = re.compile(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects."""
    text = _STRING.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _VARIABLE.sub(" ", text)
    names = set()
    for found in _NAME.finditer(text):
        name, call = found.group(1), found.group(2)
        if call or name in KEYWORDS or name.lower() in {"inf", "nan"}:
            continue
        names.add(name)
    return names


def _walk(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        found.append(node)
        for value in node.values():
            found.extend(_walk(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_walk(value))
    return found


def dashboard() -> dict[str, Any]:
    return dict(json.loads((DEPLOY / "grafana-dashboard.json").read_text()))


def dashboard_exprs() -> list[str]:
    """Every panel target's ``expr`` and every template variable's query, in the dashboard JSON."""
    exprs = [node["expr"] for node in _walk(dashboard().get("panels", [])) if isinstance(node.get("expr"), str)]
    for variable in dashboard()["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable.get("type") == "query" and isinstance(query, str):
            exprs.extend(_LABEL_VALUES.findall(query) or [query])
    return exprs


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((DEPLOY / "prometheus-alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alert_exprs() -> list[str]:
    return [str(rule["expr"]) for rule in alert_rules()]
