"""Artifacts in an S3-compatible object store (AWS S3, MinIO, Ceph, Garage, moto's server ...), through
obstore: the Python bindings of Rust's ``object_store`` crate (Apache Arrow), with its request signing,
retries and credential chain, on a tokio runtime of its own threads. Why obstore: a handler writes one
artifact per job, and a small PutObject cost 2.9 ms of client CPU through aiobotocore against 0.5 to
0.74 ms through obstore (500 puts of 2 KB, 8 at a time, to moto's server on the 2-core development
machine): it was the largest CPU cost of the distributed stack.

``s3://bucket/prefix?endpoint=http://minio:9000&region=us-east-1&addressing=path&part_mb=8``. Credentials
come from the standard AWS variables (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_SESSION_TOKEN``), a web identity token (``AWS_WEB_IDENTITY_TOKEN_FILE`` / ``AWS_ROLE_ARN``), a
container's or an instance's role; the region, when the URL names none, from ``AWS_REGION`` or
``AWS_DEFAULT_REGION`` (else ``us-east-1``). Profiles of ``~/.aws`` are not read. The bucket must exist:
the store never creates one.

A streamed write keeps one part in memory (``part_mb``, 8 MiB by default; S3 wants at least 5 MiB but for
the last): an object that stays under it is one PutObject, a larger one a multipart upload whose parts go
out as they fill (obstore's writer, one part in flight at a time), completed on commit and aborted on abort
or when a part or the completion fails. Reads are GetObject streams, ranged when asked.

obstore cannot list multipart uploads, so :meth:`S3ArtifactStore.remove_stale_writes` cannot end those a
dead process left behind: give the bucket the lifecycle rule ``AbortIncompleteMultipartUpload``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from shared.artifacts.base import CHUNK_BYTES, ArtifactInfo, ArtifactMissing, ArtifactStore, ArtifactWriter, check_key
from shared.errors import Unavailable

_PARAMS = {"endpoint", "region", "addressing", "part_mb"}

#: Connection errors, timeouts and 5xx are retried 3 times, 0.1 s apart doubling to 2 s at most (with jitter),
#: none begun more than 30 s after the first attempt; then the error is reported.
_RETRIES = {"max_retries": 3, "retry_timeout": timedelta(seconds=30),
            "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=2), "base": 2}}
#: ``timeout`` bounds a whole request, body included: a download streamed to a slow client may take long,
#: so it is generous and a stalled connection is caught by ``read_timeout`` instead.
_CLIENT = {"connect_timeout": timedelta(seconds=5), "read_timeout": timedelta(seconds=60),
           "timeout": timedelta(hours=1)}


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

    def virtual_hosted(self) -> bool:
        """Whether requests name the bucket in the host (``bucket.s3.…``) rather than in the path. ``auto``
        is virtual on AWS when the bucket's name allows it (no dots, which break TLS), path elsewhere."""
        if self.addressing != "auto":
            return self.addressing == "virtual"
        return self.endpoint is None and "." not in self.bucket

    def store_endpoint(self) -> str | None:
        """The endpoint as object_store wants it: with virtual hosting, the bucket is part of the host."""
        if self.endpoint is None or not self.virtual_hosted():
            return self.endpoint
        parts = urlsplit(self.endpoint)
        return urlunsplit(parts._replace(netloc=f"{self.bucket}.{parts.netloc}"))


