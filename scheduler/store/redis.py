"""The queue store in Redis, for many scheduler processes: ``redis://host:port/db?prefix=NAME``.

Every key starts with ``prefix`` (default ``conveyor``), so one Redis can hold several deployments (and
each test its own); :mod:`scheduler.store.redis_scripts` lists the keys. A queue's length (entries not
dead) is the size of its ready set plus its leased set.

Every move between states is one Lua script (:mod:`scheduler.store.redis_scripts`), so it is atomic across
processes, and a batch is one script too: an enqueue of many jobs, a dequeue of many and
:meth:`RedisQueueStore.ack_many` are one round trip each, whatever their size
(``tests/scheduler/test_redis_round_trips.py`` counts them). The scripts build key names from the prefix
themselves: fine on one Redis, not on Redis Cluster. Times are passed in as the caller's ``now`` (never
Redis ``TIME``) and handed to Redis as strings, because Lua would round them.

A store written before priorities is brought up to date before the first script runs (the ``MIGRATE``
script): its entries keep their order, at priority 0. Every scheduler sharing a store should run the same
version: an older one would not see the entries a newer one has found due.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta, timezone
from typing import Any, ParamSpec, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

from scheduler.store import redis_locks
from scheduler.store import redis_scripts as lua
from scheduler.store.base import (
    CancelOutcome,
    DeadKey,
    DeadLetter,
    EntryState,
    ExpiredLease,
    ExtendResult,
    LeaseLost,
    NackOutcome,
    QueueFull,
    QueueStats,
    QueueStore,
    StoreUnavailable,
    backoff_delay_s,
    ready_at_of,
)
from shared.contract import Delivery, QueuedJob, RetryPolicy
from shared.redis_conn import CLOSE_TIMEOUT_S, close_redis

try:
    import redis.asyncio as aioredis
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    _UNAVAILABLE: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError)
except ImportError:  # pragma: no cover - depends on the install; RedisQueueStore() says what to do
    aioredis = None  # type: ignore[assignment]
    _UNAVAILABLE = ()

P = ParamSpec("P")
T = TypeVar("T")


# ARGV: a dead set's key, a died_at and a job id (a page's last), limit. The next entries of the set after
# (died_at, id), WITHSCORES. Members of one score sort by id, so the cursor is put in at (died_at, id) for a
# moment: its rank is how many others come before it. Then the set is made as it was again (the entry
# gone, or back at its own time: it may have died again since), and the page starts after those others,
# and after the entry itself when its own place is not later than the cursor's.
_DEAD_AFTER = """
local key, at, id = ARGV[1], ARGV[2], ARGV[3]
local was = redis.call('ZSCORE', key, id)
redis.call('ZADD', key, at, id)
local start = redis.call('ZRANK', key, id)
if was then
  redis.call('ZADD', key, was, id)
  if tonumber(was) <= tonumber(at) then start = start + 1 end
else
  redis.call('ZREM', key, id)
