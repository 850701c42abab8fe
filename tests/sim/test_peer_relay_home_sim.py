"""A peer relay reached over a fragile path does not take the home back each time its path returns.

The pairs harness's `peer-relay` world (the matrix's): `b` behind a random-port NAT whose server
relays are 40 ms away, and the helper, a member on a port-preserving site next to it that relays,
reached through the path `b` punched to it. Twice, `b`'s NAT lets its mappings towards the helper
expire: the path dies, the helper's link stops being ready, and the path is punched again some 8 s
later. `b` leaves the helper as home at once each time it is lost (relay death failover), and
takes it back only once its path has held for `HOME_HOLD`: one change away and one back, where
before each return of the path took home back at once and each death left it again, every change
announced through the coord.
"""

from __future__ import annotations

import random

from meshvpn.node.relay.home import HOME_HOLD
from meshvpn.sim.pairs import World, flow
from meshvpn.sim.sitekinds import KINDS

SETTLE = 8.0
"""Seconds from the first packet: the helper is `b`'s home."""
CYCLE = 12.0
"""Seconds between the expiries: the path comes back some 8 s after one, for less than `HOME_HOLD`."""
LEFT_WITHIN = 2.0
"""A lost home is left within the link's `down_after` (the relay death target)."""


def test_a_peer_relay_whose_path_comes_and_goes_takes_the_home_back_only_once_it_held() -> None:
    world = World(KINDS["random-ports"], KINDS["peer-relay"], 1, random.Random)
    world.start()
    b, helper = world.b, world.helper
    relays = b.node.relays
    homes: list[tuple[float, str | None]] = []
    back: list[float] = []
    """When the helper's link became ready again."""

    def watch() -> None:
        home = None if relays.home is None else relays.home.name
        if not homes or homes[-1][1] != home:
            homes.append((world.now, home))
        link = relays.links[helper.name]
        if link.ready and (not back or back[-1] < 0):
            back.append(world.now)
        elif not link.ready and back and back[-1] >= 0:
            back.append(-world.now)
        world.net.scheduler.call_later(0.01, watch)

    flow(world, 0.05, SETTLE + 2 * CYCLE + HOME_HOLD + 10.0)
    watch()
    world.net.scheduler.run_for(SETTLE)
    assert homes[-1][1] == helper.name
    expired = []
    for _ in range(2):
        expired.append(world.now)
        assert b.nat.udp.expire_towards(helper.site.observed_host) > 0
        world.net.scheduler.run_for(CYCLE)
    returned = back[-1]
    assert returned > expired[-1], f"the path was punched again after the last expiry: {back}"
    world.net.scheduler.run_for(returned + HOME_HOLD + 1.0 - world.now)

    first = max(index for index, (at, _) in enumerate(homes) if at <= expired[0])
    after = [(round(at, 2), name) for at, name in homes[first:]]
    names = [name for _, name in after]
    assert names[0] == helper.name and names[-1] == helper.name and len(names) == 3, \
        f"one change away and one back, not one per return of the path: {after} (helper back at {back})"
    left, retaken = homes[-2][0], homes[-1][0]
    assert left - expired[0] < LEFT_WITHIN, f"the lost helper left {left - expired[0]:.2f} s after"
    assert retaken >= returned + HOME_HOLD - 0.01, f"taken back {retaken - returned:.2f} s after its path returned"
