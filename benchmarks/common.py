"""Helpers shared by the benchmark scripts in this folder (volume_backup.py, db_dump.py, drill_rto.py, s3_backup.py).

The scripts run as `python3 benchmarks/X.py` (directly or through scripts/harness.sh), so this folder is
on sys.path and they import this module as `from common import ...`.

Every timed command is measured one way, by `run_timed`: the command is started by a small spawner
process that the benchmark launches first (`with spawner(): ...`, or `run_bench`), and the spawner reports

  * the wall time of the command, start to exit (time.perf_counter around Popen and os.wait4),
  * its peak RSS: ru_maxrss (KiB) from os.wait4 of that child, and
  * its CPU seconds: ru_utime + ru_stime from the same os.wait4.

Why a spawner: Linux carries a parent's peak RSS into a child's ru_maxrss across fork and exec (exec
folds the old address space's peak into the process's maxrss, and with vfork that address space is the
parent's), so a child of the benchmark itself, which may have built a volume or imported the Docker SDK,
would report at least the benchmark's own peak. The spawner is a bare Python (about 14 MiB): that is
the floor of what wait4 can report, printed by each script (`rss_floor`). What its children inherit is
only the spawner's own peak, however large the benchmark has grown when it starts the spawner.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

MiB = 1 << 20
GiB = 1 << 30
QUIET = {"threshold": 0.25, "max_wait": 15.0}  # share of all cores; seconds
DOCKVAULT = [sys.executable, "-m", "dockvault"]  # the dockvault CLI, as the timed commands run it


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ formatting --
def parse_size(text: str, minimum: int = 16 * MiB, why: str = "") -> int:
    """A size in binary units: 256M, 1G, 1.5G, 1GiB, or plain bytes (an argparse type)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 256M or 1G)")
    value = float(m.group(1)) * 1024 ** " KMGT".index((m.group(2) or " ").upper())
    if value < minimum:
        raise argparse.ArgumentTypeError(f"size must be at least {human(minimum)}{why}")
    return int(value)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def size_label(n: int) -> str:
    if n % GiB == 0:
        return f"{n // GiB}g"
    if n % MiB == 0:
        return f"{n // MiB}m"
    return str(n)


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or math.isnan(value) else format(value, spec)


def mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_methods(methods: dict[str, dict], header: str, row: Callable[[dict, str], str]) -> None:
    """The BACKUP and RESTORE tables (restores: the keys with a prime); a line a method: its key, then
    `row(method summary, output bytes or "-")`."""
    for title, restore in (("BACKUP", False), ("RESTORE", True)):
        print(title)
        print(header)
        for k, v in methods.items():
            if ("'" in k) == restore:
                out = f"{v['output_bytes']:,}" if v["output_bytes"] is not None else "-"
                print(f"{'(' + k + ')':5}" + row(v, out))
        print()


def print_rows(rows: list[tuple[str, str, str, str]]) -> None:
    """The RATIOS AND TARGETS table: what, value, target, PASS/MISS."""
    for row in rows:
        print(f"  {row[0]:32} {row[1]:>12}   {row[2]:14} {row[3]}")


