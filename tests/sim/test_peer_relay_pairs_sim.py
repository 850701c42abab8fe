"""A pair that cannot go direct goes through the peer relay, whatever family reaches its node.

The pairs harness's `peer-relay` world: `b` behind a random-port NAT whose server relays are 40 ms
away, a helper on a port-preserving site next to it that the coord offers as a peer relay, and `a`
behind a NAT from which no direct path to `b` is possible. The helper is the relay with the lowest
round trip for the pair, so both ends must send through it. With a dual-stack `a` and a helper
that has IPv6 too (the lab's `h` on a dual-stack topology), `a`'s direct path to the helper is over
IPv6, where its IPv4 NAT opened no way to the helper's public (IPv4) endpoint; before, `a`'s link
to the peer relay said hello there alone, never got an answer, and the pair took the server relay.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from meshvpn.node.pathfinder import PathKind
from meshvpn.sim.pairs import World
from meshvpn.sim.sitekinds import HELPER, KINDS

SETTLE = 6.0
"""Seconds after the first packet: the fallback, the birthday probing towards the helper, and the
relay reports both ends pick the pair's relay from."""


def relay_of(world: World, node, other) -> str:
    route = node.route_to(other)
    assert route is not None and route.path.kind is PathKind.RELAY, route
    return node.node.relays.by_endpoint[route.endpoint].name


CASES = [("dual-stack", True, seed) for seed in range(10, 15)] + [
    ("dual-stack", False, 1), ("random-ports", True, 1), ("random-ports", False, 1), ("cgn", True, 1),
]
"""Seed 12 is one where the dual-stack member's birthday probing over IPv4 opened no way to the helper."""


@pytest.mark.parametrize("name_a, helper6, seed", CASES)
def test_a_relayed_pair_goes_through_the_peer_relay(name_a: str, helper6: bool, seed: int) -> None:
    helper = replace(HELPER, ipv6=True) if helper6 else HELPER
    world = World(KINDS[name_a], KINDS["peer-relay"], seed, random.Random, helper_kind=helper)
    world.start()
    world.a.send(world.b, b"ping")
    world.net.scheduler.run_for(SETTLE)
    a, b = world.a, world.b
    assert (relay_of(world, a, b), relay_of(world, b, a)) == (world.helper.name, world.helper.name)
    a.send(b, b"through the helper")
    world.net.scheduler.run_for(0.3)
    assert b.received[-1][1] == b"through the helper" and a.received[-1][1] == b"echo through the helper"
