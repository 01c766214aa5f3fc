"""The checked-in CRDs are current, structural, and accept and refuse the same resources as the pydantic models."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ValidationError

from dockvault.api import API_VERSION, Backup, BackupPolicy, ObjectMeta, RestoreRequest
from dockvault.api.common import Schema
from dockvault.api.crd import NotStructural, crd_for, openapi_schema, render_crds
from dockvault.api.loader import KINDS

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"
PRESERVE = "x-kubernetes-preserve-unknown-fields"


# --- (a) the checked-in files are what the models generate -------------------------------------------------------


def test_checked_in_crds_are_current():
    expected = render_crds()
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in CRD_DIR.glob("*.dockvault.io.yaml")}
    stale = sorted(name for name in expected.keys() | on_disk.keys() if expected.get(name) != on_disk.get(name))
    assert not stale, f"crds/ is out of date with operator/dockvault/api ({', '.join(stale)}); run `dockvault crds`"


# --- (b) every schema node is structural ---------------------------------------------------------------------------


def structural_problems(node: Any, path: str) -> list[str]:
    """What the API server would refuse in a CRD schema node and its children (apiextensions v1 structural rules)."""
    if not isinstance(node, dict):
        return [f"{path}: not a schema object"]
    problems = [f"{path}: {key} is not allowed" for key in ("$ref", "$defs", "definitions") if key in node]
    type_ = node.get("type")
    if type_ is None and not node.get(PRESERVE):
        problems.append(f"{path}: no type and no {PRESERVE}")
    if type_ is not None and type_ not in ("object", "array", "string", "integer", "number", "boolean"):
        problems.append(f"{path}: type {type_!r} is not a single OpenAPI type")
    for combinator in ("anyOf", "oneOf", "allOf", "not"):
        branches = node.get(combinator, [])
        for i, branch in enumerate(branches if isinstance(branches, list) else [branches]):
            banned = {"type", "description", "default", "nullable", "additionalProperties"} & set(branch)
            if banned:
                problems.append(f"{path}.{combinator}[{i}]: sets {', '.join(sorted(banned))}")
    if "additionalProperties" in node:
        if isinstance(node["additionalProperties"], bool):
            problems.append(f"{path}: additionalProperties: {node['additionalProperties']} is not allowed")
        elif "properties" in node:
            problems.append(f"{path}: properties and additionalProperties together")
        else:
            problems += structural_problems(node["additionalProperties"], f"{path}.*")
    if "properties" in node:
        if type_ != "object":
            problems.append(f"{path}: properties under type {type_!r}")
        for name, child in node["properties"].items():
            problems += structural_problems(child, f"{path}.{name}")
    if ("items" in node) != (type_ == "array"):
        problems.append(f"{path}: items and type array must come together")
    if "items" in node:
        problems += structural_problems(node["items"], f"{path}[]")
    for name in node.get("required", []):
        if "properties" in node and name not in node["properties"]:
            problems.append(f"{path}: required {name!r} is not a property")
    if "default" in node and node["default"] is None:
        problems.append(f"{path}: default null")
    return problems


CRDS = {kind: crd_for(kind) for kind in (BackupPolicy, RestoreRequest, Backup)}


def schema_of(kind: type[BaseModel]) -> dict[str, Any]:
    return CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("kind", list(CRDS), ids=lambda k: k.__name__)
def test_schema_is_structural(kind):
    schema = schema_of(kind)
    assert structural_problems(schema, kind.__name__) == []
    assert schema["properties"]["metadata"] == {"type": "object"}, "the API server owns metadata's schema"
    assert schema["properties"]["status"][PRESERVE] is True, "kopf keeps its progress under status"
    assert "spec" in schema["required"]
    Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("kind", list(CRDS), ids=lambda k: k.__name__)
def test_printer_columns_point_at_schema_fields(kind):
    for column in CRDS[kind]["spec"]["versions"][0]["additionalPrinterColumns"]:
        parts = re.sub(r"\[[^]]*\]", "[]", column["jsonPath"]).lstrip(".").split(".")
        if parts[0] == "metadata":
            continue
        node = schema_of(kind)
        for part in parts:
            field = part.split("[")[0]
            node = node["properties"][field]
            if "[" in part:
                node = node["items"]
        assert node["type"] == {"date": "string"}.get(column["type"], column["type"]), column


def test_names():
    names = {kind.__name__: CRDS[kind]["spec"]["names"] for kind in CRDS}
    assert {k: (n["plural"], n["shortNames"]) for k, n in names.items()} == {
        "BackupPolicy": ("backuppolicies", ["bp"]),
        "RestoreRequest": ("restorerequests", ["rr"]),
        "Backup": ("backups", ["bk"]),
    }
    assert sorted(render_crds()) == sorted(f"{n['plural']}.dockvault.io.yaml" for n in names.values())


class _Inner(Schema):
    before: str


def _resource(name: str, spec_fields: dict[str, Any]) -> type[BaseModel]:
    spec = type(f"{name}Spec", (Schema,), {"__annotations__": spec_fields})
    return type(name, (Schema,), {"__annotations__": {"metadata": ObjectMeta, "spec": spec}})


class _Node(Schema):
    children: list[_Node] = []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"selector": str | _Inner}, "Odd.spec.selector: a union of 2 types"),
        ({"payload": Any}, "Odd.spec.payload: type 'Any' is not structural"),
        ({"count": int | str}, "Odd.spec.count: a union of 2 types"),
        ({"tree": _Node}, "Odd.spec.tree.children[]: _Node contains itself"),
    ],
)
def test_unstructural_models_fail_loudly(fields, message):
    with pytest.raises(NotStructural, match=message.replace("[", r"\[").replace("]", r"\]")):
        openapi_schema(_resource("Odd", fields))


def test_crd_for_refuses_other_types():
    with pytest.raises(ValueError, match="not a dockvault resource"):
        crd_for(ObjectMeta)


# --- (c) the CRD accepts and refuses what the models do -------------------------------------------------------------

SAMPLES = """
apiVersion: dockvault.io/v1alpha1
kind: BackupPolicy
metadata: {name: myapp, namespace: default, uid: 0d6c, creationTimestamp: 2026-11-20T10:00:00Z}
spec:
  host: local
  schedule: "0 3 * * *"
  timezone: Asia/Tokyo
  objectives: {rpo: 24h, rto: 30m}
  targets:
    - name: media
      volume: {name: mydata, quiesce: stop}
    - name: uploads
      volume: {name: myapp_uploads.v2}
  storage: {local: {path: /var/backups/dockvault}}
  compression: {algorithm: zstd, level: 3}
  retention: {keepLast: 3, keepDaily: 7, keepWeekly: 4, keepMonthly: 6, keepWithin: 2d}
  suspend: false
