"""The traversal matrix's rows and columns: the NAT kinds a site's host sits behind, each building
its site in a lab, and the pairs of them a run covers (`meshvpn.bench.matrix` runs them).

Apart from the runner because a kind is the matrix's vocabulary (the `--pairs` names, the table's
order, the JSON's `kinds`) while the runner is how one attempt of one VPN goes; the lab's server
addresses and start-up time live here as the kinds' sites need them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from meshvpn.lab import Nat, NatKind, Topology
from meshvpn.lab.upnp import UPNP_ROUTER, UPNP_ROUTER_TCP_ONLY
from meshvpn.lab.usernat import UserNat, background_traffic
from meshvpn.sim.nat import SYMMETRIC_RANDOM

START_SECONDS = 15.0
"""Time the servers and the two ends may take to start, before the cell's clock runs."""
COORD_ADDR, RELAY_ADDR, LIGHTHOUSE_ADDR = "203.0.113.10", "203.0.113.20", "203.0.113.30"
BACKGROUND_RATE = 2.0
"""New flows per second from a neighbour behind a loaded NAT (as in the traversal lab tests)."""
FAR = 0.040
"""Seconds a `peer-relay` site's NAT holds back each packet to or from the server relay or lighthouse."""
PEER_RELAY = "peer-relay"
"""The label of a reply the third site's host relayed."""


@dataclass(frozen=True)
class Kind:
    """A row and column of the matrix: the NAT (or NATs) a site's host sits behind."""

    name: str
    nat: Nat
    """The site router's NAT."""
    description: str
    carrier: Nat | None = None
    """An ISP NAT the site's router sits behind (carrier-grade NAT), or None."""
    background: bool = False
    """A neighbour on the site's LAN opens `BACKGROUND_RATE` new flows per second."""
    stun: bool = False
    """The router runs miniupnpd, which checks its external address with the lab's RFC 5780 STUN server."""
    ipv6: bool = False
    """The site is dual-stack: its IPv6 is routed behind a stateful firewall (`meshvpn.lab.Ipv6Firewall`),
    and the lab gives the servers IPv6 addresses too."""
    peer_relay: bool = False
    """A third site `h` (port-preserving NAT) whose host `h1` may relay for the others."""

    def build(self, topo: Topology, site: str, target: str, seconds: float) -> None:
        """Add site `site` (host `<site>1`) to `topo`; background flows go to `target`."""
        isp = f"{site}-isp" if self.carrier is not None else None
        if self.carrier is not None:
            topo.add_site(isp, nat=self.carrier, hosts=0)
        topo.add_site(site, nat=self.nat, hosts=2 if self.background else 1, behind=isp, ipv6=self.ipv6)
        if self.background:
            background_traffic(topo.host(f"{site}2"), target, BACKGROUND_RATE, seconds=seconds + START_SECONDS * 3)


KINDS: tuple[Kind, ...] = (
    Kind("port-preserving", NatKind.PORT_PRESERVING, "nft masquerade: endpoint-independent mapping, ports kept"),
    Kind("port-range", NatKind.PORT_RANGE, "nft snat into ports 30000-40000"),
    Kind("address-dependent", NatKind.ADDRESS_DEPENDENT, "userspace: a sequential port per destination address"),
    Kind("restricted-cone", NatKind.RESTRICTED_CONE, "userspace: endpoint-independent, filters by address"),
    Kind("sequential", NatKind.SEQUENTIAL, "userspace: the next port per destination endpoint, "
         f"a neighbour opening {BACKGROUND_RATE:g} flows/s", background=True),
    Kind("random-ports", NatKind.RANDOM_PORTS, "nft masquerade fully-random: a random port per destination"),
    Kind("udp-blocked", NatKind.UDP_BLOCKED, "port-preserving NAT that drops outgoing UDP"),
    Kind("port-443-only", NatKind.PORT_443_ONLY, "lets out only TCP to port 443, as hotel and office networks do"),
    Kind("cgn", NatKind.PORT_PRESERVING, "port-preserving home NAT behind an ISP NAT with random ports",
         carrier=NatKind.RANDOM_PORTS),
    Kind("upnp", UPNP_ROUTER, "random-ports NAT whose router maps ports on request (miniupnpd: UPnP IGD, "
         "NAT-PMP, PCP)", stun=True),
    Kind(UPNP_ROUTER_TCP_ONLY.name, UPNP_ROUTER_TCP_ONLY, "the upnp router dropping UDP both ways: the LAN gets out "
         "over TCP only, and a mapping of the TCP punch port is the way in", stun=True),
    Kind("dual-stack", NatKind.RANDOM_PORTS, "random-ports NAT for IPv4; IPv6 routed behind a stateful firewall "
         "(out and replies in)", ipv6=True),
    Kind(PEER_RELAY, UserNat("random-ports", SYMMETRIC_RANDOM).with_delay(RELAY_ADDR, FAR).with_delay(LIGHTHOUSE_ADDR, FAR),
         f"userspace random ports, the server relay {FAR * 1000:g} ms away; a third site's host "
         "(port-preserving NAT) may relay", peer_relay=True),
)
KINDS_BY_NAME = {kind.name: kind for kind in KINDS}


def parse_pair(text: str) -> tuple[str, str]:
    """`KIND:KIND` -> the two kind names; ValueError names what is wrong."""
    a, sep, b = text.partition(":")
    if not sep:
        raise ValueError(f"{text!r}: want KIND:KIND")
    unknown = [name for name in (a, b) if name not in KINDS_BY_NAME]
    if unknown:
        raise ValueError(f"unknown kind {unknown[0]!r}; kinds: {', '.join(KINDS_BY_NAME)}")
    return a, b


def all_pairs(kinds: tuple[Kind, ...] = KINDS) -> list[tuple[str, str]]:
    """Every unordered pair of kinds, each once with the earlier kind of `kinds` as `a`."""
    return [(a.name, b.name) for a, b in itertools.combinations_with_replacement(kinds, 2)]
