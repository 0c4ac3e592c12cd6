"""Password hashes for the registry's users: scrypt from the standard library, salted, in one string.

A hash reads ``scrypt$16384$8$1$<salt b64>$<key b64>`` (cost ``n``, block size ``r``, parallelism ``p``,
then the 16-byte salt and the 32-byte derived key in standard base64), so a hash keeps the cost it was
made with and a later cost change can still verify the older ones.

Both functions spend tens of milliseconds of CPU on purpose: call them through ``asyncio.to_thread``, never
on the event loop. Neither logs anything, and an error never carries the password or the hash.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

SCHEME = "scrypt"
N = 2**14
R = 8
P = 1
SALT_BYTES = 16
KEY_BYTES = 32
# What a stored hash may ask for: enough for a few doublings of today's cost, and a bound that keeps a
# tampered or foreign hash from making one check allocate gigabytes or spin for seconds.
_MAX_N = 2**17
_MAX_R = 16
_MAX_P = 4
_MAX_MEM_BYTES = 256 * 1024**2

#: The hash of a random password nobody knows, in today's parameters. A check for an unknown username
#: verifies against it, so it costs what a wrong password for a known user costs and the answer's timing
#: does not tell which usernames exist.
UNKNOWN_USER_HASH = "scrypt$16384$8$1$8sHOrGKkuTKp+3zvhDWXjg==$QY6XW64Pn/ql7eUSb+hhdjQrXbnSFUnWNjkmDbPgdLw="


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAX_MEM_BYTES, dklen=KEY_BYTES)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def hash_password(password: str) -> str:
    """A new salted hash of ``password`` (two hashes of one password differ by their salt)."""
    salt = secrets.token_bytes(SALT_BYTES)
    return f"{SCHEME}${N}${R}${P}${_b64(salt)}${_b64(_derive(password, salt, N, R, P))}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` is the one ``stored`` was made from. A hash that is not in our format, names
    costs out of bounds, or was altered is simply a mismatch (False), never an exception."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        return False
    try:
        n, r, p = (int(part) for part in parts[1:4])
        salt = base64.b64decode(parts[4], validate=True)
        expected = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error):
        return False
    # The key length is fixed: scrypt's output for a shorter length is a prefix of the longer one, so
    # accepting a truncated key would accept a weaker hash than the one that was stored.
    if len(salt) != SALT_BYTES or len(expected) != KEY_BYTES:
        return False
    if not (1 < n <= _MAX_N and n & (n - 1) == 0 and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P):
        return False
    try:
        derived = _derive(password, salt, n, r, p)
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(derived, expected)
