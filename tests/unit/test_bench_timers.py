"""The bookkeeping bench builds the node it claims to measure."""

import math

from meshvpn.bench.timers import build, measure, settle_routed
from meshvpn.node.datapath import fastpath


def test_the_node_holds_every_peer_and_has_a_deadline():
    node, now = build(12)
    assert len(node.peers) == 12
    assert now == 30.0
    assert node.node.get_timer() is not None


def test_every_kind_of_call_is_timed():
    row = measure(3, 2)
    assert set(row) == {"get_timer", "handle_timer", "input step", "peer update", "native sync", "sync, one changed",
                        "peer leaves", "with names", "settle, routed"}
    for column in ("native sync", "sync, one changed"):
        assert math.isnan(row[column]) == (fastpath.native_module() is None), "timed wherever the extension is built"
    assert row["peer leaves"] > 0 and row["with names"] > 0 and row["settle, routed"] > 0


def test_the_settle_is_timed_with_every_peer_routed():
    node, now = build(5)
    settle = settle_routed(node, now)
    assert len(node.peers.routed) == 5
    settle(0)
    assert all(peer.route.transport == node.node.transport_for(peer.route.endpoint) for peer in node.peers)
