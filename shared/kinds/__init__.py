"""The job kinds. A kind is a module: its payload model and an async ``run(ctx)``, declared with
:func:`kind` (or as a subclass of :class:`Kind`), which registers it in :data:`KINDS` (see
:mod:`shared.kinds.registry`). The built-in kinds
below are declared the same way; others come from ``CONVEYOR_KINDS`` and the ``conveyor.kinds`` entry
points (:func:`load_kinds`)."""

from __future__ import annotations

from shared.contract import RetryPolicy

# The built-in kinds: importing them registers them.
from shared.kinds import books, data_export, data_import, ecg, tasks
from shared.kinds.base import InvalidInput, JobCancelled, JobContext, KindSpec, PermanentFailure, is_permanent
from shared.kinds.registry import (
    ENTRY_POINT_GROUP,
    KINDS,
    KINDS_ENV,
    Kind,
    KindError,
    KindRegistry,
    UnknownKind,
    kind,
    load_kinds,
    require_kinds,
)

__all__ = ["ENTRY_POINT_GROUP", "KINDS", "KINDS_ENV", "InvalidInput", "JobCancelled", "JobContext", "Kind",
           "KindError", "KindRegistry", "KindSpec", "PermanentFailure", "RetryPolicy", "UnknownKind", "books",
           "data_export", "data_import", "ecg", "is_permanent", "kind", "kind_spec", "load_kinds", "queue_for",
           "require_kinds", "tasks"]


def kind_spec(name: str) -> KindSpec:
    """The registered kind ``name``; :class:`UnknownKind` when this process has none of that name."""
    return KINDS[name]


def queue_for(name: str) -> str:
    """The scheduler queue the kind ``name``'s jobs go to (:class:`UnknownKind` for a kind not here)."""
    return KINDS[name].queue
