"""The operator-facing rules every store applies inside its own transaction, next to
:func:`shared.contract.apply_update` (which holds the rest of the state machine): cancel and redrive."""

from __future__ import annotations

from datetime import datetime

from shared.contract import Job, JobState, JobUpdate, TransitionRefused, apply_update


def apply_cancel(job: Job, now: datetime) -> tuple[Job, bool]:
    """A pending job becomes ``cancelled``; a processing one is flagged ``cancel_requested`` (its handler
    learns it at the next heartbeat and reports ``cancelled`` itself); a cancelled one stays as it is.
    Returns ``(job, changed)``; raises :class:`TransitionRefused` for a finished or failed job."""
    if job.state == JobState.PENDING:
        return apply_update(job, JobUpdate(attempt=job.attempt, state=JobState.CANCELLED), now)
    if job.state == JobState.PROCESSING:
        if job.cancel_requested:
            return job, False
        return job.model_copy(update={"cancel_requested": True, "updated_at": now}), True
    if job.state == JobState.CANCELLED:
        return job, False
    raise TransitionRefused(f"cannot cancel a {job.state} job", current=job)


def apply_redrive(job: Job, extra_attempts: int, now: datetime) -> tuple[Job, bool]:
    """An operator gives a failed (dead-lettered) job another chance: it goes back to ``pending`` with
    ``extra_attempts`` more allowed, its ``error`` and ``finished_at`` cleared.

    ``attempt`` is kept, so the next attempt is numbered above every earlier one and fencing still
    refuses a report of an old attempt; ``errors`` is kept as the job's history. A ``cancel_requested``
    flag left from before the failure is cleared: the redrive is the operator's later word. A pending
    job is left as it is (``changed`` False: a repeated redrive); any other state raises
    :class:`TransitionRefused`, and ``extra_attempts`` below 1 raises :class:`ValueError`.
    """
    if extra_attempts < 1:
        raise ValueError(f"extra_attempts must be at least 1, not {extra_attempts}")
    if job.state == JobState.PENDING:
        return job, False
    if job.state != JobState.FAILED:
        raise TransitionRefused(f"cannot redrive a {job.state} job: only a failed one", current=job)
    return job.model_copy(update={
        "state": JobState.PENDING,
        "max_attempts": job.max_attempts + extra_attempts,
        "error": None,
        "finished_at": None,
        "cancel_requested": False,
        "updated_at": now,
    }), True
