"""The bench's network and its rows: how each tunnel is configured and brought up.

Two namespaces, `a` and `b`, share one veth pair (MTU 1500); a third, `side`, hangs off `a`
for servers a row needs besides the two ends (meshvpn's coordination server, later relays).
Rows marked ``net="nat"`` run on a second net instead (`build_nat_net`), built only when such
a row runs: hosts `na1` and `nb1` behind kernel NAT routers (`meshvpn.lab.Topology`, the same
NATs as the lab tests and the demo) and a server on the simulated internet.
Every row is a `Row` in `ROWS`: a name, a kind and a `start(net, workdir) -> Tunnel` that
starts its processes with `Namespace.popen` (so teardown can kill them by PID) and returns
the address of `b` inside the tunnel (`meshvpn.bench.tunnels`; the peer VPNs' in
`meshvpn.bench.peervpns`). Rows run one at a time; `BenchNet.stop_all()` ends a
row's processes, and with them its TUN devices, before the next starts. Each tunnel uses its
own overlay subnet from 10.200.0.0/16 and its program's default MTU.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from meshvpn.bench.peervpns import start_nebula, start_quicktun, start_tinc, start_wireguard_go
from meshvpn.bench.report import BASELINE, MESHVPN, PEER
from meshvpn.bench.tunnels import POLL_SECONDS, START_TIMEOUT, BenchError, Tunnel, link_mtu, reachable, tails, wait_for
from meshvpn.lab import Lab, LabError, Namespace, Nat, NatKind, Topology
from meshvpn.lab.mesh import Mesh
from meshvpn.lab.mesh import wait_for as mesh_wait_for

A_ADDR, B_ADDR = "198.51.100.1", "198.51.100.2"
SIDE_GATEWAY, SIDE_ADDR = "198.51.100.129", "198.51.100.130"
LINK_PREFIX = 25
SIDE_NET = "198.51.100.128/25"
"""The a–b link is 198.51.100.0/25, the a–side link this one."""
LINK_MTU = 1500


class BenchLab(Lab):
    """A lab whose namespaces are named `mvb<PID>-<short>`, apart from test and demo labs."""

    def __init__(self) -> None:
        super().__init__()
        self.prefix = f"mvb{os.getpid()}"


@dataclass
class BenchNet:
    """The namespaces every row runs in."""

    a: Namespace
    """Client end: iperf3 and ping run here."""
    b: Namespace
    """Server end: iperf3 -s runs here."""
    side: Namespace
    """Behind `a` (routed), for a row's servers."""
    a_addr: str = A_ADDR
    b_addr: str = B_ADDR
    side_addr: str = SIDE_ADDR
    topology: Topology | None = None
    """The NAT net's topology (`build_nat_net`), whose NATs a row sets; None for the link net."""

    def sides(self) -> list[tuple[Namespace, str, str]]:
        """(namespace, its link address, the other end's link address) for `a`, then `b`."""
        return [(self.a, self.a_addr, self.b_addr), (self.b, self.b_addr, self.a_addr)]

    def stop_all(self) -> None:
        """Stop every process started in the bench namespaces (newest first)."""
        for ns in (self.a, self.b, self.side):
            for proc in list(reversed(ns.processes)):
                ns.stop(proc)
        self.b.run(["nft", "delete", "table", "inet", BLOCK_TABLE], check=False)


@dataclass(frozen=True)
class Row:
    """One line of the bench table."""

    name: str
    kind: str
    """`BASELINE`, `MESHVPN` or `PEER` (see `meshvpn.bench.report`)."""
    start: Callable[[BenchNet, Path], Tunnel]
    """Brings the tunnel up; files go to the given directory, processes via `Namespace.popen`."""
    programs: tuple[str, ...] = ()
    """Executables the row needs; a missing one fails the row, not the bench."""
    net: str = "link"
    """``link`` (the a–b veth) or ``nat`` (both ends behind NAT routers, `build_nat_net`)."""


