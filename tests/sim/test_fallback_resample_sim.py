"""A pair whose first port samples all missed goes direct within seconds of its fall back.

The sequential side's first samples can all miss when its NAT hands the ports the peer
predicts to other mappings at the same moment (other hosts, or the node's own punches to a
third node). Once that stops, a fresh sample meets at once; the hard side keeps re-sampling
through the path finder's fast window, so the pair need not stay relayed until new traffic.
"""

from __future__ import annotations

import random

import pytest

from meshvpn.node.core import CoreConfig
from meshvpn.node.pathfinder import PathKind
from meshvpn.node.traversal import FALLBACK_RESAMPLE_INTERVAL, RESAMPLE_INTERVAL, RESAMPLE_MAX
from meshvpn.sim.pairs import World
from meshvpn.sim.sitekinds import KINDS

RELAY_AFTER = CoreConfig().paths.relay_after
BUSY_FLOWS = 3000.0
"""New flows per second on the sequential side's NAT while busy: far more than the peer's
128 predicted ports between a sample and the punch it answers."""
BUSY_FOR = RESAMPLE_INTERVAL * RESAMPLE_MAX + 0.1
"""Long enough for every sample of the first schedule to miss."""


def kinds_of(world: World, step: float, until: float) -> list[tuple[float, PathKind | None]]:
    """`a`'s path kind to `b` every `step` seconds up to `until` (from now)."""
    seen, start = [], world.now
    while world.now < start + until:
        world.net.scheduler.run_for(step)
        route = world.a.route_to(world.b)
        seen.append((world.now - start, None if route is None else route.path.kind))
    return seen


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_pair_whose_first_samples_missed_goes_direct_soon_after_the_fall_back(seed: int) -> None:
    world = World(KINDS["address-dependent"], KINDS["random-ports"], seed, random.Random)
    world.start()
    world.a.nat.set_background_traffic(BUSY_FLOWS)
    world.net.scheduler.call_later(BUSY_FOR, lambda: world.a.nat.set_background_traffic(0.0))
    world.a.send(world.b, b"ping")
    seen = kinds_of(world, 0.1, 20.0)
    relayed = [t for t, kind in seen if kind is PathKind.RELAY]
    assert relayed and relayed[0] <= RELAY_AFTER + 0.5, "every sample of the first schedule missed"
    direct = [t for t, kind in seen if kind is PathKind.DIRECT]
    assert direct, "a fresh sample after the busy spell meets"
    assert direct[0] <= BUSY_FOR + 2 * FALLBACK_RESAMPLE_INTERVAL + 0.5
    assert world.b.route_to(world.a).path.kind is PathKind.DIRECT
