"""The OpenAPI document and Swagger UI the gateway serves: a sound 3.1 document whose schemas are the
models' own, and a docs page that loads nothing from another host. The served routes run on the real
gateway, in front of a real receptionist (itself in front of the real registry and scheduler), so a
path the docs routes do not own is still relayed."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema_rs
import orjson
import pytest
from aiohttp.test_utils import TestClient
from pydantic import BaseModel, ValidationError
from yarl import URL

from gateway.app import create_app
from gateway.docs import STATIC_FILES, static_dir
from gateway.openapi import REF, VALIDATED, build_spec
from gateway.openapi_kinds import submission_schema
from gateway.settings import Settings
from shared import api
from shared.contract import ErrorBody
from shared.errors import ValidationFailed
from shared.kinds import KINDS, KindRegistry, KindSpec, books, data_export, data_import, ecg, tasks
from shared.scheduling import submission_model as submission

TOKEN = "openapi-test-service-token"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}

#: Every public route, by path, with its methods: the document must list exactly these.
ROUTES = {
    "/auth/token": {"post"},
    "/exports": {"get", "post"},
    "/imports": {"get", "post"},
    "/tasks": {"get", "post"},
    "/tasks/{task_id}": {"get"},
    "/events": {"get"},
    "/jobs/{job_id}/events": {"get"},
    "/jobs": {"get", "post"},
    "/jobs/{job_id}": {"get", "delete"},
    "/jobs/{job_id}/result": {"get"},
    "/jobs/{job_id}/logs": {"get"},
    "/queues": {"get"},
    "/instances": {"get"},
    "/logs": {"get"},
    "/logs/stream": {"get"},
    "/dead": {"get"},
    "/dead/requeue": {"post"},
    "/dead/discard": {"post"},
    "/queues/{name}/pause": {"post"},
    "/queues/{name}/resume": {"post"},
    "/users": {"get", "post"},
    "/users/{username}": {"delete"},
    "/users/{username}/password": {"put"},
    "/users/{username}/roles": {"put"},
    "/health": {"get"},
    "/openapi.json": {"get"},
    "/docs": {"get"},
    "/ecgs": {"get", "post"},
    "/ecgs/{job_id}": {"get"},
    "/v1/imports": {"get", "post"},
    "/v1/imports/{job_id}": {"get"},
    "/v1/imports/{job_id}/errors": {"get"},
    "/v1/exports": {"get", "post"},
    "/v1/exports/jobs": {"get"},
    "/v1/exports/{job_id}": {"get"},
    "/schedules": {"get", "post"},
    "/schedules/{schedule_id}": {"get", "delete"},
    "/schedules/{schedule_id}/pause": {"post"},
    "/schedules/{schedule_id}/resume": {"post"},
}
#: The gateway answers these itself; every other route is relayed, so it may be rate limited.
OWN_ROUTES = {"/health", "/openapi.json", "/docs"}
BODIES = {
    ("/auth/token", "post"): api.TokenRequest,
    ("/exports", "post"): submission(books.ExportPayload),
    ("/imports", "post"): submission(books.ImportPayload),
    ("/tasks", "post"): submission(tasks.TaskPayload),
    ("/dead/requeue", "post"): api.RequeueRequest,
    ("/dead/discard", "post"): api.DiscardRequest,
    ("/users", "post"): api.UserCreate,
    ("/users/{username}/password", "put"): api.PasswordChange,
    ("/users/{username}/roles", "put"): api.RolesChange,
    ("/ecgs", "post"): submission(ecg.EcgPayload),
    ("/v1/imports", "post"): data_import.UrlImport,
    ("/v1/exports", "post"): submission(data_export.DataExportRequest),
}


def resolve(spec: dict[str, Any], node: Any) -> Any:
    """``node`` with its ``$ref`` (a local JSON pointer) followed, as often as it takes."""
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        node = spec
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            assert part in node, f"{ref} does not resolve"
            node = node[part]
    return node


def walk(node: Any) -> Any:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def operations(spec: dict[str, Any]) -> Any:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield path, method, operation


def model_schema(model: type[BaseModel], mode: str) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=REF, mode=mode)  # type: ignore[arg-type]
    schema.pop("$defs", None)
    return schema


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return build_spec()


def test_the_document_is_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"] == "3.1.0"
    assert spec["info"]["title"] == "Conveyor"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", spec["info"]["version"])
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": spec["components"]["securitySchemes"]["bearerAuth"][
            "description"]}
    assert {} in spec["security"] and {"bearerAuth": []} in spec["security"]  # anonymous calls are allowed
    # Plain JSON all the way: what the gateway serves is exactly this.
    assert orjson.loads(orjson.dumps(spec)) == spec


def test_every_ref_resolves(spec: dict[str, Any]) -> None:
    refs = [node["$ref"] for node in walk(spec) if isinstance(node.get("$ref"), str)]
    assert len(refs) > 50
    for ref in refs:
        resolve(spec, {"$ref": ref})
    assert not [node for node in walk(spec) if "$defs" in node], "every $defs is hoisted into components"


def test_every_public_route_is_there_and_nothing_else(spec: dict[str, Any]) -> None:
    listed = {path: {m for m in item if m in METHODS} for path, item in spec["paths"].items()}
    assert listed == ROUTES


def test_every_operation_is_named_described_and_tagged(spec: dict[str, Any]) -> None:
    tags = {tag["name"] for tag in spec["tags"]}
    assert tags == {"books", "tasks", "jobs", "operators", "admin", "auth", "meta", "ecg", "events", "data",
                    "schedules"}
    ids = []
    for path, method, operation in operations(spec):
        ids.append(operation["operationId"])
        assert operation["summary"], (path, method)
        assert operation["tags"] and set(operation["tags"]) <= tags, (path, method)
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "path":
                assert parameter["required"] and "{" + parameter["name"] + "}" in path
        placeholders = set(re.findall(r"{(\w+)}", path))
        assert placeholders == {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
    assert len(ids) == len(set(ids)) == sum(len(methods) for methods in ROUTES.values())


def test_request_bodies_are_the_models_in_validation_mode(spec: dict[str, Any]) -> None:
    """The models' schemas, with what their validators check besides (:data:`VALIDATED`, tested below)."""
    with_body = {(path, method) for path, method, op in operations(spec) if "requestBody" in op}
    # One schema per kind on these two: see the test after this one, and tests/gateway/test_openapi_schedules.py.
    assert with_body == {*BODIES, ("/jobs", "post"), ("/schedules", "post")}
    for (path, method), model in BODIES.items():
        body = spec["paths"][path][method]["requestBody"]
        assert body["required"] is True
        schema = resolve(spec, body["content"]["application/json"]["schema"])
        expected = model_schema(model, "validation")
        for name, prop, keywords in VALIDATED:
            if name == model.__name__:
                (expected if prop is None else expected["properties"][prop]).update(keywords)
        assert schema == expected, model.__name__


