"""A peer relay end to end: real daemons, a real coord and server relay, NATs that defeat hole punching.

Sites `a` and `b` sit behind random-port NATs, so nothing direct joins them; site `h` (the LAN
party's host) is behind a port-preserving NAT, and the admin allows its node to relay for the
network (`meshvpn coord relays allow h1`). The server relay is far: the guests' NATs hold its
packets back 40 ms each way (userspace NATs, `UserNat.with_delay`: this kernel has no netem).
The guests seek a path to the host as soon as it is offered as a relay (birthday probing opens a
way through both NATs; nothing else makes them talk to it), and the relay link goes the same way, so `a1` and `b1` are relayed by `h1`, whose round trip
is below the server relay's, with a checksummed transfer that `h1`'s native loop forwards; `h1`'s own
traffic stays direct.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshvpn.lab import NatKind, Topology
from meshvpn.lab.mesh import Mesh, wait_for
from meshvpn.lab.transfer import transfer
from meshvpn.lab.usernat import UserNat
from meshvpn.sim.nat import SYMMETRIC_RANDOM

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

COORD_ADDR = "203.0.113.10"
RELAY_ADDR = "203.0.113.20"
FAR = 0.040
"""Seconds the guests' NATs hold back each packet to or from the server relay."""
GUEST_NAT = UserNat("random-ports", SYMMETRIC_RANDOM).with_delay(RELAY_ADDR, FAR)


def relayed_by_the_host(topo: Topology, workdir: Path) -> Mesh:
    """Sites a and b (random ports) and h (port-preserving), the far server relay, the coord, a1,
    b1 and h1 registered, h1 allowed to relay."""
    topo.add_server("relay", addrs=[RELAY_ADDR])
    for name, nat in (("a", GUEST_NAT), ("b", GUEST_NAT), ("h", NatKind.PORT_PRESERVING)):
        topo.add_site(name, nat=nat)
    mesh = Mesh(workdir, topo.host("coord"), COORD_ADDR)
    mesh.start_relay("relay", topo.host("relay"), RELAY_ADDR)
    mesh.start_coord()
    key, _ = mesh.create_auth_key()
    for name in ("h1", "a1", "b1"):
        mesh.start_node(name, topo.host(name), key)
    mesh.wait_registered()
    assert "may relay: h1" in mesh.admin("relays", "allow", "h1").stdout
    return mesh


def test_two_random_port_sites_are_relayed_by_a_member_allowed_to_relay(topo: Topology, tmp_path: Path,
                                                                        meshes: list[Mesh]) -> None:
    mesh = relayed_by_the_host(topo, tmp_path)
    meshes.append(mesh)
    wait_for(lambda: all(all(r["ready"] for r in mesh.status(n)["self"]["relays"]) for n in ("a1", "b1")),
             30, "both guests to reach both relays, the host's by their own path to it")
    # The relay link may be ready a moment before the path to the host is confirmed both ways.
    wait_for(lambda: [mesh.peer(guest, "h1")["path"] for guest in ("a1", "b1")] == ["direct", "direct"],
             10, "both guests to hold a direct path to the host")
    found = mesh.wait_for_paths({("a1", "b1"): ("relay",), ("b1", "a1"): ("relay",)}, timeout=15)
    assert len(found) == 2
    for src, dst in (("a1", "b1"), ("b1", "a1")):
        peer = mesh.peer(src, dst)
        assert (peer["relay"], peer["peer_relay"]) == ("h1", True), peer
    assert "via h1 (peer relay)" in mesh.cli("a1", "status").stdout
    for guest in ("a1", "b1"):
        rtt = {r["name"]: r["rtt_ms"] for r in mesh.status(guest)["self"]["relays"]}
        assert rtt["h1"] < rtt["relay"] and rtt["relay"] >= 2 * FAR * 1000, rtt
    sent, received = transfer(mesh.nodes["a1"].ns, mesh.nodes["b1"].ns, mesh.overlay("b1"), size=1 << 20, over=1.0)
    assert received.same_data(sent) and sent.bytes == 1 << 20, f"sent {sent}, received {received}"
    relaying = mesh.status("h1")["self"]["relaying"]
    assert relaying["nodes"] == 2 and relaying["forwarded"] > 500, relaying
    native = mesh.status("h1")["self"]["native_loop"]
    assert native["peer relay forwarded natively"] > 500, "the host's native loop forwards the pair's envelopes"
    assert mesh.peer("h1", "a1")["path"] == "direct"
    assert "(peer relay)" in mesh.cli("a1", "peers").stdout
