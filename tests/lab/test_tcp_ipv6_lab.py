"""TCP over IPv6: dual-stack sites that let no UDP out, over either family, meet over TCP on IPv6.

Sites a and b are dual-stack: IPv4 behind a port-preserving NAT that drops UDP, IPv6 routed
behind a stateful firewall (out anything, in only replies) that drops UDP too. TCP between the
sites' IPv4 addresses is cut, so the only direct path is TCP between their global IPv6
addresses, through both firewalls: a simultaneous open (`meshvpn.node.tcp`) on the addresses the
nodes announce. The relay listens on both families and is announced by a name with an AAAA and
an A record; with no UDP at all, each relay link races a stream, IPv6 first, and reaches the
relay over TCP on IPv6.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshvpn.lab import Lab, NatKind, Topology
from meshvpn.lab.mesh import Mesh, wait_for

from test_ipv6_lab import NODE_PORT, relay_by_name
from test_relay_lab import copy_a1_to_b1

pytestmark = [pytest.mark.lab, pytest.mark.timeout(90)]


def udp_blocked_both_families(topo: Topology, site: str) -> None:
    topo.block_udp6(site)


def test_udp_blocked_dual_stack_sites_go_direct_over_tcp_on_ipv6_and_reach_the_relay_over_it(
        lab: Lab, tmp_path: Path, meshes: list[Mesh]) -> None:
    topo, mesh = relay_by_name(lab, tmp_path, meshes, NatKind.UDP_BLOCKED, udp_blocked_both_families)
    topo.cut_tcp("a", "b")
    mesh.start_registered({name: topo.host(name) for name in ("a1", "b1")})
    try:
        for name in ("a1", "b1"):
            link = wait_for(lambda: next((r for r in mesh.status(name)["self"]["relays"] if r["ready"]), None),
                            20, f"{name}'s relay link")
            assert link["transport"] == "tcp" and link["address"] == f"[{topo.addr6('relay')}]:7500", link
        found = mesh.wait_for_paths({("a1", "b1"): ("tcp",), ("b1", "a1"): ("tcp",)}, timeout=30)
        assert len(found) == 2, f"paths: {mesh.peer('a1', 'b1')}, {mesh.peer('b1', 'a1')}"
    except BaseException:
        print(mesh.logs())
        raise
    print(f"TCP over IPv6 after {max(f.seconds for f in found.values()):.2f} s of nudging")
    assert mesh.peer("a1", "b1")["endpoint"] == f"[{topo.addr6('b1')}]:{NODE_PORT}", mesh.peer("a1", "b1")
    assert mesh.peer("b1", "a1")["endpoint"] == f"[{topo.addr6('a1')}]:{NODE_PORT}", mesh.peer("b1", "a1")
    assert "via tcp" in mesh.cli("a1", "ping", "b1", "-c", "2").stdout
    copy_a1_to_b1(mesh, 2 << 20, 1.0)
    assert mesh.peer("a1", "b1")["path"] == "tcp"
