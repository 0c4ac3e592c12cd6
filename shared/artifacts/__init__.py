"""Artifacts: the files jobs read and produce (uploads, ECG signals, results, error reports, exports).
The receptionists write inputs and stream results to clients; the handlers read inputs and write results.

One interface (:class:`ArtifactStore`, in :mod:`shared.artifacts.base`), two backends chosen by URL:

- a directory of this machine (``file:///abs/path`` or a plain path; :mod:`shared.artifacts.local`), the
  embedded default;
- an S3-compatible object store (``s3://bucket/prefix?endpoint=…&region=…``; :mod:`shared.artifacts.s3`),
  for many machines: nothing a job needs stays on one host's disk.

Keys are relative POSIX paths (``export/3a/019ad…e3a-1-book.epub``): the kind, a two-character shard of the job
id (its last two hex digits), then one flat name of a job attempt (:func:`artifact_key`).
"""

from __future__ import annotations

from pathlib import Path

from shared.artifacts.base import (
    ArtifactInfo,
    ArtifactMissing,
    ArtifactStore,
    ArtifactWriter,
    artifact_key,
    check_key,
    safe_filename,
)
from shared.artifacts.local import LocalArtifactStore

__all__ = ["ArtifactInfo", "ArtifactMissing", "ArtifactStore", "ArtifactWriter", "LocalArtifactStore",
           "artifact_key", "check_key", "check_url", "open_store", "safe_filename"]


def check_url(url: str) -> str:
    """``url`` if it names a store this code can open; a ValueError saying what is wrong otherwise (for
    settings validators: a bad URL stops the service at start, not at its first job)."""
    if url.startswith("s3://"):
        from shared.artifacts.s3 import S3Location

        S3Location.parse(url)
    elif "://" in url and not url.startswith("file://"):
        raise ValueError("artifacts go to a directory (file:///path or a plain path) or s3://bucket/prefix")
    elif not url.removeprefix("file://"):
        raise ValueError("the artifact directory is empty")
    return url


def open_store(url: str | Path) -> ArtifactStore:
    """The store ``url`` names: ``s3://bucket/prefix?…``, ``file:///abs/path`` or a plain directory path.
    Opening connects to nothing; the S3 client is made on first use and released by ``close()``."""
    url = str(url)
    check_url(url)
    if url.startswith("s3://"):
        from shared.artifacts.s3 import S3ArtifactStore, S3Location

        return S3ArtifactStore(S3Location.parse(url))
    return LocalArtifactStore(url.removeprefix("file://"))
