"""The logging service's own log lines, written straight into its store: it never ships them over HTTP
to itself.

A loguru sink appends each line to a small bounded buffer (dropping the oldest when full); a background
task moves the buffer into the store every ``interval_s``. Lines logged by this module are kept out of the
sink, so a failing store reports on stderr only and can never feed itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from loguru import logger
from pydantic import ValidationError

from logging_service.store import LogStore, faults
from shared.contract import LogRecord
from shared.logs import LineBuffer, record_to_wire


def _to_record(line: dict[str, Any]) -> LogRecord:
    # Values bound with ``logger.bind`` can be any object; the store keeps JSON, so the rest becomes text.
    meta = orjson.loads(orjson.dumps(line["meta"], default=str, option=orjson.OPT_NON_STR_KEYS))
    return LogRecord.model_validate({**line, "meta": meta})


class StoreSink:
    """A loguru sink for this process's own lines, and the task that stores them."""

    def __init__(self, store: LogStore, service: str, *, level: str = "INFO", capacity: int = 1000,
                 interval_s: float = 0.5) -> None:
        self.store = store
        self.service = service
        self.level = level.upper()
        self.interval_s = interval_s
        self.lines = LineBuffer(capacity)
        self.stored = 0
        self.refused = 0  # lines the store could not take

    @property
    def dropped(self) -> int:
        return self.lines.dropped + self.refused

    def sink(self, message: Any) -> None:
        self.lines.append(record_to_wire(message.record, self.service))

    def stats(self) -> dict[str, int]:
        return {"stored": self.stored, "dropped": self.dropped, "waiting": len(self.lines)}

    async def flush(self) -> None:
        """Store what is waiting, once; a batch the store refuses is dropped (and counted)."""
        lines = self.lines.take()
        records = []
        for line in lines:
            try:
                record = _to_record(line)
            except (TypeError, ValidationError):
                self.refused += 1
                continue
            if faults(record):  # a store would refuse the whole batch for it
                self.refused += 1
            else:
                records.append(record)
        if not records:
            return
        try:
            await self.store.append(records)
        except Exception:
            self.refused += len(records)
            logger.exception("could not store {} own log lines", len(records))
        else:
            self.stored += len(records)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.flush()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[StoreSink]:
        """Capture and store this process's lines while the block runs; one last flush on exit."""
        sink_id = logger.add(self.sink, level=self.level, format="{message}", catch=True,
                             filter=lambda record: record["name"] != __name__)
        task = asyncio.create_task(self._run(), name="own-logs")
        try:
            yield self
        finally:
            logger.remove(sink_id)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.flush()
