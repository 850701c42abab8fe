"""Both sites let no UDP out and map TCP to a random port per destination: the pair still gets a path.

Sites a and b drop outgoing UDP behind NATs that give every outgoing TCP connection a random
port (`masquerade fully-random`). No UDP path is possible, and a TCP simultaneous open needs each
side to connect to the port the other's NAT will pick for it, which neither can predict (TCP
birthday campaigns, `meshvpn.node.tcp.prediction`, work from a side whose mapping is known, and
here neither's is). What the pair gets is the relay: each relay link hears nothing over UDP,
races a stream after 0.5 s and is home over TCP. Target: a relay path within 3 s of the daemon's
start (its first log line, as `test_tls_relay_lab.py` measures it, which says the margins).
Measured on a 2-core machine shared with other suites (2026-12-05, load average 6-8, two runs):
relay links up over TCP 0.65-0.78 s after the daemons started; both peers on the relay path
2.3-2.5 s after the test's first nudge (the path finder's 2 s `relay_after`).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from meshvpn.lab import Topology
from meshvpn.lab.mesh import Mesh
from meshvpn.lab.nat import NftNat
from meshvpn.lab.timing import logged_at

from test_relay_lab import copy_a1_to_b1, two_site_mesh
from test_tls_relay_lab import RELAY_WITHIN, relayed_after

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

RANDOM_PORTS_UDP_BLOCKED = NftNat(
    name="random-ports-udp-blocked",
    behaviour="a random port per destination for TCP; all outgoing UDP dropped",
    translate=("masquerade fully-random",),
    block_udp=True,
)


def test_udp_blocked_sites_behind_random_port_nats_relay_within_3s(topo: Topology, tmp_path: Path,
                                                                   meshes: list[Mesh]) -> None:
    mesh = two_site_mesh(topo, tmp_path, RANDOM_PORTS_UDP_BLOCKED, RANDOM_PORTS_UDP_BLOCKED)
    meshes.append(mesh)
    for name in ("a1", "b1"):
        started = logged_at(mesh.nodes[name].log, re.compile("."), 0.0)
        took = relayed_after(mesh, name, started, "tcp")
        print(f"{name}: relay link up over TCP {took:.2f} s after the daemon started")
        assert took < RELAY_WITHIN, f"{name} relayed {took:.2f} s after start"
    found = mesh.wait_for_paths({("a1", "b1"): ("relay", "tcp"), ("b1", "a1"): ("relay", "tcp")}, timeout=20)
    assert len(found) == 2, f"paths: {mesh.peer('a1', 'b1')}, {mesh.peer('b1', 'a1')}"
    paths = {n: mesh.peer(n, o)["path"] for n, o in (("a1", "b1"), ("b1", "a1"))}
    print(f"paths: {paths} after {max(f.seconds for f in found.values()):.2f} s of nudging")
    copy_a1_to_b1(mesh, 2 << 20, 1.0)
    assert mesh.peer("a1", "b1")["path"] in ("relay", "tcp")
