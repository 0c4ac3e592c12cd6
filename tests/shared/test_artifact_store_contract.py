"""One contract for every artifact store backend: a directory, and S3 (a real moto server process)."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shared.artifacts import ArtifactMissing, ArtifactStore, LocalArtifactStore, check_url, open_store
from shared.errors import Unavailable

MiB = 1024 * 1024


@pytest.fixture(params=["local", "s3"])
async def store(request: Any, tmp_path: Path) -> AsyncIterator[ArtifactStore]:
    url = str(tmp_path / "artifacts") if request.param == "local" else request.getfixturevalue("s3_url")
    opened = open_store(url)
    yield opened
    await opened.close()


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


async def test_write_then_read_and_stat(store: ArtifactStore) -> None:
    assert await store.write("export/ab/ab12-1-book.epub", b"an epub") == 7
    assert await store.read("export/ab/ab12-1-book.epub") == b"an epub"
    info = await store.stat("export/ab/ab12-1-book.epub")
    assert info is not None and info.size == 7 and abs(info.modified - time.time()) < 600
    assert await store.exists("export/ab/ab12-1-book.epub")
    assert await store.write("export/ab/ab12-1-book.epub", b"replaced") == 8  # a retry writes again
    assert await store.read("export/ab/ab12-1-book.epub") == b"replaced"


async def test_an_empty_object(store: ArtifactStore) -> None:
    await store.write("task/00/empty", b"")
    assert await store.read("task/00/empty") == b""
    assert (await store.stat("task/00/empty")).size == 0  # type: ignore[union-attr]


async def test_a_streamed_write_of_many_parts_streams_back(store: ArtifactStore) -> None:
    """Over 10 MiB in 1 MiB chunks: on S3 a multipart upload of 5 MiB parts, never the whole in memory."""
    digest, size = hashlib.sha256(), 0
    async with store.writer("data_export/cd/cd34-1-users.csv") as out:
        for index in range(11):
            chunk = bytes([index]) * MiB + os.urandom(17)
            digest.update(chunk)
            size += len(chunk)
            await out.write(chunk)
        assert not await store.exists("data_export/cd/cd34-1-users.csv")  # nothing shows before the commit
    assert out.size == size
    if hasattr(out, "parts"):
        assert len(out.parts) == 3  # type: ignore[attr-defined]
    assert (await store.stat("data_export/cd/cd34-1-users.csv")).size == size  # type: ignore[union-attr]
    back, largest = hashlib.sha256(), 0
    async for chunk in store.stream("data_export/cd/cd34-1-users.csv", chunk_bytes=256 * 1024):
        back.update(chunk)
        largest = max(largest, len(chunk))
    assert back.hexdigest() == digest.hexdigest()
    assert largest <= 256 * 1024


async def test_ranged_reads(store: ArtifactStore) -> None:
    data = bytes(range(256)) * 40
    await store.write("ecg/ef/ef56-0-signals.i32", data)
    assert await collect(store.stream("ecg/ef/ef56-0-signals.i32", 100, 300)) == data[100:300]
    assert await collect(store.stream("ecg/ef/ef56-0-signals.i32", 10_000)) == data[10_000:]
    assert await collect(store.stream("ecg/ef/ef56-0-signals.i32", 5, 5)) == b""
    assert await collect(store.stream("ecg/ef/ef56-0-signals.i32", len(data) + 10)) == b""


async def test_an_aborted_write_leaves_nothing(store: ArtifactStore) -> None:
    with pytest.raises(RuntimeError):
        async with store.writer("data_import/12/1234-1-errors.ndjson") as out:
            await out.write(b"x" * (6 * MiB))  # on S3, one part uploaded already
            raise RuntimeError("the job was cancelled")
    assert not await store.exists("data_import/12/1234-1-errors.ndjson")
    assert [info async for info in store.list_older(time.time() + 60)] == []


async def test_a_missing_key(store: ArtifactStore) -> None:
    assert await store.stat("export/00/nothing") is None
    assert not await store.exists("export/00/nothing")
    with pytest.raises(ArtifactMissing, match="artifact export/00/nothing is missing"):
        await store.read("export/00/nothing")
    with pytest.raises(ArtifactMissing):
        await collect(store.stream("export/00/nothing", 0, 10))
    with pytest.raises(ArtifactMissing):
        async with store.local_file("export/00/nothing"):
            pass
    await store.delete(["export/00/nothing"])  # deleting what is not there is fine


async def test_delete(store: ArtifactStore) -> None:
    for name in ("a", "b", "c"):
        await store.write(f"task/11/11-{name}", name.encode())
    await store.delete(["task/11/11-a", "task/11/11-c", "task/11/11-none"])
    assert [await store.exists(f"task/11/11-{name}") for name in "abc"] == [False, True, False]


async def test_expiry_lists_what_is_older_than_the_cutoff(store: ArtifactStore) -> None:
    await store.write("export/aa/aa-1-old.epub", b"1")
    await store.write("ecg/bb/bb-0-signals.i32", b"22")
    before = time.time() - 3600
    assert [info async for info in store.list_older(before)] == []
    later = sorted([(info.key, info.size) async for info in store.list_older(time.time() + 3600)])
    assert later == [("ecg/bb/bb-0-signals.i32", 2), ("export/aa/aa-1-old.epub", 1)]


async def test_a_local_file_holds_the_object(store: ArtifactStore) -> None:
    data = os.urandom(3 * MiB + 5)
    await store.write("data_import/77/77-0-upload.csv", data)
    async with store.local_file("data_import/77/77-0-upload.csv") as path:
        assert path.read_bytes() == data
    if not isinstance(store, LocalArtifactStore):
        assert not path.exists()  # the temporary copy is gone


async def test_bad_keys_are_refused(store: ArtifactStore) -> None:
    for key in ("../etc/passwd", "/abs", "a/../b", "a//b", "a/"):
        with pytest.raises(ValueError):
            await store.write(key, b"x")


def test_urls_are_checked() -> None:
    assert isinstance(open_store("file:///tmp/conveyor-artifacts"), LocalArtifactStore)
    for url, reason in [("s3://b/p?color=blue", "unknown parameter 'color'"),
                        ("s3:///p", "expected s3://bucket/prefix"),
                        ("s3://b?endpoint=ftp://x", "endpoint must be"),
                        ("s3://b?part_mb=1", "part_mb must be between"),
                        ("gs://b/p", "a directory")]:
        with pytest.raises(ValueError, match=reason):
            check_url(url)


async def test_an_unreachable_s3_endpoint_is_unavailable(s3_endpoint: str) -> None:
    from tests.s3_server import _free_port

    store = open_store(f"s3://nobody/x?endpoint=http://127.0.0.1:{_free_port()}")
    try:
        with pytest.raises(Unavailable):
            await store.check()
    finally:
        await store.close()


async def test_a_missing_bucket_is_unavailable(s3_endpoint: str) -> None:
    store = open_store(f"s3://no-such-bucket/x?endpoint={s3_endpoint}")
    try:
        with pytest.raises(Unavailable, match="no bucket no-such-bucket"):
            await store.check()
    finally:
        await store.close()


async def test_writes_left_unfinished_are_removed(store: ArtifactStore) -> None:
    """A process that died mid-write leaves a partial file or a multipart upload: expiry ends it."""
    out = store.writer("data_export/99/99-1-users.csv")
    await out.write(b"y" * (6 * MiB))  # on S3, a multipart upload with one part
    if isinstance(store, LocalArtifactStore):
        # moto's ListMultipartUploads dates every upload 2010-11-10 (S3 and MinIO give the real time), so
        # "not old enough" is checked on the directory only.
        assert await store.remove_stale_writes(time.time() - 3600) == 0
    assert await store.remove_stale_writes(time.time() + 60) == 1
    assert await store.remove_stale_writes(time.time() + 60) == 0
    await out.abort()  # the writer itself may still end it: nothing to do
    assert not await store.exists("data_export/99/99-1-users.csv")
