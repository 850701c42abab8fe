"""The native thread's tables kept per peer equal the full rebuild after every step of a pair's life.

`meshvpn.node.datapath.native_tables` recomputes only the rows of the peers marked since its last
look (the core's and the data path's marks, routes, addresses, membership) and of those whose
installed session expired. Its ``check`` compares every update with the rebuild over all peers.
The pairs harness (`meshvpn.sim.pairs`) runs two real nodes through handshakes, rekeys, silence,
re-mappings and link losses, chosen by a seeded random source; the tables are updated after
every output drain, as the daemon syncs after every input, and at random moments in between.
"""

from __future__ import annotations

import random

import pytest

from meshvpn.node.datapath import fastpath
from meshvpn.node.datapath.native_tables import NativeTables
from meshvpn.sim.pairs import World
from meshvpn.sim.sitekinds import KINDS

pytestmark = pytest.mark.needs(fastpath.native_module() is None, "meshvpn._fastpath was not built (make setup builds it)")


@pytest.fixture
def checked(monkeypatch):
    monkeypatch.setattr(NativeTables, "check", True)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_tables_kept_per_peer_equal_the_full_rebuild_through_random_steps(checked, seed: int) -> None:
    world = World(KINDS["port-preserving"], KINDS["random-ports" if seed == 3 else "full-cone"], seed,
                  random.Random)
    rng = random.Random(seed)
    tables = {node: NativeTables(node.core.peers) for node in (world.a, world.b)}
    changes = {node: 0 for node in tables}
    for node, kept in tables.items():
        pump = node.pump

        def pumped(pump=pump, node=node, kept=kept) -> None:
            pump()
            changes[node] += kept.update(world.now)
        node.pump = pumped
    world.start()
    for _ in range(60):
        step = rng.choice(["traffic", "wait", "long wait", "rebind", "link", "look"])
        if step == "traffic":
            for _ in range(rng.randint(1, 20)):
                world.a.send(world.b, b"ping")
                world.net.scheduler.run_for(rng.uniform(0.001, 0.05))
        elif step == "wait":
            world.net.scheduler.run_for(rng.uniform(0.1, 5.0))
        elif step == "long wait":  # past rekeys and session expiries
            world.net.scheduler.run_for(rng.uniform(60.0, 200.0))
        elif step == "rebind":
            rng.choice([world.a, world.b]).nat.rebind()
        elif step == "link":
            node = rng.choice([world.a, world.b])
            node.link_down()
            world.net.scheduler.run_for(rng.uniform(0.5, 20.0))
            node.link_up()
        for kept in tables.values():
            kept.update(world.now)
    assert all(changes.values()), "the tables changed along the way: the check compared something"
