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
import socket
from collections import Counter

import pytest

from meshvpn.node.datapath import fastpath
from meshvpn.node.datapath.dataplane import SendBuffer
from meshvpn.node.datapath.native_loop import NativeReceiver
from meshvpn.node.datapath.native_tables import NativeTables
from meshvpn.sim.pairs import World
from meshvpn.sim.sitekinds import KINDS

pytestmark = pytest.mark.needs(fastpath.native_module() is None, "meshvpn._fastpath was not built (make setup builds it)")


@pytest.fixture
def checked(monkeypatch):
    monkeypatch.setattr(NativeTables, "check", True)


def random_walk(seed: int, look) -> None:
    """A pair's life, chosen by `seed`; ``look(node, now)`` after every output drain and at random moments."""
    world = World(KINDS["port-preserving"], KINDS["random-ports" if seed == 3 else "full-cone"], seed,
                  random.Random)
    rng = random.Random(seed)
    for node in (world.a, world.b):
        pump = node.pump

        def pumped(pump=pump, node=node) -> None:
            pump()
            look(node, world.now)
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
        for node in (world.a, world.b):
            look(node, world.now)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_tables_kept_per_peer_equal_the_full_rebuild_through_random_steps(checked, seed: int) -> None:
    tables, changes = {}, Counter()

    def look(node, now: float) -> None:
        if node not in tables:
            tables[node] = NativeTables(node.core.peers)
        changes[node] += tables[node].update(now)
    random_walk(seed, look)
    assert len(changes) == 2 and all(changes.values()), "the tables changed along the way: the check compared something"


@pytest.mark.parametrize("seed", [1, 3])
def test_the_thread_holds_what_python_installed_row_by_row(checked, seed: int) -> None:
    """`NativeReceiver.sync` hands the thread's table (not started) only the rows that changed
    (``Loop.patch``); with ``check`` it compares what the table's maps find with its own views."""
    receivers, patches, sockets = {}, Counter(), []

    def look(node, now: float) -> None:
        if node not in receivers:
            udp, tun = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            udp.bind(("127.0.0.1", 0))
            sockets.extend((udp, *tun))
            receivers[node] = NativeReceiver(node.data, udp.fileno(), tun[0], SendBuffer(lambda *_: None), lambda: None)
        before = receivers[node]._loop.installed()
        receivers[node].sync(now)
        patches[node] += receivers[node]._loop.installed() != before
    try:
        random_walk(seed, look)
    finally:
        for sock in sockets:
            sock.close()
    assert len(patches) == 2 and all(patches.values()), "the thread's table changed along the way"
