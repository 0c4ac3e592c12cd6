"""The OpenAPI 3.1 document of the public API (served with Swagger UI by :mod:`gateway.docs`).

The schemas come from the pydantic models the services validate and render with (:mod:`shared.api`,
the kinds' payloads, :class:`~shared.contract.ErrorBody`): request bodies in pydantic's validation mode,
answers in its serialization mode, every ``$defs`` hoisted into ``components.schemas``. Only the routes,
parameters and status codes are written out here, with what the validators check beyond the models'
types and the links from each submission to its job.
"""

from __future__ import annotations

import functools
import importlib.metadata
from typing import Any, Literal

from pydantic import BaseModel

from gateway.openapi_kinds import A_TIME_OR_A_DELAY, kind_names, submission_schema
from gateway.openapi_schedules import TAG as SCHEDULES_TAG
from gateway.openapi_schedules import add_schedule_routes
from shared import api
from shared.contract import MAX_PRIORITY, MIN_PRIORITY, NO_NUL_PATTERN, TEXT_PATTERN, ErrorBody
from shared.instances import InstanceKind
from shared.kinds import books, data_export, data_import, ecg, tasks
from shared.scheduling import MAX_DELAY_S, Scheduling, submission_model

REF = "#/components/schemas/{model}"
Mode = Literal["validation", "serialization"]

TAGS = [
    ("books", "Book exports and imports, in the seed system's words"),
    ("tasks", "Generic tasks"),
    ("events", "Server-sent event streams of job and task changes"),
    ("ecg", "ECG analysis: zero crossings per lead"),
    ("data", "Bulk data imports and exports: users, articles and comments, as CSV, NDJSON or JSON files"),
    ("jobs", "Any job: its state, cancelling it, its result"),
    SCHEDULES_TAG,
    ("operators", "Queues, logs, dead letters and their redrive, service instances (operators only)"),
    ("admin", "Users (admins only)"),
    ("auth", "Bearer tokens"),
    ("meta", "The gateway itself: health, this document, Swagger UI"),
]


def _version() -> str:
    try:
        return importlib.metadata.version("conveyor")
    except importlib.metadata.PackageNotFoundError:
        return "0.1.0"


