"""Tasks as the task service showed them: ``GET /tasks`` (the caller's, newest first, paged like
``GET /jobs``) and ``GET /tasks/{task_id}``, each with a status in the task service's words (``PENDING``,
``RUNNING``, ``SUCCESS``, ``FAILED``, ``CANCELLED``). Only a task's owner sees it; to anyone else it is a
404. Submitting a task is ``POST /tasks`` of :mod:`receptionist.jobs`."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from receptionist.access import Caller
from receptionist.jobs import ListQuery, _page, load_job
from shared.api import TASK_STATUS, Role, TaskList, TaskView
from shared.contract import JobKind, JobState
from shared.errors import NotFound
from shared.web import json_response, query_model


def task_view(job: dict[str, Any]) -> TaskView:
    """A task job in the task service's words."""
    return TaskView(id=job["id"], description=(job.get("payload") or {}).get("description", ""),
                    status=TASK_STATUS[JobState(job["state"])], attempt=job["attempt"],
                    created_at=job["created_at"], updated_at=job["updated_at"], error=job.get("error"))


async def list_tasks(request: web.Request) -> web.Response:
    """``GET /tasks``: the caller's tasks, newest first; ``Link`` names the next page."""
    caller = Caller.of(request)
    caller.require(Role.USER)
    page, headers = await _page(request, {"kind": str(JobKind.TASK), "owner": caller.owner},
                                query_model(request, ListQuery))
    tasks = TaskList(items=[task_view(job) for job in page["items"]], next_cursor=page.get("next_cursor"))
    return json_response(tasks, headers=headers)


async def get_task(request: web.Request) -> web.Response:
    """``GET /tasks/{task_id}``: one of the caller's tasks. Another user's task, a job of another kind and
    an unknown id are the same 404."""
    job = await load_job(request, request.match_info["task_id"], "task")
    if job["kind"] != JobKind.TASK or not Caller.of(request).owns(job):
        raise NotFound(f"no task {job['id']}")
    return json_response(task_view(job))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/tasks", list_tasks)
    router.add_get("/tasks/{task_id}", get_task)
