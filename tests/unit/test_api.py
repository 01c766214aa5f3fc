"""Resource schemas and the YAML loader: what is accepted, what is refused, and the exact line a user reads for each."""

from __future__ import annotations

import copy
import hashlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from dockvault.api import (
    BackupBefore,
    BackupPolicy,
    RestoreRequest,
    format_duration,
    load_paths,
    load_text,
    parse_duration,
)
from dockvault.api.loader import ResourceError
from dockvault.cli import app
from tests.unit.builders import POLICY_DOC, RESTORE_DOC, policy_doc, restore_doc, utc

FILE = "app.yaml"
VOLUME_PATTERN = "[a-zA-Z0-9][a-zA-Z0-9_.-]+"
DNS_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_SUBDOMAIN = rf"{DNS_LABEL}(\.{DNS_LABEL})*"
SELECTOR_HELP = "use 'latest', a backup id such as 20261121T030000Z, or {before: 2026-11-20T00:00:00Z}"


def load(*docs: Any, file: str = FILE):
    return load_text(yaml.safe_dump_all(docs, sort_keys=False), file=file)


def errors(*docs: Any) -> list[str]:
    result = load(*docs)
    assert result.items == [], "a document with an error must not load"
    return [str(e) for e in result.errors]


def policy_error(path: str, message: str, name: str = "myapp") -> str:
    return f"{FILE}: BackupPolicy {name}: {path}: {message}"


def restore_error(path: str, message: str) -> str:
    return f"{FILE}: RestoreRequest restore-myapp-1: {path}: {message}"


def with_target(**target: Any) -> dict[str, Any]:
    return policy_doc(targets=[target])


# --- valid resources -----------------------------------------------------------------------------------------------


DESIGN_YAML = """\
apiVersion: dockvault.io/v1alpha1
kind: BackupPolicy
metadata: {name: myapp}
spec:
  host: local
  schedule: "0 3 * * *"
  timezone: Asia/Tokyo
  objectives: {rpo: 24h, rto: 30m}
  targets:
    - name: media
      volume: {name: mydata, quiesce: stop}
  storage: {local: {path: /var/backups/dockvault}}
  compression: {algorithm: zstd, level: 3}
  retention: {keepLast: 3, keepDaily: 7, keepWeekly: 4, keepMonthly: 6}
  suspend: false
---
apiVersion: dockvault.io/v1alpha1
kind: RestoreRequest
metadata: {name: restore-myapp-1}
spec:
  policy: myapp
  backup: {before: "2026-11-20T00:00:00Z"}
  targets:
    - from: media
      volume: {name: mydata-restored, overwrite: false}
"""


def test_design_yaml_loads_both_documents_with_their_values():
    result = load_text(DESIGN_YAML, file="design.yaml")

    assert result.errors == []
    assert [(item.file, item.resource.kind, item.resource.name) for item in result.items] == [
        ("design.yaml", "BackupPolicy", "myapp"),
        ("design.yaml", "RestoreRequest", "restore-myapp-1"),
    ]
    policy, restore = (item.resource for item in result.items)
    assert policy.spec.schedule == "0 3 * * *"
    assert policy.spec.timezone == "Asia/Tokyo"
    assert policy.spec.objectives.rpo == timedelta(hours=24)
    assert policy.spec.objectives.rto == timedelta(minutes=30)
    assert policy.spec.target("media").volume.name == "mydata"
    assert policy.spec.target("media").volume.quiesce == "stop"
    assert policy.spec.target("db") is None
    assert policy.spec.storage.local.path == "/var/backups/dockvault"
    assert (policy.spec.compression.algorithm, policy.spec.compression.effective_level) == ("zstd", 3)
    assert policy.spec.retention.keep_daily == 7
    assert policy.spec.retention.keep_yearly is None
    assert restore.spec.backup == BackupBefore(before=utc(2026, 11, 20))
    assert restore.spec.targets[0].from_ == "media"
    assert restore.spec.targets[0].volume.overwrite is False


def test_policy_to_dict_is_camel_case_with_defaults_filled_in():
    policy = BackupPolicy.model_validate(POLICY_DOC)

    expected = copy.deepcopy(POLICY_DOC)
    expected["metadata"].update(labels={}, annotations={})
    expected["spec"]["objectives"] = {"rpo": "1d", "rto": "30m"}  # durations are written in their largest units
    expected["spec"]["copies"] = []
    expected["spec"]["targets"][1]["volume"]["quiesce"] = "none"
    assert policy.to_dict() == expected
    assert BackupPolicy.model_validate(policy.to_dict()) == policy


