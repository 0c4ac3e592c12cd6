"""Artifacts in an S3-compatible object store (AWS S3, MinIO, Ceph, Garage, moto's server ...), through
aiobotocore: botocore's request signing, retries and credential chain on aiohttp, the HTTP stack the
services already run on.

``s3://bucket/prefix?endpoint=http://minio:9000&region=us-east-1&addressing=path&part_mb=8``. Credentials
come from the standard AWS chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, a profile, an
instance role). The bucket must exist: the store never creates one.

A streamed write keeps one part in memory (``part_mb``, 8 MiB by default; S3 wants at least 5 MiB but for
the last): an object that stays under it is one PutObject, a larger one a multipart upload whose parts go
out as they fill, completed on commit and aborted on abort. Reads are GetObject streams, ranged when asked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from shared.artifacts.base import CHUNK_BYTES, ArtifactInfo, ArtifactMissing, ArtifactStore, ArtifactWriter, check_key
from shared.errors import Unavailable

_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_PARAMS = {"endpoint", "region", "addressing", "part_mb"}


@dataclass(frozen=True)
class S3Location:
    """What an ``s3://`` URL says."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None
    addressing: str = "auto"
    part_bytes: int = 8 * 1024 * 1024

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """A ValueError names what is wrong with ``url``."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError("expected s3://bucket/prefix")
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = sorted(set(params) - _PARAMS)
        if unknown:
            raise ValueError(f"unknown parameter {unknown[0]!r} (known: {', '.join(sorted(_PARAMS))})")
        endpoint = params.get("endpoint") or None
        if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
            raise ValueError("endpoint must be an http:// or https:// URL")
        # An endpoint of one's own (MinIO, moto) is rarely set up for bucket.host names: path style.
        addressing = params.get("addressing") or ("path" if endpoint else "auto")
        if addressing not in ("auto", "path", "virtual"):
            raise ValueError("addressing must be auto, path or virtual")
        try:
            part_mb = int(params.get("part_mb", "8"))
        except ValueError:
            raise ValueError("part_mb must be a whole number of MiB") from None
        if not 5 <= part_mb <= 5120:
            raise ValueError("part_mb must be between 5 and 5120 (S3's limits on a part)")
        prefix = parts.path.strip("/")
        return cls(bucket=parts.netloc, prefix=f"{prefix}/" if prefix else "", endpoint=endpoint,
                   region=params.get("region") or None, addressing=addressing, part_bytes=part_mb * 1024 * 1024)


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class _S3Writer(ArtifactWriter):
    def __init__(self, store: S3ArtifactStore, key: str) -> None:
        super().__init__(key)
        self.store = store
        self.name = store.name(key)
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []

    async def write(self, chunk: bytes) -> None:
        self.buffer += chunk
        self.size += len(chunk)
        part_bytes = self.store.location.part_bytes
        while len(self.buffer) >= part_bytes:
            part = bytes(self.buffer[:part_bytes])
            del self.buffer[:part_bytes]
            await self._upload_part(part)

    async def _upload_part(self, part: bytes) -> None:
        async with self.store.calls() as s3:
            if self.upload_id is None:
                started = await s3.create_multipart_upload(Bucket=self.store.location.bucket, Key=self.name)
                self.upload_id = started["UploadId"]
            number = len(self.parts) + 1
            answer = await s3.upload_part(Bucket=self.store.location.bucket, Key=self.name, PartNumber=number,
                                          UploadId=self.upload_id, Body=part)
            self.parts.append({"ETag": answer["ETag"], "PartNumber": number})

    async def _commit(self) -> None:
        bucket = self.store.location.bucket
        if self.upload_id is None:
            async with self.store.calls() as s3:
                await s3.put_object(Bucket=bucket, Key=self.name, Body=bytes(self.buffer))
            self.buffer.clear()
            return
        try:
            if self.buffer:
                await self._upload_part(bytes(self.buffer))
                self.buffer.clear()
            async with self.store.calls() as s3:
                await s3.complete_multipart_upload(Bucket=bucket, Key=self.name, UploadId=self.upload_id,
                                                   MultipartUpload={"Parts": self.parts})
        except BaseException:
            await self._abort()
            raise

    async def _abort(self) -> None:
        self.buffer.clear()
        if self.upload_id is not None:
            upload_id, self.upload_id = self.upload_id, None
            # Best effort: a multipart upload left behind holds storage until a lifecycle rule ends it.
            with contextlib.suppress(Exception):
                async with self.store.calls() as s3:
                    await s3.abort_multipart_upload(Bucket=self.store.location.bucket, Key=self.name,
                                                    UploadId=upload_id)


class S3ArtifactStore(ArtifactStore):
    def __init__(self, location: S3Location) -> None:
        self.location = location
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        self._lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        return f"S3ArtifactStore(s3://{self.location.bucket}/{self.location.prefix})"

    def name(self, key: str) -> str:
        """The object name of ``key``: the prefix, then the key."""
        check_key(key)
        return self.location.prefix + key

    async def _open(self) -> Any:
        if self._client is not None:
            return self._client
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._client is None:
                try:
                    from aiobotocore.config import AioConfig
                    from aiobotocore.session import get_session
                except ImportError as exc:  # an optional dependency
                    raise RuntimeError("s3:// artifacts need aiobotocore: pip install 'conveyor[s3]'") from exc
                config = AioConfig(
                    s3={"addressing_style": self.location.addressing},
                    retries={"max_attempts": 4, "mode": "standard"},
                    # Checksums only where S3 requires them: several S3-compatible servers refuse the newer
                    # default trailers.
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                    max_pool_connections=64,
                )
                stack = AsyncExitStack()
                self._client = await stack.enter_async_context(get_session().create_client(
                    "s3", endpoint_url=self.location.endpoint, region_name=self.location.region or "us-east-1",
                    config=config))
                self._stack = stack
        return self._client

    @contextlib.asynccontextmanager
    async def calls(self) -> AsyncIterator[Any]:
        """The client, with the backend's failures translated: a missing object is :class:`ArtifactMissing`
        (raised by the caller, which knows the key), anything else that goes wrong is Unavailable."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = await self._open()
        try:
            yield client
        except ClientError as exc:
            if _code(exc) in _MISSING_CODES:
                raise
            raise Unavailable(f"artifact store: {_code(exc) or exc}") from exc
        except (TimeoutError, BotoCoreError, OSError) as exc:
            raise Unavailable(f"artifact store unreachable: {exc}") from exc

    def writer(self, key: str) -> ArtifactWriter:
        return _S3Writer(self, key)

    async def stream(self, key: str, start: int = 0, end: int | None = None,
                     chunk_bytes: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
        from botocore.exceptions import ClientError

        name = self.name(key)
        if end is not None and end <= start:
            if not await self.exists(key):
                raise ArtifactMissing(key)
            return
        args: dict[str, Any] = {"Bucket": self.location.bucket, "Key": name}
        if start or end is not None:
            args["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            async with self.calls() as s3:
                answer = await s3.get_object(**args)
        except ClientError as exc:
            if _code(exc) in _MISSING_CODES:
                raise ArtifactMissing(key) from None
            raise
        except Unavailable as exc:
            if isinstance(exc.__cause__, ClientError) and _code(exc.__cause__) == "InvalidRange":
                return  # a range that starts past the end: nothing in it
            raise
        async with answer["Body"] as body:
            try:
                while chunk := await body.read(chunk_bytes):
                    yield chunk
            except OSError as exc:
                raise Unavailable(f"artifact store: reading {key} failed: {exc}") from exc

    async def stat(self, key: str) -> ArtifactInfo | None:
        from botocore.exceptions import ClientError

        try:
            async with self.calls() as s3:
                head = await s3.head_object(Bucket=self.location.bucket, Key=self.name(key))
        except ClientError as exc:
            if _code(exc) in _MISSING_CODES:
                return None
            raise
        return ArtifactInfo(key, int(head["ContentLength"]), head["LastModified"].timestamp())

    async def delete(self, keys: list[str]) -> None:
        names = [self.name(key) for key in keys]
        for at in range(0, len(names), 1000):  # DeleteObjects takes 1,000 keys at most
            batch = [{"Key": name} for name in names[at:at + 1000]]
            async with self.calls() as s3:
                answer = await s3.delete_objects(Bucket=self.location.bucket,
                                                 Delete={"Objects": batch, "Quiet": True})
            failed = [error for error in answer.get("Errors", []) if error.get("Code") != "NoSuchKey"]
            if failed:
                raise Unavailable(f"artifact store: deleting {failed[0].get('Key')} failed: "
                                  f"{failed[0].get('Code')}")

    async def list_older(self, cutoff: float) -> AsyncIterator[ArtifactInfo]:
        prefix = self.location.prefix
        async with self.calls() as s3:
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=self.location.bucket, Prefix=prefix)
            async for page in pages:
                for item in page.get("Contents", []):
                    modified = item["LastModified"].timestamp()
                    if modified < cutoff:
                        yield ArtifactInfo(item["Key"][len(prefix):], int(item["Size"]), modified)

    async def remove_stale_writes(self, cutoff: float) -> int:
        from botocore.exceptions import ClientError

        stale: list[tuple[str, str]] = []
        async with self.calls() as s3:
            pages = s3.get_paginator("list_multipart_uploads").paginate(Bucket=self.location.bucket,
                                                                        Prefix=self.location.prefix)
            async for page in pages:
                stale += [(upload["Key"], upload["UploadId"]) for upload in page.get("Uploads", [])
                          if upload["Initiated"].timestamp() < cutoff]
            for name, upload_id in stale:
                with contextlib.suppress(ClientError):  # ended meanwhile
                    await s3.abort_multipart_upload(Bucket=self.location.bucket, Key=name, UploadId=upload_id)
        return len(stale)

    async def check(self) -> None:
        from botocore.exceptions import ClientError

        try:
            async with self.calls() as s3:
                await s3.head_bucket(Bucket=self.location.bucket)
        except ClientError as exc:
            raise Unavailable(f"artifact store: no bucket {self.location.bucket}") from exc

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()
