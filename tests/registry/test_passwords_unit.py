"""Password hashes (:mod:`registry.passwords`): the format, round trips, and refusal of anything altered."""

from __future__ import annotations

import base64

import pytest

from registry.passwords import KEY_BYTES, SALT_BYTES, UNKNOWN_USER_HASH, hash_password, verify_password

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def stored() -> str:
    return hash_password(PASSWORD)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_format(stored: str) -> None:
    scheme, n, r, p, salt, key = stored.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(base64.b64decode(salt, validate=True)) == SALT_BYTES == 16
    assert len(base64.b64decode(key, validate=True)) == KEY_BYTES == 32
    assert PASSWORD not in stored


def test_round_trip(stored: str) -> None:
    assert verify_password(PASSWORD, stored)
    unicode = "pässwörd ✓ 密码"
    assert verify_password(unicode, hash_password(unicode))


@pytest.mark.parametrize("wrong", ["", "correct horse battery stapl", "Correct horse battery staple",
                                   PASSWORD + " ", "password"])
def test_wrong_password(stored: str, wrong: str) -> None:
    assert not verify_password(wrong, stored)


def test_two_hashes_of_one_password_differ() -> None:
    first, second = hash_password(PASSWORD), hash_password(PASSWORD)
    assert first != second
    assert first.split("$")[4] != second.split("$")[4]  # the salts
    assert verify_password(PASSWORD, first) and verify_password(PASSWORD, second)


def tampered(stored: str) -> list[str]:
    scheme, n, r, p, salt, key = stored.split("$")
    raw_salt, raw_key = base64.b64decode(salt), base64.b64decode(key)
    flipped_key = bytes([raw_key[0] ^ 1]) + raw_key[1:]
    flipped_salt = raw_salt[:-1] + bytes([raw_salt[-1] ^ 0x80])
    return [
        "$".join((scheme, n, r, p, salt, b64(flipped_key))),
        "$".join((scheme, n, r, p, b64(flipped_salt), key)),
        "$".join((scheme, "8192", r, p, salt, key)),  # another cost derives another key
        "$".join((scheme, n, "4", p, salt, key)),
        "$".join((scheme, n, r, "2", salt, key)),
        # scrypt's shorter output is a prefix of the longer one: a truncated key must not pass.
        "$".join((scheme, n, r, p, salt, b64(raw_key[:16]))),
        "$".join((scheme, n, r, p, b64(raw_salt[:8]), key)),
        "$".join(("bcrypt", n, r, p, salt, key)),
        "$".join((scheme, n, r, p, salt, key, "extra")),
        "$".join((scheme, n, r, p, salt)),
        "$".join((scheme, "lots", r, p, salt, key)),
        "$".join((scheme, n, r, p, salt, key[:-2] + "!!")),  # not base64
        "$".join((scheme, "12288", r, p, salt, key)),  # not a power of two
        "$".join((scheme, str(2**30), r, p, salt, key)),  # a cost out of bounds is refused, not computed
        "$".join((scheme, n, "1000", p, salt, key)),
        "$".join((scheme, n, r, "0", salt, key)),
        "",
        "scrypt",
        PASSWORD,
    ]


def test_tampered_or_foreign_hashes_are_a_mismatch(stored: str) -> None:
    for candidate in tampered(stored):
        assert not verify_password(PASSWORD, candidate), candidate


def test_unknown_user_hash_is_a_real_hash_of_todays_cost() -> None:
    # Same format and cost as a fresh hash, so that checking against it costs what a real check costs.
    assert UNKNOWN_USER_HASH.split("$")[:4] == hash_password("x").split("$")[:4]
    _, _, _, _, salt, key = UNKNOWN_USER_HASH.split("$")
    assert len(base64.b64decode(salt, validate=True)) == SALT_BYTES
    assert len(base64.b64decode(key, validate=True)) == KEY_BYTES
    for guess in ("", "password", PASSWORD, "admin"):
        assert not verify_password(guess, UNKNOWN_USER_HASH)
