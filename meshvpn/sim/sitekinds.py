"""The kinds of site of the lab's traversal matrix, as the simulator builds them.

A `Kind` is a site's NAT (`meshvpn.sim.nat`, its TCP side `meshvpn.sim.tcpnat`) and the profile
its node reports; a `Site` is one LAN behind such a NAT on a simulated internet. `KINDS` are the
sites that let UDP out, `TCP_ONLY_KINDS` those that do not; `RELAYED` says which pairs of
`KINDS` cannot go direct. The pairs harness (`meshvpn.sim.pairs`) puts a node on each site.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshvpn.node.prediction import Allocation, NatProfile
from meshvpn.sim.nat import (
    FULL_CONE, PORT_RESTRICTED_CONE, RESTRICTED_CONE, SYMMETRIC_RANDOM, SYMMETRIC_SEQUENTIAL, Dependence, Nat,
    NatBehavior, PortAllocation,
)
from meshvpn.sim.network import Link, LinkDirection, Network
from meshvpn.sim.tcpnat import OPEN, PORT_443_ONLY, TcpBehavior, TcpNat
from meshvpn.wire import Endpoint

PORT = 41641
"""The node's port on every site."""
EASY = NatProfile()
SEQUENTIAL = NatProfile(False, Allocation.SEQUENTIAL)
RANDOM = NatProfile(False, Allocation.RANDOM)


@dataclass(frozen=True)
class Kind:
    """A site's NAT as the simulator builds it, and the profile its node reports."""

    behavior: NatBehavior
    reported: NatProfile
    background: float = 0.0
    """New flows per second from other hosts behind the NAT (moves a sequential NAT on)."""
    carrier: NatBehavior | None = None
    """An ISP NAT in front of the site's (carrier-grade NAT)."""
    mapped: bool = False
    """The router forwards `MAPPED_PORT`, UDP and TCP, to the node's port (UPnP IGD, NAT-PMP, PCP),
    which announces both mappings."""
    mapped_tcp_port: int = 0
    """The router's TCP port forwarded to the node's punch port instead of `MAPPED_PORT` (443: the
    node asked for it, `portmap.tcp_443`)."""
    probed: bool = False
    """The node takes its profile at start as the daemon does (`meshvpn.sim.natprobe`: the STUN
    server, the near relay, port samples); `reported` is what it says until then."""
    udp_out: bool = True
    """Whether UDP may leave the site (`Nat.udp_out`)."""
    tcp: TcpBehavior = OPEN
    """The NAT's TCP side beyond mapping and filtering (`meshvpn.sim.tcpnat`): which ports TCP may go to."""
    far: float = 0.0
    """Seconds the site's NAT holds back packets to and from the server relays, each way."""
    peer_relay: bool = False
    """A third member, on a port-preserving site, may relay for the network (the lab's `peer-relay`
    kind: the pairs harness adds it to a world with such a site, `meshvpn.sim.pairs.World.helper`)."""
    ipv6: bool = False
    """Dual-stack: the host also has a global IPv6 address, behind the router's stateful firewall
    (`meshvpn.sim.dualstack.firewalled_host6`), and its socket takes both families."""


