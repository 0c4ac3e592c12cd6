"""How jobs look to clients. Book jobs keep the seed system's words (``bookId``, ``resultUrl``)."""

from __future__ import annotations

from typing import Any

from shared.contract import JobState


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
    """The generic view of any job (``GET /jobs/{id}``): the whole record."""
    return job


def grouped(jobs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Book jobs grouped by state, every state present, newest first within each."""
    groups: dict[str, list[dict[str, Any]]] = {str(state): [] for state in JobState}
    for job in jobs:
        groups[job["state"]].append(book_view(job))
    return groups
