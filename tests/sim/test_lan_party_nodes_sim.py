"""The LAN party on four real nodes (`Node` and its `DataPlane`, in memory, one wire): broadcast to
every peer and the answer back, a group only to its members, nothing from a peer sent on, the
fan-out budget (at once and over a second), access rules on a peer or a group given at
registration and replaced live, all with the counters `meshvpn status` shows.

The coord is played by hand: each node gets `registered` (with `lan_party` and the access rules
`meshvpn.coord.policy` computes for it) and a peer map, and a node's `groups` message becomes its
peers' `peer_update`, as `meshvpn.coord.lanpush` does.
"""

import random

import pytest

from meshvpn.config import AccessGroup, AccessPolicy, AccessRule, FanoutConfig
from meshvpn.control import messages as m
from meshvpn.coord.policy import Member, access_for
from meshvpn.lan import igmp, mld, packets
from meshvpn.lan.fanout import RATE_PACKETS
from meshvpn.node import events as ev
from meshvpn.node.node import Node
from meshvpn.node.datapath.dataplane import DataPlane
from meshvpn.portspec import parse_service
from meshvpn.sim.nodes import NETWORK, MemoryNode, Wire, seeded
from meshvpn.sim.packets import igmp_v2, ip, ipv6, mld_v1, mld_v2, tcp, udp, udp6
from meshvpn.wire import Endpoint

NAMES = ("alice", "bob", "carol", "dave")
ADDRESS = {name: f"100.64.0.{i}" for i, name in enumerate(NAMES, start=1)}
BROADCAST = "100.64.0.255"
GROUP = "224.0.2.60"


class Party:
    """Four registered nodes that know each other, the wire between them and a clock."""

    def __init__(self, limits: FanoutConfig = FanoutConfig(), access: dict | None = None,
                 network: m.NetworkInfo = NETWORK, addresses: dict[str, str] = ADDRESS) -> None:
        self.now = 0.0
        self.nodes = {}
        for index, name in enumerate(NAMES, start=1):
            node = seeded(random.Random, index, name, addresses[name], Endpoint(f"192.0.2.{index}", 41641))
            node.node = Node(node.private, random.Random(index + 1000).randbytes, node.node.core.config, limits)
            node.node.set_own_endpoints([node.endpoint], None)
            node.data = DataPlane(node.node)
            self.nodes[name] = node
        self.wire = Wire(*self.nodes.values())
        self.groups: dict[str, tuple[str, ...]] = {}
        for name, node in self.nodes.items():
            node.from_coord(m.Registered(node_key=node.public, name=name, address=node.address, network=network,
                                         lan_party=True, access=(access or {}).get(name)), 0.0)
            node.from_coord(m.PeerMap(tuple(o.info() for o in self.nodes.values() if o is not node)), 0.0)

    def send(self, name: str, packet: bytes) -> None:
        """A packet from `name`'s TUN; datagrams and `groups` messages carried until all is quiet."""
        self.nodes[name].send(packet, self.now)
        self.settle()

    def settle(self) -> None:
        for _ in range(10):
            self.wire.pump(self.now)
            told = False
            for name, node in self.nodes.items():
                for msg in [msg for msg in node.coord_out if isinstance(msg, m.Groups)]:
                    told = True
                    self.groups[name] = msg.groups + (msg.groups6 or ())
                    info = node.info(groups=msg.groups or None, groups6=msg.groups6 or None)
                    for other in self.nodes.values():
                        if other is not node:
                            other.from_coord(m.PeerUpdate(info), self.now)
                node.coord_out = [msg for msg in node.coord_out if not isinstance(msg, m.Groups)]
            if not told:
                return

    def tun(self, name: str) -> list[bytes]:
        out, self.nodes[name].tun = self.nodes[name].tun, []
        return out

    def lan(self, name: str) -> dict:
        return self.nodes[name].node.status(self.now)["self"]["lan"]


@pytest.fixture
def party() -> Party:
    party = Party()
    for name in NAMES[1:]:  # sessions up: the first packet to each peer starts its handshake
        party.send("alice", udp(ADDRESS["alice"], ADDRESS[name], 9, 9))
        party.tun(name)
    return party


