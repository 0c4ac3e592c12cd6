"""The queue store in Redis, for many scheduler processes: ``redis://host:port/db?prefix=NAME``.

Every key starts with ``prefix`` (default ``conveyor``), so one Redis can hold several deployments (and
each test its own)::

    {p}:seq             INCR counter: the ``seq`` of each enqueue and redrive
    {p}:queues          set of every queue that ever held an entry
    {p}:job:{id}        hash: queue, state, ready_at, member, attempt, max_attempts, lease_id,
                        lease_expires_at, job (JSON), error, died_at, cancel ("1" once flagged)
    {p}:ready:{queue}   sorted set of ready and delayed entries: score ready_at, member "{seq:016d}:{id}",
                        so entries due at the same time sort by seq (FIFO)
    {p}:leased:{queue}  sorted set of leased job ids by lease expiry
    {p}:dead:{queue}    sorted set of dead job ids by time of death
    {p}:counters:{queue} hash: enqueued, dequeued, acked, nacked, expired
    {p}:lock:{name}     an upkeep lock's holder, expiring on its own (:mod:`scheduler.store.redis_locks`)

A queue's length (entries not dead) is the size of its ready set plus its leased set.

Every move between states is one Lua script, so it is atomic across processes, and a batch is one script
too: an enqueue of many jobs, a dequeue of many and :meth:`RedisQueueStore.ack_many` are one round trip
each, whatever their size (``tests/scheduler/test_redis_round_trips.py`` counts them). The scripts build key
names from the prefix themselves: fine on one Redis, not on Redis Cluster. Times are passed in as the
caller's ``now`` (never Redis ``TIME``) and handed to Redis as strings, because Lua would round them.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta, timezone
from typing import Any, ParamSpec, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

from scheduler.store import redis_locks
from scheduler.store.base import (
    CancelOutcome,
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
)
from shared.contract import Delivery, QueuedJob, RetryPolicy
from shared.redis_conn import close_redis

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

# ARGV: prefix, queue, now, max length (0: none), then of each job: id, job JSON, the attempt that is its
# last (attempts made + max attempts), the attempts made, and its max attempts (the budget a redrive gives).
# Returns {1, one 0/1 a job} or, when the queue is full, {0, its length} having changed nothing.
_ENQUEUE = """
local p, q, now, max = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if max > 0 then
  local new, seen = 0, {}
  for i = 5, #ARGV, 5 do
    local id = ARGV[i]
    if not seen[id] and redis.call('EXISTS', p .. ':job:' .. id) == 0 then new = new + 1 end
    seen[id] = true
  end
  if new > 0 then
    local length = redis.call('ZCARD', p .. ':ready:' .. q) + redis.call('ZCARD', p .. ':leased:' .. q)
    if length + new > max then return {0, length} end
  end
