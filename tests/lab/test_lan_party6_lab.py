"""The LAN party on an IPv6 overlay: real daemons, real TUNs, the kernel's own MLD and ICMPv6.

Two sites behind port-preserving NATs, one node each, in a network whose overlay prefix is IPv6
(`fd7a:115c:a1e0::/64`) with access rules: default deny, UDP 5000-5010 open. bob joins a group on
its TUN as a game or an mDNS responder would (`IPV6_JOIN_GROUP` with the interface index); its
kernel reports it in MLD, alice learns it through the coord, and a datagram alice sends to the
group with the TUN's scope id reaches bob's socket from alice's overlay address. Then a connected
UDP socket of alice's to a port of bob's that the rules open but nothing listens on gets
ECONNREFUSED from bob's kernel's ICMPv6 Port Unreachable, which no rule lets in: it comes in as
related to alice's flow.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
import pytest

from meshvpn.lab import Lab, NatKind, Topology
from meshvpn.lab.mesh import Mesh, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.timeout(90)]

COORD_ADDR = "203.0.113.10"
CIDR6 = "fd7a:115c:a1e0::/64"
TUN = "mvtun0"
GROUP, PORT = "ff02::4d56", 5005
"""A game-like link-scope group, on a port the rules open."""
RULES = {"default": "deny", "rules": [{"from": "*", "to": "*", "services": ["udp/5000-5010"]}]}

LISTEN = """
import select, socket, struct, sys
index = socket.if_nametoindex(sys.argv[1])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", int(sys.argv[3])))
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, socket.inet_pton(socket.AF_INET6, sys.argv[2]) + struct.pack("@I", index))
print("joined", flush=True)
if select.select([s], [], [], float(sys.argv[4]))[0]:
    data, source = s.recvfrom(2048)
    print(source[0], data.decode(), flush=True)
"""
NUDGE = """
import socket, sys
socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).sendto(b"nudge", (sys.argv[1], int(sys.argv[2])))
"""
SEND = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.sendto(b"LAN6", (sys.argv[2], int(sys.argv[3]), 0, socket.if_nametoindex(sys.argv[1])))
"""
REFUSED = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.settimeout(float(sys.argv[3]))
s.connect((sys.argv[1], int(sys.argv[2])))
s.send(b"anyone?")
try:
    s.recv(100)
    print("answered")
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("silence")
"""


@pytest.fixture
def mesh(lab: Lab, meshes: list[Mesh], tmp_path: Path) -> Mesh:
    """alice and bob registered in the IPv6 network with its rules, a direct path each way."""
    topo = Topology(lab)
    topo.add_server("coord", addrs=[COORD_ADDR])
    for site in ("a", "b"):
        topo.add_site(site, nat=NatKind.PORT_PRESERVING)
    mesh = Mesh(tmp_path, topo.host("coord"), COORD_ADDR, cidr=CIDR6)
    meshes.append(mesh)
    mesh.access = RULES
    mesh.start_coord()
    key, _ = mesh.create_auth_key()
    mesh.start_node("alice", topo.host("a1"), key, tun=TUN)
    mesh.start_node("bob", topo.host("b1"), key, tun=TUN)
    mesh.wait_registered()
    for src, dst in (("alice", "bob"), ("bob", "alice")):  # the lab's nudge pings IPv4: nudge by UDP here
        wait_for(lambda: nudged(mesh, src, dst), 25, f"a direct path from {src} to {dst}")
    return mesh


def nudged(mesh: Mesh, src: str, dst: str) -> bool:
    """Whether `src` has a direct path to `dst`; if not, one datagram to `dst` (paths are made on demand)."""
    if mesh.peer(src, dst)["path"] == "direct":
        return True
    mesh.nodes[src].ns.run([sys.executable, "-c", NUDGE, mesh.overlay(dst), str(PORT - 5)], check=False)
    return False


def python(mesh: Mesh, name: str, script: str, *args: str) -> subprocess.Popen:
    return mesh.nodes[name].ns.popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True)


def test_a_datagram_to_an_ipv6_group_reaches_the_peer_that_joined_it(mesh: Mesh) -> None:
    """The TUN has no link-local address, so the datagram leaves from the overlay address, which bob takes as alice's."""
    shown = mesh.nodes["alice"].ns.run(["ip", "-6", "-o", "addr", "show", "dev", TUN])
    assert "fd7a:115c:a1e0::" in shown.stdout and "fe80" not in shown.stdout, shown.stdout
    listener = python(mesh, "bob", LISTEN, TUN, GROUP, str(PORT), "15")
    assert listener.stdout.readline().strip() == "joined"
    wait_for(lambda: {p["name"]: p["groups"] for p in mesh.status("alice")["peers"]} == {"bob": [GROUP]}, 10,
             f"alice to learn that bob joined {GROUP}")
    before = mesh.status("alice")["self"]["lan"]["sent"]
    python(mesh, "alice", SEND, TUN, GROUP, str(PORT)).wait(10)
    heard = listener.communicate(timeout=20)[0].split()
    assert heard == [mesh.overlay("alice"), "LAN6"], mesh.logs()
    sent = mesh.status("alice")["self"]["lan"]["sent"]
    assert (sent["multicast"] - before["multicast"], sent["copies"] - before["copies"]) == (1, 1)
    assert mesh.status("bob")["self"]["lan"]["received"]["multicast"] >= 1


def test_a_port_unreachable_about_an_allowed_flow_refuses_the_connection_at_once(mesh: Mesh) -> None:
    """No rule lets ICMPv6 in (default deny); the error about alice's datagram comes in as related."""
    before = mesh.status("alice")["self"]["lan"]["dropped"].get("access default", 0)
    answer = python(mesh, "alice", REFUSED, mesh.overlay("bob"), str(PORT + 1), "5").communicate(timeout=15)[0]
    assert answer.strip() == "refused", (answer, mesh.status("alice")["self"]["lan"])
    assert mesh.status("alice")["self"]["lan"]["dropped"].get("access default", 0) == before
