"""Four nodes' LAN-party cores on a simulated mesh: multicast only to members, broadcast to all,
nothing back to its origin, a storm held to the budget, and access rules on what arrives.

Each `LanNode` composes the cores exactly as the node's data path will call them: a packet
from the TUN is classified and fanned out (IGMP goes to the querier instead); a packet from a
peer is classified, filtered and delivered. Copies reach peers `HOP` seconds later, on one
`meshvpn.sim.Scheduler` clock; group changes are told to peers the same way.
"""

from collections import Counter

from meshvpn.config import AccessGroup, AccessPolicy, AccessRule, FanoutConfig
from meshvpn.coord.policy import Member, access_for
from meshvpn.lan import igmp, packets
from meshvpn.lan.access import AccessFilter
from meshvpn.lan.fanout import RATE_PACKETS, Fanout
from meshvpn.lan.groups import LocalGroups, PeerGroups, recipients
from meshvpn.lan.packets import Cast, Drop, Overlay
from meshvpn.portspec import parse_service
from meshvpn.sim import Scheduler
from meshvpn.sim.packets import igmp_v2, ip, udp

HOP = 0.02
NAMES = ("alice", "bob", "carol", "dave")
ADDRESS = {name: f"100.64.0.{index}" for index, name in enumerate(NAMES, start=1)}


class LanNode:
    def __init__(self, name: str, mesh: "Mesh", limits: FanoutConfig):
        self.name, self.mesh = name, mesh
        self.overlay = Overlay.of(ADDRESS[name], "100.64.0.0/24")
        self.local = LocalGroups(mesh.scheduler.now)
        self.peer_groups = PeerGroups()
        self.fanout = Fanout(limits, mesh.scheduler.now)
        self.access = AccessFilter()
        self.delivered: list[tuple[str, bytes]] = []
        self.dropped: Counter[str] = Counter()

    def from_tun(self, packet: bytes) -> None:
        now = self.mesh.scheduler.now
        header = packets.parse(packet)
        if header.proto == packets.PROTO_IGMP:
            report = igmp.parse_report(packet)
            if report is not None:
                self.local.report(report, now)
            if (joined := self.local.take_change()) is not None:
                self.mesh.tell_groups(self.name, joined)
            return
        self.access.outbound(header, now)
        cast = packets.outbound(header, self.overlay)
        if isinstance(cast, Drop):
            self.dropped[cast.value] += 1
        elif cast is Cast.UNICAST:
            self.mesh.send(self.name, self.mesh.name_of[header.dst], packet)
        elif cast is not Cast.SELF:
            peers = [peer for peer in NAMES if peer != self.name]
            for peer in self.fanout.admit(len(packet), recipients(cast, header.dst, peers, self.peer_groups), now):
                self.mesh.send(self.name, peer, packet)

    def from_peer(self, peer: str, packet: bytes) -> None:
        header = packets.parse(packet)
        verdict = packets.inbound(header, self.overlay, self.local, ip(ADDRESS[peer]))
        if isinstance(verdict, Drop):
            self.dropped[verdict.value] += 1
        elif self.access.inbound(header, self.mesh.scheduler.now):
            self.delivered.append((peer, packet))


class Mesh:
    def __init__(self, limits: FanoutConfig = FanoutConfig()):
        self.scheduler = Scheduler()
        self.nodes = {name: LanNode(name, self, limits) for name in NAMES}
        self.name_of = {ip(address): name for name, address in ADDRESS.items()}
        self.copies = 0

    def send(self, src: str, dst: str, packet: bytes) -> None:
        assert src != dst
        self.copies += 1
        self.scheduler.call_later(HOP, self.nodes[dst].from_peer, src, packet)

    def tell_groups(self, src: str, groups: frozenset[int]) -> None:
        for name, node in self.nodes.items():
            if name != src:
                self.scheduler.call_later(HOP, node.peer_groups.set, src, groups)

    def join(self, name: str, group: str) -> None:
        self.nodes[name].from_tun(igmp_v2(ADDRESS[name], igmp.V2_REPORT, group))

    def run(self) -> None:
        self.scheduler.run_for(1.0)


