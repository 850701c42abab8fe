"""IPv6 paths through the real daemon, on a dual-stack lab (`Topology(lab, ipv6=True)`).

The world: a coord (its STUN service on both families) and a relay, and two sites whose IPv4 is
behind random-port NATs, the pair that relays over IPv4 without help, and whose IPv6 is routed
(2001:db8:1:N::/64) through a stateful firewall that lets out anything and in only replies. Both
nodes announce their global IPv6 addresses, punch them beside their IPv4 candidates, and go
direct over IPv6; a checksummed transfer crosses. Then site a's IPv6 breaks (every packet
dropped; addresses and routes stay) while traffic flows: both nodes are on an IPv4 path (the
relay) within 2 s, measured from the break to each daemon's log line of the switch. A third node
names the coord by its IPv6 literal only and registers over IPv6; `meshvpn netcheck` reports the
global address, the STUN mapping over IPv6 and the coord's answer over IPv6. When a1's IPv6
address changes (a new one added, the old one removed), its netwatch hears it at once (not at
the minute's refresh) and b1's path moves to the new address within 3 s, and a1's is direct
again within 3 s (each side probes its path at once: a1 because its own address changed, b1
because a1 no longer announces the address its path goes to). Last, a pair whose
IPv4 lets no UDP out (nor TCP but to port 443) and whose direct IPv6 is firewalled relays over
IPv6: the relay listens on both families and is announced by a name with an AAAA and an A record
(the sites' own hosts files), and the node's relay link races both, IPv6 first. And where IPv6
is broken, the same name's IPv4 address carries the relay link within 2 s of the lookup; where
IPv4 lets only TCP to 443 out as well, the relay stream's connection attempts race both
addresses and reach the relay's TLS port over IPv4.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable

import pytest

from meshvpn.lab import Lab, NatKind, Topology
from meshvpn.lab.mesh import Mesh, wait_for
from meshvpn.lab.netns import python_command
from meshvpn.lab.timing import arrivals, logged_at, receiver, trickle
from meshvpn.lab.transfer import transfer

from test_relay_lab import COORD_ADDR, RELAY_ADDR

pytestmark = [pytest.mark.lab, pytest.mark.timeout(90)]

NODE_PORT = 41641
ECHO_PORT = 9002
FAILOVER_LIMIT = 2.0
"""Seconds from the IPv6 break to each node's switch to an IPv4 path (issue 17)."""
RENUMBER_LIMIT = 3.0
"""Seconds from a node's new IPv6 address (the old one gone) to its peer's path moving there."""
RELAY_LIMIT = 2.0
"""Seconds from a relay's name resolving (AAAA and A) to the link being home over IPv4, IPv6 broken."""
RELAY_NAME = "relay.lab.example"
TLS_PORT = 443


@pytest.fixture
def dual(lab: Lab, tmp_path: Path, meshes: list[Mesh]) -> tuple[Topology, Mesh]:
    topo = Topology(lab, ipv6=True)
    topo.add_server("coord", addrs=[COORD_ADDR])
    topo.add_server("relay", addrs=[RELAY_ADDR])
    topo.add_site("a", nat=NatKind.RANDOM_PORTS)
    topo.add_site("b", nat=NatKind.RANDOM_PORTS)
    topo.add_site("c", nat=NatKind.PORT_PRESERVING)
    mesh = Mesh(tmp_path, topo.host("coord"), COORD_ADDR)
    meshes.append(mesh)
    mesh.coord_ipv6 = topo.addr6("coord")
    mesh.start_relay("relay", topo.host("relay"), RELAY_ADDR, dual=True)
    mesh.start_coord()
    mesh.start_registered({name: topo.host(name) for name in ("a1", "b1")})
    return topo, mesh


