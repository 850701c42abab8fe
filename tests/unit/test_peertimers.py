"""The peer timers keep the brute-force answer: the earliest deadline of all peers, the earliest look at
the traffic of a peer still busy, and on the timer every peer that is due (none late), whatever the
order of changes and time steps."""

import pytest
from hypothesis import given, strategies as st

from meshvpn.control import messages as m
from meshvpn.node.pathfinder import PathFinder
from meshvpn.node.peers import Peer, PeerSlot, PeerTable
from meshvpn.node.peertimers import KeyedHeap, PeerTimers


def _peer(i: int) -> Peer:
    info = m.PeerInfo(key=bytes([i]) * 32, name=f"p{i}", address=f"100.64.0.{i + 2}", online=True)
    return Peer(info.key, info, PathFinder(lambda: b"\x00" * 8))


class Machines:
    """What the peers' machines say, as plain numbers a test sets (and then marks the peer, as the core does)."""

    def __init__(self) -> None:
        self.table = PeerTable()
        self.deadlines: dict[Peer, float | None] = {}
        self.busy: dict[Peer, float | None] = {}
        self.looks: dict[Peer, float | None] = {}
        self.timers = PeerTimers(self.table, lambda peer: self.deadlines.get(peer),
                                 lambda peer: self.busy.get(peer), lambda peer: self.looks.get(peer))

    def add(self, i: int, deadline: float | None) -> Peer:
        peer = _peer(i)
        self.deadlines[peer] = deadline
        self.table.add(peer)
        return peer

    def brute(self) -> float | None:
        return min((d for p in self.table if (d := self.deadlines[p]) is not None), default=None)


def test_the_earliest_deadline_and_only_due_peers_on_the_timer() -> None:
    machines = Machines()
    a, b, c = machines.add(1, 5.0), machines.add(2, 3.0), machines.add(3, None)
    timers = machines.timers
    timers.check = False  # a change without a mark is made below on purpose
    assert timers.get_timer() == 3.0 and timers.next_look(0.0) is None
    assert timers.due(3.0) == [b], "only the due peer, not the whole table"
    machines.deadlines[b] = 9.0
    assert timers.get_timer() == 5.0
    machines.deadlines[c] = 1.0  # changed without a mark: the kept answer is stale
    assert timers.get_timer() == 5.0
    machines.table.touched.add(c)
    assert timers.get_timer() == 1.0
    assert timers.due(4.0) == [c]


def test_the_data_paths_traffic_is_looked_at_until_the_timer_fires() -> None:
    machines = Machines()
    a, b = machines.add(1, 50.0), machines.add(2, 60.0)
    timers = machines.timers
    assert timers.get_timer() == 50.0
    machines.busy[b], machines.looks[b] = 20.0, 10.3
    machines.table.trafficked.add(b)
    assert timers.next_look(0.0) == 10.3
    machines.busy[b], machines.looks[b] = 21.0, 11.3  # more traffic before the timer: looked at again
    assert timers.next_look(0.0) == 11.3
    assert timers.due(1.0) == [b], "traffic reaches its path finder on the next timer, due or not"
    assert timers.due(1.0) == [b], "and it counts as touched until the timer is asked again"
    assert timers.get_timer() == 50.0 and timers.due(1.0) == []


def test_a_removed_peer_leaves_its_entries() -> None:
    machines = Machines()
    a, b = machines.add(1, 5.0), machines.add(2, 7.0)
    machines.busy[a], machines.looks[a] = 30.0, 20.3
    timers = machines.timers
    assert timers.get_timer() == 5.0 and timers.next_look(0.0) == 20.3
    machines.table.remove(a.key)
    timers.forget(a)
    assert timers.get_timer() == 7.0 and timers.next_look(0.0) is None
    assert timers.due(10.0) == [b]


def test_a_look_due_is_kept_while_its_peer_is_busy_and_dropped_after() -> None:
    """A look that has passed means "any time now" while the peer's traffic keeps the core watching
    (a send may make its path silent); once it no longer does, the look goes, until traffic marks it."""
    machines = Machines()
    a, b = machines.add(1, None), machines.add(2, None)
    machines.busy[a], machines.looks[a] = 10.0, 0.3
    machines.busy[b], machines.looks[b] = 12.0, 2.3
    machines.table.trafficked.update((a, b))
    timers = machines.timers
    assert timers.next_look(0.0) == 0.3
    assert timers.next_look(5.0) == 0.3, "a is busy until 10.0: any time now"
    assert timers.next_look(10.0) == 2.3, "a went idle: b's look is due, b busy until 12.0"
    assert timers.next_look(12.0) is None
    machines.busy[a], machines.looks[a] = 30.0, 20.3
    machines.table.trafficked.add(a)
    assert timers.next_look(12.0) == 20.3