status:
  observedGeneration: 3
  conditions:
    - {type: Ready, status: "True", reason: BackupSucceeded, message: ok, lastTransitionTime: "2026-11-21T03:00:05Z"}
  lastBackup: {id: 20261121T030000Z, phase: Succeeded, startedAt: "2026-11-21T03:00:00Z", bytes: 1048576}
  lastSuccessfulBackup: {id: 20261121T030000Z, phase: Succeeded, completedAt: "2026-11-21T03:00:05Z"}
  nextBackupAt: "2026-11-22T03:00:00+09:00"
  backups: 4
---
apiVersion: dockvault.io/v1alpha1
kind: BackupPolicy
metadata: {name: minimal}
spec:
  targets: [{name: data, volume: {name: data}}]
  storage: {local: {path: /backups}}
---
apiVersion: dockvault.io/v1alpha1
kind: RestoreRequest
metadata: {name: restore-myapp-1}
spec:
  policy: myapp
  backup: latest
  targets:
    - from: media
      volume: {name: mydata-restored, overwrite: false}
status:
  phase: Succeeded
  backup: 20261121T030000Z
  startedAt: "2026-11-21T04:00:00Z"
  completedAt: "2026-11-21T04:02:00Z"
  durationSeconds: 120.5
  conditions: []
---
apiVersion: dockvault.io/v1alpha1
kind: RestoreRequest
metadata: {name: restore-before}
spec:
  policy: myapp
  backup: {before: "2026-11-20T00:00:00Z"}
  targets: [{from: media, volume: {name: mydata}}]
---
apiVersion: dockvault.io/v1alpha1
kind: RestoreRequest
metadata: {name: restore-by-id}
spec:
  policy: myapp
  backup: 20261121T030000Z-2
  targets: [{from: media, volume: {name: mydata}}]
---
apiVersion: dockvault.io/v1alpha1
kind: Backup
metadata: {name: myapp-20261121t030000z}
spec: {policy: myapp, id: 20261121T030000Z, host: local, trigger: manual}
status:
  phase: Succeeded
  startedAt: "2026-11-21T03:00:00Z"
  completedAt: "2026-11-21T03:00:05Z"
  durationSeconds: 5.2
  bytes: 1048576
  artifacts:
    - target: media
      source: volume
      file: media.tar.zst
      bytes: 1048576
      rawBytes: 4194304
      sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
      compression: zstd
      level: 3
      startedAt: "2026-11-21T03:00:00Z"
      completedAt: "2026-11-21T03:00:05Z"
      details: {volume: mydata, image: "dockvault:0.1.0"}
  dockvaultVersion: 0.1.0
