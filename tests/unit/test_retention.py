"""Retention planner: restic `forget` examples, our documented differences, and invariants under random input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockvault.api.backup import Backup
from dockvault.api.policy import RetentionSpec
from dockvault.controller.retention import Decision, RetentionPlan, plan_retention


def backup(at: datetime | str, *, id: str | None = None, phase: str | None = "Succeeded", completed: bool = True):
    """A Backup record built through the real model, as it would be read from manifest.json (phase None: no status)."""
    at = datetime.fromisoformat(at) if isinstance(at, str) else at
    status = {"phase": phase, "startedAt": (at - timedelta(minutes=2)).isoformat()}
    if completed:
        status["completedAt"] = at.isoformat()
    id = id or at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    record = {
        "apiVersion": "dockvault.io/v1alpha1",
        "kind": "Backup",
        "metadata": {"name": f"app-{id.lower()}"},
        "spec": {"policy": "app", "id": id},
    }
    return Backup.model_validate(record if phase is None else {**record, "status": status})


def ids(*stamps: str) -> list[str]:
    return [datetime.fromisoformat(s).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ") for s in stamps]


def reasons(plan: RetentionPlan) -> dict[str, tuple[str, ...]]:
    return {d.backup_id: d.reasons for d in plan.decisions}


NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def every_day(first: str, last: str, *hours: int) -> list[Backup]:
    day, end = datetime.fromisoformat(first), datetime.fromisoformat(last)
    out = []
    while day <= end:
        out += [backup(day.replace(hour=h)) for h in hours or (3,)]
        day += timedelta(days=1)
    return out


# --- restic's documented examples -----------------------------------------------------------------


def test_restic_doc_twelve_sundays_keep_daily_4():
    sundays = [backup(datetime(2019, 9, 1, 11, tzinfo=UTC) + timedelta(weeks=w)) for w in range(12)]
    plan = plan_retention(sundays, RetentionSpec(keep_daily=4), now=datetime(2019, 11, 20, tzinfo=UTC))
    assert plan.keep == ids("2019-11-17T11:00Z", "2019-11-10T11:00Z", "2019-11-03T11:00Z", "2019-10-27T11:00Z")
    assert len(plan.delete) == 8
    assert reasons(plan)[plan.keep[1]] == ("daily 2019-11-10",)


def test_keep_daily_keeps_the_newest_of_each_day():
    backups = every_day("2026-11-16T00:00Z", "2026-11-20T00:00Z", 3, 11, 19)
    plan = plan_retention(backups, RetentionSpec(keep_daily=3), now=NOW)
    assert plan.keep == ids("2026-11-20T19:00Z", "2026-11-19T19:00Z", "2026-11-18T19:00Z")
    assert len(plan.delete) == 12
    assert reasons(plan)[plan.keep[0]] == ("daily 2026-11-20", "newest successful backup")
    assert reasons(plan)[plan.delete[-1]] == ("matched no keep rule",)


def test_a_rule_with_counts_left_also_keeps_the_oldest_backup():
    backups = every_day("2026-11-18T00:00Z", "2026-11-20T00:00Z", 3, 19)
    plan = plan_retention(backups, RetentionSpec(keep_daily=10), now=NOW)
    assert plan.keep == ids("2026-11-20T19:00Z", "2026-11-19T19:00Z", "2026-11-18T19:00Z", "2026-11-18T03:00Z")
    assert reasons(plan)[plan.keep[-1]] == ("oldest in daily bucket 2026-11-18",)


def test_keep_weekly_uses_iso_weeks_across_the_year_boundary():
    backups = every_day("2024-12-25T00:00Z", "2025-01-08T00:00Z")
    plan = plan_retention(backups, RetentionSpec(keep_weekly=3), now=datetime(2025, 1, 9, tzinfo=UTC))
    assert plan.keep == ids("2025-01-08T03:00Z", "2025-01-05T03:00Z", "2024-12-29T03:00Z")
    assert [reasons(plan)[i][0] for i in plan.keep] == ["weekly 2025-W02", "weekly 2025-W01", "weekly 2024-W52"]
    assert ids("2024-12-31T03:00Z")[0] in plan.delete  # same ISO week as 2025-01-05


def test_new_years_day_can_belong_to_the_previous_iso_year():
    backups = every_day("2026-12-30T00:00Z", "2027-01-01T00:00Z")
    plan = plan_retention(backups, RetentionSpec(keep_weekly=1), now=datetime(2027, 1, 2, tzinfo=UTC))
    assert reasons(plan)[plan.keep[0]][0] == "weekly 2026-W53"
    assert len(plan.keep) == 1


def test_keep_monthly():
    backups = [backup(datetime(2026, m, d, 3, tzinfo=UTC)) for m in range(1, 12) for d in (1, 15)]
    plan = plan_retention(backups, RetentionSpec(keep_monthly=3), now=NOW)
    assert plan.keep == ids("2026-11-15T03:00Z", "2026-10-15T03:00Z", "2026-09-15T03:00Z")
    assert [reasons(plan)[i][0] for i in plan.keep] == ["monthly 2026-11", "monthly 2026-10", "monthly 2026-09"]


def test_keep_hourly_and_keep_yearly_labels():
    backups = [backup("2025-06-01T10:00Z"), backup("2026-11-20T03:10Z"), backup("2026-11-20T03:40Z")]
    plan = plan_retention(backups, RetentionSpec(keep_hourly=1, keep_yearly=2), now=NOW)
    assert reasons(plan) == {
        "20261120T034000Z": ("hourly 2026-11-20 03:00", "yearly 2026", "newest successful backup"),
        "20261120T031000Z": ("matched no keep rule",),
        "20250601T100000Z": ("yearly 2025",),
    }


def test_keep_last_counts_backups_not_buckets_and_breaks_ties_by_id():
    same_time = datetime(2026, 11, 20, 3, tzinfo=UTC)
    backups = [backup(same_time, id="20261120T030000Z"), backup(same_time, id="20261120T030000Z-2")]
    backups += [backup(same_time - timedelta(hours=h)) for h in (1, 2, 3)]
    plan = plan_retention(backups, RetentionSpec(keep_last=3, keep_daily=1), now=NOW)
    assert plan.keep == ["20261120T030000Z-2", "20261120T030000Z", "20261120T020000Z"]
    assert reasons(plan)["20261120T030000Z-2"] == ("last 3", "daily 2026-11-20", "newest successful backup")
    assert reasons(plan)["20261120T030000Z"] == ("last 3",)
    assert plan.delete == ["20261120T010000Z", "20261120T000000Z"]


def test_combined_rules_are_ored_and_each_names_its_bucket():
    backups = every_day("2024-01-01T00:00Z", "2026-11-20T00:00Z")
    rules = RetentionSpec(keep_daily=7, keep_weekly=5, keep_monthly=12, keep_yearly=3)
    plan = plan_retention(backups, rules, now=NOW)
    assert reasons(plan)[plan.keep[0]] == (
        "daily 2026-11-20", "weekly 2026-W47", "monthly 2026-11", "yearly 2026", "newest successful backup"
    )
    # restic's "daily 7, weekly 5, monthly 12, yearly 75" example in miniature: 7 days (Nov 14-20, with
    # Sunday Nov 15) + 3 more Sundays + 11 more month ends (Oct 2026 ... Dec 2025) + the end of 2024.
    assert len(plan.keep) == 7 + 3 + 11 + 1
    assert reasons(plan)[ids("2025-12-31T03:00Z")[0]] == ("monthly 2025-12", "yearly 2025")


# --- keepWithin and our differences from restic ---------------------------------------------------------


def test_keep_within_counts_back_from_now():
    backups = [backup(NOW - timedelta(days=d)) for d in range(10)]
    plan = plan_retention(backups, RetentionSpec(keep_within=timedelta(days=7)), now=NOW)
    assert plan.keep == [b.id for b in backups[:7]]  # exactly 7 days old is outside, as in restic
    assert reasons(plan)[backups[3].id] == ("within 1w",)


def test_keep_within_is_not_relative_to_the_newest_backup_unlike_restic():
    backups = [backup(NOW - timedelta(days=d)) for d in (20, 21, 22)]
    plan = plan_retention(backups, RetentionSpec(keep_within=timedelta(days=7)), now=NOW)
    assert plan.keep == [backups[0].id]  # restic would keep all three (within 7d of the newest)
    assert reasons(plan)[backups[0].id] == ("newest successful backup",)


def test_no_rule_deletes_nothing():
    backups = every_day("2026-11-01T00:00Z", "2026-11-20T00:00Z")
    plan = plan_retention(backups, RetentionSpec(), now=NOW)
    assert plan.delete == [] and len(plan.keep) == 20
    assert reasons(plan)[backups[0].id] == ("no retention rule set",)


def test_all_counts_zero_still_keep_the_newest_successful_backup():
    backups = every_day("2026-11-01T00:00Z", "2026-11-20T00:00Z")
    rules = RetentionSpec(keep_last=0, keep_hourly=0, keep_daily=0, keep_weekly=0, keep_monthly=0, keep_yearly=0)
    plan = plan_retention(backups, rules, now=NOW)
    assert plan.keep == ids("2026-11-20T03:00Z")
    assert plan.decisions[0] == Decision("20261120T030000Z", True, ("newest successful backup",))


def test_time_zone_decides_which_day_a_backup_belongs_to():
    backups = [backup("2026-11-21T02:00Z"), backup("2026-11-20T22:00Z"), backup("2026-11-19T12:00Z")]
    in_utc = plan_retention(backups, RetentionSpec(keep_daily=2), now=NOW)
    in_new_york = plan_retention(backups, RetentionSpec(keep_daily=2), now=NOW, tz="America/New_York")
    assert in_utc.keep == ["20261121T020000Z", "20261120T220000Z"]
    assert in_new_york.keep == ["20261121T020000Z", "20261119T120000Z"]
    assert reasons(in_new_york)["20261121T020000Z"][0] == "daily 2026-11-20"
    assert plan_retention(backups, RetentionSpec(keep_daily=2), now=NOW, tz=ZoneInfo("America/New_York")) == in_new_york


def test_failed_and_running_backups_are_ignored_and_not_counted():
    backups = [
        backup("2026-11-20T05:00Z", phase="Running", completed=False),
        backup("2026-11-20T04:00Z", phase="Failed"),
        backup("2026-11-20T03:00Z"),
        backup("2026-11-19T03:00Z"),
        backup("2026-11-18T03:00Z"),
    ]
    plan = plan_retention(backups, RetentionSpec(keep_last=2), now=NOW)
    assert plan.keep == ["20261120T030000Z", "20261119T030000Z"]
    assert plan.delete == ["20261118T030000Z"]
    assert plan.ignored == ["20261120T050000Z", "20261120T040000Z"]
    assert plan.decisions[1] == Decision("20261120T040000Z", True, ("not counted: backup Failed",), ignored=True)
    assert "newest successful backup" in reasons(plan)["20261120T030000Z"]
    plan = plan_retention([*backups, backup("2026-11-01T00:00Z", phase=None)], RetentionSpec(keep_last=2), now=NOW)
    assert plan.ignored[0] == "20261101T000000Z"
    assert reasons(plan)["20261101T000000Z"] == ("not counted: backup without status",)


def test_backups_from_the_future_are_kept():
    backups = [backup(NOW + timedelta(days=30)), backup(NOW - timedelta(days=1)), backup(NOW - timedelta(days=2))]
    plan = plan_retention(backups, RetentionSpec(keep_last=1), now=NOW)
    assert plan.keep == [backups[0].id]
    assert reasons(plan)[backups[0].id] == (
        "last 1", "completed after now (clock skew?), never deleted", "newest successful backup"
    )
    plan = plan_retention(backups[::-1], RetentionSpec(keep_within=timedelta(days=3)), now=NOW - timedelta(days=3))
    assert plan.delete == [] and all("clock skew" in r[0] for r in reasons(plan).values())


def test_started_at_is_used_without_completed_at():
    backups = [backup("2026-11-20T03:00Z", completed=False), backup("2026-11-20T02:00Z")]
    plan = plan_retention(backups, RetentionSpec(keep_last=1), now=NOW)
    assert plan.keep == ["20261120T030000Z"]


def test_now_must_be_aware():
    with pytest.raises(ValueError, match="timezone-aware"):
        plan_retention([], RetentionSpec(keep_last=1), now=datetime(2026, 11, 21))
    assert plan_retention([], RetentionSpec(keep_last=1), now=NOW) == RetentionPlan(())


# --- properties -------------------------------------------------------------------------------------

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]
BASE = datetime(2025, 10, 20, tzinfo=UTC)
COUNTS = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")


@st.composite
def histories(draw) -> list[Backup]:
    """Backup histories dense enough to share hours, sparse enough to span years, written in any offset."""
    span = draw(st.sampled_from([timedelta(hours=3), timedelta(days=3), timedelta(days=90), timedelta(days=900)]))
    offsets = draw(st.lists(st.integers(0, int(span.total_seconds())), max_size=25))
    out = []
    for n, seconds in enumerate(offsets):
        at = (BASE + timedelta(seconds=seconds)).astimezone(ZoneInfo(draw(st.sampled_from(ZONES))))
        phase = draw(st.sampled_from(["Succeeded"] * 4 + ["Failed", "Running"]))
        stamp = f"{at.astimezone(UTC):%Y%m%dT%H%M%SZ}-{n}"
        out.append(backup(at, id=stamp, phase=phase, completed=phase != "Running" and draw(st.booleans())))
    return out


@st.composite
def retention_rules(draw) -> RetentionSpec:
    values = {name: draw(st.none() | st.integers(0, 6)) for name in COUNTS}
    values["keep_within"] = draw(st.none() | st.integers(1, 24 * 400).map(lambda h: timedelta(hours=h)))
    return RetentionSpec(**values)


nows = st.integers(-5, 1000).map(lambda days: BASE + timedelta(days=days))
zones = st.sampled_from(ZONES)


def when(b: Backup) -> tuple[datetime, str]:
    return (b.status.completed_at or b.status.started_at, b.id)


@settings(max_examples=300)
@given(histories(), retention_rules(), nows, zones)
def test_plan_partitions_succeeded_and_never_deletes_the_rest(backups, rules, now, tz):
    plan = plan_retention(backups, rules, now=now, tz=tz)
    succeeded = {b.id for b in backups if b.succeeded}
    assert set(plan.keep) | set(plan.delete) == succeeded
    assert not set(plan.keep) & set(plan.delete)
    assert set(plan.ignored) == {b.id for b in backups} - succeeded
    assert all(d.reasons for d in plan.decisions)
    assert [d.backup_id for d in plan.decisions] == [b.id for b in sorted(backups, key=_order, reverse=True)]
    if succeeded:
        assert max((b for b in backups if b.succeeded), key=when).id in plan.keep
    if rules.is_empty:
        assert plan.delete == []
    future = {b.id for b in backups if b.succeeded and when(b)[0] > now}
    assert future <= set(plan.keep)


def _order(b: Backup) -> tuple[datetime, str]:
    return (when(b)[0] if b.status else datetime.max.replace(tzinfo=UTC), b.id)


@settings(max_examples=200)
@given(histories(), st.integers(0, 8), nows, zones)
def test_keep_last_keeps_the_n_newest(backups, n, now, tz):
    plan = plan_retention(backups, RetentionSpec(keep_last=n), now=now, tz=tz)
    newest = [b.id for b in sorted((b for b in backups if b.succeeded), key=when, reverse=True)]
    assert plan.keep[: max(n, 1)] == newest[: max(n, 1)]
    assert len(plan.keep) >= min(n, len(newest))


@settings(max_examples=200)
@given(histories(), retention_rules(), nows, zones, st.randoms(use_true_random=False))
def test_plan_does_not_depend_on_input_order(backups, rules, now, tz, rnd):
    shuffled = list(backups)
    rnd.shuffle(shuffled)
    assert plan_retention(shuffled, rules, now=now, tz=tz) == plan_retention(backups, rules, now=now, tz=tz)


@settings(max_examples=300)
@given(histories(), retention_rules(), st.data(), nows, zones)
def test_more_rules_never_delete_what_fewer_rules_kept(backups, rules, data, now, tz):
    # From "no rule at all" any rule deletes, so monotonicity holds between non-empty policies only.
    if rules.is_empty:
        rules = RetentionSpec(keep_last=0)
    def grow(count):
        return data.draw(st.just(count) | st.integers(0, 4).map(lambda k: (count or 0) + k))

    more = {name: grow(getattr(rules, name)) for name in COUNTS}
    longer = st.integers(1, 4).map(lambda k: (rules.keep_within or timedelta(0)) + timedelta(days=k))
    more["keep_within"] = data.draw(st.just(rules.keep_within) | longer)
    kept = set(plan_retention(backups, rules, now=now, tz=tz).keep)
    assert kept <= set(plan_retention(backups, RetentionSpec(**more), now=now, tz=tz).keep)


@settings(max_examples=300)
@given(histories(), retention_rules(), nows, zones)
def test_each_rule_keeps_at_most_its_count_and_within_keeps_exactly_its_window(backups, rules, now, tz):
    plan = plan_retention(backups, rules, now=now, tz=tz)
    for name in COUNTS[1:]:
        rule = name.removeprefix("keep_")
        used = [r for d in plan.decisions for r in d.reasons if r.startswith((f"{rule} ", f"oldest in {rule} "))]
        assert len(used) <= (getattr(rules, name) or 0)
    last = [d for d in plan.decisions if f"last {rules.keep_last}" in d.reasons]
    assert len(last) == min(rules.keep_last or 0, len(plan.keep) + len(plan.delete))
    if rules.keep_within:
        in_window = {b.id for b in backups if b.succeeded and now - rules.keep_within < when(b)[0] <= now}
        assert {d.backup_id for d in plan.decisions if any(r.startswith("within") for r in d.reasons)} == in_window


def restic_apply_policy(times: list[datetime], counts: dict[str, int], tz: ZoneInfo) -> set[int]:
    """A literal transcription of restic's ApplyPolicy bucket loop (snapshot_policy.go), for counts > 0 only."""
    buckers = {
        "keep_last": lambda d, nr: nr,
        "keep_hourly": lambda d, nr: d.year * 1000000 + d.month * 10000 + d.day * 100 + d.hour,
        "keep_daily": lambda d, nr: d.year * 10000 + d.month * 100 + d.day,
        "keep_weekly": lambda d, nr: d.isocalendar()[0] * 100 + d.isocalendar()[1],
        "keep_monthly": lambda d, nr: d.year * 100 + d.month,
        "keep_yearly": lambda d, nr: d.year,
    }
    buckets = [[counts[name], bucker, -1] for name, bucker in buckers.items()]
    keep = set()
    for nr, cur in enumerate(times):
        for b in buckets:
            if b[0] > 0:
                val = b[1](cur.astimezone(tz), nr)
                if val != b[2] or nr == len(times) - 1:
                    keep.add(nr)
                    b[2] = val
                    b[0] -= 1
    return keep


@settings(max_examples=300)
@given(histories(), retention_rules(), nows, zones)
def test_bucket_rules_agree_with_restic_apart_from_the_documented_differences(backups, rules, now, tz):
    rules = RetentionSpec(**{name: getattr(rules, name) for name in COUNTS})
    counts = {name: getattr(rules, name) or 0 for name in COUNTS}
    ordered = sorted((b for b in backups if b.succeeded), key=when, reverse=True)
    plan = plan_retention(backups, rules, now=now, tz=tz)
    if not any(counts.values()):  # restic: empty policy keeps all; we keep all only without any rule
        expected = set(range(len(ordered))) if rules.is_empty else {0} & set(range(len(ordered)))
    else:
        expected = restic_apply_policy([when(b)[0] for b in ordered], counts, ZoneInfo(tz)) | {0}
    expected |= {nr for nr, b in enumerate(ordered) if when(b)[0] > now}
    assert set(plan.keep) == {ordered[nr].id for nr in expected if nr < len(ordered)}