def test_restore_request_to_dict_writes_from_not_from_():
    request = RestoreRequest.model_validate(restore_doc(backup={"before": "2026-11-20T09:00:00+09:00"}))

    assert request.to_dict()["spec"] == {
        "policy": "myapp",
        "backup": {"before": "2026-11-20T09:00:00+09:00"},
        "targets": [{"from": "media", "volume": {"name": "mydata-restored", "overwrite": False}}],
    }
    assert RestoreRequest.model_validate(request.to_dict()) == request


def test_spec_host_changes_the_spec_hash_only_when_given():
    """The hash of a request written before spec.host existed is unchanged (else an upgrade would run every
    recorded RestoreRequest again); naming a host is a new intent."""
    plain = RestoreRequest.model_validate(RESTORE_DOC)
    assert plain.spec.host is None and "host" not in plain.to_dict()["spec"]
    assert plain.spec_hash != RestoreRequest.model_validate(restore_doc(host="host-b")).spec_hash


def test_defaults_of_a_minimal_policy():
    minimal = {"apiVersion": "dockvault.io/v1alpha1", "kind": "BackupPolicy", "metadata": {"name": "p"},
               "spec": {"targets": [{"name": "t", "volume": {"name": "vol"}}], "storage": {"local": {"path": "/b"}}}}
    spec = BackupPolicy.model_validate(minimal).spec

    assert (spec.host, spec.schedule, spec.timezone, spec.suspend) == ("local", None, "UTC", False)
    assert (spec.compression.algorithm, spec.compression.effective_level) == ("zstd", 3)
    assert spec.retention.is_empty
    assert spec.objectives.rpo is None


@pytest.mark.parametrize("algorithm, level, effective", [
    ("zstd", None, 3), ("zstd", 1, 1), ("zstd", 22, 22), ("gzip", None, 6), ("gzip", 9, 9), ("none", None, None),
])
def test_compression_levels_accepted(algorithm, level, effective):
    compression = {"algorithm": algorithm} if level is None else {"algorithm": algorithm, "level": level}
    policy = BackupPolicy.model_validate(policy_doc(compression=compression))
    assert policy.spec.compression.effective_level == effective


# --- durations -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, seconds, written", [
    ("24h", 86400, "1d"),
    ("30m", 1800, "30m"),
    ("1h30m", 5400, "1h30m"),
    ("90m", 5400, "1h30m"),
    ("7d", 604800, "1w"),
    ("2w", 1209600, "2w"),
    ("1w2d3h4m5s", 788645, "1w2d3h4m5s"),
    (" 45s ", 45, "45s"),
])
def test_good_durations(text, seconds, written):
    assert parse_duration(text) == timedelta(seconds=seconds)
    policy = BackupPolicy.model_validate(policy_doc(objectives={"rpo": text}))
    assert policy.spec.objectives.rpo == timedelta(seconds=seconds)
    assert policy.to_dict()["spec"]["objectives"] == {"rpo": written}
    assert format_duration(timedelta(seconds=seconds)) == written


@pytest.mark.parametrize("text, message", [
    ("24x", "'24x' is not a duration; use e.g. '24h', '30m', '7d' or '1h30m'"),
    ("", "'' is not a duration; use e.g. '24h', '30m', '7d' or '1h30m'"),
    ("h", "'h' is not a duration; use e.g. '24h', '30m', '7d' or '1h30m'"),
    ("30m1h", "'30m1h' is not a duration; use e.g. '24h', '30m', '7d' or '1h30m'"),
    ("1 day", "'1 day' is not a duration; use e.g. '24h', '30m', '7d' or '1h30m'"),
    ("0s", "duration '0s' must be greater than zero"),
    ("0h0m", "duration '0h0m' must be greater than zero"),
    (24, "duration must be a string such as '24h', '30m' or '7d'"),
])
def test_bad_durations(text, message):
    assert errors(policy_doc(objectives={"rpo": text})) == [policy_error("spec.objectives.rpo", message)]
    with pytest.raises(ValueError) as raised:
        parse_duration(text)
    assert str(raised.value) == message