def test_a_broadcast_query_reaches_every_peer_and_the_answer_comes_back(party: Party) -> None:
    query = udp(ADDRESS["carol"], BROADCAST, 50000, 27015, b"server?")
    party.send("carol", query)
    assert {name: party.tun(name) for name in NAMES} == {"alice": [query], "bob": [query], "carol": [], "dave": [query]}
    answer = udp(ADDRESS["bob"], ADDRESS["carol"], 27015, 50000, b"bob's server")
    party.send("bob", answer)
    assert party.tun("carol") == [answer]
    assert party.lan("carol")["sent"] == {"broadcast": 1, "multicast": 0, "copies": 3}
    assert party.lan("bob")["received"] == {"broadcast": 1, "multicast": 0}


def test_limited_broadcast_crosses_too_but_what_another_address_sent_does_not(party: Party) -> None:
    mine = udp(ADDRESS["alice"], "255.255.255.255", 6112, 6112, b"hello")
    party.send("alice", mine)
    assert [len(party.tun(name)) for name in NAMES] == [0, 1, 1, 1]
    party.send("alice", udp("192.168.1.7", "255.255.255.255", 6112, 6112))
    assert [len(party.tun(name)) for name in NAMES] == [0, 0, 0, 0]
    assert party.lan("alice")["dropped"] == {"not_originated_here": 1}


def test_what_arrives_from_a_peer_is_never_sent_on(party: Party) -> None:
    relayed = udp(ADDRESS["alice"], BROADCAST, 1, 2)  # alice's broadcast, seen by bob's TUN
    party.send("bob", relayed)
    assert [len(party.tun(name)) for name in NAMES] == [0, 0, 0, 0]
    assert party.lan("bob")["sent"]["copies"] == 0 and party.lan("bob")["dropped"] == {"not_originated_here": 1}


def test_a_group_two_of_four_joined_reaches_only_those_two_until_they_leave(party: Party) -> None:
    party.send("bob", igmp_v2(ADDRESS["bob"], igmp.V2_REPORT, GROUP))
    party.send("dave", igmp_v2(ADDRESS["dave"], igmp.V2_REPORT, GROUP))
    assert party.groups == {"bob": (GROUP,), "dave": (GROUP,)}
    assert party.lan("bob")["groups"] == [GROUP]
    announcement = udp(ADDRESS["alice"], GROUP, 4445, 4445, b"LAN world", ttl=1)
    party.send("alice", announcement)
    assert {name: party.tun(name) for name in NAMES} == {
        "alice": [], "bob": [announcement], "carol": [], "dave": [announcement]}
    assert party.lan("alice")["sent"] == {"broadcast": 0, "multicast": 1, "copies": 2}

    party.send("dave", igmp_v2(ADDRESS["dave"], igmp.V2_LEAVE, GROUP))
    party.now += igmp.LAST_MEMBER_QUERY_TIME + 0.1
    party.wire.tick(party.now)
    party.settle()
    assert party.groups["dave"] == ()
    party.send("alice", announcement)
    assert [len(party.tun(name)) for name in NAMES] == [0, 1, 0, 0]


def test_the_node_queries_its_tun_as_the_querier() -> None:
    party = Party()
    queries = [out for out in party.nodes["bob"].other_out if isinstance(out, ev.WriteTun)]
    assert queries == [], "nothing before the first timer"
    party.wire.tick(0.0)
    written = [out for out in party.nodes["bob"].other_out if isinstance(out, ev.WriteTun)]
    assert [igmp.parse_report(packet) for out in written for packet in out.packets] == [None]
    assert written[0].packets[0] == igmp.query()


def test_a_storm_is_held_to_the_budget_and_counted() -> None:
    party = Party(FanoutConfig(packets_per_second=30, bytes_per_second=10**6, burst=1.0))
    for name in NAMES[1:]:
        party.send("alice", udp(ADDRESS["alice"], ADDRESS[name], 9, 9))
        party.tun(name)
    for _ in range(100):
        party.send("alice", udp(ADDRESS["alice"], BROADCAST, 1, 2, b"x" * 100))
    delivered = [len(party.tun(name)) for name in NAMES[1:]]
    assert delivered == [10, 10, 10], "30 copies a second: 10 packets to each of three peers, all or nothing"
    assert party.lan("alice")["dropped"] == {RATE_PACKETS: 90}
    party.now += 1.0
    party.send("alice", udp(ADDRESS["alice"], BROADCAST, 1, 2))
    assert [len(party.tun(name)) for name in NAMES[1:]] == [1, 1, 1], "the budget refills"


