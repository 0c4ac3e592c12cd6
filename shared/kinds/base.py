"""What a job kind is: a payload model the receptionist validates, and a ``run`` the handler calls
with a :class:`JobContext`. Queueing, leases, retries and reporting are the handler's, not the kind's;
the kind only says, by raising a :class:`PermanentFailure`, that a retry would be no use."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from shared.artifacts import ArtifactWriter
from shared.contract import QueuedJob, RetryPolicy


class JobCancelled(Exception):
    """Raised inside ``run`` (by :meth:`JobContext.sleep` or :meth:`JobContext.check_cancelled`) when the
    job was cancelled; the handler reports ``cancelled`` and cleans up."""


class PermanentFailure(Exception):
    """Raised inside ``run`` for a failure no retry can mend (a URL the fetch policy refuses, a file
    whose header cannot be used, a payload the kind cannot run): the job fails at once with this error,
    whatever attempts remain. Anything else ``run`` raises fails only the attempt, and is retried.

    The mark is the class attribute ``retry = False`` (see :func:`is_permanent`), so that an error of a
    module the kinds use but that cannot import them (:class:`shared.fetching.FetchRefused`) is marked
    the same way without subclassing this."""

    retry = False


class InvalidInput(PermanentFailure, ValueError):
    """What the job was given (its payload, a file it names or fetched) cannot be used, and never will."""


def is_permanent(exc: BaseException) -> bool:
    """Whether ``exc`` says its failure cannot succeed on a retry (its class sets ``retry = False``)."""
    return getattr(exc, "retry", True) is False


class JobContext(Protocol):
    """What a kind's ``run`` may use while it works."""

    job: QueuedJob
    attempt: int
    #: The handler's data store (:class:`shared.datastore.DataStore`) for the bulk data kinds; None
    #: where the handler has none.
    datastore: Any
    #: What a URL the job fetches may reach (:class:`shared.fetching.FetchPolicy`, from the handler's
    #: ``HANDLER_FETCH_ALLOW``): give it to :func:`shared.fetching.fetch_to_file`.
    fetch_policy: Any

    def scaled(self, seconds: float) -> float:
        """``seconds`` of simulated work, times the handler's time scale."""

    async def sleep(self, seconds: float) -> None:
        """Simulated work of ``seconds`` (scaled); wakes early with :class:`JobCancelled` on cancel."""

    def check_cancelled(self) -> None:
        """Raise :class:`JobCancelled` if the job was cancelled."""

    async def progress(self, fraction: float) -> None:
        """Report progress in 0..1 (throttled: only some reports reach the registry)."""

    def log(self, message: str, **meta: Any) -> None:
        """A log line of this job's own, tagged with its id."""

    async def write_artifact(self, name: str, data: bytes, content_type: str) -> dict[str, Any]:
        """Store a result file of this job; returns the ``result`` fields describing it."""

    async def read_artifact(self, key: str) -> bytes:
        """A small artifact the job's payload names, whole (:class:`shared.artifacts.ArtifactMissing` when
        it is not in the store)."""

    def artifact_file(self, key: str) -> AbstractAsyncContextManager[Path]:
        """``async with ctx.artifact_file(key) as path``: a file on this machine holding an artifact the
        payload names, for code that reads files (numpy, csv). On a local store the file itself; on an
        object store a temporary copy streamed down a chunk at a time, removed on exit."""

    def new_artifact(self, name: str) -> ArtifactWriter:
        """A result file of this job written as a stream: ``async with ctx.new_artifact(name) as out:
        await out.write(chunk)``; it appears under ``out.key`` on a clean exit. Like
        :meth:`write_artifact`'s, it is removed when the attempt does not finish."""


RunFn = Callable[[JobContext], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class KindSpec:
    """One job kind, as :func:`shared.kinds.kind` registers it. ``run`` returns the job's ``result``: a
    dict JSON holds as it is, up to 64 KiB, or None (:mod:`handler.reports` checks it). A result with an
    ``artifact`` key (what :meth:`JobContext.write_artifact` returns) is the job's downloadable result."""

    kind: str
    #: The model a submission's payload is validated with (``POST /jobs``, or the kind's own route).
    payload: type[BaseModel]
    run: RunFn
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_s: float = 600.0
    #: Whether ``timeout_s`` shrinks with the handler's time scale: yes for simulated work, no for real
    #: work (a bulk import takes as long at time scale 0 as at 1).
    timeout_scaled: bool = True
    #: The scheduler queue its jobs go to (the registry sets the kind's name when none is given).
    queue: str = ""
    #: Jobs of this kind one handler runs at once, at most (None: only the handler's own concurrency).
    concurrency: int | None = None
    #: The kind's own submission route (``/tasks``), answering the kind's own view; ``POST /jobs`` takes
    #: the kind too, and answers the generic job view.
    own_route: str | None = None
    #: Whether its jobs come only by ``own_route``: their submission carries more than a JSON payload (an
    #: ECG's signals, streamed to the artifact store; an import's file or its resource in the query), so
    #: ``POST /jobs`` and ``POST /schedules`` refuse it with a 400 naming that route.
    own_route_only: bool = False
    #: Payload fields holding a URL the handler will fetch: a receptionist refuses a literal host the
    #: fetch policy does not allow (400 naming the field).
    fetch_urls: tuple[str, ...] = ()
    #: Whether ``run`` uses the handler's bulk data store (``ctx.datastore``): a handler taking its queue
    #: opens that store.
    uses_datastore: bool = False
    #: The module that declared it, for messages about it.
    module: str = ""