def test_bad_duration_in_retention_names_keep_within():
    doc = policy_doc(retention={"keepWithin": "3 days"})
    assert errors(doc) == [
        policy_error("spec.retention.keepWithin", "'3 days' is not a duration; use e.g. '24h', '30m', '7d' or '1h30m'")
    ]


# --- policy fields -----------------------------------------------------------------------------------------------------


def test_negative_keep_daily():
    assert errors(policy_doc(retention={"keepDaily": -1})) == [
        "app.yaml: BackupPolicy myapp: spec.retention.keepDaily: Input should be greater than or equal to 0"
    ]


def test_keep_daily_zero_is_allowed():
    assert BackupPolicy.model_validate(policy_doc(retention={"keepDaily": 0})).spec.retention.keep_daily == 0


def test_unknown_field_names_its_full_path():
    doc = policy_doc()
    doc["spec"]["targets"][0]["extra"] = 1
    assert errors(doc) == [policy_error("spec.targets[0].extra", "Extra inputs are not permitted")]


def test_misspelt_field_is_unknown():
    assert errors(policy_doc(retention={"keepDialy": 7})) == [
        policy_error("spec.retention.keepDialy", "Extra inputs are not permitted")
    ]


def test_every_problem_of_a_document_is_reported():
    doc = policy_doc(retention={"keepDaily": -1, "keepLast": -2}, timezone="Mars/Olympus")
    assert errors(doc) == [
        policy_error("spec.timezone", "'Mars/Olympus' is not a known IANA time zone (e.g. UTC, Asia/Tokyo)"),
        policy_error("spec.retention.keepLast", "Input should be greater than or equal to 0"),
        policy_error("spec.retention.keepDaily", "Input should be greater than or equal to 0"),
    ]


@pytest.mark.parametrize("schedule, message", [
    ("0 3 * *", "'0 3 * *' is not a valid cron expression (5 fields: minute hour day month weekday)"),
    ("61 * * * *", "'61 * * * *' is not a valid cron expression (5 fields: minute hour day month weekday)"),
    ("@reboot", "'@reboot' is not a valid cron expression (5 fields: minute hour day month weekday)"),
    ("every night", "'every night' is not a valid cron expression (5 fields: minute hour day month weekday)"),
    # croniter accepts these, the 5-field rule refuses them: seconds and year fields, and the @ shorthands.
    ("0 3 * * * 0", "'0 3 * * * 0' must have 5 fields: minute hour day-of-month month day-of-week"),
    ("@daily", "'@daily' must have 5 fields: minute hour day-of-month month day-of-week"),
])
def test_bad_cron(schedule, message):
    assert errors(policy_doc(schedule=schedule)) == [policy_error("spec.schedule", message)]


@pytest.mark.parametrize("schedule", ["0 3 * * *", "*/15 * * * *", "0 3 * * 0", "30 2 1 * *", "0 0 1 1 *", "0 3 * * mon-fri"])
def test_good_cron(schedule):
    assert BackupPolicy.model_validate(policy_doc(schedule=schedule)).spec.schedule == schedule


@pytest.mark.parametrize("zone", ["Mars/Olympus", "", "../../etc/passwd", "utc+9", "Asia"])  # Asia: a folder of zones
def test_bad_timezone(zone):
    assert errors(policy_doc(timezone=zone)) == [
        policy_error("spec.timezone", f"{zone!r} is not a known IANA time zone (e.g. UTC, Asia/Tokyo)")
    ]


@pytest.mark.parametrize("zone", ["UTC", "Asia/Tokyo", "America/New_York", "Europe/Berlin"])
def test_good_timezone(zone):
    assert BackupPolicy.model_validate(policy_doc(timezone=zone)).spec.timezone == zone


@pytest.mark.parametrize("name, message", [
    ("-x", f"'-x' is not a valid Docker volume name (must match {VOLUME_PATTERN})"),
    ("a", f"'a' is not a valid Docker volume name (must match {VOLUME_PATTERN})"),
    ("a/b", f"'a/b' is not a valid Docker volume name (must match {VOLUME_PATTERN})"),
    ("my data", f"'my data' is not a valid Docker volume name (must match {VOLUME_PATTERN})"),
    ("x" * 300, "Docker volume name must be at most 255 characters"),
])
def test_bad_volume_names(name, message):
    doc = with_target(name="media", volume={"name": name})
    assert errors(doc) == [policy_error("spec.targets[0].volume.name", message)]


