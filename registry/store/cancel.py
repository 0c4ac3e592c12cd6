"""The cancel rule every store applies inside its own transaction, next to
:func:`shared.contract.apply_update` (which holds the rest of the state machine)."""

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
