"""Generic tasks, the task service's kind: ``POST /tasks {description}``.

A task works for a while (``duration_s``, times the handler's time scale), writing a few log lines of its
progress, then ends SUCCESS or FAILED at random: each attempt fails with ``fail_probability``. A failed
attempt is retried under the kind's retry policy before the task fails for good. That makes it the kind
that exercises retries and dead letters, in tests and in the benchmark.
"""

from __future__ import annotations

import random
from typing import Annotated, Any

from pydantic import BaseModel, Field, StrictStr

from shared.contract import STRICT, JobKind, NoNul, NotBlank, RetryPolicy
from shared.kinds.base import JobContext
from shared.kinds.registry import kind

LOG_STEPS = 4


class TaskFailed(Exception):
    """The simulated failure of one attempt."""


class TaskPayload(BaseModel):
    """``POST /tasks``. ``duration_s`` and ``fail_probability`` default to the receptionist's settings."""

    model_config = STRICT

    description: Annotated[StrictStr, NotBlank, NoNul] = Field(min_length=1, max_length=1000)
    duration_s: float | None = Field(default=None, ge=0, le=3600, description="Simulated work, in seconds")
    fail_probability: float | None = Field(default=None, ge=0, le=1,
                                           description="Chance that one attempt fails")


@kind(JobKind.TASK, payload=TaskPayload, own_route="/tasks", timeout_s=600.0, timeout_scaled=True,
      retries=RetryPolicy(max_attempts=3, backoff_base_s=1.0, backoff_cap_s=30.0))
async def run_task(ctx: JobContext, rng: random.Random | None = None) -> dict[str, Any]:
    payload = ctx.job.payload
    duration_s = float(payload.get("duration_s") or 0.0)
    ctx.log("task started", description=payload["description"])
    if ctx.scaled(duration_s) > 0:
        for step in range(1, LOG_STEPS + 1):
            await ctx.sleep(duration_s / LOG_STEPS)
            await ctx.progress(step / LOG_STEPS)
            ctx.log(f"task step {step} of {LOG_STEPS} done")
    if (rng or random).random() < float(payload.get("fail_probability") or 0.0):
        raise TaskFailed("the task failed (simulated)")
    ctx.log("task succeeded")
    return {"outcome": "SUCCESS", "description": payload["description"]}

