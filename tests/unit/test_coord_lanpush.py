"""The coord's live LAN-party messages: rules follow a tag or a reloaded policy at once, only to
nodes that take them; a node's groups reach its peers in its peer info; a reload that changes
more of a network than its access rules leaves the rules to a restart."""

from dataclasses import replace

from meshvpn.config import AccessGroup, AccessPolicy, AccessRule, CoordConfig, NetworkConfig
from meshvpn.control import messages as m
from meshvpn.coord.lanpush import with_new_access
from meshvpn.coord.membership import Membership, MembershipSettings, Send
from meshvpn.coord.store import MemoryStore, Network
from meshvpn.portspec import parse_service

PARTY = Network("party", "100.64.0.0/24")
GAME = parse_service("udp/27015")
POLICY = AccessPolicy(groups=(AccessGroup(name="guests", members=("tag:guest",)),),
                      rules=(AccessRule(from_="guests", to="*", services=(GAME,), action="deny"),))


def party(policy: AccessPolicy | None = POLICY) -> tuple[Membership, str]:
    core = Membership(MemoryStore(), MembershipSettings((PARTY,), keepalive=10.0,
                                                        access={"party": policy} if policy else {}), 0.0)
    token, _ = core.create_auth_key("party", secret=bytes(32), now=0.0, reusable=True)
    return core, token


def online(core: Membership, conn: int, name: str, token: str, lan_party: bool = True) -> m.Registered:
    core.node_connected(conn, bytes([conn]) * 32, f"203.0.113.{conn}", 0.0)
    core.receive(conn, m.encode(m.Register(name, "0.1.0", (), token, lan_party=lan_party or None)), 0.0)
    return next(a.message for a in core.actions() if isinstance(a, Send) and isinstance(a.message, m.Registered))


def sent(core: Membership, kind: type) -> list[tuple[int, m.Message]]:
    return [(a.conn_id, a.message) for a in core.actions() if isinstance(a, Send) and isinstance(a.message, kind)]


def test_a_tag_sends_new_rules_at_once_to_nodes_that_take_them() -> None:
    core, token = party()
    assert online(core, 1, "bob", token).lan_party is True
    online(core, 2, "carol", token)
    online(core, 3, "old", token, lan_party=False)
    core.tag("carol", "guest")
    guests_denied = m.AccessInfo("allow", (m.RuleInfo(0, "deny", ("carol",), (GAME,)),))
    assert sent(core, m.Access) == [(1, m.Access(guests_denied)), (2, m.Access(guests_denied))], \
        "the node without lan_party learns its rules when it next registers"
    core.tag("carol", "guest")
    assert sent(core, m.Access) == [], "nothing changed, nothing sent"


def test_a_reloaded_policy_reaches_every_online_node() -> None:
    core, token = party(None)
    assert online(core, 1, "bob", token).access is None
    core.set_access({"party": AccessPolicy(default="deny")})
    assert sent(core, m.Access) == [(1, m.Access(m.AccessInfo("deny", ())))]
    core.set_access({})
    assert sent(core, m.Access) == [(1, m.Access(None))]


def test_groups_reach_the_peers_in_the_peer_info_and_go_with_the_connection() -> None:
    core, token = party(None)
    online(core, 1, "bob", token)
    online(core, 2, "carol", token)
    core.actions()
    core.receive(2, m.encode(m.Groups(("239.255.255.250", "224.0.0.251", "224.0.0.251"))), 1.0)
    updates = sent(core, m.PeerUpdate)
    assert [(conn, msg.peer.name, msg.peer.groups) for conn, msg in updates] == \
        [(1, "carol", ("224.0.0.251", "239.255.255.250"))]
    core.receive(2, m.encode(m.Groups(("224.0.0.251", "239.255.255.250"))), 1.0)
    assert sent(core, m.PeerUpdate) == [], "the same set again is no news"
    core.node_disconnected(2, 2.0)
    assert [msg.peer.groups for _, msg in sent(core, m.PeerUpdate)] == [None]


def test_ipv6_groups_reach_the_peers_in_groups6_and_a_change_of_them_alone_is_news() -> None:
    core, token = party(None)
    online(core, 1, "bob", token)
    online(core, 2, "carol", token)
    core.actions()
    core.receive(2, m.encode(m.Groups((), ("ff02::fb", "ff05::c", "ff02::fb"))), 1.0)
    assert [(msg.peer.groups, msg.peer.groups6) for _, msg in sent(core, m.PeerUpdate)] == [(None, ("ff02::fb", "ff05::c"))]
    core.receive(2, m.encode(m.Groups((), ("ff02::fb",))), 1.0)
    assert [msg.peer.groups6 for _, msg in sent(core, m.PeerUpdate)] == [("ff02::fb",)]


def network(access: AccessPolicy = AccessPolicy(), cidr: str = "100.64.0.0/24") -> NetworkConfig:
    return NetworkConfig(name="party", cidr=cidr, access=access)


def test_a_reload_applies_access_rules_only_when_nothing_else_of_the_networks_changed(tmp_path) -> None:
    running = CoordConfig(private_key_file=tmp_path / "coord.key", networks=(network(),))
    stricter = replace(running, networks=(network(POLICY),))
    applied, access = with_new_access(running, stricter)
    assert applied.networks == stricter.networks and access == {"party": POLICY}
    assert with_new_access(running, running) == (running, None)
    moved = replace(running, networks=(network(POLICY, "100.65.0.0/24"),))
    assert with_new_access(running, moved) == (running, None), "a new cidr needs a restart, and the rules with it"