@pytest.mark.parametrize("name", ["ab", "my_data", "My.Data-2", "x" * 255])
def test_good_volume_names(name):
    policy = BackupPolicy.model_validate(with_target(name="media", volume={"name": name}))
    assert policy.spec.targets[0].volume.name == name


@pytest.mark.parametrize("name", ["MyApp", "my_app", "-app", "app-", "a" * 254])
def test_bad_policy_names(name):
    doc = copy.deepcopy(POLICY_DOC)
    doc["metadata"]["name"] = name
    message = (f"{name!r} is not a valid resource name (DNS-1123 subdomain) (must match {DNS_SUBDOMAIN})" if len(name) <= 253
               else "resource name (DNS-1123 subdomain) must be at most 253 characters")
    assert errors(doc) == [policy_error("metadata.name", message, name=name)]


@pytest.mark.parametrize("name", ["media_1", "Media", "a.b", "-db", "x" * 64])
def test_bad_target_names(name):
    doc = with_target(name=name, volume={"name": "mydata"})
    message = (f"{name!r} is not a valid target name (DNS-1123 label) (must match {DNS_LABEL})" if len(name) <= 63
               else "target name (DNS-1123 label) must be at most 63 characters")
    assert errors(doc) == [policy_error("spec.targets[0].name", message)]


def test_duplicate_target_names():
    doc = policy_doc(targets=[{"name": "media", "volume": {"name": "one"}}, {"name": "media", "volume": {"name": "two"}}])
    assert errors(doc) == [policy_error("spec", "target name 'media' is used twice")]


def test_no_targets():
    assert errors(policy_doc(targets=[])) == [
        policy_error("spec.targets", "List should have at least 1 item after validation, not 0")
    ]


@pytest.mark.parametrize("compression, message", [
    ({"algorithm": "zstd", "level": 0}, "level for zstd must be between 1 and 22"),
    ({"algorithm": "zstd", "level": 23}, "level for zstd must be between 1 and 22"),
    ({"algorithm": "gzip", "level": 0}, "level for gzip must be between 1 and 9"),
    ({"algorithm": "gzip", "level": 10}, "level for gzip must be between 1 and 9"),
    ({"level": 30}, "level for zstd must be between 1 and 22"),  # the default algorithm is checked too
    ({"algorithm": "none", "level": 1}, "level is not allowed when algorithm is none"),
])
def test_compression_level_out_of_range(compression, message):
    assert errors(policy_doc(compression=compression)) == [policy_error("spec.compression", message)]


def test_unknown_compression_algorithm():
    assert errors(policy_doc(compression={"algorithm": "lz4"})) == [
        policy_error("spec.compression.algorithm", "Input should be 'zstd', 'gzip' or 'none'")
    ]


def test_storage_without_backend():
    assert errors(policy_doc(storage={})) == [policy_error("spec.storage", "storage needs exactly one of local or s3")]


def test_storage_missing():
    assert errors(policy_doc(storage=None)) == [policy_error("spec.storage", "Field required")]


def test_target_without_source():
    assert errors(with_target(name="media")) == [
        policy_error("spec.targets[0]", "a target needs exactly one of volume, postgres or mysql")
    ]


def test_target_with_two_sources_names_both():
    assert errors(with_target(name="media", volume={"name": "vol"}, postgres={"container": "db"})) == [
        policy_error("spec.targets[0]", "a target needs exactly one of volume, postgres or mysql, not volume and postgres")
    ]


def test_unknown_quiesce_mode():
    assert errors(with_target(name="media", volume={"name": "mydata", "quiesce": "freeze"})) == [
        policy_error("spec.targets[0].volume.quiesce", "Input should be 'none', 'pause' or 'stop'")
    ]


@pytest.mark.parametrize("doc, path", [
    (policy_doc(retention={"keep_daily": 7}), "spec.retention.keep_daily"),
    (restore_doc(targets=[{"from_": "media", "volume": {"name": "mydata-restored"}}]), "spec.targets[0].from_"),
], ids=["keep_daily", "from_"])
def test_python_field_names_are_unknown_fields_in_yaml(doc, path):
    result = load(doc)
    assert result.items == []
    assert (path, "Extra inputs are not permitted") in [(e.path, e.message) for e in result.errors]


