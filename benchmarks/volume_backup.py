#!/usr/bin/env python3
"""Volume backup/restore benchmark: dockvault (local socket and TCP+TLS) against the seed method, the raw host
limit, restic and borg.

Run it inside the harness (private dockerd, fixture image):

    make benchmark BENCH_ARGS="--size 1G"
    bash scripts/harness.sh python3 benchmarks/volume_backup.py --size 256M --repeat 3

Methods, per repeat the six backups then the six restores, so that drift (disk writeback, page cache, other
load) hits all of them alike; `sync` runs before every timed command:

  (a)  seed:   docker run --rm --network none -v VOL:/source:ro -v DIR:/backup IMAGE tar czf ...
  (b)  raw:    tar -cf - -C MOUNTPOINT . | zstd -T0 -3 > file                (on the host)
  (c)  restic backup . (in MOUNTPOINT) into a new local repository           (password file, never argv)
  (d)  borg create --compression zstd,3 REPO::bench . (in MOUNTPOINT)        (new repo, --encryption none)
  (e)  dockvault backup POLICY --config-dir DIR                              (local socket; zstd 3, keepLast 1)
  (f)  the same against a second private dockerd over TCP+TLS                (tests/second_engine.tls_engine)
  (a') seed:   docker run ... tar xzf ... into a fresh volume
  (b') raw:    zstd -d < file | tar -x -C DIR                               (on the host)
  (c') restic restore latest --target DIR;  (d') borg extract REPO::bench   (in DIR)
  (e') (f') dockvault run --once --config-dir DIR   with a RestoreRequest into a fresh volume

Wall time, peak RSS and CPU seconds of every timed command are measured as in all the benchmarks here
(common.run_timed): os.wait4() of the command started by a small spawner process (ru_maxrss, KiB).
Every restore is checked against the source tree (paths and sizes of all files, sha256 of samples).
Targets are printed with PASS/MISS; nothing is asserted except correctness.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import datetime as dt
import hashlib
import itertools
import json
import os
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from array import array
from dataclasses import dataclass
from pathlib import Path

from common import (DOCKVAULT, GiB, MiB, QUIET, BenchError, Method, Run, add_run_options, backup_startup, check_args,
                    cli_startup,
                    docker, dockvault_env, human, log, machine, machine_line, mark, mountpoint, parse_size,
                    print_methods, print_rows, read_into_cache, remove_volume, remove_work_and_source, rss_floor,
                    run_bench, run_timed, size_label, sync, tool_version, volume_exists)

sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # the repository root, for tests/second_engine.py
from tests.second_engine import tls_engine  # noqa: E402

VOLUME_PREFIX = "dockvault-bench"
MARKER = ".dockvault-bench.json"
GENERATOR = 1  # bump when the content recipe changes: old volumes are then rebuilt
SMALL_FILES_PER_GIB = 20_000
SHARES = {"text": 0.35, "logs": 0.35, "random": 0.30}
# Not "bench" (db_dump.py's): a dockvault starting a job removes the helpers its policy's name left on the
# engine, so another run of a policy of the same name on the shared engine would kill this one's helpers.
POLICY = "volbench"

TARGETS = {
    "backup_vs_raw": 0.87,      # throughput (e)/(b) >= (aim: 0.95)
    "backup_vs_peers": 2.0,     # throughput (e)/(c) and (e)/(d) >= (first backups)
    "tls_vs_local": 0.7,        # throughput (f)/(e) >=
    "size_vs_raw": 0.02,        # |bytes (e)/(b) - 1| <=
    "restore_vs_raw": 0.85,     # throughput (e')/(b') >=
    "rss_mib": 100.0,           # peak RSS of dockvault, each of (e) (f) (e') (f') <=
    "startup_seconds": 0.3,     # one-shot backup: spawn -> "backup started" (common.backup_startup) <=
}


# ------------------------------------------------------------------------------- test volume data --
class TextMaker:
    """Word-like text: a Zipf-weighted vocabulary of made-up words, sampled through a 64 Ki-entry table."""

    def __init__(self, rnd: random.Random) -> None:
        syllables = ["ka", "lo", "mi", "ren", "to", "sa", "ve", "qui", "dor", "an", "el", "us", "pra", "ni",
                     "mo", "ta", "ex", "ul", "ri", "fe", "gon", "be", "stra", "li", "cu", "po", "er", "in"]
        words = list(dict.fromkeys("".join(rnd.choice(syllables) for _ in range(rnd.randint(1, 4)))
                                   for _ in range(8000)))
        rnd.shuffle(words)
        tokens, weights = [], []
        for rank, word in enumerate(words):
            w = 1.0 / (rank + 1) ** 1.05
            tokens += [word, word + ",", word + ".\n"]
            weights += [w * 0.90, w * 0.06, w * 0.04]
        cum = list(itertools.accumulate(weights))
        total = cum[-1]
        self.table = [tokens[min(bisect.bisect(cum, (j + 0.5) / 65536 * total), len(tokens) - 1)]
                      for j in range(65536)]
        self.rnd = rnd

    def make(self, nbytes: int) -> bytes:
        # about 6.6 bytes per token incl. the separator
        out = b""
        while len(out) < nbytes:
            need = nbytes - len(out)
            idx = array("H", self.rnd.randbytes(2 * (need // 6 + 16)))
            out += " ".join(map(self.table.__getitem__, idx)).encode() + b"\n"
        return out[:nbytes - 1] + b"\n"


class LogMaker:
    """Web-service log lines: monotonic timestamps, levels, components, routes, ids, latencies, messages."""

    LEVELS = ["INFO"] * 14 + ["DEBUG"] * 4 + ["WARN"] * 2 + ["ERROR"]
    COMPONENTS = ["http", "db.pool", "auth", "cache", "scheduler", "worker.3", "worker.7", "billing", "mailer"]
    METHODS = ["GET"] * 6 + ["POST"] * 2 + ["PUT", "DELETE"]
    ROUTES = ["/api/v2/orders", "/api/v2/orders/{id}", "/api/v2/users/{id}", "/api/v2/users/{id}/sessions",
              "/healthz", "/metrics", "/api/v2/invoices/{id}/pdf", "/api/v2/search", "/static/app.{id}.js",
              "/api/v2/carts/{id}/items", "/login", "/logout"]
    STATUSES = [200] * 30 + [201] * 3 + [204] * 2 + [301, 304, 304, 400, 401, 403, 404, 404, 409, 429, 500, 502, 503]
    MESSAGES = ["request handled", "cache miss, loading from primary", "slow query detected", "token refreshed",
                "retrying after upstream timeout", "connection returned to pool", "payload validated",
                "rate limit window reset", "queued background job", "session extended",
                "upstream responded with unexpected content-type", "user not found"]

    def __init__(self, rnd: random.Random, text: TextMaker) -> None:
        self.rnd = rnd
        self.text = text
        self.clock = 1_700_000_000.0

    def make(self, nbytes: int) -> bytes:
        rnd, lines, size = self.rnd, [], 0
        L, C, M, R, S, G = self.LEVELS, self.COMPONENTS, self.METHODS, self.ROUTES, self.STATUSES, self.MESSAGES
        words = self.text.table
        while size < nbytes:
            bits = rnd.getrandbits(64)
            self.clock += (bits & 0xFFF) / 40960.0
            t = self.clock
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
            route = R[(bits >> 12) % len(R)].replace("{id}", str((bits >> 20) & 0xFFFFF))
            line = (f"{stamp}.{int(t * 1000) % 1000:03d}Z {L[(bits >> 40) % len(L)]:5} [{C[(bits >> 44) % len(C)]}] "
                    f"req={rnd.getrandbits(48):012x} {M[(bits >> 48) % len(M)]} {route} -> {S[(bits >> 52) % len(S)]} "
                    f"in {(bits >> 8) % 2000 / 10:.1f}ms user={(bits >> 30) % 50000} "
                    f"{G[(bits >> 56) % len(G)]}")
            if bits & 0x7 == 0:  # some lines carry free text (query, payload excerpt)
                line += " detail=\"" + " ".join(words[(bits >> (4 * k)) & 0xFFFF] for k in range(6)).replace("\n", "") + "\""
            line += "\n"
            lines.append(line)
            size += len(line)
        return "".join(lines).encode()[:nbytes]


def split_sizes(rnd: random.Random, total: int, count: int, sigma: float, minimum: int) -> list[int]:
    """`count` lognormal sizes that add up to exactly `total` bytes."""
    raw = [rnd.lognormvariate(0, sigma) for _ in range(count)]
    scale = (total - minimum * count) / sum(raw)
    sizes = [minimum + int(r * scale) for r in raw]
    sizes[-1] += total - sum(sizes)
    return sizes


def generate(root: Path, size: int, seed: int) -> dict:
    rnd = random.Random(seed)
    text, budgets = TextMaker(rnd), {k: int(size * v) for k, v in SHARES.items()}
    budgets["random"] = size - budgets["text"] - budgets["logs"]
    logs = LogMaker(rnd, text)
    t0 = time.perf_counter()

    n_small = max(50, round(SMALL_FILES_PER_GIB * size / GiB))
    n_dirs = max(5, n_small // 200)
    for i, nbytes in enumerate(split_sizes(rnd, budgets["text"], n_small, 1.0, 64)):
        d = root / "docs" / f"section-{i % n_dirs:03d}" / f"part-{(i // n_dirs) % 4}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"note-{i:05d}.txt").write_bytes(text.make(nbytes))
    log(f"  small text files: {n_small} in {time.perf_counter() - t0:.1f}s")

    n_logs = max(2, round(budgets["logs"] / (48 * MiB)))
    (root / "logs").mkdir()
    for i, nbytes in enumerate(split_sizes(rnd, budgets["logs"], n_logs, 0.4, MiB)):
        with open(root / "logs" / f"service-{i % 3}.log.{i}", "wb") as out:
            left = nbytes
            while left:
                piece = logs.make(min(left, 8 * MiB))
                out.write(piece)
                left -= len(piece)
    log(f"  log files: {n_logs}, {time.perf_counter() - t0:.1f}s")

    n_rand = max(2, round(budgets["random"] / (4 * MiB)))
    (root / "blobs").mkdir()
    for i, nbytes in enumerate(split_sizes(rnd, budgets["random"], n_rand, 0.8, 4096)):
        sub = root / "blobs" / f"{i % 8:02x}"
        sub.mkdir(exist_ok=True)
        (sub / f"object-{i:04d}.bin").write_bytes(rnd.randbytes(nbytes))
    log(f"  random files: {n_rand}, {time.perf_counter() - t0:.1f}s")
    return {"small_text_files": n_small, "log_files": n_logs, "random_files": n_rand}


def ensure_volume(size: int, seed: int) -> tuple[str, Path, dict]:
    name = f"{VOLUME_PREFIX}-src-{size_label(size)}"
    wanted = {"generator": GENERATOR, "size": size, "seed": seed}
    if volume_exists(name):
        marker = mountpoint(name) / MARKER
        try:
            recorded = json.loads(marker.read_text())
            if {k: recorded.get(k) for k in wanted} == wanted:
                log(f"reusing volume {name} (marker {wanted})")
                return name, mountpoint(name), recorded
        except (OSError, ValueError):
            pass
        log(f"volume {name} exists without a matching marker; rebuilding it")
        docker("volume", "rm", "-f", name)
    docker("volume", "create", "--label", "dockvault.bench=1", name)
    root = mountpoint(name)
    log(f"building volume {name}: {human(size)}, seed {seed}, in {root}")
    t = time.perf_counter()
    counts = generate(root, size, seed)
    recorded = {**wanted, **counts, "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    (root / MARKER).write_text(json.dumps(recorded, indent=1) + "\n")
    sync()
    log(f"volume built in {time.perf_counter() - t:.1f}s")
    return name, root, recorded


# ---------------------------------------------------------------------------------- tree checking --
@dataclass
class Tree:
    files: dict[str, int]       # relative path -> size
    dirs: int

    @property
    def bytes(self) -> int:
        return sum(self.files.values())


def scan(root: Path) -> Tree:
    files: dict[str, int] = {}
    dirs = 0
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(root / rel if rel else root) as it:
            for entry in it:
                path = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir(follow_symlinks=False):
                    dirs += 1
                    stack.append(path)
                else:
                    files[path] = entry.stat(follow_symlinks=False).st_size
    return Tree(files, dirs)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def pick_samples(tree: Tree, seed: int) -> list[str]:
    rnd = random.Random(seed * 7919)
    groups: dict[str, list[str]] = {}
    for path in sorted(tree.files):
        groups.setdefault(path.split("/", 1)[0], []).append(path)
    picked = []
    for top, paths in sorted(groups.items()):
        picked += rnd.sample(paths, min(len(paths), 6 if top == "docs" else 2))
    return picked


def prepare_source(size: int, seed: int, stale_prefix: str) -> tuple[str, Path, dict, Tree, dict[str, str]]:
    """Remove restored volumes a previous run left (`stale_prefix`), then the source volume, its tree and the
    sha256 of its check samples: (volume, root, marker, tree, samples)."""
    for leftover in docker("volume", "ls", "-q", "--filter", f"name={stale_prefix}").split():
        remove_volume(leftover)
    volume, root, marker = ensure_volume(size, seed)
    t = time.perf_counter()
    tree = scan(root)
    samples = {p: sha256_file(root / p) for p in pick_samples(tree, seed)}
    log(f"source: {len(tree.files)} files, {tree.dirs} dirs, {tree.bytes} bytes "
        f"(scanned in {time.perf_counter() - t:.1f}s)")
    return volume, root, marker, tree, samples


def verify(label: str, source_root: Path, source: Tree, samples: dict[str, str], restored_root: Path) -> None:
    got = scan(restored_root)
    problems = []
    if len(got.files) != len(source.files) or got.bytes != source.bytes:
        problems.append(f"{len(got.files)} files / {got.bytes} bytes restored, source has "
                        f"{len(source.files)} files / {source.bytes} bytes")
    if got.dirs != source.dirs:
        problems.append(f"{got.dirs} directories restored, source has {source.dirs}")
    differ = [p for p in source.files if got.files.get(p) != source.files[p]]
    if differ:
        problems.append(f"{len(differ)} files missing or of another size, e.g. {differ[:3]}")
    for rel, digest in samples.items():
        if rel in got.files and sha256_file(restored_root / rel) != digest:
            problems.append(f"sha256 of {rel} differs")
    if problems:
        raise BenchError(f"RESTORE CHECK FAILED for {label} ({restored_root} vs {source_root}): " + "; ".join(problems))


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.image = os.environ["DOCKVAULT_TEST_IMAGE"]
        self.token = uuid.uuid4().hex[:6]
        self.restore_volumes: list[tuple[str, str]] = []  # (docker host, volume)
        self.stack = contextlib.ExitStack()
        self.methods = {k: Method(k, t) for k, t in [
            ("a", "(a)  seed: docker run tar czf"),
            ("b", "(b)  raw: tar | zstd -T0 -3 (host)"),
            ("c", "(c)  restic backup (local repo)"),
            ("d", "(d)  borg create zstd,3 (local repo)"),
            ("e", "(e)  dockvault backup (local socket)"),
            ("f", "(f)  dockvault backup (TCP+TLS)"),
            ("a'", "(a') seed: docker run tar xzf"),
            ("b'", "(b') raw: zstd -d | tar -x (host)"),
            ("c'", "(c') restic restore latest"),
            ("d'", "(d') borg extract"),
            ("e'", "(e') dockvault restore (local socket)"),
            ("f'", "(f') dockvault restore (TCP+TLS)"),
        ]}

    # ---- setup
    def setup(self) -> None:
        self.data_root = Path(docker("info", "-f", "{{.DockerRootDir}}"))
        tmp = Path(tempfile.gettempdir())
        if os.stat(tmp).st_dev == os.stat(self.data_root).st_dev:
            base, self.where = tmp, f"{tmp} (same filesystem as the Docker data root {self.data_root})"
        else:
            base = self.data_root.parent
            self.where = f"{base} (parent of the Docker data root; {tmp} is another filesystem)"
        self.work = Path(tempfile.mkdtemp(prefix="dockvault-bench-", dir=base))
        self.scratch = self.work / "scratch"
        self.seed_dir = self.work / "seed"          # (a) output, bind-mounted into the helper
        self.raw_dir = self.work / "raw"            # (b) output
        self.host_restore = self.work / "host-restore"  # (b'), (c'), (d') restore here, one at a time
        self.restic_repo = self.work / "restic"
        self.borg_repo = self.work / "borg"
        for d in (self.scratch, self.seed_dir, self.raw_dir):
            d.mkdir()
        (self.volume, self.source_root, self.marker, self.source,
         self.samples) = prepare_source(self.args.size, self.args.seed, f"{VOLUME_PREFIX}-restore-")
        self.local_host = os.environ["DOCKER_HOST"]

        # restic and borg: a password file (never argv), their caches in the work dir
        password = self.work / "restic-password"
        password.write_text(uuid.uuid4().hex + "\n")
        password.chmod(0o600)
        self.restic_env = dict(os.environ, RESTIC_PASSWORD_FILE=str(password), RESTIC_CACHE_DIR=str(self.work / "restic-cache"))
        self.borg_env = dict(os.environ, BORG_BASE_DIR=str(self.work / "borg-base"),
                             BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes", BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")

        # dockvault over the local socket (e) and over TCP+TLS to a second private engine (f)
        self.dockvault = {
            "e": self.dockvault_setup("local", self.local_host, self.volume, dockvault_env(self.image, self.work / "state-local")),
        }
        log("starting a second private dockerd with TLS on 127.0.0.1 (tests/second_engine.tls_engine)")
        tls = self.stack.enter_context(tls_engine(self.image, self.local_host))
        log(f"TLS engine at {tls.host}: ready in {tls.started_in:.1f}s, image loaded in {tls.loaded_in:.1f}s")
        t = time.perf_counter()
        docker_at(tls.setup_host, "volume", "create", "--label", "dockvault.bench=1", self.volume)
        self.tls_source_root = volume_path(tls.setup_host, self.volume)
        subprocess.run(["cp", "-a", f"{self.source_root}/.", str(self.tls_source_root)], check=True)
        sync()
        log(f"copied the source volume into the TLS engine in {time.perf_counter() - t:.1f}s")
        # The docker CLI's variables, as a user sets them; REQUESTS_CA_BUNDLE stays set (docker-py #2433:
        # dockvault must use DOCKER_CERT_PATH's CA anyway). auto picks the api transport for tcp://.
        tls_env = {**dockvault_env(self.image, self.work / "state-tls"), **tls,
                   "REQUESTS_CA_BUNDLE": os.environ.get("REQUESTS_CA_BUNDLE") or "/etc/ssl/certs/ca-certificates.crt"}
        self.dockvault["f"] = self.dockvault_setup("tls", tls.setup_host, self.volume, tls_env)
        self.load_start = os.getloadavg()

    def dockvault_setup(self, name: str, host: str, volume: str, env: dict[str, str]) -> dict:
        config, repo = self.work / f"config-{name}", self.work / f"repo-{name}"
        for d in (config, repo, Path(env["DOCKVAULT_STATE_DIR"])):
            d.mkdir()
        (config / "policy.yaml").write_text(textwrap.dedent(f"""\
            apiVersion: dockvault.io/v1alpha1
            kind: BackupPolicy
            metadata: {{name: {POLICY}}}
            spec:
              targets:
                - name: data
                  volume: {{name: {volume}}}
              storage: {{local: {{path: {repo}}}}}
              compression: {{algorithm: zstd, level: 3}}
              retention: {{keepLast: 1}}
            """))
        return {"config": config, "repo": repo, "env": env, "host": host}

    def reads(self, key: str) -> Path:
        """What method `key` reads: the source volume for a backup, its own archive or repository for a restore."""
        return {"a": self.source_root, "b": self.source_root, "c": self.source_root, "d": self.source_root,
                "e": self.source_root, "f": self.tls_source_root, "a'": self.seed_dir, "b'": self.raw_dir,
                "c'": self.restic_repo, "d'": self.borg_repo, "e'": self.dockvault["e"]["repo"],
                "f'": self.dockvault["f"]["repo"]}[key]

    def timed(self, key: str, cmd: list[str], **kwargs) -> Run:
        # Every method reads its input from the page cache: borg drops the pages of the files it reads and writes
        # (posix_fadvise DONTNEED), and so does dockvault for its artifacts, which left the method after them
        # reading from disk. Read it once, untimed, then sync.
        kwargs.setdefault("prepare", lambda: (read_into_cache(self.reads(key)), sync()))
        return run_timed(cmd, label=self.methods[key].title, scratch=self.scratch, **kwargs)

    # ---- backups
    def backup_seed(self) -> Run:
        out = self.seed_dir / "x.tar.gz"
        run = self.timed("a", ["docker", "run", "--rm", "--network", "none", "-v", f"{self.volume}:/source:ro",
                               "-v", f"{self.seed_dir}:/backup", self.image, "tar", "czf", "/backup/x.tar.gz", "-C",
                               "/source", "."])
        run.output_bytes = out.stat().st_size
        return run

    def backup_raw(self) -> Run:
        out = self.raw_dir / "x.tar.zst"
        script = f"tar -cf - -C {shlex.quote(str(self.source_root))} . | zstd -q -T0 -3 > {shlex.quote(str(out))}"
        run = self.timed("b", ["bash", "-o", "pipefail", "-c", script])
        run.output_bytes = out.stat().st_size
        return run

    def backup_restic(self) -> Run:
        # a new repository every repeat: each timed run is a first backup (restic 0.14: repository v2, zstd "auto")
        shutil.rmtree(self.restic_repo, ignore_errors=True)
        shutil.rmtree(self.work / "restic-cache", ignore_errors=True)
        subprocess.run(["restic", "init", "--quiet", "--repo", str(self.restic_repo)], env=self.restic_env,
                       check=True, capture_output=True)
        run = self.timed("c", ["restic", "--repo", str(self.restic_repo), "backup", "--quiet", "--host", "bench", "."],
                         env=self.restic_env, cwd=self.source_root)
        run.output_bytes = tree_bytes(self.restic_repo)
        return run

    def backup_borg(self) -> Run:
        # a new repository every repeat (first backups), unencrypted: `--encryption none`
        shutil.rmtree(self.borg_repo, ignore_errors=True)
        shutil.rmtree(self.work / "borg-base", ignore_errors=True)
        subprocess.run(["borg", "init", "--encryption", "none", str(self.borg_repo)], env=self.borg_env, check=True,
                       capture_output=True)
        run = self.timed("d", ["borg", "create", "--compression", "zstd,3", f"{self.borg_repo}::bench", "."],
                         env=self.borg_env, cwd=self.source_root)
        run.output_bytes = tree_bytes(self.borg_repo)
        return run

    def backup_dockvault(self, key: str) -> Run:
        dv = self.dockvault[key]
        run = self.timed(key, [*DOCKVAULT, "backup", POLICY, "--config-dir", str(dv["config"])], env=dv["env"])
        artifacts = sorted(dv["repo"].glob(f"{POLICY}/*/data.tar.zst"))
        if len(artifacts) != 1:
            raise BenchError(f"expected exactly one artifact (keepLast: 1), found {artifacts}")
        run.output_bytes = artifacts[0].stat().st_size
        found = re.findall(r"helper streams use the (\w+) transport", (self.scratch / "stderr.txt").read_text())
        dv.setdefault("transports", []).append(found[-1] if found else "?")
        return run

    # ---- restores
    def restore_seed(self, i: int) -> Run:
        vol = self.new_restore_volume(self.local_host, f"a-{i}")
        run = self.timed("a'", ["docker", "run", "--rm", "--network", "none", "-v", f"{vol}:/target",
                                "-v", f"{self.seed_dir}:/backup:ro", self.image, "tar", "xzf", "/backup/x.tar.gz",
                                "-C", "/target"])
        verify("(a') seed restore", self.source_root, self.source, self.samples, mountpoint(vol))
        return run

    def fresh_host_restore(self) -> Path:
        shutil.rmtree(self.host_restore, ignore_errors=True)
        self.host_restore.mkdir()
        return self.host_restore

    def restore_raw(self, i: int) -> Run:
        target = self.fresh_host_restore()
        script = (f"zstd -q -d < {shlex.quote(str(self.raw_dir / 'x.tar.zst'))} "
                  f"| tar -x -C {shlex.quote(str(target))}")
        run = self.timed("b'", ["bash", "-o", "pipefail", "-c", script])
        verify("(b') raw restore", self.source_root, self.source, self.samples, target)
        return run

    def restore_restic(self, i: int) -> Run:
        target = self.fresh_host_restore()
        run = self.timed("c'", ["restic", "--repo", str(self.restic_repo), "restore", "latest", "--quiet",
                                "--target", str(target)], env=self.restic_env)
        verify("(c') restic restore", self.source_root, self.source, self.samples, target)
        return run

    def restore_borg(self, i: int) -> Run:
        target = self.fresh_host_restore()
        run = self.timed("d'", ["borg", "extract", f"{self.borg_repo}::bench"], env=self.borg_env, cwd=target)
        verify("(d') borg extract", self.source_root, self.source, self.samples, target)
        return run

    def new_restore_volume(self, host: str, tag: str) -> str:
        vol = f"{VOLUME_PREFIX}-restore-{self.token}-{tag}"
        self.restore_volumes.append((host, vol))
        return vol

    def restore_dockvault(self, key: str, i: int) -> Run:
        dv = self.dockvault[key.rstrip("'")]
        vol = self.new_restore_volume(dv["host"], f"{key.rstrip(chr(39))}-{i}")
        request = dv["config"] / f"restore-{i}.yaml"
        request.write_text(textwrap.dedent(f"""\
            apiVersion: dockvault.io/v1alpha1
            kind: RestoreRequest
            metadata: {{name: bench-restore-{self.token}-{i}}}
            spec:
              policy: {POLICY}
              backup: latest
              targets:
                - from: data
                  volume: {{name: {vol}, overwrite: false}}
            """))
        try:
            run = self.timed(key, [*DOCKVAULT, "run", "--once", "--metrics-addr", "off", "--config-dir",
                                   str(dv["config"])], env=dv["env"])
        finally:
            request.unlink()
        if "succeeded" not in (self.scratch / "stderr.txt").read_text():
            raise BenchError(f"{self.methods[key].title}: no 'restore ... succeeded' in dockvault's log")
        verify(self.methods[key].title, self.source_root, self.source, self.samples, volume_path(dv["host"], vol))
        return run

    def clean_repeat(self) -> None:
        for host, vol in self.restore_volumes:
            docker_at(host, "volume", "rm", "-f", vol, check=False)
        self.restore_volumes.clear()
        shutil.rmtree(self.host_restore, ignore_errors=True)
        for f in (self.seed_dir / "x.tar.gz", self.raw_dir / "x.tar.zst"):
            f.unlink(missing_ok=True)
        sync()

    def run(self) -> None:
        steps = [("a", self.backup_seed), ("b", self.backup_raw), ("c", self.backup_restic), ("d", self.backup_borg),
                 ("e", lambda: self.backup_dockvault("e")), ("f", lambda: self.backup_dockvault("f")),
                 ("a'", self.restore_seed), ("b'", self.restore_raw), ("c'", self.restore_restic),
                 ("d'", self.restore_borg), ("e'", lambda i: self.restore_dockvault("e'", i)),
                 ("f'", lambda i: self.restore_dockvault("f'", i))]
        for i in range(self.args.repeat):
            for key, step in steps:
                run = step(i) if "'" in key else step()
                self.methods[key].runs.append(run)
                extra = f", {run.output_bytes:,} bytes" if run.output_bytes is not None else ""
                log(f"repeat {i + 1}/{self.args.repeat} {key:2}: {run.seconds:7.2f}s{extra}, "
                    f"peak RSS {run.maxrss_kib / 1024:.1f} MiB (cpu {run.cpu_seconds:.1f}s, sync after "
                    f"{run.flush_seconds:.2f}s, machine busy before {run.background:.0%} / during {run.machine_busy:.0%})")
            self.clean_repeat()

    def cleanup(self) -> None:
        for host, vol in self.restore_volumes:
            docker_at(host, "volume", "rm", "-f", vol, check=False)
        self.stack.close()  # stops the TLS engine and removes its data
        remove_work_and_source(self)

    # ---- report
    def summary(self) -> dict:
        m = self.methods
        raw = self.source.bytes

        def ratio(slow: str, fast: str) -> float:  # throughput of `fast` over `slow`: time_slow / time_fast
            return m[slow].seconds / m[fast].seconds

        ratios = {
            "raw_vs_seed": ratio("a", "b"),
            "backup_vs_seed": ratio("a", "e"),
            "backup_vs_raw": ratio("b", "e"),
            "backup_vs_restic": ratio("c", "e"),
            "backup_vs_borg": ratio("d", "e"),
            "tls_vs_local": ratio("e", "f"),
            "size_vs_raw": m["e"].median("output_bytes") / m["b"].median("output_bytes"),
            "size_restic_vs_raw": m["c"].median("output_bytes") / m["b"].median("output_bytes"),
            "size_borg_vs_raw": m["d"].median("output_bytes") / m["b"].median("output_bytes"),
            "restore_vs_seed": ratio("a'", "e'"),
            "restore_vs_raw": ratio("b'", "e'"),
            # (b') leaves its writeback to the `sync` after it; dockvault's helper container is removed before
            # dockvault returns, and unmounting its overlayfs syncs the whole filesystem, restored data included.
            "restore_vs_raw_with_sync": statistics.median(r.seconds + r.flush_seconds for r in m["b'"].runs) / m["e'"].seconds,
            "restore_vs_restic": ratio("c'", "e'"),
            "restore_vs_borg": ratio("d'", "e'"),
            "restore_tls_vs_local": ratio("e'", "f'"),
        }
        rss = {"backup_mib": m["e"].summary(raw)["peak_rss_mib"], "restore_mib": m["e'"].summary(raw)["peak_rss_mib"],
               "tls_backup_mib": m["f"].summary(raw)["peak_rss_mib"], "tls_restore_mib": m["f'"].summary(raw)["peak_rss_mib"]}
        checks = {
            "backup_vs_raw": ratios["backup_vs_raw"] >= TARGETS["backup_vs_raw"],
            "backup_vs_restic": ratios["backup_vs_restic"] >= TARGETS["backup_vs_peers"],
            "backup_vs_borg": ratios["backup_vs_borg"] >= TARGETS["backup_vs_peers"],
            "tls_vs_local": ratios["tls_vs_local"] >= TARGETS["tls_vs_local"],
            "size_vs_raw": abs(ratios["size_vs_raw"] - 1) <= TARGETS["size_vs_raw"],
            "restore_vs_raw": ratios["restore_vs_raw"] >= TARGETS["restore_vs_raw"],
            **{f"rss_{k}": v <= TARGETS["rss_mib"] for k, v in rss.items()},
        }
        startup = backup_startup(self.dockvault["e"]["env"], self.work, self.image)
        checks["backup_startup"] = startup <= TARGETS["startup_seconds"]
        return {
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": {**machine("zstd", "tar", "borg"), "restic": tool_version(["restic", "version"])},
            "code": code_version(),
            "work_dir": self.where,
            "volume": {"name": self.volume, "size_arg": self.args.size, "raw_bytes": raw, "files": len(self.source.files),
                       "dirs": self.source.dirs, "seed": self.args.seed,
                       **{k: self.marker.get(k) for k in ("small_text_files", "log_files", "random_files")}},
            "repeats": self.args.repeat,
            "methods": {k: v.summary(raw) for k, v in m.items()},
            "transports": {k: v.get("transports", []) for k, v in self.dockvault.items()},
            "ratios": ratios, "peak_rss": rss, "targets": TARGETS, "pass": checks, "quiet": QUIET,
            "load_average": {"start": self.load_start, "end": os.getloadavg()},
            "dockvault_cli_startup_seconds": cli_startup(self.dockvault["e"]["env"]),
            "dockvault_backup_startup_seconds": startup,
            "rss_floor_mib": rss_floor(self.scratch),
        }


def docker_at(host: str, *args: str, check: bool = True) -> str:
    """The docker CLI against `host` (-H beats DOCKER_HOST), without TLS settings: set-up and clean-up only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    result = subprocess.run(["docker", "-H", host, *args], capture_output=True, text=True, env=env,
                            stdin=subprocess.DEVNULL, check=False)
    if check and result.returncode != 0:
        raise BenchError(f"docker -H {host} {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout.strip()


def volume_path(host: str, name: str) -> Path:
    return Path(docker_at(host, "volume", "inspect", "-f", "{{.Mountpoint}}", name))


def tree_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def code_version() -> dict:
    """Which dockvault was measured: a hash of its sources, and the git commit when there is one (read-only)."""
    import dockvault

    package = Path(dockvault.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    info = {"dockvault_sources_sha256": digest.hexdigest()[:16], "commit": None, "modified": None}
    git = ["git", "--no-optional-locks", "-C", str(package)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            info["commit"] = head.stdout.strip()
            changed = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no", "--", "."],
                                     capture_output=True, text=True, timeout=10)
            info["modified"] = bool(changed.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        pass
    return info


def results_cache() -> Path:
    base = os.environ.get("DOCKVAULT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "dockvault")
    return Path(base) / "benchmarks"


def print_report(s: dict) -> None:
    M, R, P, T = s["methods"], s["ratios"], s["pass"], s["targets"]
    vol, mach = s["volume"], s["machine"]
    print()
    print(f"dockvault volume benchmark  {s['date']}")
    print(machine_line(mach, mach["zstd"], mach["tar"], mach["restic"], mach["borg"]))
    print(f"volume {vol['name']}: {vol['raw_bytes']:,} bytes ({human(vol['raw_bytes'])}) in {vol['files']:,} files "
          f"({vol['small_text_files']} small text, {vol['log_files']} logs, {vol['random_files']} random), "
          f"{vol['dirs']} dirs, seed {vol['seed']}")
    code = s["code"]
    print(f"dockvault: commit {code['commit'] or '?'}{' + uncommitted changes' if code['modified'] else ''}, "
          f"sources sha256 {code['dockvault_sources_sha256']}")
    print(f"work dir and host restore dir: {s['work_dir']}")
    print(f"repeats: {s['repeats']} (median shown; MB = 10^6 bytes of the volume's raw size)")
    print()
    header = (f"{'method':42} {'seconds':>8} {'MB/s':>7} {'output bytes':>14} {'RSS MiB':>8} {'cpu s':>6} "
              f"{'sync s':>6} {'busy':>5}  runs (s)")
    print_methods(M, header, lambda v, out: (
        f"{v['title']:37} {v['seconds_median']:8.2f} {v['mb_per_s']:7.1f} {out:>14} {v['peak_rss_mib']:8.1f} "
        f"{v['cpu_seconds_median']:6.1f} {v['sync_after_seconds_median']:6.2f} "
        f"{statistics.median(v['machine_busy_before']):5.0%}  "
        + " ".join(f"{x:.2f}" for x in v["seconds"])))
    print("RSS MiB: peak over the runs (wait4's ru_maxrss of the command or its largest child); cpu s: user+sys of the")
    print("        command and the children it waited for (for docker run only the CLI; for dockvault not its helper);")
    print("sync s: the `sync` right after the run (writeback it left behind; dockvault fsyncs its artifact, and the")
    print("        removal of any container unmounts an overlayfs, which syncs the whole filesystem, inside the run)")
    print(f"busy: share of all cores busy in the half second before the run (median; the benchmark waits up to "
          f"{QUIET['max_wait']:.0f}s for <= {QUIET['threshold']:.0%})")
    print("restic 0.14: repository v2, compression auto (zstd), encrypted (its only mode), password file; borg 1.2: "
          "--encryption none, --compression zstd,3; both into a new repository every repeat (first backups)")
    used = s.get("transports", {})
    print(f"dockvault helper transport per run (auto): (e) {' '.join(used.get('e', []))}, "
          f"(f) {' '.join(used.get('f', []))}")
    load = s["load_average"]
    busy_runs = sum(b > QUIET["threshold"] for v in M.values() for b in v["machine_busy_before"])
    print(f"load average at start {load['start'][0]:.2f}, at end {load['end'][0]:.2f}"
          + (f"; WARNING: {busy_runs} run(s) started while other processes kept the machine busy: "
             "numbers are noisy" if busy_runs else ""))
    print(f"dockvault CLI start-up (python -m dockvault --version): {s['dockvault_cli_startup_seconds']:.2f}s; "
          f"peak RSS floor (`true` through the spawner): {s.get('rss_floor_mib', float('nan')):.1f} MiB")
    print()
    print("RATIOS AND TARGETS (throughput ratios are time_x / time_dockvault)")
    rss = s["peak_rss"]
    rows = [
        ("backup (e)/(b) raw", f"{R['backup_vs_raw']:.3f}x", f">= {T['backup_vs_raw']}x", mark(P["backup_vs_raw"])),
        ("backup (e)/(a) seed", f"{R['backup_vs_seed']:.2f}x", f"raw: {R['raw_vs_seed']:.2f}x", ""),
        ("backup (e)/(c) restic", f"{R['backup_vs_restic']:.2f}x", f">= {T['backup_vs_peers']}x", mark(P["backup_vs_restic"])),
        ("backup (e)/(d) borg", f"{R['backup_vs_borg']:.2f}x", f">= {T['backup_vs_peers']}x", mark(P["backup_vs_borg"])),
        ("backup TLS/local (f)/(e)", f"{R['tls_vs_local']:.3f}x", f">= {T['tls_vs_local']}x", mark(P["tls_vs_local"])),
        ("output size (e)/(b)", f"{R['size_vs_raw']:.4f}", f"within {T['size_vs_raw']:.0%}", mark(P["size_vs_raw"])),
        ("  output size restic, borg / (b)", f"{R['size_restic_vs_raw']:.3f} {R['size_borg_vs_raw']:.3f}", "-", ""),
        ("restore (e')/(b') raw", f"{R['restore_vs_raw']:.3f}x", f">= {T['restore_vs_raw']}x", mark(P["restore_vs_raw"])),
        ("  (e')/(b' + its sync), info", f"{R['restore_vs_raw_with_sync']:.3f}x", "-", ""),
        ("  restore (e')/(a') seed", f"{R['restore_vs_seed']:.2f}x", "-", ""),
        ("  restore (e')/(c') restic", f"{R['restore_vs_restic']:.2f}x", "-", ""),
        ("  restore (e')/(d') borg", f"{R['restore_vs_borg']:.2f}x", "-", ""),
        ("  restore TLS/local (f')/(e')", f"{R['restore_tls_vs_local']:.3f}x", "-", ""),
        *[(f"dockvault peak RSS {k}", f"{rss[v]:.1f} MiB", f"<= {T['rss_mib']:.0f} MiB", mark(P[f"rss_{v}"]))
          for k, v in (("(e)", "backup_mib"), ("(e')", "restore_mib"), ("(f)", "tls_backup_mib"),
                       ("(f')", "tls_restore_mib"))],
        ("one-shot backup start-up", f"{s['dockvault_backup_startup_seconds']:.3f} s",
         f"<= {T['startup_seconds']} s", mark(P["backup_startup"])),
    ]
    print_rows(rows)
    print()
    print("NOTE: dockvault peak RSS by volume size (this run, and the latest earlier run of each other size on this machine):")
    history = rss_history(s)
    mine = s["code"]["dockvault_sources_sha256"]
    for size, rec in sorted(history.items()):
        same = rec.get("code") == mine
        print(f"  {human(size):>9}: backup {rec['backup_mib']:6.1f} MiB, restore {rec['restore_mib']:6.1f} MiB  ({rec['date']}"
              + ("" if same else ", other dockvault sources") + ")")
    if len(history) > 1:
        lo, hi = min(history), max(history)
        growth = max(history[hi][k] - history[lo][k] for k in ("backup_mib", "restore_mib"))
        same = len({v.get("code") for v in history.values()}) == 1
        print(f"  {human(lo)} -> {human(hi)} ({hi / lo:.0f}x the data): peak RSS grows by at most {growth:+.1f} MiB"
              + (" (flat)" if growth <= 10 else " (NOT flat)")
              + ("" if same else "; the dockvault sources changed between these runs, so compare with care"))
    else:
        print("  run with another --size (e.g. 256M and 1G) to see whether memory stays flat")


def rss_history(s: dict) -> dict[int, dict]:
    found: dict[int, dict] = {}
    folder = results_cache()
    if folder.is_dir():
        for path in folder.glob("volume_backup-*.json"):
            try:
                rec = json.loads(path.read_text())
                found[rec["volume"]["size_arg"]] = {**rec["peak_rss"], "date": rec["date"],
                                                    "code": rec.get("code", {}).get("dockvault_sources_sha256")}
            except (OSError, ValueError, KeyError):
                continue
    found[s["volume"]["size_arg"]] = {**s["peak_rss"], "date": s["date"], "code": s["code"]["dockvault_sources_sha256"]}
    return found


def save_result(s: dict) -> None:
    folder = results_cache()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"volume_backup-{size_label(s['volume']['size_arg'])}.json").write_text(json.dumps(s, indent=1) + "\n")
    except OSError as exc:
        log(f"warning: could not save results in {folder}: {exc}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--size", type=parse_size, default=parse_size("1G"), help="volume size, e.g. 256M or 1G (default 1G)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats of every method; the median is reported (default 3)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the volume content (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the test volume for the next run on the same engine")
    add_run_options(parser)
    args = parser.parse_args(argv)
    check_args(parser, args, example='make benchmark BENCH_ARGS="--size 256M"',
               tools=("docker", "dockerd", "tar", "zstd", "bash", "sync", "restic", "borg"), root=True)
    return run_bench(Bench(args), args.json, print_report, save_result)


if __name__ == "__main__":
    sys.exit(main())