# ------------------------------------------------------------------------------------------ docker --
def docker(*args: str, check: bool = True) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    if check and result.returncode != 0:
        raise BenchError(f"docker {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout.strip()


def volume_exists(name: str) -> bool:
    return subprocess.run(["docker", "volume", "inspect", name], capture_output=True,
                          stdin=subprocess.DEVNULL).returncode == 0


def mountpoint(name: str) -> Path:
    return Path(docker("volume", "inspect", "-f", "{{.Mountpoint}}", name))


def remove_volume(name: str) -> None:
    if volume_exists(name):
        docker("volume", "rm", "-f", name)


def remove_volumes(*names: str) -> None:
    """Best effort, for clean-up: a volume that cannot be removed is logged as a warning."""
    for name in names:
        try:
            remove_volume(name)
        except BenchError as exc:
            log(f"warning: {exc}")


def remove_work_and_source(bench) -> None:
    """The end of a script's clean-up: its scratch folder (`bench.work`) and, unless --keep, the source volume
    (`bench.volume`); either may not exist yet when set-up failed."""
    if getattr(bench, "work", None):
        shutil.rmtree(bench.work, ignore_errors=True)
    if not bench.args.keep and getattr(bench, "volume", None):
        remove_volumes(bench.volume)


def dockvault_env(image: str, state: Path) -> dict[str, str]:
    """Environment of the timed dockvault commands: the fixture image as helper, a private state folder."""
    env = dict(os.environ, DOCKVAULT_HELPER_IMAGE=image, DOCKVAULT_STATE_DIR=str(state))
    env.pop("DOCKVAULT_CONFIG_DIR", None)
    return env


def backup_startup(env: dict[str, str], work: Path, image: str, runs: int = 7) -> float:
    """Median start-up of a one-shot `dockvault backup` (runs of it): from the spawn of the command to its log line
    "backup ... started", on an empty volume, into a local repository. Everything before the job counts: the
    interpreter, the imports, the policy's validation, the state, the lock and the engine's first answers."""
    volume, config = f"dockvault-bench-startup-{uuid.uuid4().hex[:6]}", work / "config-startup"
    config.mkdir()
    (config / "policy.yaml").write_text(
        "apiVersion: dockvault.io/v1alpha1\nkind: BackupPolicy\nmetadata: {name: startup}\nspec:\n"
        f"  targets: [{{name: data, volume: {{name: {volume}}}}}]\n"
        f"  storage: {{local: {{path: {work / 'repo-startup'}}}}}\n  retention: {{keepLast: 1}}\n")
    docker("volume", "create", "--label", "dockvault.bench=1", volume)
    env = dict(env, DOCKVAULT_STATE_DIR=str(work / "state-startup"))
    seconds = []
    try:
        for _ in range(runs):
            spawned = time.time()
            done = subprocess.run([*DOCKVAULT, "backup", "startup", "--config-dir", str(config)], env=env,
                                  capture_output=True, text=True, stdin=subprocess.DEVNULL)
            started = re.search(r"^(\S+ \S+) INFO dockvault\.actions\.backup: backup startup/\S+ started", done.stderr, re.M)
            if done.returncode != 0 or started is None:
                raise BenchError(f"dockvault backup of an empty volume failed ({done.returncode}): {done.stderr[-2000:]}")
            seconds.append(datetime.strptime(started.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() - spawned)
    finally:
        remove_volume(volume)
    return statistics.median(seconds)


def cli_startup(env: dict[str, str]) -> float:
    """Median wall time of `python -m dockvault --version` (3 runs): the CLI's start-up."""
    times = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([*DOCKVAULT, "--version"], capture_output=True, check=True, env=env)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# ---------------------------------------------------------------------------------- command line --
def add_run_options(parser: argparse.ArgumentParser) -> None:
    """--json and --quiet-wait, the same in every script that runs methods side by side."""
    parser.add_argument("--json", action="store_true", help="also print a JSON summary")
    parser.add_argument("--quiet-wait", type=float, default=QUIET["max_wait"], metavar="SECONDS",
                        help="before each timed run, wait up to this long for the machine to be idle "
                             "(default 15; 0: never)")


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace, *, example: str,
               tools: tuple[str, ...] = ("docker", "sync"), root: bool = False) -> None:
    """Refuse to run outside the harness (never against the system engine) or without the tools; then apply
    --quiet-wait and let SIGTERM run the scripts' clean-up (`finally`)."""
    if getattr(args, "repeat", 1) < 1:
        parser.error("--repeat must be at least 1")
    missing = [v for v in ("DOCKER_HOST", "DOCKVAULT_TEST_IMAGE") if not os.environ.get(v)]
    if missing:
        parser.error(f"{' and '.join(missing)} not set: run through the harness, e.g. `{example}` "
                     "(a private dockerd; never the system one)")
    for tool in tools:
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed")
    if root and os.geteuid() != 0:
        parser.error("must run as root: the test volume is written straight into its Mountpoint")
    QUIET["max_wait"] = max(0.0, getattr(args, "quiet_wait", QUIET["max_wait"]))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


# ------------------------------------------------------------------------------------- machine --
def tool_version(cmd: list[str]) -> str:
    try:
        text = subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
        m = re.search(r"v?(\d+\.\d+(?:\.\d+)?)", text)
        return f"{cmd[0]} {m.group(1)}" if m else text
    except (OSError, IndexError):
        return "?"


def machine(*tools: str) -> dict:
    """Cores, CPU model, kernel, memory, Python, the engine's Docker version, and `TOOL --version` of each tool."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB, 1),
            "python": platform.python_version(), "docker": docker("version", "-f", "{{.Server.Version}}", check=False),
            **{tool: tool_version([tool, "--version"]) for tool in tools}}


def machine_line(mach: dict, *extra: str) -> str:
    return (f"machine: {mach['cores']} cores ({mach['cpu']}), {mach['memory_gib']} GiB, Linux {mach['kernel']}, "
            f"Docker {mach['docker']}, Python {mach['python']}" + "".join(f", {e}" for e in extra))


# ------------------------------------------------------------------------------------ machine load --
def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return sum(values) - values[3] - values[4], sum(values)


def busy_fraction(interval: float) -> float:
    b1, t1 = cpu_jiffies()
    time.sleep(interval)
    b2, t2 = cpu_jiffies()
    return (b2 - b1) / (t2 - t1) if t2 > t1 else 0.0


def wait_quiet(max_wait: float | None = None) -> float:
    """Other sessions may share the machine: wait (a bounded time) for half a second with little CPU use."""
    deadline = time.monotonic() + (QUIET["max_wait"] if max_wait is None else max_wait)
    while True:
        busy = busy_fraction(0.5)
        if busy <= QUIET["threshold"] or time.monotonic() >= deadline:
            return busy


def process_cpu_reader(pid: int) -> Callable[[], float | None]:
    """A `run_timed` counter: CPU seconds (user + sys, all threads) of process `pid` so far, None once it is gone."""
    tick = os.sysconf("SC_CLK_TCK")

    def read() -> float | None:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            return None
    return read


def delta(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


def read_into_cache(root: Path) -> None:
    """Read every file under `root` once, so that a timed command after this reads them from the page cache."""
    buffer = bytearray(1 << 20)
    for folder, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError), open(os.path.join(folder, name), "rb", buffering=0) as file:
                while file.readinto(buffer):
                    pass


def sync() -> None:
    subprocess.run(["sync"], check=True)


# -------------------------------------------------------------------------------------- spawner --
SPAWNER_CODE = r"""
import json, os, subprocess, sys, time
for line in sys.stdin:
    req = json.loads(line)
    try:
        with open(req["stdin"] or os.devnull, "rb") as inp, open(req["stdout"], "wb") as out, \
                open(req["stderr"], "wb") as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen(req["cmd"], stdin=inp, stdout=out, stderr=err, env=req["env"], cwd=req.get("cwd"))
            _, status, usage = os.wait4(proc.pid, 0)
            seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        reply = {"code": proc.returncode, "seconds": seconds, "maxrss_kib": usage.ru_maxrss,
                 "cpu": usage.ru_utime + usage.ru_stime}
    except OSError as exc:
        reply = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(reply), flush=True)
