"""Which nodes may relay for their network: peer relays, as Nebula's `am_relay` and Tailscale's
peer relays allow.

A LAN party's host is often the best relay its guests have: close to all of them, on a
reachable address. The admin names such nodes per network, by node name or ``tag:TAG``, in two
places that add up: `networks[].peer_relays` in coord.yaml (changed by editing the file and
restarting) and grants made with `meshvpn coord relays allow` (kept in the store, so they survive
a restart and every coord instance sharing the database sees them; `relays disallow` takes one
back). A grant never reaches beyond its network: a node relays only for the nodes of its own.

A node that registered with `peer_relays` (it relays, and takes `relays`) and that a grant
covers relays while it is online with a public endpoint (its router's mapping if it has one, else
its STUN mapping): its peers see `PeerInfo.peer_relay`, it hears `relaying` (in `registered`, then
in `relays`), and every other member that registered with `peer_relays` is offered it as one more
relay (`RelayInfo.peer`, named and keyed as the node) with a relay token of the same kind as a
server relay's. Which relays a network has is worked out again whenever something is announced
about one of its nodes (online, offline, moved, removed; here or on another coord instance), and
on every grant or tag change: `settle_peer_relays`, before the core's outputs are taken. A node on
another instance relays when that instance says so (its `PeerInfo.peer_relay`). Sans-IO, mixed
into `Membership` like `LanPush`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable, NamedTuple

from meshvpn.config import check_tag
from meshvpn.control import messages as m
from meshvpn.coord import passes
from meshvpn.coord.connstate import Connection
from meshvpn.coord.events import AdminError, Announce, Log
from meshvpn.coord.policy import Member, named
from meshvpn.coord.store import NodeRecord, PeerRelayGrant

CONFIG = "config"
ADMIN = "admin"
MAX_PEER_RELAYS = 16
"""Peer relays offered in one network at most (the first by name): every member links to each."""


class Grant(NamedTuple):
    """A peer-relay grant and where it comes from (`CONFIG` or `ADMIN`)."""

    grant: PeerRelayGrant
    source: str


class PeerRelays:
    """Mixed into `Membership`, whose state (`settings`, `store`, `_roster`, ...) it uses."""

    settings: Any
    store: Any
    _roster: Any
    _networks: dict
    _actions: list
    _online: dict
    _elsewhere: dict
    _minter: Any
    find_node: Any
    _send: Any
    _announce: Any
    _peer_relays: dict[str, tuple[m.RelayInfo, ...]]
    """The peer relays of each network as last worked out."""
    _peer_relays_stale: set[str]
    """Networks whose grants or tags changed since."""
    _grants: dict[str, tuple[str, ...]]
    """The members of each network's grants, read once from the store until they change."""

    def peer_relay_grants(self, network: str | None = None) -> list[Grant]:
        """Every grant of `network` (all networks when None): the config's, then the admins'.
        Read from the store each time: another coord instance may have written it."""
        config = [Grant(PeerRelayGrant(name, member), CONFIG)
                  for name, members in sorted(self.settings.peer_relays.items()) if network in (None, name)
                  for member in members]
        return config + [Grant(grant, ADMIN) for grant in self.store.peer_relays(network)
                         if Grant(grant, CONFIG) not in config]

    def peer_relay_names(self, network: str) -> set[str]:
        """Names of the nodes of `network` allowed to relay for it now (tags resolved)."""
        members = [Member(n.name, frozenset(n.tags)) for n in self._roster.nodes(network)]
        return named((g.grant.member for g in self.peer_relay_grants(network)), members)

    def granted_nodes(self, grant: PeerRelayGrant) -> list[str]:
        """The names of the nodes `grant` covers now (a grant may name a node yet to join)."""
        nodes = [Member(n.name, frozenset(n.tags)) for n in self._roster.nodes(grant.network)]
        return sorted(named([grant.member], nodes) & {node.name for node in nodes})

    def allow_peer_relay(self, ref: str, network: str | None = None) -> PeerRelayGrant:
        """Let the node `ref` names (or with ``tag:TAG``, every node of `network` with that tag)
        relay for its network; kept in the store. Allowing twice changes nothing."""
        grant = self._grant_of(ref, network)
        if grant not in self.store.peer_relays(grant.network):
            self.store.put_peer_relay(grant)
            self._peer_relays_stale.add(grant.network)
            self._actions.append(Log("info", "peer relay allowed", {"network": grant.network, "member": grant.member}))
        return grant

    def disallow_peer_relay(self, ref: str, network: str | None = None) -> PeerRelayGrant:
        """Take back an admin's grant; one from coord.yaml stays until the file changes."""
        grant = self._grant_of(ref, network)
        if grant in (g.grant for g in self.peer_relay_grants(grant.network) if g.source == CONFIG):
            raise AdminError(f"{grant.member} relays for {grant.network} by coord.yaml (networks[].peer_relays); "
                             "remove it there and restart")
        if grant not in self.store.peer_relays(grant.network):
            raise AdminError(f"{grant.member} has no peer-relay grant in {grant.network}")
        self.store.delete_peer_relay(grant)
        self._peer_relays_stale.add(grant.network)
        self._actions.append(Log("info", "peer relay disallowed", {"network": grant.network, "member": grant.member}))
        return grant

    def _grant_of(self, ref: str, network: str | None) -> PeerRelayGrant:
        """The grant `ref` means: a tag of `network`, or the name of the node `ref` names (in
        `network`, when given)."""
        if ref.startswith("tag:"):
            if network not in self._networks:
                raise AdminError(f"a tag needs its network: --network (one of {', '.join(sorted(self._networks))})")
            try:
                return PeerRelayGrant(network, "tag:" + check_tag(ref.removeprefix("tag:")))
            except ValueError as exc:
                raise AdminError(str(exc)) from None
        node: NodeRecord = self.find_node(ref)
        if network not in (None, node.network):
            raise AdminError(f"node {node.name} is in network {node.network}, not {network}")
        return PeerRelayGrant(node.network, node.name)

    # ----- who relays now, and who is told

    def settle_peer_relays(self) -> None:
        """Work out the peer relays of every network something was announced in (or whose grants
        or tags changed) and tell whom it concerns: each relay's peers, and every node whose
        relays or own part changed."""
        while True:
            for network in self._peer_relays_stale:
                self._grants.pop(network, None)
            networks = {a.network for a in self._actions if isinstance(a, Announce)} | self._peer_relays_stale
            self._peer_relays_stale = set()
            changed = [network for network in networks if self._rework(network)]
            if not changed:
                return

    def peer_relays_before_online(self, network: str) -> None:
        """A node of `network` is coming online: its grants are read again (another coord instance
        may have granted its name) and its network's relays worked out, so that its `registered`
        says whether it relays and offers the peer relays there are."""
        self._grants.pop(network, None)
        self._rework(network)

    def relays_for(self, conn: Connection) -> tuple[m.RelayInfo, ...]:
        """The relays `conn`'s node may use: the servers, and its network's peer relays but itself
        (offered only to nodes that take `relays`)."""
        peers = self._peer_relays.get(conn.network, ()) if conn.peer_relays else ()
        servers = self.settings.relays
        return servers + tuple(p for p in peers if p.public_key != conn.key and p.name not in {s.name for s in servers})

    def relaying(self, key: bytes, network: str) -> bool:
        return any(relay.public_key == key for relay in self._peer_relays.get(network, ()))

    def _with_relay_flag(self, info: m.PeerInfo, network: str) -> m.PeerInfo:
        """`info` of a node online here, marked when it relays for its network."""
        return replace(info, peer_relay=True) if info.online and self.relaying(info.key, network) else info

    def _rework(self, network: str) -> bool:
        """Whether `network`'s peer relays changed; tells the nodes it concerns."""
        relays = self._peer_relays_now(network)
        before = self._peer_relays.get(network, ())
        if not relays and not before:
            return False
        if relays != before:
            self._peer_relays[network] = relays
            for key in {r.public_key for r in relays} ^ {r.public_key for r in before}:
                node = self._roster.get(key)
                if node is not None and key in self._online.get(network, {}):
                    self._roster.changed(key)
                    self._announce(node, exclude=key)
        for key, conn in self._online.get(network, {}).items():
            self._offer(conn)
        return relays != before

    def _offer(self, conn: Connection) -> None:
        """Send `conn`'s node its relays, with a token each, and its own part, if either changed."""
        offer = (self.relays_for(conn), self.relaying(conn.key, conn.network))
        if not conn.peer_relays or conn.offered is None or offer == conn.offered:
            return
        conn.offered = offer
        tokens, _ = passes.issue(self._minter, offer[0], (), conn, conn.last_heard)
        self._send(conn, m.Relays(offer[0], tokens, offer[1]))

    def _peer_relays_now(self, network: str) -> tuple[m.RelayInfo, ...]:
        """The online nodes of `network` a grant covers that can relay, as relays (at most
        `MAX_PEER_RELAYS`, by name)."""
        if network not in self._grants:
            self._grants[network] = tuple(g.grant.member for g in self.peer_relay_grants(network))
        grants = self._grants[network]
        if not grants:
            return ()
        names = named(grants, (Member(n.name, frozenset(n.tags)) for n in self._roster.nodes(network)))
        relays = []
        for node in self._roster.nodes(network):
            conn = self._online.get(network, {}).get(node.key)
            if conn is not None:
                info = self._relay_info(node, conn.mapped or node.public_endpoint) if (
                    node.name in names and conn.peer_relays) else None
            else:
                elsewhere = self._elsewhere.get(node.key)
                info = None if elsewhere is None or not elsewhere.peer_relay else self._relay_info(
                    node, elsewhere.mapped_endpoint or elsewhere.public_endpoint)
            if info is not None:
                relays.append(info)
        return tuple(sorted(relays, key=lambda r: r.name)[:MAX_PEER_RELAYS])

    @staticmethod
    def _relay_info(node: NodeRecord, endpoint: m.Endpoint | None) -> m.RelayInfo | None:
        if endpoint is None:
            return None
        return m.RelayInfo(node.name, endpoint.host, endpoint.port, node.key, peer=True)


def relay_names_by_network(core: PeerRelays, networks: Iterable[str]) -> dict[str, set[str]]:
    """`peer_relay_names` of each network, for listings that show every node."""
    return {network: core.peer_relay_names(network) for network in networks}
