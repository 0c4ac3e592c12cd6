"""When a schedule is due (:mod:`shared.schedules`): cron in its time zone, every_s on the grid of its creation,
and missed due times coalesced into one firing of the latest."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from shared.errors import ValidationFailed
from shared.schedules import Schedule, ScheduleCreate, ScheduleTiming, check_cron, firing, idempotency_key, next_due

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)


def schedule(**overrides: Any) -> Schedule:
    fields: dict[str, Any] = {"owner": "ada", "kind": "export", "payload": {}, "job_type": "epub", "every_s": 10.0,
                              "next_run_at": T0 + timedelta(seconds=10), "created_at": T0, "updated_at": T0}
    fields.update(overrides)
    return Schedule(**fields)


def test_cron_is_read_in_the_schedule_s_time_zone_summer_and_winter() -> None:
    timing = ScheduleTiming(cron="0 9 * * *", timezone="Europe/Paris")
    winter = next_due(timing, T0, datetime(2030, 1, 15, 12, tzinfo=timezone.utc))
    summer = next_due(timing, T0, datetime(2030, 7, 15, 12, tzinfo=timezone.utc))
    assert winter == datetime(2030, 1, 16, 8, tzinfo=timezone.utc)  # 09:00 CET
    assert summer == datetime(2030, 7, 16, 7, tzinfo=timezone.utc)  # 09:00 CEST
    assert winter.astimezone(ZoneInfo("Europe/Paris")).hour == 9


def test_every_s_stays_on_the_grid_of_its_creation_and_is_strictly_after() -> None:
    timing = ScheduleTiming(every_s=10)
    assert next_due(timing, T0, T0) == T0 + timedelta(seconds=10)
    assert next_due(timing, T0, T0 + timedelta(seconds=10)) == T0 + timedelta(seconds=20)
    assert next_due(timing, T0, T0 + timedelta(seconds=34.5)) == T0 + timedelta(seconds=40)


def test_a_schedule_not_due_or_paused_fires_nothing() -> None:
    assert firing(schedule(), T0 + timedelta(seconds=9)) is None
    assert firing(schedule(paused=True), T0 + timedelta(seconds=100)) is None


def test_on_time_it_fires_its_due_time_and_moves_to_the_next() -> None:
    due = firing(schedule(), T0 + timedelta(seconds=10.2))
    assert due is not None
    assert (due.due_at, due.skipped, due.next_run_at) == (T0 + timedelta(seconds=10), 0, T0 + timedelta(seconds=20))


@pytest.mark.parametrize("timing", [{"every_s": 60.0}, {"every_s": None, "cron": "* * * * *"}])
def test_missed_due_times_fire_once_for_the_latest_and_are_counted(timing: dict[str, Any]) -> None:
    missed = schedule(**timing, next_run_at=T0 + timedelta(minutes=1))
    due = firing(missed, T0 + timedelta(minutes=5, seconds=30))  # due at 1, 2, 3, 4 and 5 minutes
    assert due is not None
    assert (due.due_at, due.skipped, due.next_run_at) == (T0 + timedelta(minutes=5), 4, T0 + timedelta(minutes=6))


def test_one_key_per_schedule_and_due_time_whatever_the_offset() -> None:
    s = schedule()
    paris = (T0 + timedelta(seconds=10)).astimezone(ZoneInfo("Europe/Paris"))
    assert idempotency_key(s.id, T0 + timedelta(seconds=10)) == idempotency_key(s.id, paris)
    assert idempotency_key(s.id, T0 + timedelta(seconds=10)) != idempotency_key(s.id, T0 + timedelta(seconds=20))


@pytest.mark.parametrize(("fields", "named"), [
    ({}, {"cron", "every_s"}),
    ({"cron": "* * * * *", "every_s": 1}, {"cron", "every_s"}),
])
def test_exactly_one_of_cron_and_every_s(fields: dict[str, Any], named: set[str]) -> None:
    with pytest.raises(ValidationFailed) as caught:
        ScheduleTiming(**fields)
    assert {d["field"] for d in caught.value.details} == named


def test_a_cron_expression_no_date_matches_is_refused_one_that_comes_rarely_is_taken() -> None:
    """A well-formed expression whose day no month has never comes: refused by name (the registry answered
    500 for it, computing its first due time), while the 29th of February, or a day of the month or of the
    week (cron takes either), is taken."""
    for never in ("0 0 31 2 *", "0 0 30 2 *", "59 23 31 4,6,9,11 *"):
        with pytest.raises(ValueError, match="never comes"):
            check_cron(never)
    for rare in ("0 0 29 2 *", "0 0 31 2 1"):
        assert check_cron(rare) == rare
        assert next_due(ScheduleTiming(cron=rare), T0, T0) > T0


def test_a_hosts_own_zone_is_refused_for_a_new_schedule_but_a_kept_one_still_reads() -> None:
    """``localtime`` is each host's own ``/etc/localtime``: receptionists on several hosts would each read a
    cron expression in another zone. A new schedule may not name it; one kept from before still reads."""
    fields = {"kind": "task", "payload": {}, "cron": "0 9 * * *", "timezone": "localtime", "owner": "o",
              "job_type": "task"}
    with pytest.raises(ValidationError, match="localtime is each host's own"):
        ScheduleCreate.model_validate(fields)
    kept = Schedule.model_validate({**fields, "next_run_at": "2030-01-01T00:00:00Z",
                                    "created_at": "2030-01-01T00:00:00Z", "updated_at": "2030-01-01T00:00:00Z"})
    assert kept.timezone == "localtime"
