"""TURN REST API credentials (meshvpn.coord.turncreds) as coturn's use-auth-secret checks them."""

import base64
import hashlib
import hmac

from meshvpn.coord.turncreds import CREDENTIAL_LIFETIME, TurnCredentials, mint


def test_username_is_expiry_colon_node_and_password_is_base64_hmac_sha1():
    creds = mint(b"S", "node-key", 1_700_000_000.7, lifetime=600)
    assert creds.username == "1700000600:node-key" and creds.expires == 1_700_000_600
    digest = hmac.new(b"S", b"1700000600:node-key", hashlib.sha1).digest()
    assert base64.b64decode(creds.password) == digest


def test_known_vector_computed_with_openssl():
    # printf %s 1600000000:alice | openssl dgst -sha1 -hmac north -binary | base64
    assert mint(b"north", "alice", 1_600_000_000 - CREDENTIAL_LIFETIME) == TurnCredentials(
        "1600000000:alice", "gq98pTOhhHaAu0we9aV79kOVVv0=", 1_600_000_000
    )


def test_another_secret_or_node_gives_another_password():
    base = mint(b"S", "a", 0)
    assert mint(b"T", "a", 0).password != base.password
    assert mint(b"S", "b", 0).password != base.password
