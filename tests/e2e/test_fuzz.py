"""Schemathesis against a live stack, as its command line runs it (``st run --checks all``): every check it
has, in every phase (the document's examples, the coverage of each parameter's edges, random valid and
invalid requests, and the stateful phase that follows the document's links from a submission to its
job), sent to the real gateway in front of the real services. Once as an anonymous client and once
logged in, with 0 server errors and 0 answers the document does not describe.

What schemathesis reports that is right by design is written down below, one check for the operations it
concerns, with the reason (:data:`BY_DESIGN`). Nothing else is left out.

Random ids rarely name a job, so a last test walks a job's life with real ones (submitted, replayed,
listed, finished, its result, dead letters and their redrive, users and tokens) and checks each answer
against the document too."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import schemathesis
from schemathesis import engine
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events

from gateway.openapi import build_spec
from shared.contract import JobState
from shared.scheduling import MAX_DELAY_S
from tests.e2e.conftest import _free_port_base

ADMIN_PASSWORD = secrets.token_urlsafe(16)
UP_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 60.0
#: Cases per operation and phase: with a fixed seed and derandomized, each run sends the same requests.
MAX_EXAMPLES = 8
#: The identities the test logs in as; the fuzzer, an admin on admin routes, never deletes them, changes
#: their passwords or their roles (see :func:`keep_our_accounts`): each would revoke their tokens.
USER, OPERATOR = "fuzz-user", "fuzz-operator"
OUR_ACCOUNTS = frozenset({"admin", USER, OPERATOR})

#: ``(check, operations, why)``: what schemathesis would report that is right by design.
BY_DESIGN: list[tuple[str, list[str], str]] = [
    ("positive_data_acceptance", ["listExports", "listImports", "listJobs", "listTasks", "listEcgs",
                                  "listDataImports", "listDataExports", "getJobLogs", "queryLogs",
                                  "listDeadLetters", "listInstances", "listUsers", "listSchedules", "listQueues"],
     # A schema cannot say which strings the server handed out.
     "a cursor is opaque: only one from an earlier page (`next_cursor`) is valid, any other string is a "
     "400 naming `cursor`"),
    ("positive_data_acceptance", ["listJobs"],
     "`owner` is an operators' filter: a user who sends it is told so (a 400 naming it) rather than "
     "silently shown their own jobs; which role calls is no part of a parameter's schema"),
    ("positive_data_acceptance", ["getJobLogs", "queryLogs"],
     "`since` after `until` is a 400 naming `since`: a rule between two parameters, which a schema "
     "cannot say"),
    ("positive_data_acceptance", ["createEcg"],
     "the ECG sample rule: a lead's `number_of_samples`, when given, must equal its signal's length (400 "
     "naming `leads.N.number_of_samples`); JSON Schema cannot compare a number with an array's length"),
    ("positive_data_acceptance", ["streamDataExport"],
     "a filter of another resource (`status` on users) and a column the resource lacks are a 400: which "
     "parameters are valid depends on `resource`, which OpenAPI parameters cannot say"),
    ("positive_data_acceptance", ["createDataExport"],
     "`fields` and `filters` must be the columns and filters of `resource` (a 400 naming them otherwise)"),
    ("positive_data_acceptance", ["createExport", "createImport", "createTask", "createEcg", "createDataExport",
                                  "createDataImport", "createJob"],
     "the scheduling fields of a submission: `priority` is an integer and `2.0` is none here (strict types, "
     "a 400 naming it), while the fuzzer sends whole floats for integers, which JSON Schema counts as such; "
     "`run_at` may be at most a year ahead, a bound that moves with the clock; and on `POST /v1/imports`, "
     "`run_at` with `delay_s` is a 400, a rule between two query parameters (a JSON body's schema says it)"),
    ("positive_data_acceptance", ["createSchedule"],
     "a schedule's `cron` is read by a cron parser (five fields, each in its range) and its `timezone` must "
     "name a zone of the IANA database: more than a schema's pattern can say, so a string outside them is a "
     "400 naming the field"),
    ("negative_data_rejection", ["createImport", "createDataImport"],
     "an import's `url` is any http(s) URL with a host that a URL parser reads (one with spaces or "
     "non-ASCII letters too, which it encodes): more than a pattern can say exactly, so the document's "
     "pattern is its plain part, and a URL just outside it may well be accepted"),
    ("ensure_resource_availability", ["getDataImportErrors", "getJobResult"],
     "a result or an error report is made when the job finishes: until then there is none, a 404 that says "
     "the job's state (the job itself is there, at `GET /v1/imports/{id}` and `GET /jobs/{id}`)"),
    ("use_after_free", ["getJob", "getJobResult", "getJobLogs", "streamJobEvents"],
     "DELETE /jobs/{id} cancels the job, it does not remove it: the job is still there, cancelled (or "
     "cancel requested while it runs), and its logs, events and state stay readable"),
]
#: ``(check, operations, finding)``: defects another change of issue 8 fixes, excluded until it lands.
#: The document as schemathesis reads it, for the walk's own checks of each answer.
DOCUMENT = schemathesis.openapi.from_dict(orjson.loads(orjson.dumps(build_spec())))


class Launcher:
    """``conveyor up`` in a subprocess; its output is kept (and shown when it fails)."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        self.port_base = _free_port_base()
        self.output: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "up", "--data-dir", str(data_dir), "--port-base", str(self.port_base),
             *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "CONVEYOR_ADMIN_PASSWORD": ADMIN_PASSWORD})
        self.up = threading.Event()
        # A thread reads the pipe to the end, so the launcher never blocks on its own output.
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port_base}"

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            if "Conveyor is up" in line:
                self.up.set()

    def wait_up(self) -> None:
        deadline = time.monotonic() + UP_TIMEOUT_S
        while not self.up.wait(0.1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("the stack did not come up:\n" + "".join(self.output)[-3000:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.reader.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A whole stack, shared by every test: jobs done at once, and a rate limit so generous that the
    fuzzer (one busy client) never meets it, yet every answer carries the ``RateLimit-*`` headers."""
    stack = Launcher(tmp_path_factory.mktemp("fuzz"), "--handlers", "1", "--time-scale", "0", "--rate-limit", "10000",
                     "--rate-burst", "1000000")
    stack.wait_up()
    yield stack.url
    stack.stop()
    assert stack.process.returncode == 0, "".join(stack.output)[-3000:]


@pytest.fixture(scope="module")
def http(gateway_url: str) -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def token(http: requests.Session, base_url: str, username: str, password: str) -> str:
    resp = http.post(f"{base_url}/auth/token", json={"username": username, "password": password}, timeout=10)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["access_token"])


@pytest.fixture(scope="module")
def tokens(gateway_url: str, http: requests.Session) -> dict[str, str]:
    """Bearer tokens by role: the first admin's, an operator's, and a user's who may export and import data."""
    admin = token(http, gateway_url, "admin", ADMIN_PASSWORD)
    out = {"admin": admin}
    for name, role, permissions in ((OPERATOR, "operator", []), (USER, "user", ["exporter", "importer"])):
        password = secrets.token_urlsafe(16)
        resp = http.post(f"{gateway_url}/users", json={"username": name, "password": password, "roles": [role],
                                                       "permissions": permissions},
                         headers={"Authorization": f"Bearer {admin}"}, timeout=10)
        assert resp.status_code == 201, resp.text
        out[role] = token(http, gateway_url, name, password)
    return out


@pytest.fixture(scope="module")
def bearer(tokens: dict[str, str]) -> dict[str, dict[str, str]]:
    """``Authorization`` headers by tag: operator routes are called as an operator, admin routes as the
    first admin (so they get past the role check)."""
    return {"admin": {"Authorization": f"Bearer {tokens['admin']}"},
            "operators": {"Authorization": f"Bearer {tokens['operator']}"}}


def test_the_live_gateway_serves_this_document(gateway_url: str, http: requests.Session) -> None:
    resp = http.get(f"{gateway_url}/openapi.json", timeout=10)
    assert resp.status_code == 200
    assert resp.json() == orjson.loads(orjson.dumps(build_spec()))


def run_config(gateway_url: str, bearer: dict[str, dict[str, str]], user_token: str | None) -> SchemathesisConfig:
    """What ``st run --checks all`` would read from a ``schemathesis.toml``: every check and every phase,
    bounded and derandomized (the same requests every run, so CI never fails by the luck of the draw)."""
    operations: list[dict[str, Any]] = [
        # GET /events lasts until its client goes away (keep-alives keep it from ever timing out), so a
        # case would take its whole timeout. The stateful phase reads each submitted job's own stream,
        # which ends with the job (a far-off run_at is brought near: see the before_call hook).
        # GET /logs/stream, the same: it follows new log lines until its client goes away.
        {"include-operation-id": ["streamEvents", "streamLogs"], "enabled": False},
        *({"include-operation-id": operation_ids, "checks": {check: {"enabled": False}}}
          for check, operation_ids, _ in BY_DESIGN),
    ]
    auth: dict[str, Any] = {"auto-signup": False}  # its sign-up guess does not fit POST /users (admins only)
    if user_token is not None:
        auth["openapi"] = {"bearerAuth": {"bearer": user_token}}
        # Operator and admin routes as an operator and an admin, so that they get past the role check.
        operations += [{"include-tag": tag, "headers": headers} for tag, headers in bearer.items()]
    return SchemathesisConfig.from_dict({
        "base-url": gateway_url,
        "seed": 8,  # the stateful phase's order of rules
        # One worker: with two, their threads both run ``ast.parse`` now and then (hypothesis describing
        # a filter, pytest rewriting a module on first import) and trip a race in CPython 3.11's
        # ("AST constructor recursion depth mismatch").
        "workers": 1,
        "request-timeout": 30,
        "max-stream-events": 10,
        "checks": {"enabled": True},
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}, "fuzzing": {"enabled": True},
                   "stateful": {"enabled": True}},
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True},
        "auth": auth,
        "operations": operations,
    })


