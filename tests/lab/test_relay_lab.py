"""Relays end to end: real daemons, a real relay and coord, kernel NATs that defeat hole punching.

Each test is a script on one topology: a coord at 203.0.113.10, a relay at 203.0.113.20 and two
sites, `a` and `b`, each with one node behind its own NAT.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshvpn.lab import NatKind, Topology
from meshvpn.lab.mesh import Mesh, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

COORD_ADDR = "203.0.113.10"
RELAY_ADDR = "203.0.113.20"
MARKER = b"MESHVPN-RELAYED-PLAINTEXT-5c1e"

TCP_SINK = r"""
import hashlib, socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], 9000)); srv.listen(1)
print("ready", flush=True)
conn, _ = srv.accept(); digest = hashlib.sha256(); total = 0
while chunk := conn.recv(65536):
    digest.update(chunk); total += len(chunk)
print(total, digest.hexdigest(), flush=True)
"""

TCP_SOURCE = r"""
import hashlib, os, socket, sys, time
size, seconds = int(sys.argv[2]), float(sys.argv[3])
chunk = os.urandom(size // 64); digest = hashlib.sha256(); total = 0
sock = socket.create_connection((sys.argv[1], 9000), timeout=30)
print("started", flush=True)
for _ in range(64):
    sock.sendall(chunk); digest.update(chunk); total += len(chunk)
    time.sleep(seconds / 64)
sock.close()
print(total, digest.hexdigest(), flush=True)
"""

UDP_MARKER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(20):
    s.sendto(sys.argv[2].encode() * 4, (sys.argv[1], 9001))
"""


def relayed_mesh(topo: Topology, workdir: Path, nat_a, nat_b) -> Mesh:
    topo.add_server("relay", addrs=[RELAY_ADDR])
    topo.add_site("a", nat=nat_a)
    topo.add_site("b", nat=nat_b)
    mesh = Mesh(workdir, topo.host("coord"), COORD_ADDR)
    mesh.start_relay("relay", topo.host("relay"), RELAY_ADDR)
    mesh.start_coord()
    key, _ = mesh.create_auth_key()
    for name in ("a1", "b1"):
        mesh.start_node(name, topo.host(name), key)
    mesh.wait_registered()
    wait_for(lambda: all(r["ready"] for n in ("a1", "b1") for r in mesh.status(n)["self"]["relays"]), 15,
             "both nodes to reach the relay")
    return mesh


@pytest.fixture
def run(topo: Topology, tmp_path: Path):
    """Build the relayed mesh with the NATs a test asks for; print every log if the test fails."""
    meshes: list[Mesh] = []

    def build(nat_a=NatKind.RANDOM_PORTS, nat_b=NatKind.RANDOM_PORTS) -> Mesh:
        meshes.append(relayed_mesh(topo, tmp_path, nat_a, nat_b))
        return meshes[-1]

    try:
        yield build
    except BaseException:
        for mesh in meshes:
            print(mesh.logs())
        raise
    finally:
        for mesh in meshes:
            mesh.stop_nodes()


def transfer(mesh: Mesh, topo: Topology, size: int, seconds: float, during=None) -> None:
    """Copy `size` random bytes a1 → b1 over the mesh in about `seconds`; `during()` runs meanwhile."""
    sink = topo.host("b1").popen([sys.executable, "-c", TCP_SINK, mesh.overlay("b1")], stdout=subprocess.PIPE, text=True)
    assert sink.stdout.readline().strip() == "ready"
    source = topo.host("a1").popen([sys.executable, "-c", TCP_SOURCE, mesh.overlay("b1"), str(size), str(seconds)],
                                   stdout=subprocess.PIPE, text=True)
    assert source.stdout.readline().strip() == "started"
    if during is not None:
        during()
    sent = source.stdout.readline().split()
    received = sink.stdout.readline().split()
    assert received == sent and int(sent[0]) == size


def test_random_port_nats_are_relayed_over_udp_within_3s(run, topo: Topology) -> None:
    mesh = run()
    started = time.monotonic()
    found = mesh.wait_for_paths({("a1", "b1"): ("relay",)}, timeout=10)
    assert ("a1", "b1") in found, "a1 never used the relay"
    assert time.monotonic() - started < 3.5, f"relay took {found['a1', 'b1'].seconds:.1f}s"
    assert any(mesh.nudge("b1", "a1") for _ in range(5))
    assert mesh.peer("b1", "a1")["path"] == "relay"
    relay = mesh.status("a1")["self"]["relays"][0]
    assert relay["transport"] == "udp" and relay["home"]
    assert "via relay" in mesh.cli("a1", "ping", "b1", "-c", "2").stdout
    transfer(mesh, topo, 2 << 20, 2.0)
    assert mesh.peer("a1", "b1")["path"] == "relay"


def test_a_site_without_udp_is_relayed_over_tcp(run, topo: Topology) -> None:
    mesh = run(nat_a=NatKind.UDP_BLOCKED)
    assert mesh.status("a1")["self"]["relays"][0]["transport"] == "tcp"
    found = mesh.wait_for_paths({("a1", "b1"): ("relay",), ("b1", "a1"): ("relay",)}, timeout=15)
    assert len(found) == 2
    transfer(mesh, topo, 1 << 20, 1.0)


def test_relay_upgrades_to_direct_when_the_nat_allows_it(run, topo: Topology) -> None:
    mesh = run()
    assert mesh.wait_for_paths({("a1", "b1"): ("relay",)}, timeout=10)
    upgraded: list[float] = []

    def open_the_nats() -> None:
        changed = time.monotonic()
        topo.set_nat("a", NatKind.PORT_PRESERVING)
        topo.set_nat("b", NatKind.PORT_PRESERVING)
        wait_for(lambda: mesh.peer("a1", "b1")["path"] == "direct", 10, "the upgrade to a direct path")
        upgraded.append(time.monotonic() - changed)

    transfer(mesh, topo, 4 << 20, 12.0, during=open_the_nats)
    assert upgraded and upgraded[0] < 10


def test_traffic_recovers_within_5s_of_a_relay_restart(run, topo: Topology) -> None:
    mesh = run()
    assert mesh.wait_for_paths({("a1", "b1"): ("relay",)}, timeout=10)
    relay = mesh.relays["relay"]
    relay.ns.stop(relay.proc)
    restarted = time.monotonic()
    mesh.relays["relay"] = mesh._spawn("relay", relay.ns, "relay", relay.config)
    wait_for(lambda: mesh.nudge("a1", "b1", timeout=0.3), 5, "traffic through the restarted relay")
    assert time.monotonic() - restarted < 5


def test_the_relay_link_never_carries_plaintext(run, topo: Topology) -> None:
    mesh = run()
    assert mesh.wait_for_paths({("a1", "b1"): ("relay",)}, timeout=10)
    capture = mesh.dir / "relay.pcap"
    relay_ns = topo.host("relay")
    dump = relay_ns.popen(["tcpdump", "-i", "any", "-U", "-w", str(capture)], stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        topo.host("a1").run([sys.executable, "-c", UDP_MARKER, mesh.overlay("b1"), MARKER.decode()])
        time.sleep(1.0)
    finally:
        relay_ns.stop(dump)
    data = capture.read_bytes()
    assert data.count(b"\x01\x07\x00\x00") >= 20, "the capture saw the relayed traffic"
    assert MARKER not in data
