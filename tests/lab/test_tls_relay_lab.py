"""A node on a network that lets nothing out but TCP to port 443 still reaches its peers.

Hotel and office networks often drop UDP and every TCP port but 443. Here site `a` is such a
network (nftables on its router). The relay offers TLS on port 443 beside its usual UDP/TCP
port 7500: a1's relay link finds UDP and plain TCP dead and moves its stream into TLS
(`meshvpn.tlsenvelope`), and a1 and b1 talk through the relay. The coord either listens on
port 443 itself, or on its usual port with a TLS listener on 443 that a1 falls back to.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from meshvpn.lab import NatKind, Topology
from meshvpn.lab.mesh import Mesh, wait_for
from meshvpn.lab.transfer import transfer

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

COORD_ADDR = "203.0.113.10"
RELAY_ADDR = "203.0.113.20"
TLS_PORT = 443


@pytest.mark.parametrize("coord_over", ["port-443", "tls"])
def test_a_site_that_lets_out_only_port_443_is_relayed_over_tls(topo: Topology, tmp_path: Path,
                                                                 meshes: list[Mesh], coord_over: str) -> None:
    topo.add_server("relay", addrs=[RELAY_ADDR])
    topo.add_site("a", nat=NatKind.PORT_443_ONLY)
    topo.add_site("b", nat=NatKind.RANDOM_PORTS)
    if coord_over == "tls":
        mesh = Mesh(tmp_path, topo.host("coord"), COORD_ADDR)
        mesh.coord_tls_port = TLS_PORT
    else:
        mesh = Mesh(tmp_path, topo.host("coord"), COORD_ADDR, coord_port=TLS_PORT)
    meshes.append(mesh)
    mesh.start_relay("relay", topo.host("relay"), RELAY_ADDR, tls_port=TLS_PORT)
    mesh.start_coord()
    key, _ = mesh.create_auth_key()
    for name in ("a1", "b1"):
        mesh.start_node(name, topo.host(name), key)
    mesh.wait_registered()
    # UDP gets no ack (3 hellos, 1.5 s), plain TCP to 7500 times out (5 s), then TLS.
    relay = wait_for(lambda: next((r for r in mesh.status("a1")["self"]["relays"] if r["ready"]), None), 25,
                     "a1's relay link to come up")
    assert relay["transport"] == "tls", relay
    assert mesh.status("b1")["self"]["relays"][0]["transport"] == "udp"
    found = mesh.wait_for_paths({("a1", "b1"): ("relay",), ("b1", "a1"): ("relay",)}, timeout=20)
    assert len(found) == 2
    sent, received = transfer(mesh.nodes["a1"].ns, mesh.nodes["b1"].ns, mesh.overlay("b1"), size=1 << 20, over=1.0)
    assert received.same_data(sent) and sent.bytes == 1 << 20, f"sent {sent}, received {received}"
    assert "TLS connected" in mesh.nodes["a1"].log.read_text()
    checked = mesh.nodes["a1"].ns.run([sys.executable, "-m", "meshvpn", "netcheck", "-c", str(mesh.nodes["a1"].config)],
                                      check=False, timeout=60).stdout
    assert "relay relay: udp unreachable, tcp unreachable, tls " in checked and "tls unreachable" not in checked, checked
    expected = f"{COORD_ADDR}:{TLS_PORT}"
    assert mesh.status("a1")["self"]["coord_address"] == expected, mesh.status("a1")["self"]["coord_address"]
