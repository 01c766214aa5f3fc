"""Render dockvault's Kubernetes monitoring manifests from their single sources.

The alert rules live only in deploy/prometheus/dockvault-rules.yaml and the dashboard only in
deploy/grafana/dockvault-dashboard.json; the files in deploy/kubernetes/ are generated from them and checked in,
and tests/unit/test_alert_rules.py fails when they are stale. Run `python deploy/render.py` after editing a source
(`--check` only reports). The render functions are importable, for the Helm chart's tooling.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

DEPLOY_DIR = Path(__file__).resolve().parent
RULES_SOURCE = Path("prometheus/dockvault-rules.yaml")
DASHBOARD_SOURCE = Path("grafana/dockvault-dashboard.json")
PROMETHEUS_RULE_OUTPUT = Path("kubernetes/prometheusrule.yaml")
DASHBOARD_CONFIGMAP_OUTPUT = Path("kubernetes/grafana-dashboard-configmap.yaml")

COMMON_LABELS = {"app.kubernetes.io/name": "dockvault", "app.kubernetes.io/component": "monitoring"}
# The label the Grafana dashboard sidecar (kube-prometheus-stack, grafana chart) watches for by default.
GRAFANA_SIDECAR_LABEL = {"grafana_dashboard": "1"}
# The import-time input of the dashboard; provisioned copies resolve it through a datasource variable instead.
DATASOURCE_INPUT = "DS_PROMETHEUS"
DATASOURCE_VARIABLE = "datasource"


def load_rules(deploy_dir: Path = DEPLOY_DIR) -> dict[str, Any]:
    """The Prometheus rules file (`groups: [...]`) as data."""
    return yaml.safe_load((deploy_dir / RULES_SOURCE).read_text(encoding="utf-8"))


def load_dashboard(deploy_dir: Path = DEPLOY_DIR) -> dict[str, Any]:
    return json.loads((deploy_dir / DASHBOARD_SOURCE).read_text(encoding="utf-8"))


def _metadata(name: str, namespace: str | None, labels: Mapping[str, str]) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    metadata["labels"] = dict(labels)
    return metadata


def render_prometheus_rule(
    rules: dict[str, Any],
    *,
    name: str,
    namespace: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A monitoring.coreos.com/v1 PrometheusRule with the same groups as the plain rules file.

    `labels` are added to the common ones, e.g. the `release` label a Prometheus Operator's ruleSelector matches.
    """
    groups = rules.get("groups")
    if not isinstance(groups, list) or not groups:
        raise ValueError("the rules have no `groups` list; expected a Prometheus rules file")
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": _metadata(name, namespace, {**COMMON_LABELS, **(labels or {})}),
        "spec": {"groups": copy.deepcopy(groups)},
    }


def provisioned_dashboard(dashboard: dict[str, Any]) -> dict[str, Any]:
    """The dashboard as a provisioning sidecar loads it: no import step resolves `${DS_PROMETHEUS}` there, so the
    import inputs are dropped and the references point at a datasource variable (default: the default Prometheus).
    """
    result = copy.deepcopy(dashboard)
    result.pop("__inputs", None)
    result.pop("__requires", None)
    text = json.dumps(result).replace(f"${{{DATASOURCE_INPUT}}}", f"${{{DATASOURCE_VARIABLE}}}")
    result = json.loads(text)
    variable = {
        "name": DATASOURCE_VARIABLE,
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
    }
    templating = result.setdefault("templating", {}).setdefault("list", [])
    templating[:] = [variable, *(v for v in templating if v.get("name") != DATASOURCE_VARIABLE)]
    return result


def render_dashboard_configmap(
    dashboard: dict[str, Any],
    *,
    name: str,
    namespace: str | None = None,
    labels: Mapping[str, str] | None = None,
    filename: str = "dockvault.json",
) -> dict[str, Any]:
    """A ConfigMap that the Grafana dashboard sidecar picks up (label `grafana_dashboard: "1"`)."""
    body = json.dumps(provisioned_dashboard(dashboard), indent=2, ensure_ascii=False) + "\n"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(name, namespace, {**COMMON_LABELS, **GRAFANA_SIDECAR_LABEL, **(labels or {})}),
        "data": {filename: body},
    }


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (PromQL, the dashboard JSON) as `|` blocks so the output reads like the source."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_str)


def to_yaml(manifest: dict[str, Any], *, source: Path) -> str:
    header = (
        f"# Generated by deploy/render.py from deploy/{source.as_posix()}; do not edit.\n"
        f"# Edit the source, then run `python deploy/render.py`.\n"
    )
    body = yaml.dump(manifest, Dumper=_BlockDumper, sort_keys=False, allow_unicode=True, width=10_000)
    return header + body


def rendered_files(deploy_dir: Path = DEPLOY_DIR) -> dict[Path, str]:
    """Every generated file (relative to deploy/) with the text it must have."""
    rule = render_prometheus_rule(load_rules(deploy_dir), name="dockvault")
    configmap = render_dashboard_configmap(load_dashboard(deploy_dir), name="dockvault-dashboard")
    return {
        PROMETHEUS_RULE_OUTPUT: to_yaml(rule, source=RULES_SOURCE),
        DASHBOARD_CONFIGMAP_OUTPUT: to_yaml(configmap, source=DASHBOARD_SOURCE),
    }


def stale_files(deploy_dir: Path = DEPLOY_DIR) -> list[Path]:
    """Generated files (relative to deploy/) that are missing or differ from a fresh render."""
    stale = []
    for relative, text in rendered_files(deploy_dir).items():
        path = deploy_dir / relative
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(relative)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files; exit 1 if any")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for relative in stale:
            print(f"stale: deploy/{relative.as_posix()} (run `python deploy/render.py`)", file=sys.stderr)
        return 1 if stale else 0
    for relative, text in rendered_files().items():
        path = DEPLOY_DIR / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote deploy/{relative.as_posix()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
