"""A TURN allocation on a stream once the host's network is back, on a fake clock.

The stream checks itself as a relay stream does (`meshvpn.node.tcpresume` through
`StreamDial.network_back`): replaced at once when its requests wait behind TCP's backed-off
retransmission timer, else a Refresh over it whose answer must come within the check's wait.
A replaced stream takes its allocation with it; a new one is raced in the same breath.
"""

import pytest

from meshvpn.control import messages as m
from meshvpn.node.events import TurnStream
from meshvpn.node.node import Node
from meshvpn.node.streamdial import StreamTarget
from meshvpn.node.tcpresume import MIN_WAIT, RTTS
from meshvpn.stun_codec import StunMethod, decode
from meshvpn.turn import AllocationLost, AllocationReady

from test_turnlink import OURS, SERVER, linked, on_stream, server_replies, settle

NAME = "turn-1"
RACE = TurnStream(NAME, (StreamTarget(SERVER),))


def ready_on_stream():
    """A link allocated over its stream since 0.7 s, its timers run to 10 s, its events read."""
    link = on_stream()
    settle(link, 10.0)
    link.events()
    link.stream_frames()
    return link


def test_a_stream_waiting_behind_a_backed_off_retransmission_is_replaced_at_once():
    link = ready_on_stream()
    link.network_back({NAME: True}, 10.0)
    assert link.stream_wishes(10.0) == [TurnStream(NAME), RACE], "closed and raced again, no backoff"
    [(name, lost)] = link.events()
    assert name == NAME and isinstance(lost, AllocationLost) and "backed-off" in lost.reason
    assert link.relayed == () and link.routes == {}
    link.stream_up(NAME, 10.1)
    for _ in range(2):
        link.receive_stream(NAME, server_replies([data for _, data in link.stream_frames()]), 10.15)
    assert link.relayed == (m.Endpoint(*OURS),) and [type(e) for _, e in link.events()] == [AllocationReady]
    assert link.stream_wishes(10.15) == []


@pytest.mark.parametrize("retransmitting", [False, None])
def test_otherwise_a_refresh_goes_over_the_stream_and_its_answer_keeps_it(retransmitting):
    link = ready_on_stream()
    link.network_back({NAME: retransmitting}, 10.0)
    [(_, refresh)] = link.stream_frames()
    assert decode(refresh).method == StunMethod.REFRESH, "the check's ping, at once"
    assert link.get_timer() == 10.0 + MIN_WAIT
    link.receive_stream(NAME, server_replies([refresh]), 10.05)
    settle(link, 10.0 + 2 * MIN_WAIT)
    assert link.stream_wishes(11.0) == [] and link.events() == [] and link.servers[NAME].client.ready


def test_a_refresh_unanswered_within_the_wait_replaces_the_stream():
    """The server's side waits behind its own backed-off timer: its answer comes too late."""
    link = ready_on_stream()
    link.network_back({NAME: False}, 10.0)
    link.stream_frames()  # the Refresh is lost
    link.handle_timer(10.0 + MIN_WAIT - 0.01)
    assert link.stream_wishes(10.0 + MIN_WAIT - 0.01) == []
    link.handle_timer(10.0 + MIN_WAIT)
    assert link.stream_wishes(10.0 + MIN_WAIT) == [TurnStream(NAME), RACE]
    [(_, lost)] = link.events()
    assert "no answer" in lost.reason


def test_a_slow_server_is_given_its_round_trips():
    """Every answer on the stream is a round trip the check's wait learns from."""
    link = ready_on_stream()
    link.coord_message(m.PeerMap((m.PeerInfo(bytes(range(32)), "b", "100.64.0.2", True,
                                             turn_relayed=(m.Endpoint("203.0.113.30", 50002),)),)), 20.0)
    link.receive_stream(NAME, server_replies([data for _, data in link.stream_frames()]), 20.3)
    link.network_back({NAME: False}, 30.0)
    assert link.servers[NAME].stream.resume.get_timer() == pytest.approx(30.0 + RTTS * 0.3)


def test_an_allocation_on_udp_or_still_being_made_on_its_stream_checks_nothing():
    link = linked()
    link.events()
    link.network_back({NAME: True, "gone": True}, 5.0)
    assert link.events() == [] and link.stream_wishes(5.0) == [] and link.datagrams_to_send() == []
    link = on_stream()
    link.stream_ended(NAME, 5.0)
    link.stream_wishes(5.5)
    link.stream_up(NAME, 5.6)  # its Allocate is out: its answer decides
    link.events()
    link.network_back({NAME: True}, 5.7)
    assert link.events() == [] and link.stream_wishes(5.7) == []
    assert link.servers[NAME].stream.resume.get_timer() is None


def test_a_race_still_connecting_when_the_network_is_back_is_raced_again_at_once():
    """The allocation's check gave the stream up during the outage, and its new race's SYNs wait
    for TCP's backed-off SYN retransmission (1 s, then 2 s)."""
    link = ready_on_stream()
    link.check(10.0)
    settle(link, 11.6)  # no answer: the server is silent, UDP is tried again, then the stream raced
    assert link.stream_wishes(11.6) == [] and link.servers[NAME].stream.connecting
    link.events()
    link.network_back({}, 14.0)
    assert link.stream_wishes(14.0) == [TurnStream(NAME), RACE] and link.events() == []


def test_a_stream_waiting_out_its_backoff_tries_at_once():
    link = ready_on_stream()
    link.stream_ended(NAME, 10.0)
    assert link.stream_wishes(10.1) == []
    link.network_back({}, 10.1)
    assert link.stream_wishes(10.1) == [RACE]


def test_the_node_checks_its_turn_streams_when_the_network_is_back():
    node = Node(bytes([8]) * 32, lambda n: bytes(n))
    node.turn = ready_on_stream()
    node.connections_resumed(10.0, {}, {}, {NAME: True})
    wishes = [out for out in node.outputs() if isinstance(out, TurnStream)]
    assert wishes == [TurnStream(NAME), RACE]