# --- restore requests --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("selector, expected", [
    ("latest", "latest"),
    ("20261121T030000Z", "20261121T030000Z"),
    ("20261121T030000Z-2", "20261121T030000Z-2"),
    ({"before": "2026-11-20T00:00:00Z"}, BackupBefore(before=utc(2026, 11, 20))),
    ({"before": "2026-11-20T09:00:00+09:00"}, BackupBefore(before=utc(2026, 11, 20))),
])
def test_good_backup_selectors(selector, expected):
    assert RestoreRequest.model_validate(restore_doc(backup=selector)).spec.backup == expected


def test_backup_selector_defaults_to_latest():
    assert RestoreRequest.model_validate(restore_doc(backup=None)).spec.backup == "latest"


def test_before_with_a_yaml_timestamp_loads():
    text = yaml.safe_dump(restore_doc()).replace("backup: latest", "backup: {before: 2026-11-20T00:00:00Z}")
    result = load_text(text, file=FILE)
    assert result.errors == []
    assert result.items[0].resource.spec.backup == BackupBefore(before=utc(2026, 11, 20))


@pytest.mark.parametrize("selector, message", [
    ("yesterday", f"'yesterday' is not a backup selector; {SELECTOR_HELP}"),
    ("LATEST", f"'LATEST' is not a backup selector; {SELECTOR_HELP}"),
    ("20261121T0300Z", f"'20261121T0300Z' is not a backup selector; {SELECTOR_HELP}"),
    ({"before": "garbage"}, "before: Input should be a valid datetime or date, input is too short"),
    ({"before": "2026-11-20T00:00:00"}, "before: Input should have timezone info"),
    ({}, "before: Field required"),
    (5, f"unsupported backup selector; {SELECTOR_HELP}"),
    (["latest"], f"unsupported backup selector; {SELECTOR_HELP}"),
])
def test_bad_backup_selectors(selector, message):
    assert errors(restore_doc(backup=selector)) == [restore_error("spec.backup", message)]


def test_restore_from_alias():
    request = RestoreRequest.model_validate(RESTORE_DOC)
    assert request.spec.targets[0].from_ == "media"


def test_restore_target_from_must_be_a_target_name():
    doc = restore_doc(targets=[{"from": "Media", "volume": {"name": "mydata"}}])
    assert errors(doc) == [restore_error(
        "spec.targets[0].from", f"'Media' is not a valid target name (DNS-1123 label) (must match {DNS_LABEL})")]


def test_duplicate_restore_targets():
    doc = restore_doc(targets=[{"from": "media", "volume": {"name": "one"}}, {"from": "media", "volume": {"name": "two"}}])
    assert errors(doc) == [restore_error("spec", "target 'media' is restored twice")]


def test_restore_target_without_destination():
    assert errors(restore_doc(targets=[{"from": "media"}])) == [
        restore_error("spec.targets[0]", "a restore target needs exactly one of volume, postgres or mysql")
    ]


def test_spec_hash_is_sha256_of_the_canonical_spec():
    canonical = ('{"backup":"latest","policy":"myapp","targets":[{"from":"media",'
                 '"volume":{"name":"mydata-restored","overwrite":false}}]}')
    request = RestoreRequest.model_validate(RESTORE_DOC)
    assert request.spec_hash == hashlib.sha256(canonical.encode()).hexdigest()[:16]


def test_spec_hash_is_stable_under_key_order_defaults_and_metadata():
    reordered = """\
spec:
  targets:
    - volume: {overwrite: false, name: mydata-restored}
      from: media
  policy: myapp
metadata: {name: restore-myapp-1, labels: {team: ops}}
kind: RestoreRequest
apiVersion: dockvault.io/v1alpha1
"""
    loaded = load_text(reordered, file=FILE)
    assert loaded.errors == []
    assert loaded.items[0].resource.spec_hash == RestoreRequest.model_validate(RESTORE_DOC).spec_hash


@pytest.mark.parametrize("change", [
    {"backup": "20261121T030000Z"},
    {"backup": {"before": "2026-11-20T00:00:00Z"}},
    {"policy": "other"},
    {"targets": [{"from": "media", "volume": {"name": "mydata-restored", "overwrite": True}}]},
])
def test_spec_hash_changes_with_the_spec(change):
    original = RestoreRequest.model_validate(RESTORE_DOC).spec_hash
    assert RestoreRequest.model_validate(restore_doc(**change)).spec_hash != original


