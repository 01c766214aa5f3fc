"""Standalone start-up: recovery first, then one listing of each policy's repository, which both the state and the
metrics facts are built from (each listing of an S3 repository is a round trip and a parse)."""

from __future__ import annotations

import yaml

from dockvault.frontends.standalone import Controller
from dockvault.frontends.state import StateStore
from dockvault.storage.local import LocalRepository
from tests.unit.builders import artifact, backup, policy_doc, utc
from tests.unit.test_kube_handlers import IdleEngine


def test_startup_lists_each_repository_once_after_the_recovery(tmp_path, monkeypatch):
    repository = LocalRepository(tmp_path / "repo")
    record = backup(utc(2026, 11, 21, 3), artifacts=[artifact("media")])
    writer = repository.begin("myapp", record.id)
    with writer.artifact("media.tar.zst") as out:
        out.write(b"archive")
    writer.commit(record)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "myapp.yaml").write_text(yaml.safe_dump(policy_doc(
        storage={"local": {"path": str(tmp_path / "repo")}})))
    controller = Controller(config_dir=tmp_path / "config", state=StateStore(tmp_path / "state"), engine=IdleEngine)
    steps: list[str] = []
    runner = controller.runner
    for name in ("recover", "list_backups"):
        real = getattr(runner, name)
        monkeypatch.setattr(runner, name, lambda *args, _name=name, _real=real: (steps.append(_name), _real(*args))[1])

    controller.startup()

    assert steps == ["recover", "list_backups"]
    assert [row[0] for row in controller.state.attempts("myapp")] == [record.id]  # the state, rebuilt from it
    [facts] = controller.facts()
    assert facts.policy == "myapp" and facts.repository_backups == 1  # and the metrics facts
