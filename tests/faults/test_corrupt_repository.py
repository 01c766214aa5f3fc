"""A corrupt repository: artifacts flipped, truncated, emptied or swapped between backups; manifests corrupt,
truncated or deleted. `dockvault check` finds each (by size, or by reading with --read-data), listing marks
the backup damaged and never hides it, and a restore refuses before it touches the target.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import zstandard
from click.testing import Result
from typer.testing import CliRunner

from dockvault.actions.check import MANIFEST_DAMAGE, check_policy, check_repository, plan_check
from dockvault.api import Backup, BackupPolicy, RestoreRequest
from dockvault.storage.base import Repository
from dockvault.storage.local import LocalRepository

POLICY = "vault"
RUNNER = CliRunner()  # stdout and stderr apart (click 8.2)
IDS = ["20261120T030000Z", "20261121T030000Z", "20261122T030000Z"]
ARTIFACT = "data.tar.zst"


def archive(index: int) -> bytes:
    """A small volume archive, different in content and size for each backup."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for n in range(3 + index):
            data = f"backup {index} file {n}\n".encode() * (50 + 30 * index)
            info = tarfile.TarInfo(f"dir/file-{n}.txt")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return zstandard.ZstdCompressor().compress(raw.getvalue())


def record(backup_id: str, data: bytes, *, policy: str = POLICY) -> Backup:
    at = datetime.strptime(backup_id, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    done = (at + timedelta(seconds=2)).isoformat()
    return Backup.model_validate({
        "apiVersion": "dockvault.io/v1alpha1", "kind": "Backup", "metadata": {"name": f"{policy}-{backup_id.lower()}"},
        "spec": {"policy": policy, "id": backup_id},
        "status": {"phase": "Succeeded", "startedAt": at.isoformat(), "completedAt": done, "bytes": len(data),
                   "durationSeconds": 2.0,
                   "artifacts": [{"target": "data", "source": "volume", "file": ARTIFACT, "bytes": len(data),
                                  "rawBytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                                  "compression": "zstd", "startedAt": at.isoformat(), "completedAt": done}]}})


def fill(repository: Repository, policy: str = POLICY) -> None:
    """Three good backups written through the repository's own writer (any backend)."""
    for index, backup_id in enumerate(IDS):
        data = archive(index)
        writer = repository.begin(policy, backup_id)
        with writer.artifact(ARTIFACT) as out:
            out.write(data)
        writer.commit(record(backup_id, data, policy=policy))


def cli(*args: str) -> Result:
    """The real `dockvault` command, in this process (a subprocess per call would double the tier's time)."""
    from dockvault.cli import app
    return RUNNER.invoke(app, list(args))


def policy_doc(storage: dict, volume: str = "unused-volume") -> BackupPolicy:
    return BackupPolicy.model_validate({
        "apiVersion": "dockvault.io/v1alpha1", "kind": "BackupPolicy", "metadata": {"name": POLICY},
        "spec": {"targets": [{"name": "data", "volume": {"name": volume}}], "storage": storage}})


# Each damage done to the newest backup of a local repository: (how, found without reading, words of the problem).
def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def _swap(folder: Path) -> None:
    older = folder.parent / IDS[1] / ARTIFACT
    mine = folder / ARTIFACT
    a, b = mine.read_bytes(), older.read_bytes()
    mine.write_bytes(b)
    older.write_bytes(a)


def _swap_manifests(folder: Path) -> None:
    older = folder.parent / IDS[1] / "manifest.json"
    mine = folder / "manifest.json"
    a, b = mine.read_bytes(), older.read_bytes()
    mine.write_bytes(b)
    older.write_bytes(a)


DAMAGES: dict[str, tuple[Callable[[Path], None], bool, str]] = {
    "artifact with a flipped byte": (lambda f: _flip(f / ARTIFACT), False, "sha256 does not match"),
    "artifact truncated": (lambda f: (f / ARTIFACT).write_bytes((f / ARTIFACT).read_bytes()[:100]), True,
                           "bytes stored"),
    "artifact zero-length": (lambda f: (f / ARTIFACT).write_bytes(b""), True, "0 bytes stored"),
    "artifact deleted": (lambda f: (f / ARTIFACT).unlink(), True, "missing"),
    "artifacts swapped between backups": (_swap, True, "bytes stored"),
    "manifest corrupt": (lambda f: _flip(f / "manifest.json"), True, "unreadable manifest"),
    "manifest truncated": (lambda f: (f / "manifest.json").write_bytes((f / "manifest.json").read_bytes()[:77]), True,
                           "unreadable manifest"),
    "manifest deleted": (lambda f: (f / "manifest.json").unlink(), True, "no manifest"),
    "manifests swapped between backups": (_swap_manifests, True, "the manifest is that of backup"),
    "manifest copied from another backup": (
        lambda f: (f / "manifest.json").write_bytes((f.parent / IDS[1] / "manifest.json").read_bytes()), True,
        f"the manifest is that of backup {IDS[1]}"),
}


@pytest.fixture
def damaged(tmp_path, request) -> tuple[Path, str]:
    repo = tmp_path / "repo"
    fill(LocalRepository(repo))
    name = request.param
    DAMAGES[name][0](repo / POLICY / IDS[-1])
    return repo, name


@pytest.mark.parametrize("damaged", DAMAGES, indirect=True)
def test_check_finds_the_damage(damaged):
    repo, name = damaged
    _, by_size, words = DAMAGES[name]
    policy = policy_doc({"local": {"path": str(repo)}})
    quick = check_repository(POLICY, LocalRepository(repo))
    full = check_repository(POLICY, LocalRepository(repo), read_data=True)
    assert quick.backups == full.backups == 3
    assert full.damaged_backups == ([IDS[1], IDS[2]] if "swapped" in name else [IDS[2]]), "damage spread or hid"
    assert any(words in d.problem for d in full.damage), full.damage
    assert bool(quick.damage) == by_size, quick.damage
    if by_size:
        assert quick.damaged_backups == full.damaged_backups
    assert [r.ok for r in check_policy(policy, LocalRepository(repo), read_data=True)] == [False]


@pytest.mark.parametrize("damaged", DAMAGES, indirect=True)
def test_listing_marks_the_backup_damaged_and_never_hides_it(damaged, tmp_path):
    repo, name = damaged
    config = tmp_path / "config"
    config.mkdir()
    (config / "vault.yaml").write_text(json.dumps(policy_doc({"local": {"path": str(repo)}}).to_dict()))
    listed = cli("get", "backups", "-c", str(config), "-o", "json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    ids = [row.get("id") or row["spec"]["id"] for row in rows]
    assert ids == IDS, "a damaged backup was hidden"
    newest = rows[-1]
    if DAMAGES[name][1]:
        assert (newest.get("phase") or newest["status"]["phase"]) == "Damaged" or newest.get("damage"), newest
        assert newest["damage"], newest
    table = cli("get", "backups", "-c", str(config))
    line = next(line for line in table.stdout.splitlines() if IDS[-1] in line)
    assert ("Damaged" in line) == DAMAGES[name][1], line


def _check_cli(config: Path, *args: str) -> Result:
    return cli("check", "-c", str(config), *args)


def test_check_command_exit_codes_and_report(tmp_path):
    repo, config = tmp_path / "repo", tmp_path / "config"
    config.mkdir()
    fill(LocalRepository(repo))
    (config / "vault.yaml").write_text(json.dumps(policy_doc({"local": {"path": str(repo)}}).to_dict()))
    assert _check_cli(config, POLICY).exit_code == 0
    assert _check_cli(config, "--all", "--read-data").exit_code == 0
    _flip(repo / POLICY / IDS[0] / ARTIFACT)
    quick = _check_cli(config, POLICY)
    assert quick.exit_code == 0, "a flipped byte keeps the size: only --read-data can see it"
    full = _check_cli(config, POLICY, "--read-data")
    assert full.exit_code == 1
    assert any(IDS[0] in line and ARTIFACT in line and "sha256 does not match" in line
               for line in full.stdout.splitlines()), full.stdout
    assert full.exception is None or isinstance(full.exception, SystemExit)
    report = json.loads(_check_cli(config, "--all", "--read-data", "-o", "json").stdout)
    assert [(r["repository"], r["ok"], r["read"], [d["backup_id"] for d in r["damage"]]) for r in report] == \
        [("primary", False, 3, [IDS[0]])]
    for bad in (["--subset", "10%"], ["--read-data", "--subset", "0%"], ["--read-data", "--subset", "x"], []):
        result = _check_cli(config, *([POLICY] if bad else []), *bad)
        assert result.exit_code == 2 and "error:" in result.stderr, (bad, result.stderr)
    missing = _check_cli(config, "nope")
    assert missing.exit_code == 1 and "no valid BackupPolicy 'nope'" in missing.stderr


def test_subset_reads_a_random_sample_reproducible_by_seed(tmp_path):
    repo = LocalRepository(tmp_path / "repo")
    for index in range(10):
        fill(repo, policy=f"p{index}")  # 3 backups each; the sample is per policy
    sizes = {bid: {ARTIFACT: 1} for bid in IDS}
    backups = repo.backups("p0")
    for seed in range(20):
        plan = plan_check(backups, {b.id: {ARTIFACT: b.status.artifacts[0].bytes} for b in backups}, {},
                          read_data=True, subset=34, seed=seed)
        assert len(plan.to_read) == 2  # ceil(3 * 34%)
        again = plan_check(backups, {b.id: {ARTIFACT: b.status.artifacts[0].bytes} for b in backups}, {},
                           read_data=True, subset=34, seed=seed)
        assert plan.to_read == again.to_read
    samples = {tuple(b.id for b, _ in plan_check(backups, {b.id: {ARTIFACT: b.status.artifacts[0].bytes}
                                                          for b in backups}, {}, read_data=True, subset=34,
                                                 seed=seed).to_read) for seed in range(20)}
    assert len(samples) == 3, "the sample does not vary with the seed"
    wrong_size = plan_check(backups, sizes, {}, read_data=True)
    assert wrong_size.to_read == [] and len(wrong_size.damage) == 3  # nothing is read whose size is already wrong
    report = check_repository("p0", repo, read_data=True, subset=50, seed=1)
    assert report.read == 2 and report.ok


@pytest.mark.docker
@pytest.mark.parametrize("damaged", DAMAGES, indirect=True)
def test_restore_refuses_before_touching_the_target(damaged, docker_client, engine, volumes):
    """Restoring the damaged backup by id into an existing volume: refused, the volume exactly as it was."""
    from dockvault.actions.restore import run_restore
    from tests.treecheck import populate_volume, snapshot_volume

    repo, name = damaged
    existing, fresh = volumes("corrupt-old"), volumes("corrupt-new")
    populate_volume(docker_client, existing, megabytes=1)
    before = snapshot_volume(docker_client, existing)
    policy = policy_doc({"local": {"path": str(repo)}})
    for volume, overwrite in ((existing, True), (fresh, False)):
        request = RestoreRequest.model_validate({
            "apiVersion": "dockvault.io/v1alpha1", "kind": "RestoreRequest", "metadata": {"name": "r"},
            "spec": {"policy": POLICY, "backup": IDS[-1],
                     "targets": [{"from": "data", "volume": {"name": volume, "overwrite": overwrite}}]}})
        result = run_restore(request, policy, engine=engine, repository=LocalRepository(repo))
        assert result.status.phase == "Failed", f"{name}: {result.status.message}"
        if "manifest" in name:
            assert f"backup {IDS[-1]} of policy 'vault' is damaged: " in result.status.message
    assert snapshot_volume(docker_client, existing) == before
    assert fresh not in [v.name for v in docker_client.volumes.list()]


@pytest.mark.docker
def test_restoring_latest_passes_over_a_damaged_newest_backup_and_says_so(tmp_path, docker_client, engine, volumes):
    from dockvault.actions.restore import run_restore

    repo = tmp_path / "repo"
    fill(LocalRepository(repo))
    (repo / POLICY / IDS[-1] / "manifest.json").unlink()
    fresh = volumes("corrupt-latest")
    request = RestoreRequest.model_validate({
        "apiVersion": "dockvault.io/v1alpha1", "kind": "RestoreRequest", "metadata": {"name": "r"},
        "spec": {"policy": POLICY, "backup": "latest", "targets": [{"from": "data", "volume": {"name": fresh}}]}})
    result = run_restore(request, policy_doc({"local": {"path": str(repo)}}), engine=engine,
                         repository=LocalRepository(repo))
    assert result.status.phase == "Succeeded", result.status.message
    assert result.status.backup == IDS[1]
    assert f"newer backup folder(s) {IDS[-1]} have no valid manifest and were passed over" in result.status.message


def test_s3_repository_damage_is_found_and_listed(s3_server, s3_env):
    """The same through SeaweedFS: a truncated artifact, a corrupt manifest and a deleted one."""
    from dockvault.storage import repository_for

    bucket = s3_server.bucket()
    policy = policy_doc(s3_server.storage(bucket, prefix="host-a"))
    repository = repository_for(policy)
    fill(repository)
    client = s3_server.client()
    key = lambda backup_id, name: f"host-a/{POLICY}/{backup_id}/{name}"  # noqa: E731
    client.put_object(Bucket=bucket, Key=key(IDS[0], ARTIFACT), Body=b"short")
    client.put_object(Bucket=bucket, Key=key(IDS[1], "manifest.json"), Body=b'{"apiVersion": "dockvault.io/v1a')
    client.delete_object(Bucket=bucket, Key=key(IDS[2], "manifest.json"))
    report = check_repository(POLICY, repository_for(policy))
    problems = {(d.backup_id, d.artifact): d.problem for d in report.damage}
    assert set(problems) == {(IDS[0], ARTIFACT), (IDS[1], MANIFEST_DAMAGE), (IDS[2], MANIFEST_DAMAGE)}, problems
    assert "5 bytes stored" in problems[(IDS[0], ARTIFACT)]
    assert problems[(IDS[1], MANIFEST_DAMAGE)].startswith("unreadable manifest")
    assert problems[(IDS[2], MANIFEST_DAMAGE)].startswith("no manifest")
    assert report.backups == 3 and not report.ok


@pytest.mark.docker
def test_a_scheduled_check_finds_the_damage_and_exports_it(tmp_path, engine):
    """spec.check through the standalone front end and the job runner: the check is due at once, records its
    outcome in the state, fails the pass, and the metric the alert watches counts the damage."""
    from prometheus_client import CollectorRegistry

    from dockvault.frontends.standalone import Controller
    from dockvault.frontends.state import StateStore
    from dockvault.metrics import DockvaultMetrics

    repo, config = tmp_path / "repo", tmp_path / "config"
    config.mkdir()
    fill(LocalRepository(repo))
    doc = policy_doc({"local": {"path": str(repo)}}).to_dict()
    doc["spec"]["check"] = {"schedule": "0 4 * * *", "readData": True}
    (config / "vault.yaml").write_text(json.dumps(doc))

    def run_once(state_dir: str) -> tuple[bool, CollectorRegistry, StateStore]:
        state = StateStore(tmp_path / state_dir)  # a fresh state each time: the check is due at once
        controller = Controller(config_dir=config, state=state, engine=lambda: engine)
        registry = CollectorRegistry()
        controller.metrics = DockvaultMetrics(registry, controller.facts)
        try:
            return controller.run_once(), registry, state
        finally:
            controller.shutdown()

    ok, registry, state = run_once("state-1")
    labels = {"policy": POLICY, "host": "local"}
    assert ok and registry.get_sample_value("dockvault_check_damaged_artifacts", labels) == 0
    assert state.last_check(POLICY).succeeded and state.last_check(POLICY).backups == 3
    _flip(repo / POLICY / IDS[1] / ARTIFACT)
    (repo / POLICY / IDS[2] / "manifest.json").write_text("{}")
    ok, registry, state = run_once("state-2")
    assert not ok
    assert registry.get_sample_value("dockvault_check_damaged_artifacts", labels) == 2
    assert registry.get_sample_value("dockvault_check_last_run_timestamp_seconds", labels) is not None
    check = state.last_check(POLICY)
    assert not check.succeeded and check.damaged_backups == 2 and IDS[1] in check.message and IDS[2] in check.message
