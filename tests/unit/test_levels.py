"""Levels without an engine: the scheduler, the level planner, retention and the chain index, all pure.

The seed's schedule (examples/seed-schedule) is driven through five simulated weeks: which runs happen at
which level, how many restore points exist, and that every kept point's chain is complete.
"""

from __future__ import annotations

import io
import os
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from dockvault.api import Backup
from dockvault.api.loader import load_file
from dockvault.controller import jobs
from dockvault.controller.chains import BrokenChain, bases_needed, chain_of, plan_level
from dockvault.controller.retention import plan_retention
from dockvault.controller.schedule import backup_due
from dockvault.controller.status import Attempt
from dockvault.sources.tarcheck import checked_tar, new_checker
from dockvault.sources.tarindex import chain_index
from dockvault.sources.tarstream import UnsafeArchive
from tests.unit.builders import artifact, backup, utc

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "seed-schedule"
TOKYO = ZoneInfo("Asia/Tokyo")


def chained(started: datetime, level: str, base: str | None, *, targets=("uploads", "pgdata"), policy="app-volumes",
            snapshots: bool = True) -> Backup:
    files = [artifact(t) for t in targets]
    if snapshots:
        files += [{**artifact(t, file=f"{t}.snar.zst"), "role": "snapshot"} for t in targets]
    record = backup(started, policy=policy, artifacts=files)
    return record.model_copy(update={"spec": record.spec.model_copy(update={"level": level, "base": base})})


def policies() -> dict[str, object]:
    found = {}
    for name in ("dumps.yaml", "volumes.yaml"):
        result = load_file(EXAMPLES / name)
        assert not result.errors, result.errors
        for item in result.items:
            found[item.resource.name] = item.resource
    return found


def simulate(policy, start: datetime, end: datetime, step=timedelta(minutes=15)):
    """Run the scheduler every `step`, each due run succeeding at once, retention after each one as run_backup
    does. Returns the runs (local time, level) and the repository left at `end`."""
    repository: list[Backup] = []
    last: Attempt | None = None
    runs = []
    now = start
    while now <= end:
        history = jobs.History(last_attempt=last, has_backup=bool(repository))
        job = jobs.backup_job(policy, policy.name, history, now)
        if job is not None:
            volumes = policy.spec.volume_targets
            plan = plan_level(job.level, repository, volumes)
            if volumes:
                record = chained(now, plan.level, plan.base.id if plan.base else None, targets=volumes,
                                 policy=policy.name)
            else:
                record = backup(now, policy=policy.name, artifacts=[artifact("db")])
            repository.append(record)
            last = Attempt(record.id, "Succeeded", now, now + timedelta(minutes=2), level=record.level)
            runs.append((now.astimezone(TOKYO), record.level))
            decisions = plan_retention(repository, policy.spec.retention, now=now + timedelta(minutes=2),
                                       tz=policy.spec.timezone)
            repository = [b for b in repository if b.id not in decisions.delete]
        now += step
    return runs, repository


def test_the_seed_schedule_runs_as_written_for_five_weeks():
    found = policies()
    start = datetime(2026, 11, 1, 17, 0, tzinfo=TOKYO).astimezone(UTC)  # a Sunday, before the first slot
    end = start + timedelta(weeks=5)

    dump_runs, dumps = simulate(found["app-db"], start, end)
    volume_runs, volumes = simulate(found["app-volumes"], start + timedelta(minutes=30), end)

    # dumps: the first at once (no backup yet), then every day at 17:00, always full
    assert all(level == "full" for _, level in dump_runs)
    assert [(t.hour, t.minute) for t, _ in dump_runs[1:]] == [(17, 0)] * 35
    # volumes: a full every Sunday at 17:30, a differential every day at 17:45 (Sundays included)
    fulls = [t for t, level in volume_runs if level == "full"]
    differentials = [t for t, level in volume_runs if level == "differential"]
    assert [(t.weekday(), t.hour, t.minute) for t in fulls] == [(6, 17, 30)] * 5
    assert [(t.hour, t.minute) for t in differentials] == [(17, 45)] * 35
    assert len({t.date() for t in differentials}) == 35

    # restore points: 7 dumps and 14 volume points (the seed's "up to 21"); the fulls they build on are kept as
    # bases, and every kept point's chain is complete
    now = end + timedelta(minutes=2)
    points = plan_retention(volumes, found["app-volumes"].spec.retention, now=now, tz="Asia/Tokyo")
    by_id = {b.id: b for b in volumes}
    counted = [d for d in points.decisions if any(not r.startswith("base of") for r in d.reasons)]
    assert len(dumps) == 7 and len(counted) == 14 and len(dumps) + len(counted) <= 21
    for kept in volumes:
        assert chain_of(kept, by_id)[0].level == "full"  # complete back to its full (BrokenChain otherwise)
    bases = [d for d in points.decisions if d not in counted]
    assert bases and all(by_id[d.backup_id].level == "full" for d in bases)
    assert len(volumes) <= 14 + 3  # 14 points and at most the three fulls two weeks of them build on


def test_levels_follow_their_own_schedules_and_a_full_slot_wins():
    policy = policies()["app-volumes"]
    sunday_1729 = datetime(2026, 11, 8, 17, 29, tzinfo=TOKYO).astimezone(UTC)
    saturday = sunday_1729 - timedelta(days=1)
    assert backup_due(policy.spec, last_attempt=saturday, now=sunday_1729).level == "differential"
    sunday_1750 = sunday_1729 + timedelta(minutes=21)  # both the 17:30 full and the 17:45 differential passed
    due = backup_due(policy.spec, last_attempt=saturday + timedelta(minutes=20), now=sunday_1750)
    assert due.due and due.level == "full"
    # a retry of a failed differential stays a differential
    failed = Attempt("x", "Failed", sunday_1729, sunday_1729, error=jobs.TEMPORARY, level="differential",
                     next_retry_at=sunday_1729 + timedelta(seconds=15))
    job = jobs.backup_job(policy, "k", jobs.History(last_attempt=failed), sunday_1729 + timedelta(seconds=20))
    assert job is not None and job.level == "differential" and job.attempt == 2


