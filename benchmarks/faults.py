"""Reliability in figures: SIGKILL at random points of every job kind (tests/faults/crash.py, the code the fault
tier runs at small scale), and load: policies loaded and scheduled, a large repository listed, a /metrics scrape
and the service's RSS with many policies.

    bash scripts/harness.sh python3 benchmarks/faults.py              # 100 kills, load at 1,000 policies
    bash scripts/harness.sh python3 benchmarks/faults.py --kills 18 --backups 2000

It starts what it needs itself (PostgreSQL and MariaDB containers on the harness's engine, SeaweedFS on
127.0.0.1) and removes it again.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import yaml

from common import DOCKVAULT, BenchError, check_args, log, machine, machine_line

sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # the repository root, for tests/
from tests.faults.crash import FIGURES, KINDS, Site, Tally  # noqa: E402
from tests.s3fixture import S3Server  # noqa: E402
from tests.second_engine import free_port  # noqa: E402

TARGETS = {"load_seconds": 2.0, "list_local_seconds": 2.0, "list_s3_seconds": 2.0, "scrape_seconds": 0.1,
           "rss_mib": 150.0}


# ----------------------------------------------------------------------------------------- kills --
def run_kills(args, root: Path, s3: S3Server) -> dict[str, Tally]:
    import docker

    from tests.dbfixtures import start_maria_server, start_pg_server

    client = docker.from_env(version="auto", timeout=300)
    image = args.image
    per_kind = {kind: args.kills // len(KINDS) + (i < args.kills % len(KINDS)) for i, kind in enumerate(KINDS)}
    pg = maria = None
    tallies: dict[str, Tally] = {}
    try:
        if per_kind["postgres"]:
            pg = start_pg_server(client, image)
        if per_kind["mariadb"]:
            maria = start_maria_server(client, image)
        for kind in KINDS:
            if not per_kind[kind]:
                continue
            rng = random.Random(f"{args.seed}-{kind}")
            site = Site(kind, root / kind, client, image, pg=pg, maria=maria, s3=s3)
            tally = tallies[kind] = Tally()
            try:
                site.setup()
                log(f"{kind}: one job takes {site.duration:.1f}s; {per_kind[kind]} kills")
                for _ in range(per_kind[kind]):
                    tally.add(site.kill_once(rng))
            except Exception as exc:  # noqa: BLE001 - a set-up or job that fails is a figure, not the end
                tally.bad("failed_next", 1, f"{kind}: {type(exc).__name__}: {exc}")
            finally:
                site.close()
            for note in tally.notes:
                log(f"  {note[:400]}")
            log(f"{kind}: " + ", ".join(f"{f} {getattr(tally, f)}" for f in ("kills", *FIGURES)))
    finally:
        for server in (pg, maria):
            if server is not None:
                server.remove()
        client.close()
    return tallies


# ------------------------------------------------------------------------------------------ load --
def policy_doc(i: int, repo: Path, *, suspend: bool = False) -> dict:
    return {"apiVersion": "dockvault.io/v1alpha1", "kind": "BackupPolicy", "metadata": {"name": f"load-{i:04d}"},
            "spec": {"suspend": suspend, "schedule": f"{i % 60} {i % 24} * * *", "objectives": {"rpo": "25h", "rto": "1h"},
                     "targets": [{"name": "data", "volume": {"name": f"load-vol-{i}"}}],
                     "storage": {"local": {"path": str(repo)}}, "retention": {"keepLast": 7, "keepDaily": 14}}}


def fake_backups(policy: str, count: int) -> Iterator[tuple[str, bytes]]:
    """`count` complete backups of `policy` as (backup id, manifest bytes): one 1-byte artifact each."""
    from dockvault.api.backup import Artifact, Backup, BackupSpec, BackupStatus
    from dockvault.storage.base import manifest_chunks

    start = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    for n in range(count):
        when = start + dt.timedelta(hours=n)
        backup_id = when.strftime("%Y%m%dT%H%M%SZ")
        artifact = Artifact(target="data", source="volume", file="data.tar.zst", bytes=1, raw_bytes=1,
                            sha256=hashlib.sha256(b"x").hexdigest(), compression="zstd", started_at=when,
                            completed_at=when)
        record = Backup(metadata={"name": f"{policy}-{backup_id.lower()}"},
                        spec=BackupSpec(policy=policy, id=backup_id, trigger="schedule"),
                        status=BackupStatus(phase="Succeeded", started_at=when, completed_at=when,
                                            duration_seconds=1.0, bytes=1, artifacts=[artifact]))
        yield backup_id, b"".join(manifest_chunks(record))


def fake_local_repository(root: Path, policy: str, count: int) -> None:
    """The repository layout written straight (no fsync: only listing is measured)."""
    for backup_id, manifest in fake_backups(policy, count):
        folder = root / policy / backup_id
        folder.mkdir(parents=True)
        (folder / "data.tar.zst").write_bytes(b"x")
        (folder / "manifest.json").write_bytes(manifest)


def fake_s3_repository(s3: S3Server, bucket: str, policy: str, count: int) -> None:
    client = s3.client()

    def put(item: tuple[str, bytes]) -> None:
        backup_id, manifest = item
        client.put_object(Bucket=bucket, Key=f"{policy}/{backup_id}/data.tar.zst", Body=b"x")
        client.put_object(Bucket=bucket, Key=f"{policy}/{backup_id}/manifest.json", Body=manifest)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(put, fake_backups(policy, count)))


def timed_listing(env: dict[str, str], config: Path, policy: str) -> float:
    """Wall time of `dockvault get backups -p POLICY -o json` minus the CLI's start-up (`--version`)."""
    def wall(*args: str) -> float:
        t = time.perf_counter()
        subprocess.run([*DOCKVAULT, *args], env=env, check=True, capture_output=True)
        return time.perf_counter() - t
    start_up = min(wall("--version") for _ in range(3))
    return min(wall("get", "backups", "--config-dir", str(config), "-p", policy, "-o", "json") for _ in range(3)) \
        - start_up