def build_net(lab: Lab) -> BenchNet:
    """Create `a`, `b` and `side` in `lab` and wire them; nothing touches the root namespace."""
    a, b, side = lab.namespace("a", forwarding=True), lab.namespace("b"), lab.namespace("side")
    for ns, peer, here, there in ((a, b, "ab", "ba"), (a, side, "as", "sa")):
        ns.ip("link", "add", f"veth-{here}", "mtu", str(LINK_MTU), "type", "veth",
              "peer", "name", f"veth-{there}", "netns", peer.name)
    for ns, dev, addr in ((a, "veth-ab", A_ADDR), (b, "veth-ba", B_ADDR),
                          (a, "veth-as", SIDE_GATEWAY), (side, "veth-sa", SIDE_ADDR)):
        ns.ip("addr", "add", f"{addr}/{LINK_PREFIX}", "dev", dev)
        ns.ip("link", "set", dev, "up")
    b.ip("route", "add", SIDE_NET, "via", A_ADDR)
    side.ip("route", "add", "default", "via", SIDE_GATEWAY)
    return BenchNet(a, b, side)


NAT_SERVER_ADDR = "203.0.113.10"


def build_nat_net(lab: Lab) -> BenchNet:
    """Hosts `na1` and `nb1` behind their own NAT routers `na` and `nb`, and a server `nside` on the
    simulated internet (`meshvpn.lab.Topology`); a row picks the NATs (`set_nats`)."""
    topology = Topology(lab)
    topology.add_server("nside", addrs=[NAT_SERVER_ADDR])
    for site in ("na", "nb"):
        topology.add_site(site)
    return BenchNet(topology.host("na1"), topology.host("nb1"), topology.host("nside"), topology.addr("na1"),
                    topology.addr("nb1"), NAT_SERVER_ADDR, topology)


def set_nats(net: BenchNet, nat_a: Nat, nat_b: Nat) -> None:
    """Give the NAT net's routers these NATs (and forget every mapping)."""
    net.topology.set_nat("na", nat_a)
    net.topology.set_nat("nb", nat_b)




def start_plain(net: BenchNet, workdir: Path) -> Tunnel:
    """No tunnel: the veth pair itself, the ceiling of every other row."""
    return Tunnel(target=B_ADDR, mtu=link_mtu(net.a, "veth-ab"))


MESHVPN_NETWORK, MESHVPN_SUBNET = "bench", "10.200.0.0/24"
MESHVPN_SUBNET6 = "fd7a:115c:a1e0::/64"
"""The overlay prefix of the IPv6 row: the network carries IPv6 between its nodes."""
NODE_PORT = 41641
MESHVPN_TUN = "meshvpn0"
BLOCK_TABLE = "benchblock"
"""nftables table in `b` that makes a relayed row's traffic take the relay."""
BENCH_RULES = {"default": "deny", "rules": [{"from": "*", "to": "*", "services": ["tcp", "icmp"], "action": "allow"}]}
"""The access policy of the `access rules` row: both nodes filter (stateful, default deny) what the bench sends."""


