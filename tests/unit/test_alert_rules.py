"""The alert rules in deploy/prometheus/: valid for the real promtool, unit-tested alert by alert, and rendered.

promtool comes with Debian's `prometheus` package. Outside the harness a missing promtool skips the promtool
tests with the reason; inside it (DOCKVAULT_HARNESS=1) that is a failure.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy/prometheus/dockvault-rules.yaml"
RULES_TESTS = REPO / "deploy/prometheus/dockvault-rules.test.yaml"
IN_HARNESS = os.environ.get("DOCKVAULT_HARNESS") == "1"
PROMTOOL_TIMEOUT = 120  # seconds; `promtool test rules` takes a few seconds for its multi-day tests
SEVERITIES = {"critical", "warning"}
# Alerts about the scrape target rather than a policy: they cannot name one.
NOT_PER_POLICY = {"DockvaultTargetDown"}


def load_render() -> ModuleType:
    """deploy/render.py, imported from its path (deploy/ is not a package)."""
    spec = importlib.util.spec_from_file_location("dockvault_deploy_render", REPO / "deploy/render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def alerts() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def alert_names() -> list[str]:
    return [rule["alert"] for rule in alerts()]


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        reason = "promtool is not installed (Debian package `prometheus`: apt-get install prometheus)"
        if IN_HARNESS:
            pytest.fail(f"inside the harness, but {reason}")
        pytest.skip(reason)
    return path


def run_promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], cwd=REPO, capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT, check=False
    )


def test_promtool_check_rules(promtool: str) -> None:
    result = run_promtool(promtool, "check", "rules", str(RULES.relative_to(REPO)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in result.stdout


def test_promtool_test_rules(promtool: str) -> None:
    result = run_promtool(promtool, "test", "rules", str(RULES_TESTS.relative_to(REPO)))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("alertname", alert_names())
def test_alert_is_tested_firing_and_quiet(alertname: str) -> None:
    cases = [
        case
        for test in yaml.safe_load(RULES_TESTS.read_text(encoding="utf-8"))["tests"]
        for case in test.get("alert_rule_test", [])
        if case["alertname"] == alertname
    ]
    assert any(case.get("exp_alerts") for case in cases), f"{alertname}: no test where it fires"
    assert any(not case.get("exp_alerts") for case in cases), f"{alertname}: no test where it stays quiet"
    for case in cases:
        for expected in case.get("exp_alerts") or []:
            assert set(expected.get("exp_annotations", {})) >= {"summary", "description"}, (
                f"{alertname} at {case['eval_time']}: the expected alert must pin summary and description exactly"
            )


@pytest.mark.parametrize("alertname", alert_names())
def test_alert_has_severity_summary_description(alertname: str) -> None:
    (rule,) = [rule for rule in alerts() if rule["alert"] == alertname]
    assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{alertname}: severity must be one of {SEVERITIES}"
    annotations = rule.get("annotations", {})
    for key in ("summary", "description"):
        assert annotations.get(key, "").strip(), f"{alertname}: the {key} annotation is missing"
        if alertname not in NOT_PER_POLICY:
            assert "{{ $labels.policy }}" in annotations[key], f"{alertname}: the {key} must name the policy"


def test_alert_names_are_unique() -> None:
    names = alert_names()
    assert len(names) == len(set(names)), names


def test_rendered_files_are_current() -> None:
    render = load_render()
    stale = render.stale_files()
    assert not stale, (
        f"{', '.join('deploy/' + p.as_posix() for p in stale)} differ from deploy/prometheus and deploy/grafana: "
        "run `python deploy/render.py` and commit the result"
    )


def test_prometheus_rule_carries_the_same_groups() -> None:
    render = load_render()
    rendered = yaml.safe_load((REPO / "deploy" / render.PROMETHEUS_RULE_OUTPUT).read_text(encoding="utf-8"))
    assert rendered["apiVersion"] == "monitoring.coreos.com/v1"
    assert rendered["kind"] == "PrometheusRule"
    assert rendered["spec"]["groups"] == render.load_rules()["groups"]


def test_render_prometheus_rule_takes_name_namespace_and_labels() -> None:
    render = load_render()
    rule = render.render_prometheus_rule(
        render.load_rules(), name="backups", namespace="monitoring", labels={"release": "kube-prometheus-stack"}
    )
    assert rule["metadata"]["name"] == "backups"
    assert rule["metadata"]["namespace"] == "monitoring"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["metadata"]["labels"]["app.kubernetes.io/name"] == "dockvault"
    with pytest.raises(ValueError, match="groups"):
        render.render_prometheus_rule({}, name="x")


def test_dashboard_configmap_is_picked_up_by_the_sidecar() -> None:
    render = load_render()
    configmap = yaml.safe_load((REPO / "deploy" / render.DASHBOARD_CONFIGMAP_OUTPUT).read_text(encoding="utf-8"))
    assert configmap["kind"] == "ConfigMap"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    (body,) = configmap["data"].values()
    # No import step resolves ${DS_PROMETHEUS} under provisioning: the copy must use its datasource variable.
    assert "${DS_PROMETHEUS}" not in body
    assert "${datasource}" in body
