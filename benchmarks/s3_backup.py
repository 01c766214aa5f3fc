#!/usr/bin/env python3
"""S3 backup/restore benchmark: dockvault into SeaweedFS on loopback, against a plain boto3 pipeline.

Run it inside the harness (private dockerd, fixture image):

    bash scripts/harness.sh python3 benchmarks/s3_backup.py --size 1G
    bash scripts/harness.sh python3 benchmarks/s3_backup.py --size 256M --repeat 1

The script starts its own S3 server, SeaweedFS `weed mini` on 127.0.0.1 (tests/s3fixture.py), with one
bucket for every method. Methods, interleaved per repeat (a, b, c, a', b', c'; the next repeat c, b, a,
c', b', a'), so that drift hits all of them alike; `sync` runs before every timed command:

  (a)  plain:  tar -cf - -C MOUNTPOINT . | zstd -T0 -3 | python -c UPLOAD     (boto3 upload_fileobj, defaults)
  (b)  dockvault backup POLICY --config-dir DIR     storage.s3 (keys from env vars), zstd level 3, keepLast 1
  (c)  the same with encryption.age                 (a key generated with pyrage)
  (a') plain:  python -c DOWNLOAD | zstd -d | tar -x -C MOUNTPOINT           (boto3 get_object streamed to stdout)
  (b') dockvault run --once --config-dir DIR        a RestoreRequest into a fresh volume
  (c') the same from the encrypted backup

Every restore goes into a fresh Docker volume: (a') into the Mountpoint of one created just before its
timer, (b') and (c') into one that dockvault creates; they are removed at the end. Each is checked against
the source (paths and sizes of all files, sha256 of samples: volume_backup.verify). --transport pins
dockvault's helper stream (default auto: each dockvault run probes the engine; the report names what each
run used). Wall time, peak RSS and CPU seconds come from common.run_timed (wait4 of the command, started by
a small spawner process). Targets are printed with PASS/MISS; nothing is asserted except correctness.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import os
import re
import shlex
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyrage
import yaml

from common import (DOCKVAULT, BenchError, Method, Run, add_run_options, check_args, cli_startup, docker,
                    dockvault_env, human, log, machine, machine_line, mark, mountpoint, parse_size, print_methods,
                    print_rows, process_cpu_reader, remove_volumes, remove_work_and_source, rss_floor, run_bench,
                    run_timed, tool_version, volume_exists)
from volume_backup import VOLUME_PREFIX, code_version, prepare_source, verify

sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # the repository root, for tests/s3fixture.py
from tests.s3fixture import S3Server  # noqa: E402

# Not volume_backup's or db_dump's "bench": a dockvault starting a job removes the helpers of its policy's name
# left on the engine, so one of those running on the same engine would kill this benchmark's helpers.
POLICY = "s3bench"
POLICY_AGE = "s3bench-age"
PLAIN_KEY = "plain/x.tar.zst"
PRIME = "'"  # restore methods are the backup's key with a prime: a', b', c'
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
AGE_MAGIC = b"age-encryption.org/v1\n"

TARGETS = {
    "backup_vs_plain": 0.85,     # throughput (b)/(a) >=
    "encryption_cost": 0.10,     # time (c)/(b) - 1 <=
    "restore_vs_plain": 0.85,    # throughput (b')/(a') >=
    "rss_mib": 150.0,            # peak RSS of every dockvault command <=
}

# The plain method's S3 end: a boto3 client like the fixture's (path-style, checksums only when required,
# as dockvault's), then upload_fileobj from stdin with TransferConfig defaults, or one get_object streamed to
# stdout: one GET, read in order, as dockvault reads an artifact. (download_fileobj into a pipe buffers its
# concurrent ranges: 160-174 MiB peak against 49 MiB, and it was never faster here.)
PLAIN_S3 = """\
import os, shutil, sys
import boto3
from botocore.config import Config
direction, endpoint, bucket, key, key_env, secret_env = sys.argv[1:]
s3 = boto3.session.Session().client(
    "s3", endpoint_url=endpoint, region_name="us-east-1",
    aws_access_key_id=os.environ[key_env], aws_secret_access_key=os.environ[secret_env],
    config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                  response_checksum_validation="when_required"))
if direction == "upload":
    s3.upload_fileobj(sys.stdin.buffer, bucket, key)
else:
    shutil.copyfileobj(s3.get_object(Bucket=bucket, Key=key)["Body"], sys.stdout.buffer, 1 << 20)
    sys.stdout.buffer.flush()
