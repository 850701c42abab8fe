"""TURN REST API credentials: the coordination server's time-limited pass to a standard TURN server.

coturn (``use-auth-secret``) and most TURN servers share one secret with whoever hands out
access, and accept any username of the form ``"expiry:id"`` whose password is
``base64(HMAC-SHA1(secret, username))``, until the Unix time ``expiry``. The server needs no
user database and never talks to the coordination server; the node cannot extend its pass.
The coordination server mints one per node and TURN server, like relay tokens, and sends
fresh ones every `CREDENTIAL_REFRESH` while the node is online, so a revoked node loses TURN
within `CREDENTIAL_LIFETIME`.

Sans-IO: the caller passes ``now`` (Unix seconds).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Iterable

from meshvpn.control import messages as m
from meshvpn.keys import encode_key
from meshvpn.relaytoken import TOKEN_LIFETIME, TOKEN_REFRESH

CREDENTIAL_LIFETIME = TOKEN_LIFETIME
"""Seconds a credential stays valid after it is minted (the same as a relay token)."""
CREDENTIAL_REFRESH = TOKEN_REFRESH
"""Seconds between fresh credentials for an online node."""


@dataclass(frozen=True)
class TurnCredentials:
    """A username and password for one TURN server, valid until `expires`."""

    username: str
    password: str
    expires: int
    """Unix seconds; the TURN server refuses the credential afterwards."""


def mint(secret: bytes, node_id: str, now: float, lifetime: float = CREDENTIAL_LIFETIME) -> TurnCredentials:
    """A credential for `node_id` (the node's base64 public key) that lasts `lifetime` from `now`."""
    expires = int(now + lifetime)
    username = f"{expires}:{node_id}"
    password = base64.b64encode(hmac.new(secret, username.encode(), hashlib.sha1).digest()).decode()
    return TurnCredentials(username, password, expires)


@dataclass(frozen=True)
class TurnSecret:
    """A TURN server as the coordination server knows it: where nodes reach it, and its shared secret."""

    name: str
    host: str
    """An IP address or a DNS name, which each node resolves (`meshvpn.node.names`)."""
    port: int
    secret: bytes = field(repr=False)
    tls_port: int | None = None


def turn_servers(secrets: Iterable[TurnSecret], node_key: bytes, now: float) -> tuple[m.TurnServer, ...]:
    """Every TURN server with a fresh credential for the node `node_key`, as ``registered`` carries them."""
    out = []
    for server in secrets:
        creds = mint(server.secret, encode_key(node_key), now)
        out.append(m.TurnServer(server.name, server.host, server.port, creds.username, creds.password,
                                float(creds.expires), server.tls_port))
    return tuple(out)
