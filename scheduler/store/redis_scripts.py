"""The Lua scripts of :mod:`scheduler.store.redis`: every move of a queue entry is one of them, atomic
across scheduler processes. The keys (``{p}`` is the store's prefix)::

    {p}:seq             INCR counter: the ``seq`` of each enqueue and redrive
    {p}:queues          set of every queue that ever held an entry
    {p}:job:{id}        hash: queue, state, ready_at, member, attempt, max_attempts, budget, priority,
                        lease_id, lease_expires_at, job (JSON), error, died_at, cancel ("1" once flagged)
    {p}:ready:{queue}   sorted set of the waiting (ready and delayed) entries: score ready_at, member
                        "{seq:016d}:{id}"; what lengths, stats and next_ready_at read
    {p}:due:{queue}     the waiting entries found due, all of score 0, so that they sort by member:
                        "{100 - priority:03d}:{ready_at in µs:017d}:" and their ready member; ZRANGE gives
                        the order of handing out (higher priority first, then the smallest ready_at, seq)
    {p}:later:{queue}   the waiting entries not found due yet: score ready_at
    {p}:leased:{queue}  sorted set of leased job ids by lease expiry
    {p}:dead:{queue}    sorted set of dead job ids by time of death
    {p}:paused          set of the paused queues
    {p}:counters:{queue} hash: enqueued, dequeued, acked, nacked, expired
    {p}:lock:{name}     an upkeep lock's holder, expiring on its own (:mod:`scheduler.store.redis_locks`)

``ready`` is always ``due`` and ``later`` together. An entry starts waiting in ``due`` when it is ready at
the ``now`` of the move (an enqueue without a later run_at, an expired lease, a redrive) and in ``later``
otherwise; a dequeue moves what fell due from ``later`` to ``due`` first. A store written before
priorities has only ``ready`` sets (and no priority in its entries: 0): :data:`MIGRATE` puts their entries
in ``later`` when the store opens, and the dequeues sort them out.

Members of one score sort byte by byte, and the fields of a due member have fixed widths, so its order is
exactly (-priority, ready_at, seq). Times come in as the caller's ``now`` (never Redis ``TIME``), as
strings, because Lua would round them; in a due member, a time is whole microseconds (a Lua number holds
them exactly until the year 2255).
"""

from shared.contract import MAX_PRIORITY

#: The most delayed entries of a queue one dequeue moves to its due set: a large batch falling due at
#: once is spread over several dequeues (each still picks the best of what is due by then), so that no
#: script holds Redis for long.
PROMOTE_MAX = 5000

# micros(at): a time as whole microseconds. due_member(key, member, at): an entry's member of its due set
# (its hash at key, its ready member, its ready_at). parse_due(dm): its priority field, time, seq, ready
# member and job id, as numbers where they are.
DUE = f"""
local PROMOTE_MAX = {PROMOTE_MAX}
local function micros(at)
  return math.max(0, math.floor((tonumber(at) or 0) * 1000000 + 0.5))
end
local function due_member(key, member, at)
  local priority = tonumber(redis.call('HGET', key, 'priority')) or 0
  return string.format('%03d:%017d:', {MAX_PRIORITY} - priority, micros(at)) .. member
end
local function parse_due(dm)
  return tonumber(string.sub(dm, 1, 3)), tonumber(string.sub(dm, 5, 21)), tonumber(string.sub(dm, 23, 38)),
         string.sub(dm, 23), string.sub(dm, 40)
end
"""

# wait(p, q, key, member, at, now): the entry waits from ``at`` (a string) in queue q: due when at <= now.
WAIT = DUE + """
local function wait(p, q, key, member, at, now)
  redis.call('ZADD', p .. ':ready:' .. q, at, member)
  if tonumber(at) <= tonumber(now) then
    redis.call('ZADD', p .. ':due:' .. q, 0, due_member(key, member, at))
  else
    redis.call('ZADD', p .. ':later:' .. q, at, member)
  end
end
"""

