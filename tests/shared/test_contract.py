"""The wire contract and the job state machine, as pure functions."""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from shared.contract import (
    TERMINAL_STATES,
    TRANSITIONS,
    JobCreate,
    JobKind,
    JobState,
    JobUpdate,
    LogRecord,
    RetryPolicy,
    TransitionRefused,
    apply_update,
)
from shared.errors import ValidationFailed
from shared.kinds import queue_for
from shared.web import parse_model, parse_query

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def new_job(**overrides: object):  # type: ignore[no-untyped-def]
    spec = JobCreate(kind=JobKind.EXPORT, type="epub", payload={"bookId": "1", "type": "epub"}, owner="u")
    return spec.to_job(T0).model_copy(update=overrides)


def test_a_new_job_is_pending_on_attempt_zero() -> None:
    job = new_job()
    assert job.state == JobState.PENDING and job.attempt == 0 and job.created_at == job.updated_at == T0
    assert queue_for(job.kind) == "export"


def test_the_happy_path_stamps_times_and_progress() -> None:
    job, changed = apply_update(new_job(), JobUpdate(attempt=1, state=JobState.PROCESSING), T0 + timedelta(seconds=1))
    assert changed and job.state == JobState.PROCESSING and job.started_at == T0 + timedelta(seconds=1)
    job, _ = apply_update(job, JobUpdate(attempt=1, progress=0.5), T0 + timedelta(seconds=2))
    assert job.progress == 0.5 and job.state == JobState.PROCESSING
    job, _ = apply_update(job, JobUpdate(attempt=1, state=JobState.FINISHED, result={"size": 3},
                                         result_url="/jobs/x/result"), T0 + timedelta(seconds=3))
    assert job.state == JobState.FINISHED and job.progress == 1.0 and job.finished_at == T0 + timedelta(seconds=3)
    assert job.result == {"size": 3} and job.updated_at == job.finished_at


def test_every_move_outside_the_table_is_refused() -> None:
    for source in JobState:
        for target in JobState:
            job = new_job(state=source, attempt=1)
            update = JobUpdate(attempt=1, state=target, progress=0.3)
            if target in TRANSITIONS[source]:
                assert apply_update(job, update, T0)[0].state == target
            elif source == target and source in TERMINAL_STATES:
                assert apply_update(job, update, T0) == (job, False)  # a replay, see below
            else:
                with pytest.raises(TransitionRefused):
                    apply_update(job, update, T0)


def test_terminal_states_have_no_way_out() -> None:
    assert TERMINAL_STATES == {JobState.FINISHED, JobState.FAILED, JobState.CANCELLED}
    assert all(not TRANSITIONS[state] for state in TERMINAL_STATES)


def test_an_older_attempt_is_fenced_off() -> None:
    job = new_job(state=JobState.PROCESSING, attempt=2)
    with pytest.raises(TransitionRefused, match="stale attempt 1"):
        apply_update(job, JobUpdate(attempt=1, state=JobState.FINISHED), T0)
    newer, changed = apply_update(job, JobUpdate(attempt=3, state=JobState.PROCESSING), T0 + timedelta(seconds=1))
    assert changed and newer.attempt == 3 and newer.started_at == T0 + timedelta(seconds=1)


def test_repeating_the_final_report_is_a_harmless_replay() -> None:
    job, _ = apply_update(new_job(state=JobState.PROCESSING, attempt=1),
                          JobUpdate(attempt=1, state=JobState.FINISHED), T0)
    again, changed = apply_update(job, JobUpdate(attempt=1, state=JobState.FINISHED, result={"other": 1}), T0)
    assert not changed and again == job
    with pytest.raises(TransitionRefused):
        apply_update(job, JobUpdate(attempt=2, state=JobState.FINISHED), T0)  # finished once, not twice
    with pytest.raises(TransitionRefused):
        apply_update(job, JobUpdate(attempt=1, state=JobState.FAILED), T0)


def test_a_retry_keeps_each_attempts_error() -> None:
    job = new_job(state=JobState.PROCESSING, attempt=1)
    job, _ = apply_update(job, JobUpdate(attempt=1, state=JobState.PENDING, error="boom"), T0)
    job, _ = apply_update(job, JobUpdate(attempt=2, state=JobState.PROCESSING), T0)
    job, _ = apply_update(job, JobUpdate(attempt=2, state=JobState.FAILED, error="bang"), T0)
    assert [(e.attempt, e.error) for e in job.errors] == [(1, "boom"), (2, "bang")]
    assert job.error == "bang" and job.finished_at == T0


def test_models_refuse_unknown_fields_and_bad_values_with_field_paths() -> None:
    with pytest.raises(ValidationFailed) as exc:
        parse_model(JobUpdate, {"attempt": -1, "progress": 2, "color": "red"})
    fields = {detail["field"]: detail["message"] for detail in exc.value.details}
    assert set(fields) == {"attempt", "progress", "color"} and fields["color"] == "unknown field"
    for name in ("Export", "no such kind", "1st", "a" * 65, ""):  # kinds are any well-formed name, no more
        with pytest.raises(ValidationFailed) as exc:
            parse_model(JobCreate, {"kind": name, "type": "x", "owner": "u", "id": str(uuid.uuid4())})
        assert {detail["field"] for detail in exc.value.details} == {"kind"}
    assert parse_model(JobCreate, {"kind": "acme.resize", "type": "x", "owner": "u"}).kind == "acme.resize"


