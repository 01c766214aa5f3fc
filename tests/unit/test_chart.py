"""The Helm chart in charts/dockvault: rendered by Helm's own Go SDK, linted strictly, every manifest valid for
Kubernetes 1.28 and 1.34, least-privilege RBAC, and the chart's copies of the CRDs, alert rules and dashboard equal
to their sources.

helm-python-sdk binds libhelm_c (Helm v4's Go SDK behind a C ABI): no helm binary and no cluster are involved.
kubernetes-validate carries the upstream OpenAPI schemas per Kubernetes version; `strict` refuses unknown fields.
Both come with the `test` extra.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

IN_HARNESS = os.environ.get("DOCKVAULT_HARNESS") == "1"
try:
    import helm_python as helm
    import kubernetes_validate
except ImportError as exc:  # outside the harness a missing test extra skips; inside it (which installs it) it fails
    if IN_HARNESS:
        raise
    pytest.skip(f"{exc.name} missing: pip install -e '.[test]' (helm-python-sdk, kubernetes-validate)",
                allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts/dockvault"
CRD_DIR = REPO / "crds"
RULES = REPO / "deploy/prometheus/dockvault-rules.yaml"
SYNC_HINT = "run `sh charts/dockvault/sync.sh` (it copies crds/ and deploy/ sources into the chart)"

KUBE_VERSIONS = ["1.28", "1.34"]
RELEASE = "dv"
NAMESPACE = "backup"

# Kinds whose schemas are not part of Kubernetes (they come with the Prometheus Operator's CRDs), so
# kubernetes-validate has none: schema validation is skipped for exactly these, and
# check_third_party_structure() asserts their shape instead.
THIRD_PARTY_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
# kopf's peering CRDs: hand-written in the chart (no single source in crds/, not touched by sync.sh).
KOPF_CRDS = sorted(p.name for p in (CHART / "crds").glob("*.kopf.dev.yaml"))

TLS_VALUES = {"docker": {"mode": "tcp", "tcp": {"host": "tcp://docker.example.internal:2376",
                                                "tls": {"secretName": "docker-client-tls"}}}}
MONITORING_VALUES = {
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Backups"}},
}
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "socket": {"docker": {"mode": "socket", "socket": {"group": 998}}, "host": "node-a",
               "nodeSelector": {"kubernetes.io/hostname": "node-a"}},
    "tcp-tls": TLS_VALUES,
    "remote-hosts": {**TLS_VALUES, "remoteHosts": [
        {"name": "docker-a", "dockerHost": "tcp://docker-a.example.internal:2376", "tlsSecretName": "docker-a-tls"},
        {"name": "docker-b", "dockerHost": "tcp://docker-b.example.internal:2376", "tlsSecretName": "docker-b-tls"}]},
    "monitoring": MONITORING_VALUES,
    "secrets": {"secrets": {"enabled": True, "resourceNames": ["pg-credentials", "webhook-url"]}},
    "peering-off": {"peering": {"enabled": False}},
    "namespaced-pvc": {"rbac": {"clusterWide": False}, "repository": {"existingClaim": "dockvault-repo"},
                       "secrets": {"enabled": True}, "helperImage": "registry.example/dockvault-helper:1"},
    "everything": {**TLS_VALUES, **MONITORING_VALUES, "secrets": {"enabled": True},
                   "serviceAccount": {"name": "vault-sa", "annotations": {"a": "b"}},
                   "image": {"repository": "registry.example/dockvault", "tag": "0.1.0-rc1", "pullPolicy": "Always"},
                   "imagePullSecrets": [{"name": "regcred"}], "extraArgs": ["--max-parallel", "3"],
                   "extraEnv": [{"name": "TZ", "value": "UTC"}], "podAnnotations": {"x": "y"},
                   "tolerations": [{"key": "dedicated", "operator": "Exists"}]},
}


# --- rendering ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: Any, values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object the chart's templates produce for `values` (CRDs from crds/ are not templates)."""
    manifests = chart.render(values=copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> set[str]:
    return {doc["kind"] for doc in docs}


def load_render() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dockvault_deploy_render_chart", REPO / "deploy/render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chart_metadata_follows_the_package():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert meta["apiVersion"] == "v2"
    assert meta["appVersion"] == pyproject["project"]["version"]
    assert meta["version"] == pyproject["project"]["version"]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("case", VALUE_SETS)
def test_helm_lint_strict(case: str, kube_version: str):
    report = helm.lint(CHART, copy.deepcopy(VALUE_SETS[case]), strict=True, namespace=NAMESPACE,
                       kube_version=f"v{kube_version}.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, json.dumps(problems, indent=2)
    assert report["total_charts_linted"] == 1


# --- every rendered manifest against the Kubernetes OpenAPI schemas -------------------------------------------------


def check_third_party_structure(doc: dict[str, Any], docs: list[dict[str, Any]]) -> None:
    """What we can check of a Prometheus Operator object without its CRD schema."""
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}, sorted(doc)
    assert doc["metadata"]["name"] and doc["metadata"]["namespace"] == NAMESPACE
    if doc["kind"] == "ServiceMonitor":
        service = one(docs, "Service")
        selector = doc["spec"]["selector"]["matchLabels"]
        assert selector.items() <= service["metadata"]["labels"].items(), "the ServiceMonitor selects no Service"
        port_names = {port["name"] for port in service["spec"]["ports"]}
        for endpoint in doc["spec"]["endpoints"]:
            assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"
        assert service["metadata"]["labels"][doc["spec"]["jobLabel"]] == "dockvault", \
            'the alert rules expect job="dockvault"'
        assert doc["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    else:
        groups = doc["spec"]["groups"]
        assert isinstance(groups, list) and groups
        for group in groups:
            assert isinstance(group["name"], str) and isinstance(group["rules"], list) and group["rules"]
            for rule in group["rules"]:
                assert ("alert" in rule) != ("record" in rule), rule
                assert isinstance(rule["expr"], str) and rule["expr"].strip()


def chart_crd_of(api_version: str, kind: str) -> dict[str, Any]:
    group, version = api_version.split("/")
    for path in (CHART / "crds").glob("*.yaml"):
        crd = yaml.safe_load(path.read_text(encoding="utf-8"))
        if crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind:
            assert [v["name"] for v in crd["spec"]["versions"] if v["served"]] == [version], path.name
            return crd
    raise AssertionError(f"no CRD in charts/dockvault/crds/ serves {api_version} {kind}")


def check_against_chart_crd(doc: dict[str, Any]) -> None:
    """An object of a CRD the chart ships (kubernetes-validate has no schema for it): its scope, and its CRD's schema."""
    import jsonschema

    crd = chart_crd_of(doc["apiVersion"], doc["kind"])
    namespaced = crd["spec"]["scope"] == "Namespaced"
    assert ("namespace" in doc["metadata"]) == namespaced, doc["metadata"]
    if namespaced:
        assert doc["metadata"]["namespace"] == NAMESPACE
    schema = copy.deepcopy(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    jsonschema.validate({k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}, schema)


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("case", VALUE_SETS)
def test_rendered_manifests_are_valid(chart: Any, case: str, kube_version: str):
    docs = render(chart, VALUE_SETS[case])
    assert {"Deployment", "ServiceAccount", "Service"} <= kinds(docs)
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in THIRD_PARTY_KINDS:
            check_third_party_structure(doc, docs)
            continue
        if doc["apiVersion"].startswith("kopf.dev/"):
            check_against_chart_crd(doc)
            continue
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']} invalid for Kubernetes {kube_version}: "
                        f"{'.'.join(map(str, exc.path))}: {exc.message}")


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("crd", sorted(p.name for p in CRD_DIR.glob("*.yaml")))
def test_crds_are_valid(crd: str, kube_version: str):
    for directory in (CRD_DIR, CHART / "crds"):
        for doc in yaml.safe_load_all((directory / crd).read_text(encoding="utf-8")):
            try:
                kubernetes_validate.validate(doc, kube_version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{directory.name}/{crd} invalid for Kubernetes {kube_version}: "
                            f"{'.'.join(map(str, exc.path))}: {exc.message}")


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("crd", KOPF_CRDS)
def test_kopf_peering_crds_are_valid(crd: str, kube_version: str):
    (doc,) = [d for d in yaml.safe_load_all((CHART / "crds" / crd).read_text(encoding="utf-8")) if d]
    try:
        kubernetes_validate.validate(doc, kube_version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"charts/dockvault/crds/{crd} invalid for Kubernetes {kube_version}: "
                    f"{'.'.join(map(str, exc.path))}: {exc.message}")
    spec = doc["spec"]
    assert doc["metadata"]["name"] == f"{spec['names']['plural']}.kopf.dev" == crd.removesuffix(".yaml")
    assert spec["group"] == "kopf.dev"
    assert [(v["name"], v["served"], v["storage"]) for v in spec["versions"]] == [("v1", True, True)]
    # kopf writes each instance's keep-alive under .status of the main resource (no status subresource)
    assert "subresources" not in spec["versions"][0]
    schema = spec["versions"][0]["schema"]["openAPIV3Schema"]
    assert schema["properties"]["status"] == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def test_kopf_peering_crds_are_the_two_kopf_uses():
    scopes = {}
    for crd in KOPF_CRDS:
        doc = yaml.safe_load((CHART / "crds" / crd).read_text(encoding="utf-8"))
        scopes[doc["spec"]["names"]["kind"]] = doc["spec"]["scope"]
    assert scopes == {"ClusterKopfPeering": "Cluster", "KopfPeering": "Namespaced"}


def test_helm_loads_the_crds(chart: Any):
    assert sorted(c["filename"].rsplit("/", 1)[-1] for c in chart.crds) == \
        sorted([p.name for p in CRD_DIR.glob("*.yaml")] + KOPF_CRDS)


# --- the chart's copies equal their single sources ----------------------------------------------------------------


def test_chart_crds_equal_the_generated_crds():
    source = {p.name: p.read_text(encoding="utf-8") for p in CRD_DIR.glob("*.yaml")}
    copied = {p.name: p.read_text(encoding="utf-8") for p in (CHART / "crds").glob("*.yaml") if p.name not in KOPF_CRDS}
    stale = sorted(name for name in source.keys() | copied.keys() if source.get(name) != copied.get(name))
    assert not stale, f"charts/dockvault/crds/ differs from crds/ ({', '.join(stale)}); {SYNC_HINT}"


def test_chart_rules_equal_the_rules_source():
    copied = CHART / "files/dockvault-rules.yaml"
    assert copied.read_text(encoding="utf-8") == RULES.read_text(encoding="utf-8"), \
        f"charts/dockvault/files/dockvault-rules.yaml differs from deploy/prometheus/dockvault-rules.yaml; {SYNC_HINT}"


def test_chart_dashboard_equals_the_dashboard_source():
    render_module = load_render()
    configmap = render_module.render_dashboard_configmap(render_module.load_dashboard(), name="dockvault-dashboard")
    copied = (CHART / "files/dockvault-dashboard.json").read_text(encoding="utf-8")
    assert copied == configmap["data"]["dockvault.json"], (
        "charts/dockvault/files/dockvault-dashboard.json is not the provisioned form of "
        f"deploy/grafana/dockvault-dashboard.json; {SYNC_HINT}")


def test_sync_script_reports_nothing_stale():
    result = subprocess.run(["sh", str(CHART / "sync.sh"), "--check"], capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable}, timeout=60)
    assert result.returncode == 0, f"{result.stderr}\n{SYNC_HINT}"


def test_prometheus_rule_embeds_the_rules_untouched(chart: Any):
    rule = one(render(chart, MONITORING_VALUES), "PrometheusRule")
    source = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    assert rule["spec"] == source, "the PrometheusRule's groups differ from deploy/prometheus/dockvault-rules.yaml"
    assert rule["spec"] == load_render().render_prometheus_rule(source, name="x")["spec"]
    annotations = json.dumps([r.get("annotations") for g in rule["spec"]["groups"] for r in g["rules"]])
    assert "{{ $labels.policy }}" in annotations, "Helm must not evaluate the alerts' Go templates"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboard_configmap(chart: Any):
    configmap = one(render(chart, MONITORING_VALUES), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Backups"}
    dashboard = json.loads(configmap["data"]["dockvault.json"])
    render_module = load_render()
    assert dashboard == render_module.provisioned_dashboard(render_module.load_dashboard())
    assert "${DS_PROMETHEUS}" not in configmap["data"]["dockvault.json"]


@pytest.mark.parametrize("case", ["defaults", "tcp-tls", "secrets", "peering-off"])
def test_optional_monitoring_objects_are_off_by_default(chart: Any, case: str):
    assert not kinds(render(chart, VALUE_SETS[case])) & {"ServiceMonitor", "PrometheusRule", "ConfigMap"}


# --- RBAC -----------------------------------------------------------------------------------------------------------


def rbac_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    roles = [doc for doc in docs if doc["kind"] in ("ClusterRole", "Role")]
    assert len(roles) == 1, [r["kind"] for r in roles]
    return roles[0]["rules"]


def granted(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs."""
    result: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                result.setdefault((group, resource), set()).update(rule["verbs"])
    return result


READ = {"get", "list", "watch"}
EXPECTED_ALWAYS = {
    ("dockvault.io", "backuppolicies"): READ | {"patch"},
    ("dockvault.io", "restorerequests"): READ | {"patch"},
    ("dockvault.io", "backups"): READ | {"create", "patch", "delete"},
    ("dockvault.io", "backuppolicies/status"): {"get", "patch"},
    ("dockvault.io", "restorerequests/status"): {"get", "patch"},
    ("dockvault.io", "backups/status"): {"get", "patch"},
    ("", "events"): {"create", "patch"},
}
PEERING = {("coordination.k8s.io", "leases"): READ | {"create", "update", "patch"}}
CRD_SCAN = {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}  # cluster-scoped: ClusterRole only


@pytest.mark.parametrize("case", VALUE_SETS)
def test_rbac_is_least_privilege(chart: Any, case: str):
    values = VALUE_SETS[case]
    docs = render(chart, values)
    rules = rbac_rules(docs)
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert not any("*" in item for item in rule.get(field, [])), f"wildcard in {field}: {rule}"
        assert not rule.get("nonResourceURLs"), rule
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule

    cluster_wide = values.get("rbac", {}).get("clusterWide", True)
    peering = values.get("peering", {}).get("enabled", True)
    secrets = values.get("secrets", {}).get("enabled", False)
    expected = dict(EXPECTED_ALWAYS)
    if peering:
        expected.update(PEERING)
        expected[("kopf.dev", "clusterkopfpeerings" if cluster_wide else "kopfpeerings")] = READ | {"patch"}
    if cluster_wide:
        expected.update(CRD_SCAN)
    if secrets:
        expected[("", "secrets")] = {"get"}
    assert granted(rules) == expected

    secret_rules = [r for r in rules if "secrets" in r["resources"]]
    names = values.get("secrets", {}).get("resourceNames", [])
    if secrets and names:
        assert secret_rules[0]["resourceNames"] == names
    assert bool(secret_rules) == secrets

    role_kind = "ClusterRole" if cluster_wide else "Role"
    binding = one(docs, f"{role_kind}Binding")
    account = one(docs, "ServiceAccount")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind,
                                  "name": one(docs, role_kind)["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": NAMESPACE}]
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
    if not cluster_wide:
        assert one(docs, "Role")["metadata"]["namespace"] == NAMESPACE


# --- the operator Deployment ----------------------------------------------------------------------------------------


def pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_deployment_defaults(chart: Any):
    docs = render(chart, {})
    spec = pod(docs)
    (container,) = spec["containers"]
    assert container["image"] == "dockvault:0.1.0"
    assert container["args"] == ["kube", "--host", "local", "--metrics-addr", "0.0.0.0:9477",
                                 "--helper-image", "dockvault:0.1.0"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["ports"] == [{"name": "metrics", "containerPort": 9477, "protocol": "TCP"}]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]

    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["securityContext"]["supplementalGroups"] == [999]
    assert spec["securityContext"]["fsGroup"] == 10001

    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert mounts["repository"] == "/var/backups/dockvault"
    assert volumes["repository"]["hostPath"]["path"] == "/var/backups/dockvault"
    assert "emptyDir" in volumes["state"] and "emptyDir" in volumes["tmp"]
    assert env(container)["DOCKVAULT_STATE_DIR"] == mounts["state"]
    # The helper bind-mounts the pipe directory by its node path: node path == pod path.
    assert volumes["pipes"]["hostPath"]["path"] == mounts["pipes"] == env(container)["TMPDIR"]

    service = one(docs, "Service")
    assert service["spec"]["ports"][0]["port"] == 9477 and service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["selector"].items() <= one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"].items()


def test_docker_socket_mode(chart: Any):
    spec = pod(render(chart, VALUE_SETS["socket"]))
    (container,) = spec["containers"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["docker-socket"]["hostPath"] == {"path": "/var/run/docker.sock", "type": "Socket"}
    assert {"name": "docker-socket", "mountPath": "/var/run/docker.sock"} in container["volumeMounts"]
    assert env(container)["DOCKER_HOST"] == "unix:///var/run/docker.sock"
    assert "DOCKER_TLS_VERIFY" not in env(container) and "docker-tls" not in volumes
    assert spec["securityContext"]["supplementalGroups"] == [998]
    assert container["args"][:3] == ["kube", "--host", "node-a"]
    assert spec["nodeSelector"] == {"kubernetes.io/hostname": "node-a"}


def test_docker_tcp_tls_mode(chart: Any):
    spec = pod(render(chart, TLS_VALUES))
    (container,) = spec["containers"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    variables = env(container)
    assert variables["DOCKER_HOST"] == "tcp://docker.example.internal:2376"
    assert variables["DOCKER_TLS_VERIFY"] == "1"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "docker-tls")
    assert mount["readOnly"] is True and variables["DOCKER_CERT_PATH"] == mount["mountPath"]
    assert volumes["docker-tls"]["secret"]["secretName"] == "docker-client-tls"
    assert "docker-socket" not in volumes and "pipes" not in volumes
    assert "supplementalGroups" not in spec["securityContext"]
    assert variables["TMPDIR"] == "/tmp"


def test_offsite_keys_and_the_age_identity_come_from_secrets(chart: Any):
    spec = pod(render(chart, {"s3": {"credentialsSecret": "s3-keys"},
                              "age": {"identitySecret": "age-key", "mountPath": "/etc/dockvault/age"}}))
    (container,) = spec["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "s3-keys"}}]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "age-identity")
    assert mount == {"name": "age-identity", "mountPath": "/etc/dockvault/age", "readOnly": True}
    volume = next(v for v in spec["volumes"] if v["name"] == "age-identity")
    assert volume["secret"] == {"secretName": "age-key", "defaultMode": 0o440}
    plain = pod(render(chart, {}))
    assert "envFrom" not in plain["containers"][0]
    assert "age-identity" not in {v["name"] for v in plain["volumes"]}


def test_one_operator_per_remote_host(chart: Any):
    docs = render(chart, VALUE_SETS["remote-hosts"])
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert len(deployments) == 2
    seen = {}
    for deployment in deployments.values():
        spec = deployment["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        host = container["args"][container["args"].index("--host") + 1]
        tls = next(v for v in spec["volumes"] if v["name"] == "docker-tls")["secret"]["secretName"]
        seen[host] = (env(container)["DOCKER_HOST"], tls)
        assert deployment["spec"]["selector"]["matchLabels"]["dockvault.io/host"] == host
        assert deployment["spec"]["template"]["metadata"]["labels"]["dockvault.io/host"] == host
    assert seen == {"docker-a": ("tcp://docker-a.example.internal:2376", "docker-a-tls"),
                    "docker-b": ("tcp://docker-b.example.internal:2376", "docker-b-tls")}
    peerings = sorted(d["metadata"]["name"] for d in docs if d["kind"] in ("KopfPeering", "ClusterKopfPeering"))
    assert peerings == ["dockvault-docker-a", "dockvault-docker-b"]
    single = render(chart, TLS_VALUES)
    (deployment,) = [d for d in single if d["kind"] == "Deployment"]
    assert "dockvault.io/host" not in deployment["spec"]["selector"]["matchLabels"]  # upgrades keep the selector


def test_remote_hosts_need_tcp_mode(chart: Any):
    with pytest.raises(Exception, match="remoteHosts needs docker.mode: tcp"):
        render(chart, {"remoteHosts": VALUE_SETS["remote-hosts"]["remoteHosts"]})


def test_existing_claim_and_helper_image(chart: Any):
    spec = pod(render(chart, VALUE_SETS["namespaced-pvc"]))
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["repository"] == {"name": "repository", "persistentVolumeClaim": {"claimName": "dockvault-repo"}}
    args = spec["containers"][0]["args"]
    assert args[args.index("--helper-image") + 1] == "registry.example/dockvault-helper:1"


def test_scope_and_peering_args(chart: Any):
    """The operator watches what its RBAC allows: the release namespace with a Role; no peering when it has none."""
    namespaced = pod(render(chart, VALUE_SETS["namespaced-pvc"]))["containers"][0]["args"]
    assert namespaced[namespaced.index("--namespace") + 1] == NAMESPACE and "--no-peering" not in namespaced
    no_peering = pod(render(chart, VALUE_SETS["peering-off"]))["containers"][0]["args"]
    assert "--no-peering" in no_peering and "--namespace" not in no_peering


@pytest.mark.parametrize("host", ["local", "node-a", "Docker_Host.2", "a" * 100, "--x--", "Ünï.host"])
@pytest.mark.parametrize("cluster_wide", [True, False])
def test_peering_object_is_named_as_the_operator_names_it(chart: Any, host: str, cluster_wide: bool):
    from dockvault.frontends.kube import peering_name

    docs = render(chart, {"host": host, "rbac": {"clusterWide": cluster_wide}})
    peering = [doc for doc in docs if doc["apiVersion"] == "kopf.dev/v1"]
    assert len(peering) == 1, peering
    (obj,) = peering
    assert obj["metadata"]["name"] == peering_name(host)
    if cluster_wide:
        assert obj["kind"] == "ClusterKopfPeering" and "namespace" not in obj["metadata"]
    else:
        assert obj["kind"] == "KopfPeering" and obj["metadata"]["namespace"] == NAMESPACE
        args = pod(docs)["containers"][0]["args"]
        assert args[args.index("--namespace") + 1] == NAMESPACE  # the namespace kopf looks for its KopfPeering in
    # the RBAC grants the peering kind the object is
    kind_plural = {"ClusterKopfPeering": "clusterkopfpeerings", "KopfPeering": "kopfpeerings"}[obj["kind"]]
    assert ("kopf.dev", kind_plural) in granted(rbac_rules(docs))


def test_no_peering_object_without_peering(chart: Any):
    docs = render(chart, VALUE_SETS["peering-off"])
    assert not [doc for doc in docs if doc["apiVersion"].startswith("kopf.dev/")]


def test_everything_overrides(chart: Any):
    docs = render(chart, VALUE_SETS["everything"])
    (container,) = pod(docs)["containers"]
    assert container["image"] == "registry.example/dockvault:0.1.0-rc1"
    assert container["args"][-2:] == ["--max-parallel", "3"]
    assert container["args"][container["args"].index("--helper-image") + 1] == container["image"]
    assert env(container)["TZ"] == "UTC"
    assert one(docs, "ServiceAccount")["metadata"]["name"] == "vault-sa"


# --- values.schema.json ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [
    {"docker": {"mode": "ssh"}},
    {"docker": {"mode": "tcp"}},                                                         # no host, no TLS secret
    {"docker": {"mode": "tcp", "tcp": {"host": "tcp://h:2376", "tls": {"secretName": ""}}}},
    {"docker": {"mode": "tcp", "tcp": {"host": "http://h", "tls": {"secretName": "s"}}}},
    {"imagee": {"tag": "x"}},                                                            # typo: unknown key
    {"image": {"pullPolicy": "Sometimes"}},
    {"metrics": {"port": 0}},
    {"repository": {"hostPath": "", "existingClaim": ""}},                               # nowhere to keep backups
    {"repository": {"mountPath": "relative/path"}},
    {"secrets": {"enabled": "yes"}},
    {"host": ""},
], ids=lambda v: json.dumps(v, separators=(",", ":")))
def test_schema_refuses_bad_values(chart: Any, values: dict[str, Any]):
    with pytest.raises(helm.HelmValuesError):
        chart.render(values=values, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize("case", VALUE_SETS)
def test_schema_accepts_the_value_sets(chart: Any, case: str):
    chart.validate_schema(chart.merge_values(copy.deepcopy(VALUE_SETS[case])))