def validator(spec: dict[str, Any], schema: str) -> Any:
    """A JSON Schema validator of the component ``schema``, its ``$ref``s resolved within ``spec``."""
    return jsonschema_rs.validator_for({"$ref": REF.format(model=schema), "components": spec["components"]})


@pytest.mark.parametrize(("body", "valid"), [
    ({"kind": "export", "payload": {"bookId": "b", "type": "pdf"}}, True),
    ({"kind": "import", "payload": {"bookId": "b", "type": "pdf", "url": "http://example.org/b.pdf"}}, True),
    ({"kind": "export", "payload": {"bookId": "b", "type": "docx"}}, False),
    ({"kind": "export", "payload": {"bookId": "b", "type": "pdf"}, "colour": "red"}, False),
    ({"kind": "export"}, False),
    ({"kind": "task", "payload": {"description": "a task"}}, True),  # a kind with a route of its own too
    ({"kind": "ecg", "payload": {"date": "2023-07-30T10:15:00Z", "leads": []}}, False),  # by POST /ecgs only
    ({"kind": "laundry", "payload": {}}, False),
    # The scheduling fields sit beside kind and payload: not in the payload, and not a time and a delay.
    ({"kind": "export", "payload": {"bookId": "b", "type": "pdf"}, "priority": 5, "delay_s": 3}, True),
    ({"kind": "export", "payload": {"bookId": "b", "type": "pdf"}, "priority": -5, "delay_s": 60}, True),
    ({"kind": "export", "payload": {"bookId": "b", "type": "pdf", "priority": 5}}, False),
    ({"kind": "export", "payload": {"bookId": "b", "type": "pdf"}, "delay_s": 60,
      "run_at": (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()}, False),
])
def test_the_job_body_is_one_schema_per_kind_of_post_jobs(spec: dict[str, Any], body: dict[str, Any],
                                                         valid: bool) -> None:
    """``POST /jobs`` takes ``{kind, payload}`` of each kind but those that come only by a route of their own,
    its payload the kind's own model (the same schema as on the kind's route, rules of :data:`VALIDATED`
    included)."""
    submission = resolve(spec, spec["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"])
    variants = [resolve(spec, variant) for variant in submission["oneOf"]]
    kinds = [v["properties"]["kind"]["const"] for v in variants]
    assert kinds == [s.kind for s in KINDS.specs() if not s.own_route_only]
    assert {"task", "data_export", "export"} <= set(kinds) and not {"ecg", "data_import"} & set(kinds)
    # The payload keeps its own name: the body of POST /exports, the payload with the scheduling fields
    # beside it, is ExportSubmission.
    export = variants[kinds.index("export")]
    assert export["properties"]["payload"] == {"$ref": REF.format(model="ExportPayload")}
    assert {"priority", "run_at", "delay_s"} <= set(export["properties"])
    assert resolve(spec, spec["paths"]["/exports"]["post"]["requestBody"]["content"]["application/json"]["schema"]
                   )["title"] == "ExportSubmission"
    assert validator(spec, "JobSubmission").is_valid(body) is valid


def test_a_plugins_payload_named_like_another_schema_is_named_after_its_kind() -> None:
    """Two kinds' payload models of one name (``ExportPayload``) but other shapes each keep their own
    schema: the second is named after its kind, so no ``$ref`` points at the other's."""

    class ExportPayload(BaseModel):
        colour: str

    async def run(ctx: Any) -> dict[str, Any]:
        return {}

    kinds = KindRegistry()
    kinds.register(KindSpec(kind="acme.paint", payload=ExportPayload, run=run, module="acme"))
    kinds.register(KINDS["export"])
    schemas: dict[str, Any] = {}
    submission_schema(schemas, kinds)
    assert schemas["JobSubmission.export"]["properties"]["payload"] == {"$ref": REF.format(model="ExportPayload")}
    assert schemas["JobSubmission.acme.paint"]["properties"]["payload"] == {
        "$ref": REF.format(model="acme.paint.ExportPayload")}
    assert set(schemas["acme.paint.ExportPayload"]["properties"]) == {"colour"}
    assert set(schemas["ExportPayload"]["properties"]) == {"bookId", "type"}


A_JOB, ANOTHER_JOB = "0f8fad5b-d9cb-469f-a165-70867728950e", "7c9e6679-7425-40de-944b-e07fc1f90ae7"
#: Values of a body's field that the document and the model must judge alike: ``(valid, invalid)``.
FIELD_SAMPLES: dict[tuple[type[BaseModel], str], tuple[list[Any], list[Any]]] = {
    (api.UserCreate, "username"): (["a", "Bob.smith@x-1", "x" * 64], ["", "-a", "a b", "x" * 65, "é"]),
    (api.UserCreate, "permissions"): ([[], ["exporter"], ["a_1-b"]], [[""], ["Exporter"], ["a" * 41], ["1a"]]),
    (submission(books.ImportPayload), "url"): (
        ["http://example.org/b.docx", "HTTPS://a-b.example:8080/x/y.pdf", "http://example"],
        ["", "ftp://example.org/a", "http://", "example.org/a"]),
    (data_import.UrlImport, "url"): (["http://example.org/users.csv", "https://files.example/a.ndjson"],
                                     ["", "file:///etc/passwd", "http://", "users.csv"]),
    # Stripped before their length is checked: blank is empty.
    (submission(tasks.TaskPayload), "description"): (["a", " a ", "\ufeff", "\x1c", "é"],
                                                     ["", " ", "\f", "\x85", "\u3000"]),
    # And no control character: a book's id is written into its files (an EPUB's XML cannot carry them).
    (submission(books.ExportPayload), "bookId"): (["b", " b", "a b", "é日本", "a\u2028b", "\ufeffb"],
                                                  ["", "\t", "\xa0", "a\x00", "a\nb", "b\n", "\x7fb", "b\x9f",
                                                   "b\ufffe", "\t b"]),
    (submission(books.ImportPayload), "bookId"): (["b"], ["", "\n", "b\r"]),
    (submission(tasks.TaskPayload), "priority"): ([-100, 0, 100], [-101, 101, 1.5, "1", True, None]),
    # Each job named once: one named twice was answered (and logged) twice as redriven.
    (api.RequeueRequest, "job_ids"): ([[A_JOB], [A_JOB, ANOTHER_JOB]], [[A_JOB, A_JOB], []]),
    (api.DiscardRequest, "job_ids"): ([[A_JOB, ANOTHER_JOB]], [[ANOTHER_JOB, A_JOB, ANOTHER_JOB]]),
    (submission(tasks.TaskPayload), "delay_s"): ([0, 0.5, 31_536_000, None], [-1, 31_536_001, "1", True]),
}
BASE_BODIES: dict[type[BaseModel], dict[str, Any]] = {
    api.RequeueRequest: {},
    api.DiscardRequest: {},
    api.UserCreate: {"username": "bob", "password": "a-password"},
    submission(books.ImportPayload): {"bookId": "b", "type": "pdf", "url": "http://example.org/b.pdf"},
    data_import.UrlImport: {"url": "http://example.org/users.csv"},
    submission(tasks.TaskPayload): {"description": "a task"},
    submission(books.ExportPayload): {"bookId": "b", "type": "pdf"},
}


def model_accepts(model: type[BaseModel], body: dict[str, Any]) -> bool:
    try:
        model.model_validate(body)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize(("model", "field"), list(FIELD_SAMPLES))
def test_the_document_says_what_the_validators_check(spec: dict[str, Any], model: type[BaseModel],
                                                     field: str) -> None:
    """A rule a validator enforces is in the document too, so a client (or a fuzzer) can tell a valid
    request from the document alone: the ECMA regex of the document and the model agree on each value."""
    path, method = next(key for key, body_model in BODIES.items() if body_model is model)
    schema = resolve(spec, spec["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"])
    document = jsonschema_rs.validator_for(schema["properties"][field])
    valid, invalid = FIELD_SAMPLES[model, field]
    for value in valid:
        assert document.is_valid(value) and model_accepts(model, {**BASE_BODIES[model], field: value}), value
    for value in invalid:
        assert not document.is_valid(value) and not model_accepts(model, {**BASE_BODIES[model], field: value}), value


SOON = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()


@pytest.mark.parametrize(("scheduling", "valid"), [
    ({}, True), ({"run_at": SOON}, True), ({"delay_s": 5}, True), ({"priority": 7, "delay_s": 0}, True),
    ({"run_at": None, "delay_s": 5}, True), ({"run_at": SOON, "delay_s": None}, True),
    ({"run_at": SOON, "delay_s": 5}, False), ({"run_at": SOON, "delay_s": 0, "priority": 1}, False),
])
def test_a_submission_gives_a_time_or_a_delay_not_both(spec: dict[str, Any], scheduling: dict[str, Any],
                                                        valid: bool) -> None:
    """Every JSON submission takes the scheduling fields beside its payload; the document says what the
    receptionist checks: ``run_at`` and ``delay_s`` not both (a 400 naming both)."""
    model = submission(tasks.TaskPayload)
    schema = resolve(spec, spec["paths"]["/tasks"]["post"]["requestBody"]["content"]["application/json"]["schema"])
    body = {"description": "a task", **scheduling}
    assert jsonschema_rs.validator_for(schema).is_valid(body) is valid
    if valid:
        model.model_validate(body)
    else:
        with pytest.raises(ValidationFailed) as refused:
            model.model_validate(body)
        assert [d["field"] for d in refused.value.details] == ["run_at", "delay_s"]
    for (path, method), body_model in BODIES.items():
        if path != "/v1/imports" and "priority" in body_model.model_fields:
            other = resolve(spec, spec["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"])
            assert {"priority", "run_at", "delay_s"} <= set(other["properties"]) and other["not"] == schema["not"]


def test_an_upload_takes_the_scheduling_fields_as_query_parameters(spec: dict[str, Any]) -> None:
    parameters = {p["name"]: p for p in spec["paths"]["/v1/imports"]["post"]["parameters"] if p["in"] == "query"}
    assert parameters["priority"]["schema"] == {"type": "integer", "minimum": -100, "maximum": 100, "default": 0}
    assert parameters["run_at"]["schema"] == {"type": "string", "format": "date-time"}
    assert parameters["delay_s"]["schema"] == {"type": "number", "minimum": 0, "maximum": 31_536_000}
    job = resolve(spec, {"$ref": REF.format(model="JobOut")})
    assert {"priority", "run_at"} <= set(job["required"])


@pytest.mark.parametrize(("body", "valid"), [
    ({"job_ids": [str(uuid.uuid4())]}, True),
    ({"all": True, "queue": "export"}, True),
    ({"job_ids": [str(uuid.uuid4())], "queue": "export"}, False),
    ({"job_ids": [str(uuid.uuid4())], "all": True}, False),
    ({}, False),
])
def test_a_discard_names_its_jobs_or_all_of_them(spec: dict[str, Any], body: dict[str, Any], valid: bool) -> None:
    """As for a redrive, and ``queue`` goes with ``all`` only (the receptionist answers 400 otherwise)."""
    schema = resolve(spec, {"$ref": REF.format(model="DiscardRequest")})
    assert jsonschema_rs.validator_for(schema).is_valid(body) is valid


@pytest.mark.parametrize(("body", "valid"), [
    ({"job_ids": [str(uuid.uuid4())]}, True),
    ({"all": True}, True),
    ({"all": True, "queue": "task"}, True),
    ({}, False),
    ({"all": False}, False),
    ({"job_ids": None, "all": False}, False),
    ({"job_ids": [str(uuid.uuid4())], "all": True}, False),
])
def test_a_redrive_names_its_jobs_or_all_of_them(spec: dict[str, Any], body: dict[str, Any], valid: bool) -> None:
    """The receptionist wants ``job_ids`` or ``all: true``, one of them (400 otherwise); so does the document."""
    schema = resolve(spec, {"$ref": REF.format(model="RequeueRequest")})
    assert jsonschema_rs.validator_for(schema).is_valid(body) is valid


def test_event_topics_are_bounded_as_the_receptionist_bounds_them(spec: dict[str, Any]) -> None:
    from receptionist.events import StreamQuery

    topic = next(p for p in spec["paths"]["/events"]["get"]["parameters"] if p["name"] == "topic")
    most = topic["schema"]["maxItems"]
    StreamQuery.model_validate({"topic": ["job.updated"] * most})
    with pytest.raises(ValidationError):
        StreamQuery.model_validate({"topic": ["job.updated"] * (most + 1)})


def test_a_data_import_file_is_one_csv_or_ndjson_part(spec: dict[str, Any]) -> None:
    multipart = spec["paths"]["/v1/imports"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert multipart["schema"]["additionalProperties"] is False
    assert multipart["schema"]["properties"]["file"]["minLength"] == 1
    assert multipart["encoding"]["file"]["contentType"] == "text/csv, application/x-ndjson"


def test_a_submission_links_to_what_follows_its_job(spec: dict[str, Any]) -> None:
    """OpenAPI links from each submission's answer to the operations its job's ``id`` names, so that a
    client, or schemathesis's stateful phase, can follow a job from its submission to its end."""
    by_id = {operation["operationId"]: (path, operation) for path, _, operation in operations(spec)}
    linked = set()
    for path, method, operation in operations(spec):
        for status, answer in operation["responses"].items():
            for link in resolve(spec, answer).get("links", {}).values():
                _, target = by_id[link["operationId"]]
                path_parameters = {p["name"] for p in target.get("parameters", []) if p["in"] == "path"}
                assert set(link["parameters"]) == path_parameters, (path, link)
                source = "id" if method == "post" and path != "/users" else "username"
                assert set(link["parameters"].values()) == {f"$response.body#/{source}"}, (path, link)
                linked.add((path, status, link["operationId"]))
    submissions = {"createExport", "createImport", "createTask", "createEcg", "createDataImport", "createDataExport",
                   "createJob"}
    for operation_id in submissions:
        path, _ = by_id[operation_id]
        assert {(path, "201", target) for target in ("getJob", "cancelJob", "getJobResult")} <= linked
    assert ("/users", "201", "deleteUser") in linked


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("GET", "/auth/token", "POST"),
    ("PUT", "/auth/token", "POST"),
    ("TRACE", "/docs", "GET,HEAD"),
    ("POST", "/docs", "GET,HEAD"),
    ("DELETE", "/openapi.json", "GET,HEAD"),
    ("PATCH", "/docs/static/swagger-ui.css", "GET,HEAD"),
])
async def test_the_gateways_own_routes_refuse_other_methods(gateway: TestClient, method: str, path: str,
                                                            allowed: str) -> None:
    """A 405 naming what the route allows, as on every relayed route: not a 404 from a receptionist
    that was asked about a path it does not serve."""
    resp = await gateway.request(method, path)
    assert resp.status == 405
    assert set(resp.headers["Allow"].split(",")) == set(allowed.split(","))
    assert resp.content_type == "application/json"
    assert set(await resp.json()) == {"error", "details"}


