"""A TCP path handed over to a UDP path, on a fake clock (`TcpPunch.hand_over`): make before break."""

from __future__ import annotations

from meshvpn.node.events import TcpAbort
from meshvpn.node.tcp.core import PathDown, TcpPunchConfig, WantPunch
from test_tcppunch import _only, pair  # noqa: F401 (the fixture)

HANDOVER = TcpPunchConfig().handover


def test_the_path_stays_for_the_hand_over_then_closes_without_a_new_punch(pair) -> None:
    a, b, ca, cb, ida, idb = pair
    a.next_actions()
    a.hand_over(idb.public, 5.0)
    assert a.next_actions() == [] and a.path_endpoint(idb.public) is not None, "still there for the peer"
    assert a.get_timer() <= 5.0 + HANDOVER
    a.handle_timer(5.0 + HANDOVER)
    actions = a.next_actions()
    assert _only(actions, PathDown).reason == "not needed" and _only(actions, TcpAbort).conn_id == ca
    assert a.peer_keys() == set(), "the campaign is over: nothing left to punch"


def test_the_peer_closing_it_first_ends_it_with_no_new_punch(pair) -> None:
    a, b, ca, cb, ida, idb = pair
    a.next_actions()
    a.hand_over(idb.public, 5.0)
    a.connection_lost(ca, 5.1)  # the peer's UDP path was current a round trip later, and its time ran out first
    assert _only(a.next_actions(), PathDown)
    a.handle_timer(60.0)
    assert not [x for x in a.next_actions() if isinstance(x, WantPunch)] and a.peer_keys() == set()


def test_a_path_that_is_the_peers_again_is_kept(pair) -> None:
    a, b, ca, cb, ida, idb = pair
    a.hand_over(idb.public, 5.0)
    a.keep(idb.public)
    a.handle_timer(5.0 + HANDOVER)
    assert not [x for x in a.next_actions() if isinstance(x, PathDown)] and a.path_endpoint(idb.public) is not None


def test_without_a_path_the_campaign_stops_at_once(pair) -> None:
    a, b, ca, cb, ida, idb = pair
    a.stop(idb.public)
    a.next_actions()
    a.punch(idb.public, [], 6.0)
    a.hand_over(idb.public, 6.0)
    assert a.peer_keys() == set()
