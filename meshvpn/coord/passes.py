"""What an online node carries from the coord to use relays: a relay token per relay (bound to
its key and its network) and a TURN credential per TURN server, refreshed together."""

from __future__ import annotations

from meshvpn.control import messages as m
from meshvpn.coord.connstate import Connection
from meshvpn.relaytoken import TOKEN_REFRESH, TokenMinter, network_tag
from meshvpn.turncreds import CREDENTIAL_REFRESH, TurnSecret, turn_servers


def issue(
    minter: TokenMinter | None, relays: tuple[m.RelayInfo, ...], turn: tuple[TurnSecret, ...],
    conn: Connection, now: float,
) -> tuple[tuple[m.RelayToken, ...], tuple[m.TurnServer, ...] | None]:
    """Fresh relay tokens and TURN credentials for the online node of `conn`; sets when the next
    batch is due (`conn.tokens_due`), or leaves it if there is nothing to refresh."""
    tokens: tuple[m.RelayToken, ...] = ()
    if minter is not None and relays:
        conn.tokens_due = now + TOKEN_REFRESH
        assert conn.network is not None
        tag = network_tag(conn.network)
        tokens = tuple(m.RelayToken(relay.name, *_mint(minter, relay, conn.key, tag, now)) for relay in relays)
    if not turn:
        return tokens, None
    conn.tokens_due = now + CREDENTIAL_REFRESH
    return tokens, turn_servers(turn, conn.key, now)


def _mint(minter: TokenMinter, relay: m.RelayInfo, node_key: bytes, tag: bytes, now: float) -> tuple[bytes, float]:
    token, expires = minter.mint(relay.public_key, node_key, now, network=tag)
    return token, float(expires)
