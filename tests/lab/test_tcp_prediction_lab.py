"""TCP port prediction through the real daemon: a sequential NAT against a site that drops UDP.

The sequential side's NAT gives its TCP connection towards the other site a new port, the next
one after its newest mapping; the side takes a TCP port sample from the coord's STUN port over
TCP, dials the UDP-blocked site from a new port, and that site connects to the ports right above
the sample from its punch port (`meshvpn.node.tcp.prediction`). A neighbour on the sequential
side opens new TCP and UDP flows meanwhile, which take ports of the same NAT.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from meshvpn.lab import NatKind, Topology
from meshvpn.lab.mesh import Mesh
from meshvpn.lab.netns import Namespace
from meshvpn.lab.usernat import background_traffic

from test_relay_lab import RELAY_ADDR, copy_a1_to_b1
from test_traversal_lab import build

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

TCP_BACKGROUND = r"""
import random, socket, sys, time
target, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
end = time.monotonic() + seconds
while time.monotonic() < end:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        sock.connect_ex((target, random.randrange(20000, 60000)))
        time.sleep(0.05)
    time.sleep(random.expovariate(rate))
"""
"""New TCP flows (one SYN each) at a Poisson rate: each takes the next TCP port of a sequential NAT."""


def tcp_background(ns: Namespace, target: str, flows_per_second: float, seconds: float):
    return ns.popen([sys.executable, "-c", TCP_BACKGROUND, target, str(flows_per_second), str(seconds)])


@pytest.mark.parametrize("hard", [NatKind.SEQUENTIAL, NatKind.ADDRESS_DEPENDENT], ids=lambda k: k.name)
def test_a_udp_blocked_site_goes_direct_over_tcp_to_a_sequential_nat(hard, topo: Topology, tmp_path: Path,
                                                                      meshes: list[Mesh]) -> None:
    mesh = build(topo, tmp_path, hard, NatKind.UDP_BLOCKED, hosts_a=2)
    meshes.append(mesh)
    procs = [background_traffic(topo.host("a2"), RELAY_ADDR, 2.0, seconds=60),
             tcp_background(topo.host("a2"), RELAY_ADDR, 1.0, seconds=60)]
    try:
        found = mesh.wait_for_paths({("a1", "b1"): ("tcp",), ("b1", "a1"): ("tcp",)}, timeout=25)
        assert len(found) == 2, f"paths {mesh.peer('a1', 'b1')['path']}, {mesh.peer('b1', 'a1')['path']}\n{mesh.logs()}"
        endpoint = mesh.peer("b1", "a1")["endpoint"]
        assert endpoint.startswith(topo.addr("a") + ":")
        punch = mesh.status("b1")["self"]["tcp_punch"]
        known = [e for peer in punch["peers"].values() for e in peer["endpoints"]]
        assert known and not any(e.startswith(endpoint + " ") for e in known), f"b1 reached a predicted port: {known}"
        assert punch["prediction"]["predicted"] >= 1
        assert mesh.status("a1")["self"]["tcp_punch"]["prediction"]["samples"] >= 1
        assert "via tcp" in mesh.cli("a1", "ping", "b1", "-c", "2").stdout
        copy_a1_to_b1(mesh, 2 << 20, 1.0)
        assert mesh.peer("a1", "b1")["path"] == "tcp"
    finally:
        for proc in procs:
            topo.host("a2").stop(proc)


@pytest.mark.parametrize("cgn", [False, True], ids=["random-ports", "cgn"])
def test_a_udp_blocked_site_goes_direct_over_tcp_to_a_random_port_nat_by_a_birthday_campaign(
        cgn: bool, topo: Topology, tmp_path: Path, meshes: list[Mesh]) -> None:
    """a's NAT (or the ISP's, outside a port-preserving home NAT) draws a random TCP port per
    destination: a1 opens 256 connections to b1's punch port from new ports, b1 connects to 768
    random ports of a's address; one hit is a simultaneous open (95 % a round; two rounds allowed)."""
    if cgn:
        topo.add_site("isp", nat=NatKind.RANDOM_PORTS, hosts=0)
    nat_a = NatKind.PORT_PRESERVING if cgn else NatKind.RANDOM_PORTS
    mesh = build(topo, tmp_path, nat_a, NatKind.UDP_BLOCKED, **({"behind_a": "isp"} if cgn else {}))
    meshes.append(mesh)
    found = mesh.wait_for_paths({("a1", "b1"): ("tcp",), ("b1", "a1"): ("tcp",)}, timeout=30)
    assert len(found) == 2, f"paths {mesh.peer('a1', 'b1')['path']}, {mesh.peer('b1', 'a1')['path']}\n{mesh.logs()}"
    assert mesh.peer("b1", "a1")["endpoint"].startswith(topo.addr("isp" if cgn else "a") + ":")
    assert mesh.status("b1")["self"]["tcp_punch"]["prediction"]["predicted"] >= 1
    assert "via tcp" in mesh.cli("a1", "ping", "b1", "-c", "2").stdout
    copy_a1_to_b1(mesh, 2 << 20, 1.0)
    assert mesh.peer("a1", "b1")["path"] == "tcp"
