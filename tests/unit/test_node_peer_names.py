"""The names the node announces are looked at again only when one changed, not at every coord message,
and then read from the peer table's sorted names (`meshvpn.node.peernames`), the same as a sort of
every peer would give them, at a cost that does not grow with the peers."""

import time
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn.bench.timers import build, leave_and_return
from meshvpn.control import messages as m
from meshvpn.node.peernames import SortedNames
from test_node_dns import peer_maps, three
from test_node_peer_updates import steps as peer_map_steps


def test_the_names_version_moves_on_join_rename_readdress_and_leave_only() -> None:
    alice, bob, carol = three()
    alice.register(bob, now=0.0)
    table = alice.peers
    steps = [
        (m.PeerUpdate(peer=bob.info(public_endpoint=m.Endpoint("203.0.113.9", 4000))), 0),  # endpoint only
        (m.PeerUpdate(peer=replace(bob.info(), online=False)), 0),
        (m.PeerUpdate(peer=carol.info()), 1),  # joins
        (m.PeerUpdate(peer=replace(bob.info(), name="robert")), 1),
        (m.PeerUpdate(peer=replace(carol.info(), address="100.64.0.33")), 1),
        (m.PeerUpdate(peer=replace(carol.info(), address="100.64.0.33")), 0),  # the same again
        (m.PeerRemove(key=carol.public), 1),
        (m.PeerRemove(key=carol.public), 0),  # not there any more
    ]
    for at, (msg, moves) in enumerate(steps, start=1):
        before = table.names_version
        alice.from_coord(msg, float(at))
        assert table.names_version - before == moves, msg


def test_messages_that_change_no_name_announce_nothing_and_a_change_after_them_is_announced() -> None:
    alice, bob, carol = three()
    alice.register(bob, carol, now=0.0)
    (first, second) = peer_maps(alice)
    for at in range(1, 20):
        alice.from_coord(m.PeerUpdate(peer=bob.info(public_endpoint=m.Endpoint("203.0.113.9", 4000 + at))), float(at))
    assert peer_maps(alice) == []
    alice.from_coord(m.PeerUpdate(peer=replace(carol.info(), name="caroline")), 30.0)
    (renamed,) = peer_maps(alice)
    assert renamed.hosts == (("alice", "100.64.0.1"), ("bob", "100.64.0.2"), ("caroline", "100.64.0.3"))
    alice.from_coord(m.Registered(node_key=alice.public, name="alicia", address="100.64.0.1",
                                  network=m.NetworkInfo(name="home", cidr="100.64.0.0/24")), 31.0)
    (own,) = peer_maps(alice)
    assert own.hosts[0] == ("alicia", "100.64.0.1") and own.network == "home"


# ---- the sorted names against a sort of every peer -----------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.lists(peer_map_steps, max_size=14))
def test_the_announced_names_are_those_a_sort_of_every_peer_gives(messages) -> None:
    """Joins, renames (onto a name another peer holds too), moves, leaves, deltas and whole maps."""
    alice, _, _ = three()
    alice.register(now=0.0)
    announced = peer_maps(alice)[-1]
    for at, msg in enumerate(messages, start=1):
        alice.from_coord(msg, float(at))
        announced = (peer_maps(alice) or [announced])[-1]
        assert announced.hosts == (("alice", "100.64.0.1"), *sorted((p.name, p.address) for p in alice.peers)), msg


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from(("ann", "Ann", "ben")), st.integers(0, 2))))
def test_sorted_names_are_sorted_after_any_adds_and_removes(changes) -> None:
    names, model = SortedNames(), []
    for adding, name, address in changes:
        pair = (name, f"100.64.0.{address}")
        if adding:
            names.add(pair)
            model.append(pair)
        elif pair in model:
            names.remove(pair)
            model.remove(pair)
        else:
            with pytest.raises(ValueError):
                names.remove(pair)
        assert list(names) == sorted(model) and len(names) == len(model)


# ---- what a join or leave costs ------------------------------------------------------------------

CALLS = 60


def fastest_leave_and_return_us(count: int) -> float:
    """The fastest of CALLS leaves and returns of one peer through the node (names announced), in µs."""
    node, now = build(count, warmup=0.0)
    leave = leave_and_return(node, now, named=True)
    best = float("inf")
    for i in range(CALLS):
        started = time.perf_counter()
        leave(i * 7)
        best = min(best, time.perf_counter() - started)
    return best * 1e6


def test_a_peer_leaving_and_returning_costs_about_the_same_at_10_and_10000_peers() -> None:
    """The ratio of the fastest of many (a loaded machine slows both or neither). A sort of every
    peer's name at each change made it 41-111 times the cost at 10 peers; the sorted names, 3.5."""
    small, large = fastest_leave_and_return_us(10), fastest_leave_and_return_us(10_000)
    assert large < 12 * small, f"{large:.0f} µs at 10,000 peers against {small:.0f} µs at 10"
