"""Measured RTO of a restore drill on a volume of a given size (default 1 GiB), next to a plain restore.

Run through the harness: `scripts/harness.sh python3 benchmarks/drill_rto.py --size 1G`. Prints the backup
time, the plain restore time (RestoreRequest into a new volume) and the drill's measured RTO (restore into a
scratch volume + archive it again + compare every path), each in seconds and MB/s, with the peak RSS and CPU
seconds of the dockvault process that ran it.

Each step runs dockvault's Python API (run_backup, run_restore, run_drill) in a process of its own, started
like every timed command of these benchmarks (common.run_timed): by a small spawner process, with peak RSS
(ru_maxrss) and CPU seconds from os.wait4(). The seconds are dockvault's own: the wall time of run_backup,
the restore's duration and the drill's measured RTO.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import (Run, check_args, docker, mountpoint, parse_size, remove_volume, remove_volumes, rss_floor,
                    run_bench, run_timed)

VOLUME, RESTORED = "dockvault-rto-bench", "dockvault-rto-bench-restored"
STEPS = {"backup": "backup", "restore": "restore (RestoreRequest)", "drill": "drill = measured RTO"}


def size_arg(text: str) -> int:
    return parse_size(text, minimum=1)


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
    with open(root / "app.log", "wb") as out:
        line = 0
        while written < 2 * size // 3:
            chunk = "".join(f"2026-11-21T03:00:{line % 60:02d}Z INFO id={line} path=/{rnd.choice(words)} ms={line % 997}\n"
                            for line in range(line, line + 5000)).encode()
            out.write(chunk)
            written, line = written + len(chunk), line + 5000
    with open(root / "random.bin", "wb") as blob:
        while written < size:
            blob.write(os.urandom(1 << 20))
            written += 1 << 20
    return written


def run_step(step: str, repo_dir: str) -> dict:
    """In the child process: one step through dockvault's Python API; its figures for the parent."""
    import docker as docker_sdk

    from dockvault.actions.backup import run_backup
    from dockvault.actions.drill import run_drill
    from dockvault.actions.restore import run_restore
    from dockvault.api import BackupPolicy, RestoreRequest
    from dockvault.engine.core import Engine
    from dockvault.storage.local import LocalRepository

    engine = Engine(docker_sdk.from_env(version="auto", timeout=600), helper_image=os.environ["DOCKVAULT_TEST_IMAGE"])
    policy = BackupPolicy.model_validate({
        "apiVersion": "dockvault.io/v1alpha1", "kind": "BackupPolicy", "metadata": {"name": "rto"},
        "spec": {"targets": [{"name": "data", "volume": {"name": VOLUME}}], "storage": {"local": {"path": repo_dir}}}})
    repo = LocalRepository(repo_dir)
    if step == "backup":
        clock = time.monotonic()
        backup = run_backup(policy, engine=engine, repository=repo)
        seconds = time.monotonic() - clock
        if not backup.succeeded:
            raise SystemExit(f"backup failed: {backup.record.status.message}")
        return {"seconds": seconds, "artifact_bytes": backup.record.status.bytes}
    if step == "restore":
        request = RestoreRequest.model_validate({
            "apiVersion": "dockvault.io/v1alpha1", "kind": "RestoreRequest", "metadata": {"name": "r"},
            "spec": {"policy": "rto", "targets": [{"from": "data", "volume": {"name": RESTORED}}]}})
        restore = run_restore(request, policy, engine=engine, repository=repo)
        if not restore.succeeded:
            raise SystemExit(f"restore failed: {restore.status.message}")
        return {"seconds": restore.status.duration_seconds}
    drill = run_drill(policy, engine=engine, repository=repo)
    if not drill.succeeded:
        raise SystemExit(f"drill failed: {drill.drill.message}")
    return {"seconds": drill.seconds, "message": drill.drill.message}


class Bench:
    """The three steps on one volume: setup, run, summary and cleanup for common.run_bench."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work: Path | None = None
        self.runs: dict[str, Run] = {}
        self.figures: dict[str, dict] = {}

    def setup(self) -> None:
        for name in (VOLUME, RESTORED):
            remove_volume(name)
        docker("volume", "create", VOLUME)
        self.size = fill(mountpoint(VOLUME), self.args.size)
        self.work = Path(tempfile.mkdtemp(dir=os.environ.get("TMPDIR", "/var/tmp")))
        (self.work / "repo").mkdir()

    def run(self) -> None:
        assert self.work is not None
        for step, label in STEPS.items():
            result = self.work / f"{step}.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--step", step, str(self.work / "repo"), str(result)]
            self.runs[step] = run_timed(cmd, label=label, scratch=self.work, max_wait=0)
            self.figures[step] = json.loads(result.read_text())

    def summary(self) -> dict:
        assert self.work is not None
        return {"volume_bytes": self.size, "artifact_bytes": self.figures["backup"]["artifact_bytes"],
                "steps": {step: {"seconds": self.figures[step]["seconds"], "peak_rss_mib": run.maxrss_kib / 1024,
                                 "cpu_seconds": run.cpu_seconds} for step, run in self.runs.items()},
                "drill_message": self.figures["drill"]["message"], "rss_floor_mib": rss_floor(self.work)}

    def cleanup(self) -> None:
        remove_volumes(VOLUME, RESTORED)
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)


def print_report(s: dict) -> None:
    mb = s["volume_bytes"] / 1e6
    print(f"volume: {mb:.0f} MB; stored artifact {s['artifact_bytes'] / 1e6:.0f} MB")
    for step, label in STEPS.items():
        v = s["steps"][step]
        print(f"{label:<26} {v['seconds']:7.2f} s  {mb / v['seconds']:7.1f} MB/s  "
              f"peak RSS {v['peak_rss_mib']:6.1f} MiB  cpu {v['cpu_seconds']:6.2f} s")
    print(f"drill: {s['drill_message']}")
    print(f"peak RSS and cpu: the process that ran the step (start-up included), from wait4 of a child started by a "
          f"small spawner process (floor: `true` reports {s['rss_floor_mib']:.1f} MiB)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=size_arg, default=size_arg("1G"),
                        help="volume size, e.g. 256M or 1G (default 1G)")
    parser.add_argument("--step", nargs=3, help=argparse.SUPPRESS)  # internal: STEP REPO_DIR RESULT_FILE, in a child
    args = parser.parse_args(argv)
    if args.step:
        step, repo_dir, result = args.step
        Path(result).write_text(json.dumps(run_step(step, repo_dir)))
        return 0
    check_args(parser, args, example="bash scripts/harness.sh python3 benchmarks/drill_rto.py --size 256M", root=True)
    return run_bench(Bench(args), False, print_report)


if __name__ == "__main__":
    sys.exit(main())
