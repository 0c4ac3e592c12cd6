"""What the client hands back: a :class:`Job` (the view ``GET /jobs/{id}`` answers) and an :class:`Event`
of a server-sent event stream."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

#: A job in one of these states has ended; it changes no more.
TERMINAL_STATES = frozenset({"finished", "failed", "cancelled"})


class Job(BaseModel):
    """One job as the API shows it. Fields the server adds later are kept (``extra``); an operator sees
    another user's job without ``payload``, ``result`` and ``result_url``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str
    kind: str
    type: str | None = None
    state: str
    owner: str | None = None
    payload: dict[str, Any] | None = None
    attempt: int = 0
    max_attempts: int = 1
    progress: float = 0.0
    result: dict[str, Any] | None = None
    result_url: str | None = None
    error: str | None = None
    errors: list[dict[str, Any]] = []
    cancel_requested: bool = False
    priority: int = 0
    run_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    idempotency_key: str | None = None

    @property
    def done(self) -> bool:
        """Whether the job has ended: finished, failed or cancelled."""
        return self.state in TERMINAL_STATES


@dataclass(frozen=True)
class Event:
    """One server-sent event: its ``id`` (send it back as ``Last-Event-ID`` to resume after it), its topic
    (``job.updated``, ``task.created``, ``task.updated``) and its decoded JSON data."""

    id: str | None
    topic: str
    data: dict[str, Any] = field(default_factory=dict)