class _Schemas:
    """``components.schemas`` being filled: each model's schema under its name, its ``$defs`` beside it."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def _put(self, name: str, schema: dict[str, Any]) -> None:
        if self.schemas.setdefault(name, schema) != schema:
            # Two models (or one model in both modes) with one name but different schemas: a $ref
            # would silently point at the wrong one.
            raise RuntimeError(f"two different schemas are named {name!r}")

    def ref(self, model: type[BaseModel], mode: Mode) -> dict[str, str]:
        schema = model.model_json_schema(ref_template=REF, mode=mode)
        for name, definition in schema.pop("$defs", {}).items():
            self._put(name, definition)
        self._put(model.__name__, schema)
        return {"$ref": REF.format(model=model.__name__)}


def _header(description: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": schema}


_INT = {"type": "integer", "minimum": 0}

HEADERS = {
    "RequestId": _header("The request's id, in every log line about it (the caller's own, when it sent one)",
                         {"type": "string"}, required=True),
    "RetryAfter": _header("Seconds to wait before trying again", _INT, required=True),
    "RateLimitLimit": _header("Requests the client may make in a burst", _INT),
    "RateLimitRemaining": _header("Requests left in the client's bucket", _INT),
    "RateLimitReset": _header("Seconds until the client's bucket is full again", _INT),
    "Link": _header('The next page, as `<url>; rel="next"`, when there is one', {"type": "string"}),
    "WWWAuthenticate": _header("`Bearer`", {"type": "string"}, required=True),
    "ContentDisposition": _header("`attachment; filename=\"...\"`", {"type": "string"}),
}


def _h(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/headers/{name}"}


_RATE_HEADERS = {"RateLimit-Limit": _h("RateLimitLimit"), "RateLimit-Remaining": _h("RateLimitRemaining"),
                 "RateLimit-Reset": _h("RateLimitReset")}


def _error(description: str, **headers: dict[str, str]) -> dict[str, Any]:
    return {"description": description,
            "headers": {"X-Request-ID": _h("RequestId"), **_RATE_HEADERS, **headers},
            "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorBody")}}}}


ERRORS = {
    "400": ("BadRequest", _error("The request breaks the contract: one detail per field")),
    "401": ("Unauthorized", _error("A bad or expired bearer token, or none where the gateway requires one; "
                                   "at `POST /auth/token`, a wrong username or password",
                                   **{"WWW-Authenticate": _h("WWWAuthenticate")})),
    "403": ("Forbidden", _error("The caller may not do this (a role it lacks)")),
    "404": ("NotFound", _error("No such thing, or not the caller's")),
    "409": ("Conflict", _error("Not possible in the current state, or an idempotency key reused")),
    "410": ("Gone", _error("The result existed but is no longer kept")),
    "413": ("PayloadTooLarge", _error("The body is too large")),
    "415": ("UnsupportedMediaType", _error("The body is not JSON")),
    "429": ("TooManyRequests", _error("Over the client's rate limit", **{"Retry-After": _h("RetryAfter")})),
    "502": ("BadGateway", _error("A receptionist failed while answering")),
    "503": ("Unavailable", _error("No receptionist, or a service behind it, is available now; try again",
                                  **{"Retry-After": _h("RetryAfter")})),
    "504": ("GatewayTimeout", _error("A receptionist did not answer in time")),
}
#: Answers any relayed request may get from the gateway itself.
_RELAYED = ("429", "502", "503", "504")
_AUTHZ = ("401", "403")
_SUBMIT_ERRORS = ("400", *_AUTHZ, "409", "413", "415")


class _Builder:
    def __init__(self) -> None:
        self.schemas = _Schemas()
        self.paths: dict[str, dict[str, Any]] = {}

    def body(self, model: type[BaseModel]) -> dict[str, Any]:
        return {"required": True,
                "content": {"application/json": {"schema": self.schemas.ref(model, "validation")}}}

    def answer(self, description: str, model: type[BaseModel] | None = None, *, schema: dict[str, Any] | None = None,
               relayed: bool = True, **headers: dict[str, str]) -> dict[str, Any]:
        out: dict[str, Any] = {"description": description,
                               "headers": {"X-Request-ID": _h("RequestId"), **(_RATE_HEADERS if relayed else {}),
                                           **headers}}
        if model is not None:
            schema = self.schemas.ref(model, "serialization")
        if schema is not None:
            out["content"] = {"application/json": {"schema": schema}}
        return out

    def add(self, method: str, path: str, operation_id: str, summary: str, tag: str, answers: dict[str, Any],
            errors: tuple[str, ...] = (), *, relayed: bool = True, description: str | None = None,
            body: type[BaseModel] | None = None, parameters: list[dict[str, Any]] | None = None,
            security: list[dict[str, list[str]]] | None = None) -> None:
        responses = dict(answers)
        for status in sorted({*errors, *(_RELAYED if relayed else ())}):
            responses[status] = {"$ref": f"#/components/responses/{ERRORS[status][0]}"}
        operation: dict[str, Any] = {"operationId": operation_id, "summary": summary, "tags": [tag]}
        if description:
            operation["description"] = description
        if parameters:
            operation["parameters"] = parameters
        if body is not None:
            operation["requestBody"] = self.body(body)
        operation["responses"] = responses
        if security is not None:
            operation["security"] = security
        self.paths.setdefault(path, {})[method] = operation


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def _path(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "Items per page")
CURSOR = _query("cursor", {"type": "string", "minLength": 1, "maxLength": 500},
                "Where the page starts: the `next_cursor` (or the `Link` header) of the page before; any "
                "other string is a 400")
#: Every list's paging parameters.
PAGING = [LIMIT, CURSOR]
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "description": "A submission repeated with the same key gets the first one's job (200) instead of a new one",
    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
}
QUEUE_NAME = _path("name", {"type": "string", "minLength": 1, "maxLength": 100, "pattern": api.QUEUE_PATTERN},
                   "A queue's name: a kind's queue (`export`, `task`...) or one that holds jobs; any other is a 404")
JOB_ID = _path("job_id", {"type": "string", "format": "uuid"}, "The job's id (anything but a UUID is a 404)")
#: The scheduling fields (:mod:`shared.scheduling`) where a route takes its options as query parameters.
SCHEDULING_PARAMETERS = [
    _query("priority", {"type": "integer", "minimum": MIN_PRIORITY, "maximum": MAX_PRIORITY, "default": 0},
           Scheduling.model_fields["priority"].description or ""),
    _query("run_at", {"type": "string", "format": "date-time"}, Scheduling.model_fields["run_at"].description or ""),
    _query("delay_s", {"type": "number", "minimum": 0, "maximum": MAX_DELAY_S},
           Scheduling.model_fields["delay_s"].description or ""),
]
QUEUE_PATTERN = api.QUEUE_PATTERN
USERNAME = _path("username", {"type": "string", "pattern": api.USERNAME.pattern}, "The user's name")


def _book_routes(b: _Builder) -> None:
    for path, model, noun in (("/exports", submission_model(books.ExportPayload), "export"),
                              ("/imports", submission_model(books.ImportPayload), "import")):
        plural = f"{noun.capitalize()}s"
        b.add("post", path, f"create{noun.capitalize()}", f"Submit a book {noun}", "books", {
            "201": b.answer(f"The {noun} is accepted and queued", api.BookJob),
            "200": b.answer("A repeat of an earlier submission (same `Idempotency-Key`): its job", api.BookJob),
        }, _SUBMIT_ERRORS, body=model, parameters=[IDEMPOTENCY_KEY])
        b.add("get", path, f"list{plural}", f"The caller's book {noun}s, grouped by state", "books", {
            "200": b.answer("A page of the jobs (newest first), grouped by state, and the list's `next_cursor`",
                            api.BookJobsByState, Link=_h("Link")),
        }, ("400", *_AUTHZ), parameters=PAGING)


def _job_routes(b: _Builder) -> None:
    b.add("post", "/jobs", "createJob", "Submit a job of any kind", "jobs", {
        "201": b.answer("The job is accepted and queued", api.JobOut),
        "200": b.answer("A repeat of an earlier submission (same `Idempotency-Key`): its job", api.JobOut),
    }, _SUBMIT_ERRORS, parameters=[IDEMPOTENCY_KEY],
        description="`kind` names a registered kind (a plugin's, or a built-in one: `task`, `export`, ...); "
                    "`payload` is what that kind's model takes (what its own route takes, if it has one), and a "
                    "bad one is a 400 naming the field under `payload` (`payload.bookId`). The answer is the "
                    "generic job view, whatever the kind. An unknown kind is a 400 naming `kind`, and so is "
                    "`ecg` or `data_import`, which carry more than a JSON payload (signals, a file) and come "
                    "by `POST /ecgs` and `POST /v1/imports`.")
    b.paths["/jobs"]["post"]["requestBody"] = {
        "required": True, "content": {"application/json": {"schema": submission_schema(b.schemas.schemas)}}}
    b.add("post", "/tasks", "createTask", "Submit a generic task", "tasks", {
        "201": b.answer("The task is accepted and queued, as `GET /tasks/{task_id}` shows it", api.TaskView),
        "200": b.answer("A repeat of an earlier submission (same `Idempotency-Key`): its task", api.TaskView),
    }, _SUBMIT_ERRORS, body=submission_model(tasks.TaskPayload), parameters=[IDEMPOTENCY_KEY])
    b.add("get", "/jobs", "listJobs", "The caller's jobs of any kind (every job, for operators)", "jobs", {
        "200": b.answer("The jobs, newest first", api.JobList, Link=_h("Link")),
    }, ("400", *_AUTHZ), parameters=[
        _query("kind", {"type": "string", "enum": kind_names()}, "Only jobs of this kind (an unknown kind is a 400)"),
        _query("state", {"$ref": REF.format(model="JobState")}, "Only jobs in this state"),
        _query("owner", {"type": "string", "minLength": 1, "maxLength": 100},
               "Operators: only this user's jobs (their id); a 400 for anyone else"),
        _query("created_before", {"type": "string", "format": "date-time"},
               "Only jobs created before this moment (RFC 3339; without an offset, UTC): where the first page starts"),
        _query("created_after", {"type": "string", "format": "date-time"},
               "Only jobs created at this moment or later (RFC 3339; without an offset, UTC), earlier than "
               "`created_before`: where the last page ends"),
        *PAGING,
    ])
    b.add("get", "/jobs/{job_id}", "getJob", "A job", "jobs", {
        "200": b.answer("The job", api.JobOut),
    }, ("400", "404", *_AUTHZ), parameters=[JOB_ID])
    b.add("delete", "/jobs/{job_id}", "cancelJob", "Cancel a job", "jobs", {
        "200": b.answer("Cancelled (it was pending, or cancelled already)", api.JobOut),
        "202": b.answer("Cancel requested: a running job stops at its handler's next heartbeat", api.JobOut),
    }, ("400", "404", "409", *_AUTHZ), parameters=[JOB_ID],
        description="The answer is the job as `GET /jobs/{job_id}` shows it then, whatever its kind. "
                    "A job that already finished or failed is a 409.")
    binary = {"schema": {"type": "string", "format": "binary"}}
    result = b.answer("The result file", ContentDisposition=_h("ContentDisposition"))
    result["content"] = {
        "application/octet-stream": binary, "application/epub+zip": binary, "application/pdf": binary,
        "text/csv": binary, "application/x-ndjson": binary,
        "application/json": {"schema": {"description": "A JSON document the job wrote (an import's report)"}},
    }
    b.add("get", "/jobs/{job_id}/result", "getJobResult", "A finished job's result file", "jobs",
          {"200": result}, ("400", "404", "410", *_AUTHZ), parameters=[JOB_ID])
    b.add("get", "/jobs/{job_id}/logs", "getJobLogs", "A job's log lines, newest first", "jobs", {
        "200": b.answer("A page of the job's log lines", api.LogList, Link=_h("Link")),
    }, ("400", "404", *_AUTHZ), parameters=[JOB_ID, *LOG_FILTERS[:3], *LOG_FILTERS[4:], *PAGING])


LEVEL = {"type": "string", "enum": ["trace", "debug", "info", "success", "warning", "error", "critical"]}
LOG_FILTERS = [
    _query("service", {"type": "string", "minLength": 1, "maxLength": 100}, "Only this service's (`handler-1`)"),
    _query("level", LEVEL, "Only this level"),
    _query("min_level", LEVEL, "This level or more severe"),
    _query("job_id", {"type": "string", "format": "uuid"}, "Only this job's"),
    _query("request_id", {"type": "string", "minLength": 1, "maxLength": 200}, "Only this request's"),
    _query("since", {"type": "string", "format": "date-time"}, "From this time on (not after `until`: a 400)"),
    _query("until", {"type": "string", "format": "date-time"}, "Before this time"),
    _query("q", {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[^\\x00]*$"},
           "Only the lines whose message holds this text, in any case (`timed out`)"),
]


def _ecg_routes(b: _Builder) -> None:
    b.add("post", "/ecgs", "createEcg", "Submit an ECG for analysis", "ecg", {
        "201": b.answer("The ECG is stored and its analysis queued, as `GET /ecgs/{job_id}` shows it", api.EcgOut),
        "200": b.answer("A repeat of an earlier submission (same `Idempotency-Key`): its ECG", api.EcgOut),
    }, _SUBMIT_ERRORS, body=submission_model(ecg.EcgPayload), parameters=[IDEMPOTENCY_KEY],
        description="Zero crossings are counted per lead: the sign changes between consecutive non-zero samples, "
                    "zeros skipped (`[1, 0, -1]` crosses once, `[1, 0, 1]` never). A lead's `number_of_samples`, "
                    "when given, must equal the length of its `signal` (a 400 naming it otherwise), and a lead "
                    "name appears once. The body may be far larger than other JSON bodies (128 MiB by default).")
    b.add("get", "/ecgs/{job_id}", "getEcg", "An ECG's state and, once finished, its zero crossings", "ecg", {
        "200": b.answer("The ECG (an operator who does not own it sees its state only)", api.EcgOut),
    }, ("400", "404", *_AUTHZ), parameters=[JOB_ID])
    b.add("get", "/ecgs", "listEcgs", "The caller's ECGs", "ecg", {
        "200": b.answer("A page of the ECGs, newest first, each as `GET /ecgs/{job_id}` shows it", api.EcgList,
                        Link=_h("Link")),
    }, ("400", *_AUTHZ), parameters=PAGING)


def _data_import_routes(b: _Builder) -> None:
    body = b.body(data_import.UrlImport)
    body["content"] = {
        "multipart/form-data": {
            # One part, the file: a second part (a second file, a form field) is a 400.
            "schema": {"type": "object", "required": ["file"], "additionalProperties": False, "properties": {
                "file": {"type": "string", "format": "binary", "minLength": 1,
                         "description": "CSV with a header, or NDJSON: by its name (.csv, .ndjson, .jsonl) or "
                                        "its part's content type (text/csv, application/x-ndjson)"}}},
            "encoding": {"file": {"contentType": "text/csv, application/x-ndjson"}},
        },
        **body["content"],
    }
    resource = {"name": "resource", "in": "query", "required": True, "description": "What the file holds",
                "schema": {"type": "string", "enum": [str(r) for r in data_import.Resource]}}
    b.add("post", "/v1/imports", "createDataImport", "Import users, articles or comments from a file or a URL",
          "data", {
              "201": b.answer("The file is stored and its import queued, as `GET /v1/imports/{job_id}` shows it",
                              api.DataImportOut),
              "200": b.answer("A repeat of an earlier submission (same `Idempotency-Key`): its import",
                              api.DataImportOut),
          }, _SUBMIT_ERRORS, parameters=[resource, *SCHEDULING_PARAMETERS, IDEMPOTENCY_KEY],
          description="Needs the `importer` permission (records keep no owner: an import may overwrite any). "
                      "A multipart body with the file (streamed to storage as it arrives; 1 GiB at most by "
                      "default), or JSON `{\"url\"}` naming an http(s) URL the handler fetches. Each record is "
                      "checked on its own; good ones are upserted by id in batches of 5,000, bad ones are "
                      "counted and reported with their line. Users: a valid email unique across users, a role "
                      "of admin, author or reader, a boolean `active`. Articles: a kebab-case slug unique "
                      "across articles, a title, a status of draft or published (a draft has no "
                      "`published_at`), an author that exists. Comments: a body of at most 500 words, an "
                      "article and a user that exist. `priority`, `run_at` and `delay_s` are query "
                      "parameters here (`run_at` and `delay_s` not both).")
    b.paths["/v1/imports"]["post"]["requestBody"] = body
    b.add("get", "/v1/imports", "listDataImports", "The caller's imports", "data", {
        "200": b.answer("A page of the imports, newest first, each as `GET /v1/imports/{job_id}` shows it",
                        api.DataImportList, Link=_h("Link")),
    }, ("400", *_AUTHZ), parameters=PAGING)
    b.add("get", "/v1/imports/{job_id}", "getDataImport", "An import's state, counters and first errors", "data", {
        "200": b.answer("The import (the caller's own only)", api.DataImportOut),
    }, ("400", "404", *_AUTHZ), parameters=[JOB_ID])
    report = b.answer("The error report: NDJSON, one `{line, reason}` a rejected record",
                      ContentDisposition=_h("ContentDisposition"))
    report["content"] = {"application/x-ndjson": {"schema": {"type": "string"}}}
    b.add("get", "/v1/imports/{job_id}/errors", "getDataImportErrors", "A finished import's error report", "data",
          {"200": report}, ("400", "404", "410", *_AUTHZ), parameters=[JOB_ID])


def _data_export_routes(b: _Builder) -> None:
    b.add("post", "/v1/exports", "createDataExport", "Export users, articles or comments to a file", "data", {
        "201": b.answer("The export is queued, as `GET /v1/exports/{job_id}` shows it", api.DataExportOut),
        "200": b.answer("A repeat of an earlier submission (same `Idempotency-Key`): its export", api.DataExportOut),
    }, _SUBMIT_ERRORS, body=submission_model(data_export.DataExportRequest), parameters=[IDEMPOTENCY_KEY],
        description="Needs the `exporter` permission. The rows matching `filters` are written as NDJSON, CSV "
                    "(with a header) or a JSON array, with the `fields` asked for (all columns by default), "
                    "a page of 5,000 rows at a time; download the file from `download_url` once finished. "
                    "Filters: users `role`, `active`, `created_from`, `created_to`; articles `status`, "
                    "`author_id`, `published_from`, `published_to`; comments `article_id`, `user_id` "
                    "(an id filter is text without a NUL character). A cancelled export (`DELETE /jobs/{id}`) leaves no file.")
    formats = [str(f) for f in data_export.ExportFormat]
    stream = b.answer("The rows, streamed as they are read", ContentDisposition=_h("ContentDisposition"))
    stream["content"] = {data_export.CONTENT_TYPES[data_export.ExportFormat(f)]: {"schema": {"type": "string"}}
                         for f in formats}
    filters = [_query(name, schema, description) for name, schema, description in (
        ("role", {"type": "string", "enum": ["admin", "author", "reader"]}, "users: only this role"),
        ("active", {"type": "boolean"}, "users: only active (true) or inactive (false) ones"),
        ("created_from", {"type": "string", "format": "date-time"}, "users: created at or after"),
        ("created_to", {"type": "string", "format": "date-time"}, "users: created at or before"),
        ("status", {"type": "string", "enum": ["draft", "published"]}, "articles: only this status"),
        ("author_id", {"type": "string", "pattern": TEXT_PATTERN}, "articles: only this author's"),
        ("published_from", {"type": "string", "format": "date-time"}, "articles: published at or after"),
        ("published_to", {"type": "string", "format": "date-time"}, "articles: published at or before"),
        ("article_id", {"type": "string", "pattern": NO_NUL_PATTERN}, "comments: only on this article"),
        ("user_id", {"type": "string", "pattern": NO_NUL_PATTERN}, "comments: only this user's"),
    )]
    b.add("get", "/v1/exports", "streamDataExport", "Stream users, articles or comments straight out", "data",
          {"200": stream}, ("400", *_AUTHZ), parameters=[
              {**_query("resource", {"type": "string", "enum": [str(r) for r in data_import.Resource]},
                        "What to export"), "required": True},
              _query("format", {"type": "string", "enum": formats, "default": "ndjson"}, "The file's format"),
              _query("fields", {"type": "string"}, "Columns to export, comma-separated (all by default)"),
              *filters,
          ], description="Needs the `exporter` permission. No job: the rows are read from the data store and "
                         "written out a page at a time, in constant memory. A filter of another resource is a 400.")
    b.add("get", "/v1/exports/jobs", "listDataExports", "The caller's export jobs", "data", {
        "200": b.answer("A page of the export jobs, newest first, each as `GET /v1/exports/{job_id}` shows it",
                        api.DataExportList, Link=_h("Link")),
    }, ("400", *_AUTHZ), parameters=PAGING,
        description="Needs the `exporter` permission. `GET /v1/exports` itself is the streamed export.")
    b.add("get", "/v1/exports/{job_id}", "getDataExport", "An export's state, progress and download link", "data", {
        "200": b.answer("The export (the caller's own only)", api.DataExportOut),
    }, ("400", "404", *_AUTHZ), parameters=[JOB_ID])


def _operator_routes(b: _Builder) -> None:
    b.add("get", "/queues", "listQueues", "Every queue: ready, delayed, leased and dead jobs, totals", "operators", {
        "200": b.answer("A page of the queues, by name: a snapshot of the scheduler's counters", api.QueueList,
                        Link=_h("Link")),
    }, ("400", *_AUTHZ), parameters=[*PAGING])
    for action, summary in (("pause", "Pause a queue: it takes jobs but hands none out"),
                            ("resume", "Resume a paused queue")):
        b.add("post", f"/queues/{{name}}/{action}", f"{action}Queue", summary, "operators", {
            "200": b.answer("The queue, as `GET /queues` shows it", api.QueueStats),
        }, ("400", "404", *_AUTHZ), parameters=[QUEUE_NAME], description=(
            "Idempotent. Jobs already handed out go on; a paused queue's delayed jobs fall due and wait. "
            "The pause is kept by the scheduler's store: it outlives a restart and holds for every scheduler."))
    b.add("get", "/instances", "listInstances", "Every service instance, alive or gone", "operators", {
        "200": b.answer("A page of the instances, by kind and name", api.InstancePage, Link=_h("Link")),
    }, ("400", *_AUTHZ), parameters=[
        _query("kind", {"type": "string", "enum": [str(kind) for kind in InstanceKind]}, "Only this service's"),
        _query("gone", {"type": "boolean"}, "Only the gone ones (`true`), or only the alive ones (`false`)"),
        *PAGING,
    ], description="Every process of every service registers with the registry and heartbeats a small "
                   "status snapshot; one that missed its heartbeats is `gone` (and dropped after a while), "
                   "one that stopped cleanly is no longer listed.")
    b.add("get", "/logs", "queryLogs", "Every service's log lines, newest first", "operators", {
        "200": b.answer("A page of the log lines", api.LogList, Link=_h("Link")),
    }, ("400", *_AUTHZ), parameters=[*LOG_FILTERS, *PAGING])
    log_stream = b.answer("The stream; it lasts until the client goes away")
    log_stream["content"] = {"text/event-stream": {"schema": LOG_SSE_EVENT}}
    b.add("get", "/logs/stream", "streamLogs", "Follow every service's new log lines", "operators",
          {"200": log_stream}, ("400", *_AUTHZ), parameters=[
              *[p for p in LOG_FILTERS if p["name"] not in ("since", "until")],
              _query("after", {"type": "string", "format": "date-time"}, "Start with the lines after this time"),
              {"name": "Last-Event-ID", "in": "header", "required": False,
               "description": "Resume with the lines that arrived after this event `id` (wins over `after`)",
               "schema": {"type": "string", "pattern": "^[0-9]{1,17}$"}}],
          description="A `text/event-stream`: each new line matching the filters (those of `GET /logs`) is an "
                      "event `log` whose `data` is the line as `GET /logs` shows it and whose `id` is the number the "
                      "logging service gave the line as it arrived: resuming after it gives every line that "
                      "arrived later once, whatever its time. Without a resume point the stream starts with what "
                      "comes next. Lines are read once a second, at most 500 a time; when more came, an event "
                      "`skipped` `{before}` says that lines that arrived before the one of that time were passed "
                      "over. Try it with `curl -N`.")
    b.add("get", "/dead", "listDeadLetters", "Dead letters: jobs that used up their attempts", "operators", {
        "200": b.answer("A page of the dead letters, oldest death first (ties by job id)", api.DeadLetterList,
                        Link=_h("Link")),
    }, ("400", *_AUTHZ), parameters=[
        _query("queue", {"type": "string", "minLength": 1, "maxLength": 100, "pattern": QUEUE_PATTERN},
               "Only this queue's (a queue is named after its kind: `export`, `task`...)"),
        *PAGING,
    ])
    b.add("post", "/dead/requeue", "requeueDeadLetters", "Give dead jobs their attempts again and queue them",
          "operators", {"200": b.answer("What was requeued and what was skipped, and why", api.RequeueAnswer)},
          ("400", "404", *_AUTHZ, "413", "415"), body=api.RequeueRequest,
          description="`all` of a `queue` that is no queue (neither a kind's nor one holding jobs) is a 404.")
    b.add("post", "/dead/discard", "discardDeadLetters", "Forget dead letters for good", "operators",
          {"200": b.answer("The dead letters discarded", api.DiscardAnswer)},
          ("400", "404", *_AUTHZ, "413", "415"), body=api.DiscardRequest,
          description="The jobs stay `failed` in the registry, their history kept; the central log tells who "
                      "discarded them. `all` of a `queue` that is no queue is a 404.")


def _admin_routes(b: _Builder) -> None:
    b.add("get", "/users", "listUsers", "Every user", "admin", {
        "200": b.answer("A page of the users, by username", api.UserPage, Link=_h("Link")),
    }, ("400", *_AUTHZ), parameters=PAGING)
    b.add("post", "/users", "createUser", "Add a user", "admin", {
        "201": b.answer("The new user", api.User),
    }, ("400", *_AUTHZ, "409", "413", "415"), body=api.UserCreate)
    b.add("delete", "/users/{username}", "deleteUser", "Remove a user (their tokens stop working)", "admin", {
        "204": b.answer("Removed"),
    }, ("404", *_AUTHZ), parameters=[USERNAME])
    b.add("put", "/users/{username}/password", "changePassword",
          "Set a user's password (their older tokens stop working)", "admin", {
              "204": b.answer("Changed"),
          }, ("400", "404", *_AUTHZ, "413", "415"), parameters=[USERNAME], body=api.PasswordChange)
    b.add("put", "/users/{username}/roles", "changeRoles", "Set a user's roles (their older tokens stop working)",
          "admin", {
              "200": b.answer("The user with their new roles", api.User),
          }, ("400", "404", *_AUTHZ, "413", "415"), parameters=[USERNAME], body=api.RolesChange)


def _meta_routes(b: _Builder) -> None:
    b.add("post", "/auth/token", "createToken", "Trade a username and password for a bearer token", "auth", {
        "200": b.answer("The token", api.TokenAnswer),
    }, ("400", "401", "413", "415"), body=api.TokenRequest, security=[{}])
    health = {
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": ["ok", "unavailable"]},
            "service": {"type": "string"},
            "checks": {"type": "object", "description": "The receptionists the gateway relays to, and whether they are up"},
            "error": {"type": "string"},
        },
        "required": ["status", "service"],
    }
    b.add("get", "/health", "health", "Whether the gateway can relay requests", "meta", {
        "200": b.answer("At least one receptionist is up", schema=health, relayed=False),
        "503": b.answer("No receptionist is up", schema=health, relayed=False),
    }, relayed=False, security=[])
    b.add("get", "/openapi.json", "getOpenApi", "This document", "meta", {
        "200": b.answer("The OpenAPI 3.1 document", schema={"type": "object"}, relayed=False),
    }, relayed=False, security=[])
    docs = b.answer("Swagger UI's page", relayed=False)
    docs["content"] = {"text/html": {"schema": {"type": "string"}}}
    b.add("get", "/docs", "getDocs", "Swagger UI, to read and try this API", "meta", {"200": docs},
          relayed=False, security=[])


_EVENTS_DESCRIPTION = (
    "A `text/event-stream` of server-sent events: `id: <seq>`, `event: <topic>`, `data: <JSON>`, and a "
    "`: keep-alive` comment line on a quiet stream (every 15 s by default). Topics: `task.created` "
    "`{task_id, user_id, status, description}`; `task.updated` `{task_id, user_id, status, attempt, error}`; "
    "`job.updated` (any change of any job) `{job_id, kind, owner, state, previous_state, attempt, progress}`. "
    "Every event of a stream has its own `id`: the last (or only) event of one change has the change's `seq`, "
    "one before it `seq-1`. To resume, send the last `id` seen as `Last-Event-ID` (what `EventSource` does "
    "when it reconnects), or a `seq` as `after`. A user sees their own jobs' events; an operator "
    "every job's (another user's task without its description). Try it with `curl -N`."
)
#: One event of a stream (schema of a ``text/event-stream`` describes each event, as OpenAPI 3.2's
#: ``itemSchema`` does and as tools read it before 3.2); comment lines (keep-alives) are no events.
SSE_EVENT = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+(-[1-9])?$",
               "description": "Unique in the stream: the change's `seq`, or `seq-N` for an event before the "
                              "last of that change; resume after it with `Last-Event-ID`"},
        "event": {"type": "string", "enum": [str(t) for t in api.EventTopic]},
        "data": {"type": "string", "contentMediaType": "application/json", "description": "The event as JSON"},
    },
    "required": ["id", "event", "data"],
}
#: One event of ``GET /logs/stream``: a line, or a note that lines were passed over.
LOG_SSE_EVENT = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]{1,17}$",
               "description": "A line's number, in the order lines arrived (none on `skipped`)"},
        "event": {"type": "string", "enum": ["log", "skipped"]},
        "data": {"type": "string", "contentMediaType": "application/json", "description": "The event as JSON"},
    },
    "required": ["event", "data"],
}
#: The receptionist's limit on ``topic`` values (repeats included), :class:`receptionist.events.StreamQuery`.
MAX_TOPICS = len(api.EventTopic) * 4
LAST_EVENT_ID = {"name": "Last-Event-ID", "in": "header", "required": False,
                 "description": "Resume after this event `id` (wins over `after`)",
                 "schema": {"type": "string", "pattern": "^[0-9]{1,19}(-[1-9])?$"}}
EVENT_PARAMETERS = [
    _query("topic", {"type": "array", "items": {"type": "string", "enum": [str(t) for t in api.EventTopic]},
                     "maxItems": MAX_TOPICS},
           f"Only these topics (repeated, or comma-separated; {MAX_TOPICS} at most); every topic when absent"),
    _query("after", {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
           "Resume after the change of this `seq`"),
    LAST_EVENT_ID,
]


def _task_event_routes(b: _Builder) -> None:
    b.add("get", "/tasks", "listTasks", "The caller's tasks, with the task service's statuses", "tasks", {
        "200": b.answer("A page of the tasks, newest first", api.TaskList, Link=_h("Link")),
    }, ("400", *_AUTHZ), parameters=PAGING,
        description="Statuses: `PENDING`, `RUNNING`, `SUCCESS`, `FAILED`, `CANCELLED`.")
    b.add("get", "/tasks/{task_id}", "getTask", "One of the caller's tasks", "tasks", {
        "200": b.answer("The task", api.TaskView),
    }, ("400", "404", *_AUTHZ), parameters=[
        _path("task_id", {"type": "string", "format": "uuid"}, "The task's id (another user's task is a 404)")])
    stream = b.answer("The stream; it lasts until the client goes away")
    stream["content"] = {"text/event-stream": {"schema": SSE_EVENT}}
    b.add("get", "/events", "streamEvents", "Follow the changes of the caller's jobs (every job's, for operators)",
          "events", {"200": stream}, ("400", *_AUTHZ), parameters=EVENT_PARAMETERS,
          description=_EVENTS_DESCRIPTION + " A stream without a resume point starts with what comes next.")
    job_stream = b.answer("The stream; it ends after the event of the job's final state")
    job_stream["content"] = stream["content"]
    b.add("get", "/jobs/{job_id}/events", "streamJobEvents", "Follow one job's changes until it ends", "events",
          {"200": job_stream}, ("400", "404", *_AUTHZ), parameters=[JOB_ID, *EVENT_PARAMETERS],
          description=_EVENTS_DESCRIPTION + " Without a resume point, the stream starts with the job's first event.")


#: What a submission's answer leads to (OpenAPI links: the job's ``id`` in the body names the job on
#: these operations), so that clients and tools such as schemathesis's stateful phase can follow a job
#: from its submission to its state, result, logs, events and cancelling.
_JOB_FOLLOWERS = ("getJob", "cancelJob", "getJobResult", "getJobLogs", "streamJobEvents")
_LINKS: dict[str, tuple[str, ...]] = {
    "createJob": _JOB_FOLLOWERS,
    "createExport": _JOB_FOLLOWERS,
    "createImport": _JOB_FOLLOWERS,
    "createTask": ("getTask", *_JOB_FOLLOWERS),
    "createEcg": ("getEcg", *_JOB_FOLLOWERS),
    "createDataImport": ("getDataImport", "getDataImportErrors", *_JOB_FOLLOWERS),
    "createDataExport": ("getDataExport", *_JOB_FOLLOWERS),
}
#: Path parameters that name a job, by operation (all ``job_id`` but one).
_JOB_PARAMETER = {"getTask": "task_id"}


def _add_links(paths: dict[str, dict[str, Any]]) -> None:
    operations = {op["operationId"]: op for methods in paths.values() for op in methods.values()}
    for source, targets in _LINKS.items():
        links = {target: {"operationId": target,
                          "parameters": {_JOB_PARAMETER.get(target, "job_id"): "$response.body#/id"}}
                 for target in targets}
        for status in ("201", "200"):  # a repeat with the same Idempotency-Key names the same job
            operations[source]["responses"][status]["links"] = links
    user = operations["createUser"]["responses"]["201"]
    user["links"] = {target: {"operationId": target, "parameters": {"username": "$response.body#/username"}}
                     for target in ("changePassword", "deleteUser")}


#: An http(s) URL with a host name, as the handlers fetch them. The server's own check is a URL parser's
#: (any http or https URL with a host); this is the part of it a pattern can say, and it leaves out
#: literal addresses, which the server refuses for what they point at, not for their form.
HTTP_URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://([A-Za-z0-9-]+\.)*[A-Za-z][A-Za-z0-9-]*(:[1-9][0-9]{0,3})?([/?#][!-~]*)?$"
#: What the models' validators check beyond their fields' types, said in the schema too, so that a client
#: (or a fuzzer) can tell a valid request from the document alone: ``(schema, property, keywords)``.
VALIDATED: tuple[tuple[str, str | None, dict[str, Any]], ...] = (
    ("UserCreate", "username", {"pattern": api.USERNAME.pattern}),
    ("UserCreate", "permissions", {"items": {"type": "string", "pattern": "^[a-z][a-z0-9_-]{0,39}$"}}),
    # Book payloads in POST /jobs, and with the scheduling fields beside them on their own routes.
    *((name, "url", {"pattern": HTTP_URL_PATTERN}) for name in ("ImportPayload", "ImportSubmission")),
    *((name, "bookId", {"pattern": books.BOOK_ID_PATTERN})
      for name in ("ExportPayload", "ImportPayload", "ExportSubmission", "ImportSubmission")),
    # Not blank, and no NUL (PostgreSQL's text cannot hold one): a task's description, an ECG's label.
    *((name, "description", {"pattern": TEXT_PATTERN}) for name in ("TaskSubmission", "TaskPayload")),
    ("EcgSubmission", "id", {"pattern": NO_NUL_PATTERN}),
    ("UrlImport", "url", {"pattern": HTTP_URL_PATTERN}),
    *((name, None, A_TIME_OR_A_DELAY) for name in
      ("ExportSubmission", "ImportSubmission", "TaskSubmission", "EcgSubmission", "DataExportSubmission")),
    # Each job named once (it was answered twice as redriven).
    *((name, "job_ids", {"uniqueItems": True}) for name in ("RequeueRequest", "DiscardRequest")),
    # Either the jobs or all of them (of a queue), never both nor neither.
    *((name, None, {"oneOf": [
        {"required": ["job_ids"], "properties": {"job_ids": {"type": "array"}, "all": {"const": False},
                                                 "queue": {"type": "null"}}},
        {"required": ["all"], "properties": {"all": {"const": True}, "job_ids": {"type": "null"}}},
    ]}) for name in ("RequeueRequest", "DiscardRequest")),
)


def _add_validated(schemas: dict[str, Any]) -> None:
    """The rules of :data:`VALIDATED`, on each schema of that name, a kind's own copy (``import.ImportPayload``:
    the payload of ``POST /jobs``, without the scheduling fields of the route's body) included."""
    for name, prop, keywords in VALIDATED:
        for key in [key for key in schemas if key == name or key.endswith("." + name)]:
            (schemas[key] if prop is None else schemas[key]["properties"][prop]).update(keywords)


