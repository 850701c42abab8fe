"""What the coord tells online nodes of the LAN party while they stay online: their access rules
when the policy (a reload) or a tag (`tag`, the admin verb) changes, and each node's multicast
groups to its peers.

Why live: a LAN party changes its rules while it plays, and a node must not re-register (and
drop its tunnels) for that. A node that registered with `lan_party` gets an `access` message
whenever the rules that concern it change, and its peers' groups in `PeerInfo.groups`; older
nodes get neither (they would refuse the unknown message) and see changes when they next
register. Groups are kept per connection, not stored: a node tells them again after each
registration. Sans-IO, mixed into `Membership` like `Elsewhere`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from typing import Any, Mapping

from meshvpn.config import AccessPolicy, CoordConfig
from meshvpn.control import messages as m
from meshvpn.coord.connstate import Connection
from meshvpn.coord.events import AdminError, Log
from meshvpn.coord.policy import Member, access_for
from meshvpn.coord.store import NodeRecord


class LanPush:
    """Mixed into `Membership`, whose state (`settings`, `_roster`, `_online`, ...) it uses."""

    settings: Any
    _roster: Any
    _online: dict
    _peer_relays_stale: set[str]
    _actions: list
    _send: Any
    _announce: Any
    _log: Any
    find_node: Any

    def tag(self, ref: str, tag: str, remove: bool = False) -> NodeRecord:
        """Give a node a tag, or take it away; online nodes' rules follow at once."""
        node = self.find_node(ref)
        try:
            tagged = self._roster.tag(node, tag, remove)
        except ValueError as exc:
            raise AdminError(str(exc)) from None
        if tagged != node:
            self._log("info", "node untagged" if remove else "node tagged", tagged, tag=tag)
            self.push_access(tagged.network)
            self._peer_relays_stale.add(tagged.network)
        return tagged

    def set_access(self, access: Mapping[str, AccessPolicy]) -> None:
        """A reloaded policy: every online node whose rules changed gets them now."""
        self.settings = replace(self.settings, access=dict(access))
        self._actions.append(Log("info", "access rules reloaded", {"networks": ", ".join(sorted(access))}))
        for network in list(self._online):
            self.push_access(network)

    def push_access(self, network: str) -> None:
        """Send each online `lan_party` node of `network` its rules if they changed (policy or tags)."""
        members = [Member(n.name, frozenset(n.tags)) for n in self._roster.nodes(network)]
        policy = self.settings.access.get(network)
        for key, conn in self._online.get(network, {}).items():
            node = self._roster.get(key)
            if node is None or not conn.lan_party:
                continue
            rules = access_for(policy, Member(node.name, frozenset(node.tags)), members)
            if rules != conn.access:
                conn.access = rules
                self._send(conn, m.Access(rules))

    def _groups(self, conn: Connection, message: m.Groups) -> None:
        """The node's groups changed: its peers see them in its peer info."""
        groups, groups6 = tuple(sorted(set(message.groups))), tuple(sorted(set(message.groups6 or ())))
        if (groups, groups6) != (conn.groups, conn.groups6):
            conn.groups, conn.groups6 = groups, groups6
            self._roster.changed(conn.key)
            self._announce(self._roster.get(conn.key), exclude=conn.key)


def with_new_access(running: CoordConfig, new: CoordConfig) -> tuple[CoordConfig, dict[str, AccessPolicy] | None]:
    """`running` with the access policies of `new` when they are all that changed in `networks`
    (the rest of a network needs a restart), and the policies by network; else `running`, None."""
    if running.networks == new.networks or _without_access(running) != _without_access(new):
        return running, None
    return replace(running, networks=new.networks), {n.name: n.access for n in new.networks}


def _without_access(config: CoordConfig) -> tuple:
    return tuple(dataclasses.replace(network, access=None) for network in config.networks)
