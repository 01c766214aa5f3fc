#!/usr/bin/env python3
"""Differential and incremental volume backups: a full, a differential after 1% changed, restic's second backup
of the same change, and restores of a full, a differential and the 7th link of an incremental chain.

Run it inside the harness (private dockerd, fixture image):

    bash scripts/harness.sh python3 benchmarks/differential.py --size 1G
    bash scripts/harness.sh python3 benchmarks/differential.py --size 1G,4G --repeat 1    # the curve

Per size, in one run (every timed command through common.run_timed: wall time, peak RSS, CPU from wait4):

  1. A fresh volume of the size with volume_backup's content (35% small text files, 35% large logs, 30% random
     files), built for this run: the benchmark changes it, so it never uses the shared source volume.
  2. Point 0: `restic backup MOUNTPOINT` into a new local repository (its first backup; info only), then
     `dockvault backup diffbench --level full` (the policy declares `differential: {schedule: ...}`, so the full
     also stores tar's snapshot file), --repeat times; the last full is the base.
  3. 1% of the volume changes (seeded): new uploads (random binary files, 70% of the changed bytes), small text
     files rewritten (25%) and small text files deleted (5%). Point 1.
  4. Interleaved, --repeat times: `dockvault backup diffbench --level differential` and restic's second backup
     (incremental-forever; every repeat starts from a hard-linked copy of the repository as the first backup
     left it, so each one is a true second backup).
  5. An incremental chain, policy diffbench-inc (`incremental: {schedule: ...}`): a full, then 6 times the same
     1% change and `dockvault backup diffbench-inc --level incremental`. Point 7.
  6. Restores, interleaved, --repeat times, each a RestoreRequest by id run by `dockvault run --once` into a
     fresh volume: the full (point 0), the differential (point 1: the full, then the differential) and the 7th
     link of the chain (point 7: the full, then 6 incrementals). Each restored volume is checked against the
     volume as it was at that point (volume_backup.verify: every path and size, the folder count, sha256 of
     samples including changed files).

The restores read a second config folder holding the same policies without schedules, so that `run --once`
only restores (a policy with a schedule may also be due for a backup). Passwords of restic go through
RESTIC_PASSWORD_FILE, never argv. Targets are printed with PASS/MISS; nothing is asserted except correctness.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml

from common import (DOCKVAULT, BenchError, Method, Run, add_run_options, check_args, cli_startup, docker, dockvault_env,
                    human, log, machine, machine_line, mark, mountpoint, parse_size, print_rows, remove_volumes,
                    rss_floor, run_bench, run_timed, size_label, sync, tool_version, volume_exists)
from dockvault.engine.core import LABEL_POLICY, LABEL_PROBE
from volume_backup import (GENERATOR, MARKER, TextMaker, Tree, code_version, generate, pick_samples, scan,
                           sha256_file, split_sizes, verify)

# Names of this script alone: a dockvault starting a job removes the helpers left on the engine by its policy's
# name, so sharing another benchmark's policy name would kill that benchmark's helpers.
POLICY = "diffbench"
POLICY_CHAIN = "diffbench-inc"
PREFIX = "dockvault-diffbench"
LINKS = 7                       # the chain restored: a full and 6 incrementals
CHANGE = 0.01                   # share of the volume's bytes changed before each differential or incremental
SHARES = {"uploads": 0.70, "edits": 0.25, "deletes": 0.05}  # of the changed bytes
FULL_SCHEDULE = "30 17 * * 0"   # the seed's: full on Sunday 17:30, the partial ones daily at 17:45
PARTIAL_SCHEDULE = "45 17 * * *"

TARGETS = {
    "diff_bytes": 0.03,         # differential's stored bytes / the full's <=
    "diff_time": 0.20,          # differential's time / the full's <= (at 1 GiB)
    "diff_vs_restic": 1.2,      # differential's time / restic's second backup <=
    "chain_restore": 1.3,       # restore of the 7th link / restore of a full <=
}
METHODS = [
    ("full", "(full)   dockvault backup --level full"),
    ("diff", "(diff)   dockvault backup --level differential"),
    ("restic", "(restic) restic backup, the second (after the change)"),
    ("full'", "(full')  dockvault restore of the full"),
    ("diff'", "(diff')  dockvault restore of the differential (2 links)"),
    ("chain'", f"(chain') dockvault restore of link {LINKS} of an incremental chain"),
]


@dataclass
class StagedRun(Run):
    """common.Run and where a dockvault command's time went, from the engine's events of its helper containers:
    before the first helper was created (start-up, planning, checksum pre-pass), each helper's create -> start ->
    die -> destroy, and after the last one was removed (publishing, manifest, retention)."""

    stages: dict | None = None


def helper_stages(events: str, policy: str, since: float, seconds: float) -> dict:
    """The stages of one dockvault command (see StagedRun) that started at `since` (epoch seconds), from the
    `docker events` lines streamed while it ran (the engine keeps only its last 256 events for a later query,
    too few while other sessions use it). The transport probe (a `cat` container that `auto` runs before the
    first helper) is counted apart; a probe of another dockvault on the engine at the same time would be too."""
    helpers: dict[str, dict[str, float]] = {}
    probes: dict[str, dict[str, float]] = {}
    for line in events.splitlines():
        event = json.loads(line)
        if not since - 0.5 <= event.get("timeNano", 0) / 1e9 <= since + seconds + 0.5:
            continue
        labels = event.get("Actor", {}).get("Attributes", {})
        group = helpers if labels.get(LABEL_POLICY) == policy else probes if LABEL_PROBE in labels else None
        if group is not None and event.get("Action") in ("create", "start", "die", "destroy"):
            group.setdefault(event["Actor"]["ID"], {})[event["Action"]] = event["timeNano"] / 1e9
    rows = sorted((h for h in helpers.values() if {"create", "start", "die", "destroy"} <= h.keys()),
                  key=lambda h: h["create"])
    if not rows:
        return {"helpers": []}
    probe = [p for p in probes.values() if {"create", "destroy"} <= p.keys() and p["destroy"] <= rows[0]["create"]]
    return {"before_first_helper": rows[0]["create"] - since,
            "probe": sum(p["destroy"] - p["create"] for p in probe),
            "helpers": [{"create": h["start"] - h["create"], "run": h["die"] - h["start"],
                         "remove": h["destroy"] - h["die"]} for h in rows],
            "between_helpers": sum(b["create"] - a["destroy"] for a, b in zip(rows, rows[1:])),
            "after_last_helper": since + seconds - rows[-1]["destroy"]}


def stages_line(st: dict | None) -> str:
    if not st or not st["helpers"]:
        return "-"
    helpers = st["helpers"]
    total = {k: sum(h[k] for h in helpers) for k in ("create", "run", "remove")}
    runs = " ".join(f"{h['run']:.2f}" for h in helpers)
    return (f"before {st['before_first_helper']:.2f}s (probe {st['probe']:.2f}s) | {len(helpers)} helper(s): create+start {total['create']:.2f}s, "
            f"run {total['run']:.2f}s ({runs}), remove {total['remove']:.2f}s, "
            f"between {st['between_helpers']:.2f}s | after {st['after_last_helper']:.2f}s")


@dataclass
class Point:
    """The volume as it was when a backup was taken: what its restore must give back."""

    tree: Tree
    samples: dict[str, str]   # relative path -> sha256


def record_point(root: Path, seed: int, changed: list[str]) -> Point:
    """Scan the volume; samples: volume_backup's pick plus up to 6 of the files the last change wrote."""
    tree = scan(root)
    paths = pick_samples(tree, seed) + [p for p in changed if p in tree.files][-6:]
    return Point(tree, {p: sha256_file(root / p) for p in dict.fromkeys(paths)})


