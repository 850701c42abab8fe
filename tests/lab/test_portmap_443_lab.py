"""A router that maps its TCP port 443 to the punch port lets a port-443-only site in directly.

A port-443-only site (`NatKind.PORT_443_ONLY`) lets out nothing but TCP to port 443, so its only
direct path is a connection to a peer that takes TCP on port 443. A node whose router maps ports
asks it for external TCP port 443 for its punch port (`portmap.tcp_443`) and announces it as its
TCP mapping; the port-443-only node connects there. Site `a`'s router is the lab's miniupnpd
(`UPNP_ROUTER`, which lets the LAN map port 443) in front of a random-ports NAT; site `b` is
port-443-only. Without the mapping at 443 the pair relays (through the relay's TLS port).

A port 443 that the router already maps to another host (a web server) is never taken: the node
maps another port and the web server's mapping stays as it was.
"""

from __future__ import annotations

import sys

import pytest

from meshvpn.lab import NatKind, Topology

from test_portmap_lab import upnp_rules, world  # noqa: F401  (world is a fixture)
from test_portmap_tcp_lab import direct_over_tcp_through, tcp_mapping

pytestmark = [pytest.mark.lab, pytest.mark.timeout(90)]

WEB_SERVER = """
import miniupnpc
u = miniupnpc.UPnP()
u.discoverdelay = 1000
u.discover()
u.selectigd()
u.addportmapping(443, "TCP", u.lanaddr, 443, "web server", "")
"""
"""A web server's host maps port 443 over UPnP, to itself."""


@pytest.mark.parametrize("protocol", ["pcp", "nat-pmp", "upnp"])
def test_a_port_443_only_site_goes_direct_to_the_routers_port_443(world, topo: Topology, protocol: str) -> None:
    mesh = world([protocol], nat_b=NatKind.PORT_443_ONLY, coord_port=443)
    tcp = tcp_mapping(mesh)
    assert tcp["external"] == f"{topo.addr('a')}:443" and tcp["protocol"] == protocol
    assert "0x6 th dport 443 dnat" in upnp_rules(topo)
    direct_over_tcp_through(mesh, tcp)


@pytest.mark.parametrize("protocol, web", [("upnp", "a1"), ("pcp", "a1"), ("upnp", "a2")])
def test_a_port_443_the_router_maps_for_a_web_server_is_left_to_it(world, topo: Topology, protocol: str,
                                                                   web: str) -> None:
    """The web server on a1 itself is the case to watch: UPnP's AddPortMapping of a port mapped to
    the same client replaces that mapping (IGD v1, 2.4.16)."""
    mesh = world([protocol], hosts_a=2, before=lambda: topo.host(web).run([sys.executable, "-c", WEB_SERVER], timeout=20))
    web_rule = f"th dport 443 dnat ip to {topo.addr(web)}:443"
    assert web_rule in upnp_rules(topo)
    tcp = tcp_mapping(mesh)
    assert tcp["external"].startswith(f"{topo.addr('a')}:") and not tcp["external"].endswith(":443")
    rules = upnp_rules(topo)
    assert web_rule in rules and rules.count("dport 443 ") == 1, rules