# --- documents and files -----------------------------------------------------------------------------------------------


def test_wrong_api_version():
    doc = dict(POLICY_DOC, apiVersion="dockvault.io/v1")
    assert errors(doc) == [policy_error("apiVersion", "unsupported apiVersion 'dockvault.io/v1'; expected dockvault.io/v1alpha1")]


def test_unknown_kind():
    doc = dict(POLICY_DOC, kind="Backupolicy")
    assert errors(doc) == [
        "app.yaml: myapp: kind: unknown kind 'Backupolicy'; expected one of BackupPolicy, RestoreRequest, Backup"
    ]


@pytest.mark.parametrize("text", ["- a\n- b\n", "42\n", "just text\n"])
def test_non_mapping_document(text):
    assert [str(e) for e in load_text(text, file=FILE).errors] == ["app.yaml: a document must be a mapping with apiVersion and kind"]


@pytest.mark.parametrize("text, where, problem", [
    ("a: [1, 2\nb: 3\n", "line 2, column 2", "expected ',' or ']', but got ':'"),
    ("key: value\n  bad: indent\n", "line 2, column 6", "mapping values are not allowed here"),
    ("\tkey: 1\n", "line 1, column 1", "found character '\\t' that cannot start any token"),
])
def test_invalid_yaml_names_line_and_column(text, where, problem):
    result = load_text(text, file=FILE)
    assert result.items == []
    assert [str(e) for e in result.errors] == [f"app.yaml: {where}: invalid YAML: {problem}"]


def test_invalid_yaml_later_in_the_file_loads_nothing_from_it():
    good = yaml.safe_dump(POLICY_DOC)
    result = load_text(good + "---\nfoo: [\n", file=FILE)
    assert result.items == []
    # the parser notices the missing ']' at the start of the line after `foo: [`
    assert [e.path for e in result.errors] == [f"line {len(good.splitlines()) + 3}, column 1"]


def test_empty_documents_are_ignored():
    text = "---\n# only a comment\n---\n" + yaml.safe_dump(POLICY_DOC) + "---\n---\n"
    result = load_text(text, file=FILE)
    assert result.errors == []
    assert [item.resource.name for item in result.items] == ["myapp"]
    assert load_text("", file=FILE).items == load_text("", file=FILE).errors == []


def test_good_and_bad_documents_of_one_file():
    bad = copy.deepcopy(POLICY_DOC)
    bad["metadata"]["name"] = "other"
    bad["spec"]["retention"] = {"keepDaily": -1}
    result = load(POLICY_DOC, bad, RESTORE_DOC)
    assert [item.resource.name for item in result.items] == ["myapp", "restore-myapp-1"]
    assert [str(e) for e in result.errors] == [policy_error("spec.retention.keepDaily", "Input should be greater than or equal to 0", "other")]


def test_resource_error_str_leaves_out_empty_parts():
    assert str(ResourceError("f.yaml", "Backup", "b", "spec.id", "bad")) == "f.yaml: Backup b: spec.id: bad"
    assert str(ResourceError("f.yaml", None, "b", "kind", "bad")) == "f.yaml: b: kind: bad"
    assert str(ResourceError("f.yaml", None, None, "", "bad")) == "f.yaml: bad"


def test_hostile_name_cannot_forge_an_error_line():
    doc = copy.deepcopy(POLICY_DOC)
    doc["metadata"]["name"] = "x\nother.yaml: BackupPolicy fine: spec: ok"
    lines = "\n".join(str(e) for e in load(doc).errors).splitlines()
    assert all(line.startswith("app.yaml: ") for line in lines), lines


def write(path: Path, *docs: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(docs), encoding="utf-8")
    return path


def named(name: str) -> dict[str, Any]:
    doc = copy.deepcopy(POLICY_DOC)
    doc["metadata"]["name"] = name
    return doc


