"""Scheduling: cron slots in the policy's time zone, and a backup that runs once after downtime, not once per missed slot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from dockvault.controller.schedule import Due, backup_due, next_run
from tests.unit.builders import policy, utc

NIGHTLY_TOKYO = policy(schedule="0 3 * * *", timezone="Asia/Tokyo").spec


# --- next_run ------------------------------------------------------------------------------------------------------


def test_tokyo_three_am_is_six_pm_utc_the_day_before():
    slot = next_run("0 3 * * *", "Asia/Tokyo", utc(2026, 11, 20, 12))
    assert slot == utc(2026, 11, 20, 18)
    assert slot.tzinfo is UTC


def test_next_run_is_strictly_after():
    assert next_run("0 3 * * *", "Asia/Tokyo", utc(2026, 11, 20, 18)) == utc(2026, 11, 21, 18)
    assert next_run("0 3 * * *", "Asia/Tokyo", utc(2026, 11, 20, 17, 59, 59)) == utc(2026, 11, 20, 18)


def test_next_run_accepts_an_after_in_any_zone():
    from zoneinfo import ZoneInfo

    after = datetime(2026, 11, 21, 2, 0, tzinfo=ZoneInfo("Asia/Tokyo"))  # 2026-11-20T17:00Z
    assert next_run("0 3 * * *", "Asia/Tokyo", after) == utc(2026, 11, 20, 18)
    assert next_run("0 3 * * *", "UTC", after) == utc(2026, 11, 21, 3)


def slots(schedule: str, zone: str, after: datetime, count: int) -> list[datetime]:
    out = []
    for _ in range(count):
        after = next_run(schedule, zone, after)
        out.append(after)
    return out


def test_new_york_spring_forward_keeps_local_three_am():
    # 2026-03-08 02:00 EST -> 03:00 EDT: 03:00 local is 08:00Z before, 07:00Z after.
    assert slots("0 3 * * *", "America/New_York", utc(2026, 3, 6, 12), 3) == [
        utc(2026, 3, 7, 8), utc(2026, 3, 8, 7), utc(2026, 3, 9, 7),
    ]


def test_new_york_fall_back_keeps_local_three_am():
    # 2026-11-01 02:00 EDT -> 01:00 EST.
    assert slots("0 3 * * *", "America/New_York", utc(2026, 10, 30, 12), 3) == [
        utc(2026, 10, 31, 7), utc(2026, 11, 1, 8), utc(2026, 11, 2, 8),
    ]


def test_slot_in_the_skipped_hour_runs_once_right_after_the_gap():
    # 02:30 does not exist on 2026-03-08 in New York; like cron, the run happens when the clock jumps (03:00 EDT).
    assert slots("30 2 * * *", "America/New_York", utc(2026, 3, 7, 12), 3) == [
        utc(2026, 3, 8, 7), utc(2026, 3, 9, 6, 30), utc(2026, 3, 10, 6, 30),
    ]


def test_interval_schedule_keeps_real_intervals_across_fall_back():
    times = slots("*/30 * * * *", "America/New_York", utc(2026, 11, 1, 4), 8)
    assert times[0] == utc(2026, 11, 1, 4, 30)
    assert {b - a for a, b in zip(times, times[1:])} == {timedelta(minutes=30)}


def test_fixed_time_in_the_repeated_hour_runs_once():
    assert slots("30 1 * * *", "America/New_York", utc(2026, 10, 31, 12), 2) == [utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)]


# --- backup_due ----------------------------------------------------------------------------------------------------


def test_suspended_policy_is_never_due():
    spec = policy(schedule="0 3 * * *", suspend=True).spec
    assert backup_due(spec, last_attempt=None, now=utc(2026, 11, 21)) == Due(False, "suspended", None)
    assert backup_due(spec, last_attempt=utc(2020, 1, 1), now=utc(2026, 11, 21)) == Due(False, "suspended", None)


def test_policy_without_schedule_runs_only_on_demand():
    spec = policy(schedule=None).spec
    assert backup_due(spec, last_attempt=None, now=utc(2026, 11, 21)) == Due(False, "no schedule (manual only)", None)


def test_never_ran_is_due_now():
    now = utc(2026, 11, 21, 12)
    assert backup_due(NIGHTLY_TOKYO, last_attempt=None, now=now) == Due(True, "no backup yet", now)


def test_not_yet_due_names_the_next_slot():
    due = backup_due(NIGHTLY_TOKYO, last_attempt=utc(2026, 11, 20, 18), now=utc(2026, 11, 21, 17, 59, 59))
    assert due == Due(False, "waiting", utc(2026, 11, 21, 18))


def test_due_exactly_at_the_slot():
    due = backup_due(NIGHTLY_TOKYO, last_attempt=utc(2026, 11, 20, 18), now=utc(2026, 11, 21, 18))
    assert due == Due(True, "scheduled for 2026-11-21T18:00:00+00:00", utc(2026, 11, 21, 18))


def test_missed_slots_after_downtime_collapse_into_one_run():
    last, now = utc(2026, 11, 20, 18), utc(2026, 11, 24, 12)  # slots of the 21st, 22nd and 23rd were missed

    due = backup_due(NIGHTLY_TOKYO, last_attempt=last, now=now)

    assert due == Due(True, "scheduled for 2026-11-21T18:00:00+00:00 (missed slots collapsed into one run)",
                      utc(2026, 11, 21, 18))
    # the run starts at `now`: afterwards nothing is due until the next slot
    assert backup_due(NIGHTLY_TOKYO, last_attempt=now, now=now) == Due(False, "waiting", utc(2026, 11, 24, 18))
    assert backup_due(NIGHTLY_TOKYO, last_attempt=now, now=now + timedelta(hours=5)).due is False


def test_a_ticking_scheduler_runs_once_per_slot_and_once_after_downtime():
    """Tick every 10 minutes for 10 days, down from day 3 to day 7: 6 nightly runs, plus one catch-up run."""
    start = utc(2026, 11, 20, 0)
    down = (start + timedelta(days=3), start + timedelta(days=7, hours=1))
    last, runs, now = None, [], start
    while now < start + timedelta(days=10):
        if not down[0] <= now < down[1] and backup_due(NIGHTLY_TOKYO, last_attempt=last, now=now).due:
            runs.append(now)
            last = now
        now += timedelta(minutes=10)

    assert runs == [
        start,  # first backup at once
        utc(2026, 11, 20, 18), utc(2026, 11, 21, 18), utc(2026, 11, 22, 18),
        down[1],  # one run for the four slots missed while down
        utc(2026, 11, 27, 18), utc(2026, 11, 28, 18), utc(2026, 11, 29, 18),
    ]


SCHEDULES = ["0 3 * * *", "*/15 * * * *", "30 2 * * *", "30 1 * * *", "0 0 1 * *", "0 3 * * 0", "0 0 29 2 *"]
ZONES = ["UTC", "Asia/Tokyo", "America/New_York", "Europe/Berlin", "Australia/Lord_Howe", "Asia/Kathmandu"]
times = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1), timezones=st.just(UTC))


@settings(max_examples=300, deadline=None)
@given(schedule=st.sampled_from(SCHEDULES), zone=st.sampled_from(ZONES), last=times,
       gap=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=800)))
def test_a_due_backup_run_now_is_not_due_again(schedule, zone, last, gap):
    spec = policy(schedule=schedule, timezone=zone).spec
    now = last + gap

    due = backup_due(spec, last_attempt=last, now=now)

    if due.due:
        assert last < due.next_at <= now
        again = backup_due(spec, last_attempt=now, now=now)
        assert again.due is False
        assert again.reason == "waiting"
        assert again.next_at > now
        collapsed = next_run(schedule, zone, due.next_at) <= now
        assert due.reason.endswith("(missed slots collapsed into one run)") is collapsed
    else:
        assert due == Due(False, "waiting", next_run(schedule, zone, last))
        assert due.next_at > now
