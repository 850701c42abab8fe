"""A peer's local indexes are its own: leaving frees them without a walk over every index.

`PeerTable.by_index` maps our receiver indexes (sessions, a handshake in flight) to peers. Each
peer keeps the indexes that name it (`Peer.indexes`), so `PeerTable.remove` costs the peer's own
sessions at any table size; an abandoned handshake frees its index at once, so nothing piles up
for a peer that never answers.
"""

import random

from meshvpn.control import messages as m
from meshvpn.node.handshakes import REKEY_ATTEMPT_TIME
from meshvpn.node.pathfinder import PathFinder
from meshvpn.node.peers import Peer, PeerTable
from meshvpn.sim.nodes import alice_and_bob, ip_packet


class NoWalk(dict):
    """An index map that fails if anyone walks it: only lookups, writes and deletes by key."""

    def _walked(self, *_):
        raise AssertionError("the whole index map was walked")

    __iter__ = items = keys = values = _walked


def peer(i: int) -> Peer:
    info = m.PeerInfo(key=i.to_bytes(32, "big"), name=f"p{i}", address=f"100.64.{i >> 8 & 255}.{i & 255}", online=True)
    return Peer(key=info.key, info=info, paths=PathFinder(lambda: bytes(8)))


def test_remove_frees_the_peers_own_indexes_without_walking_the_others():
    table = PeerTable()
    table.by_index = NoWalk()
    peers = [peer(i) for i in range(1, 2001)]
    for p in peers:
        table.add(p)
        for k in range(3):
            table.index(p.order * 3 + k, p)
    gone = peers[1000]
    assert table.remove(gone.key) is gone
    assert gone.indexes == set() and len(table.by_index) == 3 * 1999
    assert all(table.by_index.get(gone.order * 3 + k) is None for k in range(3))
    assert table.by_index.get(peers[999].order * 3) is peers[999], "a neighbour's indexes stay"


def test_unindex_leaves_an_index_another_peer_holds():
    table = PeerTable()
    a, b = peer(1), peer(2)
    table.add(a)
    table.add(b)
    table.index(7, a)
    table.index(7, b)  # reassigned: b's now
    table.unindex(7, a)
    assert table.by_index == {7: b} and a.indexes == set() and b.indexes == {7}
    table.remove(a.key)
    assert table.by_index == {7: b}


def test_a_pairs_indexes_are_its_sessions_and_go_with_the_peer():
    a, b, wire = alice_and_bob(random.Random)
    a.send(ip_packet("100.64.0.1", "100.64.0.2"), 0.0)
    wire.pump(0.0)
    for now in (130.0, 260.0):  # past REKEY_AFTER_TIME twice: new sessions, the old ones retired
        a.send(ip_packet("100.64.0.1", "100.64.0.2"), now)
        wire.tick(now)
        wire.pump(now)
    bob = a.peers.by_key[b.public]
    ring = bob.ring
    live = {s.local_index for s in (ring.current, ring.previous, ring.next) if s is not None}
    assert a.peers.by_index.keys() == bob.indexes, "every index in the map is bob's, and bob knows each"
    assert live <= bob.indexes and len(bob.indexes) <= 4, "retired sessions gave theirs back"
    a.from_coord(m.PeerRemove(key=b.public), 300.0)
    assert a.peers.by_index == {}


def test_an_abandoned_handshake_gives_its_index_back():
    a, b, _ = alice_and_bob(random.Random)
    a.send(ip_packet("100.64.0.1", "100.64.0.2"), 0.0)  # bob never answers: nothing moves the datagrams
    bob = a.peers.by_key[b.public]
    assert len(a.peers.by_index) == 1 and bob.indexes == set(a.peers.by_index)
    now = 0.0
    while now <= REKEY_ATTEMPT_TIME + 1.0:
        now = max(now, a.node.get_timer() or now)
        a.tick(now)
        a.collect()
        now += 0.001
    assert a.node.core.handshakes.attempts == {} and a.peers.by_index == {} and bob.indexes == set()