def test_a_group_two_of_four_joined_reaches_only_those_two() -> None:
    mesh = Mesh()
    mesh.join("bob", "224.0.2.60")
    mesh.join("dave", "224.0.2.60")
    mesh.run()
    mesh.nodes["alice"].from_tun(udp(ADDRESS["alice"], "224.0.2.60", 4445, 4445, b"LAN world", ttl=1))
    mesh.run()
    got = {name: [peer for peer, _ in node.delivered] for name, node in mesh.nodes.items()}
    assert got == {"alice": [], "bob": ["alice"], "carol": [], "dave": ["alice"]}
    assert mesh.copies == 2


def test_a_broadcast_query_reaches_everyone_and_the_answer_comes_back_alone() -> None:
    mesh = Mesh()
    mesh.nodes["carol"].from_tun(udp(ADDRESS["carol"], "100.64.0.255", 50000, 27015, b"server?"))
    mesh.run()
    assert [len(node.delivered) for node in mesh.nodes.values()] == [1, 1, 0, 1]
    mesh.nodes["bob"].from_tun(udp(ADDRESS["bob"], ADDRESS["carol"], 27015, 50000, b"bob's server"))
    mesh.run()
    assert mesh.nodes["carol"].delivered == [("bob", udp(ADDRESS["bob"], ADDRESS["carol"], 27015, 50000, b"bob's server"))]
    assert mesh.copies == 4


def test_what_arrives_from_a_peer_is_never_sent_on() -> None:
    mesh = Mesh()
    relayed = udp(ADDRESS["alice"], "100.64.0.255", 1, 2)  # alice's broadcast, seen by bob's TUN
    mesh.nodes["bob"].from_tun(relayed)
    mesh.run()
    assert mesh.copies == 0 and mesh.nodes["bob"].dropped == {"not_originated_here": 1}


def test_a_storm_is_held_to_the_budget() -> None:
    mesh = Mesh(FanoutConfig(packets_per_second=300, bytes_per_second=10**7, burst=0.1))
    for step in range(1000):  # 1000 broadcasts in one second: 3000 copies against a budget of 300
        mesh.scheduler.call_at(step / 1000, mesh.nodes["alice"].from_tun, udp(ADDRESS["alice"], "255.255.255.255", 1, 2, b"x" * 100))
    mesh.scheduler.run_for(2.0)
    sent = mesh.nodes["alice"].fanout.sent_packets
    assert 3 * sent == mesh.copies and abs(mesh.copies - (300 + 30)) <= 3
    assert mesh.nodes["alice"].fanout.dropped[RATE_PACKETS] == 1000 - sent


def test_an_access_rule_blocks_one_group_and_lets_the_rest_through() -> None:
    mesh = Mesh()
    policy = AccessPolicy(groups=(AccessGroup(name="kids", members=("carol",)),),
                          rules=(AccessRule(from_="kids", to="*", services=(parse_service("udp/27015"),), action="deny"),))
    for name, node in mesh.nodes.items():
        node.access.configure(access_for(policy, Member(name), [Member(n) for n in NAMES]), {n: ip(a) for n, a in ADDRESS.items()})
    for sender in ("alice", "carol"):
        mesh.nodes[sender].from_tun(udp(ADDRESS[sender], ADDRESS["bob"], 40000, 27015, b"join"))
        mesh.nodes[sender].from_tun(udp(ADDRESS[sender], ADDRESS["bob"], 40000, 27016, b"chat"))
    mesh.run()
    assert [(peer, packets.parse(p).dport) for peer, p in mesh.nodes["bob"].delivered] == [
        ("alice", 27015), ("alice", 27016), ("carol", 27016)]
    assert mesh.nodes["bob"].access.dropped == {"rule 0": 1}
