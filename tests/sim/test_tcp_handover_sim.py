"""A pair whose TCP punch wins before its UDP punch hands over to UDP without either end leaving for the relay.

Both sites let UDP out, but the peer's TCP mapping is easier to meet than its UDP one, so the TCP
path comes up first and a UDP path a few round trips later (seed 5 of the pairs harness, a flow
from `a` to `b` every 0.1 s: these seven pairs). The end whose UDP path is current first used to
close the TCP path at once, and its RST reached the other end before that end's UDP path was:
it fell back (`tcp lost`) to the relay, or to nothing, for a probe's round trip. Now the TCP path
is kept for `TcpPunchConfig.handover` once a UDP path took over (`meshvpn.node.tcp.core`), so each
end moves straight from TCP to UDP.
"""

from __future__ import annotations

import random

import pytest

from meshvpn.node.pathfinder import PathKind
from meshvpn.sim.pairs import World, flow
from meshvpn.sim.sitekinds import KINDS

TCP_FIRST = [("full-cone", "address-dependent"), ("full-cone", "sequential"), ("restricted-cone", "address-dependent"),
             ("restricted-cone", "sequential"), ("unreported", "restricted-cone"), ("upnp", "address-dependent"),
             ("upnp", "sequential")]


@pytest.mark.parametrize("name_a, name_b", TCP_FIRST)
def test_a_tcp_path_hands_over_to_udp_with_neither_end_falling_back(name_a: str, name_b: str) -> None:
    world = World(KINDS[name_a], KINDS[name_b], 5, random.Random)
    world.start()
    flow(world, 0.1, 100.0)
    world.net.scheduler.run_for(6.0)
    for node in (world.a, world.b):
        assert "tcp punched" in node.reasons, f"{node.name}: TCP first, as this pair does ({node.reasons})"
        assert "tcp lost" not in node.reasons, f"{node.name} fell back between TCP and UDP: {node.reasons}"
        assert node.route_to(world.peer_of(node)).path.kind is PathKind.DIRECT
