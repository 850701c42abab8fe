"""Pre-auth keys: the secret an admin hands to a new machine so that it may join a network.

A token reads ``mvk-<id>-<secret>``: `id` is 12 hex characters that name the key in admin
listings (taken from the secret's hash, so it needs no randomness of its own), `secret` is 32
random bytes in unpadded base64url. The server stores only a BLAKE2b hash of the secret, so a
leaked database cannot be used to join; a presented secret is hashed and compared in constant time.

A one-off key admits one node; a reusable key admits any number until it expires. Nodes admitted
by an ephemeral key are forgotten once they have been offline for a while (CI runners, containers).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from typing import Callable

from meshvpn.errors import MeshError

TOKEN_PREFIX = "mvk"
SECRET_SIZE = 32
KEY_ID_HEX = 12
_HASH_PERSON = b"meshvpn-authkey"


@dataclass(frozen=True)
class AuthKey:
    """A stored pre-auth key: the hash of its secret and the rules for using it."""

    id: str
    network: str
    secret_hash: bytes
    created: float
    """Unix time."""
    expires: float | None = None
    """Unix time after which the key admits nobody; None: never."""
    reusable: bool = False
    ephemeral: bool = False
    uses: int = 0
    """How many nodes registered with this key."""

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires


class AuthKeyRejected(MeshError):
    """A presented token does not admit its bearer; `code` is the wire error code to answer with."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def hash_secret(secret: bytes) -> bytes:
    return hashlib.blake2b(secret, digest_size=32, person=_HASH_PERSON).digest()


def create_auth_key(
    network: str,
    secret: bytes,
    now: float,
    *,
    reusable: bool = False,
    ephemeral: bool = False,
    expires_in: float | None = None,
) -> tuple[str, AuthKey]:
    """Make a key from `secret` (32 random bytes); returns the token to show once, and the record to store."""
    if len(secret) != SECRET_SIZE:
        raise ValueError(f"an auth key secret is {SECRET_SIZE} random bytes, got {len(secret)}")
    if expires_in is not None and expires_in <= 0:
        raise ValueError("expires_in must be positive")
    digest = hash_secret(secret)
    key = AuthKey(
        id=digest.hex()[:KEY_ID_HEX],
        network=network,
        secret_hash=digest,
        created=now,
        expires=None if expires_in is None else now + expires_in,
        reusable=reusable,
        ephemeral=ephemeral,
    )
    return token_for_secret(secret), key


def token_for_secret(secret: bytes) -> str:
    """The token text of a key made from `secret`: its id comes from the secret's hash, so a
    join string (`meshvpn.joinstring`) carries only the secret."""
    key_id = hash_secret(secret).hex()[:KEY_ID_HEX]
    encoded = base64.urlsafe_b64encode(secret).rstrip(b"=").decode("ascii")
    return f"{TOKEN_PREFIX}-{key_id}-{encoded}"


def parse_token(token: str) -> tuple[str, bytes]:
    """Split a token into its key id and secret; raises AuthKeyRejected if it is not one."""
    prefix, _, rest = token.partition("-")
    key_id, _, encoded = rest.partition("-")
    valid_id = len(key_id) == KEY_ID_HEX and all(c in "0123456789abcdef" for c in key_id)
    if prefix != TOKEN_PREFIX or not valid_id or len(encoded) != 43:
        raise AuthKeyRejected("auth_key_invalid", "not a meshvpn auth key")
    try:
        secret = base64.urlsafe_b64decode(encoded + "=")
    except (binascii.Error, ValueError):
        raise AuthKeyRejected("auth_key_invalid", "not a meshvpn auth key") from None
    return key_id, secret


def verify_token(token: str, find: Callable[[str], AuthKey | None], now: float) -> AuthKey:
    """The stored key `token` stands for, if it may admit a node now; else AuthKeyRejected."""
    key_id, secret = parse_token(token)
    key = find(key_id)
    if key is None or not hmac.compare_digest(hash_secret(secret), key.secret_hash):
        raise AuthKeyRejected("auth_key_invalid", "unknown auth key")
    if key.expired(now):
        raise AuthKeyRejected("auth_key_expired", f"auth key {key.id} has expired")
    if not key.reusable and key.uses > 0:
        raise AuthKeyRejected("auth_key_used", f"auth key {key.id} was already used")
    return key