def keep_our_accounts(context: schemathesis.HookContext, case: schemathesis.Case) -> bool:
    """Admin routes are fuzzed as an admin; the test's own accounts are not theirs to delete."""
    if case.operation.definition.raw.get("operationId") in {"deleteUser", "changePassword", "changeRoles"}:
        return (case.path_parameters or {}).get("username") not in OUR_ACCOUNTS
    return True


#: The operations that submit a job, and how long the fuzzer's jobs may wait for their ``run_at``: a later
#: phase reads the event stream of a job an earlier one submitted until the job ends, so a job the fuzzer
#: delayed by a day (valid: up to a year) would hold the run that long. A time or delay it draws further
#: out is brought to this before the call, which is just as valid; anything invalid is sent as drawn.
SUBMISSIONS = frozenset({"createExport", "createImport", "createTask", "createEcg", "createDataExport",
                         "createDataImport", "createJob"})
FUZZ_DELAY_S = 1.0


def _soon(values: dict[str, Any]) -> dict[str, Any]:
    """A submission's valid ``delay_s`` or ``run_at`` at most :data:`FUZZ_DELAY_S` ahead (see there)."""
    values = dict(values)
    delay = values.get("delay_s")
    with contextlib.suppress(TypeError, ValueError):
        if not isinstance(delay, bool) and FUZZ_DELAY_S < float(delay) <= MAX_DELAY_S:
            values["delay_s"] = FUZZ_DELAY_S if not isinstance(delay, str) else str(FUZZ_DELAY_S)
    run_at = values.get("run_at")
    with contextlib.suppress(TypeError, ValueError):
        when, now = datetime.fromisoformat(run_at), datetime.now(timezone.utc)
        if when.tzinfo is not None and now + timedelta(seconds=FUZZ_DELAY_S) < when <= now + timedelta(days=364):
            values["run_at"] = (now + timedelta(seconds=FUZZ_DELAY_S)).isoformat()
    return values


