"""Every pair of NAT kinds gets a path, direct or through the relay, within `relay_after`.

The invariant the design promises whatever the two NATs are: once one node sends to the
other, both have a route by `relay_after` (plus the handshake's round trips), so traffic
flows both ways. The nodes are the real `NodeCore` and data path on simulated hosts behind
`meshvpn.sim` NATs of every kind, with the shell pieces of `meshvpn.sim.pairs` around them.
"""

from __future__ import annotations

import itertools
import random

import pytest

from meshvpn.node.core import CoreConfig
from meshvpn.node.pathfinder import PathKind
from meshvpn.sim.pairs import World
from meshvpn.sim.sitekinds import KINDS, RELAYED, SEQUENTIAL

RELAY_AFTER = CoreConfig().paths.relay_after
MARGIN = 0.5
"""Handshake and echo round trips over the relay after the fallback, with room to spare."""


def meet(name_a: str, name_b: str, seed: int = 1) -> tuple[World, float]:
    """Start both nodes, let `a` send one packet to `b`, and run past the deadline."""
    world = World(KINDS[name_a], KINDS[name_b], seed, random.Random)
    world.start()
    start = world.now
    world.a.send(world.b, b"ping")
    world.net.scheduler.run_until(start + RELAY_AFTER + MARGIN)
    return world, start


@pytest.mark.parametrize("name_a, name_b", list(itertools.product(KINDS, repeat=2)))
def test_every_pair_of_nat_kinds_has_a_path_within_relay_after(name_a: str, name_b: str) -> None:
    world, start = meet(name_a, name_b)
    a, b = world.a, world.b
    assert [payload for _, payload in b.received] == [b"ping"], "a's packet reached b"
    assert [payload for _, payload in a.received] == [b"echo ping"], "b had a route back"
    assert a.route_to(b) is not None and b.route_to(a) is not None
    expected = PathKind.RELAY if (name_a, name_b) in RELAYED else PathKind.DIRECT
    assert (a.route_to(b).path.kind, b.route_to(a).path.kind) == (expected, expected), "as RELAYED says"
    b.send(a, b"from b")
    world.net.scheduler.run_for(0.2)
    assert a.received[-1][1] == b"from b" and b.received[-1][1] == b"echo from b"


@pytest.mark.parametrize("name_a, name_b", [
    ("sequential", "random-ports"), ("random-ports", "sequential"),
    ("address-dependent", "cgn"), ("port-range", "address-dependent"),
])
def test_a_sequential_side_punches_against_a_random_peer_without_its_sample(name_a: str, name_b: str) -> None:
    world, _ = meet(name_a, name_b)
    sequential = world.a if KINDS[name_a].reported == SEQUENTIAL else world.b
    peer = world.b if sequential is world.a else world.a
    assert sequential.core.peers.by_key[peer.public].paths.stats.probes_sent > 0


def test_address_dependent_meets_random_ports_directly() -> None:
    """The random side probes the ports above the sample; the address-dependent side's one mapping
    towards the peer's address sits there and lets every port of that address in."""
    world, _ = meet("address-dependent", "random-ports")
    assert world.a.route_to(world.b).path.kind is PathKind.DIRECT
    assert world.b.route_to(world.a).path.kind is PathKind.DIRECT


@pytest.mark.parametrize("peer", ["random-ports", "sequential", "cgn", "upnp"])
def test_a_mapped_random_port_site_goes_direct_with_the_peers_it_relays_to_without_the_mapping(peer: str) -> None:
    """The peer probes the mapped endpoint, which lets anyone in; the reply leaves from it.

    Where both sides are mapped, exactly one ends on the other's mapping, and either one is right.
    Not both: behind a random-port NAT a packet leaves from the forwarded port only as the reply
    of a flow that came in through the forward, so the first probe to pass a forward makes the
    pair's one flow (its sender is seen at its NAT's random port, and answered through it), and a
    later probe towards the other forward is a new flow from another random port. Which probe is
    first is the network's race, not the node's choice, and the two outcomes are mirror images
    (one side sends to a forward, the other to a NAT flow that the traffic keeps open). In this
    harness the coord's punch reaches `b` in the instant `a`'s first packet does, and the order of
    those two events decides (`b` ends on `a`'s mapping here; with the coord link's earlier
    harness, `a` on `b`'s)."""
    world, _ = meet("upnp", peer)
    assert world.a.route_to(world.b).path.kind is PathKind.DIRECT
    assert world.b.route_to(world.a).path.kind is PathKind.DIRECT
    if KINDS[peer].mapped:
        to_a, to_b = world.b.route_to(world.a).endpoint, world.a.route_to(world.b).endpoint
        assert (to_a == world.a.mapped) != (to_b == world.b.mapped), "exactly one side on the other's mapping"
    else:
        assert world.b.route_to(world.a).endpoint == world.a.mapped
    if not KINDS[peer].mapped:
        without, _ = meet("random-ports", peer)
        assert without.b.route_to(without.a).path.kind is PathKind.RELAY
