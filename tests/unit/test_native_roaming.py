"""Direct receives the native thread opens roam the peer as the Python path's do, and only the newest.

A peer's direct route moves to a new source only for the newest authenticated data of its
current session (docs/security.md, "Roaming"): the thread notes a direct receive only when the
message moved the replay window, and the fold hands it to ``DataPlane.direct_received``, the
Python path's own step.  Real parts as in ``test_native_relay_rx``: a node's data path, the
native thread on a loopback UDP socket, two loopback sockets standing in for the peer at two
addresses.  Waits are bounded.
"""

from tests.unit.test_native_relay_rx import from_peer, native, receiving_plane  # noqa: F401 (fixture)

OLD_UNSEEN = 6
"""A counter left out of the rounds below: inside the window, never seen, older than the newest."""


def test_direct_receives_of_the_thread_roam_only_for_the_newest_data_as_the_python_paths_do(native):
    python = receiving_plane(0.0)
    rounds = [  # (sender, counters, the peer's direct source after it, the roams so far)
        (0, [0, 1, 2], 0, [0]),  # the first data: the peer is found there
        (1, [3, 4], 1, [0, 1]),  # the newest data from a new source: both paths roam
        (1, [5, 7], 1, [0, 1]),  # more from there: liveness only
        (0, [OLD_UNSEEN], 1, [0, 1]),  # an old one never seen, from elsewhere: delivered, moves nothing
        (0, [4], 1, [0, 1]),  # a replay from elsewhere: dropped and counted
        (0, [8], 0, [0, 1, 0]),  # the newest again from the first address: back there
    ]
    for step, (sender, counters, at, roams) in enumerate(rounds, 1):
        messages = from_peer(counters)
        now = 10.0 * step
        py_peer, native_peer = python.core.peers.find("peer"), native.data.core.peers.find("peer")
        py_before, native_before = py_peer.last_rx, native_peer.last_rx
        python.core_touched = native.data.core_touched = False
        python.open_messages([(message, native.source(sender)) for message in messages], now)
        before, after = native.receive(sender, messages)
        assert python.core.roams == [native.source(n) for n in roams]
        assert native.data.core.roams == python.core.roams, "the thread's receives roam as the Python path's"
        assert native_peer.last_rx_src == py_peer.last_rx_src == native.source(at)
        assert native.data.core_touched == python.core_touched
        if at == sender:
            assert py_peer.last_rx == now and before <= native_peer.last_rx <= after
        else:
            assert (py_peer.last_rx, native_peer.last_rx) == (py_before, native_before), "not even liveness"
        assert native_peer.counters.rx_packets == py_peer.counters.rx_packets
        assert native_peer.counters.drops == py_peer.counters.drops
    assert py_peer.counters.rx_packets == 9, "every packet but the replay reached the TUN"
    assert py_peer.counters.drops == {"failed to open": 1}
    assert native.data.core.moves == python.core.moves == [], "nothing came through a relay"