def test_a_storm_over_a_second_is_held_to_the_rate_and_the_burst() -> None:
    party = Party(FanoutConfig(packets_per_second=300, bytes_per_second=10**7, burst=0.1))
    for name in NAMES[1:]:
        party.send("alice", udp(ADDRESS["alice"], ADDRESS[name], 9, 9))
        party.tun(name)
    for step in range(1000):  # 1000 broadcasts in one second: 3000 copies against a budget of 300
        party.now = step / 1000
        party.send("alice", udp(ADDRESS["alice"], "255.255.255.255", 1, 2, b"x" * 100))
    sent = party.lan("alice")["sent"]
    assert 3 * sent["broadcast"] == sent["copies"] and abs(sent["copies"] - (300 + 30)) <= 3
    assert party.lan("alice")["dropped"][RATE_PACKETS] == 1000 - sent["broadcast"]


def rules(*rules: m.RuleInfo, default: str = "allow") -> m.AccessInfo:
    return m.AccessInfo(default, rules)


def test_access_rules_block_a_service_from_one_peer_and_a_live_change_lifts_it() -> None:
    no_game_for_carol = rules(m.RuleInfo(0, "deny", ("carol",), (parse_service("udp/27015"),)))
    party = Party(access={"bob": no_game_for_carol})
    for name in ("carol", "dave"):
        party.send(name, udp(ADDRESS[name], ADDRESS["bob"], 40000, 27015, b"join"))
    assert [packet[28:] for packet in party.tun("bob")] == [b"join"], "dave's gets in, carol's does not"
    party.send("carol", udp(ADDRESS["carol"], ADDRESS["bob"], 40000, 27016, b"other port"))
    party.send("carol", udp(ADDRESS["carol"], BROADCAST, 40000, 27015, b"broadcast"))
    assert [packet[28:] for packet in party.tun("bob")] == [b"other port"]
    assert party.lan("bob")["dropped"] == {"access rule 0": 2}

    bob = party.nodes["bob"]
    bob.from_coord(m.Access(None), party.now)
    assert bob.node.peers.find("carol").ring.current is not None, "the tunnel stays up"
    party.send("carol", udp(ADDRESS["carol"], ADDRESS["bob"], 40000, 27015, b"join again"))
    assert [packet[28:] for packet in party.tun("bob")] == [b"join again"]


def test_an_access_rule_on_a_group_blocks_its_member_and_lets_the_rest_through() -> None:
    policy = AccessPolicy(groups=(AccessGroup(name="kids", members=("carol",)),),
                          rules=(AccessRule(from_="kids", to="*", services=(parse_service("udp/27015"),), action="deny"),))
    party = Party(access={name: access_for(policy, Member(name), [Member(n) for n in NAMES]) for name in NAMES})
    for sender in ("alice", "carol"):
        party.send(sender, udp(ADDRESS[sender], ADDRESS["bob"], 40000, 27015, b"join"))
        party.send(sender, udp(ADDRESS[sender], ADDRESS["bob"], 40000, 27016, b"chat"))
    name_of = {ip(address): name for name, address in ADDRESS.items()}
    assert [(name_of[packets.parse(p).src], packets.parse(p).dport) for p in party.tun("bob")] == [
        ("alice", 27015), ("alice", 27016), ("carol", 27016)]
    assert party.lan("bob")["dropped"] == {"access rule 0": 1}


def test_under_default_deny_a_flow_the_node_started_is_answered(party: Party) -> None:
    bob = party.nodes["bob"]
    bob.from_coord(m.Access(rules(default="deny")), party.now)
    party.send("alice", tcp(ADDRESS["alice"], ADDRESS["bob"], 5000, 22))
    assert party.tun("bob") == []
    party.send("bob", tcp(ADDRESS["bob"], ADDRESS["alice"], 6000, 80))
    party.tun("alice")
    reply = tcp(ADDRESS["alice"], ADDRESS["bob"], 80, 6000, 0x12)
    party.send("alice", reply)
    assert party.tun("bob") == [reply]
    assert party.lan("bob")["dropped"] == {"access default": 1}


