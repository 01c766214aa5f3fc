#!/usr/bin/env python3
"""Where should a volume backup compress? A prototype measurement (issue 10, part 2), not a product path.

Run it inside the harness (private dockerd, fixture image):

    bash scripts/harness.sh python3 benchmarks/compress_where.py --size 1G --repeat 3

Three ways to turn the volume into a .tar.zst, each through dockvault's own helper (engine.core.Engine.helper,
the same TAR_CREATE arguments) and written with an fsync, over both helper transports (fifo: a FIFO on a
shared filesystem; api: the helper's stdout through `docker exec`, as for a remote engine):

  inprocess     tar in the helper; dockvault watches tar's end-of-archive marker (EndMarker), compresses
                with zstd level 3 in-process (zstandard, threads=-1, 1 MiB jobs: the product's settings),
                hashes and writes: what `dockvault backup` does.
  helper        `tar | zstd -T0 -3` in the helper; dockvault only hashes and writes. No proof of the end
                marker: not publishable as it is, the lower bound of this layout.
  helper+check  as helper, plus an in-process zstd decompression feeding EndMarker: what publishing under
                the "saw tar's end-of-archive marker" rule would cost.

Each run is a child process started through the spawner (common.run_timed: wall time, peak RSS, CPU of the
Python process; the helper's CPU is not in it, so the busy-CPU column, all cores, is shown too).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

from common import (BenchError, Method, add_run_options, check_args, human, log, machine, machine_line, parse_size,
                    run_bench, run_timed)

MODES = ("inprocess", "helper", "helper+check")
TRANSPORTS = ("fifo", "api")


def worker(mode: str, volume: str, out_path: str) -> None:
    """One backup of `volume` into `out_path` the `mode` way (run as a child process)."""
    import zstandard

    from dockvault.api.policy import CompressionSpec
    from dockvault.engine.core import STREAM, Engine
    from dockvault.sources.tarstream import EndMarker
    from dockvault.sources.volume import SOURCE_MOUNT, TAR_CREATE
    from dockvault.storage.codec import CompressingWriter

    engine = Engine.from_env(helper_image=os.environ["DOCKVAULT_HELPER_IMAGE"])
    labels = {"dockvault.bench": "compress-where"}
    if mode == "inprocess":
        command = TAR_CREATE
    else:  # the same tar to stdout, piped into zstd; its output to the stream (stdout on the api transport)
        tar = ["-" if part == STREAM else part for part in TAR_CREATE]
        command = ["sh", "-c", 'o=$1; shift; [ "$o" = - ] || exec > "$o"; "$@" | zstd -q -T0 -3', "sh", STREAM, *tar]
    end = EndMarker()
    with open(out_path, "wb") as out:
        with engine.helper(command, volume=volume, mount=SOURCE_MOUNT, read_only=True, labels=labels) as helper:
            if mode == "inprocess":
                sink = CompressingWriter(out, CompressionSpec(algorithm="zstd", level=3))
                for chunk in end.watch(helper.read()):
                    sink.write(chunk)
                sink.close()
            else:
                digest = hashlib.sha256()
                check = zstandard.ZstdDecompressor().decompressobj() if mode == "helper+check" else None
                for chunk in helper.read():
                    digest.update(chunk)
                    out.write(chunk)
                    if check is not None:
                        for start in range(0, len(chunk), 64 << 10):  # small slices: logs expand twentyfold
                            for _ in end.watch([check.decompress(chunk[start:start + (64 << 10)])]):
                                pass
            result = helper.wait()
        out.flush()
        os.fsync(out.fileno())
    if result.exit_code != 0:
        raise SystemExit(f"helper exited {result.exit_code}: {result.stderr}")
    if mode != "helper" and not end.seen:
        raise SystemExit(f"no end-of-archive marker seen ({end.problem or 'stream ended early'})")
    print(f"transport={engine.transport} members={end.members}")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.image = os.environ["DOCKVAULT_TEST_IMAGE"]
        self.methods = {f"{m}/{t}": Method(f"{m}/{t}", f"({m}/{t}) {m} over {t}") for t in TRANSPORTS for m in MODES}

    def setup(self) -> None:
        from volume_backup import VOLUME_PREFIX, prepare_source

        self.work = Path(tempfile.mkdtemp(prefix="dockvault-compress-where-"))
        self.scratch = self.work / "scratch"
        self.scratch.mkdir()
        self.volume, _, _, self.source, _ = prepare_source(self.args.size, self.args.seed,
                                                           f"{VOLUME_PREFIX}-restore-cw-{uuid.uuid4().hex[:4]}")
        self.load_start = os.getloadavg()

    def run(self) -> None:
        for i in range(self.args.repeat):
            for key, method in self.methods.items():
                mode, transport = key.split("/")
                out = self.work / "x.tar.zst"
                env = dict(os.environ, DOCKVAULT_HELPER_IMAGE=self.image, DOCKVAULT_TRANSPORT=transport)
                run = run_timed([sys.executable, __file__, "--worker", mode, self.volume, str(out)], env=env,
                                label=key, scratch=self.scratch)
                run.output_bytes = out.stat().st_size
                out.unlink()
                method.runs.append(run)
                log(f"repeat {i + 1}/{self.args.repeat} {key:18} {run.seconds:6.2f}s, {run.output_bytes:,} bytes, "
                    f"cpu {run.cpu_seconds:.1f}s (all cores busy {run.busy_cpu_seconds:.1f}s), "
                    f"RSS {run.maxrss_kib / 1024:.1f} MiB, busy before {run.background:.0%} ({run.stdout.strip()})")

    def cleanup(self) -> None:
        from common import remove_work_and_source

        remove_work_and_source(self)

    def summary(self) -> dict:
        raw = self.source.bytes
        return {"machine": machine("zstd"), "raw_bytes": raw, "files": len(self.source.files),
                "load_average": {"start": self.load_start, "end": os.getloadavg()},
                "methods": {k: {**m.summary(raw),
                                "busy_cpu_seconds_median": statistics.median(r.busy_cpu_seconds for r in m.runs)}
                            for k, m in self.methods.items()}}


def print_report(s: dict) -> None:
    print()
    print(machine_line(s["machine"], s["machine"]["zstd"]))
    print(f"volume: {s['raw_bytes']:,} bytes ({human(s['raw_bytes'])}), {s['files']:,} files; load average "
          f"{s['load_average']['start'][0]:.2f} at start, {s['load_average']['end'][0]:.2f} at end")
    print(f"{'mode / transport':24} {'seconds':>8} {'MB/s':>7} {'output bytes':>14} {'RSS MiB':>8} {'cpu s':>6} "
          f"{'all-core cpu s':>14} {'busy':>5}  runs (s)")
    for key, v in s["methods"].items():
        print(f"{key:24} {v['seconds_median']:8.2f} {v['mb_per_s']:7.1f} {v['output_bytes']:>14,} "
              f"{v['peak_rss_mib']:8.1f} {v['cpu_seconds_median']:6.1f} {v['busy_cpu_seconds_median']:14.1f} "
              f"{statistics.median(v['machine_busy_before']):5.0%}  " + " ".join(f"{x:.2f}" for x in v["seconds"]))
    print("cpu s: the Python process (zstd worker threads included), not the helper's tar/zstd; all-core cpu s: CPU")
    print("all cores spent during the run (this run, the engine, and any other load on the machine)")
    for transport in TRANSPORTS:
        base = s["methods"][f"inprocess/{transport}"]["seconds_median"]
        print(f"{transport}: time inprocess / helper = {base / s['methods'][f'helper/{transport}']['seconds_median']:.3f}x, "
              f"inprocess / helper+check = {base / s['methods'][f'helper+check/{transport}']['seconds_median']:.3f}x")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker(*argv[1:4])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("1G"), help="volume size (default 1G)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of every mode (default 3)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the volume content (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the test volume (volume_backup.py reuses it)")
    add_run_options(parser)
    args = parser.parse_args(argv)
    check_args(parser, args, example="bash scripts/harness.sh python3 benchmarks/compress_where.py --size 256M",
               tools=("docker", "tar", "zstd", "sync"), root=True)
    return run_bench(Bench(args), args.json, print_report)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        sys.exit(1)
