"""Relay tokens: minted by the coordination server, opened only by the relay they name."""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn import keys
from meshvpn.errors import LocalProtocolError
from meshvpn.relaytoken import TOKEN_LEN, TOKEN_LIFETIME, TokenError, TokenMinter, TokenVerifier

NOW = 1_700_000_000.0
COORD = bytes(range(32))
RELAY = bytes(range(1, 33))
OTHER_RELAY = bytes(range(2, 34))
NODE = bytes([7]) * 32


def counting_random():
    counter = itertools.count()
    return lambda n: next(counter).to_bytes(n, "little")


@pytest.fixture
def minter():
    return TokenMinter(COORD, counting_random())


@pytest.fixture
def verifier():
    return TokenVerifier(RELAY, keys.public_key(COORD))


def test_a_minted_token_verifies_for_its_node_until_it_expires(minter, verifier):
    token, expires = minter.mint(keys.public_key(RELAY), NODE, NOW)
    assert len(token) == TOKEN_LEN == 80
    assert expires == int(NOW + TOKEN_LIFETIME)
    grant = verifier.verify(token, NODE, NOW + TOKEN_LIFETIME - 1)
    assert grant.node_key == NODE and grant.expires == expires
    with pytest.raises(TokenError, match="expired") as info:
        verifier.verify(token, NODE, NOW + TOKEN_LIFETIME)
    assert info.value.reason == "expired"


def test_every_token_has_a_fresh_nonce(minter):
    first, _ = minter.mint(keys.public_key(RELAY), NODE, NOW)
    second, _ = minter.mint(keys.public_key(RELAY), NODE, NOW)
    assert first != second


def test_a_token_names_its_node(minter, verifier):
    token, _ = minter.mint(keys.public_key(RELAY), NODE, NOW)
    with pytest.raises(TokenError, match="another node"):
        verifier.verify(token, bytes([8]) * 32, NOW)


def test_a_token_for_another_relay_does_not_open(minter, verifier):
    token, _ = minter.mint(keys.public_key(OTHER_RELAY), NODE, NOW)
    with pytest.raises(TokenError, match="authentication"):
        verifier.verify(token, NODE, NOW)


def test_a_token_from_another_coord_does_not_open(verifier):
    rogue = TokenMinter(bytes([9]) * 32, counting_random())
    token, _ = rogue.mint(keys.public_key(RELAY), NODE, NOW)
    with pytest.raises(TokenError, match="authentication"):
        verifier.verify(token, NODE, NOW)


@pytest.mark.parametrize("index", [0, 30, 79])
def test_any_flipped_bit_is_refused(minter, verifier, index):
    token = bytearray(minter.mint(keys.public_key(RELAY), NODE, NOW)[0])
    token[index] ^= 1
    with pytest.raises(TokenError):
        verifier.verify(bytes(token), NODE, NOW)


def test_minting_checks_its_arguments(minter):
    with pytest.raises(LocalProtocolError):
        minter.mint(keys.public_key(RELAY), b"short", NOW)
    with pytest.raises(LocalProtocolError):
        minter.mint(bytes(32), NODE, NOW)


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=200), st.binary(min_size=TOKEN_LEN, max_size=TOKEN_LEN)))
def test_garbage_raises_only_token_error(data):
    with pytest.raises(TokenError):
        TokenVerifier(RELAY, keys.public_key(COORD)).open(data)
