"""A TCP path once the host's network is back, on a fake clock (`meshvpn.node.tcp.core`, `meshvpn.node.tcpresume`).

The path checks itself as the coord link does: a connection that waits behind TCP's backed-off
retransmission timer is ended at once and a new punch asked for at once, the relay carrying
meanwhile; else the path is probed and ended if nothing comes over it within the check's wait.
"""

from __future__ import annotations

import pytest

from meshvpn.node.events import TcpAbort, TcpWrite
from meshvpn.node.tcp.core import PathDown, ProbePath, WantPunch
from meshvpn.node.tcpresume import MIN_WAIT
from test_tcppunch import _only, _pump, pair  # noqa: F401 (the fixture)


def test_a_path_waiting_behind_a_backed_off_retransmission_is_replaced_at_once(pair) -> None:
    a, b, ca, cb, ida, idb = pair
    a.next_actions()
    a.network_back({ca: True}, 5.0)
    actions = a.next_actions()
    assert "retransmission" in _only(actions, PathDown).reason
    assert _only(actions, TcpAbort).conn_id == ca, "reset: the peer leaves its end at once too"
    assert _only(actions, WantPunch).peer_key == idb.public, "a punch now, not after repunch_initial"
    assert a.path_endpoint(idb.public) is None


@pytest.mark.parametrize("retransmitting", [False, None])
def test_otherwise_the_path_is_probed_and_anything_from_the_peer_keeps_it(pair, retransmitting) -> None:
    a, b, ca, cb, ida, idb = pair
    a.next_actions()
    a.network_back({ca: retransmitting}, 5.0)
    assert a.next_actions() == [ProbePath(idb.public)]
    assert a.get_timer() <= 5.0 + MIN_WAIT
    assert b.send(b.path_endpoint(ida.public), [b"probe reply"], 5.05)
    assert _pump(b, cb, a, ca, 5.05) == [b"probe reply"]
    a.handle_timer(5.0 + MIN_WAIT)
    assert not [x for x in a.next_actions() if not isinstance(x, TcpWrite)]
    assert a.path_endpoint(idb.public) is not None


def test_a_path_that_stays_silent_through_the_wait_is_replaced(pair) -> None:
    a, b, ca, cb, ida, idb = pair
    a.next_actions()
    a.network_back({ca: False}, 5.0)
    a.next_actions()
    a.handle_timer(5.0 + MIN_WAIT - 0.01)
    assert not [x for x in a.next_actions() if isinstance(x, PathDown)]
    a.handle_timer(5.0 + MIN_WAIT)
    actions = a.next_actions()
    assert "no answer" in _only(actions, PathDown).reason and _only(actions, WantPunch)


def test_connections_the_shell_does_not_name_are_left_alone(pair) -> None:
    a, b, ca, cb, ida, idb = pair
    a.next_actions()
    a.network_back({ca + 100: True}, 5.0)
    assert a.next_actions() == [] and a.path_endpoint(idb.public) is not None