"""


def write_resource(path: Path, kind: str, name: str, spec: dict) -> None:
    """A dockvault resource (BackupPolicy, RestoreRequest) as the YAML file the CLI reads from --config-dir."""
    resource = {"apiVersion": "dockvault.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}
    path.write_text(yaml.safe_dump(resource, sort_keys=False))


@dataclass
class S3Run(Run):
    """common.Run and the CPU the S3 server spent during the run (it serves every method alike)."""

    weed_cpu: float | None = None
    transport: str | None = None  # dockvault's helper stream: fifo or api (see --transport)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.image = os.environ["DOCKVAULT_TEST_IMAGE"]
        self.token = uuid.uuid4().hex[:6]
        self.restore_volumes: list[str] = []
        self.server: S3Server | None = None
        self.methods = {k: Method(k, t) for k, t in [
            ("a", "(a)  plain: tar | zstd -T0 -3 | boto3 upload"),
            ("b", "(b)  dockvault backup (s3)"),
            ("c", "(c)  dockvault backup (s3 + age)"),
            ("a'", "(a') plain: get_object | zstd -d | tar -x"),
            ("b'", "(b') dockvault run --once (restore)"),
            ("c'", "(c') dockvault run --once (restore, age)"),
        ]}

    # ---- setup
    def setup(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="dockvault-s3-bench-"))
        self.scratch = self.work / "scratch"
        self.state = self.work / "state"
        self.config = {POLICY: self.work / "config-s3", POLICY_AGE: self.work / "config-s3-age"}
        for d in (self.scratch, self.state, *self.config.values()):
            d.mkdir()
        (self.volume, self.source_root, self.marker, self.source,
         self.samples) = prepare_source(self.args.size, self.args.seed, f"{VOLUME_PREFIX}-s3restore-")

        self.server = S3Server(self.work / "seaweedfs")
        t = time.perf_counter()
        self.server.start()
        log(f"weed mini ready in {time.perf_counter() - t:.1f}s at {self.server.endpoint} (data in {self.server.root})")
        self.client = self.server.client()
        self.bucket = self.server.bucket("bench")
        self.weed_cpu = process_cpu_reader(self.server.process.pid)

        identity = pyrage.x25519.Identity.generate()
        key_file = self.work / "age-key.txt"
        key_file.write_text(f"# public key: {identity.to_public()}\n{identity}\n")
        key_file.chmod(0o600)
        encryption = {"age": {"recipients": [str(identity.to_public())], "identityFrom": {"file": str(key_file)}}}
        for name, extra in ((POLICY, {}), (POLICY_AGE, {"encryption": encryption})):
            spec = {"targets": [{"name": "data", "volume": {"name": self.volume}}],
                    "storage": self.server.storage(self.bucket), "compression": {"algorithm": "zstd", "level": 3},
                    "retention": {"keepLast": 1}, **extra}
            write_resource(self.config[name] / "policy.yaml", "BackupPolicy", name, spec)
        self.load_start = os.getloadavg()
        self.env = {**dockvault_env(self.image, self.state), **self.server.env}
        self.env.pop("DOCKVAULT_TRANSPORT", None)  # --transport says which, on the command line
        self.plain_env = {**os.environ, **self.server.env}

    def run_timed(self, cmd: list[str], *, label: str, env: dict[str, str]) -> S3Run:
        return run_timed(cmd, label=label, scratch=self.scratch, env=env, make=S3Run,
                         counters={"weed_cpu": self.weed_cpu})

    def run_dockvault(self, *args: str, policy: str, label: str) -> S3Run:
        """`dockvault ARGS` on `policy`'s config dir; notes the helper transport its log names (`auto` resolved)."""
        pinned = [] if self.args.transport == "auto" else ["--transport", self.args.transport]
        run = self.run_timed([*DOCKVAULT, *pinned, *args, "--config-dir", str(self.config[policy]),
                              "--state-dir", str(self.state), "--helper-image", self.image], label=label, env=self.env)
        found = re.findall(r"helper streams use the (\w+) transport", (self.scratch / "stderr.txt").read_text())
        run.transport = found[-1] if found else self.args.transport
        return run

    def plain_s3(self, direction: str, key: str) -> str:
        assert self.server is not None
        return shlex.join([sys.executable, "-c", PLAIN_S3, direction, self.server.endpoint, self.bucket, key,
                           *self.server.env])

    def object_size(self, key: str, magic: bytes) -> int:
        """Size of the object at `key`, after checking that it starts with `magic` (zstd or age)."""
        head = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes=0-{len(magic) - 1}")
        if head["Body"].read() != magic:
            raise BenchError(f"s3://{self.bucket}/{key} does not start with {magic!r}")
        return self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"]

    def artifact_key(self, policy: str, suffix: str) -> str:
        keys = [item["Key"] for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=f"{policy}/") for item in page.get("Contents", [])
                if item["Key"].endswith(f"/data.{suffix}")]
        if len(keys) != 1:
            raise BenchError(f"expected exactly one data.{suffix} of policy {policy} (keepLast: 1), found {keys}")
        return keys[0]

    def fresh_volume(self, key: str, i: int) -> str:
        name = f"{VOLUME_PREFIX}-s3restore-{key.rstrip(PRIME)}-{self.token}-{i}"
        self.restore_volumes.append(name)
        return name

    # ---- methods
    def backup_plain(self, i: int) -> S3Run:
        script = (f"tar -cf - -C {shlex.quote(str(self.source_root))} . | zstd -q -T0 -3 | "
                  + self.plain_s3("upload", PLAIN_KEY))
        run = self.run_timed(["bash", "-o", "pipefail", "-c", script], label="(a) plain backup", env=self.plain_env)
        run.output_bytes = self.object_size(PLAIN_KEY, ZSTD_MAGIC)
        return run

    def backup_dockvault(self, policy: str, label: str) -> S3Run:
        run = self.run_dockvault("backup", policy, policy=policy, label=label)
        encrypted = policy == POLICY_AGE
        key = self.artifact_key(policy, "tar.zst.age" if encrypted else "tar.zst")
        run.output_bytes = self.object_size(key, AGE_MAGIC if encrypted else ZSTD_MAGIC)
        return run

    def restore_plain(self, i: int) -> S3Run:
        vol = self.fresh_volume("a", i)
        docker("volume", "create", "--label", "dockvault.bench=1", vol)
        target = mountpoint(vol)
        script = self.plain_s3("download", PLAIN_KEY) + f" | zstd -q -d | tar -x -C {shlex.quote(str(target))}"
        run = self.run_timed(["bash", "-o", "pipefail", "-c", script], label="(a') plain restore", env=self.plain_env)
        verify("(a') plain restore", self.source_root, self.source, self.samples, target)
        return run

    def restore_dockvault(self, policy: str, key: str, i: int) -> S3Run:
        label = f"({key}) dockvault restore"
        vol = self.fresh_volume(key, i)
        request = self.config[policy] / f"restore-{i}.yaml"
        write_resource(request, "RestoreRequest", f"bench-restore-{self.token}-{i}", {
            "policy": policy, "backup": "latest",
            "targets": [{"from": "data", "volume": {"name": vol, "overwrite": False}}]})
        try:
            run = self.run_dockvault("run", "--once", policy=policy, label=label)
        finally:
            request.unlink()
        if not volume_exists(vol):
            raise BenchError(f"{label} exited 0 but volume {vol} does not exist")
        verify(label, self.source_root, self.source, self.samples, mountpoint(vol))
        return run

    def run(self) -> None:
        backups = [("a", self.backup_plain),
                   ("b", lambda i: self.backup_dockvault(POLICY, "(b) dockvault backup")),
                   ("c", lambda i: self.backup_dockvault(POLICY_AGE, "(c) dockvault backup, age"))]
        restores = [("a'", self.restore_plain),
                    ("b'", lambda i: self.restore_dockvault(POLICY, "b'", i)),
                    ("c'", lambda i: self.restore_dockvault(POLICY_AGE, "c'", i))]
        for i in range(self.args.repeat):
            order = backups + restores if i % 2 == 0 else backups[::-1] + restores[::-1]
            for key, step in order:
                run = step(i)
                self.methods[key].runs.append(run)
                extra = f", {run.output_bytes} bytes" if run.output_bytes is not None else ""
                extra += f", {run.transport} transport" if run.transport else ""
                log(f"repeat {i + 1}/{self.args.repeat} {key:2}: {run.seconds:7.2f}s{extra}, "
                    f"peak RSS {run.maxrss_kib / 1024:.1f} MiB (cpu {run.cpu_seconds:.1f}s, weed cpu "
                    f"{run.weed_cpu or 0:.1f}s, sync after {run.flush_seconds:.2f}s, "
                    f"machine busy before {run.background:.0%} / during {run.machine_busy:.0%})")
        # The restored volumes stay until the end (`cleanup`): on this ext4 (online discard), deleting tens of
        # thousands of files made the next restore's `tar -x` spend up to twice the kernel time creating files.

    def cleanup(self) -> None:
        remove_volumes(*self.restore_volumes)
        if self.server is not None:
            self.server.stop()
        remove_work_and_source(self)

    # ---- report
    def summary(self) -> dict:
        m = self.methods
        raw = self.source.bytes

        def with_sync(key: str) -> float:
            return statistics.median(r.seconds + r.flush_seconds for r in m[key].runs)

        ratios = {
            "backup_vs_plain": m["a"].seconds / m["b"].seconds,
            "encryption_cost": m["c"].seconds / m["b"].seconds - 1,
            "restore_vs_plain": m["a'"].seconds / m["b'"].seconds,
            # info
            "backup_age_vs_plain": m["a"].seconds / m["c"].seconds,
            "restore_age_vs_plain": m["a'"].seconds / m["c'"].seconds,
            "restore_encryption_cost": m["c'"].seconds / m["b'"].seconds - 1,
            # dockvault's helper container is removed inside its run, and that unmount syncs the whole filesystem
            # (the S3 server's fresh data and a restored volume included); the plain pipelines leave it to `sync`
            "backup_vs_plain_with_sync": with_sync("a") / m["b"].seconds,
            "restore_vs_plain_with_sync": with_sync("a'") / m["b'"].seconds,
            "size_vs_plain": m["b"].median("output_bytes") / m["a"].median("output_bytes"),
            "age_overhead_bytes": m["c"].median("output_bytes") - m["b"].median("output_bytes"),
        }
        rss = {k: max(r.maxrss_kib for r in m[k].runs) / 1024 for k in m}
        checks = {
            "backup_vs_plain": ratios["backup_vs_plain"] >= TARGETS["backup_vs_plain"],
            "encryption_cost": ratios["encryption_cost"] <= TARGETS["encryption_cost"],
            "restore_vs_plain": ratios["restore_vs_plain"] >= TARGETS["restore_vs_plain"],
            **{f"rss_{k}": rss[k] <= TARGETS["rss_mib"] for k in ("b", "c", "b'", "c'")},
        }
        methods = {}
        for k, v in m.items():
            methods[k] = v.summary(raw)
            methods[k]["weed_cpu_seconds_median"] = v.median("weed_cpu")
            methods[k]["transports"] = [r.transport for r in v.runs]
        return {
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": {**machine("zstd", "tar"), "weed": tool_version(["weed", "version"]),
                        **{p: importlib.metadata.version(p) for p in ("boto3", "pyrage")}},
            "code": code_version(),
            "work_dir": str(self.work),
            "s3": {"endpoint": self.server.endpoint if self.server else None, "bucket": self.bucket},
            "volume": {"name": self.volume, "size_arg": self.args.size, "raw_bytes": raw, "files": len(self.source.files),
                       "dirs": self.source.dirs, "seed": self.args.seed},
            "repeats": self.args.repeat,
            "transport_option": self.args.transport,
            "methods": methods,
            "ratios": ratios, "peak_rss": rss, "targets": TARGETS, "pass": checks,
            "load_average": {"start": self.load_start, "end": os.getloadavg()},
            "dockvault_cli_startup_seconds": cli_startup(self.env),
            "rss_floor_mib": rss_floor(self.scratch),
        }


