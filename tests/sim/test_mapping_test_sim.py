"""A port-range NAT (one mapping per socket, random ports) found endpoint-independent by the mapping
test against the STUN server and a relay, and what that buys: direct paths to random-port peers.

The site's node takes its profile as the daemon does (`meshvpn.sim.natprobe`): one socket asks the
STUN server and the near relay (the real relay core answers STUN), fresh sockets sample the ports,
and netcheck's verdict decides. Without the relay's answer the same NAT looks endpoint-dependent
random, and the pair with a random-port peer relays (`RELAYED` holds ``port-range``).
"""

from __future__ import annotations

import random

import pytest

from meshvpn.node.core import CoreConfig
from meshvpn.node.pathfinder import PathKind
from meshvpn.node.prediction import Allocation, NatProfile
from meshvpn.sim.natprobe import probe_profile
from meshvpn.sim.pairs import STUN, World
from meshvpn.sim.sitekinds import KINDS, PORT_RANGE_PROBED, RELAYED

RELAY_AFTER = CoreConfig().paths.relay_after
MARGIN = 0.5


def test_the_relays_answer_shows_the_port_range_nat_endpoint_independent() -> None:
    world = World(PORT_RANGE_PROBED, KINDS["random-ports"], 1, random.Random)
    relay = world.relays[0]
    scheduler, host = world.net.scheduler, world.a.host
    with_relay = probe_profile(host, scheduler, STUN, (relay.info.name, relay.endpoint), world.rng.randbytes)
    assert with_relay == NatProfile(True, Allocation.RANDOM)
    assert relay.core.stun.answered == 1
    assert probe_profile(host, scheduler, STUN, None, world.rng.randbytes) == NatProfile(False, Allocation.RANDOM)
    random_ports = probe_profile(world.b.host, scheduler, STUN, (relay.info.name, relay.endpoint), world.rng.randbytes)
    assert random_ports == NatProfile(False, Allocation.RANDOM)


@pytest.mark.parametrize("peer", ["random-ports", "cgn", "port-preserving", "sequential", "port-range"])
@pytest.mark.parametrize("seed", [1, 2])
def test_a_probed_port_range_site_goes_direct_with_every_peer_but_the_relayed_ones(peer: str, seed: int) -> None:
    world = World(PORT_RANGE_PROBED, KINDS[peer], seed, random.Random)
    world.start()
    assert world.a.profile == NatProfile(True, Allocation.RANDOM)
    start = world.now
    world.a.send(world.b, b"ping")
    world.net.scheduler.run_until(start + RELAY_AFTER + MARGIN)
    assert [payload for _, payload in world.a.received] == [b"echo ping"]
    assert world.a.route_to(world.b).path.kind is PathKind.DIRECT
    assert world.b.route_to(world.a).path.kind is PathKind.DIRECT
    if peer in ("random-ports", "cgn"):
        assert ("port-range", peer) in RELAYED, "without the mapping test the pair relays"
