"""The job kinds: each is one module with its payload models and its ``run``; :data:`KINDS` maps
each :class:`~shared.contract.JobKind` to its :class:`~shared.kinds.base.KindSpec`."""

from __future__ import annotations

from shared.contract import JobKind
from shared.kinds.base import InvalidInput, JobCancelled, JobContext, KindSpec, PermanentFailure, is_permanent
from shared.kinds.books import EXPORT, IMPORT
from shared.kinds.data_export import DATA_EXPORT
from shared.kinds.data_import import DATA_IMPORT
from shared.kinds.ecg import ECG
from shared.kinds.tasks import TASK

KINDS: dict[JobKind, KindSpec] = {spec.kind: spec for spec in (EXPORT, IMPORT, TASK, ECG, DATA_IMPORT,
                                                                    DATA_EXPORT)}

__all__ = ["KINDS", "InvalidInput", "JobCancelled", "JobContext", "KindSpec", "PermanentFailure", "is_permanent",
           "kind_spec"]


def kind_spec(kind: JobKind | str) -> KindSpec:
    """The spec of ``kind``; KeyError when no module implements it."""
    return KINDS[JobKind(kind)]
