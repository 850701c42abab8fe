"""The fan-out: a network's peer announcements held for one window, coalesced by peer, sent as
one round to every online node but the subject, a slice at a time; driven with a float clock."""

from meshvpn.control import messages as m
from meshvpn.coord.fanout import Fanout, FanoutSettings
from meshvpn.coord.peermap import PeerEntry, peer_update

NOW = 1_700_000_000.0
WINDOW = 0.25


def key(n: int) -> bytes:
    return bytes([n]) * 32


def info(n: int, port: int = 41641, online: bool = True) -> m.PeerInfo:
    return m.PeerInfo(key(n), f"node{n}", f"10.77.0.{n}", online, (m.Endpoint("192.168.1.20", port),))


def update(fanout: Fanout, peer: m.PeerInfo, now: float = NOW, network: str = "home") -> None:
    message, payload = peer_update(PeerEntry.of(peer))
    fanout.add(network, peer.key, message, payload, now)


def remove(fanout: Fanout, n: int, now: float = NOW, network: str = "home") -> None:
    fanout.add(network, key(n), m.PeerRemove(key(n)), None, now)


class Online:
    """Who is online where: node n on connection n, taking deltas unless listed as legacy."""

    def __init__(self, home=(1, 2, 3, 4), work=(), legacy=()):
        self.networks = {"home": list(home), "work": list(work)}
        self.legacy = set(legacy)
        self.asked = []

    def __call__(self, network):
        self.asked.append(network)
        return [(n, key(n), n not in self.legacy) for n in self.networks[network]]


def drained(fanout: Fanout, now: float, online: Online):
    """What each destination got from one drain, in order (a removal's round and a window's may both reach it)."""
    out = {}
    for conn, frames in fanout.drain(now, online):
        out.setdefault(conn, []).extend(m.decode(f) for f in frames)
    return out


def test_a_window_of_changes_leaves_as_one_delta_to_every_node_but_the_subject():
    fanout, online = Fanout(FanoutSettings(window=WINDOW)), Online()
    update(fanout, info(2), NOW)
    update(fanout, info(3), NOW + 0.1)
    assert fanout.get_timer() == NOW + WINDOW
    assert drained(fanout, NOW + WINDOW - 0.001, online) == {} and online.asked == []
    assert drained(fanout, NOW + WINDOW, online) == {
        1: [m.PeerDelta((info(2), info(3)))],
        2: [m.PeerDelta((info(3),))],
        3: [m.PeerDelta((info(2),))],
        4: [m.PeerDelta((info(2), info(3)))],
    }
    assert online.asked == ["home"] and fanout.get_timer() is None
    assert (fanout.announcements, fanout.frames) == (2, 4)


def test_a_later_change_replaces_the_earlier_and_a_removal_cancels_an_update_and_goes_first():
    fanout, online = Fanout(FanoutSettings(window=WINDOW)), Online(home=(1,))
    update(fanout, info(2, port=1))
    update(fanout, info(3))
    update(fanout, info(2, port=2))
    remove(fanout, 3)
    assert fanout.get_timer() == float("-inf")  # the removal does not wait for the window
    assert drained(fanout, NOW, online) == {1: [m.PeerDelta(removed=(key(3),))]}
    assert fanout.get_timer() == NOW + WINDOW
    assert drained(fanout, NOW + WINDOW, online) == {1: [m.PeerDelta((info(2, port=2),))]}


def test_an_update_after_a_removal_brings_the_peer_back():
    fanout, online = Fanout(FanoutSettings(window=WINDOW)), Online(home=(1,))
    remove(fanout, 2)
    update(fanout, info(2))
    assert drained(fanout, NOW + WINDOW, online) == {1: [m.PeerDelta(removed=(key(2),)), m.PeerDelta((info(2),))]}


def test_nodes_without_deltas_get_one_message_per_changed_peer_as_before():
    fanout, online = Fanout(FanoutSettings(window=WINDOW)), Online(home=(1, 2), legacy=(1,))
    update(fanout, info(3, port=1))
    update(fanout, info(3, port=2))
    remove(fanout, 4)
    assert drained(fanout, NOW + WINDOW, online) == {
        1: [m.PeerRemove(key(4)), m.PeerUpdate(info(3, port=2))],
        2: [m.PeerDelta(removed=(key(4),)), m.PeerDelta((info(3, port=2),))],
    }


def test_a_change_about_the_only_node_online_sends_nothing():
    fanout, online = Fanout(FanoutSettings(window=WINDOW)), Online(home=(2,))
    update(fanout, info(2))
    assert drained(fanout, NOW + WINDOW, online) == {2: []}


def test_networks_have_their_own_windows_and_audiences():
    fanout, online = Fanout(FanoutSettings(window=WINDOW)), Online(home=(1,), work=(5,))
    update(fanout, info(2), NOW, network="home")
    update(fanout, info(6), NOW + 0.1, network="work")
    assert drained(fanout, NOW + WINDOW, online) == {1: [m.PeerDelta((info(2),))]}
    assert fanout.get_timer() == NOW + 0.1 + WINDOW
    assert drained(fanout, NOW + 0.1 + WINDOW, online) == {5: [m.PeerDelta((info(6),))]}


