"""Acme's kinds for Conveyor: ``acme.resize`` makes a thumbnail of an image (here it only draws an SVG of
the size asked for, after some simulated work)."""

from __future__ import annotations

from html import escape
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.kinds import JobContext, RetryPolicy, kind

STEPS = 10


class ResizePayload(BaseModel):
    """An image to resize: ``POST /jobs {"kind": "acme.resize", "payload": {...}}``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    image: str = Field(min_length=1, max_length=200, description="The image's name")
    width: int = Field(ge=1, le=4096)
    height: int = Field(ge=1, le=4096)
    seconds: float = Field(default=0.0, ge=0, le=600, description="How long the work takes")
    fail_attempts: int = Field(default=0, ge=0, le=10, description="Attempts that fail first (to watch retries)")


@kind("acme.resize", payload=ResizePayload, timeout_s=120, concurrency=2,
      retries=RetryPolicy(max_attempts=2, backoff_base_s=0.1, backoff_cap_s=1.0))
async def resize(ctx: JobContext) -> dict[str, Any]:
    payload = ResizePayload.model_validate(ctx.job.payload)
    ctx.log("resizing", image=payload.image, width=payload.width, height=payload.height)
    for step in range(1, STEPS + 1):
        await ctx.sleep(payload.seconds / STEPS)  # a cancel wakes it at once, and the job stops here
        await ctx.progress(step / STEPS)
    if ctx.attempt <= payload.fail_attempts:
        raise RuntimeError(f"attempt {ctx.attempt} fails, as the payload asked")
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{payload.width}" height="{payload.height}">'
           f"<title>{escape(payload.image)}</title></svg>")
    return await ctx.write_artifact(f"{payload.image}.svg", svg.encode(), "image/svg+xml")
