"""Dual-stack sites on the pairs harness: IPv6 carries a pair that IPv4 alone would relay, an IPv4
re-mapping does not touch it, and an IPv6 route that drops everything costs under 2 s.

Both sites are the lab's `dual-stack` kind (`meshvpn.sim.sitekinds`): a random-port NAT for
IPv4, so the pair could only relay over IPv4, and a global IPv6 address behind a stateful
firewall. Each node learns its IPv6 mapping from STUN over IPv6 and announces it, the coord
passes it on, and the pair is direct over IPv6 (the lab's dual-stack row). The events run
under the flow of `test_path_events_sim` (a numbered packet every 0.1 s, each echoed).
"""

from __future__ import annotations

from dataclasses import replace

from meshvpn.node.family import is_ipv6
from meshvpn.node.pathfinder import PathKind
from meshvpn.sim.sitekinds import KINDS, PORT
from test_path_events_sim import SETTLE, TRAFFIC_BACK, Run, kinds

EASY_DUAL = {"easy": replace(KINDS["port-preserving"], ipv6=True)}
"""A dual-stack site whose IPv4 NAT punches as easily as IPv6 (port-preserving)."""
IPV4_WITHIN = 2.0
"""Seconds from IPv6 breaking to both ends on an IPv4 path (the issue's target), and the longest gap."""


def endpoints(run: Run) -> list:
    """Where each end's route goes (None: through a relay)."""
    return [node.route_to(run.world.peer_of(node)).path.endpoint for node in (run.world.a, run.world.b)]


def test_two_dual_stack_sites_go_direct_over_ipv6_from_what_stun_saw_over_ipv6() -> None:
    run = Run("dual-stack", "dual-stack")
    assert kinds(run.world) == (PathKind.DIRECT, PathKind.DIRECT)
    a, b = run.world.a, run.world.b
    assert endpoints(run) == [(b.site.ip6, PORT), (a.site.ip6, PORT)]
    assert a.mapped6 == (a.site.ip6, PORT) and b.mapped6 == (b.site.ip6, PORT), "STUN answered over IPv6"


def test_an_ipv4_remapping_leaves_the_ipv6_path_alone() -> None:
    run = Run("dual-stack", "dual-stack")
    before = endpoints(run)
    remapped = run.now
    for node in (run.world.a, run.world.b):
        node.nat.rebind()
    run.world.net.scheduler.run_for(SETTLE)
    assert endpoints(run) == before and all(map(is_ipv6, before))
    assert max(run.gaps(remapped, run.now)) < TRAFFIC_BACK and run.lost(remapped, run.now) == 0


def test_an_ipv6_route_that_drops_everything_leaves_the_pair_on_ipv4_within_two_seconds() -> None:
    run = Run("dual-stack", "dual-stack")
    broken = run.now
    run.world.b.site.uplink6.connected = False  # b's routes stay; its IPv6 packets go nowhere
    since = run.run_until_kinds(PathKind.RELAY, broken + SETTLE)
    assert since is not None and since - broken <= IPV4_WITHIN, f"relayed (IPv4) from {since}"
    assert max(run.gaps(broken, run.now)) < IPV4_WITHIN


def test_a_broken_ipv6_route_leaves_a_pair_that_punches_over_ipv4_too_direct_over_ipv4() -> None:
    run = Run("easy", "easy", table=EASY_DUAL)
    assert all(map(is_ipv6, endpoints(run)))
    broken = run.now
    run.world.a.site.uplink6.connected = False
    since = run.run_until_kinds(PathKind.DIRECT, broken + SETTLE)
    assert since is not None and since - broken <= IPV4_WITHIN and not any(map(is_ipv6, endpoints(run)))
    assert max(run.gaps(broken, run.now)) < IPV4_WITHIN