"""


class Spawner:
    """Starts the timed commands from a small process (see the module's docstring); one request at a time."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SPAWNER_CODE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def run(self, cmd: list[str], *, env: dict[str, str] | None, stdin: Path | None, stdout: Path,
            stderr: Path, cwd: Path | None = None) -> dict:
        """Run `cmd` to completion: {"code", "seconds" (wall), "maxrss_kib", "cpu" (user + sys seconds)}."""
        assert self.proc.stdin and self.proc.stdout
        request = {"cmd": cmd, "env": env, "stdin": stdin and str(stdin), "stdout": str(stdout), "stderr": str(stderr),
                   "cwd": cwd and str(cwd)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError(f"the spawner process died (exit code {self.proc.poll()})")
        reply = json.loads(line)
        if "error" in reply:
            raise BenchError(f"could not start {shlex.join(cmd)}: {reply['error']}")
        return reply

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


SPAWNER: Spawner | None = None


@contextlib.contextmanager
def spawner() -> Iterator[Spawner]:
    """Run the spawner for the `with` block (timed commands need it: `run_timed`, `rss_floor`)."""
    global SPAWNER
    SPAWNER = Spawner()
    try:
        yield SPAWNER
    finally:
        SPAWNER.close()
        SPAWNER = None


def run_bench(bench, as_json: bool, *reports: Callable[[dict], None]) -> int:
    """Set up, run and summarize `bench` with the spawner running, clean up whatever happens; then hand the
    summary to each of `reports` and print it as JSON if asked. The exit code."""
    with spawner():
        try:
            byte_compile_dockvault()
            bench.setup()
            bench.run()
            summary = bench.summary()
        except BenchError as exc:
            print(f"\nBENCHMARK FAILED: {exc}", file=sys.stderr)
            return 1
        finally:
            bench.cleanup()
    for report in reports:
        report(summary)
    if as_json:
        print()
        print(json.dumps(summary, indent=1))
    return 0


def byte_compile_dockvault() -> None:
    """Byte-compile the dockvault package the timed commands import, as `pip install` does (and so the image):
    a working tree run with PYTHONDONTWRITEBYTECODE set would otherwise compile every module from source at each
    start (35 ms of start-up measured here), which no installed dockvault does."""
    import importlib.util
    spec = importlib.util.find_spec("dockvault")
    if spec is None or not spec.submodule_search_locations:
        raise BenchError("dockvault is not installed: pip install -e .")
    package = spec.submodule_search_locations[0]
    subprocess.run([sys.executable, "-m", "compileall", "-q", package], check=True, stdout=subprocess.DEVNULL)


def _spawner() -> Spawner:
    if SPAWNER is None:
        raise RuntimeError("run_timed needs the spawner: call it inside `with spawner():`")
    return SPAWNER


def rss_floor(scratch: Path) -> float:
    """What wait4 reports for a trivial command (`true`), in MiB: the lowest peak RSS this set-up can measure."""
    return _spawner().run(["true"], env=None, stdin=None, stdout=scratch / "stdout.txt",
                          stderr=scratch / "stderr.txt")["maxrss_kib"] / 1024


# ------------------------------------------------------------------------------------ timed runs --
@dataclass
class Run:
    seconds: float                # wall time of the command, start-up included
    maxrss_kib: int               # its peak RSS: ru_maxrss from wait4 (through the spawner)
    cpu_seconds: float            # its user + sys from wait4 (with the children it waited for)
    flush_seconds: float          # the `sync` right after the run: writeback the command left behind
    background: float = 0.0       # share of all cores busy in the half second before the run
    machine_busy: float = 0.0     # share of all cores busy during the run (ours and everyone else's)
    busy_cpu_seconds: float = 0.0  # CPU seconds all cores spent busy during the run (ours and everyone else's)
    output_bytes: int | None = None
    stdout: str = ""


def run_timed(cmd: list[str], *, label: str, scratch: Path, env: dict[str, str] | None = None,
              stdin: Path | None = None, stdout: Path | None = None, prepare: Callable[[], None] = sync,
              max_wait: float | None = None, counters: dict[str, Callable[[], float | None]] | None = None,
              make: type[Run] = Run, cwd: Path | None = None) -> Run:
    """prepare (default: `sync`), wait for a quiet machine, then run `cmd` (in `cwd`, if given) to completion
    through the spawner.

    Wall time, peak RSS and CPU seconds of the command come from the spawner (wait4); `counters` are read
    right before and after, and their differences passed to `make` under the same names (fields of a
    subclass of Run). Output goes to `stdout` when given (not read back), else into `run.stdout`.
    """
    prepare()
    background = wait_quiet(max_wait)
    out_path, err_path = stdout or scratch / "stdout.txt", scratch / "stderr.txt"
    counters = counters or {}
    b1, t1 = cpu_jiffies()
    before = {name: read() for name, read in counters.items()}
    result = _spawner().run(cmd, env=env, stdin=stdin, stdout=out_path, stderr=err_path, cwd=cwd)
    after = {name: read() for name, read in counters.items()}
    b2, t2 = cpu_jiffies()
    t = time.perf_counter()
    sync()
    flush = time.perf_counter() - t
    text = "" if stdout else out_path.read_text(errors="replace")
    if result["code"] != 0:
        raise BenchError(f"{label} failed with exit code {result['code']}\n$ {shlex.join(cmd)}\n"
                         f"{text[-3000:]}\n{err_path.read_text(errors='replace')[-3000:]}")
    return make(seconds=result["seconds"], maxrss_kib=result["maxrss_kib"], cpu_seconds=result["cpu"],
                flush_seconds=flush, background=background,
                machine_busy=(b2 - b1) / (t2 - t1) if t2 > t1 else 0.0,
                busy_cpu_seconds=(b2 - b1) / os.sysconf("SC_CLK_TCK"), stdout=text,
                **{name: delta(after[name], before[name]) for name in counters})


@dataclass
class Method:
    key: str
    title: str
    runs: list[Run] = field(default_factory=list)

    def median(self, attr: str) -> float:
        values = [getattr(r, attr) for r in self.runs if getattr(r, attr) is not None]
        return statistics.median(values) if values else float("nan")

    @property
    def seconds(self) -> float:
        return self.median("seconds")

    def summary(self, nbytes: int) -> dict:
        """The JSON summary of the method's runs; MB/s is `nbytes` (10^6) per median second."""
        return {"title": self.title.split(None, 1)[1], "seconds_median": self.seconds,
                "seconds": [round(r.seconds, 3) for r in self.runs], "mb_per_s": nbytes / 1e6 / self.seconds,
                "output_bytes": None if self.runs[0].output_bytes is None else int(self.median("output_bytes")),
                "cpu_seconds_median": self.median("cpu_seconds"),
                "sync_after_seconds_median": self.median("flush_seconds"),
                "machine_busy_before": [round(r.background, 3) for r in self.runs],
                "machine_busy_during": [round(r.machine_busy, 3) for r in self.runs],
                "peak_rss_mib": max(r.maxrss_kib for r in self.runs) / 1024}
