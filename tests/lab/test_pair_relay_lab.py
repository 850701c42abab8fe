"""A relayed pair takes the relay with the lowest sum of both ends' round trips, not either end's nearest.

Three sites behind random-port NATs (nothing direct joins any two of them) and two server relays,
`east` and `west`. The sites' NATs hold back packets to and from the relays (userspace NATs,
`UserNat.with_delay`: this kernel has no netem), so that `a` is next to `east`, and `b` and `c`
next to `west`, `b` a little farther from `east` and `c` far from it. Each end's nearest relay
is its home; but the pair `a`–`b` is cheapest through `east` (b's far side is short) and the pair
`a`–`c` through `west` (a's far side is shorter than c's). Both ends of each pair must land on
the pair's relay, say so in `meshvpn status` (`lowest sum`, with the sums), and a checksummed
transfer goes through it.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from meshvpn.lab import Topology
from meshvpn.lab.mesh import Mesh, wait_for
from meshvpn.lab.transfer import transfer
from meshvpn.lab.usernat import UserNat
from meshvpn.sim.nat import SYMMETRIC_RANDOM

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

COORD_ADDR = "203.0.113.10"
RELAYS = {"east": "203.0.113.20", "west": "203.0.113.21"}
DELAYS = {"a": {"west": 0.060}, "b": {"east": 0.020}, "c": {"east": 0.080}}
"""Seconds each site's NAT holds back a packet to or from a relay, each way (absent: none)."""
PAIR_RELAY = {("a", "b"): "east", ("a", "c"): "west"}
"""Each pair's relay: east for a–b (2·0 + 2·20 ms < 2·60 + 2·0), west for a–c (2·60 < 2·80)."""

FORWARDED = "meshvpn_relay_forwarded_packets_total"


def site_nat(site: str) -> UserNat:
    """A random-port NAT that holds back this site's packets to its far relays."""
    nat = UserNat("random-ports", SYMMETRIC_RANDOM)
    for relay, seconds in DELAYS[site].items():
        nat = nat.with_delay(RELAYS[relay], seconds)
    return nat


def three_sites_two_relays(topo: Topology, workdir: Path) -> Mesh:
    """The relays, the coord, sites a, b and c with a1, b1 and c1 registered."""
    for name, address in RELAYS.items():
        topo.add_server(name, addrs=[address])
    for site in DELAYS:
        topo.add_site(site, nat=site_nat(site))
    mesh = Mesh(workdir, topo.host("coord"), COORD_ADDR)
    for name, address in RELAYS.items():
        mesh.start_relay(name, topo.host(name), address)
    mesh.start_coord()
    key, _ = mesh.create_auth_key()
    for site in DELAYS:
        mesh.start_node(f"{site}1", topo.host(f"{site}1"), key)
    mesh.wait_registered()
    return mesh


def relays_of(mesh: Mesh, node: str) -> dict[str, dict]:
    """Node `node`'s relay links by name, as its status lists them."""
    return {relay["name"]: relay for relay in mesh.status(node)["self"]["relays"]}


def test_each_pair_lands_on_the_relay_with_the_lowest_sum(topo: Topology, tmp_path: Path,
                                                        meshes: list[Mesh]) -> None:
    mesh = three_sites_two_relays(topo, tmp_path)
    meshes.append(mesh)
    nodes = [f"{site}1" for site in DELAYS]
    wait_for(lambda: all(all(r["ready"] and r["rtt_ms"] for r in relays_of(mesh, n).values()) for n in nodes),
             30, "every node to reach both relays and measure them")
    homes = {node: next(name for name, r in relays_of(mesh, node).items() if r["home"]) for node in nodes}
    assert homes == {"a1": "east", "b1": "west", "c1": "west"}, (homes, {n: relays_of(mesh, n) for n in nodes})
    wanted = {(f"{x}1", f"{y}1"): ("relay",) for pair in PAIR_RELAY for x, y in (pair, pair[::-1])}
    found = mesh.wait_for_paths(wanted, timeout=20)
    assert found.keys() == wanted.keys(), (found, mesh.logs())
    for (x, y), relay in PAIR_RELAY.items():
        ends = {(src, dst): mesh.peer(src, dst) for src, dst in ((f"{x}1", f"{y}1"), (f"{y}1", f"{x}1"))}
        assert all(peer["relay"] == relay for peer in ends.values()), (relay, ends)
        for peer in ends.values():
            sums = {name: rtt["sum"] for name, rtt in peer["relay_sums"].items()}
            assert peer["relay_reason"] == "lowest sum" and min(sums, key=sums.get) == relay, peer
            assert set(peer["relay_rtts"]) == set(RELAYS), peer
    assert " via east: lowest sum" in mesh.cli("b1", "status").stdout
    before = {name: mesh.relay_metrics(name) for name in RELAYS}
    sent, received = transfer(mesh.nodes["b1"].ns, mesh.nodes["a1"].ns, mesh.overlay("a1"), size=1 << 20, over=1.0)
    assert received.same_data(sent) and sent.bytes == 1 << 20, f"sent {sent}, received {received}"
    time.sleep(1.5)  # each relay folds its native thread's counts every second
    after = {name: mesh.relay_metrics(name) for name in RELAYS}
    carried = {name: after[name][FORWARDED] - before[name][FORWARDED] for name in RELAYS}
    assert carried["east"] > 500 and carried["west"] < 100, carried
