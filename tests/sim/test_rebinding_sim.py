"""A NAT re-maps a node's public port mid-flow: traffic is back within 1 s, the path within 3 s.

The pairs harness (`meshvpn.sim.pairs`: real `NodeCore`s and data paths behind simulated NATs, a
STUN server, a relay and the fake coord), so roaming and silence detection see what they see in
the daemon; its shell runs STUN again on `DiscoverEndpoints` and says hello to the relay when the
core asks its relay links to check themselves.

A steady flow (a packet every `GAP`, each echoed) runs from `a` to `b`; after `WARM_UP` the NAT
in front of `a` forgets its mappings and gives their ports to other hosts (`Nat.rebind`).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest

from meshvpn.node.pathfinder import ChangeReason, PathKind
from meshvpn.sim import PORT_RESTRICTED_CONE
from meshvpn.sim.pairs import World, flow, longest_gap
from meshvpn.sim.sitekinds import EASY, KINDS, PORT, Kind

GAP = 0.02
"""Seconds between the flow's packets."""
WARM_UP = 6.0
"""Seconds of flow before the NAT re-maps: every pair has settled on its path by then."""
TRAFFIC_BACK = 1.0
"""The target: no gap in either direction longer than this around the re-mapping."""
PATH_BACK = 3.0
"""The target: the pair is on the kind of path it had before within this."""
PATH_BACK_BIRTHDAY = 4.0
"""The same where a side is behind an endpoint-dependent random NAT: birthday probing is a
lottery of punch rounds (the first meeting took 0.45-1.7 s, the second takes up to 3.1 s)."""
BIRTHDAY = {"random-ports", "cgn"}
SETTLE = 6.0
"""Seconds the run goes on after the re-mapping."""


def rebind_mid_flow(name_a: str, name_b: str) -> tuple[World, float, tuple, float | None]:
    """Run the flow, re-map `a`'s NAT after `WARM_UP`: the world, when, both path kinds before, and
    how long after the re-mapping both were back on those kinds (0: never left them; None: not back
    within `SETTLE`)."""
    world = World(KINDS[name_a], KINDS[name_b], 3, random.Random)
    world.start()
    start = world.now
    flow(world, GAP, start + WARM_UP + SETTLE + 1.0)
    world.net.scheduler.run_until(start + WARM_UP)
    kinds = lambda: (world.a.route_to(world.b).path.kind, world.b.route_to(world.a).path.kind)  # noqa: E731
    before, event, back, left = kinds(), world.now, None, False
    world.a.nat.rebind()
    while world.now < event + SETTLE:
        world.net.scheduler.run_until(world.now + 0.01)
        left = left or kinds() != before or world.a.reasons[-1:] == [ChangeReason.PATH_SILENT]
        if back is None and left and kinds() == before:
            back = world.now - event
    back = back if left else 0.0
    return world, event, before, back if kinds() == before else None


@pytest.mark.parametrize("name_a, name_b", list(itertools.product(KINDS, repeat=2)))
def test_a_nat_rebinding_mid_flow_costs_under_a_second_and_the_path_comes_back(name_a: str, name_b: str) -> None:
    world, event, before, back = rebind_mid_flow(name_a, name_b)
    assert_traffic_back(world, event)
    assert back is not None and back <= (PATH_BACK_BIRTHDAY if BIRTHDAY & {name_a, name_b} else PATH_BACK)


def assert_traffic_back(world: World, event: float, limit: float = TRAFFIC_BACK) -> None:
    """Neither direction of the flow stopped for `limit` around the re-mapping."""
    to_b = [t for t, payload in world.b.received if not payload.startswith(b"echo ")]
    to_a = [t for t, payload in world.a.received if payload.startswith(b"echo ")]
    assert longest_gap(to_b, event - 0.5, event + SETTLE) < limit
    assert longest_gap(to_a, event - 0.5, event + SETTLE) < limit


def test_the_far_side_roams_at_once_behind_a_full_cone() -> None:
    """Behind a full cone the peer lets the new port in, so it moves there with the first newest packet."""
    world, event, before, back = rebind_mid_flow("port-preserving", "full-cone")
    assert before == (PathKind.DIRECT, PathKind.DIRECT)
    b_paths = world.b.core.peers.by_key[world.a.public].paths
    assert b_paths.current_path.endpoint[1] != PORT, "b moved to a's new port"
    assert b_paths.stats.path_changes >= 2
    assert longest_gap([t for t, p in world.a.received], event - 0.5, event + 1.0) < 0.2


def test_a_dead_direct_path_is_left_for_the_relay_and_regained() -> None:
    """Both port-restricted: `b`'s NAT filters `a`'s new port, so `a` falls back, re-discovers and
    punches again through the coord; `b` follows by roaming or by its own punch."""
    world, event, before, back = rebind_mid_flow("port-preserving", "port-preserving")
    assert before == (PathKind.DIRECT, PathKind.DIRECT) and back is not None and back < 1.0
    assert world.a.public_endpoint[1] != PORT, "a re-discovered its new mapping"
    assert world.a.reasons[-2:] == [ChangeReason.PATH_SILENT, ChangeReason.PUNCHED]
    assert world.b.reasons[-1] in (ChangeReason.ROAMED, ChangeReason.PUNCHED)


def test_an_idle_pair_behind_nats_that_forget_after_10s_answers_at_once_after_a_minute() -> None:
    """The issue's row to keep: mappings time out after 10 s, the pair idles for 60 s, and the first
    packet afterwards is answered within 0.1 s (the idle path's liveness probes hold the mappings)."""
    forgetful = Kind(replace(PORT_RESTRICTED_CONE, mapping_timeout=10.0), EASY)
    world = World(forgetful, forgetful, 3, random.Random)
    world.start()
    world.a.send(world.b, b"hello")
    world.net.scheduler.run_for(5.0)
    assert world.a.route_to(world.b).path.kind is PathKind.DIRECT
    world.net.scheduler.run_for(60.0)
    sent = world.now
    world.a.send(world.b, b"after a minute")
    world.net.scheduler.run_for(1.0)
    [(answered, _)] = [(t, p) for t, p in world.a.received if p == b"echo after a minute"]
    assert answered - sent < 0.1
    assert world.a.route_to(world.b).path.kind is PathKind.DIRECT