def soon(context: schemathesis.HookContext, case: schemathesis.Case, kwargs: dict[str, Any]) -> None:
    """``before_call`` (every phase's cases, the coverage phase's too): :func:`_soon` on a submission."""
    if case.operation.definition.raw.get("operationId") in SUBMISSIONS:
        if isinstance(case.body, dict):
            case.body = _soon(case.body)
        if isinstance(case.query, dict):
            case.query = _soon(case.query)


def failures(stream: Any, phases: dict[str, int]) -> list[str]:
    """Every check that failed in a run of the engine, with the request that made it fail and the answer,
    and every error that stopped a case. ``phases`` counts the cases each phase ran."""
    found: list[str] = []
    for event in stream:
        if isinstance(event, events.ScenarioFinished):
            phases[event.phase.value] = phases.get(event.phase.value, 0) + len(event.recorder.cases)
            for case_id, nodes in event.recorder.checks.items():
                for node in nodes:
                    if node.failure_info is None:
                        continue
                    failure = node.failure_info.failure
                    interaction = event.recorder.interactions.get(case_id)
                    answer = interaction.response if interaction is not None else None
                    got = f"-> {answer.status_code} {answer.content[:300]!r}" if answer is not None else ""
                    found.append(f"[{event.phase.value}] {failure.operation or event.recorder.label} "
                                 f"{node.name}: {failure.title}\n{failure.message}\n"
                                 f"{node.failure_info.code_sample[:1000]}\n{got}")
        elif isinstance(event, events.NonFatalError):
            found.append(f"error in {event.label}: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            found.append(f"fatal: {event.exception!r}")
        elif isinstance(event, events.EngineFinished):
            found += [str(failure) for failure in event.failures]
    return found


@pytest.mark.parametrize("caller", ["anonymous", "user"])
# About 20 s a run on a quiet machine (the coverage phase, which max_examples does not bound, is most of
# it); the timeout is there to stop a hang, not to time it, and a busy CI machine can take thrice that.
@pytest.mark.timeout(300)
def test_schemathesis_finds_nothing(caller: str, gateway_url: str, tokens: dict[str, str],
                                    bearer: dict[str, dict[str, str]]) -> None:
    config = run_config(gateway_url, bearer, tokens["user"] if caller == "user" else None)
    schema = schemathesis.openapi.from_dict(orjson.loads(orjson.dumps(build_spec())), config=config)
    schema.hook("filter_case")(keep_our_accounts)
    assert schema.statistic.transitions.total > 0, "the document has no links for the stateful phase to follow"
    phases: dict[str, int] = {}
    schemathesis.hook("before_call")(soon)  # a global hook: taken off again below
    try:
        found = failures(engine.from_schema(schema).execute(), phases)
    finally:
        schemathesis.hooks.unregister(soon)
    # A phase that sent nothing would pass for want of trying. (The document has no examples: that
    # phase has nothing to send.)
    assert all(phases.get(phase, 0) > 0 for phase in ("coverage", "fuzzing", "stateful")), phases
    assert not found, f"{len(found)} failures:\n\n" + "\n\n".join(dict.fromkeys(found))


class Client:
    """Calls the live gateway and checks each answer: the expected status, documented for the
    operation, and a body, content type and headers that match the document."""

    def __init__(self, base_url: str, http: requests.Session) -> None:
        self.base_url = base_url
        self.http = http

    def call(self, method: str, template: str, status: int | set[int], headers: dict[str, str] | None = None,
             **kwargs: object) -> requests.Response:
        path = template.format(**kwargs.pop("path_args", {}))  # type: ignore[arg-type]
        resp = self.http.request(method, self.base_url + path, headers=headers, timeout=10, **kwargs)  # type: ignore[arg-type]
        expected = status if isinstance(status, set) else {status}
        assert resp.status_code in expected, f"{method} {path}: {resp.status_code} {resp.text[:500]}"
        operation = DOCUMENT[template][method]
        assert str(resp.status_code) in operation.definition.raw["responses"], (
            f"{method} {template} {resp.status_code} is undocumented")
        operation.validate_response(resp)
        return resp

    def until(self, what: str, method: str, template: str, done: Callable[[dict[str, Any]], bool],
              headers: dict[str, str] | None = None, timeout_s: float = 30.0, **kwargs: object) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            body: dict[str, Any] = self.call(method, template, 200, headers, **kwargs).json()
            if done(body):
                return body
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {body}"
            time.sleep(0.05)


def test_a_jobs_life_matches_the_document(gateway_url: str, http: requests.Session,
                                          bearer: dict[str, dict[str, str]]) -> None:
    api = Client(gateway_url, http)
    key = {"Idempotency-Key": secrets.token_hex(8)}
    export = api.call("POST", "/exports", 201, key, json={"bookId": "tour", "type": "pdf"}).json()
    assert api.call("POST", "/exports", 200, key, json={"bookId": "tour", "type": "pdf"}).json()["id"] == export["id"]
    api.call("POST", "/exports", 409, key, json={"bookId": "other", "type": "pdf"})
    api.call("POST", "/imports", 201, json={"bookId": "tour", "type": "word", "url": "https://example.org/b.docx"})
    job = {"path_args": {"job_id": export["id"]}}
    api.until("the export to finish", "GET", "/jobs/{job_id}", lambda j: j["state"] == "finished", **job)
    # The grouped list, a job a page, newest first: the schedules the fuzzer made may have fired newer
    # exports of this owner since, so the export is on the first page or a later one, under "finished".
    params: dict[str, Any] = {"limit": 1}
    for _ in range(1000):
        grouped = api.call("GET", "/exports", 200, params=params).json()
        page = [j["id"] for state in JobState for j in grouped[str(state)]]
        assert len(page) <= 1, grouped
        if export["id"] in page:
            assert [j["id"] for j in grouped["finished"]] == [export["id"]]
            break
        assert grouped["next_cursor"], f"the export {export['id']} is on no page"
        params = {"limit": 1, "cursor": grouped["next_cursor"]}
    else:
        raise AssertionError(f"the export {export['id']} is not among the owner's 1,000 newest")
    result = api.call("GET", "/jobs/{job_id}/result", 200, **job)
    assert result.headers["Content-Type"] == "application/pdf" and result.content.startswith(b"%PDF")
    api.call("DELETE", "/jobs/{job_id}", 409, **job)
    api.call("GET", "/jobs", 200, params={"kind": "export", "state": "finished"})
    events = api.call("GET", "/jobs/{job_id}/events", 200, params={"topic": "job.updated"}, **job)
    assert events.headers["Content-Type"] == "text/event-stream"
    assert events.text.count("event: job.updated\n") >= 3 and '"state":"finished"' in events.text

    failing = {"description": "fails every time", "duration_s": 0, "fail_probability": 1}
    task = api.call("POST", "/tasks", 201, json=failing).json()
    api.until("the task to fail for good", "GET", "/jobs/{job_id}", lambda j: j["state"] == "failed",
              path_args={"job_id": task["id"]})
    failed = api.call("GET", "/tasks/{task_id}", 200, path_args={"task_id": task["id"]}).json()
    assert failed["status"] == "FAILED" and failed["attempt"] == 3
    assert task["id"] in {t["id"] for t in api.call("GET", "/tasks", 200).json()["items"]}
    api.call("GET", "/jobs/{job_id}/result", 404, path_args={"job_id": task["id"]})
    operator = bearer["operators"]
    api.call("GET", "/dead", 401)  # no credentials: log in first
    api.until("the task's dead letter", "GET", "/dead", lambda d: task["id"] in {i["job_id"] for i in d["items"]},
              operator, params={"queue": "task"})
    redrive = api.call("POST", "/dead/requeue", 200, operator, json={"job_ids": [task["id"]]}).json()
    assert redrive["requeued"] == [task["id"]]
    # A queue name the scheduler refuses is the client's mistake (or simply no such queue), not a 5xx.
    api.call("GET", "/dead", {200, 400}, operator, params={"queue": "no such queue"})
    api.call("POST", "/dead/requeue", {400}, operator, json={"all": True, "queue": "no such queue"})
    api.call("POST", "/dead/discard", 404, operator, json={"all": True, "queue": "no-such-queue"})
    api.call("POST", "/dead/requeue", 404, operator, json={"all": True, "queue": "no-such-queue"})
    paused = api.call("POST", "/queues/{name}/pause", 200, operator, path_args={"name": "export"}).json()
    assert paused["paused"] is True
    assert api.call("POST", "/queues/{name}/resume", 200, operator, path_args={"name": "export"}).json()["paused"] is False
    api.call("POST", "/queues/{name}/pause", 404, operator, path_args={"name": "no-such-queue"})
    everyone = api.call("GET", "/jobs", 200, operator, params={"kind": "task"}).json()
    assert task["id"] in {j["id"] for j in everyone["items"]}

    admin = bearer["admin"]
    api.call("GET", "/users", 403, operator)
    api.call("POST", "/users", 201, admin, json={"username": "tour-user", "password": "tour-password-1"})
    api.call("POST", "/users", 409, admin, json={"username": "tour-user", "password": "tour-password-1"})
    api.call("PUT", "/users/{username}/password", 204, admin, json={"password": "tour-password-2"},
             path_args={"username": "tour-user"})
    api.call("POST", "/auth/token", 401, json={"username": "tour-user", "password": "tour-password-1"})
    user = {"Authorization": f"Bearer {api.call('POST', '/auth/token', 200, json={'username': 'tour-user', 'password': 'tour-password-2'}).json()['access_token']}"}
    api.call("GET", "/jobs/{job_id}", 404, user, **job)  # another user's job
    names = {u["username"] for u in api.call("GET", "/users", 200, admin).json()["items"]}
    assert {"admin", "fuzz-operator", "tour-user"} <= names
    api.call("DELETE", "/users/{username}", 204, admin, path_args={"username": "tour-user"})
    api.call("DELETE", "/users/{username}", 404, admin, path_args={"username": "tour-user"})
    api.call("GET", "/jobs", 401, {"Authorization": "Bearer not-a-token"})
