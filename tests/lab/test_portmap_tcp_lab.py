"""A router that maps the TCP punch port lets a peer in over TCP where no UDP gets through.

Site `a`'s router runs miniupnpd in front of a random-ports NAT that drops UDP both ways
(`UPNP_ROUTER_TCP_ONLY`); site `b` is a port-preserving NAT that drops outgoing UDP. Neither
UDP punching nor TCP simultaneous open can work (a's NAT gives each destination a new random
port), so without the mapping the pair relays. a1 maps its UDP port and its TCP punch port
(the UDP mapping is useless here, the TCP one is not) with each protocol in turn, announces
both, and b1 connects to the TCP mapping: the pair goes direct over TCP and carries a
checksummed transfer.
"""

from __future__ import annotations

import json

import pytest

from meshvpn.lab import NatKind, Topology
from meshvpn.lab.mesh import Mesh, wait_for
from meshvpn.lab.upnp import UPNP_ROUTER_TCP_ONLY

from test_portmap_lab import mapping_of, upnp_rules, world  # noqa: F401  (world is a fixture)
from test_relay_lab import copy_a1_to_b1

pytestmark = [pytest.mark.lab, pytest.mark.timeout(90)]

TCP = ("tcp",)


def tcp_mapping(mesh: Mesh) -> dict:
    """a1's mapping of its TCP punch port, once granted (`self.port_mapping.tcp`)."""
    wait_for(lambda: (mapping_of(mesh).get("tcp") or {}).get("state") == "mapped", 10, "a1 to map its TCP port")
    return mapping_of(mesh)["tcp"]


def direct_over_tcp_through(mesh: Mesh, tcp: dict) -> None:
    """b1 learns a1's TCP mapping `tcp`, connects to it, and both ends go direct over TCP."""
    wait_for(lambda: any(e == f"{tcp['external']} (mapped tcp)"
                         for p in json.loads(mesh.cli("b1", "peers", "--json").stdout)["peers"] for e in p["endpoints"]),
             10, "b1 to learn a1's TCP mapping")
    found = mesh.wait_for_paths({("b1", "a1"): TCP, ("a1", "b1"): TCP}, timeout=25)
    assert len(found) == 2, f"paths: {mesh.peer('a1', 'b1')['path']}, {mesh.peer('b1', 'a1')['path']}"
    assert mesh.peer("b1", "a1")["endpoint"] == tcp["external"], "b1 reached a1 through the router's mapping"


@pytest.mark.parametrize("protocol", ["pcp", "nat-pmp", "upnp"])
def test_a_tcp_mapping_takes_a_udp_blocked_pair_direct_over_tcp(world, topo: Topology, protocol: str) -> None:
    mesh = world([protocol], nat_a=UPNP_ROUTER_TCP_ONLY, nat_b=NatKind.UDP_BLOCKED)
    tcp = tcp_mapping(mesh)
    assert tcp["external"].startswith(topo.addr("a") + ":") and tcp["protocol"] == protocol
    port = tcp["external"].rsplit(":", 1)[1]
    assert f"0x6 th dport {port} dnat" in upnp_rules(topo), "no DNAT of TCP (IP protocol 6) on the router"
    direct_over_tcp_through(mesh, tcp)
    assert mesh.peer("a1", "b1")["endpoint"].startswith(topo.addr("b") + ":")
    copy_a1_to_b1(mesh, 2 << 20, 1.0)
    assert mesh.peer("a1", "b1")["path"] == "tcp" and mesh.peer("b1", "a1")["path"] == "tcp"