def test_the_due_peers_come_in_table_order() -> None:
    machines = Machines()
    peers = [machines.add(i, 10.0 - i) for i in range(5)]
    machines.timers.get_timer()
    assert machines.timers.due(100.0) == peers


def test_the_check_names_the_stale_peer() -> None:
    machines = Machines()
    a = machines.add(1, 5.0)
    machines.timers.check = True
    assert machines.timers.get_timer() == 5.0
    machines.deadlines[a] = 2.0
    with pytest.raises(AssertionError, match=r"p1"):
        machines.timers.get_timer()


def test_the_heap_is_rebuilt_when_stale_entries_pile_up() -> None:
    heap: KeyedHeap[str] = KeyedHeap()
    for i in range(10_000):
        heap.set("a", float(i))
        heap.set("b", float(-i))
    assert len(heap._heap) < 200 and heap.top() == -9999.0 and heap.get("a") == 9999.0


_ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 15), st.one_of(st.none(), st.floats(0, 100))),
    st.tuples(st.just("remove"), st.integers(0, 15), st.none()),
    st.tuples(st.just("touch"), st.integers(0, 15), st.one_of(st.none(), st.floats(0, 100))),
    st.tuples(st.just("traffic"), st.integers(0, 15), st.floats(0, 100)),
    st.tuples(st.just("timer"), st.integers(0, 15), st.floats(0, 10)),
), max_size=60)


@given(_ops)
def test_the_kept_answers_equal_the_brute_force_ones(ops: list[tuple]) -> None:
    """Random changes (marked as the core and the data path mark them), time steps and timers:
    the heap's answers equal the brute force over all peers, and the timer misses no due peer."""
    machines = Machines()
    timers, table = machines.timers, machines.table
    now = 0.0
    for op, i, value in ops:
        peer = table.by_key.get(bytes([i]) * 32)
        if op == "add" and peer is None:
            machines.add(i, value)
        elif op == "remove" and peer is not None:
            table.remove(peer.key)
            timers.forget(peer)
        elif op == "touch" and peer is not None:
            machines.deadlines[peer] = value
            table.touched.add(peer)
        elif op == "traffic" and peer is not None:
            machines.busy[peer] = max(machines.busy.get(peer) or 0.0, value)
            machines.looks[peer] = value - 5.0 if i % 3 else None
            table.trafficked.add(peer)
        elif op == "timer":
            now += value
            marked = table.touched | table.trafficked
            processed = timers.due(now)
            due = {p for p in table if (d := machines.deadlines[p]) is not None and d <= now}
            assert due <= set(processed) <= due | marked, "every due peer, and no other but the marked"
            assert processed == sorted(processed, key=lambda p: p.order)
            for p in processed:  # the timer ran their machines, which moved what was due
                if machines.deadlines[p] is not None and machines.deadlines[p] <= now:
                    machines.deadlines[p] = now + value if i % 2 else None
        assert timers.get_timer() == machines.brute()
        assert timers.next_look(now) == min((look for p in table if (look := machines.looks.get(p)) is not None
                                             and (look > now or (machines.busy.get(p) or look) > now)), default=None)


def test_the_peers_that_left_are_let_go() -> None:
    """Neither the heap nor the table's slots hold on to peers that left (a network with churn)."""
    machines = Machines()
    table, timers = machines.table, machines.timers
    slot = PeerSlot(table, "cookie")
    peers = [machines.add(i, float(i)) for i in range(200)]
    for peer in peers:
        slot[peer.key] = object()
    assert timers.get_timer() == 0.0
    for peer in peers[:150]:
        table.remove(peer.key)
        timers.forget(peer)
    assert len(timers._deadlines._heap) < 150 and timers.get_timer() == 150.0
    assert all(len(held) == 50 for held in table.slots) and len(slot) == 50