def test_the_export_body_is_book_id_and_type(spec: dict[str, Any]) -> None:
    schema = resolve(spec, spec["paths"]["/exports"]["post"]["requestBody"]["content"]["application/json"]["schema"])
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"bookId", "type"}
    assert schema["properties"]["bookId"]["type"] == "string"
    assert schema["properties"]["type"]["enum"] == ["epub", "pdf"]


@pytest.mark.parametrize(("path", "method", "status", "model"), [
    ("/exports", "post", "201", api.BookJob),
    ("/exports", "post", "200", api.BookJob),
    ("/imports", "get", "200", api.BookJobsByState),
    ("/tasks", "post", "201", api.TaskView),
    ("/ecgs", "post", "201", api.EcgOut),
    ("/ecgs", "get", "200", api.EcgList),
    ("/ecgs/{job_id}", "get", "200", api.EcgOut),
    ("/v1/imports", "post", "201", api.DataImportOut),
    ("/v1/imports", "get", "200", api.DataImportList),
    ("/v1/exports/jobs", "get", "200", api.DataExportList),
    ("/logs", "get", "200", api.LogList),
    ("/jobs", "get", "200", api.JobList),
    ("/jobs/{job_id}", "get", "200", api.JobOut),
    ("/tasks", "get", "200", api.TaskList),
    ("/tasks/{task_id}", "get", "200", api.TaskView),
    ("/dead", "get", "200", api.DeadLetterList),
    ("/instances", "get", "200", api.InstancePage),
    ("/dead/requeue", "post", "200", api.RequeueAnswer),
    ("/dead/discard", "post", "200", api.DiscardAnswer),
    ("/queues/{name}/pause", "post", "200", api.QueueStats),
    ("/users", "get", "200", api.UserPage),
    ("/users", "post", "201", api.User),
    ("/auth/token", "post", "200", api.TokenAnswer),
    ("/v1/exports", "post", "201", api.DataExportOut),
    ("/v1/exports/{job_id}", "get", "200", api.DataExportOut),
])
def test_answers_are_the_models_in_serialization_mode(spec: dict[str, Any], path: str, method: str, status: str,
                                                       model: type[BaseModel]) -> None:
    answer = resolve(spec, spec["paths"][path][method]["responses"][status])
    assert resolve(spec, answer["content"]["application/json"]["schema"]) == model_schema(model, "serialization")