end
local out, added = {}, 0
for i = 5, #ARGV, 5 do
  local id = ARGV[i]
  local key = p .. ':job:' .. id
  if redis.call('EXISTS', key) == 1 then
    out[#out + 1] = 0
  else
    local member = string.format('%016d:%s', redis.call('INCR', p .. ':seq'), id)
    redis.call('HSET', key, 'queue', q, 'state', 'ready', 'ready_at', now, 'member', member,
               'attempt', ARGV[i + 3], 'max_attempts', ARGV[i + 2], 'budget', ARGV[i + 4], 'job', ARGV[i + 1])
    redis.call('ZADD', p .. ':ready:' .. q, now, member)
    out[#out + 1] = 1
    added = added + 1
  end
end
if added > 0 then
  redis.call('SADD', p .. ':queues', q)
  redis.call('HINCRBY', p .. ':counters:' .. q, 'enqueued', added)
end
return {1, out}
"""

# ARGV: prefix, now, lease expiry, max jobs, a random token (each lease id is it plus a number), the queues.
_DEQUEUE = """
local p, now, expires, max, token = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local nq = #ARGV - 5
local cands = {}
for i = 1, nq do
  local q = ARGV[5 + i]
  local items = redis.call('ZRANGEBYSCORE', p .. ':ready:' .. q, '-inf', now, 'WITHSCORES', 'LIMIT', 0, max)
  for j = 1, #items, 2 do
    cands[#cands + 1] = {tonumber(items[j + 1]), items[j], q}
  end
end
if nq > 1 then
  table.sort(cands, function(a, b)
    if a[1] ~= b[1] then return a[1] < b[1] end
    return a[2] < b[2]
  end)
end
local out = {}
for k = 1, math.min(max, #cands) do
  local q, member = cands[k][3], cands[k][2]
  local id = string.sub(member, 18)
  local key = p .. ':job:' .. id
  local lease = token .. '-' .. k
  redis.call('ZREM', p .. ':ready:' .. q, member)
  local attempt = redis.call('HINCRBY', key, 'attempt', 1)
  redis.call('HSET', key, 'state', 'leased', 'lease_id', lease, 'lease_expires_at', expires)
  redis.call('ZADD', p .. ':leased:' .. q, expires, id)
  redis.call('HINCRBY', p .. ':counters:' .. q, 'dequeued', 1)
  out[#out + 1] = {q, attempt, lease, redis.call('HGET', key, 'job')}
end
return out
"""

# Every lease script starts the same way: the entry must be leased under the lease id given.
_LEASE_CHECK = """
local p, id, lease = ARGV[1], ARGV[2], ARGV[3]
local key = p .. ':job:' .. id
local f = redis.call('HMGET', key, 'state', 'lease_id', 'queue', 'member', 'ready_at')
if f[1] ~= 'leased' or f[2] ~= lease then return 0 end
local q = f[3]
"""

_ACK = _LEASE_CHECK + """
redis.call('DEL', key)
redis.call('ZREM', p .. ':leased:' .. q, id)
redis.call('HINCRBY', p .. ':counters:' .. q, 'acked', 1)
return 1
"""

# ARGV: prefix, then of each lease: job id, lease id. Acks each on its own, as _ACK does; returns one 0/1 a
# lease (0: lost). One round trip for the batch.
_ACK_MANY = """
local p = ARGV[1]
local out, acked = {}, {}
for i = 2, #ARGV, 2 do
  local id, lease = ARGV[i], ARGV[i + 1]
  local key = p .. ':job:' .. id
  local f = redis.call('HMGET', key, 'state', 'lease_id', 'queue')
  if f[1] == 'leased' and f[2] == lease then
    redis.call('DEL', key)
    redis.call('ZREM', p .. ':leased:' .. f[3], id)
    acked[f[3]] = (acked[f[3]] or 0) + 1
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
for q, n in pairs(acked) do redis.call('HINCRBY', p .. ':counters:' .. q, 'acked', n) end
return out
"""

# ARGV after the check's three: dead (1/0), ready_at or died_at, has error (1/0), error.
# Returns 1, or 2 when the entry was flagged for cancel and so forgotten (whatever the caller decided).
_NACK = _LEASE_CHECK + """
redis.call('ZREM', p .. ':leased:' .. q, id)
redis.call('HINCRBY', p .. ':counters:' .. q, 'nacked', 1)
if redis.call('HEXISTS', key, 'cancel') == 1 then
  redis.call('DEL', key)
  return 2
end
redis.call('HDEL', key, 'lease_id', 'lease_expires_at')
if ARGV[6] == '1' then redis.call('HSET', key, 'error', ARGV[7]) else redis.call('HDEL', key, 'error') end
if ARGV[4] == '1' then
  redis.call('HSET', key, 'state', 'dead', 'died_at', ARGV[5])
  redis.call('ZADD', p .. ':dead:' .. q, ARGV[5], id)
else
  redis.call('HSET', key, 'state', 'ready', 'ready_at', ARGV[5])
  redis.call('ZADD', p .. ':ready:' .. q, ARGV[5], f[4])
end
return 1
"""

_RELEASE = _LEASE_CHECK + """
redis.call('ZREM', p .. ':leased:' .. q, id)
redis.call('HDEL', key, 'lease_id', 'lease_expires_at')
redis.call('HINCRBY', key, 'attempt', -1)
redis.call('HSET', key, 'state', 'ready')
redis.call('ZADD', p .. ':ready:' .. q, f[5], f[4])
return 1
"""

# ARGV after the check's three: the new expiry. Returns 1, or 2 when the entry is flagged for cancel.
_EXTEND = _LEASE_CHECK + """
redis.call('HSET', key, 'lease_expires_at', ARGV[4])
redis.call('ZADD', p .. ':leased:' .. q, ARGV[4], id)
return 1 + redis.call('HEXISTS', key, 'cancel')
"""

_EXPIRE = """
local p, now = ARGV[1], ARGV[2]
local out = {}
for _, q in ipairs(redis.call('SMEMBERS', p .. ':queues')) do
  local lk = p .. ':leased:' .. q
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', lk, '-inf', now)) do
    local key = p .. ':job:' .. id
    local f = redis.call('HMGET', key, 'attempt', 'max_attempts', 'member', 'cancel')
    redis.call('ZREM', lk, id)
    if f[1] then
      local attempt = tonumber(f[1])
      local dead, cancelled = 0, 0
      redis.call('HDEL', key, 'lease_id', 'lease_expires_at')
      if f[4] then
        cancelled = 1
        redis.call('DEL', key)
      elseif attempt >= tonumber(f[2]) then
        dead = 1
        redis.call('HSET', key, 'state', 'dead', 'died_at', now, 'error', 'lease expired')
        redis.call('ZADD', p .. ':dead:' .. q, now, id)
      else
        redis.call('HSET', key, 'state', 'ready', 'ready_at', now)
        redis.call('ZADD', p .. ':ready:' .. q, now, f[3])
      end
      redis.call('HINCRBY', p .. ':counters:' .. q, 'expired', 1)
      out[#out + 1] = {id, q, attempt, dead, cancelled}
    end
  end
end
return out
"""

# Forgets a ready, delayed or dead entry: the end of both the remove and the cancel scripts.
_FORGET_HELD = """
if f[1] == 'dead' then
  redis.call('ZREM', p .. ':dead:' .. f[2], id)
else
  redis.call('ZREM', p .. ':ready:' .. f[2], f[3])
end
redis.call('DEL', key)
"""

_REMOVE = """
local p, id = ARGV[1], ARGV[2]
local key = p .. ':job:' .. id
local f = redis.call('HMGET', key, 'state', 'queue', 'member')
if not f[1] or f[1] == 'leased' then return 0 end
""" + _FORGET_HELD + """
return 1
"""

_CANCEL = """
local p, id = ARGV[1], ARGV[2]
local key = p .. ':job:' .. id
local f = redis.call('HMGET', key, 'state', 'queue', 'member')
if not f[1] then return 'absent' end
if f[1] == 'leased' then
  redis.call('HSET', key, 'cancel', '1')
  return 'flagged'
end
""" + _FORGET_HELD + """
return 'removed'
"""

# One consistent snapshot: {queue, length} for every queue that ever held an entry.
_LENGTHS = """
local p = ARGV[1]
local out = {}
for _, q in ipairs(redis.call('SMEMBERS', p .. ':queues')) do
  out[#out + 1] = {q, redis.call('ZCARD', p .. ':ready:' .. q) + redis.call('ZCARD', p .. ':leased:' .. q)}
end
return out
"""

# ARGV: prefix, now, mode ('ids' or 'all'), then the ids, or the one queue ('' for every queue).
_REDRIVE = """
local p, now, mode = ARGV[1], ARGV[2], ARGV[3]
local dead = {}
if mode == 'ids' then
  for i = 4, #ARGV do
    local f = redis.call('HMGET', p .. ':job:' .. ARGV[i], 'state', 'queue', 'died_at')
    if f[1] == 'dead' then dead[#dead + 1] = {tonumber(f[3]), ARGV[i], f[2]} end
  end
else
  local queues = {ARGV[4]}
  if ARGV[4] == '' then queues = redis.call('SMEMBERS', p .. ':queues') end
  for _, q in ipairs(queues) do
    local items = redis.call('ZRANGE', p .. ':dead:' .. q, 0, -1, 'WITHSCORES')
    for j = 1, #items, 2 do dead[#dead + 1] = {tonumber(items[j + 1]), items[j], q} end
  end
end
table.sort(dead, function(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  return a[2] < b[2]
end)
for _, d in ipairs(dead) do
  local id, q = d[2], d[3]
  local key = p .. ':job:' .. id
  local member = string.format('%016d:%s', redis.call('INCR', p .. ':seq'), id)
  redis.call('ZREM', p .. ':dead:' .. q, id)
  redis.call('HDEL', key, 'error', 'died_at')
  -- Attempts go on (fencing needs them to grow); the budget starts again from here.
  local f = redis.call('HMGET', key, 'attempt', 'budget', 'max_attempts')
  local budget = tonumber(f[2]) or tonumber(f[3])
  redis.call('HSET', key, 'state', 'ready', 'ready_at', now, 'member', member,
             'max_attempts', tonumber(f[1]) + budget)
  redis.call('ZADD', p .. ':ready:' .. q, now, member)
end
return #dead
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

    @classmethod
    def from_url(cls, url: str) -> RedisQueueStore:
        """``redis://host:port/db?prefix=NAME``: the ``prefix`` parameter is ours, the rest goes to redis-py."""
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        prefix = next((v for k, v in query if k == "prefix"), "") or "conveyor"
        rest = urlencode([(k, v) for k, v in query if k != "prefix"])
        return cls(urlunsplit(parts._replace(query=rest)), prefix=prefix)

    async def open(self) -> None:
        self._redis = aioredis.from_url(self.url, decode_responses=True)
        self._scripts = {
            name: self._redis.register_script(lua)
            for name, lua in (("enqueue", _ENQUEUE), ("dequeue", _DEQUEUE), ("ack", _ACK), ("ack_many", _ACK_MANY),
                              ("nack", _NACK),
                              ("release", _RELEASE), ("extend", _EXTEND), ("expire", _EXPIRE),
                              ("remove", _REMOVE), ("cancel", _CANCEL), ("lengths", _LENGTHS),
                              ("redrive", _REDRIVE), ("lock", redis_locks.ACQUIRE), ("unlock", redis_locks.RELEASE))
        }

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
                     job.attempts_made, job.retry.max_attempts]
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
                                         int(error is not None), error or ""])
        if not moved:
            raise LeaseLost(str(job_id))
        if moved == 2:
            return NackOutcome(dead=False, attempt=attempt, cancelled=True)
        return NackOutcome(dead=dead, attempt=attempt, ready_at=None if dead else at)

    @_translated
    async def release(self, job_id: uuid.UUID, lease_id: str, now: datetime) -> None:
        if not await self._run("release", [self.prefix, str(job_id), lease_id]):
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
            for queue in dict.fromkeys(queues):
                pipe.zrange(self._key("ready", queue), 0, 0, withscores=True)
            tops = await pipe.execute()
        due = [top[0][1] for top in tops if top]
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
    async def dead_letters(self, queue: str | None, limit: int = 100) -> list[DeadLetter]:
        client = self._client()
        queues = [queue] if queue is not None else sorted(await client.smembers(self._key("queues")))
        async with client.pipeline(transaction=False) as pipe:
            for name in queues:
                pipe.zrange(self._key("dead", name), 0, limit - 1, withscores=True)
            per_queue = await pipe.execute()
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
        return await self._scripts[script](keys=[], args=args)