def test_dual_stack_sites_go_direct_over_ipv6_and_fall_back_to_ipv4_within_2s(dual) -> None:
    topo, mesh = dual
    found = mesh.wait_for_paths({("a1", "b1"): ("direct",), ("b1", "a1"): ("direct",)}, timeout=20)
    assert len(found) == 2, f"paths: {mesh.peer('a1', 'b1')}, {mesh.peer('b1', 'a1')}"
    assert mesh.peer("a1", "b1")["endpoint"] == f"[{topo.addr6('b1')}]:{NODE_PORT}"
    assert mesh.peer("b1", "a1")["endpoint"] == f"[{topo.addr6('a1')}]:{NODE_PORT}"
    assert mesh.status("a1")["self"]["ipv6_endpoints"] == [f"[{topo.addr6('a1')}]:{NODE_PORT}"]
    sent, received = transfer(topo.host("a1"), topo.host("b1"), mesh.overlay("b1"), size=4 << 20)
    assert sent.same_data(received) and received.bytes == 4 << 20
    assert mesh.peer("a1", "b1")["path"] == "direct"

    echo = receiver(topo.host("b1"), mesh.overlay("b1"), ECHO_PORT, 30)
    sender, _ = trickle(topo.host("a1"), mesh.overlay("b1"), ECHO_PORT, 30)
    try:
        flow = arrivals(echo)
        assert next(flow, None) is not None, "no traffic before the break"
        broken = time.time()
        topo.set_ipv6_broken("a", True)
        switched = {}
        for name, peer in (("a1", "b1"), ("b1", "a1")):
            needle = re.compile(rf"path to {peer}: direct \[[0-9a-f:]+\]:\d+ -> relay\b")
            deadline = time.monotonic() + 10
            while (at := logged_at(mesh.dir / f"{name}.log", needle, broken)) is None and time.monotonic() < deadline:
                time.sleep(0.05)
            switched[name] = None if at is None else at - broken
        resumed = next((t for t in flow if t >= broken + max(filter(None, switched.values()), default=0)), None)
    finally:
        topo.host("a1").stop(sender)
        topo.host("b1").stop(echo)
    print(f"IPv6 broken -> relay: {switched}")
    assert all(delay is not None and delay <= FAILOVER_LIMIT for delay in switched.values()), switched
    assert resumed is not None, "no traffic over the relay after the switch"
    assert mesh.peer("a1", "b1")["path"] == "relay"


def test_the_coord_answers_over_ipv6_and_netcheck_says_so(dual) -> None:
    topo, mesh = dual
    coord6 = topo.addr6("coord")
    key, _ = mesh.create_auth_key()
    mesh.start_node("c1", topo.host("c1"), key, coords=[f"[{coord6}]"])
    mesh.wait_registered(["c1"])
    assert mesh.status("c1")["self"]["coord_address"] == f"[{coord6}]:{mesh.coord_port}"
    netcheck = python_command("meshvpn", "netcheck", "-c", str(mesh.dir / "a1.yaml"))
    line = next(line for line in topo.host("a1").run(netcheck, timeout=30).stdout.splitlines()
                if line.startswith("IPv6:"))
    a1 = topo.addr6("a1")
    print(line)
    assert line.startswith(f"IPv6: global {a1}; STUN [{a1}]:"), line
    assert re.search(rf"; coord \[{re.escape(coord6)}\]:{mesh.coord_port} [0-9.]+ ms; relay relay no IPv6 address$", line), line


def test_a_new_ipv6_address_moves_the_peers_path_within_3s(dual) -> None:
    topo, mesh = dual
    found = mesh.wait_for_paths({("a1", "b1"): ("direct",), ("b1", "a1"): ("direct",)}, timeout=20)
    assert len(found) == 2, f"paths: {mesh.peer('a1', 'b1')}, {mesh.peer('b1', 'a1')}"
    assert mesh.peer("b1", "a1")["endpoint"] == f"[{topo.addr6('a1')}]:{NODE_PORT}"
    changed = time.monotonic()
    new = topo.renumber6("a1")
    moved = wait_for(lambda: mesh.peer("b1", "a1")["endpoint"] == f"[{new}]:{NODE_PORT}" and time.monotonic(),
                     10, f"b1's path to a1 to move to [{new}]", poll=0.05)
    back = wait_for(lambda: mesh.peer("a1", "b1")["path"] == "direct" and time.monotonic(),
                    10, "a1's path to b1 to be direct again", poll=0.05)
    print(f"a1 renumbered to {new}: b1's path moved after {moved - changed:.2f} s, "
          f"a1's direct after {back - changed:.2f} s")
    assert mesh.peer("b1", "a1")["path"] == "direct"
    assert moved - changed <= RENUMBER_LIMIT
    assert back - changed <= RENUMBER_LIMIT
    assert re.search(rf"network changed: {re.escape(new)} added on eth0", (mesh.dir / "a1.log").read_text())


def relay_by_name(lab: Lab, tmp_path: Path, meshes: list[Mesh], site_nat: NatKind,
                  setup: Callable[[Topology, str], None]) -> tuple[Topology, Mesh]:
    """Sites a and b (each set up by `setup`), a coord, and a relay the coord announces as
    `RELAY_NAME`, which the sites' hosts files give both an A and an AAAA record."""
    topo = Topology(lab, ipv6=True)
    topo.add_server("coord", addrs=[COORD_ADDR])
    topo.add_server("relay", addrs=[RELAY_ADDR])
    for site in ("a", "b"):
        topo.add_site(site, nat=site_nat)
        setup(topo, site)
    for name in ("a1", "b1"):
        topo.host(name).set_hosts({RELAY_NAME: [topo.addr6("relay"), RELAY_ADDR]})
    mesh = Mesh(tmp_path, topo.host("coord"), COORD_ADDR)
    meshes.append(mesh)
    mesh.coord_ipv6 = topo.addr6("coord")
    mesh.start_relay("relay", topo.host("relay"), RELAY_ADDR, announce=RELAY_NAME, dual=True)
    mesh.start_coord()
    return topo, mesh