def test_a_round_is_served_a_slice_per_drain_and_changes_during_it_open_a_new_window():
    fanout = Fanout(FanoutSettings(window=WINDOW, slice=3))
    online = Online(home=range(10, 17))
    update(fanout, info(2))
    later = NOW + WINDOW
    assert list(drained(fanout, later, online)) == [10, 11, 12]
    assert fanout.get_timer() == float("-inf")  # a round is under way: drain again at once
    update(fanout, info(2, port=9), later)
    assert list(drained(fanout, later, online)) == [13, 14, 15]
    assert drained(fanout, later, online) == {16: [m.PeerDelta((info(2),))]}
    assert fanout.get_timer() == later + WINDOW
    assert online.asked == ["home"]


def test_take_gives_a_node_what_is_on_its_way_and_the_round_skips_it_later():
    fanout = Fanout(FanoutSettings(window=WINDOW, slice=1))
    online = Online(home=(1, 4))
    update(fanout, info(2, port=1))
    assert list(drained(fanout, NOW + WINDOW, online)) == [1]  # node 4 still waits for the round
    update(fanout, info(2, port=2), NOW + WINDOW)  # a newer window opens
    taken = [m.decode(f) for f in fanout.take(4, "home", key(4), True)]
    assert taken == [m.PeerDelta((info(2, port=1),)), m.PeerDelta((info(2, port=2),))]
    assert drained(fanout, NOW + WINDOW, online) == {}  # the round is done: 4 was served
    newer = [m.PeerDelta((info(2, port=2),))]
    assert drained(fanout, NOW + 2 * WINDOW, online) == {1: newer}
    assert drained(fanout, NOW + 2 * WINDOW, online) == {4: newer}


def test_take_with_nothing_pending_is_empty():
    fanout = Fanout()
    update(fanout, info(2), network="work")
    assert fanout.take(1, "home", key(1), True) == []


def test_a_large_delta_goes_in_several_complete_frames():
    fanout, online = Fanout(FanoutSettings(window=WINDOW, part_bytes=400)), Online(home=(1,))
    for n in range(2, 12):
        update(fanout, info(n))
    (frames,) = drained(fanout, NOW + WINDOW, online).values()
    assert len(frames) > 1
    assert [p for delta in frames for p in delta.peers] == [info(n) for n in range(2, 12)]


def test_a_node_whose_view_starts_during_a_window_gets_only_what_changes_after():
    fanout, online = Fanout(FanoutSettings(window=WINDOW)), Online(home=(1, 5))
    update(fanout, info(2, port=1))
    update(fanout, info(3))
    fanout.fresh(5, "home")  # node 5 registered: its map holds both
    update(fanout, info(2, port=2))
    assert [m.decode(f) for f in fanout.take(5, "home", key(5), True)] == [m.PeerDelta((info(2, port=2),))]
    assert drained(fanout, NOW + WINDOW, online) == {
        1: [m.PeerDelta((info(2, port=2), info(3)))],
        5: [m.PeerDelta((info(2, port=2),))],
    }


def test_a_large_network_s_window_is_longer_up_to_the_limit_and_a_small_one_s_is_served_first():
    fanout = Fanout(FanoutSettings(window=WINDOW, window_per_node=100e-6, max_window=1.0))
    assert [fanout.window(n) for n in (0, 1000, 5000, 10_000, 50_000)] == [WINDOW, WINDOW, 0.5, 1.0, 1.0]
    online = Online(home=(1, 2), work=(3, 4))
    fanout.add("home", key(1), *peer_update(PeerEntry.of(info(1))), NOW, online=8000)
    fanout.add("work", key(3), *peer_update(PeerEntry.of(info(3))), NOW + 0.1, online=10)
    assert fanout.get_timer() == NOW + 0.1 + WINDOW  # work's window, opened later, is due first
    assert drained(fanout, NOW + 0.1 + WINDOW, online) == {3: [], 4: [m.PeerDelta((info(3),))]}
    assert fanout.get_timer() == NOW + 0.8
    assert drained(fanout, NOW + 0.8, online) == {1: [], 2: [m.PeerDelta((info(1),))]}


def changes(delta: m.PeerDelta) -> dict[bytes, dict]:
    return {patch.key: dict(patch.changes) for patch in delta.changed or ()}


def test_nodes_of_format_2_get_only_the_fields_that_changed_and_a_peer_they_may_not_have_whole():
    fanout = Fanout(FanoutSettings(window=WINDOW))
    online = Online(home=(1, 2))
    online.formats = {1: 2, 2: 1}
    audience = lambda network: [(n, key(n), online.formats[n]) for n in online.networks[network]]
    update(fanout, info(3, port=1))  # never announced before: whole, for everyone
    update(fanout, info(4))
    assert drained(fanout, NOW + WINDOW, audience) == {1: [m.PeerDelta((info(3, port=1), info(4)))],
                                                        2: [m.PeerDelta((info(3, port=1), info(4)))]}
    later = NOW + 1
    update(fanout, info(3, port=2), later)
    update(fanout, info(4, online=False), later)
    (new,), (old,) = drained(fanout, later + WINDOW, audience).values()
    assert new.peers == () and changes(new) == {
        key(3): {"local_endpoints": (m.Endpoint("192.168.1.20", 2),)},
        key(4): {"online": False},
    }
    assert old == m.PeerDelta((info(3, port=2), info(4, online=False)))


