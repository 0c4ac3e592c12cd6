"""The periodic schedules in the OpenAPI document: the body of ``POST /schedules`` is one variant per kind that
``POST /jobs`` takes, and says exactly one of ``cron`` and ``every_s``; every answer is the schedule's view,
which an operator sees without its payload."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft202012Validator

from gateway.openapi import build_spec
from shared.kinds import KINDS

EXPORT = {"kind": "export", "payload": {"bookId": "b-1", "type": "epub"}}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return build_spec()


def validator(spec: dict[str, Any], name: str) -> Draft202012Validator:
    """A validator of the component ``name``, its ``$ref`` resolved within the document's components."""
    return Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": spec["components"]})


def test_the_body_has_a_variant_per_kind_post_jobs_takes(spec: dict[str, Any]) -> None:
    body = spec["paths"]["/schedules"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ScheduleSubmission"}
    variants = spec["components"]["schemas"]["ScheduleSubmission"]["oneOf"]
    assert {v["$ref"].rsplit("ScheduleSubmission.", 1)[1] for v in variants} == {
        spec_.kind for spec_ in KINDS.specs() if not spec_.own_route_only}


@pytest.mark.parametrize(("body", "valid"), [
    ({**EXPORT, "every_s": 2}, True),
    ({**EXPORT, "cron": "*/5 * * * *", "timezone": "Europe/Paris"}, True),
    ({**EXPORT, "cron": "* * * * *", "every_s": None}, True),
    ({**EXPORT}, False),
    ({**EXPORT, "cron": "* * * * *", "every_s": 2}, False),
    ({**EXPORT, "every_s": 0.5}, False),
    ({**EXPORT, "every_s": 2, "priority": 101}, False),
    ({"kind": "task", "payload": {"description": "x"}, "every_s": 2}, True),
    ({"kind": "data_import", "payload": {"url": "https://example.com/u.csv"}, "every_s": 2}, False),
    ({"kind": "export", "payload": {"bookId": "b-1", "type": "mobi"}, "every_s": 2}, False),
])
def test_the_body_says_exactly_one_of_cron_and_every_s(spec: dict[str, Any], body: dict[str, Any],
                                                        valid: bool) -> None:
    assert validator(spec, "ScheduleSubmission").is_valid(body) is valid


def test_answers_are_the_schedule_s_view_and_a_new_one_links_to_its_routes(spec: dict[str, Any]) -> None:
    view = spec["components"]["schemas"]["ScheduleView"]
    assert {"null", "object"} == {option["type"] for option in view["properties"]["payload"]["anyOf"]}
    for path, method, status in (("/schedules", "post", "201"), ("/schedules/{schedule_id}", "get", "200"),
                                 ("/schedules/{schedule_id}/pause", "post", "200"),
                                 ("/schedules/{schedule_id}/resume", "post", "200")):
        answer = spec["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
        assert answer == {"$ref": "#/components/schemas/ScheduleView"}, (path, method)
    links = spec["paths"]["/schedules"]["post"]["responses"]["201"]["links"]
    assert set(links) == {"getSchedule", "pauseSchedule", "resumeSchedule", "deleteSchedule"}
    listed = spec["paths"]["/schedules"]["get"]["responses"]["200"]
    assert "Link" in listed["headers"]