def _first_line(exc: BaseException) -> str:
    """obstore's messages carry a debug dump after the first line, and S3's XML answer in it."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


class _Aborted(Exception):
    """Raised inside obstore's writer to make it abort (its context manager's way)."""


class _S3Writer(ArtifactWriter):
    """Chunks gather here until a part's worth: an object that stays smaller is one PutObject at commit;
    once a part fills, obstore's writer takes over (a multipart upload, one part in flight at a time, the
    next gathering meanwhile)."""

    def __init__(self, store: S3ArtifactStore, key: str) -> None:
        super().__init__(key)
        self.store = store
        self.name = store.name(key)
        self.held = bytearray()
        self.upload: Any = None  # obstore's AsyncWritableFile, once the object is larger than a part

    async def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        async with self.store.calls():
            if self.upload is None:
                self.held += chunk
                part_bytes = self.store.location.part_bytes
                if len(self.held) < part_bytes:
                    return
                import obstore

                self.upload = obstore.open_writer_async(self.store.client(), self.name, buffer_size=part_bytes,
                                                        max_concurrency=1)
                chunk, self.held = self.held, bytearray()  # ours: handed over as it is, not copied
            elif not isinstance(chunk, bytes):
                chunk = bytes(chunk)  # obstore may keep a view of it until its part is sent: not a buffer reused
            await self.upload.write(chunk)

    async def _commit(self) -> None:
        import obstore

        upload, self.upload = self.upload, None
        async with self.store.calls():
            if upload is None:
                held, self.held = self.held, bytearray()
                await obstore.put_async(self.store.client(), self.name, held, use_multipart=False)
            else:
                await upload.close()  # obstore aborts the upload itself when a part or the completion fails

    async def _abort(self) -> None:
        self.held = bytearray()
        upload, self.upload = self.upload, None
        if upload is not None:
            # Best effort: a multipart upload left behind holds storage until a lifecycle rule ends it.
            with contextlib.suppress(Exception):
                async with upload:
                    raise _Aborted


class S3ArtifactStore(ArtifactStore):
    def __init__(self, location: S3Location) -> None:
        self.location = location
        self._store: Any = None

    def __repr__(self) -> str:
        return f"S3ArtifactStore(s3://{self.location.bucket}/{self.location.prefix})"

    def name(self, key: str) -> str:
        """The object name of ``key``: the prefix, then the key."""
        check_key(key)
        return self.location.prefix + key

    def client(self) -> Any:
        """obstore's S3Store, made on first use: it reads the AWS variables then, and connects to nothing
        until a request."""
        if self._store is None:
            try:
                from obstore.store import S3Store
            except ImportError as exc:  # an optional dependency
                raise RuntimeError("s3:// artifacts need obstore: pip install 'conveyor[s3]'") from exc
            location = self.location
            config: dict[str, Any] = {"virtual_hosted_style_request": location.virtual_hosted()}
            if location.endpoint is not None:
                config["endpoint"] = location.store_endpoint()
            if location.region is not None:
                config["region"] = location.region
            client = {**_CLIENT, "allow_http": (location.endpoint or "").startswith("http://")}
            self._store = S3Store(location.bucket, config=config,  # type: ignore[arg-type]
                                  client_options=client, retry_config=_RETRIES)  # type: ignore[arg-type]
        return self._store

    def unavailable(self, exc: BaseException) -> Unavailable:
        """obstore's error ``exc`` as Unavailable, saying which store and what went wrong."""
        from obstore.exceptions import PermissionDeniedError, UnauthenticatedError

        where = f"artifact store s3://{self.location.bucket}"
        if "NoSuchBucket" in str(exc):
            return Unavailable(f"{where}: no bucket {self.location.bucket}")
        if isinstance(exc, PermissionDeniedError | UnauthenticatedError):
            return Unavailable(f"{where}: access denied ({_first_line(exc)})")
        return Unavailable(f"{where}: {_first_line(exc)}")

    @contextlib.asynccontextmanager
    async def calls(self) -> AsyncIterator[None]:
        """obstore's failures translated: every one is Unavailable (a missing object is caught before, by
        the caller, which knows whether a 404 means no object or no bucket)."""
        from obstore.exceptions import BaseError

        try:
            yield
        except (BaseError, FileNotFoundError, OSError) as exc:
            if isinstance(exc, Unavailable | ArtifactMissing):
                raise
            raise self.unavailable(exc) from exc

    def writer(self, key: str) -> ArtifactWriter:
        return _S3Writer(self, key)

    async def write(self, key: str, data: bytes) -> int:
        """A small object is one PutObject straight away (the handler's result, the common case)."""
        if len(data) >= self.location.part_bytes:
            return await super().write(key, data)
        import obstore

        name = self.name(key)
        async with self.calls():
            await obstore.put_async(self.client(), name, data, use_multipart=False)
        return len(data)

    async def stream(self, key: str, start: int = 0, end: int | None = None,
                     chunk_bytes: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
        import obstore
        from obstore.exceptions import BaseError

        name = self.name(key)
        if end is not None and end <= start:
            if not await self.exists(key):
                raise ArtifactMissing(key)
            return
        options: dict[str, Any] = {}
        if end is not None:
            options["range"] = (start, end)
        elif start:
            options["range"] = {"offset": start}
        try:
            answer = await obstore.get_async(self.client(), name, options=options or None)  # type: ignore[arg-type]
        except FileNotFoundError as exc:
            if "NoSuchBucket" in str(exc):
                raise self.unavailable(exc) from exc
            raise ArtifactMissing(key) from None
        except (BaseError, OSError) as exc:
            # A range that starts at or past the end (416): nothing in it. Asked rather than read from the
            # error's text.
            info = await self.stat(key) if start else None
            if info is not None and start >= info.size:
                return
            raise self.unavailable(exc) from exc
        held = bytearray()
        async with self.calls():
            # Chunks of at least chunk_bytes come from obstore, a little more at times: cut to chunk_bytes.
            async for piece in answer.stream(min_chunk_size=chunk_bytes):
                if not held and len(piece) <= chunk_bytes:
                    yield piece
                    continue
                held += piece
                while len(held) >= chunk_bytes:
                    yield bytes(held[:chunk_bytes])
                    del held[:chunk_bytes]
            if held:
                yield bytes(held)

    async def stat(self, key: str) -> ArtifactInfo | None:
        import obstore

        name = self.name(key)
        async with self.calls():
            try:
                head = await obstore.head_async(self.client(), name)
            except FileNotFoundError:
                return None  # HEAD has no body: a missing bucket looks the same (check() tells them apart)
        return ArtifactInfo(key, int(head["size"]), head["last_modified"].timestamp())

    async def delete(self, keys: list[str]) -> None:
        """DeleteObjects, 1,000 keys a request (obstore batches them); S3 deletes a missing key quietly."""
        import obstore

        names = [self.name(key) for key in keys]
        if names:
            async with self.calls():
                await obstore.delete_async(self.client(), names)

    async def list_older(self, cutoff: float) -> AsyncIterator[ArtifactInfo]:
        import obstore

        prefix = self.location.prefix
        async with self.calls():
            async for page in obstore.list(self.client(), prefix=prefix.rstrip("/") or None, chunk_size=1000):
                for item in page:
                    modified = item["last_modified"].timestamp()
                    if modified < cutoff:
                        yield ArtifactInfo(item["path"][len(prefix):], int(item["size"]), modified)

    async def remove_stale_writes(self, cutoff: float) -> int:
        """Nothing, and says so with 0: obstore cannot list multipart uploads (``ListMultipartUploads``), so
        the uploads a dead process began are out of reach here. The bucket's lifecycle rule
        ``AbortIncompleteMultipartUpload`` (say, after a day) ends them. A write of a live process ends on
        its own: committed, or aborted by its writer."""
        return 0

    async def check(self) -> None:
        """One ListObjectsV2 of the prefix's first level (obstore has no HeadBucket): a missing bucket, an
        endpoint out of reach or refused credentials are Unavailable, saying which."""
        import obstore

        async with self.calls():
            await obstore.list_with_delimiter_async(self.client(), self.location.prefix.rstrip("/") or None)

    async def close(self) -> None:
        """Drops the client and its connections. obstore's runtime threads are the process's, shared by
        every store, and end with it."""
        self._store = None
