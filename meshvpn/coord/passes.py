"""What a node gets from the coord as it comes online: its name and address, the relays with a
token each (bound to its key and its network), a TURN credential per TURN server (both
refreshed together while it stays online) and the access rules that concern it."""

from __future__ import annotations

from typing import Iterable

from meshvpn.control import messages as m
from meshvpn.coord.connstate import Connection
from meshvpn.coord.policy import Member, access_for
from meshvpn.coord.settings import MembershipSettings
from meshvpn.coord.store import Network, NodeRecord
from meshvpn.relaytoken import TOKEN_REFRESH, TokenMinter, network_tag
from meshvpn.coord.turncreds import CREDENTIAL_REFRESH, TurnSecret, turn_servers


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


def registered(minter: TokenMinter | None, settings: MembershipSettings, network: Network, node: NodeRecord,
               members: Iterable[NodeRecord], conn: Connection) -> m.Registered:
    """The `registered` message of `node`, online on `conn`, among the `members` of its network."""
    tokens, turn = issue(minter, settings.relays, settings.turn, conn, conn.last_heard)
    conn.access = access = access_for(settings.access.get(node.network), Member(node.name, frozenset(node.tags)),
                        (Member(n.name, frozenset(n.tags)) for n in members))
    return m.Registered(
        node_key=node.key,
        name=node.name,
        address=node.address,
        network=m.NetworkInfo(network.name, network.cidr),
        relays=settings.relays,
        relay_tokens=tokens,
        turn=turn,
        path_reports=True,
        access=access,
        lan_party=True,
    )