def test_a_field_that_changes_and_changes_back_within_a_window_is_still_named():
    fanout, online = Fanout(FanoutSettings(window=WINDOW)), Online(home=(1,))
    update(fanout, info(3, port=1))
    drained(fanout, NOW + WINDOW, lambda network: [(1, key(1), 2)])
    later = NOW + 1
    update(fanout, info(3, port=2), later)  # a node whose map is built now holds port 2
    update(fanout, info(3, port=1), later)
    (delta,), = drained(fanout, later + WINDOW, lambda network: [(1, key(1), 2)]).values()
    assert changes(delta) == {key(3): {"local_endpoints": (m.Endpoint("192.168.1.20", 1),)}}


def test_a_removal_overtakes_a_round_under_way_which_no_longer_carries_the_peer():
    fanout = Fanout(FanoutSettings(window=WINDOW, slice=2))
    online = Online(home=range(10, 15))
    update(fanout, info(2))
    update(fanout, info(3))
    assert list(drained(fanout, NOW + WINDOW, online)) == [10, 11]
    remove(fanout, 3, NOW + WINDOW)  # revoked while the round is under way
    gone = m.PeerDelta(removed=(key(3),))
    assert drained(fanout, NOW + WINDOW, online) == {10: [gone], 11: [gone]}
    assert drained(fanout, NOW + WINDOW, online) == {12: [gone], 13: [gone]}
    rest = [m.PeerDelta((info(2),))]  # the rest of the round, without 3
    assert drained(fanout, NOW + WINDOW, online) == {14: [gone], 12: rest}
    assert drained(fanout, NOW + WINDOW, online) == {13: rest, 14: rest}
    assert fanout.get_timer() is None


def test_a_node_whose_map_came_after_a_removal_or_that_took_it_is_not_told_again():
    fanout, online = Fanout(FanoutSettings(window=WINDOW)), Online(home=(1, 5, 6))
    remove(fanout, 2)
    fanout.fresh(5, "home")  # node 5's map holds none of 2
    assert [m.decode(f) for f in fanout.take(6, "home", key(6), True)] == [m.PeerDelta(removed=(key(2),))]
    remove(fanout, 3)
    assert drained(fanout, NOW, online) == {
        1: [m.PeerDelta(removed=(key(2), key(3)))],
        5: [m.PeerDelta(removed=(key(3),))],
        6: [m.PeerDelta(removed=(key(3),))],
    }


def test_a_due_window_waits_for_its_network_s_round_under_way_and_takes_in_what_comes_meanwhile():
    fanout = Fanout(FanoutSettings(window=WINDOW, slice=2))
    online = Online(home=(10, 11, 12), work=(20,))
    update(fanout, info(2, port=1))
    assert list(drained(fanout, NOW + WINDOW, online)) == [10, 11]
    later = NOW + 2 * WINDOW
    update(fanout, info(2, port=2), NOW + WINDOW)
    update(fanout, info(6), NOW + WINDOW, network="work")
    update(fanout, info(3), later)  # the home window is due, but its last round is still under way
    assert drained(fanout, later, online) == {12: [m.PeerDelta((info(2, port=1),))], 20: [m.PeerDelta((info(6),))]}
    assert drained(fanout, later, online) == {n: [m.PeerDelta((info(2, port=2), info(3)))] for n in (10, 11)}


def test_round_times_sum_each_window_s_wait_for_its_round_and_the_round_s_serving_but_not_removals():
    fanout = Fanout(FanoutSettings(window=WINDOW, slice=2))
    online = Online(home=(10, 11, 12))
    update(fanout, info(2, port=1))
    drained(fanout, NOW + WINDOW, online)  # the round starts: two of three served
    remove(fanout, 3, NOW + WINDOW)
    drained(fanout, NOW + WINDOW + 0.5, online)  # the removal's round goes first
    drained(fanout, NOW + WINDOW + 0.5, online)  # its last node, then the first round's
    assert (fanout.times.rounds, fanout.times.waited, fanout.times.served) == (1, WINDOW, 0.5)
    update(fanout, info(2, port=2), NOW + 1)
    update(fanout, info(4), NOW + 1.1)  # joins the window, which waited from its first change
    drained(fanout, NOW + 1 + WINDOW, online)
    assert fanout.times.rounds == 1  # under way
    drained(fanout, NOW + 2, online)
    assert (fanout.times.rounds, fanout.times.waited, fanout.times.served) == (2, 2 * WINDOW, 0.5 + 0.75)
