"""TCP hole punching end to end: first the seed article's claim with plain sockets, then daemons.

Both sites sit behind port-preserving nftables masquerade NATs with a firewall that admits from
the WAN only what belongs to a connection started inside; the daemon tests also drop all
outgoing UDP (`NatKind.UDP_BLOCKED`), so without TCP punching the only path is the relay.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from meshvpn.lab import NatKind, Topology
from meshvpn.lab.mesh import Mesh, wait_for
from meshvpn.lab.netns import Namespace

from test_portmap_remap_lab import direct_again
from test_relay_lab import copy_a1_to_b1, run  # noqa: F401  (run is the mesh fixture)
from test_roaming_lab import MARGIN, during_transfer

pytestmark = [pytest.mark.lab, pytest.mark.timeout(150)]

NODE_PORT = 41641
"""The daemons' UDP port, and so their TCP punch port."""

TCP_DIAL = r"""
import socket, sys, time
mode, port, host, peer_port, window = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
deadline = time.monotonic() + window
while True:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    sock.settimeout(max(0.1, min(1.5, deadline - time.monotonic())))
    try:
        sock.connect((host, peer_port))
    except ConnectionRefusedError:
        result = "refused"
    except OSError:
        result = "timeout"
    else:
        sock.settimeout(5)
        sock.sendall(b"hello from " + sys.argv[6].encode() + b"\n")
        line = sock.makefile().readline().strip()
        peer = "%s:%d" % sock.getpeername()[:2]
        print("connected", peer, line.replace(" ", "_"), flush=True)
        sock.close()
        break
    sock.close()
    if mode == "once" or time.monotonic() >= deadline:
        print(result, flush=True)
        break
    time.sleep(0.1)
"""


TCP_WATCH = r"""
import socket, struct, sys, time
port, host, syn_first = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
if syn_first:
    syn = socket.socket()
    syn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    syn.bind(("0.0.0.0", port))
    syn.settimeout(0.5)
    try:
        syn.connect((host, port))
    except OSError:
        pass
    syn.close()
print("watching", flush=True)
deadline, seen = time.monotonic() + 2.0, "nothing"
while seen == "nothing" and time.monotonic() < deadline:
    raw.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        packet = raw.recv(2048)
    except OSError:
        break
    ihl = (packet[0] & 15) * 4
    sport, dport = struct.unpack_from("!HH", packet, ihl)
    if dport == port and packet[ihl + 13] & 2:
        seen = "syn-from %s:%d" % (socket.inet_ntoa(packet[12:16]), sport)
print(seen, flush=True)
"""


def dial(ns: Namespace, mode: str, port: int, peer: str, window: float, name: str) -> subprocess.Popen:
    """connect() from `port` to `peer:port`: `once`, or `retry` until connected or `window` is over."""
    return ns.popen([sys.executable, "-c", TCP_DIAL, mode, str(port), peer, str(port), str(window), name],
                    stdout=subprocess.PIPE, text=True)


