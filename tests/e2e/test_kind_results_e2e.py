"""A kind of one's own whose model fails oddly, or that returns what cannot be stored, or fails oddly, in a live stack (``conveyor up``
with the kind's module in ``CONVEYOR_KINDS``): each such job ends, failed, with an error saying why, and
the jobs whose reports shared a request with it finish as they should. Before, the registry refused the
handler's whole batch of reports, and every job in it was handed back and run again, in a loop, for good.
On a registry on PostgreSQL too, where a NUL in a result or an error made the registry fail.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_plugin_kinds_e2e import until

KIND_MODULE = '''
import asyncio
import sys
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from shared.kinds import JobContext, RetryPolicy, kind


class Returns(BaseModel):
    model_config = ConfigDict(extra="forbid")
    what: str


RESULTS = {
    "ok": {"ok": True},
    "nothing": None,
    "a set": {"tags": {"a", "b"}},
    "nan": {"scores": [1.0, float("nan")]},
    "a big int": {"n": 2 ** 70},
    "a list": [1, 2],
    "bytes": {"raw": b"abc"},
    "an int key": {"x": {1: "one"}},
    "too much": {"text": "a" * 100_000},
    "a NUL": {"name": "a\\x00b"},
    "another's file": {"artifact": "export/a4/01a23dd4-e99c-7aa7-947a-aae6d824a8a4-1-b1.pdf"},
    "a number for a file": {"artifact": 5},
}


@kind("probe.returns", payload=Returns, retries=RetryPolicy(max_attempts=3, backoff_base_s=0.1, backoff_cap_s=0.1))
async def returns(ctx: JobContext) -> Any:
    return RESULTS[ctx.job.payload["what"]]


class Picky(BaseModel):
    size: int

    @field_validator("size")
    @classmethod
    def known(cls, value: int) -> int:
        {1: "small", 9: "large"}[value]  # a KeyError for any other size, which pydantic does not catch
        return value


@kind("probe.picky", payload=Picky)
async def picky(ctx: JobContext) -> Any:
    return {"ok": True}


@kind("probe.fails", payload=Returns, retries=RetryPolicy(max_attempts=1))
async def fails(ctx: JobContext) -> Any:
    what = ctx.job.payload["what"]
    if what == "exit":
        sys.exit(3)
    if what == "interrupt":
        raise KeyboardInterrupt
    if what == "nul":
        raise ValueError("bad byte \\x00 at 3")
    if what == "cancelled":  # a future it awaits was cancelled, by someone else
        future = asyncio.get_running_loop().create_future()
        future.cancel()
        await future
    raise RuntimeError("x" * 50_000)
'''

#: What each bad result's job fails with.
REFUSED = {
    "a set": "BadResult: result.tags: set is not a JSON type",
    "nan": "BadResult: result.scores.1: nan is not a JSON number",
    "a big int": "BadResult: result.n: the integer is beyond 64 bits",
    "a list": "BadResult: result: must be a JSON object (a dict) or None, not list",
    "bytes": "BadResult: result.raw: bytes is not a JSON type",
    "an int key": "BadResult: result.x: the key 1 is not a string",
    "too much": ("BadResult: result: 100,011 bytes as JSON, more than the 65,536 a result may hold; write a "
                 "large output as an artifact (ctx.write_artifact)"),
    # PostgreSQL's jsonb cannot hold one: the registry failed there, and the handler took it for an outage.
    "a NUL": "BadResult: result.name: must not contain a NUL character (U+0000)",
    # GET /jobs/{id}/result served another job's file, or answered 500.
    "another's file": ("BadResult: result.artifact: 'export/a4/01a23dd4-e99c-7aa7-947a-aae6d824a8a4-1-b1.pdf' is "
                       "no file this attempt wrote; give what ctx.write_artifact returns, or ctx.new_artifact's key"),
    "a number for a file": ("BadResult: result.artifact: 5 is no file this attempt wrote; give what "
                            "ctx.write_artifact returns, or ctx.new_artifact's key"),
}


@pytest.mark.parametrize("registry", ["sqlite", "postgres"])
async def test_results_that_cannot_be_stored_fail_their_job_and_no_other(
        registry: str, start_stack: Any, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "probe_kinds.py").write_text(KIND_MODULE)
    store = {"REGISTRY_STORE_URL": request.getfixturevalue("postgres_url")} if registry == "postgres" else {}
    stack = await start_stack("--handlers", "1", "--rate-limit", "0", env={
        **store, "CONVEYOR_KINDS": "probe_kinds",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))})

    # A validator of a kind's model that raises what pydantic does not catch: a 400 naming the payload, where
    # it was a 500 for the client's input.
    refused = [{"field": "payload", "message": "its kind's model could not validate it (KeyError: 5)"}]
    for path, extra in (("/jobs", {}), ("/schedules", {"cron": "* * * * *"})):
        status, body, _ = await stack.request("POST", path, json={"kind": "probe.picky", "payload": {"size": 5}, **extra})
        assert (status, body["details"]) == (400, refused), body
    status, body, _ = await stack.request("POST", "/jobs", json={"kind": "probe.picky", "payload": {"size": 9}})
    assert status == 201, body

    async def submit(kind: str, what: str) -> str:
        status, body, _ = await stack.request("POST", "/jobs", json={"kind": kind, "payload": {"what": what}})
        assert status == 201, body
        return str(body["id"])

    # Submitted together, so that their reports travel in the same requests to the registry.
    good = ["ok", "nothing"] * 3
    ids = await asyncio.gather(*(submit("probe.returns", what) for what in [*REFUSED, *good]))
    for what, job_id in zip([*REFUSED, *good], ids, strict=True):
        if what in REFUSED:
            failed = await until(stack, {}, job_id, "failed")
            # Not retried: the same code returns the same result.
            assert (failed["attempt"], failed["error"], failed["result"]) == (1, REFUSED[what], None), what
        else:
            done = await until(stack, {}, job_id, "finished")
            assert (done["attempt"], done["result"]) == (1, {"ok": True} if what == "ok" else None), what

    # A kind that exits, or raises KeyboardInterrupt, fails its attempt; the handler carries on. So does one
    # raising a CancelledError nobody asked for, which was taken for the handler stopping: the job was handed
    # back and run again at once, in a loop.
    for what, error in (("exit", "SystemExit: 3"), ("interrupt", "KeyboardInterrupt: "),
                        ("nul", "ValueError: bad byte \\x00 at 3"),
                        ("cancelled", "CancelledError: raised by the kind's run, which nobody cancelled")):
        failed = await until(stack, {}, await submit("probe.fails", what), "failed")
        assert (failed["attempt"], failed["error"]) == (1, error)
    # An error longer than a report may carry is cut, and says so.
    failed = await until(stack, {}, await submit("probe.fails", "long"), "failed")
    assert failed["error"].startswith("RuntimeError: xxx") and len(failed["error"]) <= 10_000
    assert failed["error"].endswith(" ... (40,114 more characters cut)")
    last = await until(stack, {}, await submit("probe.returns", "ok"), "finished")
    assert last["result"] == {"ok": True}
    status, page, _ = await stack.request("GET", "/jobs", params={"state": "processing"})
    assert status == 200 and page["items"] == []
