"""The malformed-input corpus: whatever a config file holds, dockvault answers with error lines that name the
file and the field, never a traceback, within bounded time and memory; and `dockvault run` keeps every other
policy running while one file is garbage.

Set DOCKVAULT_FAULT_EXAMPLES (default 150) for a longer property-based run.
"""

from __future__ import annotations

import math
import os
import resource
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockvault.api.loader import MAX_DEPTH, MAX_FILE_BYTES, load_file, load_text, parse_document
from dockvault.frontends.standalone import load_config
from tests.faults.corpus import FULL_DOCS, FULL_POLICY, FULL_RESTORE, dotted, field_paths, judge, replaced, to_yaml, \
    yaml_values

EXAMPLES = int(os.environ.get("DOCKVAULT_FAULT_EXAMPLES", "150"))
FILE = "app.yaml"
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MEMORY_BOUND = 64 * 2**20  # bytes allocated at peak by one load of a bounded input; generous

# One value of each type YAML can produce; every field path of every kind gets each of them.
EVERY_TYPE: dict[str, Any] = {
    "null": None, "bool": True, "int": 7, "negative": -1, "huge int": 10**40, "float": 1.5, "nan": math.nan,
    "infinity": -math.inf, "string": "x", "empty string": "", "multi-line string": "a\nb", "date": date(2026, 1, 1),
    "timestamp": datetime(2026, 1, 1, tzinfo=UTC), "binary": b"\x00\xff", "list": [1, "a"], "empty list": [],
    "mapping": {"a": 1}, "empty mapping": {}, "set": frozenset({1}), "nested": {"a": [{"b": None}]},
    "odd keys": {1: 2, None: 3, True: 4},
}
MAX_ERRORS_PER_FIELD = 6  # a one-of block may report each alternative; more than this would drown the cause


def bounded(load: Callable[[], Any]) -> tuple[Any, int]:
    """Run `load`, returning its result and the peak bytes it allocated (tracemalloc)."""
    tracemalloc.start()
    try:
        result = load()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def test_the_full_documents_are_valid():
    """The corpus starts from documents that load, so every error below comes from the one change made."""
    for doc in FULL_DOCS.values():
        result = load_text(to_yaml(doc), file=FILE)
        assert result.errors == [] and len(result.items) == 1


@pytest.mark.parametrize("kind", FULL_DOCS)
def test_every_field_path_given_every_yaml_type(kind):
    """Exhaustive over (path, type), on the values YAML constructs (the text layer has its own tests below)."""
    doc = FULL_DOCS[kind]
    paths = list(field_paths(doc))
    assert len(paths) > 30
    checked = refused = 0
    for path in paths:
        for value in EVERY_TYPE.values():
            result = parse_document(replaced(doc, path, value), file=FILE)
            lines = judge(result, file=FILE, field=dotted(path))
            assert len(lines) <= MAX_ERRORS_PER_FIELD, lines
            checked += 1
            refused += bool(lines)
    assert refused > checked // 2  # most of these are wrong; the judge saw real errors


@PROPERTY
@given(data=st.data(), value=yaml_values)
def test_any_value_anywhere(data, value):
    kind = data.draw(st.sampled_from(sorted(FULL_DOCS)))
    path = data.draw(st.sampled_from(list(field_paths(FULL_DOCS[kind]))))
    result = load_text(to_yaml(replaced(FULL_DOCS[kind], path, value)), file=FILE)
    judge(result, file=FILE, field=dotted(path))


@PROPERTY
@given(kind=yaml_values, api_version=yaml_values, metadata=yaml_values,
       which=st.sets(st.sampled_from(["kind", "apiVersion", "metadata"]), min_size=1))
def test_kind_api_version_and_metadata_of_any_type(kind, api_version, metadata, which):
    """The reported crash: `kind:` as a mapping or list raised `TypeError: unhashable type: 'dict'`."""
    doc = dict(FULL_POLICY)
    for key, value in (("kind", kind), ("apiVersion", api_version), ("metadata", metadata)):
        if key in which:
            doc[key] = value
    result = load_text(to_yaml(doc), file=FILE)
    judge(result, file=FILE)


