"""Which access rules each node enforces, from its network's policy in the coord config.

A rule concerns a node when the node is in the rule's `to` group; the node gets it with the
`from` group written as node names, since the node knows its peers by name and address but
not by tag. Names listed in a group travel as they are, so a node that joins later under such a
name is covered at once; tags are resolved against the network's nodes now. A network without
rules sends nothing: its nodes accept everyone, as nodes before access rules did.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

from meshvpn.config import EVERYONE, AccessPolicy
from meshvpn.control import messages as m


class Member(NamedTuple):
    """A node as groups see it: its name and the tags an admin gave it."""

    name: str
    tags: frozenset[str] = frozenset()


def access_for(policy: AccessPolicy | None, node: Member, network: Iterable[Member]) -> m.AccessInfo | None:
    """The rules `node` enforces, or None when the policy lets everyone reach everyone."""
    if policy is None or (not policy.rules and policy.default == "allow"):
        return None
    nodes = tuple(network)
    rules = []
    for index, rule in enumerate(policy.rules):
        if rule.to == EVERYONE or node.name in _names(policy, rule.to, nodes):
            sources = (EVERYONE,) if rule.from_ == EVERYONE else tuple(sorted(_names(policy, rule.from_, nodes)))
            rules.append(m.RuleInfo(index, rule.action, sources, rule.services))
    return m.AccessInfo(policy.default, tuple(rules))


def _names(policy: AccessPolicy, group: str, nodes: tuple[Member, ...]) -> set[str]:
    return named(next((g.members for g in policy.groups if g.name == group), ()), nodes)


def named(members: Iterable[str], nodes: Iterable[Member]) -> set[str]:
    """The names `members` (node names and ``tag:TAG``) stand for: names as written, tags resolved
    against `nodes` now (access-rule groups and peer relays name nodes alike)."""
    members = tuple(members)
    tags = {member.removeprefix("tag:") for member in members if member.startswith("tag:")}
    names = {member for member in members if not member.startswith("tag:")}
    return names | {node.name for node in nodes if node.tags & tags}
