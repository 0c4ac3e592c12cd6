"""Upkeep locks in Redis, shared by every scheduler on the store: ``{p}:lock:{name}`` holds the holder's
name and expires on its own (``PX``), so a holder that died frees the lock when its time runs out.

Taking the lock is ``SET key holder NX PX ttl``, done in a script with its renewal: the holder that has
the lock extends it, and nobody else can, in one atomic step. Giving it up deletes the key only when it
is still the holder's (a lock that ran out and was taken by another is not taken from them).
"""

from __future__ import annotations

# ARGV: key, holder, ttl in ms. Returns 1 when ``holder`` has the lock now, 0 when another has it.
ACQUIRE = """
local key, holder, ttl = ARGV[1], ARGV[2], ARGV[3]
local current = redis.call('GET', key)
if current == holder then
  redis.call('PEXPIRE', key, ttl)
  return 1
end
if redis.call('SET', key, holder, 'NX', 'PX', ttl) then return 1 end
return 0
"""

# ARGV: key, holder. Returns 1 when the holder had the lock (now free), else 0.
RELEASE = """
if redis.call('GET', ARGV[1]) == ARGV[2] then return redis.call('DEL', ARGV[1]) end
return 0
"""


def lock_key(prefix: str, name: str) -> str:
    return f"{prefix}:lock:{name}"