end
return redis.call('ZRANGE', key, start, start + tonumber(ARGV[4]) - 1, 'WITHSCORES')
"""


def _ts(dt: datetime) -> str:
    return repr(dt.timestamp())


def _dt(value: str | float) -> datetime:
    return datetime.fromtimestamp(float(value), timezone.utc)


def _translated(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Redis connection failures and timeouts become :class:`StoreUnavailable`."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc

    return wrapper


class RedisQueueStore(QueueStore):
    """Queues in Redis; see :mod:`scheduler.store.base` for the semantics and this module for the keys."""

    def __init__(self, url: str, prefix: str = "conveyor") -> None:
        if aioredis is None:
            raise RuntimeError("the Redis queue store needs the redis package: pip install 'conveyor[redis]'")
        self.url = url
        self.prefix = prefix
        self._redis: Any = None
        self._scripts: dict[str, Any] = {}
        self._migrated = False

    @classmethod
    def from_url(cls, url: str) -> RedisQueueStore:
        """``redis://host:port/db?prefix=NAME``: the ``prefix`` parameter is ours, the rest goes to redis-py."""
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        prefix = next((v for k, v in query if k == "prefix"), "") or "conveyor"
        rest = urlencode([(k, v) for k, v in query if k != "prefix"])
        return cls(urlunsplit(parts._replace(query=rest)), prefix=prefix)

    async def open(self) -> None:
        # A connect timeout bounds the disconnect too: redis-py's waits for the socket's close under it, and a
        # command cancelled at shutdown (the lease reaper's) disconnects.
        self._redis = aioredis.from_url(self.url, decode_responses=True, socket_connect_timeout=CLOSE_TIMEOUT_S)
        self._scripts = {
            name: self._redis.register_script(script)
            for name, script in (("enqueue", lua.ENQUEUE), ("dequeue", lua.DEQUEUE), ("ack", lua.ACK),
                                 ("ack_many", lua.ACK_MANY), ("nack", lua.NACK), ("release", lua.RELEASE),
                                 ("extend", lua.EXTEND), ("expire", lua.EXPIRE), ("remove", lua.REMOVE),
                                 ("cancel", lua.CANCEL), ("lengths", lua.LENGTHS), ("redrive", lua.REDRIVE), ("discard", lua.DISCARD),
                                 ("dead_after", _DEAD_AFTER),
                                 ("migrate", lua.MIGRATE), ("lock", redis_locks.ACQUIRE),
                                 ("unlock", redis_locks.RELEASE))
        }
        self._migrated = False

    async def close(self) -> None:
        if self._redis is not None:
            redis, self._redis = self._redis, None
            await close_redis(redis, "queue store")

    @_translated
    async def ping(self) -> None:
        await self._client().ping()

    @_translated
    async def enqueue(self, queue: str, jobs: list[QueuedJob], now: datetime, max_length: int = 0) -> list[bool]:
        args: list[Any] = [self.prefix, queue, _ts(now), max_length]
        for job in jobs:
            args += [str(job.id), job.model_dump_json(), job.attempts_made + job.retry.max_attempts,
                     job.attempts_made, job.retry.max_attempts, _ts(ready_at_of(job, now)), job.priority]
        done, answer = await self._run("enqueue", args)
        if not done:
            raise QueueFull(queue, int(answer), max_length)
        return [bool(a) for a in answer]

    @_translated
    async def dequeue(self, queues: list[str], max_jobs: int, lease_s: float, now: datetime) -> list[Delivery]:
        names = list(dict.fromkeys(queues))
        expires_at = _dt(now.timestamp() + lease_s)
        rows = await self._run("dequeue", [self.prefix, _ts(now), _ts(expires_at), max_jobs, uuid.uuid4().hex,
                                           *names])
        return [Delivery(job=QueuedJob.model_validate_json(job), queue=queue, attempt=int(attempt),
                         lease_id=lease_id, lease_expires_at=expires_at)
                for queue, attempt, lease_id, job in rows]

    @_translated
    async def ack(self, job_id: uuid.UUID, lease_id: str, now: datetime) -> None:
        if not await self._run("ack", [self.prefix, str(job_id), lease_id]):
            raise LeaseLost(str(job_id))

    @_translated
    async def ack_many(self, leases: list[tuple[uuid.UUID, str]], now: datetime) -> list[bool]:
        if not leases:
            return []
        args: list[Any] = [self.prefix]
        for job_id, lease_id in leases:
            args += [str(job_id), lease_id]
        return [bool(a) for a in await self._run("ack_many", args)]

    @_translated
    async def nack(self, job_id: uuid.UUID, lease_id: str, now: datetime, error: str | None,
                   delay_s: float | None = None, retry: bool = True) -> NackOutcome:
        # The backoff needs the job's retry policy: read it, decide here, then move the entry with a
        # script that checks the lease again, so a lease lost in between still fails cleanly.
        # A flag set in between is seen by the script, which then forgets the entry whatever we decided.
        state, current, attempt_s, limit_s, job = await self._client().hmget(
            self._key("job", str(job_id)), ["state", "lease_id", "attempt", "max_attempts", "job"])
        if state != "leased" or current != lease_id:
            raise LeaseLost(str(job_id))
        attempt = int(attempt_s)
        policy = RetryPolicy.model_validate(orjson.loads(job)["retry"])
        dead = not retry or attempt >= int(limit_s)  # attempts_made + max_attempts, raised by a redrive
        delay = 0.0 if dead else backoff_delay_s(policy, attempt) if delay_s is None else delay_s
        at = now + timedelta(seconds=delay)
        moved = await self._run("nack", [self.prefix, str(job_id), lease_id, int(dead), _ts(at),
                                         int(error is not None), error or "", _ts(now)])
        if not moved:
            raise LeaseLost(str(job_id))
        if moved == 2:
            return NackOutcome(dead=False, attempt=attempt, cancelled=True)
        return NackOutcome(dead=dead, attempt=attempt, ready_at=None if dead else at)

    @_translated
    async def release(self, job_id: uuid.UUID, lease_id: str, now: datetime) -> None:
        if not await self._run("release", [self.prefix, str(job_id), lease_id, _ts(now)]):
            raise LeaseLost(str(job_id))

    @_translated
    async def extend(self, job_id: uuid.UUID, lease_id: str, lease_s: float, now: datetime) -> ExtendResult:
        expires_at = _dt(now.timestamp() + lease_s)
        extended = await self._run("extend", [self.prefix, str(job_id), lease_id, _ts(expires_at)])
        if not extended:
            raise LeaseLost(str(job_id))
        return ExtendResult(lease_expires_at=expires_at, cancel_requested=extended == 2)

    @_translated
    async def expire_leases(self, now: datetime) -> list[ExpiredLease]:
        rows = await self._run("expire", [self.prefix, _ts(now)])
        return [ExpiredLease(job_id=uuid.UUID(job_id), queue=queue, attempt=int(attempt), dead=bool(dead),
                             cancelled=bool(cancelled))
                for job_id, queue, attempt, dead, cancelled in rows]

    @_translated
    async def remove(self, job_id: uuid.UUID) -> bool:
        return bool(await self._run("remove", [self.prefix, str(job_id)]))

    @_translated
    async def cancel(self, job_id: uuid.UUID) -> CancelOutcome:
        outcome: CancelOutcome = await self._run("cancel", [self.prefix, str(job_id)])
        return outcome

    @_translated
    async def contains(self, job_ids: list[uuid.UUID]) -> set[uuid.UUID]:
        ids = list(dict.fromkeys(job_ids))
        async with self._client().pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.exists(self._key("job", str(job_id)))
            found = await pipe.execute()
        return {job_id for job_id, held in zip(ids, found, strict=True) if held}

    @_translated
    async def states(self, job_ids: list[uuid.UUID], now: datetime) -> dict[uuid.UUID, EntryState]:
        ids = list(dict.fromkeys(job_ids))
        async with self._client().pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(self._key("job", str(job_id)), ["state", "ready_at"])
            rows = await pipe.execute()
        ts = now.timestamp()
        out: dict[uuid.UUID, EntryState] = {}
        for job_id, (state, ready_at) in zip(ids, rows, strict=True):
            if state is not None:
                out[job_id] = "delayed" if state == "ready" and float(ready_at) > ts else state
        return out

    @_translated
    async def lengths(self) -> dict[str, int]:
        return {queue: int(length) for queue, length in await self._run("lengths", [self.prefix])}

    @_translated
    async def next_ready_at(self, queues: list[str]) -> datetime | None:
        async with self._client().pipeline(transaction=False) as pipe:
            pipe.smembers(self._key("paused"))
            for queue in dict.fromkeys(queues):
                pipe.zrange(self._key("ready", queue), 0, 0, withscores=True)
            paused, *tops = await pipe.execute()
        due = [top[0][1] for queue, top in zip(dict.fromkeys(queues), tops, strict=True) if top and queue not in paused]
        return _dt(min(due)) if due else None

    @_translated
    async def stats(self, now: datetime) -> dict[str, QueueStats]:
        client = self._client()
        queues = sorted(await client.smembers(self._key("queues")))
        ts = _ts(now)
        async with client.pipeline(transaction=False) as pipe:
            for queue in queues:
                ready_key = self._key("ready", queue)
                pipe.zcount(ready_key, "-inf", ts)
                pipe.zcard(ready_key)
                pipe.zcard(self._key("leased", queue))
                pipe.zcard(self._key("dead", queue))
                pipe.zrangebyscore(ready_key, "-inf", ts, start=0, num=1, withscores=True)
                pipe.hgetall(self._key("counters", queue))
            answers = await pipe.execute()
        out: dict[str, QueueStats] = {}
        for n, queue in enumerate(queues):
            ready, queued, leased, dead, oldest, counters = answers[n * 6:n * 6 + 6]
            out[queue] = QueueStats(
                ready=ready, delayed=queued - ready, leased=leased, dead=dead,
                enqueued=int(counters.get("enqueued", 0)), dequeued=int(counters.get("dequeued", 0)),
                acked=int(counters.get("acked", 0)), nacked=int(counters.get("nacked", 0)),
                oldest_ready_age_s=now.timestamp() - oldest[0][1] if oldest else None,
                extra={"expired": int(counters.get("expired", 0))},
            )
        return out

    @_translated
    async def dead_letters(self, queue: str | None, limit: int = 100,
                           after: DeadKey | None = None) -> list[DeadLetter]:
        client = self._client()
        queues = [queue] if queue is not None else sorted(await client.smembers(self._key("queues")))
        if after is None:
            async with client.pipeline(transaction=False) as pipe:
                for name in queues:
                    pipe.zrange(self._key("dead", name), 0, limit - 1, withscores=True)
                per_queue = await pipe.execute()
        else:  # each queue's next ``limit`` after the key, merged: the oldest ``limit`` of them
            flat = await asyncio.gather(*(self._run("dead_after", [self._key("dead", name), _ts(after[0]),
                                                                   str(after[1]), limit]) for name in queues))
            per_queue = [list(zip(items[::2], map(float, items[1::2]), strict=True)) for items in flat]
        oldest = sorted((died_at, job_id) for items in per_queue for job_id, died_at in items)[:limit]
        async with client.pipeline(transaction=False) as pipe:
            for _, job_id in oldest:
                pipe.hmget(self._key("job", job_id), ["job", "queue", "attempt", "error", "died_at"])
            rows = await pipe.execute()
        return [DeadLetter(job=QueuedJob.model_validate_json(job), queue=q, attempt=int(attempt), error=error,
                           died_at=_dt(died_at))
                for job, q, attempt, error, died_at in rows if job is not None]

    @_translated
    async def redrive(self, job_ids: list[uuid.UUID] | None, queue: str | None, now: datetime) -> int:
        if job_ids is None:
            args = [self.prefix, _ts(now), "all", queue or ""]
        else:
            args = [self.prefix, _ts(now), "ids", *(str(i) for i in dict.fromkeys(job_ids))]
        return int(await self._run("redrive", args))

    @_translated
    async def discard(self, job_ids: list[uuid.UUID] | None, queue: str | None) -> list[uuid.UUID]:
        if job_ids is None:
            args = [self.prefix, "", "all", queue or ""]
        else:
            args = [self.prefix, "", "ids", *(str(i) for i in dict.fromkeys(job_ids))]
        return [uuid.UUID(i) for i in await self._run("discard", args)]

    @_translated
    async def set_paused(self, queue: str, paused: bool) -> bool:
        key = self._key("paused")
        client = self._client()
        changed = await (client.sadd(key, queue) if paused else client.srem(key, queue))
        return bool(changed)

    @_translated
    async def paused_queues(self) -> set[str]:
        return set(await self._client().smembers(self._key("paused")))

    def _client(self) -> Any:
        if self._redis is None:
            raise StoreUnavailable("the Redis queue store is not open")
        return self._redis

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    @_translated
    async def acquire_lock(self, name: str, holder: str, ttl_s: float, now: datetime) -> bool:
        ttl_ms = max(1, round(ttl_s * 1000))
        return bool(await self._run("lock", [redis_locks.lock_key(self.prefix, name), holder, ttl_ms]))

    @_translated
    async def release_lock(self, name: str, holder: str) -> bool:
        return bool(await self._run("unlock", [redis_locks.lock_key(self.prefix, name), holder]))

    async def _run(self, script: str, args: list[Any]) -> Any:
        self._client()
        if not self._migrated:
            # Before the first script (not in open, which makes no round trip: a scheduler starts while
            # Redis is down, and answers 503 until it is back).
            await self._scripts["migrate"](keys=[], args=[self.prefix])
            self._migrated = True
        return await self._scripts[script](keys=[], args=args)
