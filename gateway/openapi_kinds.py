"""The kinds in the OpenAPI document, from the registry of the gateway's own process (so a plugin's kinds
are there when the gateway loads them too: ``CONVEYOR_KINDS``, the ``conveyor.kinds`` entry points).

- The body of ``POST /jobs`` (``JobSubmission``) is one of a schema per kind that route takes:
  ``JobSubmission.<kind>``, ``{"kind": <its name>, "payload": <its payload model>}`` and the scheduling
  fields (:mod:`shared.scheduling`), ``run_at`` and ``delay_s`` not both.
- ``GET /jobs?kind=`` takes the name of any registered kind.

A payload model keeps its own name among the components unless another schema already has that name
with another shape (two plugins' ``Payload``): then it and its nested models are named after the kind
(``acme.resize.Payload``), so that no ``$ref`` ever points at another kind's schema. The built-in kinds'
payloads are named first, so theirs never move.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from shared.kinds import KINDS, KindRegistry, KindSpec
from shared.scheduling import Scheduling

SCHEMAS = "#/components/schemas/"
#: Where a body holds the scheduling fields: ``run_at`` and ``delay_s`` not both (both null is neither).
A_TIME_OR_A_DELAY = {"not": {"required": ["run_at", "delay_s"],
                             "properties": {"run_at": {"type": "string"}, "delay_s": {"type": "number"}}}}


def kind_names(kinds: KindRegistry = KINDS) -> list[str]:
    """Every registered kind's name, sorted."""
    return list(kinds)


def _put_payload(schemas: dict[str, Any], spec: KindSpec) -> dict[str, str]:
    """Put ``spec``'s payload model (and the models inside it) among ``schemas``; a ``$ref`` to it."""
    model: type[BaseModel] = spec.payload
    for prefix in ("", f"{spec.kind}."):
        schema = model.model_json_schema(ref_template=SCHEMAS + prefix + "{model}", mode="validation")
        found = {prefix + name: definition for name, definition in schema.pop("$defs", {}).items()}
        found[prefix + model.__name__] = schema
        if all(schemas.get(name, definition) == definition for name, definition in found.items()):
            schemas.update(found)
            return {"$ref": SCHEMAS + prefix + model.__name__}
    raise RuntimeError(f"two different schemas are named {spec.kind}.{model.__name__}")  # kind names are unique


def _scheduling_properties() -> dict[str, Any]:
    """``priority``, ``run_at`` and ``delay_s``, beside ``kind`` and ``payload`` (:mod:`shared.scheduling`)."""
    return Scheduling.model_json_schema(mode="validation")["properties"]


def submission_schema(schemas: dict[str, Any], kinds: KindRegistry = KINDS) -> dict[str, Any]:
    """Put ``JobSubmission`` and its variants among ``schemas``; a ``$ref`` to it."""
    specs = [spec for spec in kinds.specs() if not spec.own_route_only]
    # The built-in kinds' payloads first: theirs keep their names whatever a plugin calls its models.
    payloads = {spec.kind: _put_payload(schemas, spec)
                for spec in sorted(specs, key=lambda spec: not spec.module.startswith("shared.kinds."))}
    variants = []
    for spec in specs:
        name = f"JobSubmission.{spec.kind}"
        schemas[name] = {
            "type": "object",
            "title": f"{spec.kind} job",
            "description": f"A job of the kind `{spec.kind}`, its payload as that kind's model takes it",
            "properties": {"kind": {"type": "string", "const": spec.kind},
                           "payload": payloads[spec.kind], **_scheduling_properties()},
            "required": ["kind", "payload"],
            "additionalProperties": False,
            **A_TIME_OR_A_DELAY,
        }
        variants.append({"$ref": SCHEMAS + name})
    schemas["JobSubmission"] = {
        "title": "JobSubmission",
        "description": "A job of any kind: its `kind`, and a `payload` that kind's own model takes. ECGs and "
                       "data imports, which carry more than a JSON payload, come by `/ecgs` and `/v1/imports`.",
        "oneOf": variants,
    }
    return {"$ref": SCHEMAS + "JobSubmission"}