@pytest.mark.parametrize("kind", [{"BackupPolicy": None}, ["BackupPolicy"], {"a": [1]}, None, 3, True])
def test_kind_as_a_collection_is_one_error_naming_kind(kind):
    result = load_text(to_yaml({**FULL_POLICY, "kind": kind}), file=FILE)
    assert [e.path for e in result.errors] == ["kind"]
    assert judge(result, file=FILE, field="kind")


def _mutations(text: str) -> st.SearchStrategy[str]:
    """The text cut, with a span deleted, or with junk inserted: typical broken edits and transfers."""
    n = len(text)
    cut = st.integers(0, n).map(lambda i: text[:i])
    delete = st.tuples(st.integers(0, n), st.integers(1, 40)).map(lambda t: text[:t[0]] + text[t[0] + t[1]:])
    junk = st.one_of(st.text(max_size=8), st.sampled_from(["\t", ":", "- ", "[", "{", "&a", "*a", "!!int", "'", '"',
                                                          "\x00", "\x1b", "\ufeff", "%YAML 9.9\n", "---", "...", "? "]))
    insert = st.tuples(st.integers(0, n), junk).map(lambda t: text[:t[0]] + t[1] + text[t[0]:])
    return st.one_of(cut, delete, insert)


_POLICY_TEXT = to_yaml(FULL_POLICY)
_RESTORE_TEXT = yaml.safe_dump(FULL_RESTORE, default_flow_style=True)  # flow style: brackets to break


@PROPERTY
@given(text=st.one_of(_mutations(_POLICY_TEXT), _mutations(_RESTORE_TEXT)))
def test_broken_yaml(text):
    judge(load_text(text, file=FILE), file=FILE)


@PROPERTY
@given(raw=st.one_of(st.binary(max_size=2000), st.binary(max_size=200).map(lambda b: b"\xff\xfe" + b),
                     st.binary(max_size=200).map(lambda b: _POLICY_TEXT.encode()[:300] + b)))