def test_a_broadcast_inside_a_run_of_unicast_is_counted_and_the_run_delivered_whole(party: Party) -> None:
    alice, bob = party.nodes["alice"], party.nodes["bob"]
    packets = [udp(ADDRESS["alice"], ADDRESS["bob"], 5, 6, b"a" * 100), udp(ADDRESS["alice"], BROADCAST, 5, 6, b"b" * 100),
               udp(ADDRESS["alice"], ADDRESS["bob"], 5, 6, b"c" * 100)]
    datagrams = []
    for packet in packets:
        alice.send(packet, party.now)
        datagrams += [data for dst, data in alice.collect() if dst == bob.endpoint]
    party.wire.pump(party.now)
    for name in NAMES:
        party.tun(name)
    assert len(datagrams) == 3 and len({len(d) for d in datagrams}) == 1, "one GRO-like run of equal datagrams"
    run = bytearray(b"".join(datagrams))
    to_tun: list = []
    bob.data.open_datagrams(run, len(run), len(datagrams[0]), alice.endpoint, party.now, to_tun)
    assert [bytes(packet) for packet in to_tun] == packets
    assert party.lan("bob")["received"] == {"broadcast": 1, "multicast": 0}


# ----- IPv6: the same party on an IPv6 overlay

NETWORK6 = m.NetworkInfo(name="home6", cidr="fd7a:115c:a1e0::/64")
ADDRESS6 = {name: f"fd7a:115c:a1e0::{i}" for i, name in enumerate(NAMES, start=1)}
MDNS6 = "ff02::fb"


@pytest.fixture
def party6() -> Party:
    party = Party(network=NETWORK6, addresses=ADDRESS6)
    for name in NAMES[1:]:
        party.send("alice", udp6(ADDRESS6["alice"], ADDRESS6[name], 9, 9))
        party.tun(name)
    return party


def test_ipv6_multicast_reaches_the_peers_whose_kernels_joined_its_group_and_all_nodes_reaches_all(party6: Party) -> None:
    """bob's and dave's kernels report ff02::fb in MLDv2 (as an mDNS responder's join makes them): alice's
    mDNS query goes to those two, with its hop limit of 255 as sent; ff02::1 goes to every peer; a
    leave takes dave off; MLD and Neighbor Discovery never cross."""
    party6.send("bob", mld_v2("::", (igmp.TO_EXCLUDE, MDNS6, ())))
    party6.send("dave", mld_v1(ADDRESS6["dave"], mld.V1_REPORT, MDNS6))
    assert party6.groups == {"bob": (MDNS6,), "dave": (MDNS6,)}
    assert [len(party6.tun(name)) for name in NAMES] == [0, 0, 0, 0]
    query = udp6(ADDRESS6["alice"], MDNS6, 5353, 5353, b"_game._udp.local?", hops=255)
    party6.send("alice", query)
    assert {name: party6.tun(name) for name in NAMES} == {"alice": [], "bob": [query], "carol": [], "dave": [query]}
    everyone = udp6(ADDRESS6["carol"], "ff02::1", 4000, 4000, b"all nodes", hops=1)
    party6.send("carol", everyone)
    assert [party6.tun(name) for name in NAMES] == [[everyone], [everyone], [], [everyone]]
    answer = udp6(ADDRESS6["bob"], ADDRESS6["alice"], 5353, 5353, b"bob's game")
    party6.send("bob", answer)
    assert party6.tun("alice") == [answer]
    assert party6.lan("alice")["sent"] == {"broadcast": 0, "multicast": 1, "copies": 2}
    assert party6.lan("bob")["received"] == {"broadcast": 0, "multicast": 2}

    party6.send("dave", mld_v2("::", (igmp.TO_INCLUDE, MDNS6, ())))
    party6.now += igmp.LAST_MEMBER_QUERY_TIME + 0.1
    party6.wire.tick(party6.now)
    party6.settle()
    assert party6.groups["dave"] == ()
    party6.send("alice", ipv6("::", "ff02::2", 58, bytes([133]) + bytes(7), hops=255))  # a router solicitation
    party6.send("alice", query)
    assert [len(party6.tun(name)) for name in NAMES] == [0, 1, 0, 0]


def test_ipv6_multicast_from_another_source_is_not_fanned_out(party6: Party) -> None:
    """A link-local source (a TUN with fe80:: addresses) is no peer's overlay address: nothing crosses."""
    party6.send("alice", udp6("fe80::1", "ff02::1", 5353, 5353))
    assert [len(party6.tun(name)) for name in NAMES] == [0, 0, 0, 0]
    assert party6.lan("alice")["dropped"] == {"not_originated_here": 1}