def watch(ns: Namespace, port: int, peer: str, syn_first: bool) -> subprocess.Popen:
    """Report the first SYN that reaches `ns` for `port` within 2 s, after one SYN from it to `peer:port` if asked."""
    proc = ns.popen([sys.executable, "-c", TCP_WATCH, str(port), peer, "1" if syn_first else "0"],
                    stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "watching"
    return proc


def result(proc: subprocess.Popen) -> list[str]:
    return proc.communicate(timeout=30)[0].split()


@pytest.fixture
def sites(topo: Topology) -> Topology:
    topo.add_site("a", nat=NatKind.PORT_PRESERVING)
    topo.add_site("b", nat=NatKind.PORT_PRESERVING)
    return topo


def test_an_outgoing_syn_opens_the_nat_for_the_peer_and_simultaneous_open_connects(sites: Topology) -> None:
    a1, b1 = sites.host("a1"), sites.host("b1")
    a_wan, b_wan = sites.addr("a"), sites.addr("b")

    # Nothing from outside gets in unasked: the NAT drops a SYN nobody inside sent for.
    watcher = watch(b1, 5001, a_wan, syn_first=False)
    assert result(dial(a1, "once", 5001, b_wan, 0.6, "a1")) == ["timeout"]
    assert result(watcher) == ["nothing"]

    # After one outgoing SYN to a's address and port (itself lost at a's NAT), b's NAT forwards
    # a SYN from there to the inside host. (b1's kernel answers it with a RST for the closed
    # port, which this kernel's conntrack may judge out of window and keep from a1: the SYN/ACK
    # of a real simultaneous open continues the inside host's own sequence and passes.)
    watcher = watch(b1, 5002, a_wan, syn_first=True)
    dial(a1, "once", 5002, b_wan, 0.6, "a1").communicate(timeout=30)
    assert result(watcher) == ["syn-from", f"{a_wan}:5002"]

    # Both connect at once: the SYNs cross, each NAT lets the other's in, one TCP connection.
    procs = [dial(a1, "retry", 5003, b_wan, 8, "a1"), dial(b1, "retry", 5003, a_wan, 8, "b1")]
    got_a, got_b = (result(proc) for proc in procs)
    assert got_a == ["connected", f"{b_wan}:5003", "hello_from_b1"]
    assert got_b == ["connected", f"{a_wan}:5003", "hello_from_a1"]


def drop_tcp_between(topo: Topology, site: str, peer_wan: str, on: bool) -> None:
    """Cut (or restore) TCP between `site`'s NAT and `peer_wan`'s punch port: the path goes silent."""
    ns = topo.site(site).links.ns
    rules = (f"table ip tcpcut {{\n  chain forward {{\n    type filter hook forward priority -10; policy accept;\n"
             f"    ip daddr {peer_wan} tcp dport {NODE_PORT} drop\n"
             f"    ip saddr {peer_wan} tcp sport {NODE_PORT} drop\n  }}\n}}\n")
    ns.run(["nft", "-f", "-"], input=rules if on else "table ip tcpcut\ndelete table ip tcpcut\n")


def test_udp_blocked_sites_get_a_direct_tcp_path_and_fall_back_to_the_relay(run, topo: Topology) -> None:
    mesh: Mesh = run(nat_a=NatKind.UDP_BLOCKED, nat_b=NatKind.UDP_BLOCKED)
    a_wan, b_wan = topo.addr("a"), topo.addr("b")
    assert mesh.status("a1")["self"]["tcp_punch"]["listen"] == f"0.0.0.0:{NODE_PORT}"
    found = mesh.wait_for_paths({("a1", "b1"): ("tcp",), ("b1", "a1"): ("tcp",)}, timeout=20)
    assert len(found) == 2, f"paths: {mesh.peer('a1', 'b1')['path']}, {mesh.peer('b1', 'a1')['path']}"
    assert mesh.peer("a1", "b1")["endpoint"] == f"{b_wan}:{NODE_PORT}"
    assert mesh.peer("b1", "a1")["endpoint"] == f"{a_wan}:{NODE_PORT}"
    assert "via tcp" in mesh.cli("a1", "ping", "b1", "-c", "2").stdout
    copy_a1_to_b1(mesh, 2 << 20, 1.0)
    assert mesh.peer("a1", "b1")["path"] == "tcp"

    drop_tcp_between(topo, "a", b_wan, on=True)
    wait_for(lambda: mesh.peer("a1", "b1")["path"] == "relay", 16, "a1 to fall back to the relay")
    wait_for(lambda: mesh.peer("b1", "a1")["path"] == "relay", 16, "b1 to fall back to the relay")
    assert any(mesh.nudge("a1", "b1") for _ in range(5))
    assert "via relay" in mesh.cli("a1", "ping", "b1", "-c", "1").stdout

    drop_tcp_between(topo, "a", b_wan, on=False)
    found = mesh.wait_for_paths({("a1", "b1"): ("tcp",)}, timeout=45)
    assert found, "the TCP path never came back after the cut was repaired"


REMAPPING_BLOCKED = dataclasses.replace(NatKind.PORT_RANGE, name="udp-blocked-port-range", block_udp=True)
"""UDP still blocked, TCP sources moved into a port range: swapped in (with a conntrack flush),
every flow of the site leaves from a new public port."""


def test_a_udp_blocked_sites_nat_re_mapping_mid_transfer_on_tcp(run, topo: Topology) -> None:
    """The TCP path goes silent under the transfer (neither end's kernel hears the other again);
    silence detection leaves it for the relay within a second, a1's coord link reconnects from
    its punch port, so b1 learns the new mapping, and both punch over TCP again (`docs/paths.md`)."""
    mesh: Mesh = run(nat_a=NatKind.UDP_BLOCKED, nat_b=NatKind.PORT_PRESERVING)
    assert len(mesh.wait_for_paths({("a1", "b1"): ("tcp",), ("b1", "a1"): ("tcp",)}, timeout=20)) == 2
    before = mesh.peer("b1", "a1")["endpoint"]
    flow, start, end = during_transfer(mesh, lambda: topo.set_nat("a", REMAPPING_BLOCKED))
    gap = flow.longest_gap(start - 1.0, end + 4.0)
    back = {n: direct_again(mesh, n, p, start, "tcp") for n, p in (("a1", "b1"), ("b1", "a1"))}
    print(f"re-mapping on tcp (took {end - start:.2f} s): longest gap {gap:.2f} s, tcp again {back} "
          f"(0: never left), b1 reaches a1 at {mesh.peer('b1', 'a1')['endpoint']} (was {before})")
    assert gap < 1.0 + MARGIN, f"no traffic for {gap:.2f} s"
    assert all(b is not None and b < 3.0 + MARGIN for b in back.values()), f"tcp again: {back}"
    assert mesh.peer("a1", "b1")["path"] == mesh.peer("b1", "a1")["path"] == "tcp"
    assert mesh.peer("b1", "a1")["endpoint"] != before, "b1 follows a1 to its new punch port mapping"
