"""How jobs look to clients: one view per resource, the same whichever route shows it (its submission, its
own ``GET``, its list). Book jobs keep the seed system's words (``bookId``, ``resultUrl``), tasks the task
service's statuses; every other view is snake_case with the job's state, ISO 8601 UTC times, ``progress``
from 0 to 1, ``error`` (null, or the last attempt's) and the result's fields once finished."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from receptionist.redaction import redact_error
from shared.api import (
    GATEWAY_KEY_PREFIX,
    TASK_STATUS,
    DataExportOut,
    DataImportCounters,
    DataImportOut,
    EcgOut,
    TaskView,
)
from shared.contract import JobKind, JobState


def book_view(job: dict[str, Any]) -> dict[str, Any]:
    payload = job.get("payload") or {}
    view = {
        "id": job["id"],
        "bookId": payload.get("bookId"),
        "type": job["type"],
    }
    if "url" in payload:
        view["url"] = payload["url"]
    view.update({
        "state": job["state"],
        "progress": job["progress"],
        "created_at": job["created_at"],
        "updated_at": job["updated_at"],
        "resultUrl": job.get("result_url"),
        "error": job.get("error"),
    })
    if job.get("cancel_requested"):
        view["cancel_requested"] = True
    return view


def job_view(job: dict[str, Any]) -> dict[str, Any]:
    """The generic view of any job (``GET /jobs/{id}``): the whole record, but for a key the gateway gave it
    (the client gave none)."""
    key = job.get("idempotency_key")
    if key is not None and key.startswith(GATEWAY_KEY_PREFIX):
        return {**job, "idempotency_key": None}
    return job


def grouped(jobs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Book jobs grouped by state, every state present, newest first within each."""
    groups: dict[str, list[dict[str, Any]]] = {str(state): [] for state in JobState}
    for job in jobs:
        groups[job["state"]].append(book_view(job))
    return groups


def task_view(job: dict[str, Any]) -> TaskView:
    """A task job in the task service's words."""
    return TaskView(id=job["id"], description=(job.get("payload") or {}).get("description", ""),
                    status=TASK_STATUS[JobState(job["state"])], attempt=job["attempt"],
                    created_at=job["created_at"], updated_at=job["updated_at"], error=job.get("error"))


def ecg_view(job: dict[str, Any], mine: bool = True) -> EcgOut:
    """An ECG job; to an operator who does not own it, its state only (no label, date or result, and its
    error's class only)."""
    payload = job["payload"] if mine else {}
    finished = mine and job["state"] == JobState.FINISHED
    return EcgOut(id=job["id"], label=payload.get("id"), date=payload.get("date"), state=job["state"],
                  created_at=job["created_at"], updated_at=job["updated_at"],
                  result=job["result"] if finished else None,
                  error=job.get("error") if mine else redact_error(job.get("error")))


def import_view(job: dict[str, Any]) -> DataImportOut:
    """A bulk data import: its counters and first errors once finished (zero and none until then)."""
    result = (job.get("result") or {}) if job["state"] == JobState.FINISHED else {}
    return DataImportOut(
        id=job["id"], resource=job["payload"]["resource"], state=job["state"], progress=job["progress"],
        counters=DataImportCounters(read=result.get("read", 0), imported=result.get("imported", 0),
                                    rejected=result.get("rejected", 0)),
        first_errors=result.get("first_errors", []),
        error_report_url=f"/v1/imports/{job['id']}/errors" if result.get("error_report") else None,
        error=job.get("error"), created_at=job["created_at"], updated_at=job["updated_at"])


def export_view(job: dict[str, Any]) -> DataExportOut:
    """A bulk data export job: its rows and download URL once finished."""
    finished = job["state"] == JobState.FINISHED
    result = (job.get("result") or {}) if finished else {}
    return DataExportOut(
        id=job["id"], resource=job["payload"]["resource"], format=job["payload"]["format"], state=job["state"],
        progress=job["progress"], rows=result.get("rows"),
        download_url=f"/jobs/{job['id']}/result" if finished and "artifact" in result else None,
        error=job.get("error"), created_at=job["created_at"], updated_at=job["updated_at"])


#: The view of each built-in kind on its own routes (its submission, its GET, its list), for its owner.
RESOURCE_VIEWS: dict[str, Callable[[dict[str, Any]], Any]] = {
    JobKind.EXPORT: book_view,
    JobKind.IMPORT: book_view,
    JobKind.TASK: task_view,
    JobKind.ECG: ecg_view,
    JobKind.DATA_IMPORT: import_view,
    JobKind.DATA_EXPORT: export_view,
}


def resource_view(job: dict[str, Any]) -> Any:
    """``job`` as its kind's own routes show it to its owner; a kind without routes of its own (a
    plugin's) as ``GET /jobs/{id}`` does."""
    return RESOURCE_VIEWS.get(job["kind"], job_view)(job)
