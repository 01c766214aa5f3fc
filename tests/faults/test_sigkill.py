"""SIGKILL at seeded random points of every job kind; the next start must leave nothing broken behind."""

from __future__ import annotations

import random

import pytest

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
    assert total.clean, "\n".join(total.notes)