def run_load(args, root: Path, s3: S3Server) -> dict[str, float]:
    from dockvault.frontends.standalone import Controller
    from dockvault.frontends.state import StateStore
    figures: dict[str, float] = {}
    config, repo = root / "load-config", root / "load-repo"
    config.mkdir()
    repo.mkdir()
    with open(config / "policies.yaml", "w") as f:
        yaml.safe_dump_all([policy_doc(i, repo) for i in range(args.policies)], f)
    # loaded and scheduled: the service's start-up path up to its first dispatch, without an engine
    controller = Controller(config_dir=config, state=StateStore(root / "load-state"), engine=lambda: None)
    t = time.perf_counter()
    controller.reload()
    due = [p for p in controller.resources().policies.values()]
    controller.runner.refresh_all(controller.resources())
    figures["load_seconds"] = time.perf_counter() - t
    assert len(due) == args.policies, f"{len(due)} policies loaded of {args.policies}"

    log(f"writing {args.backups} backups into a local repository and into S3")
    fake_local_repository(repo, "load-0000", args.backups)
    env = dict(os.environ, **s3.env)
    local_config = root / "load-local-config"
    local_config.mkdir()
    (local_config / "p.yaml").write_text(yaml.safe_dump(policy_doc(0, repo)))
    figures["list_local_seconds"] = timed_listing(env, local_config, "load-0000")
    bucket = s3.bucket("load")
    s3_config = root / "load-s3-config"
    s3_config.mkdir()
    doc = policy_doc(0, repo)
    doc["spec"]["storage"] = s3.storage(bucket)
    (s3_config / "p.yaml").write_text(yaml.safe_dump(doc))
    fake_s3_repository(s3, bucket, "load-0000", args.backups)
    figures["list_s3_seconds"] = timed_listing(env, s3_config, "load-0000")

    # the service with many policies, suspended (their volumes do not exist): /metrics scrape time and RSS
    service_config = root / "load-service-config"
    service_config.mkdir()
    with open(service_config / "policies.yaml", "w") as f:
        yaml.safe_dump_all([policy_doc(i, repo, suspend=True) for i in range(args.policies)], f)
    port = free_port()
    service = subprocess.Popen([*DOCKVAULT, "run", "--config-dir", str(service_config), "--state-dir",
                                str(root / "load-state-run"), "--metrics-addr", f"127.0.0.1:{port}"],
                               env=env, stdout=subprocess.DEVNULL,
                               stderr=open(root / "load-run.log", "wb"))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                opener.open(f"http://127.0.0.1:{port}/readyz", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or service.poll() is not None:
                    raise BenchError(f"the service did not become ready: "
                                     f"{(root / 'load-run.log').read_text()[-2000:]}") from None
                time.sleep(0.2)
        times = []
        for _ in range(10):
            t = time.perf_counter()
            body = opener.open(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
            times.append(time.perf_counter() - t)
        figures["scrape_seconds"] = sorted(times)[len(times) // 2]
        figures["scrape_bytes"] = len(body)
        status = Path(f"/proc/{service.pid}/status").read_text()
        figures["rss_mib"] = int(next(line.split()[1] for line in status.splitlines()
                                      if line.startswith("VmRSS:"))) / 1024
    finally:
        service.terminate()
        service.wait(30)
    return figures


# ----------------------------------------------------------------------------------------- report --
def print_kills(tallies: dict[str, Tally]) -> None:
    print("\nSIGKILL at random points (next start: `dockvault run --once`, then the next job)")
    print(f"  {'job kind':18} {'kills':>5}  {'corrupt/half-listed':>19} {'earlier lost':>12} {'apps stopped':>12} "
          f"{'leftovers':>9} {'next run failed':>15}")
    total = Tally()
    for kind, tally in tallies.items():
        total.add(tally)
        print(f"  {kind:18} {tally.kills:5}  " + " ".join(
            f"{getattr(tally, f):>{w}}" for f, w in zip(FIGURES, (19, 12, 12, 9, 15))))
    print(f"  {'all':18} {total.kills:5}  " + " ".join(
        f"{getattr(total, f):>{w}}" for f, w in zip(FIGURES, (19, 12, 12, 9, 15))))


def print_load(figures: dict[str, float], policies: int, backups: int) -> None:
    print("\nLoad")
    rows = [(f"{policies} policies loaded and scheduled", "load_seconds", "s"),
            (f"{backups} backups listed (local)", "list_local_seconds", "s"),
            (f"{backups} backups listed (S3, SeaweedFS)", "list_s3_seconds", "s"),
            (f"/metrics scrape, {policies} policies", "scrape_seconds", "s"),
            (f"service RSS, {policies} policies", "rss_mib", "MiB")]
    for title, key, unit in rows:
        value, target = figures[key], TARGETS[key]
        shown = f"{value * 1000:.0f} ms" if unit == "s" and value < 1 else f"{value:.2f} {unit}" if unit == "s" \
            else f"{value:.0f} {unit}"
        limit = f"{target * 1000:.0f} ms" if unit == "s" and target < 1 else f"{target:g} {unit}"
        print(f"  {title:42} {shown:>10}   target <= {limit:8} {'PASS' if value <= target else 'MISS'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=100, help="SIGKILLs over all job kinds (default 100; 0: none)")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--policies", type=int, default=1000)
    parser.add_argument("--backups", type=int, default=10000)
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    check_args(parser, args, example="bash scripts/harness.sh python3 benchmarks/faults.py --kills 20", root=True)
    args.image = os.environ["DOCKVAULT_TEST_IMAGE"]
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    print(machine_line(machine()))
    with tempfile.TemporaryDirectory(prefix="dockvault-faults-") as tmp:
        root = Path(tmp)
        s3 = S3Server(root / "seaweedfs")
        s3.start()
        try:
            tallies = run_kills(args, root, s3) if args.kills else {}
            figures = {} if args.skip_load else run_load(args, root, s3)
        finally:
            s3.stop()
    if tallies:
        print_kills(tallies)
    if figures:
        print_load(figures, args.policies, args.backups)
    if args.json:
        print(json.dumps({"kills": {k: {f: getattr(t, f) for f in ("kills", *FIGURES)} for k, t in tallies.items()},
                          "load": figures}, indent=1))
    return 0 if all(t.clean for t in tallies.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
