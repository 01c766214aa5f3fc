"""A second private Docker engine, for tests of two hosts (migration): like scripts/harness.sh's first one,
with its own data-root, exec-root, pidfile and unix socket, `--bridge=none --iptables=false`, and the fixture
image loaded from the first engine (nothing is pulled)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def second_engine(image: str, first_host: str, timeout: float = 90.0) -> Iterator[str]:
    """Start a dockerd, load `image` from the engine at `first_host` into it, yield its DOCKER_HOST, stop it."""
    if shutil.which("dockerd") is None:
        raise RuntimeError("dockerd is not installed")
    root = Path(tempfile.mkdtemp(prefix="dv2.", dir="/tmp"))  # short: unix socket paths are limited
    host = f"unix://{root}/docker.sock"
    log = open(root / "dockerd.log", "wb")  # noqa: SIM115 - the daemon keeps it
    daemon = subprocess.Popen(
        ["dockerd", "--data-root", str(root / "data"), "--exec-root", str(root / "exec"), "--pidfile",
         str(root / "pid"), "-H", host, "--bridge=none", "--iptables=false", "--ip6tables=false"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while subprocess.run(["docker", "-H", host, "version"], capture_output=True, timeout=10).returncode != 0:
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the second dockerd did not start: "
                                   f"{(root / 'dockerd.log').read_text(errors='replace')[-2000:]}")
            time.sleep(0.5)
        save = subprocess.Popen(["docker", "-H", first_host, "save", image], stdout=subprocess.PIPE)
        subprocess.run(["docker", "-H", host, "load", "-q"], stdin=save.stdout, check=True, capture_output=True,
                       timeout=300)
        save.wait(60)
        yield host
    finally:
        ids = subprocess.run(["docker", "-H", host, "ps", "-aq"], capture_output=True, text=True, timeout=30).stdout.split()
        if ids:
            subprocess.run(["docker", "-H", host, "rm", "-f", *ids], capture_output=True, timeout=60)
        daemon.terminate()
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(10)
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                  if line.split()[4].startswith(f"{root}/")]
        for mount in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