def test_every_error_is_an_error_body_and_relayed_routes_may_be_rate_limited(spec: dict[str, Any]) -> None:
    assert resolve(spec, {"$ref": REF.format(model="ErrorBody")}) == model_schema(ErrorBody, "serialization")
    for path, method, operation in operations(spec):
        responses = operation["responses"]
        for status, answer in responses.items():
            answer = resolve(spec, answer)
            assert "X-Request-ID" in answer["headers"], (path, method, status)
            if int(status) >= 400 and path != "/health":
                schema = answer["content"]["application/json"]["schema"]
                assert schema == {"$ref": REF.format(model="ErrorBody")}, (path, method, status)
        if path not in OWN_ROUTES:
            assert "429" in responses, (path, method)
            assert {"401", "403"} <= set(responses) or path == "/auth/token", (path, method)
    too_many = spec["components"]["responses"]["TooManyRequests"]["headers"]
    assert {"Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= set(too_many)
    assert resolve(spec, too_many["Retry-After"])["required"] is True
    # Every error may carry the rate-limit headers (a refused token is counted too); a 401 always
    # says which scheme it wants.
    for name, error in spec["components"]["responses"].items():
        assert {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= set(error["headers"]), name
    unauthorized = spec["components"]["responses"]["Unauthorized"]["headers"]
    assert resolve(spec, unauthorized["WWW-Authenticate"])["required"] is True


@pytest.mark.parametrize("path", ["/events", "/jobs/{job_id}/events"])
def test_event_streams_are_text_event_stream(spec: dict[str, Any], path: str) -> None:
    operation = spec["paths"][path]["get"]
    assert operation["tags"] == ["events"]
    event = operation["responses"]["200"]["content"]["text/event-stream"]["schema"]
    assert set(event["required"]) == {"id", "event", "data"}
    assert event["properties"]["event"]["enum"] == [str(topic) for topic in api.EventTopic]
    parameters = {p["name"]: p for p in operation["parameters"]}
    assert parameters["Last-Event-ID"]["in"] == "header"
    assert parameters["topic"]["schema"]["items"]["enum"] == [str(topic) for topic in api.EventTopic]


def test_the_documented_status_codes(spec: dict[str, Any]) -> None:
    def codes(path: str, method: str) -> set[str]:
        return set(spec["paths"][path][method]["responses"])

    assert {"200", "201", "400", "401", "403", "409", "413", "415", "429", "503"} <= codes("/exports", "post")
    assert {"200", "202", "404", "409"} <= codes("/jobs/{job_id}", "delete")
    assert {"200", "404", "410"} <= codes("/jobs/{job_id}/result", "get")
    assert {"201", "400", "409"} <= codes("/users", "post")
    assert {"204", "404"} <= codes("/users/{username}", "delete")
    assert {"200", "400", "401"} <= codes("/auth/token", "post")
    assert {"200", "503"} <= codes("/health", "get")
    result = spec["paths"]["/jobs/{job_id}/result"]["get"]["responses"]["200"]["content"]
    assert {"application/octet-stream", "application/epub+zip", "application/pdf", "application/json"} <= set(result)
    assert result["application/pdf"]["schema"] == {"type": "string", "format": "binary"}
    key = next(p for p in spec["paths"]["/exports"]["post"]["parameters"] if p["name"] == "Idempotency-Key")
    assert key["in"] == "header" and key["schema"] == {"type": "string", "minLength": 1, "maxLength": 200}
    limit = next(p for p in spec["paths"]["/jobs"]["get"]["parameters"] if p["name"] == "limit")
    assert limit["schema"] == {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}


def test_swagger_ui_is_version_5_and_every_listed_file_exists() -> None:
    folder = static_dir()
    for name in STATIC_FILES:
        assert (folder / name).is_file(), name
    # Swagger UI renders OpenAPI 3.1 from version 5 on.
    version = re.search(rb'PACKAGE_VERSION:"(\d+)\.', (folder / "swagger-ui-bundle.js").read_bytes())
    assert version is not None and int(version[1]) >= 5


# The gateway, serving.

def base_url(server: Any) -> str:
    return f"http://{server.host}:{server.port}"


@pytest.fixture
async def gateway(aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path) -> TestClient:
    from receptionist.app import create_app as create_receptionist
    from receptionist.settings import Settings as ReceptionistSettings
    from registry.app import create_app as create_registry
    from registry.settings import Settings as RegistrySettings
    from scheduler.app import create_app as create_scheduler
    from scheduler.settings import Settings as SchedulerSettings

    registry = await aiohttp_server(create_registry(RegistrySettings(store_url="memory://", service_token=TOKEN)))
    scheduler = await aiohttp_server(create_scheduler(SchedulerSettings(store_url="memory://", service_token=TOKEN)))
    receptionist = await aiohttp_server(create_receptionist(ReceptionistSettings(
        registry_url=base_url(registry), scheduler_url=base_url(scheduler),
        artifacts_dir=str(tmp_path / "artifacts"), service_token=TOKEN)))
    return await aiohttp_client(create_app(Settings(receptionists=[base_url(receptionist)],
                                                    registry_url=base_url(registry), service_token=TOKEN)))


async def test_the_gateway_serves_the_document(gateway: TestClient, spec: dict[str, Any]) -> None:
    resp = await gateway.get("/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert resp.headers["X-Request-ID"]
    assert await resp.json() == orjson.loads(orjson.dumps(spec))


async def test_the_docs_page_loads_only_local_files(gateway: TestClient) -> None:
    resp = await gateway.get("/docs")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    html = await resp.text()
    assert 'src="/docs/static/swagger-ui-bundle.js"' in html
    assert 'src="/docs/static/swagger-ui-standalone-preset.js"' in html
    assert 'href="/docs/static/swagger-ui.css"' in html
    assert '"/openapi.json"' in html
    assert "validatorUrl: null" in html  # else Swagger UI asks an outside validator about the document
    assert not re.findall(r"(?:https?:)?//[a-z0-9.-]+", html, flags=re.IGNORECASE)
    for src in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert src.startswith("/docs/static/") and src.removeprefix("/docs/static/") in STATIC_FILES
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "http" not in csp


@pytest.mark.parametrize("name", list(STATIC_FILES))
async def test_swagger_ui_files_are_served(gateway: TestClient, name: str) -> None:
    resp = await gateway.get(f"/docs/static/{name}")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == STATIC_FILES[name]
    assert await resp.read() == (static_dir() / name).read_bytes()


async def test_the_bundle_is_javascript(gateway: TestClient) -> None:
    resp = await gateway.get("/docs/static/swagger-ui-bundle.js")
    assert resp.status == 200
    assert resp.content_type == "text/javascript"
    assert b"SwaggerUIBundle" in await resp.read()


@pytest.mark.parametrize("path", [
    "/docs/static/unknown.js",
    "/docs/static/LICENSE",  # in the folder, not on the list
    "/docs/static/swagger-editor-bundle.js",
    "/docs/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/docs/static/..%2Fcore.py",
    "/docs/static/%2Fetc%2Fpasswd",
    # Dot segments sent as they are: not a name under /docs/static/, so the gateway relays it.
    "/docs/static/../../etc/passwd",
    "/docs/static/../../../../etc/passwd",
])
async def test_nothing_else_is_served(gateway: TestClient, path: str) -> None:
    async with gateway.session.get(URL(str(gateway.make_url("/")) + path.lstrip("/"), encoded=True)) as resp:
        assert resp.status == 404
        assert resp.content_type == "application/json"
        body = await resp.json()
    assert set(body) == {"error", "details"}
    assert "root:" not in str(body)


async def test_other_paths_are_still_relayed(gateway: TestClient) -> None:
    resp = await gateway.post("/exports", json={"bookId": "book-1", "type": "epub"})
    assert resp.status == 201, await resp.text()
    job = await resp.json()
    assert set(job) <= set(api.BookJob.model_fields)
    resp = await gateway.get("/docs/other")
    assert resp.status == 404
