"""``Client``: the same API for code without an event loop. It runs an :class:`AsyncClient` on an event
loop of its own, in a daemon thread, and waits for each call.

    with Client("http://127.0.0.1:8080", token=token) as client:
        job = client.wait(client.submit("export", {"bookId": "123", "type": "epub"}), timeout=60)
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from shared.client.aio import AsyncClient, OnUpdate
from shared.client.models import Event, Job

T = TypeVar("T")


class Client:
    """A blocking client; its methods are :class:`AsyncClient`'s (``list`` and ``events`` are plain
    iterators). Close it, or use it as a context manager."""

    def __init__(self, url: str | None = None, token: str | None = None, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="conveyor-client", daemon=True)
        self._thread.start()
        self.aio = AsyncClient(url, token, **options)

    @property
    def url(self) -> str:
        return self.aio.url

    @property
    def token(self) -> str | None:
        return self.aio.token

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:  # Ctrl-C while waiting: stop the call too
            future.cancel()
            raise

    def _iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        try:
            while True:
                try:
                    yield self._run(anext(agen))  # type: ignore[arg-type]
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None and not self._loop.is_closed():
                self._run(aclose())

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self.aio.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def login(self, username: str, password: str) -> str:
        return self._run(self.aio.login(username, password))

    def submit(self, kind: str, payload: dict[str, Any], *, priority: int | None = None,
               run_at: datetime | str | None = None, delay_s: float | None = None,
               idempotency_key: str | None = None) -> Job:
        return self._run(self.aio.submit(kind, payload, priority=priority, run_at=run_at, delay_s=delay_s,
                                         idempotency_key=idempotency_key))

    def get(self, job: Job | str) -> Job:
        return self._run(self.aio.get(job))

    def wait(self, job: Job | str, timeout: float | None = None, *, on_update: OnUpdate | None = None,
             poll_s: float = 1.0) -> Job:
        return self._run(self.aio.wait(job, timeout, on_update=on_update, poll_s=poll_s))

    def result(self, job: Job | str, path: str | Path) -> Path:
        return self._run(self.aio.result(job, path))

    def cancel(self, job: Job | str) -> Job:
        return self._run(self.aio.cancel(job))

    def list(self, *, kind: str | None = None, state: str | None = None, owner: str | None = None,
             limit: int | None = None, page_size: int = 100) -> Iterator[Job]:
        return self._iterate(self.aio.list(kind=kind, state=state, owner=owner, limit=limit, page_size=page_size))

    def events(self, *, topics: list[str] | None = None, last_event_id: str | None = None) -> Iterator[Event]:
        return self._iterate(self.aio.events(topics=topics, last_event_id=last_event_id))

    def history(self, job: Job | str) -> list[Event]:
        return self._run(self.aio.history(job))

    def __getattr__(self, name: str) -> Any:
        """``call`` and the operators' calls (``queues``, ``instances``, ``dead``, ``requeue``, ``discard``, ``pause``,
        ``resume``, ``logs``, ``health``), run the same way."""
        if name.startswith("_") or name == "aio":  # not made yet (a failed __init__): no recursion
            raise AttributeError(name)
        method = getattr(self.aio, name)
        if not inspect.iscoroutinefunction(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._run(method(*args, **kwargs))

        return call