def test_load_paths_reads_yaml_and_yml_sorted_and_skips_hidden(tmp_path):
    write(tmp_path / "b.yml", named("b"))
    write(tmp_path / "a.yaml", named("a"))
    write(tmp_path / "sub" / "c.yaml", named("c"))
    write(tmp_path / ".hidden.yaml", named("hidden-file"))
    write(tmp_path / ".git" / "x.yaml", named("hidden-dir"))
    write(tmp_path / "sub" / ".cache" / "y.yaml", named("nested-hidden-dir"))
    write(tmp_path / "notes.txt", named("text-file"))
    write(tmp_path / "a.yaml~", named("editor-backup"))
    write(tmp_path / "a.yaml.swp", named("editor-swap"))

    result = load_paths([tmp_path])

    assert result.errors == []
    assert [(item.file, item.resource.name) for item in result.items] == [
        (str(tmp_path / "a.yaml"), "a"), (str(tmp_path / "b.yml"), "b"), (str(tmp_path / "sub" / "c.yaml"), "c"),
    ]


def test_load_paths_reports_a_missing_path_and_goes_on(tmp_path):
    good = write(tmp_path / "a.yaml", named("a"))
    missing = tmp_path / "missing.yaml"
    result = load_paths([missing, good])
    assert [str(e) for e in result.errors] == [f"{missing}: no such file or directory"]
    assert [item.resource.name for item in result.items] == ["a"]


def test_load_paths_reports_a_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_bytes(b"\xff\xfe kind: x\n")
    assert [str(e) for e in load_paths([path]).errors] == [
        f"{path}: cannot read: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"
    ]


# --- `dockvault validate` ----------------------------------------------------------------------------------------------

BAD_LINE = "policies/app.yaml: BackupPolicy myapp: spec.retention.keepDaily: Input should be greater than or equal to 0"


def test_validate_prints_the_error_line_and_exits_1(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "policies" / "app.yaml", policy_doc(retention={"keepDaily": -1}))
    write(tmp_path / "policies" / "good.yaml", named("good"), RESTORE_DOC)

    result = CliRunner().invoke(app, ["validate", "policies"])

    assert result.exit_code == 1
    assert result.stdout == BAD_LINE + "\n"
    assert result.stderr == ("policies/good.yaml: BackupPolicy good: ok\n"
                             "policies/good.yaml: RestoreRequest restore-myapp-1: ok\n")


def test_validate_a_single_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "policies" / "app.yaml", policy_doc(retention={"keepDaily": -1}))
    result = CliRunner().invoke(app, ["validate", "policies/app.yaml"])
    assert (result.exit_code, result.stdout) == (1, BAD_LINE + "\n")


def test_validate_all_good_exits_0(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "policies" / "app.yaml", POLICY_DOC, RESTORE_DOC)
    result = CliRunner().invoke(app, ["validate", "policies"])
    assert (result.exit_code, result.stdout) == (0, "")
    assert result.stderr == ("policies/app.yaml: BackupPolicy myapp: ok\n"
                             "policies/app.yaml: RestoreRequest restore-myapp-1: ok\n")


def test_validate_missing_path_exits_1(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["validate", "nowhere.yaml"])
    assert (result.exit_code, result.stdout) == (1, "nowhere.yaml: no such file or directory\n")


def test_validate_prints_brackets_in_messages_verbatim(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "app.yaml", with_target(name="media", volume={"name": "[bold]x"}))
    result = CliRunner().invoke(app, ["validate", "app.yaml"])
    assert result.stdout == (
        f"app.yaml: BackupPolicy myapp: spec.targets[0].volume.name: '[bold]x' is not a valid Docker volume name "
        f"(must match {VOLUME_PATTERN})\n"
    )


# --- deprecated names (README "Deprecated names") ---------------------------------------------------------------------

def test_spec_verify_is_read_as_spec_drill_with_a_warning():
    result = load(policy_doc(verify={"schedule": "0 5 * * 0"}))
    (item,) = result.items
    assert item.resource.spec.drill.schedule == "0 5 * * 0" and item.resource.spec.verify is None
    assert "verify" not in item.resource.to_dict()["spec"] and item.resource.to_dict()["spec"]["drill"]
    assert [str(w) for w in result.warnings] == [policy_error("spec.verify", "deprecated; rename it to spec.drill")]
    assert load(policy_doc(drill={"schedule": "0 5 * * 0"})).warnings == []


def test_spec_verify_and_spec_drill_together_are_an_error():
    assert errors(policy_doc(verify={}, drill={})) == [
        policy_error("spec", "give drill only: verify is its deprecated alias")]


