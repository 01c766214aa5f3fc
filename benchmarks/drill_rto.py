"""Measured RTO of a restore drill on a volume of a given size (default 1 GiB), next to a plain restore.

Run through the harness: `scripts/harness.sh python3 benchmarks/drill_rto.py --size 1G`. Prints the backup
time, the plain restore time (RestoreRequest into a new volume) and the drill's measured RTO (restore into a
scratch volume + archive it again + compare every path), each in seconds and MB/s.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dockvault.actions.backup import run_backup  # noqa: E402
from dockvault.actions.restore import run_restore  # noqa: E402
from dockvault.actions.verify import run_drill  # noqa: E402
from dockvault.api import BackupPolicy, RestoreRequest  # noqa: E402
from dockvault.engine.core import Engine  # noqa: E402
from dockvault.storage.local import LocalRepository  # noqa: E402

UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def size_arg(text: str) -> int:
    return int(float(text[:-1]) * UNITS[text[-1].upper()]) if text[-1].upper() in UNITS else int(text)


def fill(root: Path, size: int, seed: int = 1) -> int:
    """A third small text files, a third log-like text, a third random bytes."""
    rnd = random.Random(seed)
    words = [f"w{rnd.randrange(10**6):x}" for _ in range(4000)]
    written, i = 0, 0
    while written < size // 3:
        folder = root / "docs" / f"d{i % 100}"
        folder.mkdir(parents=True, exist_ok=True)
        body = " ".join(rnd.choices(words, k=rnd.randint(20, 2000))).encode()
        (folder / f"f{i}.txt").write_bytes(body)
        written, i = written + len(body), i + 1
    with open(root / "app.log", "wb") as log:
        line = 0
        while written < 2 * size // 3:
            chunk = "".join(f"2026-11-21T03:00:{line % 60:02d}Z INFO id={line} path=/{rnd.choice(words)} ms={line % 997}\n"
                            for line in range(line, line + 5000)).encode()
            log.write(chunk)
            written, line = written + len(chunk), line + 5000
    with open(root / "random.bin", "wb") as blob:
        while written < size:
            blob.write(os.urandom(1 << 20))
            written += 1 << 20
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=size_arg, default=size_arg("1G"))
    args = parser.parse_args()
    client = docker.from_env(version="auto", timeout=600)
    engine = Engine(client, helper_image=os.environ["DOCKVAULT_TEST_IMAGE"])
    volume, restored = "dockvault-rto-bench", "dockvault-rto-bench-restored"
    for name in (volume, restored):
        try:
            client.volumes.get(name).remove(force=True)
        except docker.errors.NotFound:
            pass
    client.volumes.create(volume)
    size = fill(Path(client.volumes.get(volume).attrs["Mountpoint"]), args.size)
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/var/tmp")) as repo_dir:
        policy = BackupPolicy.model_validate({
            "apiVersion": "dockvault.io/v1alpha1", "kind": "BackupPolicy", "metadata": {"name": "rto"},
            "spec": {"targets": [{"name": "data", "volume": {"name": volume}}], "storage": {"local": {"path": repo_dir}},
                     "verify": {}}})
        repo = LocalRepository(repo_dir)
        os.sync()
        clock = time.monotonic()
        backup = run_backup(policy, engine=engine, repository=repo)
        backup_s = time.monotonic() - clock
        assert backup.succeeded, backup.record.status.message
        request = RestoreRequest.model_validate({
            "apiVersion": "dockvault.io/v1alpha1", "kind": "RestoreRequest", "metadata": {"name": "r"},
            "spec": {"policy": "rto", "targets": [{"from": "data", "volume": {"name": restored}}]}})
        os.sync()
        restore = run_restore(request, policy, engine=engine, repository=repo)
        assert restore.succeeded, restore.status.message
        os.sync()
        drill = run_drill(policy, engine=engine, repository=repo)
        assert drill.succeeded, drill.verification.message
    for name in (volume, restored):
        client.volumes.get(name).remove(force=True)
    mb = size / 1e6
    print(f"volume: {mb:.0f} MB; stored artifact {backup.record.status.bytes / 1e6:.0f} MB")
    for label, seconds in (("backup", backup_s), ("restore (RestoreRequest)", restore.status.duration_seconds),
                           ("drill = measured RTO", drill.seconds)):
        print(f"{label:<26} {seconds:7.2f} s  {mb / seconds:7.1f} MB/s")
    print(f"drill: {drill.verification.message}")


if __name__ == "__main__":
    main()