def test_retry_policy_bounds() -> None:
    from scheduler.store import backoff_delay_s

    policy = RetryPolicy(max_attempts=5, backoff_base_s=1.0, backoff_cap_s=10.0)
    rng = random.Random(7)
    for attempt, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (9, 10.0)):
        delays = [backoff_delay_s(policy, attempt, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # full jitter reaches up to the ceiling


@pytest.mark.parametrize(("model", "data", "field"), [
    (JobUpdate, {"attempt": True}, "attempt"),
    (JobUpdate, {"attempt": 1.0}, "attempt"),
    (JobUpdate, {"attempt": "1"}, "attempt"),
    (JobUpdate, {"attempt": 1, "progress": True}, "progress"),
    (JobUpdate, {"attempt": 1, "error": 5}, "error"),
    (JobUpdate, {"attempt": 1, "state": 1}, "state"),
    (JobCreate, {"kind": "task", "type": "task", "owner": 7}, "owner"),
    (JobCreate, {"kind": "task", "type": "task", "owner": "a", "max_attempts": "3"}, "max_attempts"),
    (JobCreate, {"id": 5, "kind": "task", "type": "task", "owner": "a"}, "id"),
    (LogRecord, {"timestamp": 1700000000, "service": "s", "level": "info", "message": "m"}, "timestamp"),
    (LogRecord, {"timestamp": "1700000000", "service": "s", "level": "info", "message": "m"}, "timestamp"),
])
def test_the_wire_models_take_no_value_of_another_json_type(model: type, data: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_model(model, data)
    assert [detail["field"] for detail in caught.value.details] == [field]


def test_the_wire_models_read_times_ids_and_enums_from_their_text() -> None:
    job_id = uuid.uuid4()
    spec = parse_model(JobCreate, {"id": str(job_id), "kind": "task", "type": "task", "owner": "a"})
    assert spec.id == job_id and spec.kind == JobKind.TASK
    assert parse_model(JobUpdate, {"attempt": 1, "state": "finished", "progress": 1}).progress == 1.0
    job = spec.to_job(datetime(2030, 1, 1, tzinfo=timezone.utc))
    assert type(job).model_validate_json(job.model_dump_json()) == job
    record = parse_model(LogRecord, {"timestamp": "2030-01-01T12:00:00+02:00", "service": "s", "level": "info",
                                     "message": "m"})
    assert record.timestamp == datetime(2030, 1, 1, 10, tzinfo=timezone.utc)


@pytest.mark.parametrize(("query", "field"), [
    ({"attempt": "1.0"}, "attempt"), ({"attempt": "+1"}, "attempt"), ({"attempt": "1_0"}, "attempt"),
    ({"attempt": "true"}, "attempt"), ({"attempt": "1", "progress": "nan"}, "progress"),
    ({"attempt": "1", "progress": "0x1"}, "progress"),
])
def test_a_query_takes_numbers_only_as_decimal_text(query: dict[str, str], field: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_query(JobUpdate, query)
    assert [detail["field"] for detail in caught.value.details] == [field]


def test_a_query_in_canonical_text_is_read() -> None:
    from receptionist.operators import LogQuery

    query = parse_query(LogQuery, {"since": "2030-01-01T00:00:00Z", "until": "2030-01-02", "limit": "5"})
    assert query.limit == 5 and query.since == datetime(2030, 1, 1, tzinfo=timezone.utc)
    for bad in ("0.5", "1700000000", "abc", "2030-01-01T00:00:00 00:00"):
        with pytest.raises(ValidationFailed) as caught:
            parse_query(LogQuery, {"until": bad})
        assert caught.value.details[0]["field"] == "until"


def test_strings_are_kept_as_sent_and_a_blank_one_is_refused() -> None:
    """A client's text is taken as sent, never stripped (nothing is silently changed); one with nothing but
    white space in it is refused by name."""
    from pydantic import ValidationError

    from shared.kinds.books import ExportPayload
    from shared.kinds.tasks import TaskPayload

    assert TaskPayload.model_validate({"description": "  padded\t"}).description == "  padded\t"
    assert ExportPayload.model_validate({"bookId": " b1 ", "type": "epub"}).bookId == " b1 "
    for model, body, field in ((TaskPayload, {"description": " \u3000\n"}, "description"),
                               (ExportPayload, {"bookId": "\t", "type": "pdf"}, "bookId")):
        with pytest.raises(ValidationError) as refused:
            model.model_validate(body)
        assert [(e["loc"], e["msg"]) for e in refused.value.errors()] == [((field,), "Value error, must not be blank")]
