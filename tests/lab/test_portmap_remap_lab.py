"""A site reached through its router's port mapping survives the router's NAT re-mapping.

Site a's router is miniupnpd in front of a random-port NAT (`meshvpn.lab.upnp`), a1 maps its
port with UPnP IGD, and b1, behind a random-port NAT, reaches a1 directly through the mapping.
Mid-transfer the router's conntrack is flushed. When a1's packet to b1 passes first (the
transfer goes a1 -> b1, so it usually does), it makes a new masquerade flow from a random port,
which b1's NAT filters; b1's packets to the mapped port then clash with that flow (its reply
tuple is taken), so the kernel shows them to a1 from another source port of b1, and what a1
sends there leaves through the mapping. The first test shows the kernel doing exactly that
with plain sockets (`meshvpn.sim.nat.RemappedFlow` is the same rule in the simulated NAT); the
second that the daemons find the new way at once: a1 learns b1's new endpoint from b1's probes
(b1's data stops with a1's, which no longer reach it), and the newest of them moves a1's path as
soon as it is silent (`meshvpn.node.silence`, `docs/paths.md`), so a1 does not leave a direct path.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from meshvpn.lab import NatKind, Topology
from meshvpn.lab.mesh import Mesh, wait_for
from meshvpn.lab.nat import TABLE, flush_conntrack
from meshvpn.lab.netns import Namespace
from meshvpn.lab.timing import path_kinds

from test_portmap_lab import DIRECT, mapping_of, world  # noqa: F401  (the fixture)
from test_roaming_lab import MARGIN, during_transfer

SILENT_PATH_MOVED = 0.5
"""Seconds of the longest gap: `silence_after` (0.3 s) and b1's probe from its new source."""

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

FORWARDED = 50000
LAN_PORT = 1414
REMOTE = ("203.0.113.30", 6000)

UDP_SOCKET = r"""
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", int(sys.argv[1])))
sock.settimeout(2.0)
print("ready", flush=True)
for line in sys.stdin:
    words = line.split()
    if words[0] == "send":
        sock.sendto(b"x", (words[1], int(words[2])))
        print("sent", flush=True)
    else:
        try:
            print("%s:%d" % sock.recvfrom(2048)[1], flush=True)
        except socket.timeout:
            print("-", flush=True)
"""


class Udp:
    """A UDP socket in a namespace that sends and reports whom it heard from, one step at a time."""

    def __init__(self, ns: Namespace, port: int) -> None:
        self.ns = ns
        self.proc = ns.popen([sys.executable, "-c", UDP_SOCKET, str(port)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        assert self.ask("") == "ready"

    def ask(self, command: str) -> str:
        if command:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def send(self, endpoint: str) -> None:
        assert self.ask("send " + endpoint.replace(":", " ")) == "sent"

    def heard(self) -> str:
        """Whom the next datagram came from, or "-" after 2 s."""
        return self.ask("recv")


def test_the_kernel_shows_a_forwarded_flow_that_clashes_with_an_outbound_one_from_another_port(topo: Topology) -> None:
    """What the simulated NAT does (`meshvpn.sim.nat.RemappedFlow`) is what Linux conntrack does:
    after a flush, a1's own packet to the remote makes a new random flow first; the remote's packet
    to the forwarded port then reaches a1 from another source port, and a1's answer to that port
    leaves from the forwarded port to the remote's real one."""
    topo.add_server("peer", addrs=[REMOTE[0]])
    topo.add_site("a", nat=NatKind.RANDOM_PORTS)
    router, a1 = topo.addr("a"), topo.addr("a1")
    topo.host("a").run(["nft", "-f", "-"], input=f"""insert rule ip {TABLE} forward ct status dnat accept
table ip {TABLE} {{
  chain prerouting {{ type nat hook prerouting priority dstnat; udp dport {FORWARDED} dnat to {a1}:{LAN_PORT}; }}
}}
""")
    inside, remote = Udp(topo.host("a1"), LAN_PORT), Udp(topo.host("peer"), REMOTE[1])
    try:
        remote_at, forwarded = f"{REMOTE[0]}:{REMOTE[1]}", f"{router}:{FORWARDED}"
        remote.send(forwarded)
        assert inside.heard() == remote_at
        inside.send(remote_at)
        assert remote.heard() == forwarded, "the answer leaves through the forward"
        flush_conntrack(topo.host("a"))
        inside.send(remote_at)
        flow = remote.heard()
        assert flow.startswith(router + ":") and flow != forwarded
        remote.send(forwarded)
        seen = inside.heard()
        assert seen.startswith(REMOTE[0] + ":") and seen != remote_at, "the remote shown from another port"
        inside.send(seen)
        assert remote.heard() == forwarded, "an answer to that port leaves through the forward"
        inside.send(remote_at)
        assert remote.heard() == flow, "the outbound flow keeps its own port"
    finally:
        for udp in (inside, remote):
            udp.proc.stdin.close()
            udp.ns.stop(udp.proc)


def direct_again(mesh: Mesh, node: str, peer: str, after: float, kind_of_path: str = "direct") -> float | None:
    """Seconds from `after` until `node`'s path to `peer` was direct (or `kind_of_path`) again, by its
    log: 0 if it never left such a path, None if it left and did not come back."""
    left, back = False, 0.0
    for when, kind in path_kinds(mesh.dir / f"{node}.log", peer, after):
        if kind != kind_of_path:
            left, back = True, None
        elif left:
            back = when - after
    return back


def test_a_mapped_site_stays_direct_through_its_routers_conntrack_flush(world, topo: Topology) -> None:
    mesh = world(["upnp"])
    wait_for(lambda: mapping_of(mesh)["state"] == "mapped", 10, "a1 to map its port with upnp")
    external = mapping_of(mesh)["external"]
    assert len(mesh.wait_for_paths({("a1", "b1"): DIRECT, ("b1", "a1"): DIRECT}, timeout=15)) == 2
    assert mesh.peer("b1", "a1")["endpoint"] == external
    flow, start, end = during_transfer(mesh, lambda: flush_conntrack(topo.host("a")))
    gap = flow.longest_gap(start - 1.0, end + 4.0)
    back = {n: direct_again(mesh, n, p, start) for n, p in (("a1", "b1"), ("b1", "a1"))}
    print(f"conntrack flush (took {end - start:.2f} s): longest gap {gap:.2f} s, direct again {back} "
          f"(0: never left), a1 reaches b1 at {mesh.peer('a1', 'b1')['endpoint']}")
    assert gap < SILENT_PATH_MOVED + MARGIN, f"no traffic for {gap:.2f} s"
    assert all(b is not None and b < 3.0 + MARGIN for b in back.values()), f"direct again: {back}"
    assert mesh.peer("a1", "b1")["path"] == mesh.peer("b1", "a1")["path"] == "direct"
    assert mesh.peer("b1", "a1")["endpoint"] == external, "b1 still reaches a1 through the mapping"
