"""What a node gets from the coord as it comes online: its name and address, the relays with a
token each (bound to its key and its network), a TURN credential per TURN server (both
refreshed together while it stays online) and the access rules that concern it."""

from __future__ import annotations

from typing import Iterable, Protocol

from meshvpn.control import messages as m
from meshvpn.coord.connstate import Connection
from meshvpn.coord.policy import Member, access_for
from meshvpn.coord.settings import MembershipSettings
from meshvpn.coord.store import Network, NodeRecord
from meshvpn.relaytoken import TOKEN_REFRESH, TokenMinter, network_tag
from meshvpn.coord.turncreds import CREDENTIAL_REFRESH, TurnSecret, turn_servers


class RelayOffers(Protocol):
    """Which relays a node may use, and whether it relays (`meshvpn.coord.peerrelays.PeerRelays`)."""

    def relays_for(self, conn: Connection) -> tuple[m.RelayInfo, ...]: ...
    def relaying(self, key: bytes, network: str) -> bool: ...


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
               members: Iterable[NodeRecord], conn: Connection, relays: RelayOffers) -> m.Registered:
    """The `registered` message of `node`, online on `conn`, among the `members` of its network;
    `relays` says which relays it may use and whether it relays itself (`coord.peerrelays`)."""
    conn.offered = offer = (relays.relays_for(conn), relays.relaying(node.key, node.network))
    tokens, turn = issue(minter, offer[0], settings.turn, conn, conn.last_heard)
    conn.access = access = access_for(settings.access.get(node.network), Member(node.name, frozenset(node.tags)),
                        (Member(n.name, frozenset(n.tags)) for n in members))
    return m.Registered(
        node_key=node.key,
        name=node.name,
        address=node.address,
        network=m.NetworkInfo(network.name, network.cidr),
        relays=offer[0],
        relay_tokens=tokens,
        turn=turn,
        path_reports=True,
        access=access,
        lan_party=True,
        relaying=offer[1] or None,
    )