"""


def as_json(doc: Any) -> Any:
    """What kubectl sends: YAML timestamps stay strings, as in JSON."""
    return json.loads(json.dumps(doc, default=lambda value: value.isoformat()))


def load_docs(text: str) -> list[dict[str, Any]]:
    return [as_json(doc) for doc in yaml.safe_load_all(text) if isinstance(doc, dict)]


def example_docs() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(p for p in (ROOT / "examples").rglob("*") if p.suffix in (".yaml", ".yml")):
        for i, doc in enumerate(load_docs(path.read_text(encoding="utf-8"))):
            if doc.get("apiVersion") == API_VERSION:
                found.append((f"{path.relative_to(ROOT)}#{i}", doc))
    return found


SAMPLE_DOCS = load_docs(SAMPLES)
VALID = [(f"sample-{d['kind']}-{d['metadata']['name']}", d) for d in SAMPLE_DOCS] + example_docs()


def strict(node: Any) -> Any:
    """The schema as the API server applies it with strict field validation (kubectl's default): unknown fields fail."""
    if not isinstance(node, dict):
        return node
    out = {key: (strict(value) if key in ("items", "additionalProperties") else value) for key, value in node.items()}
    if "properties" in node:
        out["properties"] = {name: strict(child) for name, child in node["properties"].items()}
        if not node.get(PRESERVE):
            out["additionalProperties"] = False
    return out


def crd_errors(doc: dict[str, Any]) -> list[str]:
    schema = strict(schema_of(KINDS[doc["kind"]]))
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def model_accepts(doc: dict[str, Any]) -> bool:
    try:
        KINDS[doc["kind"]].model_validate(doc)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize("doc", [d for _, d in VALID], ids=[name for name, _ in VALID])
def test_valid_resources_pass_crd_and_model(doc):
    assert crd_errors(doc) == []
    assert model_accepts(doc)


DELETE = object()


def changed(kind: str, path: str, value: Any) -> dict[str, Any]:
    """The first sample of `kind` with the dotted `path` (list indexes as numbers) set to `value` or deleted."""
    doc = copy.deepcopy(next(d for d in SAMPLE_DOCS if d["kind"] == kind))
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = doc
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return doc


INVALID = [
    ("BackupPolicy", "spec.retention.keepDaily", -1),
    ("BackupPolicy", "spec.retention.keepDialy", 7),
    ("BackupPolicy", "spec.targets.0.volume.name", "my data"),
    ("BackupPolicy", "spec.targets.0.volume.name", "-mydata"),
    ("BackupPolicy", "spec.targets.0.volume.quiesce", "freeze"),
    ("BackupPolicy", "spec.targets.0.name", "Media"),
    ("BackupPolicy", "spec.targets", []),
    ("BackupPolicy", "spec.storage", DELETE),
    ("BackupPolicy", "spec.storage.local.path", ""),
    ("BackupPolicy", "spec.compression.algorithm", "lz4"),
    ("BackupPolicy", "spec.objectives.rpo", "1 day"),
    ("BackupPolicy", "spec", DELETE),
    ("RestoreRequest", "spec.targets.0.from", "Media"),
    ("RestoreRequest", "spec.targets.0.volume.overwrite", "maybe"),
    ("RestoreRequest", "spec.policy", DELETE),
    ("Backup", "spec.id", "yesterday"),
    ("Backup", "spec.trigger", "cron"),
    ("Backup", "status.phase", "Done"),
    ("Backup", "status.artifacts.0.sha256", "abc"),
    ("Backup", "status.artifacts.0.source", "mongodb"),
    ("Backup", "status.artifacts.0.bytes", -5),
]


@pytest.mark.parametrize(("kind", "path", "value"), INVALID, ids=[f"{k}-{p}={v!r}"[:60] for k, p, v in INVALID])
def test_invalid_resources_fail_crd_and_model(kind, path, value):
    doc = changed(kind, path, value)
    assert crd_errors(doc), "the CRD accepts what the model refuses"
    assert not model_accepts(doc), "the model accepts what the CRD refuses"


# Checks only the model makes (cross-field rules and custom parsers); the API server lets them through.
MODEL_ONLY = [
    ("BackupPolicy", "spec.schedule", "every day"),
    ("BackupPolicy", "spec.timezone", "Mars/Olympus"),
    ("BackupPolicy", "spec.compression.level", 99),
    ("BackupPolicy", "spec.targets.1.name", "media"),
    ("BackupPolicy", "spec.targets.0.volume", DELETE),
    ("RestoreRequest", "spec.backup", "yesterday"),
    ("RestoreRequest", "spec.targets.0.volume", DELETE),
]


@pytest.mark.parametrize(("kind", "path", "value"), MODEL_ONLY, ids=[f"{k}-{p}={v!r}"[:60] for k, p, v in MODEL_ONLY])
def test_known_gaps_are_caught_by_the_model(kind, path, value):
    doc = changed(kind, path, value)
    assert crd_errors(doc) == [], "the CRD now checks this too; move the case to INVALID"
    assert not model_accepts(doc)