def start_meshvpn(net: BenchNet, workdir: Path, relay: str | None = None, block: bool = True,
                  host_env: dict[str, str] | None = None, access: dict | None = None,
                  settle: Callable[[Mesh], None] | None = None, path: str | None = None,
                  cidr: str = MESHVPN_SUBNET) -> Tunnel:
    """Two `meshvpn daemon`s and a `meshvpn coord` in `side` (`meshvpn.lab.mesh`); measures the
    time to the first reply.

    With `relay` ("udp" or "tcp") a `meshvpn relay` runs in `side` too, and (with `block`) `b`
    drops everything to and from `a`'s own address (no UDP or TCP hole can be punched), and for
    "tcp" also every UDP packet it sends, so the two daemons use the relay, over UDP or over TCP.
    The clock starts when both daemons answer on their control sockets and stops at the first
    ping reply from `b`'s overlay address. The row then waits (at most `START_TIMEOUT`) for `a`'s
    status to show the path it measures, `path`: ``relay`` for a relayed row, else ``lan`` (`a` and
    `b` share one link, and each reaches the other at its own interface address), so no run
    measures the few moments a pair may spend on another path first (a TCP path punched beside the
    UDP one, which the UDP path replaces).

    With `host_env` a third daemon, `host`, runs in `side` instead of a server relay, allowed to
    relay for the network (a peer relay, docs/relay.md), and `b` drops `a`'s address, so the pair
    goes through `host`, whose CPU is the relay's; `host_env` is its environment
    (``MESHVPN_PURE_PYTHON=1``: it forwards in Python). `access` is the network's access policy
    (none by default), `cidr` its overlay prefix (an IPv6 one carries IPv6 through the tunnel);
    `settle` waits for what the row needs once the pair is up.
    """
    a, b = net.a.short, net.b.short
    mesh = Mesh(workdir, net.side, net.side_addr, network=MESHVPN_NETWORK, cidr=cidr, log_level="info")
    mesh.access = access or {}
    try:
        if relay is not None:
            mesh.start_relay("relay", net.side, net.side_addr)
        if (relay is not None or host_env is not None) and block:
            _block_direct_paths(net, relay or "udp")
        mesh.start_coord()
        key, _ = mesh.create_auth_key()
        for ns, local, _ in net.sides():
            mesh.start_node(ns.short, ns, key, listen=f"{local}:{NODE_PORT}", tun=MESHVPN_TUN)
        if host_env is not None:
            _start_peer_relay(mesh, net, key, host_env)
        mesh_wait_for(lambda: mesh.status(a) and mesh.status(b), START_TIMEOUT, "both daemons answering",
                      poll=POLL_SECONDS)
        up = time.monotonic()
        target = mesh_wait_for(lambda: mesh.peer_overlay(a, b), START_TIMEOUT, f"peer {b} in {a}'s status",
                               poll=POLL_SECONDS)
    except LabError as err:
        raise BenchError(f"{err}{tails(tuple(sorted(workdir.glob('*.log'))))}") from None
    logs = tuple(sorted(workdir.glob("*.log")))
    replied = reachable(net, target, logs)
    path = path or ("relay" if relay is not None or host_env is not None else "lan")
    wait_for(lambda: mesh.peer(a, b)["path"] == path, f"path {path} from {a} to {b}", logs=logs)
    if settle is not None:
        settle(mesh)
    peer = mesh.peer(a, b)
    if host_env is not None and peer.get("relay") != "host":
        raise BenchError(f"the pair is not relayed by the host: {peer}")
    relayed_by = mesh.relays["relay"] if relay else mesh.nodes["host"] if host_env is not None else None
    return Tunnel(target=target, mtu=link_mtu(net.a, MESHVPN_TUN), first_ping_s=replied - up,
                  path=peer["path"], relay_pid=None if relayed_by is None else relayed_by.proc.pid)


def _start_peer_relay(mesh: Mesh, net: BenchNet, key: str, env: dict[str, str]) -> None:
    """`host` in `side`, allowed to relay for the network once registered."""
    mesh.start_node("host", net.side, key, listen=f"{net.side_addr}:{NODE_PORT}", tun=MESHVPN_TUN, env=env)
    mesh.wait_registered(timeout=START_TIMEOUT)
    mesh.admin("relays", "allow", "host")


def start_meshvpn_nat(net: BenchNet, workdir: Path, relayed: bool, pinned: bool = False) -> Tunnel:
    """meshvpn between hosts behind NAT routers: a port-preserving site and a port-range one (a
    direct path), or two random-port sites with a relay (no direct path exists). `pinned`: `b`'s main
    socket and TCP cannot reach `a` (`_block_main_socket`), so the direct path ends on one of `b`'s
    birthday sockets, which the row checks."""
    if relayed:
        set_nats(net, NatKind.RANDOM_PORTS, NatKind.RANDOM_PORTS)
        return start_meshvpn(net, workdir, relay="udp", block=False)
    set_nats(net, NatKind.PORT_PRESERVING, NatKind.PORT_RANGE)
    if not pinned:
        return start_meshvpn(net, workdir, path="direct")

    def on_pinned_socket(mesh: Mesh) -> None:
        socket = lambda: (mesh.peer(net.b.short, net.a.short).get("socket") or "").startswith("pinned")
        try:
            mesh_wait_for(socket, START_TIMEOUT, f"{net.b.short}'s path on a pinned socket", poll=POLL_SECONDS)
        except LabError as err:
            raise BenchError(f"{err}: {mesh.peer(net.b.short, net.a.short)}") from None
    _block_main_socket(net)
    return start_meshvpn(net, workdir, settle=on_pinned_socket, path="direct")