def test_binary_junk_and_non_utf8_files(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("junk") / "junk.yaml"
    path.write_bytes(raw)
    result = load_file(path)
    judge(result, file=str(path))


def test_non_utf8_is_one_error_naming_the_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(_POLICY_TEXT.replace("Asia/Tokyo", "Europe/Zürich").encode("latin-1"))
    lines = judge(load_file(path), file=str(path))
    assert len(lines) == 1 and "cannot read" in lines[0] and "utf-8" in lines[0], lines


def _billion_laughs(where: str, depth: int = 9) -> str:
    """9**9 strings by reference in a few hundred bytes; harmless only while nothing walks or prints it whole."""
    lines = ['b0: &b0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"b{i}: &b{i} [" + ", ".join([f"*b{i - 1}"] * 9) + "]" for i in range(1, depth)]
    return "\n".join(lines) + "\n" + where.replace("BOMB", f"*b{depth - 1}") + "\n"


_HEADER = "apiVersion: dockvault.io/v1alpha1\nkind: BackupPolicy\n"
HOSTILE: dict[str, str] = {
    "alias bomb as kind": _billion_laughs("kind: BOMB"),
    "alias bomb as apiVersion": "kind: BackupPolicy\n" + _billion_laughs("apiVersion: BOMB"),
    "alias bomb as metadata": _HEADER + _billion_laughs("metadata: BOMB"),
    "alias bomb as the name": _HEADER + _billion_laughs("metadata: {name: BOMB}"),
    "alias bomb in labels": _HEADER + _billion_laughs("metadata: {name: x, labels: {a: BOMB}}"),
    "alias bomb as targets": _HEADER + _billion_laughs("metadata: {name: x}\nspec: {targets: BOMB}"),
    "alias bomb as the schedule": _HEADER + _billion_laughs("metadata: {name: x}\nspec: {schedule: BOMB}"),
    "self-referencing alias": _HEADER + "metadata: &m {name: x, labels: *m}\nspec: &s {targets: [*s]}\n",
    "a 10 MB kind": "kind: " + "x" * 10_000_000 + "\n",
    "a 10 MB name": _HEADER + "metadata: {name: '" + "x" * 10_000_000 + "'}\n",
    "a 10 MB bucket": _POLICY_TEXT.replace("bucket: backups", "bucket: " + "b" * 10_000_000),
    "a 100,000-digit integer": _HEADER + "metadata: {name: x}\nspec: {suspend: 9" + "9" * 100_000 + "}\n",
    "a 100,000-digit hex integer as kind": "kind: 0x" + "f" * 100_000 + "\n",
    "an invalid timestamp": _HEADER + "metadata: {name: x}\nspec: {schedule: 2026-13-45 99:99:99}\n",
    "!!int that is not one": "kind: !!int abc\n",
    "!!float that is not one": "kind: !!float abc\n",
    "a Python tag": "kind: !!python/object/apply:os.system [ls]\n",
    "100,000 nested lists": "kind: " + "[" * 100_000 + "]" * 100_000 + "\n",
    "50,000 nested mappings": "kind: " + "{a: " * 50_000 + "1" + "}" * 50_000 + "\n",
    f"{MAX_DEPTH + 1} nested block lists": "kind:\n" + "".join(" " * i + "-\n" for i in range(MAX_DEPTH + 1)),
    "a NUL byte": "kind: \x00\n",
    "an undefined alias": "kind: *nope\n",
    "a mapping as a key": "? {a: b}\n: 1\nkind: x\n",
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_documents(name):
    text = HOSTILE[name]
    result, peak = bounded(lambda: load_text(text, file=FILE))
    lines = judge(result, file=FILE, max_line=500)
    assert lines, f"{name}: accepted"
    assert len(lines) <= 20, lines
    assert peak < MEMORY_BOUND + 3 * len(text), f"{name}: {peak / 2**20:.0f} MiB at peak"


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as out:
        out.truncate(MAX_FILE_BYTES + 1)
    result, peak = bounded(lambda: load_file(path))
    assert [str(e) for e in result.errors] == [f"{path}: file is larger than 16 MiB; split it or remove what is not "
                                               f"a dockvault resource"]
    assert peak < MAX_FILE_BYTES + MEMORY_BOUND  # read at most one byte past the limit


def _policy(name: str) -> dict[str, Any]:
    return {"apiVersion": FULL_POLICY["apiVersion"], "kind": "BackupPolicy", "metadata": {"name": name},
            "spec": {"targets": [{"name": "media", "volume": {"name": "vol"}}], "storage": {"local": {"path": "/r"}}}}


def test_ten_thousand_documents_in_one_file(tmp_path):
    """Half valid, a quarter invalid, a quarter empty: each invalid one is one line, in bounded memory."""
    docs: list[Any] = []
    for i in range(10_000):
        if i % 4 == 0:
            docs.append(None)
        elif i % 4 == 1:
            docs.append({**_policy(f"p{i}"), "spec": {"targets": "media"}})
        else:
            docs.append(_policy(f"p{i}"))
    path = tmp_path / "many.yaml"
    path.write_text(to_yaml(*docs))
    result, peak = bounded(lambda: load_file(path))
    assert len(result.items) == 5_000
    by_name = {e.name for e in result.errors}
    assert len(by_name) == 2_500 and all(e.path.startswith("spec") for e in result.errors)
    judge(result, file=str(path))
    assert peak < 40 * path.stat().st_size + MEMORY_BOUND, f"{peak / 2**20:.0f} MiB for {path.stat().st_size} bytes"


def test_empty_documents_and_files(tmp_path):
    for text in ("", "---\n", "---\n---\n...\n", "# only a comment\n", "\n\n\n"):
        (tmp_path / "empty.yaml").write_text(text)
        result = load_file(tmp_path / "empty.yaml")
        assert result.errors == [] and result.items == [], text
    result = load_text("---\n" + to_yaml(_policy("a")) + "---\n---\n", file=FILE)
    assert result.errors == [] and len(result.items) == 1


def test_duplicate_names_across_files(tmp_path):
    (tmp_path / "a.yaml").write_text(to_yaml(_policy("same"), {**FULL_RESTORE, "metadata": {"name": "r"}}))
    (tmp_path / "b.yaml").write_text(to_yaml(_policy("same")))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.yaml").write_text(to_yaml({**FULL_RESTORE, "metadata": {"name": "r"}}, _policy("other")))
    config = load_config(tmp_path)
    assert sorted(config.policies) == ["other", "same"] and sorted(config.restores) == ["r"]
    assert config.policies["same"].file == str(tmp_path / "a.yaml")
    assert sorted(str(e) for e in config.errors) == [
        f"{tmp_path}/b.yaml: BackupPolicy same: metadata.name: duplicate name; already defined in {tmp_path}/a.yaml",
        f"{tmp_path}/sub/c.yaml: RestoreRequest r: metadata.name: duplicate name; already defined in {tmp_path}/a.yaml",
    ]


def _validate(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dockvault", "validate", *map(str, paths)], capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)))


def test_validate_answers_the_whole_corpus_in_one_run(tmp_path):
    """The real command over a directory of every hostile file: exit 1, one line per problem on stdout, each
    naming its file; no traceback, within 1 GiB of address space and the hard timeout."""
    config = tmp_path / "config"
    config.mkdir()
    for index, (name, text) in enumerate(HOSTILE.items()):
        (config / f"hostile-{index:02d}.yaml").write_text(text)
    (config / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (config / "latin1.yaml").write_bytes("kind: Zürich\n".encode("latin-1"))
    (config / "good.yaml").write_text(to_yaml(_policy("good")))
    result = _validate(config)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stdout.splitlines()
    files = {line.split(": ")[0] for line in lines}
    assert all(line.startswith(str(config) + "/") for line in lines), lines
    assert files == {str(p) for p in config.iterdir()} - {str(config / "good.yaml")}, "a hostile file said nothing"
    assert f"{config}/good.yaml: BackupPolicy good: ok" in result.stderr


@pytest.mark.docker
def test_run_keeps_other_policies_running_while_a_file_is_garbage(docker_client, volumes, repo_dir, tmp_path,
                                                                 test_image):
    """A watched file edited into garbage (a kind that is a mapping, then binary junk) and back: the other
    policy keeps serving restores meanwhile, the broken one comes back, and dockvault never stops."""
    from tests.e2e.cli import write_policy, write_restore
    from tests.e2e.test_watch import free_port
    from tests.treecheck import populate_volume, snapshot_volume
    from tests.waiting import eventually

    config, log_path = tmp_path / "config", tmp_path / "run.log"
    config.mkdir()
    steady, flaky = volumes("steady"), volumes("flaky")
    populate_volume(docker_client, steady, megabytes=1)
    populate_volume(docker_client, flaky, megabytes=1)
    write_policy(config, name="steady", volume=steady, repo=repo_dir)
    write_policy(config, name="flaky", volume=flaky, repo=repo_dir)
    good_text = (config / "flaky.yaml").read_text()
    env = dict(os.environ, DOCKVAULT_HELPER_IMAGE=test_image)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "dockvault", "run", "--config-dir", str(config),
                                 "--state-dir", str(tmp_path / "state"), "--metrics-addr", f"127.0.0.1:{free_port()}"],
                                env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    logged = lambda text: text in log_path.read_text()  # noqa: E731
    try:
        for name in ("steady", "flaky"):
            eventually(f"{name}'s first backup", lambda: next(repo_dir.glob(f"{name}/*/manifest.json"), None), 120)
        (config / "flaky.yaml").write_text(good_text.replace("kind: BackupPolicy", "kind: {BackupPolicy: x}"))
        eventually("the mapping kind's error", lambda: logged(f"{config}/flaky.yaml: flaky: kind: unknown kind"), 60)
        restored = volumes("steady-back")
        write_restore(config, name="steady-back", policy="steady", volume=restored)
        eventually("the steady policy's restore", lambda: logged("restore steady-back succeeded"), 120)
        assert snapshot_volume(docker_client, restored) == snapshot_volume(docker_client, steady)

        (config / "flaky.yaml").write_bytes(b"\xff\xfe\x00junk" * 100)
        eventually("the junk file's error", lambda: logged(f"{config}/flaky.yaml: cannot read"), 60)
        (config / "flaky.yaml").write_text(good_text)
        flaky_back = volumes("flaky-back")
        write_restore(config, name="flaky-back", policy="flaky", volume=flaky_back)
        eventually("the repaired policy's restore", lambda: logged("restore flaky-back succeeded"), 120)
        assert snapshot_volume(docker_client, flaky_back) == snapshot_volume(docker_client, flaky)
        assert proc.poll() is None, "a garbage file must not stop dockvault"
        assert "Traceback" not in log_path.read_text()
    finally:
        proc.send_signal(2)
        code = proc.wait(timeout=60)
    assert code == 0, log_path.read_text()[-3000:]