def print_report(s: dict) -> None:
    M, R, P, T, rss = s["methods"], s["ratios"], s["pass"], s["targets"], s["peak_rss"]
    vol, mach = s["volume"], s["machine"]
    print()
    print(f"dockvault S3 benchmark  {s['date']}")
    print(machine_line(mach, mach["zstd"], mach["tar"], mach["weed"], f"boto3 {mach['boto3']}",
                       f"pyrage {mach['pyrage']}"))
    print(f"volume {vol['name']}: {vol['raw_bytes']:,} bytes ({human(vol['raw_bytes'])}) in {vol['files']:,} files, "
          f"{vol['dirs']} dirs, seed {vol['seed']}")
    code = s["code"]
    print(f"dockvault: commit {code['commit'] or '?'}{' + uncommitted changes' if code['modified'] else ''}, "
          f"sources sha256 {code['dockvault_sources_sha256']}")
    print(f"S3: weed mini at {s['s3']['endpoint']}, bucket {s['s3']['bucket']}, data under {s['work_dir']}; "
          "every restore into a fresh Docker volume")
    print(f"repeats: {s['repeats']} (median shown; MB = 10^6 bytes of the volume's raw size)")
    print()
    header = (f"{'method':45} {'seconds':>8} {'MB/s':>7} {'output bytes':>13} {'RSS MiB':>8} {'cpu s':>6} "
              f"{'weed s':>6} {'sync s':>6} {'busy':>5}  runs (s)")
    print_methods(M, header, lambda v, out: (
        f"{v['title']:40} {v['seconds_median']:8.2f} {v['mb_per_s']:7.1f} {out:>13} {v['peak_rss_mib']:8.1f} "
        f"{v['cpu_seconds_median']:6.1f} {v['weed_cpu_seconds_median']:6.1f} {v['sync_after_seconds_median']:6.2f} "
        f"{statistics.median(v['machine_busy_before']):5.0%}  " + " ".join(f"{x:.2f}" for x in v["seconds"])))
    print("RSS MiB: peak RSS (wait4 ru_maxrss of the command, the largest over its runs; for a pipeline its largest")
    print(f"         process); the floor of the measurement: `true` reports {s['rss_floor_mib']:.1f} MiB")
    print("cpu s: user+sys of the command and the children it waited for (not dockvault's helper container's tar);")
    print("weed s: CPU of the S3 server during the run; sync s: the `sync` after the run (writeback left behind)")
    load = s["load_average"]
    print(f"busy: share of all cores busy in the half second before the run; load average {load['start'][0]:.2f} at "
          f"start, {load['end'][0]:.2f} at end")
    print(f"dockvault CLI start-up (python -m dockvault --version): {s['dockvault_cli_startup_seconds']:.2f}s")
    used = {k: v["transports"] for k, v in M.items() if v["transports"][0]}
    print(f"dockvault helper transport (--transport {s['transport_option']}), per run: "
          + ", ".join(f"({k}) {' '.join(t)}" for k, t in used.items()))
    if len({t for ts in used.values() for t in ts}) > 1:
        print("WARNING: the dockvault runs did not all use the same transport (`auto` probes the engine on every "
              "run): the ratios mix two stream paths; pin one with --transport fifo or --transport api")
    print()
    print("RATIOS AND TARGETS")
    rows = [
        ("backup throughput (b)/(a)", f"{R['backup_vs_plain']:.3f}x", f">= {T['backup_vs_plain']}x",
         mark(P["backup_vs_plain"])),
        ("encryption cost, backup (c)/(b)", f"{R['encryption_cost']:+.1%}", f"<= +{T['encryption_cost']:.0%}",
         mark(P["encryption_cost"])),
        ("restore throughput (b')/(a')", f"{R['restore_vs_plain']:.3f}x", f">= {T['restore_vs_plain']}x",
         mark(P["restore_vs_plain"])),
        *[(f"dockvault peak RSS ({k})", f"{rss[k]:.1f} MiB", f"<= {T['rss_mib']:.0f} MiB", mark(P[f"rss_{k}"]))
          for k in ("b", "c", "b'", "c'")],
        ("  backup (c)/(a), info", f"{R['backup_age_vs_plain']:.3f}x", "-", ""),
        ("  backup (b)/(a + sync), info", f"{R['backup_vs_plain_with_sync']:.3f}x", "-", ""),
        ("  restore (c')/(a'), info", f"{R['restore_age_vs_plain']:.3f}x", "-", ""),
        ("  restore (b')/(a' + sync), info", f"{R['restore_vs_plain_with_sync']:.3f}x", "-", ""),
        ("  age cost, restore (c')/(b')", f"{R['restore_encryption_cost']:+.1%}", "-", ""),
        ("  output size (b)/(a), info", f"{R['size_vs_plain']:.4f}", "-", ""),
        ("  age overhead (c)-(b), info", f"{R['age_overhead_bytes']:+,.0f} B", "-", ""),
    ]
    print_rows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--size", type=parse_size, default=parse_size("1G"), help="volume size, e.g. 256M or 1G (default 1G)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats of every method; the median is reported (default 3)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the volume content (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the test volume for the next run on the same engine")
    parser.add_argument("--transport", choices=("auto", "fifo", "api"), default="auto",
                        help="dockvault's helper stream transport (default auto: dockvault probes the engine)")
    add_run_options(parser)
    args = parser.parse_args(argv)
    check_args(parser, args, example="bash scripts/harness.sh python3 benchmarks/s3_backup.py --size 256M",
               tools=("docker", "tar", "zstd", "bash", "sync", "weed"), root=True)
    return run_bench(Bench(args), args.json, print_report)


if __name__ == "__main__":
    sys.exit(main())
