"""Tasks as the task service showed them: ``GET /tasks`` (the caller's, newest first, paged like
``GET /jobs``) and ``GET /tasks/{task_id}``, each with a status in the task service's words (``PENDING``,
``RUNNING``, ``SUCCESS``, ``FAILED``, ``CANCELLED``). Only a task's owner sees it; to anyone else it is a
404. Submitting a task is ``POST /tasks`` of :mod:`receptionist.jobs`, which answers the same view."""

from __future__ import annotations

from aiohttp import web

from receptionist.access import Caller
from receptionist.jobs import load_job, own_jobs
from receptionist.queries import PublicQuery, page_answer, read_query
from receptionist.views import task_view
from shared.contract import JobKind
from shared.errors import NotFound
from shared.web import json_response


async def list_tasks(request: web.Request) -> web.Response:
    """``GET /tasks``: the caller's tasks, newest first; ``Link`` names the next page."""
    items, next_cursor = await own_jobs(request, JobKind.TASK)
    return page_answer(request, [task_view(job) for job in items], next_cursor)


async def get_task(request: web.Request) -> web.Response:
    """``GET /tasks/{task_id}``: one of the caller's tasks. Another user's task, a job of another kind and
    an unknown id are the same 404."""
    read_query(request, PublicQuery)
    job = await load_job(request, request.match_info["task_id"], "task")
    if job["kind"] != JobKind.TASK or not Caller.of(request).owns(job):
        raise NotFound(f"no task {job['id']}")
    return json_response(task_view(job))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/tasks", list_tasks)
    router.add_get("/tasks/{task_id}", get_task)
