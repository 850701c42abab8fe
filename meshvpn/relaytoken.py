"""Relay tokens: the coordination server's word that a node may use a relay, until a deadline.

The relay keeps no link to the coordination server, so the server hands each online node one
token per relay, and the node shows it in every RELAY_HELLO::

    token = nonce (24) | crypto_box_afternm(node_key (32) | expires (u32 LE, Unix seconds)
                                            | network (4), nonce, k)  # 80 bytes
    k = BLAKE2b-256(shared(coord, relay), person "meshvpn-token-2")

Only the server and that relay know ``k``, so a token cannot be forged, read by others or
shown to another relay; it names the node, so it is worthless without the node's private key
(the hello proves that). It also names the node's network (`network_tag`: the first bytes
of a hash of its name), and the relay forwards only between nodes of one network. `k` is
derived from the shared key, not the shared key itself as in the first token layout, so that
a relay of that layout refuses these tokens instead of reading the network as part of a far
expiry. Tokens last `TOKEN_LIFETIME`; the server sends fresh ones every
`TOKEN_REFRESH`, so a revoked node loses every relay within `TOKEN_LIFETIME`.

Sans-IO: the caller passes ``now`` (Unix seconds) and the nonce randomness.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Callable, NamedTuple

from nacl import bindings, exceptions

from meshvpn import wire
from meshvpn.errors import LocalProtocolError, RemoteProtocolError

TOKEN_LIFETIME = 600.0
"""Seconds a token stays valid after it is minted."""
TOKEN_REFRESH = 300.0
"""Seconds between fresh tokens for an online node: half the lifetime, so one lost batch is harmless."""

NETWORK_TAG_LEN = 4
NO_NETWORK = bytes(NETWORK_TAG_LEN)
"""The tag of tokens minted without a network: such nodes reach only each other."""
_BODY = struct.Struct(f"<{wire.KEY_LEN}sI{NETWORK_TAG_LEN}s")
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
    network: bytes = NO_NETWORK
    """The node's network (`network_tag`): the relay forwards only within it."""


def _token_key(local_private: bytes, remote_public: bytes) -> bytes:
    """The key tokens are sealed with between the coord and one relay."""
    shared = wire.box_key(local_private, remote_public)
    return hashlib.blake2b(shared, digest_size=32, person=b"meshvpn-token-2").digest()


def network_tag(name: str) -> bytes:
    """The short, stable name of a network inside tokens."""
    return hashlib.blake2b(name.encode(), digest_size=NETWORK_TAG_LEN, person=b"meshvpn-network").digest()


class TokenMinter:
    """The coordination server's side: mints tokens for any relay it knows by public key."""

    def __init__(self, coord_private: bytes, random_bytes: Callable[[int], bytes]) -> None:
        self._private = coord_private
        self._random_bytes = random_bytes
        self._keys: dict[bytes, bytes] = {}

    def mint(self, relay_public: bytes, node_key: bytes, now: float,
             network: bytes = NO_NETWORK) -> tuple[bytes, int]:
        """A token letting `node_key` of `network` use the relay `relay_public`, and its expiry."""
        if len(node_key) != wire.KEY_LEN or len(network) != NETWORK_TAG_LEN:
            raise LocalProtocolError(f"a node key is 32 bytes, a network tag {NETWORK_TAG_LEN}")
        key = self._keys.get(relay_public)
        if key is None:
            try:
                key = self._keys[relay_public] = _token_key(self._private, relay_public)
            except wire.WireError as exc:
                raise LocalProtocolError("relay public key is unusable") from exc
        expires = int(now + TOKEN_LIFETIME)
        nonce = self._random_bytes(wire.BOX_NONCE_LEN)
        return nonce + bindings.crypto_box_afternm(_BODY.pack(node_key, expires, network), nonce, key), expires


class TokenVerifier:
    """The relay's side: opens tokens minted for it by the one pinned coordination server."""

    def __init__(self, relay_private: bytes, coord_public: bytes) -> None:
        try:
            self._key = _token_key(relay_private, coord_public)
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
