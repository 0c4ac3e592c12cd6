"""What an operator sees of a job that is not theirs: its states, never its contents. Every route that shows
an operator a job, its errors, its events or log lines goes through these functions, so the rule is the
same everywhere:

- a job keeps its ids, kind, type, owner, states, attempts, progress and timestamps; its ``payload``,
  ``result``, ``result_url`` and ``idempotency_key`` (the client's own words) are ``null``;
- an error (the job's, each attempt's, a dead letter's, a ``task.updated`` event's) keeps only its class,
  the short code before the first colon of ``"ValueError: fetching https://…"``: ``"ValueError: [redacted]"``.
  The handler's own fixed words (``timed out after 30s``) pass as they are; anything else is ``[redacted]``;
- a log line keeps its time, service, level and message, and in ``meta`` only ids, states and counts
  (:data:`LOG_META_KEPT`); ``error`` and ``exception`` there are redacted like errors, every other key goes.
  Messages are fixed words: code that logs a payload value puts it in ``meta``, never in the message.
  As a second guard, URLs in a message are cut to ``[url]``.
"""

from __future__ import annotations

import re
from typing import Any

#: What an operator sees in place of a withheld value.
REDACTED = "[redacted]"
#: ``ValueError: …``: an exception class (as the handler writes a failed attempt's error) and its message;
#: or a receptionist's own prefix.
_CLASSED = re.compile(r"([A-Z][A-Za-z0-9_]{0,79}|could not be queued): ")
#: Errors in the handler's own words, that carry no value of the job's.
_FIXED = (re.compile(r"timed out after \d+(?:\.\d+)?s"),)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{1,15}://\S+")
#: The log line ``meta`` keys an operator sees: ids, states, counts and durations, nothing a client wrote.
LOG_META_KEPT = frozenset({
    "job_id", "request_id", "lease_id", "kind", "type", "queue", "state", "previous_state", "attempt",
    "duration_s", "status", "user", "owner", "service", "instance", "leads", "samples", "rows", "bytes",
    "read", "imported", "rejected", "total", "progress", "resource", "format",
})
_REDACTED_META = ("error", "exception")


def redact_error(error: str | None) -> str | None:
    """An error as an operator sees it: its class, not its message (see the module)."""
    if error is None:
        return None
    if any(fixed.fullmatch(error) for fixed in _FIXED):
        return error
    classed = _CLASSED.match(error)
    return f"{classed.group(1)}: {REDACTED}" if classed else REDACTED


def redact_job(job: dict[str, Any]) -> dict[str, Any]:
    """A job as an operator sees another user's: its states and history, not its contents."""
    return {**job, "payload": None, "result": None, "result_url": None, "idempotency_key": None,
            "error": redact_error(job.get("error")),
            "errors": [{**attempt, "error": redact_error(attempt.get("error"))} for attempt in job.get("errors") or []]}


def redact_log_line(line: dict[str, Any]) -> dict[str, Any]:
    """A log line as an operator sees it: its message and the ids and states of its ``meta``."""
    meta = line.get("meta") or {}
    kept = {key: value for key, value in meta.items() if key in LOG_META_KEPT}
    for key in _REDACTED_META:
        if key in meta:
            kept[key] = redact_error(str(meta[key]))
    message = line.get("message")
    return {**line, "message": _URL.sub("[url]", message) if isinstance(message, str) else message, "meta": kept}