def change_volume(root: Path, size: int, rnd: random.Random, tag: str) -> tuple[dict, list[str]]:
    """Change CHANGE of the volume's bytes: new uploads, rewritten and deleted small text files (deterministic for
    a given `rnd`). Returns counts and bytes of each kind, and the paths written."""
    budget = {k: int(size * CHANGE * v) for k, v in SHARES.items()}
    texts = sorted(str(p.relative_to(root)) for p in (root / "docs").rglob("*.txt"))
    rnd.shuffle(texts)
    counts = {k: [0, 0] for k in SHARES}
    written = []

    folder = root / "uploads" / tag
    folder.mkdir(parents=True)
    for i, nbytes in enumerate(split_sizes(rnd, budget["uploads"], max(1, budget["uploads"] // (400 << 10)), 0.8, 4096)):
        path = folder / f"image-{i:04d}.jpg"
        path.write_bytes(rnd.randbytes(nbytes))
        written.append(str(path.relative_to(root)))
        counts["uploads"][0] += 1
        counts["uploads"][1] += nbytes

    text = TextMaker(rnd)
    while counts["edits"][1] < budget["edits"] and texts:
        rel = texts.pop()
        old = (root / rel).read_bytes()
        new = old[:len(old) // 2] + text.make(len(old) - len(old) // 2 + rnd.randint(-200, 400))
        (root / rel).write_bytes(new)
        written.append(rel)
        counts["edits"][0] += 1
        counts["edits"][1] += len(new)

    while counts["deletes"][1] < budget["deletes"] and texts:
        rel = texts.pop()
        counts["deletes"][1] += (root / rel).stat().st_size
        counts["deletes"][0] += 1
        os.remove(root / rel)
    sync()
    return {k: {"files": n, "bytes": b} for k, (n, b) in counts.items()}, written


def write_resource(path: Path, kind: str, name: str, spec: dict) -> None:
    resource = {"apiVersion": "dockvault.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}
    path.write_text(yaml.safe_dump(resource, sort_keys=False))


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


class Bench:
    def __init__(self, args: argparse.Namespace, size: int) -> None:
        self.args, self.size = args, size
        self.image = os.environ["DOCKVAULT_TEST_IMAGE"]
        self.token = uuid.uuid4().hex[:6]
        self.volume = f"{PREFIX}-src-{size_label(size)}-{self.token}"
        self.restore_volumes: list[str] = []
        self.methods = {k: Method(k, t) for k, t in METHODS}
        self.info: dict[str, Run] = {}       # single runs: restic's first backup, the chain's links
        self.backups: dict[str, dict] = {}   # method or link -> manifest facts of the backup it made
        self.points: dict[str, Point] = {}
        self.changes: list[dict] = []

    # ---- setup
    def setup(self) -> None:
        for leftover in docker("volume", "ls", "-q", "--filter", f"name={PREFIX}-").split():
            remove_volumes(leftover)  # of an earlier run of this script that was killed
        self.work = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-"))
        self.scratch, self.state = self.work / "scratch", self.work / "state"
        for d in (self.scratch, self.state):
            d.mkdir()
        docker("volume", "create", "--label", "dockvault.bench=1", self.volume)
        self.root = mountpoint(self.volume)
        log(f"building volume {self.volume}: {human(self.size)}, seed {self.args.seed}")
        t = time.perf_counter()
        counts = generate(self.root, self.size, self.args.seed)
        (self.root / MARKER).write_text(json.dumps({"generator": GENERATOR, "size": self.size, "seed": self.args.seed,
                                                    **counts}, indent=1) + "\n")
        sync()
        log(f"volume built in {time.perf_counter() - t:.1f}s")
        self.rnd = random.Random(self.args.seed * 1_000_003 + 11)

        self.repos = {POLICY: self.work / "repo", POLICY_CHAIN: self.work / "repo-inc"}
        self.config = {POLICY: self.work / "config", POLICY_CHAIN: self.work / "config-inc"}
        self.restore_config = self.work / "config-restore"
        self.restore_config.mkdir()
        for name, level in ((POLICY, "differential"), (POLICY_CHAIN, "incremental")):
            self.config[name].mkdir()
            spec = {"targets": [{"name": "data", "volume": {"name": self.volume}}],
                    "storage": {"local": {"path": str(self.repos[name])}},
                    "compression": {"algorithm": "zstd", "level": 3}, "retention": {"keepLast": 100}}
            write_resource(self.restore_config / f"{name}.yaml", "BackupPolicy", name, spec)
            write_resource(self.config[name] / "policy.yaml", "BackupPolicy", name,
                           {"schedule": FULL_SCHEDULE, level: {"schedule": PARTIAL_SCHEDULE}, **spec})
        self.env = dockvault_env(self.image, self.state)

        password = self.work / "restic-password"
        password.write_text(uuid.uuid4().hex + "\n")
        password.chmod(0o600)
        self.restic_repo, self.restic_cache = self.work / "restic", self.work / "restic-cache"
        self.restic_env = dict(os.environ, RESTIC_PASSWORD_FILE=str(password), RESTIC_CACHE_DIR=str(self.restic_cache))
        subprocess.run(["restic", "init", "--quiet", "--repo", str(self.restic_repo)], env=self.restic_env,
                       check=True, capture_output=True)
        self.load_start = os.getloadavg()

    # ---- commands
    def timed(self, cmd: list[str], label: str, env: dict[str, str]) -> Run:
        return run_timed(cmd, label=label, scratch=self.scratch, env=env)

    def dockvault(self, *args: str, policy: str, config: Path, label: str) -> StagedRun:
        events = subprocess.Popen(["docker", "events", "--filter", "type=container", "--format", "{{json .}}"],
                                  stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        try:
            run = run_timed([*DOCKVAULT, *args, "--config-dir", str(config), "--state-dir", str(self.state),
                             "--helper-image", self.image], label=label, scratch=self.scratch, env=self.env,
                            make=StagedRun)
            # the command started after run_timed's sync and quiet wait: its start is its end minus its wall time
            end = time.time() - run.flush_seconds
            time.sleep(0.3)
        finally:
            events.terminate()
            out, _ = events.communicate()
        run.stages = helper_stages(out, policy, end - run.seconds, run.seconds)
        return run

    def backup(self, policy: str, level: str, label: str) -> tuple[Run, dict]:
        before = set(os.listdir(self.repos[policy] / policy)) if (self.repos[policy] / policy).is_dir() else set()
        run = self.dockvault("backup", policy, "--level", level, policy=policy, config=self.config[policy], label=label)
        new = sorted(set(os.listdir(self.repos[policy] / policy)) - before)
        if len(new) != 1:
            raise BenchError(f"{label}: expected one new backup in {self.repos[policy] / policy}, found {new}")
        manifest = json.loads((self.repos[policy] / policy / new[0] / "manifest.json").read_text())
        spec, artifacts = manifest["spec"], manifest["status"]["artifacts"]
        if spec.get("level") != level:
            raise BenchError(f"{label}: backup {new[0]} has level {spec.get('level')!r}, not {level!r}: "
                             f"{manifest['status'].get('message')}")
        facts = {"id": new[0], "level": level, "base": spec.get("base"),
                 "bytes": sum(a["bytes"] for a in artifacts),
                 "archive_bytes": sum(a["bytes"] for a in artifacts if a.get("role") is None),
                 "snapshot_bytes": sum(a["bytes"] for a in artifacts if a.get("role") == "snapshot"),
                 "raw_bytes": sum(a["rawBytes"] for a in artifacts if a.get("role") is None)}
        run.output_bytes = facts["bytes"]
        return run, facts

    def restic_backup(self, label: str) -> Run:
        grown = tree_bytes(self.restic_repo)
        run = self.timed(["restic", "--repo", str(self.restic_repo), "backup", "--quiet", "--host", "diffbench",
                          str(self.root)], label, self.restic_env)
        run.output_bytes = tree_bytes(self.restic_repo) - grown
        return run

    def restore(self, key: str, policy: str, backup_id: str, point: str, i: int) -> Run:
        label = f"({key}) {self.methods[key].title}"
        vol = f"{PREFIX}-restore-{key.rstrip(chr(39))}-{self.token}-{i}"
        self.restore_volumes.append(vol)
        request = self.restore_config / f"restore-{key.rstrip(chr(39))}-{i}.yaml"
        write_resource(request, "RestoreRequest", f"diffbench-restore-{self.token}-{key.rstrip(chr(39))}-{i}", {
            "policy": policy, "backup": backup_id,
            "targets": [{"from": "data", "volume": {"name": vol, "overwrite": False}}]})
        try:
            run = self.dockvault("run", "--once", policy=policy, config=self.restore_config, label=label)
        finally:
            request.unlink()
        if not volume_exists(vol):
            raise BenchError(f"{label} exited 0 but volume {vol} does not exist")
        expected = self.points[point]
        verify(label, self.root, expected.tree, expected.samples, mountpoint(vol))
        return run

    def change(self, tag: str) -> list[str]:
        t = time.perf_counter()
        counts, written = change_volume(self.root, self.size, self.rnd, tag)
        self.changes.append(counts)
        log(f"change {tag}: " + ", ".join(f"{k} {v['files']} files {human(v['bytes'])}" for k, v in counts.items())
            + f" ({time.perf_counter() - t:.1f}s)")
        return written

    def note(self, key: str, run: Run, what: str = "") -> None:
        extra = f", {run.output_bytes:,} bytes" if run.output_bytes is not None else ""
        log(f"{what or key}: {run.seconds:7.2f}s{extra}, peak RSS {run.maxrss_kib / 1024:.1f} MiB (cpu "
            f"{run.cpu_seconds:.1f}s, sync after {run.flush_seconds:.2f}s, machine busy before {run.background:.0%} "
            f"/ during {run.machine_busy:.0%})")
        if isinstance(run, StagedRun):
            log(f"  stages: {stages_line(run.stages)}")

    # ---- the run
    def run(self) -> None:
        repeat, m = self.args.repeat, self.methods
        self.points["0"] = record_point(self.root, self.args.seed, [])
        log(f"point 0: {len(self.points['0'].tree.files)} files, {self.points['0'].tree.bytes:,} bytes")

        self.info["restic_first"] = run = self.restic_backup("restic first backup")
        self.note("restic first backup", run)
        for i in range(repeat):
            run, self.backups["full"] = self.backup(POLICY, "full", "(full) dockvault full")
            m["full"].runs.append(run)
            self.note(f"repeat {i + 1}/{repeat} full", run)

        self.points["1"] = record_point(self.root, self.args.seed, self.change("day-1"))
        pristine, pristine_cache = self.work / "restic-after-first", self.work / "restic-cache-after-first"
        subprocess.run(["cp", "-al", str(self.restic_repo), str(pristine)], check=True)
        subprocess.run(["cp", "-al", str(self.restic_cache), str(pristine_cache)], check=True)

        def restic_second(i: int) -> Run:
            for live, copy in ((self.restic_repo, pristine), (self.restic_cache, pristine_cache)):
                shutil.rmtree(live)
                subprocess.run(["cp", "-al", str(copy), str(live)], check=True)
            return self.restic_backup("(restic) restic second backup")

        def differential(i: int) -> Run:
            run, facts = self.backup(POLICY, "differential", "(diff) dockvault differential")
            if facts["base"] != self.backups["full"]["id"]:
                raise BenchError(f"differential {facts['id']} builds on {facts['base']}, not the full "
                                 f"{self.backups['full']['id']}")
            self.backups["diff"] = facts
            return run

        steps = [("diff", differential), ("restic", restic_second)]
        for i in range(repeat):
            for key, step in steps if i % 2 == 0 else steps[::-1]:
                run = step(i)
                m[key].runs.append(run)
                self.note(f"repeat {i + 1}/{repeat} {key}", run)

        # the incremental chain: a full of point 1, then 6 days of the same change
        run, facts = self.backup(POLICY_CHAIN, "full", "chain link 1 (full)")
        self.info["link1"], self.backups["link1"] = run, facts
        self.note("link 1", run, "chain link 1 (full)")
        written: list[str] = []
        for link in range(2, LINKS + 1):
            written = self.change(f"day-{link}")
            run, facts = self.backup(POLICY_CHAIN, "incremental", f"chain link {link} (incremental)")
            if facts["base"] != self.backups[f"link{link - 1}"]["id"]:
                raise BenchError(f"incremental {facts['id']} builds on {facts['base']}, not link {link - 1}")
            self.info[f"link{link}"], self.backups[f"link{link}"] = run, facts
            self.note(f"link {link}", run, f"chain link {link} (incremental)")
        self.points[str(LINKS)] = record_point(self.root, self.args.seed, written)

        restores = [("full'", POLICY, "full", "0"), ("diff'", POLICY, "diff", "1"),
                    ("chain'", POLICY_CHAIN, f"link{LINKS}", str(LINKS))]
        for i in range(repeat):
            for key, policy, which, point in restores if i % 2 == 0 else restores[::-1]:
                run = self.restore(key, policy, self.backups[which]["id"], point, i)
                m[key].runs.append(run)
                self.note(f"repeat {i + 1}/{repeat} {key}", run)
        # The restored volumes stay until `cleanup`: deleting tens of thousands of files between restores made the
        # next one slower on this ext4 (see s3_backup.py).

    def cleanup(self) -> None:
        remove_volumes(*self.restore_volumes, self.volume)
        if getattr(self, "work", None):
            shutil.rmtree(self.work, ignore_errors=True)

    # ---- report
    def summary(self) -> dict:
        m, b = self.methods, self.backups
        full, diff, restic = m["full"].seconds, m["diff"].seconds, m["restic"].seconds
        ratios = {
            "diff_bytes": b["diff"]["bytes"] / b["full"]["bytes"],
            "diff_time": diff / full,
            "diff_vs_restic": diff / restic,
            "chain_restore": m["chain'"].seconds / m["full'"].seconds,
            # info
            "diff_restore": m["diff'"].seconds / m["full'"].seconds,
            "restic_bytes_vs_diff": m["restic"].median("output_bytes") / b["diff"]["bytes"],
        }
        rss = {k: max(r.maxrss_kib for r in v.runs) / 1024 for k, v in m.items() if k != "restic"}
        rss |= {k: self.info[k].maxrss_kib / 1024 for k in self.info if k.startswith("link")}
        return {
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": {**machine("tar", "zstd"), "restic": tool_version(["restic", "version"])},
            "code": code_version(),
            "volume": {"name": self.volume, "size_arg": self.size, "seed": self.args.seed,
                       "points": {k: {"files": len(p.tree.files), "dirs": p.tree.dirs, "bytes": p.tree.bytes}
                                  for k, p in self.points.items()}},
            "changes": self.changes,
            "repeats": self.args.repeat,
            "methods": {k: v.summary(self.points["0"].tree.bytes) for k, v in m.items()},
            "single_runs": {k: {"seconds": r.seconds, "output_bytes": r.output_bytes, "peak_rss_mib": r.maxrss_kib / 1024,
                                "cpu_seconds": r.cpu_seconds, "machine_busy_during": r.machine_busy}
                            for k, r in self.info.items()},
            "backups": b,
            "stages": {**{k: median_run(v.runs).stages for k, v in m.items() if k != "restic"},
                       **{k: r.stages for k, r in self.info.items() if k != "restic_first"}},
            "ratios": ratios, "peak_rss": rss, "targets": TARGETS,
            "pass": {k: ratios[k] <= TARGETS[k] for k in TARGETS},
            "load_average": {"start": self.load_start, "end": os.getloadavg()},
            "rss_floor_mib": rss_floor(self.scratch),
            "dockvault_cli_startup_seconds": cli_startup(self.env),
        }


def median_run(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda r: r.seconds)[(len(runs) - 1) // 2]


def print_report(s: dict) -> None:
    M, R, P, T, B = s["methods"], s["ratios"], s["pass"], s["targets"], s["backups"]
    mach, vol = s["machine"], s["volume"]
    print()
    print(f"dockvault differential benchmark  {s['date']}")
    print(machine_line(mach, mach["restic"], mach["tar"], mach["zstd"]))
    code = s["code"]
    print(f"dockvault: commit {code['commit'] or '?'}{' + uncommitted changes' if code['modified'] else ''}, "
          f"sources sha256 {code['dockvault_sources_sha256']}")
    print(f"volume {vol['name']} ({human(vol['size_arg'])}, seed {vol['seed']}): " + "; ".join(
        f"point {k} {p['files']:,} files {p['bytes']:,} bytes" for k, p in vol["points"].items()))
    c = s["changes"][0]
    print(f"each change ({CHANGE:.0%}): " + ", ".join(f"{k} {v['files']} files {human(v['bytes'])}" for k, v in c.items()))
    print(f"repeats: {s['repeats']} (median shown); busy: share of all cores busy in the half second before the run")
    print()
    print(f"{'':8}{'method':52} {'seconds':>8} {'bytes stored':>14} {'RSS MiB':>8} {'cpu s':>6} {'busy':>5}  runs (s)")
    for k, v in M.items():
        out = f"{v['output_bytes']:,}" if v["output_bytes"] is not None else "-"
        print(f"{'(' + k + ')':8}{v['title']:52} {v['seconds_median']:8.2f} {out:>14} {v['peak_rss_mib']:8.1f} "
              f"{v['cpu_seconds_median']:6.1f} {statistics.median(v['machine_busy_before']):5.0%}  "
              + " ".join(f"{x:.2f}" for x in v["seconds"]))
    print()
    print("single runs (info):")
    for k, r in s["single_runs"].items():
        what = "restic first backup (before the change)" if k == "restic_first" else \
            f"chain {k.replace('link', 'link ')}: {B[k]['level']}"
        print(f"  {what:52} {r['seconds']:8.2f} {r['output_bytes']:>14,} {r['peak_rss_mib']:8.1f} {r['cpu_seconds']:6.1f}")
    print(f"  full: archive {B['full']['archive_bytes']:,} + snapshot file {B['full']['snapshot_bytes']:,} bytes; "
          f"differential: archive {B['diff']['archive_bytes']:,} + snapshot file {B['diff']['snapshot_bytes']:,} "
          f"(raw tar {B['diff']['raw_bytes']:,})")
    print()
    print("WHERE THE TIME GOES (the median run; from the engine's events of the helper containers)")
    for k, st in s["stages"].items():
        print(f"  {k:7} {stages_line(st)}")
    print("  before: from the command's start to its first helper's create (start-up, the transport probe's container,")
    print("  planning, reading the base's snapshot file, checksum pre-pass of restores); run: the helper's tar, start to exit; remove: exit to")
    print("  removal (overlayfs unmount); after: from the last removal to the command's exit (publish, manifest, retention)")
    print()
    print(f"RSS MiB: peak RSS (wait4 ru_maxrss); the floor of the measurement: `true` reports {s['rss_floor_mib']:.1f} MiB")
    print(f"dockvault CLI start-up (python -m dockvault --version, median of 3): {s['dockvault_cli_startup_seconds']:.2f}s")
    load = s["load_average"]
    print(f"load average {load['start'][0]:.2f} at start, {load['end'][0]:.2f} at end")
    print()
    print("RATIOS AND TARGETS")
    print_rows([
        ("differential bytes / full's", f"{R['diff_bytes']:.2%}", f"<= {T['diff_bytes']:.0%}", mark(P["diff_bytes"])),
        ("differential time / full's", f"{R['diff_time']:.2%}", f"<= {T['diff_time']:.0%}", mark(P["diff_time"])),
        ("differential / restic second", f"{R['diff_vs_restic']:.2f}x", f"<= {T['diff_vs_restic']}x",
         mark(P["diff_vs_restic"])),
        (f"restore link {LINKS} / full restore", f"{R['chain_restore']:.2f}x", f"<= {T['chain_restore']}x",
         mark(P["chain_restore"])),
        ("  restore differential / full, info", f"{R['diff_restore']:.2f}x", "-", ""),
        ("  restic bytes / differential's, info", f"{R['restic_bytes_vs_diff']:.2f}x", "-", ""),
        *[(f"  peak RSS ({k}), info", f"{v:.1f} MiB", "-", "") for k, v in s["peak_rss"].items()],
    ])


def print_curve(summaries: list[dict]) -> None:
    print()
    print("THE CURVE (medians)")
    print(f"  {'size':>8} {'full s':>8} {'diff s':>8} {'diff/full':>9} {'restic s':>8} {'diff/restic':>11} "
          f"{'bytes diff/full':>15} {'restore full s':>14} {'link 7 s':>8} {'ratio':>6}")
    for s in summaries:
        M, R = s["methods"], s["ratios"]
        print(f"  {human(s['volume']['size_arg']):>8} {M['full']['seconds_median']:8.2f} {M['diff']['seconds_median']:8.2f} "
              f"{R['diff_time']:9.1%} {M['restic']['seconds_median']:8.2f} {R['diff_vs_restic']:10.2f}x "
              f"{R['diff_bytes']:15.2%} {M['full' + chr(39)]['seconds_median']:14.2f} "
              f"{M['chain' + chr(39)]['seconds_median']:8.2f} {R['chain_restore']:5.2f}x")


def parse_sizes(text: str) -> list[int]:
    return [parse_size(part) for part in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--size", type=parse_sizes, default=parse_sizes("1G"), metavar="SIZE[,SIZE...]",
                        help="volume size, e.g. 256M or 1G, or a list (1G,4G: the curve) (default 1G)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats of the fulls, differentials, restic's second "
                                                              "backups and restores; the median is reported (default 3)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the volume content and its changes (default 1)")
    add_run_options(parser)
    args = parser.parse_args(argv)
    check_args(parser, args, example="bash scripts/harness.sh python3 benchmarks/differential.py --size 256M",
               tools=("docker", "restic", "tar", "zstd", "sync", "cp"), root=True)
    summaries: list[dict] = []
    for size in args.size:
        code = run_bench(Bench(args, size), args.json, print_report, summaries.append)
        if code:
            return code
    if len(summaries) > 1:
        print_curve(summaries)
    return 0


if __name__ == "__main__":
    sys.exit(main())
