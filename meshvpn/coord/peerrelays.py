"""Which nodes may relay for their network: peer relays, as Nebula's `am_relay` and Tailscale's
peer relays allow.

A LAN party's host is often the best relay its guests have: close to all of them, on a
reachable address. The admin names such nodes per network, by node name or ``tag:TAG``, in two
places that add up: `networks[].peer_relays` in coord.yaml (changed by editing the file and
restarting) and grants made with `meshvpn coord relays allow` (kept in the store, so they survive
a restart and every coord instance sharing the database sees them; `relays disallow` takes one
back). A grant never reaches beyond its network: a node relays only for the nodes of its own.
Sans-IO, mixed into `Membership` like `LanPush`.
"""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple

from meshvpn.config import check_tag
from meshvpn.coord.events import AdminError, Log
from meshvpn.coord.policy import Member, named
from meshvpn.coord.store import NodeRecord, PeerRelayGrant

CONFIG = "config"
ADMIN = "admin"


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
    find_node: Any

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


def relay_names_by_network(core: PeerRelays, networks: Iterable[str]) -> dict[str, set[str]]:
    """`peer_relay_names` of each network, for listings that show every node."""
    return {network: core.peer_relay_names(network) for network in networks}
