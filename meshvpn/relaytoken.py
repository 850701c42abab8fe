"""Relay tokens: the coordination server's word that a node may use a relay, until a deadline.

The relay keeps no link to the coordination server, so the server hands each online node one
token per relay, and the node shows it in every RELAY_HELLO::

    token = nonce (24) | crypto_box_afternm(node_key (32) | expires (u64 LE, Unix seconds),
                                            nonce, k = shared(coord, relay))  # 80 bytes

Only the server and that relay know ``k``, so a token cannot be forged, read by others or
shown to another relay; it names the node, so it is worthless without the node's private key
(the hello proves that). Tokens last `TOKEN_LIFETIME`; the server sends fresh ones every
`TOKEN_REFRESH`, so a revoked node loses every relay within `TOKEN_LIFETIME`.

Sans-IO: the caller passes ``now`` (Unix seconds) and the nonce randomness.
"""

from __future__ import annotations

import struct
from typing import Callable, NamedTuple

from nacl import bindings, exceptions

from meshvpn import wire
from meshvpn.errors import LocalProtocolError, RemoteProtocolError

TOKEN_LIFETIME = 600.0
"""Seconds a token stays valid after it is minted."""
TOKEN_REFRESH = 300.0
"""Seconds between fresh tokens for an online node: half the lifetime, so one lost batch is harmless."""

_BODY = struct.Struct(f"<{wire.KEY_LEN}sQ")
TOKEN_LEN = wire.BOX_NONCE_LEN + _BODY.size + wire.TAG_LEN


class TokenError(RemoteProtocolError):
    """A relay token is malformed, forged, expired or names another node; `reason` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"relay token {reason}")
        self.reason = reason
        """A short fixed phrase, usable as a counter label."""


class TokenGrant(NamedTuple):
    """What a valid token says."""

    node_key: bytes
    expires: int
    """Unix seconds after which the token is void."""


class TokenMinter:
    """The coordination server's side: mints tokens for any relay it knows by public key."""

    def __init__(self, coord_private: bytes, random_bytes: Callable[[int], bytes]) -> None:
        self._private = coord_private
        self._random_bytes = random_bytes
        self._keys: dict[bytes, bytes] = {}

    def mint(self, relay_public: bytes, node_key: bytes, now: float) -> tuple[bytes, int]:
        """A token letting `node_key` use the relay `relay_public`, and its expiry (Unix seconds)."""
        if len(node_key) != wire.KEY_LEN:
            raise LocalProtocolError("a node key is 32 bytes")
        key = self._keys.get(relay_public)
        if key is None:
            try:
                key = self._keys[relay_public] = wire.box_key(self._private, relay_public)
            except wire.WireError as exc:
                raise LocalProtocolError("relay public key is unusable") from exc
        expires = int(now + TOKEN_LIFETIME)
        nonce = self._random_bytes(wire.BOX_NONCE_LEN)
        return nonce + bindings.crypto_box_afternm(_BODY.pack(node_key, expires), nonce, key), expires


class TokenVerifier:
    """The relay's side: opens tokens minted for it by the one pinned coordination server."""

    def __init__(self, relay_private: bytes, coord_public: bytes) -> None:
        try:
            self._key = wire.box_key(relay_private, coord_public)
        except wire.WireError as exc:
            raise LocalProtocolError("coordination server public key is unusable") from exc

    def open(self, token: bytes) -> TokenGrant:
        """Authenticate and decode a token; raise `TokenError` if it was not minted for us."""
        if len(token) != TOKEN_LEN:
            raise TokenError(f"is not {TOKEN_LEN} bytes")
        nonce = token[: wire.BOX_NONCE_LEN]
        try:
            body = bindings.crypto_box_open_afternm(token[wire.BOX_NONCE_LEN :], nonce, self._key)
        except exceptions.CryptoError as exc:
            raise TokenError("failed authentication") from exc
        return TokenGrant(*_BODY.unpack(body))

    def verify(self, token: bytes, node_key: bytes, now: float) -> TokenGrant:
        """`open`, then require that the token names `node_key` and has not expired at `now`."""
        grant = self.open(token)
        if grant.node_key != node_key:
            raise TokenError("names another node")
        if grant.expires <= now:
            raise TokenError("expired")
        return grant
