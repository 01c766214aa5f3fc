"""SIGKILL at seeded random points of every job kind; the next start must leave nothing broken behind."""

from __future__ import annotations

import random

import pytest

from tests.e2e.cli import dockvault
from tests.faults.conftest import SEED
from tests.faults.crash import KINDS, Tally

pytestmark = pytest.mark.docker

KILLS = 2  # per kind here; benchmarks/faults.py runs 100 over all kinds


@pytest.mark.parametrize("kind", KINDS)
def test_sigkill_at_random_points_leaves_nothing_broken(kind, fault_site):
    site = fault_site(kind)
    rng = random.Random(f"{SEED}-{kind}")
    total = Tally()
    for _ in range(KILLS):
        total.add(site.kill_once(rng))
    assert total.kills == KILLS, total.notes
    staged = [note for note in total.notes if "restore staging folders" in note]
    others = [note for note in total.notes if note not in staged]
    assert others == [], "\n".join(total.notes)
    if staged:  # open: the next start removes the killed restore's helper, not the folder it extracted into
        pytest.xfail(f"a restore killed mid-extraction leaves its staging folder in the target volume: {staged}")


def test_start_up_removes_temp_folders_of_a_killed_dockvault_only(cli_env, tmp_path):
    """A kill between making a FIFO or probe folder and creating its helper leaves the folder with no container
    to find it by; the next start removes it by the dead pid in its name, and never a live process's."""
    import os
    import subprocess

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = [tmp / f"dockvault-pipe-{dead.pid}-abc123", tmp / f"dockvault-probe-{dead.pid}-def456"]
    live = tmp / f"dockvault-pipe-{os.getpid()}-ghi789"
    for path in (*left, live):
        path.mkdir()
        os.mkfifo(path / "stream")
    result = dockvault("run", "--once", env=dict(cli_env, TMPDIR=str(tmp)), check=False)
    assert result.returncode == 0, result.stderr
    assert sorted(tmp.iterdir()) == [live]