def test_a_pair_without_ipv4_udp_or_a_direct_ipv6_path_relays_over_ipv6(lab: Lab, tmp_path: Path,
                                                                         meshes: list[Mesh]) -> None:
    topo, mesh = relay_by_name(lab, tmp_path, meshes, NatKind.PORT_443_ONLY, Topology.wall_off_ipv6)
    mesh.start_registered({name: topo.host(name) for name in ("a1", "b1")})
    found = mesh.wait_for_paths({("a1", "b1"): ("relay",), ("b1", "a1"): ("relay",)}, timeout=20)
    assert len(found) == 2, f"paths: {mesh.peer('a1', 'b1')}, {mesh.peer('b1', 'a1')}"
    [link] = mesh.status("a1")["self"]["relays"]
    assert link["address"] == f"[{topo.addr6('relay')}]:7500" and link["ready"], link
    assert link["transport"] == "udp", link
    assert mesh.peer("a1", "b1")["relay"] == "relay"
    sent, received = transfer(topo.host("a1"), topo.host("b1"), mesh.overlay("b1"), size=2 << 20)
    assert sent.same_data(received) and received.bytes == 2 << 20
    assert mesh.peer("a1", "b1")["path"] == "relay" and mesh.peer("b1", "a1")["path"] == "relay"


def test_a_relay_named_with_both_families_is_reached_over_ipv4_within_2s_when_ipv6_is_broken(
        lab: Lab, tmp_path: Path, meshes: list[Mesh]) -> None:
    topo, mesh = relay_by_name(lab, tmp_path, meshes, NatKind.RANDOM_PORTS,
                               lambda topo, site: topo.set_ipv6_broken(site, True))
    mesh.start_registered({name: topo.host(name) for name in ("a1", "b1")})
    found = mesh.wait_for_paths({("a1", "b1"): ("relay",), ("b1", "a1"): ("relay",)}, timeout=20)
    assert len(found) == 2, f"paths: {mesh.peer('a1', 'b1')}, {mesh.peer('b1', 'a1')}"
    for name in ("a1", "b1"):
        [link] = mesh.status(name)["self"]["relays"]
        assert link["address"] == f"{RELAY_ADDR}:7500" and link["ready"] and link["transport"] == "udp", link
        log = mesh.dir / f"{name}.log"
        resolved = logged_at(log, re.compile(rf"relay \({re.escape(RELAY_NAME)}\) resolves to"), 0)
        home = logged_at(log, re.compile(r"home relay: relay over udp"), 0)
        assert resolved is not None and home is not None, log.read_text()[-2000:]
        print(f"{name}: relay {RELAY_NAME} resolved, home over IPv4 after {home - resolved:.2f} s")
        assert home - resolved <= RELAY_LIMIT
    sent, received = transfer(topo.host("a1"), topo.host("b1"), mesh.overlay("b1"), size=1 << 20)
    assert sent.same_data(received) and received.bytes == 1 << 20


def test_without_udp_or_ipv6_the_stream_races_the_relays_names_addresses(lab: Lab, tmp_path: Path,
                                                                          meshes: list[Mesh]) -> None:
    """Site a lets out only TCP to 443 and its IPv6 drops everything: UDP gets no answer from either
    address, and the stream races plain TCP to each address, IPv6 first, then TLS to each, 250 ms
    apart: the attempts to the blackholed IPv6 address and to the dropped plain port never end by
    themselves, and TLS to IPv4 wins."""
    topo = Topology(lab, ipv6=True)
    topo.add_server("coord", addrs=[COORD_ADDR])
    topo.add_server("relay", addrs=[RELAY_ADDR])
    topo.add_site("a", nat=NatKind.PORT_443_ONLY)
    topo.set_ipv6_broken("a", True)
    topo.host("a1").set_hosts({RELAY_NAME: [topo.addr6("relay"), RELAY_ADDR]})
    mesh = Mesh(tmp_path, topo.host("coord"), COORD_ADDR, coord_port=TLS_PORT)
    meshes.append(mesh)
    mesh.start_relay("relay", topo.host("relay"), RELAY_ADDR, announce=RELAY_NAME, tls_port=TLS_PORT, dual=True)
    mesh.start_coord()
    mesh.start_registered({"a1": topo.host("a1")})
    link = wait_for(lambda: next((r for r in mesh.status("a1")["self"]["relays"] if r["ready"]), None), 30,
                    "a1's relay link to come up")
    assert link["transport"] == "tls" and link["address"] == f"{RELAY_ADDR}:7500", link
    log = (mesh.dir / "a1.log").read_text()
    v6 = topo.addr6("relay")
    race = f"TCP [{v6}]:7500, TCP {RELAY_ADDR}:7500, TLS [{v6}]:{TLS_PORT}, TLS {RELAY_ADDR}:{TLS_PORT}"
    assert f"racing {race}" in log, log[-2000:]