def test_validate_warns_about_deprecated_fields_and_exits_0(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "app.yaml", policy_doc(verify={"schedule": "0 5 * * 0"}))
    result = CliRunner().invoke(app, ["validate", "app.yaml"])
    assert (result.exit_code, result.stdout) == (0, "")
    assert "warning: app.yaml: BackupPolicy myapp: spec.verify: deprecated; rename it to spec.drill" in result.stderr


def test_a_drill_record_of_an_older_version_reads_result_as_phase():
    from dockvault.api.policy import Drill

    old = Drill.model_validate_json('{"backup": "20261121T030000Z", "result": "Succeeded", "durationSeconds": 3.5}')
    assert (old.phase, old.succeeded, old.duration_seconds) == ("Succeeded", True, 3.5)
    assert old.legacy() == {"backup": "20261121T030000Z", "result": "Succeeded", "durationSeconds": 3.5}


@pytest.mark.parametrize("kind", [{"a": 1}, ["BackupPolicy"], 3, None])
def test_a_kind_of_the_wrong_type_is_an_error_not_a_crash(kind):
    doc = {**POLICY_DOC, "kind": kind}
    assert errors(doc) == [f"{FILE}: myapp: kind: unknown kind {kind!r}; expected one of BackupPolicy, RestoreRequest, Backup"]


def test_dockvault_verify_is_the_deprecated_name_of_dockvault_drill(tmp_path):
    result = CliRunner().invoke(app, ["verify", "nope", "--config-dir", str(tmp_path), "--state-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "`dockvault verify` is deprecated; use `dockvault drill`" in result.stderr
    assert "no valid BackupPolicy 'nope'" in result.stderr  # then it runs as `dockvault drill`
    assert "verify" not in CliRunner().invoke(app, ["--help"]).stdout


def test_the_console_script_freezes_the_heap_so_python_shutdown_skips_collecting_it(monkeypatch, capsys):
    import gc
    import sys

    from dockvault import cli

    monkeypatch.setattr(sys, "argv", ["dockvault", "--version"])
    gc.unfreeze()
    try:
        with pytest.raises(SystemExit) as leaving:
            cli.main()
        assert leaving.value.code == 0 and capsys.readouterr().out.startswith("dockvault ")
        assert gc.get_freeze_count() > 0
        assert gc.isenabled()  # as it was before: only the command's start-up runs without collections
    finally:
        gc.unfreeze()


def test_commands_that_run_jobs_collect_garbage_again_once_their_modules_are_in(tmp_path, monkeypatch):
    import gc

    from dockvault import cli

    gc.disable()  # as main() leaves it for the start-up
    try:
        controller = cli._controller(tmp_path / "config", tmp_path / "state", "helper:latest")
        assert gc.isenabled()
        controller.state.close()
    finally:
        gc.enable()
        gc.unfreeze()


def test_the_registries_import_each_source_and_backend_by_its_name():
    from dockvault import sources, storage
    from dockvault.api.policy import SOURCE_KINDS, StorageSpec

    assert set(sources.SOURCES) == set(SOURCE_KINDS)
    assert [sources.source_for(kind).kind for kind in sources.SOURCES] == list(sources.SOURCES)
    assert set(storage.BACKENDS) == set(StorageSpec.one_of)
    with pytest.raises(KeyError):
        sources.source_for("base")  # a module of the package, not a kind


def test_a_one_shot_volume_backup_loads_no_database_s3_restore_drill_or_metrics_code():
    """The one-shot commands import what their job needs when it runs (start-up time); the backup of a volume
    to a local repository never needs these."""
    import subprocess
    import sys

    code = ("import sys; from dockvault import cli; import dockvault.frontends.standalone; "
            "from dockvault.sources import source_for; from dockvault.storage import BACKENDS; source_for('volume'); "
            "print(' '.join(sorted(sys.modules)))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    assert "dockvault.sources.volume" in loaded and "dockvault.actions.backup" in loaded
    assert not loaded & {"dockvault.sources.postgres", "dockvault.sources.mysql", "dockvault.storage.s3",
                         "dockvault.actions.restore", "dockvault.actions.drill", "dockvault.actions.copy",
                         "dockvault.actions.check", "rich.progress", "boto3", "prometheus_client"}


def test_an_unknown_key_with_a_newline_is_named_quoted_on_one_line():
    doc = policy_doc()
    doc["spec"]["\n"] = None
    assert errors(doc) == [policy_error("spec.'\\n'", "Extra inputs are not permitted")]