def _block_main_socket(net: BenchNet) -> None:
    """Make `b` drop UDP between its main socket and `a`'s site, and all TCP with it."""
    site_a = net.topology.addr("na")
    net.b.run(["nft", "-f", "-"], input=(
        f"table inet {BLOCK_TABLE} {{\n"
        f"  chain input {{ type filter hook input priority 0; ip saddr {site_a} udp dport {NODE_PORT} drop; "
        f"ip saddr {site_a} meta l4proto tcp drop; }}\n"
        f"  chain output {{ type filter hook output priority 0; ip daddr {site_a} udp sport {NODE_PORT} drop; "
        f"ip daddr {site_a} meta l4proto tcp drop; }}\n"
        "}\n"
    ))


def _block_direct_paths(net: BenchNet, transport: str) -> None:
    """Make `b` drop all traffic to and from `a`'s address, and for "tcp" every UDP packet it sends."""
    dropped = f"ip daddr {A_ADDR} drop" if transport == "udp" else f"ip daddr {A_ADDR} drop; meta l4proto udp drop"
    net.b.run(["nft", "-f", "-"], input=(
        f"table inet {BLOCK_TABLE} {{\n"
        f"  chain input {{ type filter hook input priority 0; ip saddr {A_ADDR} drop; }}\n"
        f"  chain output {{ type filter hook output priority 0; {dropped}; }}\n"
        "}\n"
    ))


ROWS: tuple[Row, ...] = (
    Row("plain veth", BASELINE, start_plain),
    Row("meshvpn direct", MESHVPN, start_meshvpn),
    Row("meshvpn direct, access rules", MESHVPN, lambda net, workdir: start_meshvpn(net, workdir, access=BENCH_RULES)),
    Row("meshvpn direct IPv6, access rules", MESHVPN,
        lambda net, workdir: start_meshvpn(net, workdir, access=BENCH_RULES, cidr=MESHVPN_SUBNET6)),
    Row("meshvpn relayed UDP", MESHVPN, lambda net, workdir: start_meshvpn(net, workdir, relay="udp")),
    Row("meshvpn relayed TCP", MESHVPN, lambda net, workdir: start_meshvpn(net, workdir, relay="tcp")),
    Row("meshvpn peer relayed", MESHVPN, lambda net, workdir: start_meshvpn(net, workdir, host_env={})),
    Row("meshvpn peer relayed, host in Python", MESHVPN,
        lambda net, workdir: start_meshvpn(net, workdir, host_env={"MESHVPN_PURE_PYTHON": "1"})),
    Row("meshvpn NATs direct", MESHVPN, lambda net, workdir: start_meshvpn_nat(net, workdir, relayed=False), net="nat"),
    Row("meshvpn NATs direct, pinned socket", MESHVPN,
        lambda net, workdir: start_meshvpn_nat(net, workdir, relayed=False, pinned=True), net="nat"),
    Row("meshvpn NATs relayed", MESHVPN, lambda net, workdir: start_meshvpn_nat(net, workdir, relayed=True), net="nat"),
    Row("quicktun nacltai", PEER, start_quicktun, ("quicktun",)),
    Row("wireguard-go", PEER, start_wireguard_go, ("wireguard-go", "wg")),
    Row("tinc 1.0 router", PEER, start_tinc, ("tincd",)),
    Row("nebula 1.6", PEER, start_nebula, ("nebula", "nebula-cert")),
)
"""Every row, in table order. A new row is one entry here (and a start function if it needs one)."""
