"""One contract for every artifact store backend: a directory, and S3 (a real moto server process)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shared.artifacts import ArtifactMissing, ArtifactStore, LocalArtifactStore, check_url, open_store
from shared.artifacts.s3 import S3ArtifactStore, S3Location
from shared.errors import Unavailable

MiB = 1024 * 1024


async def s3_side(store: S3ArtifactStore, operation: str, **args: Any) -> dict[str, Any]:
    """What the S3 server itself says (boto3, apart from the store's own client): ``operation`` on the
    store's bucket."""
    import boto3

    def call() -> dict[str, Any]:
        client = boto3.client("s3", endpoint_url=store.location.endpoint, region_name="us-east-1")
        try:
            return getattr(client, operation)(Bucket=store.location.bucket, **args)  # type: ignore[no-any-return]
        finally:
            client.close()

    return await asyncio.to_thread(call)


async def uploads_in_progress(store: S3ArtifactStore) -> list[str]:
    """The object names of the bucket's multipart uploads neither completed nor aborted."""
    return [upload["Key"] for upload in (await s3_side(store, "list_multipart_uploads")).get("Uploads", [])]


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


async def test_a_small_streamed_write(store: ArtifactStore) -> None:
    """Chunks that stay under a part: on S3 one PutObject at the commit, no multipart upload."""
    lines = [b'{"line": %d}\n' % line for line in range(100)]
    async with store.writer("data_import/ab/ab-1-errors.ndjson") as out:
        for line in lines:
            await out.write(line)
        assert not await store.exists("data_import/ab/ab-1-errors.ndjson")
    assert out.size == len(b"".join(lines))
    assert await store.read("data_import/ab/ab-1-errors.ndjson") == b"".join(lines)
    if isinstance(store, S3ArtifactStore):
        head = await s3_side(store, "head_object", Key=store.name("data_import/ab/ab-1-errors.ndjson"))
        assert "-" not in head["ETag"]  # a multipart upload's ETag ends with -<parts>
        assert await uploads_in_progress(store) == []


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
        if isinstance(store, S3ArtifactStore):  # the two full parts went out as they filled, one at a time
            name = store.name("data_export/cd/cd34-1-users.csv")
            upload = (await s3_side(store, "list_multipart_uploads"))["Uploads"][0]
            assert upload["Key"] == name
            parts = await s3_side(store, "list_parts", Key=name, UploadId=upload["UploadId"])
            assert [part["Size"] for part in parts["Parts"]] == [5 * MiB, 5 * MiB]
    assert out.size == size
    if isinstance(store, S3ArtifactStore):  # S3 says how many parts made the object: "<md5 of md5s>-3"
        head = await s3_side(store, "head_object", Key=store.name("data_export/cd/cd34-1-users.csv"))
        assert head["ETag"].strip('"').endswith("-3")
        assert await uploads_in_progress(store) == []
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
    if isinstance(store, S3ArtifactStore):
        assert await uploads_in_progress(store) == []  # the multipart upload begun was aborted


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
    """Not a missing object (a 404 too, from S3): writes, reads and listings say there is no bucket."""
    store = open_store(f"s3://no-such-bucket/x?endpoint={s3_endpoint}")
    try:
        with pytest.raises(Unavailable, match="no bucket no-such-bucket"):
            await store.check()
        with pytest.raises(Unavailable, match="no bucket no-such-bucket"):
            await store.write("task/00/small", b"x")
        with pytest.raises(Unavailable, match="no bucket no-such-bucket"):
            async with store.writer("task/00/large") as out:
                await out.write(b"x" * (9 * MiB))  # past a part: a multipart upload is refused
        with pytest.raises(Unavailable, match="no bucket no-such-bucket"):
            await store.read("task/00/small")
        with pytest.raises(Unavailable, match="no bucket no-such-bucket"):
            await store.delete(["task/00/small"])
        with pytest.raises(Unavailable, match="no bucket no-such-bucket"):
            await collect(store.list_older(time.time()))  # type: ignore[arg-type]
    finally:
        await store.close()


async def test_an_s3_store_is_used_again_after_close(s3_url: str) -> None:
    store = open_store(s3_url)
    await store.write("task/00/kept", b"kept")
    await store.close()
    assert await store.read("task/00/kept") == b"kept"
    await store.close()
    await store.close()  # twice is fine


def test_s3_addressing() -> None:
    """Where the bucket goes in a request: the path, or the host (object_store wants it in the endpoint)."""
    aws = S3Location.parse("s3://my-bucket/p")
    assert aws.virtual_hosted() and aws.store_endpoint() is None
    assert not S3Location.parse("s3://my.dotted.bucket/p").virtual_hosted()  # dots break TLS on AWS
    assert not S3Location.parse("s3://my-bucket/p?addressing=path").virtual_hosted()
    minio = S3Location.parse("s3://b/p?endpoint=http://minio:9000")
    assert not minio.virtual_hosted() and minio.store_endpoint() == "http://minio:9000"
    virtual = S3Location.parse("s3://b/p?endpoint=https://s3.example.org&addressing=virtual")
    assert virtual.virtual_hosted() and virtual.store_endpoint() == "https://b.s3.example.org"


async def test_writes_left_unfinished_are_removed(store: ArtifactStore) -> None:
    """A process that died mid-write leaves a partial file or a multipart upload. Expiry removes the
    partial file; a multipart upload it cannot see (obstore does not list them), so it says 0, and the
    bucket's lifecycle rule AbortIncompleteMultipartUpload is what ends it."""
    out = store.writer("data_export/99/99-1-users.csv")
    await out.write(b"y" * (6 * MiB))  # on S3, a multipart upload with one part
    if isinstance(store, S3ArtifactStore):
        assert await uploads_in_progress(store) == [store.name("data_export/99/99-1-users.csv")]
        assert await store.remove_stale_writes(time.time() + 60) == 0
        assert await uploads_in_progress(store) == [store.name("data_export/99/99-1-users.csv")]
    else:
        assert await store.remove_stale_writes(time.time() - 3600) == 0  # not old enough
        assert await store.remove_stale_writes(time.time() + 60) == 1
        assert await store.remove_stale_writes(time.time() + 60) == 0
    await out.abort()  # the writer itself ends it: on S3, the upload is aborted
    assert not await store.exists("data_export/99/99-1-users.csv")
    if isinstance(store, S3ArtifactStore):
        assert await uploads_in_progress(store) == []