PORT_RANGE = NatBehavior(ports=PortAllocation.RANDOM, port_min=30000, port_max=40000)
KINDS = {
    "port-preserving": Kind(PORT_RESTRICTED_CONE, EASY),
    "full-cone": Kind(FULL_CONE, EASY),
    "restricted-cone": Kind(RESTRICTED_CONE, EASY),
    "port-range": Kind(PORT_RANGE, RANDOM),
    "port-range-known": Kind(PORT_RANGE, NatProfile(True, Allocation.RANDOM)),
    "address-dependent": Kind(NatBehavior(mapping=Dependence.ADDRESS_DEPENDENT, filtering=Dependence.ADDRESS_DEPENDENT,
                                          ports=PortAllocation.SEQUENTIAL), SEQUENTIAL),
    "sequential": Kind(SYMMETRIC_SEQUENTIAL, SEQUENTIAL, background=2.0),
    "random-ports": Kind(SYMMETRIC_RANDOM, RANDOM),
    "cgn": Kind(PORT_RESTRICTED_CONE, RANDOM, carrier=SYMMETRIC_RANDOM),
    "unreported": Kind(SYMMETRIC_RANDOM, EASY),
    "upnp": Kind(SYMMETRIC_RANDOM, RANDOM, mapped=True),
    "dual-stack": Kind(SYMMETRIC_RANDOM, RANDOM, ipv6=True),
    "peer-relay": Kind(SYMMETRIC_RANDOM, RANDOM, far=0.04, peer_relay=True),
}
"""`port-range` is endpoint-independent with random ports: reported as random when the node has no
second STUN server (no coord alternate address, no relay answering STUN), as endpoint-independent
(`port-range-known`) when it has; `PORT_RANGE_PROBED` learns which by the mapping test itself. `unreported` is a random-port
NAT whose node sent no profile (taken as endpoint-independent). `upnp` is a random-port NAT
whose router forwards a port to the node. `dual-stack` is the lab's kind of that name: a random-port
NAT for IPv4, IPv6 open behind a stateful firewall. `peer-relay` is the lab's kind too: a random-port
NAT whose server relays are 40 ms away, with a third member nearby that may relay."""
HELPER = Kind(PORT_RESTRICTED_CONE, EASY)
"""The site of the member that relays for a world with a `peer-relay` site (the lab's `h`)."""
MAPPED_PORT = 50000
PORT_RANGE_PROBED = Kind(PORT_RANGE, RANDOM, probed=True)
"""A port-range site whose node runs the mapping test against the STUN server and its near relay."""
TCP_ONLY_KINDS = {
    "udp-blocked": Kind(PORT_RESTRICTED_CONE, EASY, udp_out=False),
    "port-443-only": Kind(PORT_RESTRICTED_CONE, EASY, udp_out=False, tcp=PORT_443_ONLY),
}
"""The lab's sites that let no UDP out (`NatKind.UDP_BLOCKED`), and no TCP either but to port 443
(`NatKind.PORT_443_ONLY`): port-preserving masquerade behind the firewall, TCP mapped as UDP is."""

_EDM_RANDOM = ("random-ports", "cgn", "unreported", "dual-stack", "peer-relay")
RELAYED = frozenset({
    *((x, y) for x in _EDM_RANDOM for y in _EDM_RANDOM),
    *((x, y) for x in ("port-range", "sequential") for y in _EDM_RANDOM if y != "unreported"),
    *((y, x) for x in ("port-range", "sequential") for y in _EDM_RANDOM if y != "unreported"),
    *((x, "unreported") for x in ("port-preserving", "port-range", "port-range-known", "sequential")),
    *(("unreported", x) for x in ("port-preserving", "port-range", "port-range-known", "sequential")),
}) - {("dual-stack", "dual-stack")}
"""The pairs (`a`, who sends first, then `b`) that end up relayed: both sides endpoint-dependent with
random ports (but two dual-stack sites, direct over IPv6), one with random ports against a NAT whose ports cannot be predicted from one sample,
and an unreported random NAT against any peer that waits for its endpoint (through the peer relay
where there is one). Every other pair goes
direct (`docs/nat-traversal.md` has the matrix of the lab's NATs; the sims hold every pair to it)."""

def wan() -> Link:
    return Link(LinkDirection(0.01), LinkDirection(0.01))


class Site:
    """A LAN behind a NAT of one kind (and a carrier's NAT in front of it, for `cgn`)."""

    def __init__(self, net: Network, number: int, kind: Kind) -> None:
        self.kind, self.outer = kind, None
        realm = net.internet
        if kind.carrier is not None:
            self.outer = Nat(net, f"192.0.2.{number + 1}", kind.carrier, link=wan())
            realm = self.outer.lan
        self.nat = Nat(net, f"10.99.{number}.1" if self.outer else f"203.0.113.{number + 1}", kind.behavior,
                       realm=realm, link=None if self.outer else wan())
        self.nat.set_background_traffic(kind.background)
        self.nat.udp_out = kind.udp_out
        TcpNat(self.nat, kind.tcp)
        if self.outer is not None:
            TcpNat(self.outer)
        self.host_ip = f"192.168.{number + 1}.10"
        self.ip6 = f"2001:db8:{number + 1}::10" if kind.ipv6 else None
        """The host's global IPv6 address, on a dual-stack site."""
        self.uplink6 = wan()
        """The IPv6 firewall's uplink: `connected = False` breaks IPv6 alone (the routes stay)."""
        self.mapped = Endpoint(self.nat.ip, MAPPED_PORT) if kind.mapped else None
        self.mapped_tcp = Endpoint(self.nat.ip, kind.mapped_tcp_port or MAPPED_PORT) if kind.mapped else None
        if kind.mapped:
            self.nat.forward(MAPPED_PORT, (self.host_ip, PORT))
            self.nat.tcp.forward(self.mapped_tcp.port, (self.host_ip, PORT))

    @property
    def observed_host(self) -> str:
        """The address the internet sees the site's traffic come from."""
        return (self.outer or self.nat).ip