@functools.cache
def build_spec() -> dict[str, Any]:
    """The OpenAPI 3.1 document of everything a client reaches on the gateway (built once; don't mutate)."""
    b = _Builder()
    for add_routes in (_meta_routes, _book_routes, _job_routes, _operator_routes, _admin_routes, _ecg_routes,
                       _data_import_routes, _data_export_routes, _task_event_routes, add_schedule_routes):
        add_routes(b)
    _add_links(b.paths)
    b.schemas.ref(ErrorBody, "serialization")
    _add_validated(b.schemas.schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Conveyor",
            "version": _version(),
            "description": "Submit jobs, follow them, fetch their results. Errors are always "
                           '`{"error": "...", "details": [{"field": "...", "message": "..."}]}`. '
                           "Calls carry a bearer token from `POST /auth/token`, or none at all (as the shared "
                           "anonymous user) unless the gateway is set to require one.",
        },
        "tags": [{"name": name, "description": text} for name, text in TAGS],
        "security": [{}, {"bearerAuth": []}],
        "paths": b.paths,
        "components": {
            "schemas": dict(sorted(b.schemas.schemas.items())),
            "responses": {name: response for name, response in ERRORS.values()},
            "headers": HEADERS,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "A token from `POST /auth/token`"}},
        },
    }
