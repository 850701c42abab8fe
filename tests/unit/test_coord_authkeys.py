"""Pre-auth keys: token format, hash-only storage, and every refusal code."""

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn.coord.authkeys import AuthKeyRejected, create_auth_key, hash_secret, parse_token, verify_token

SECRET = bytes(range(32))
NOW = 1_700_000_000.0


def make(**options):
    token, key = create_auth_key("home", SECRET, NOW, **options)
    return token, key, {key.id: key}.get


def test_token_format_and_stored_hash():
    token, key, _ = make()
    prefix, key_id, secret = token.split("-", 2)
    assert (prefix, key_id) == ("mvk", key.id)
    assert len(key_id) == 12 and len(secret) == 43
    assert key.secret_hash == hash_secret(SECRET) != SECRET
    assert parse_token(token) == (key.id, SECRET)


def test_valid_token_admits():
    token, key, find = make(expires_in=60)
    assert verify_token(token, find, NOW + 59.9) == key


@pytest.mark.parametrize(
    "mutate, code",
    [
        (lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"), "auth_key_invalid"),
        (lambda t: "xyz" + t[3:], "auth_key_invalid"),
        (lambda t: t[:4] + "000000000000" + t[16:], "auth_key_invalid"),
        (lambda t: t + "A", "auth_key_invalid"),
        (lambda t: "", "auth_key_invalid"),
    ],
)
def test_tampered_tokens_are_invalid(mutate, code):
    token, _, find = make()
    with pytest.raises(AuthKeyRejected) as raised:
        verify_token(mutate(token), find, NOW)
    assert raised.value.code == code


def test_expired_key_is_refused_at_its_deadline():
    token, _, find = make(expires_in=60)
    with pytest.raises(AuthKeyRejected) as raised:
        verify_token(token, find, NOW + 60)
    assert raised.value.code == "auth_key_expired"


def test_one_off_key_is_refused_once_used_and_reusable_is_not():
    token, key, _ = make()
    with pytest.raises(AuthKeyRejected) as raised:
        verify_token(token, {key.id: replace(key, uses=1)}.get, NOW)
    assert raised.value.code == "auth_key_used"
    token, key, _ = make(reusable=True)
    assert verify_token(token, {key.id: replace(key, uses=5)}.get, NOW).uses == 5


def test_secret_must_be_32_bytes_and_expiry_positive():
    with pytest.raises(ValueError):
        create_auth_key("home", b"short", NOW)
    with pytest.raises(ValueError):
        create_auth_key("home", SECRET, NOW, expires_in=0)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_arbitrary_tokens_are_rejected_with_a_code(token):
    _, key, find = make()
    with pytest.raises(AuthKeyRejected) as raised:
        verify_token(token, find, NOW)
    assert raised.value.code == "auth_key_invalid"