# ARGV: prefix, queue, now, max length (0: none), then of each job: id, job JSON, the attempt that is its
# last (attempts made + max attempts), the attempts made, its max attempts (the budget a redrive gives), its
# ready_at (now, or its run_at when later) and its priority.
# Returns {1, one 0/1 a job} or, when the queue is full, {0, its length} having changed nothing.
ENQUEUE = WAIT + """
local p, q, now, max = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if max > 0 then
  local new, seen = 0, {}
  for i = 5, #ARGV, 7 do
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
for i = 5, #ARGV, 7 do
  local id = ARGV[i]
  local key = p .. ':job:' .. id
  if redis.call('EXISTS', key) == 1 then
    out[#out + 1] = 0
  else
    local member = string.format('%016d:%s', redis.call('INCR', p .. ':seq'), id)
    redis.call('HSET', key, 'queue', q, 'state', 'ready', 'ready_at', ARGV[i + 5], 'member', member,
               'attempt', ARGV[i + 3], 'max_attempts', ARGV[i + 2], 'budget', ARGV[i + 4], 'job', ARGV[i + 1],
               'priority', ARGV[i + 6])
    wait(p, q, key, member, ARGV[i + 5], now)
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
# Paused queues are passed over. Of each queue: the delayed entries due by now go to its due set (at most PROMOTE_MAX a call), then its
# first due entries are the candidates, each checked against now (one found due by a dequeue whose now was
# later than ours goes back to wait). The candidates of all queues are merged in the same order.
DEQUEUE = DUE + """
local p, now, expires, max, token = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local t = micros(ARGV[2])
local cands, queues = {}, {}
for i = 6, #ARGV do
  if redis.call('SISMEMBER', p .. ':paused', ARGV[i]) == 0 then queues[#queues + 1] = ARGV[i] end
end
for _, q in ipairs(queues) do
  local due, later = p .. ':due:' .. q, p .. ':later:' .. q
  local fell = redis.call('ZRANGEBYSCORE', later, '-inf', now, 'LIMIT', 0, PROMOTE_MAX)
  if #fell > 0 then
    redis.call('ZREMRANGEBYRANK', later, 0, #fell - 1)
    for _, member in ipairs(fell) do
      local key = p .. ':job:' .. string.sub(member, 18)
      local at = redis.call('HGET', key, 'ready_at')
      if at then redis.call('ZADD', due, 0, due_member(key, member, at)) end
    end
  end
  local found = 0
  while found < max do
    local items = redis.call('ZRANGE', due, found, max - 1)
    if #items == 0 then break end
    for _, dm in ipairs(items) do
      local priority, at, seq, member, id = parse_due(dm)
      if at <= t then
        cands[#cands + 1] = {priority, at, seq, dm, q, member, id}
        found = found + 1
      else
        redis.call('ZREM', due, dm)
        local ready_at = redis.call('HGET', p .. ':job:' .. id, 'ready_at')
        if ready_at then redis.call('ZADD', later, ready_at, member) end
      end
    end
  end
end
if #queues > 1 then
  table.sort(cands, function(a, b)
    if a[1] ~= b[1] then return a[1] < b[1] end
    if a[2] ~= b[2] then return a[2] < b[2] end
    return a[3] < b[3]
  end)
end
local out = {}
for k = 1, math.min(max, #cands) do
  local dm, q, member, id = cands[k][4], cands[k][5], cands[k][6], cands[k][7]
  local key = p .. ':job:' .. id
  local lease = token .. '-' .. k
  redis.call('ZREM', p .. ':due:' .. q, dm)
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
LEASE_CHECK = """
local p, id, lease = ARGV[1], ARGV[2], ARGV[3]
local key = p .. ':job:' .. id
local f = redis.call('HMGET', key, 'state', 'lease_id', 'queue', 'member', 'ready_at')
if f[1] ~= 'leased' or f[2] ~= lease then return 0 end
local q = f[3]
"""

ACK = LEASE_CHECK + """
redis.call('DEL', key)
redis.call('ZREM', p .. ':leased:' .. q, id)
redis.call('HINCRBY', p .. ':counters:' .. q, 'acked', 1)
return 1
"""

# ARGV: prefix, then of each lease: job id, lease id. Acks each on its own, as ACK does; returns one 0/1 a
# lease (0: lost). One round trip for the batch.
ACK_MANY = """
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

# ARGV after the check's three: dead (1/0), ready_at or died_at, has error (1/0), error, now.
# Returns 1, or 2 when the entry was flagged for cancel and so forgotten (whatever the caller decided).
NACK = WAIT + LEASE_CHECK + """
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
  wait(p, q, key, f[4], ARGV[5], ARGV[8])
end
return 1
"""

# ARGV after the check's three: now.
RELEASE = WAIT + LEASE_CHECK + """
redis.call('ZREM', p .. ':leased:' .. q, id)
redis.call('HDEL', key, 'lease_id', 'lease_expires_at')
redis.call('HINCRBY', key, 'attempt', -1)
redis.call('HSET', key, 'state', 'ready')
wait(p, q, key, f[4], f[5], ARGV[4])
return 1
"""

# ARGV after the check's three: the new expiry. Returns 1, or 2 when the entry is flagged for cancel.
EXTEND = LEASE_CHECK + """
redis.call('HSET', key, 'lease_expires_at', ARGV[4])
redis.call('ZADD', p .. ':leased:' .. q, ARGV[4], id)
return 1 + redis.call('HEXISTS', key, 'cancel')
"""

EXPIRE = WAIT + """
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
        wait(p, q, key, f[3], now, now)
      end
      redis.call('HINCRBY', p .. ':counters:' .. q, 'expired', 1)
      out[#out + 1] = {id, q, attempt, dead, cancelled}
    end
  end
end
return out
"""

# Forgets a ready, delayed or dead entry: the end of both the remove and the cancel scripts.
FORGET_HELD = """
if f[1] == 'dead' then
  redis.call('ZREM', p .. ':dead:' .. f[2], id)
else
  redis.call('ZREM', p .. ':ready:' .. f[2], f[3])
  redis.call('ZREM', p .. ':due:' .. f[2], due_member(key, f[3], redis.call('HGET', key, 'ready_at')))
  redis.call('ZREM', p .. ':later:' .. f[2], f[3])
end
redis.call('DEL', key)
"""

REMOVE = DUE + """
local p, id = ARGV[1], ARGV[2]
local key = p .. ':job:' .. id
local f = redis.call('HMGET', key, 'state', 'queue', 'member')
if not f[1] or f[1] == 'leased' then return 0 end
""" + FORGET_HELD + """
return 1
"""

CANCEL = DUE + """
local p, id = ARGV[1], ARGV[2]
local key = p .. ':job:' .. id
local f = redis.call('HMGET', key, 'state', 'queue', 'member')
if not f[1] then return 'absent' end
if f[1] == 'leased' then
  redis.call('HSET', key, 'cancel', '1')
  return 'flagged'
end
""" + FORGET_HELD + """
return 'removed'
"""

# One consistent snapshot: {queue, length} for every queue that ever held an entry.
LENGTHS = """
local p = ARGV[1]
local out = {}
for _, q in ipairs(redis.call('SMEMBERS', p .. ':queues')) do
  out[#out + 1] = {q, redis.call('ZCARD', p .. ':ready:' .. q) + redis.call('ZCARD', p .. ':leased:' .. q)}
end
return out
"""

# ARGV: prefix, now, mode ('ids' or 'all'), then the ids, or the one queue ('' for every queue).
# The dead entries chosen, oldest death first, as {died_at, id, queue}: the start of REDRIVE and DISCARD.
# ARGV from the third: mode ('ids' or 'all'), then the ids, or the one queue ('' for every queue).
DEAD_CHOSEN = """
local mode = ARGV[3]
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
"""

# ARGV: prefix, now, then as DEAD_CHOSEN. Returns how many.
REDRIVE = WAIT + """
local p, now = ARGV[1], ARGV[2]
""" + DEAD_CHOSEN + """
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
  wait(p, q, key, member, now, now)
end
return #dead
"""

# ARGV: prefix, '' (no time), then as DEAD_CHOSEN. Forgets the dead entries chosen; returns their ids.
DISCARD = """
local p = ARGV[1]
""" + DEAD_CHOSEN + """
local out = {}
for _, d in ipairs(dead) do
  redis.call('ZREM', p .. ':dead:' .. d[3], d[2])
  redis.call('DEL', p .. ':job:' .. d[2])
  out[#out + 1] = d[2]
end
return out
"""

# Brings a store written before priorities (or an entry a scheduler of that time added since) to the layout
# above: an entry of a ready set in neither its due nor its later set goes to the later set. Cheap when
# nothing is missing (the sizes agree). ARGV: prefix.
MIGRATE = DUE + """
local p = ARGV[1]
local moved = 0
for _, q in ipairs(redis.call('SMEMBERS', p .. ':queues')) do
  local ready, due, later = p .. ':ready:' .. q, p .. ':due:' .. q, p .. ':later:' .. q
  if redis.call('ZCARD', ready) ~= redis.call('ZCARD', due) + redis.call('ZCARD', later) then
    local items = redis.call('ZRANGE', ready, 0, -1, 'WITHSCORES')
    for j = 1, #items, 2 do
      local key = p .. ':job:' .. string.sub(items[j], 18)
      local dm = due_member(key, items[j], redis.call('HGET', key, 'ready_at'))
      if not redis.call('ZSCORE', due, dm) and not redis.call('ZSCORE', later, items[j]) then
        redis.call('ZADD', later, items[j + 1], items[j])
        moved = moved + 1
      end
    end
  end
end
return moved
"""
