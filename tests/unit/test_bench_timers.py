"""The bookkeeping bench builds the node it claims to measure."""

from meshvpn.bench.timers import build, measure


def test_the_node_holds_every_peer_and_has_a_deadline():
    node, now = build(12)
    assert len(node.peers) == 12
    assert now == 30.0
    assert node.node.get_timer() is not None


def test_every_kind_of_call_is_timed():
    assert set(measure(3, 2)) == {"get_timer", "handle_timer", "input step"}