def test_the_level_planner_picks_its_base_or_says_why_it_takes_a_full():
    full = chained(utc(2026, 11, 1), "full", None)
    diff = chained(utc(2026, 11, 2), "differential", full.id)
    assert plan_level("differential", [full, diff], ["uploads", "pgdata"]).base == full
    assert plan_level("incremental", [full, diff], ["uploads", "pgdata"]).base == diff
    plain = backup(utc(2026, 11, 3), policy="app-volumes", artifacts=[artifact("uploads"), artifact("pgdata")])
    assert plan_level("incremental", [full, diff, plain], ["uploads", "pgdata"]).level == "full"
    assert "no snapshot file" in plan_level("incremental", [full, plain], ["uploads", "pgdata"]).note
    assert "no full backup yet" in plan_level("differential", [], ["uploads"]).note
    added = plan_level("differential", [full], ["uploads", "pgdata", "new"])
    assert added.level == "full" and "new" in added.note  # a target added since the full has no snapshot
    failed = backup(utc(2026, 11, 4), policy="app-volumes", phase="Failed")
    assert plan_level("incremental", [full, failed], ["uploads", "pgdata"]).base == full


def test_retention_keeps_every_base_a_kept_backup_needs():
    full = chained(utc(2026, 11, 1, 3), "full", None)
    incs = [chained(utc(2026, 11, 1 + day, 3), "incremental", None) for day in range(1, 5)]
    for i, inc in enumerate(incs):
        incs[i] = inc.model_copy(update={"spec": inc.spec.model_copy(update={"base": (incs[i - 1] if i else full).id})})
    plan = plan_retention([full, *incs], RetentionOnlyLast(1), now=utc(2026, 11, 6))
    assert plan.delete == []  # keepLast 1 keeps the newest incremental, and so its whole chain
    reasons = {d.backup_id: d.reasons for d in plan.decisions}
    assert reasons[full.id] == (f"base of {incs[-1].id}",)
    assert bases_needed([incs[-1].id], {b.id: b for b in [full, *incs]}) == {
        b.id: incs[-1].id for b in [full, *incs[:-1]]}
    assert [b.id for b in chain_of(incs[-1], {b.id: b for b in [full, *incs]})] == [b.id for b in [full, *incs]]
    with pytest.raises(BrokenChain, match=f"builds on backup {incs[1].id}, which is missing"):
        chain_of(incs[2], {b.id: b for b in [full, incs[0], incs[2]]})


def RetentionOnlyLast(n: int):
    from dockvault.api.policy import RetentionSpec
    return RetentionSpec(keep_last=n)


def _tar(members: list[tuple[str, str, bytes | None, dict[str, str]]]) -> bytes:
    """A pax archive; members are (name, type "d"/"f"/"l", content or link target, pax records)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, kind, body, pax in members:
            info = tarfile.TarInfo(name)
            info.mtime, info.pax_headers = 1_700_000_000, pax
            if kind == "d":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(info)
            elif kind == "l":
                info.type, info.linkname = tarfile.SYMTYPE, body.decode()
                archive.addfile(info)
            else:
                info.size = len(body)
                archive.addfile(info, io.BytesIO(body))
    return out.getvalue()


def test_the_chain_index_applies_deletions_and_renames_like_tar():
    full = _tar([(".", "d", None, {"GNU.dumpdir": "Ya\0Dold\0Dgone\0"}), ("old", "d", None, {"GNU.dumpdir": "Yf\0"}),
                 ("gone", "d", None, {"GNU.dumpdir": "Yx\0"}), ("a", "f", b"1", {}), ("old/f", "f", b"2", {}),
                 ("gone/x", "f", b"3", {})])
    diff = _tar([(".", "d", None, {"GNU.dumpdir": "Na\0Dnew\0Rold\0Tnew\0Yb\0"}), ("new", "d", None, {"GNU.dumpdir": "Nf\0"}),
                 ("b", "f", b"4", {})])
    index = chain_index([[full], [diff]])
    assert sorted(index.entries) == [".", "a", "b", "new", "new/f"]
    assert index.entries["new/f"][-1] == chain_index([[full]]).entries["old/f"][-1]


@pytest.mark.parametrize("dumpdir, problem", [
    ("Y../escape\0", "not a plain name"),
    ("Ysub/file\0", "not a plain name"),
    ("R./a\0T../../etc\0", "contains '..'"),
    ("R/abs\0T./b\0", "absolute path"),
    ("Qweird\0", "unknown listing record"),
])
def test_the_checker_refuses_a_hostile_directory_listing(dumpdir, problem):
    archive = _tar([(".", "d", None, {"GNU.dumpdir": dumpdir})])
    with pytest.raises(UnsafeArchive, match=problem):
        b"".join(checked_tar([archive]))


def test_a_chain_cannot_write_through_a_symlink_an_earlier_archive_left():
    checker = new_checker()
    b"".join(checked_tar([_tar([("link", "l", b"/etc", {})])], checker))
    with pytest.raises(UnsafeArchive, match="through the symlink"):
        b"".join(checked_tar([_tar([("link/passwd", "f", b"x", {})])], checker))
    assert os.path.basename(str(EXAMPLES)) == "seed-schedule"
