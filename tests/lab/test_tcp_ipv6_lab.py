"""TCP over IPv6: dual-stack sites that let no UDP out, over either family, meet over TCP on IPv6.

Sites a and b are dual-stack: IPv4 behind a port-preserving NAT that drops UDP, IPv6 routed
behind a stateful firewall (out anything, in only replies) that drops UDP too. TCP between the
sites' IPv4 addresses is cut, so the only direct path is TCP between their global IPv6
addresses, through both firewalls: a simultaneous open (`meshvpn.node.tcp`) on the addresses the
nodes announce. The relay listens on both families and is announced by a name with an AAAA and
an A record; with no UDP at all, each relay link races a stream, IPv6 first, and reaches the
relay over TCP on IPv6.

The IPv6 endpoints do not wait for the UDP STUN round, which no network without UDP answers
(5 s): each node reports them at the start of its first round (`meshvpn.node.endpointreports`),
before the coord link registers, so its `register` carries them and its peer has them with
its peer map. Once traffic asks for a path, the coord's punch makes the TCP path; the test
nudges from registration and asserts both paths within `PATH_LIMIT`.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from meshvpn.lab import Lab, NatKind, Topology
from meshvpn.lab.mesh import Mesh, wait_for
from meshvpn.lab.timing import logged_at

from test_ipv6_lab import NODE_PORT, relay_by_name
from test_relay_lab import copy_a1_to_b1

pytestmark = [pytest.mark.lab, pytest.mark.timeout(90)]

PATH_LIMIT = 2.5
"""Seconds from both nodes registered (the test nudging from then) to the TCP path over IPv6 both ways:
a punch request, the coord's punch and a simultaneous open, about 0.3 s; the rest is the margin
of a loaded two-core machine. It took about 5 s when the IPv6 endpoints waited for UDP STUN."""


def udp_blocked_both_families(topo: Topology, site: str) -> None:
    topo.block_udp6(site)


def test_udp_blocked_dual_stack_sites_go_direct_over_tcp_on_ipv6_and_reach_the_relay_over_it(
        lab: Lab, tmp_path: Path, meshes: list[Mesh]) -> None:
    topo, mesh = relay_by_name(lab, tmp_path, meshes, NatKind.UDP_BLOCKED, udp_blocked_both_families)
    topo.cut_tcp("a", "b")
    started = time.time()
    mesh.start_registered({name: topo.host(name) for name in ("a1", "b1")})
    try:
        found = mesh.wait_for_paths({("a1", "b1"): ("tcp",), ("b1", "a1"): ("tcp",)}, timeout=30)
        assert len(found) == 2, f"paths: {mesh.peer('a1', 'b1')}, {mesh.peer('b1', 'a1')}"
        for name in ("a1", "b1"):
            link = wait_for(lambda: next((r for r in mesh.status(name)["self"]["relays"] if r["ready"]), None),
                            20, f"{name}'s relay link")
            assert link["transport"] == "tcp" and link["address"] == f"[{topo.addr6('relay')}]:7500", link
            log = mesh.dir / f"{name}.log"
            reported = logged_at(log, re.compile(rf"endpoints: .* ipv6 \[{re.escape(topo.addr6(name))}\]"), started)
            gave_up = wait_for(lambda: logged_at(log, re.compile("no STUN mapping from the coord"), started), 10,
                               f"{name}'s STUN round to give up")
            assert reported is not None and reported < gave_up, (name, reported, gave_up)
    except BaseException:
        print(mesh.logs())
        raise
    took = max(f.seconds for f in found.values())
    print(f"TCP over IPv6 {took:.2f} s after registration")
    assert took <= PATH_LIMIT, took
    assert mesh.peer("a1", "b1")["endpoint"] == f"[{topo.addr6('b1')}]:{NODE_PORT}", mesh.peer("a1", "b1")
    assert mesh.peer("b1", "a1")["endpoint"] == f"[{topo.addr6('a1')}]:{NODE_PORT}", mesh.peer("b1", "a1")
    assert "via tcp" in mesh.cli("a1", "ping", "b1", "-c", "2").stdout
    copy_a1_to_b1(mesh, 2 << 20, 1.0)
    assert mesh.peer("a1", "b1")["path"] == "tcp"
